"""Shim: `zoo.events` is `zoo.catalogue.events`, kept so that plugins written before the folders still import."""

import importlib
import sys

sys.modules[__name__] = importlib.import_module("zoo.catalogue.events")
