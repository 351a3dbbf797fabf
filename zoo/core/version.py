"""The installed version of zoo, recorded in checkpoints, summaries and exported models."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("zoo-finetune")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"


# the packages a bug report needs the versions of, read from their metadata (nothing is imported: no torch)
PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "numpy", "pillow", "timm", "pluggy", "typer")


def environment() -> dict[str, object]:
    """zoo's version, Python's, the platform's, and those of the packages in PACKAGES (None: not installed)."""
    import platform

    def installed(name: str) -> str | None:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {
        "zoo": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {name: installed(name) for name in PACKAGES},
    }
