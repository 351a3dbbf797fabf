"""Shim: `zoo.weights` is `zoo.catalogue.weights`, kept so that plugins written before the folders still import."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("zoo.catalogue.weights")
