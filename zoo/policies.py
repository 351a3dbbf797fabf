"""Shim: `zoo.policies` is `zoo.catalogue.policies`, kept so that plugins written before the folders still import."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("zoo.catalogue.policies")
