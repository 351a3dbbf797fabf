"""Building a timm model, with its pretrained weights from the Hugging Face hub cache, the way timm users have them.

A tag's weights are looked up in the Hugging Face cache first (no network at all when they are
there), then downloaded by timm itself into that cache. Offline with the file not cached, the
error names the model and tag, the cache, and the ways out: `--weights PATH` (a timm checkpoint,
.pth or .safetensors, loaded with weights_only / safetensors) or `--weights none`.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from zoo.catalogue.backbone import Backbone, Weights
from zoo.catalogue.weights import HUB_FILES, hub_cache
from zoo.core.errors import DownloadError, WeightsError

HUB = "hf-hub:"
FILES = HUB_FILES


def build(spec: Backbone, weights: Weights | None = None, arch: str = "", **kwargs):
    """`timm.create_model(arch, **kwargs)`, with `weights` (a tag of `spec`) loaded when given."""
    import timm

    if weights is None:
        return timm.create_model(arch, pretrained=False, **kwargs)
    # the tag's own classifier, or 1000 classes where the tag has none (a head zoo replaces anyway)
    kwargs["num_classes"] = weights.num_classes or 1000
    name = f"{arch}.{weights.tag}"
    if weights.url.startswith(HUB):
        path = cached_file(weights.url[len(HUB) :])
        if path is None:
            path = download(weights.url[len(HUB) :], name)
    else:
        path = url_file(weights, name)
    return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)


def cached_file(repo: str) -> Path | None:
    """The repo's weights file in the Hugging Face cache, if it is there (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in FILES:
        found = try_to_load_from_cache(repo, filename, cache_dir=hub_cache())
        if isinstance(found, str):  # not None, not the "known not to exist" marker
            return Path(found)
    return None


def download(repo: str, name: str) -> Path:
    """The repo's weights downloaded into the Hugging Face cache (huggingface_hub, as timm does)."""
    from huggingface_hub import hf_hub_download

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    if offline or not _reachable("huggingface.co"):
        why = "HF_HUB_OFFLINE is set" if offline else "huggingface.co cannot be reached"
        raise _offline(name, f"hf-hub:{repo}", why, hub_cache() / f"models--{repo.replace('/', '--')}")
    errors = []
    for filename in FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=hub_cache(), library_name="timm"))
        except Exception as exc:  # the next file name, then a one-line error
            errors.append(f"{filename}: {type(exc).__name__}")
    raise _offline(name, f"hf-hub:{repo}", "; ".join(errors), hub_cache() / f"models--{repo.replace('/', '--')}")


def url_file(weights: Weights, name: str) -> Path:
    """A tag whose weights are a plain URL (a few older ones): timm's torch hub cache, downloaded if missing."""
    import torch.hub

    target = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if target.is_file():
        return target
    host = weights.url.split("/")[2] if "://" in weights.url else ""
    if not _reachable(host):
        raise _offline(name, weights.url, f"{host} cannot be reached", target)
    try:
        torch.hub.download_url_to_file(weights.url, str(target), progress=False)
    except Exception as exc:
        raise _offline(name, weights.url, f"{type(exc).__name__}: {exc}", target) from None
    return target


def _offline(name: str, source: str, why: str, where: Path) -> DownloadError:
    return DownloadError(
        f"cannot get timm weights '{name}' from {source} ({why}); they are not in the cache at {where}: "
        "put them there (huggingface-cli download on a machine with network, then copy the folder), "
        "or pass --weights PATH (a timm checkpoint, .pth or .safetensors) or --weights none (random init)",
        source,
        why,
        where,
    )


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A TCP connection to `host` within `timeout`: huggingface_hub itself retries for most of a minute offline."""
    if not host:
        return False
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def trace_hints() -> dict:
    """timm's own tracing hints: modules and functions torch.fx must not trace into (for zoo's cut)."""
    from timm.layers import get_notrace_functions, get_notrace_modules

    return {
        "leaf_modules": tuple(get_notrace_modules()),
        "autowrap_functions": tuple(f for f in get_notrace_functions() if callable(f)),
    }


__all__ = ["WeightsError", "build", "cached_file", "trace_hints"]
