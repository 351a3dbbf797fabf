"""`zoo serve`: an exported model over HTTP.

The ASGI app (Open Inference Protocol v2, `/predict`, metrics), request inputs, the options, and the
dynamic batcher.

Imports zoo.runtime, zoo.data and zoo.core; never torch at import time.
"""
