"""Verified ONNX: a model written, then proven against torch, or an error.

The exporter and its sources (run, checkpoint or backbone), embedded preprocessing, fp16, INT8 with
retries, Triton repositories, and `zoo verify`.

Imports zoo.model, zoo.data, zoo.runtime, zoo.catalogue and zoo.core; never training or serve.
"""
