"""Building a timm model, with its pretrained weights from the Hugging Face hub cache, the way timm users have them.

A tag's weights are looked up in the Hugging Face cache first (no network at all when they are
there), then downloaded by huggingface_hub, as timm does, into that cache from the hub that
HF_ENDPOINT names (a mirror such as https://hf-mirror.com; huggingface.co when unset), unless
HF_HUB_OFFLINE is set. Both are read when the model is built, not when huggingface_hub was imported.
Offline with the file not cached, the error names the model and tag, the cache, and the ways out:
`--weights PATH` (a timm checkpoint, .pth or .safetensors, loaded with weights_only / safetensors)
or `--weights none`. The few tags whose weights are a plain URL go through zoo's own download, so
ZOO_MIRROR and registry.toml's [mirrors] apply to them.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from zoo.catalogue.backbone import Backbone, Weights
from zoo.catalogue.sources import HUB, hub_endpoint, hub_offline
from zoo.catalogue.weights import HUB_FILES, fetch, hub_cache
from zoo.core.errors import DownloadError, WeightsError

HF_HUB = "hf-hub:"  # a tag's url: `hf-hub:ORG/NAME`, a repo on the hub
FILES = HUB_FILES


def build(spec: Backbone, weights: Weights | None = None, arch: str = "", **kwargs):
    """`timm.create_model(arch, **kwargs)`, with `weights` (a tag of `spec`) loaded when given."""
    import timm

    if weights is None:
        return timm.create_model(arch, pretrained=False, **kwargs)
    # the tag's own classifier, or 1000 classes where the tag has none (a head zoo replaces anyway)
    kwargs["num_classes"] = weights.num_classes or 1000
    name = f"{arch}.{weights.tag}"
    if weights.url.startswith(HF_HUB):
        path = cached_file(weights.url[len(HF_HUB) :])
        if path is None:
            path = download(weights.url[len(HF_HUB) :], name)
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
    """The repo's weights downloaded into the Hugging Face cache by huggingface_hub, as timm does, from the hub
    HF_ENDPOINT names (passed explicitly: huggingface_hub reads the variable once, when it is imported)."""
    import huggingface_hub.constants
    from huggingface_hub import hf_hub_download

    where = hub_cache() / f"models--{repo.replace('/', '--')}"
    if hub_offline():
        raise _offline(name, f"hf-hub:{repo}", "HF_HUB_OFFLINE is set", where)
    endpoint = hub_endpoint()
    parsed = urlparse(endpoint)
    if not _reachable(parsed.hostname or "", parsed.port or (80 if parsed.scheme == "http" else 443)):
        mirror = "" if endpoint != HUB else "; HF_ENDPOINT can name a mirror"
        raise _offline(name, f"hf-hub:{repo}", f"{parsed.netloc or endpoint} cannot be reached{mirror}", where)
    # huggingface_hub read HF_HUB_OFFLINE when it was imported; it is unset now, and huggingface_hub must agree
    huggingface_hub.constants.HF_HUB_OFFLINE = False
    errors = []
    for filename in FILES:
        try:
            return Path(hf_hub_download(repo, filename, cache_dir=hub_cache(), library_name="timm", endpoint=endpoint))
        except Exception as exc:  # the next file name, then a one-line error
            errors.append(f"{filename}: {type(exc).__name__}")
    raise _offline(name, f"hf-hub:{repo} at {endpoint}", "; ".join(errors), where)


def url_file(weights: Weights, name: str) -> Path:
    """A tag whose weights are a plain URL (a few older ones): timm's torch hub cache, downloaded if missing,
    through zoo's download (the user's mirrors first, a timeout per source)."""
    try:
        return fetch(Weights(tag=name, url=weights.url, sha256=weights.sha256), progress=False)
    except DownloadError as exc:
        raise _offline(name, weights.url, exc.reason, Path(exc.target)) from None


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
