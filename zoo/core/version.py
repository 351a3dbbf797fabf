"""The installed version of zoo, recorded in checkpoints, summaries and exported models."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("zoo-finetune")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
