"""The ground floor: what every other part of zoo stands on.

Errors and their exit codes, files that are complete or absent, command-line options declared on
dataclass fields, signal handling, metrics, and the one comparison of two runs of a model.

Imports nothing of zoo; no torch at import time.
"""
