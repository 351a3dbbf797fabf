"""One exception family for every mistake a user can make.

The CLI catches `ZooError` once and prints its message as one line; anything
else is a programming error and keeps its traceback.
"""

from __future__ import annotations


class ZooError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 1


class UnknownBackbone(ZooError):
    """No registered backbone has this name."""

    exit_code = 2

    def __init__(self, name: str, suggestions: list[str] | None = None):
        self.name = name
        self.suggestions = suggestions or []
        if self.suggestions:
            super().__init__(f"unknown backbone '{name}' (did you mean {' or '.join(self.suggestions)}?)")
        else:
            super().__init__(f"unknown backbone '{name}'; `zoo list` shows them all")


class InvalidBackbone(ZooError):
    """A plugin registered a backbone spec that does not describe its model."""


class WeightsError(ZooError):
    """Weights cannot be found, downloaded, verified or loaded."""


class DownloadError(WeightsError):
    """A file could not be downloaded: `url`, `reason`, and `target`, where a copy would be found instead."""

    def __init__(self, message: str, url: str, reason: str, target):
        super().__init__(message)
        self.url, self.reason, self.target = url, reason, target


class RegistryError(ZooError):
    """A registry.toml file is malformed."""
