"""Every exception zoo raises for a user to read, and the exit code of each kind.

The CLI catches `ZooError` once and prints its message as one line on stderr
with the exit code of its kind; anything else is a programming error and keeps
its traceback. The codes (docs/cli.md):

| code | kind | raised as |
|---:|---|---|
| 0 | success | |
| 1 | internal error (a bug: it prints a traceback) | |
| 2 | usage: a flag, argument or name is wrong | `UsageError` |
| 3 | input: a file or folder cannot be used as given | `InputError` |
| 4 | verification: a result was checked and it failed | `VerificationError` |
| 5 | environment: network, device, another process, disk | `EnvironmentProblem` |
| 6 | training diverged (the loss is not finite) | `TrainingDiverged` |
| 124 | a distributed worker timed out | `DistributedTimeout` |
| 130 | interrupted by Ctrl-C (SIGINT) | `Interrupted` |
| 143 | stopped by SIGTERM | `Interrupted` |
"""

from __future__ import annotations

EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_VERIFICATION = 4
EXIT_ENVIRONMENT = 5
EXIT_DIVERGED = 6
EXIT_TIMEOUT = 124
EXIT_SIGINT = 130
EXIT_SIGPIPE = 141  # the reader of stdout went away (`zoo list | head`): as a shell reports SIGPIPE
EXIT_SIGTERM = 143


class ZooError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 1


# --- usage: the command line is wrong -------------------------------------------------------------------------
class UsageError(ZooError):
    """A flag, an argument or a name is wrong."""

    exit_code = EXIT_USAGE


class UnknownBackbone(UsageError):
    """No registered backbone has this name."""

    def __init__(self, name: str, suggestions: list[str] | None = None):
        self.name = name
        self.suggestions = suggestions or []
        if self.suggestions:
            super().__init__(f"unknown backbone '{name}' (did you mean {' or '.join(self.suggestions)}?)")
        else:
            super().__init__(f"unknown backbone '{name}'; `zoo list` shows them all")


class PolicyError(UsageError):
    """A policy name or its argument is wrong."""


class OutputError(UsageError):
    """An output path cannot be written (missing parent, not a folder, not writable, a file zoo did not write)."""


class ResumeError(UsageError):
    """`--resume` cannot continue this run as asked."""


# --- input: a file or folder cannot be used ----------------------------------------------------------------
class InputError(ZooError):
    """A file or folder cannot be used as given."""

    exit_code = EXIT_INPUT


class DataError(InputError):
    """The data folder or manifest cannot be trained on or evaluated."""


class CheckpointError(InputError):
    """A run folder or checkpoint file cannot be used."""


class WeightsError(InputError):
    """Weights cannot be found, verified or loaded."""


class RegistryError(InputError):
    """A registry.toml file is malformed."""


class InvalidBackbone(InputError):
    """A plugin registered a backbone spec that does not describe its model."""


class CutError(InputError):
    """A model cannot be cut at the group boundary asked for (the frozen-prefix cache, `cut:GROUP`)."""


class ModelFileError(InputError):
    """An ONNX file that zoo cannot use: not ONNX, no zoo metadata, metadata that contradicts the graph."""


class ConversionError(InputError):
    """A model in another format (ONNX) cannot be converted to torch."""


# --- verification: a checked result failed ------------------------------------------------------------------
class VerificationError(ZooError):
    """A result was checked against its reference, and it failed."""

    exit_code = EXIT_VERIFICATION


class ExportError(VerificationError):
    """The model could not be exported, or the exported model does not match torch."""


class QuantizationRefused(VerificationError):
    """The INT8 model loses more accuracy than `--max-drop` allows (no attempt passed)."""


class ConversionMismatch(VerificationError):
    """A converted model does not reproduce the original (`report` holds the comparison)."""

    def __init__(self, message: str, report=None):
        super().__init__(message)
        self.report = report


# --- environment: network, device, other processes -------------------------------------------------------
class EnvironmentProblem(ZooError):
    """Something outside the command line is in the way: the network, a device, another process, the disk."""

    exit_code = EXIT_ENVIRONMENT


class DownloadError(EnvironmentProblem, WeightsError):
    """A file could not be downloaded: `url`, `reason`, and `target`, where a copy would be found instead."""

    exit_code = EXIT_ENVIRONMENT

    def __init__(self, message: str, url: str, reason: str, target):
        super().__init__(message)
        self.url, self.reason, self.target = url, reason, target


class DeviceError(EnvironmentProblem):
    """The device asked for is not available here."""


class RunLocked(EnvironmentProblem):
    """Another process is using this run folder."""


class DistributedError(EnvironmentProblem):
    """A distributed run that cannot start, or a worker that died."""


class DistributedTimeout(DistributedError):
    """A collective waited longer than `--dist-timeout` for another worker."""

    exit_code = EXIT_TIMEOUT


# --- training ---------------------------------------------------------------------------------------------------
class TrainingDiverged(ZooError):
    """The loss became NaN or infinite: what was complete is saved."""

    exit_code = EXIT_DIVERGED


class Interrupted(ZooError):
    """Ctrl-C (SIGINT) or SIGTERM: what was complete is saved."""

    exit_code = EXIT_SIGINT

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name
        self.exit_code = EXIT_SIGTERM if signal_name == "SIGTERM" else EXIT_SIGINT


class Terminated(BaseException):
    """SIGTERM while training, raised in the main thread as Ctrl-C raises KeyboardInterrupt (then: Interrupted)."""
