"""Where a file can be had: the user's mirrors in front, then each URL of the file in turn; the sha256 is the proof.

A download tries, in this order:

1. `ZOO_MIRROR`: folders laid out like the torch cache (flat, by file name), as http(s):// or file:// URLs or
   local paths, separated by spaces or commas. A copy of `$TORCH_HOME/hub/checkpoints` served over HTTP, or a
   shared network folder, is such a mirror.
2. The `[mirrors]` table of registry.toml (the project's, then the user's `$ZOO_HOME/registry.toml`): each key
   is a URL prefix, each value one replacement prefix or a list of them, tried before the URL they rewrite
   (`"https://download.pytorch.org/models/" = "https://mirror.example.com/torchvision/"`). The key `"*"` is a
   flat folder, as in ZOO_MIRROR.
3. `HF_ENDPOINT` (a Hugging Face mirror, such as https://hf-mirror.com) in front of each huggingface.co URL.
4. The file's own URLs, in the order its entry lists them.

A source that cannot be reached, answers with an error, or serves bytes whose sha256 is not the expected one
(a Git LFS pointer, an HTML page, another revision of the file) is skipped with one warning line that names it,
and the next is tried. `HF_HUB_OFFLINE` skips the Hugging Face sources, as huggingface_hub does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

from zoo.catalogue.registry import load_registry_data
from zoo.core.errors import RegistryError
from zoo.core.version import __version__

log = logging.getLogger(__name__)

HUB = "https://huggingface.co"  # huggingface_hub's default endpoint
MIRROR_ENV = "ZOO_MIRROR"
TIMEOUT = 30.0  # seconds per connect or read: a dead mirror must not hold up the next for the OS's minutes
LFS_POINTER = b"version https://git-lfs.github.com/spec/"
_TRUE = ("1", "ON", "YES", "TRUE")  # huggingface_hub's spelling of true


def hub_endpoint() -> str:
    """The Hugging Face hub zoo talks to: $HF_ENDPOINT (a mirror), else huggingface.co; read now, not when
    huggingface_hub was imported."""
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) forbids reaching the hub, read now."""
    return any(os.environ.get(name, "").upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _on_hub(url: str) -> bool:
    """Whether `url` is on huggingface.co or on the hub mirror HF_ENDPOINT names (host and port)."""
    return urlparse(url).netloc in {urlparse(HUB).netloc, urlparse(hub_endpoint()).netloc}


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list) else [value]


def mirror_rules(data: dict[str, Any]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The `[mirrors]` table of registry data as (prefix, replacements) pairs; RegistryError when malformed."""
    table = data.get("mirrors", {})
    rules = []
    for prefix, value in table.items():
        targets = _as_list(value)
        if not targets or not all(isinstance(t, str) and t for t in targets):
            raise RegistryError(
                f'registry.toml [mirrors] "{prefix}": give a URL prefix or a list of them, '
                'e.g. "https://download.pytorch.org/models/" = "https://mirror.example.com/torchvision/"'
            )
        rules.append((prefix, tuple(targets)))
    return tuple(rules)


def _folder_url(base: str) -> str:
    """A mirror folder as a URL ending in '/': http(s):// and file:// as given, a local path made absolute."""
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", base):
        base = Path(base).expanduser().resolve().as_uri()
    return base.rstrip("/") + "/"


def candidates(urls: Sequence[str], name: str) -> list[str]:
    """Every URL to try for the file called `name` whose own URLs are `urls`, in order, without repeats."""
    rules = mirror_rules(load_registry_data()[0])
    flat = [b for b in re.split(r"[\s,]+", os.environ.get(MIRROR_ENV, "")) if b]
    flat += [t for prefix, targets in rules if prefix == "*" for t in targets]
    found = [_folder_url(base) + quote(name) for base in flat]
    endpoint = hub_endpoint()
    for url in urls:
        rewrites = sorted((p for p, _ in rules if p != "*" and url.startswith(p)), key=len, reverse=True)
        for prefix in rewrites:
            found += [t + url[len(prefix) :] for t in dict(rules)[prefix]]
        if url.startswith(HUB + "/") and endpoint != HUB:
            found.append(endpoint + url[len(HUB) :])
        found.append(url)
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Attempt:
    """One source tried: its URL, why it was not used, and whether it answered with bytes (not a network error)."""

    url: str
    problem: str
    served: bool


class NoSource(Exception):
    """No source gave the file: every attempt, in order."""

    def __init__(self, attempts: Sequence[Attempt]):
        self.attempts = tuple(attempts)
        super().__init__(self.summary)

    @property
    def served(self) -> bool:
        """Some source answered with bytes that were not the file (not only network errors)."""
        return any(a.served for a in self.attempts)

    @property
    def summary(self) -> str:
        return "; ".join(f"{a.url}: {a.problem}" for a in self.attempts) or "no source to try"


def download(urls: Sequence[str], target: Path, expected: str | None, progress: bool = False) -> str:
    """Download the file whose URLs are `urls` to `target` from the first source that serves it: its sha256
    starts with `expected` (a full digest or torchvision's prefix; None: any bytes but a pointer or a page).
    Returns the URL used; raises NoSource. `target` appears only once complete and checked (temp + rename)."""
    import http.client  # here, not at import: `zoo list` reads [mirrors] through this module
    import urllib.error

    attempts = []
    tried = candidates(urls, target.name)
    for index, url in enumerate(tried):
        if _on_hub(url) and hub_offline():
            attempts.append(Attempt(url, "skipped, HF_HUB_OFFLINE is set", served=False))
            continue
        part = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            log.info("downloading %s to %s", url, target)
            problem = _fetch_into(url, part, expected, target.name if progress else None)
            if problem is None:
                os.replace(part, target)
                return url
            attempt = Attempt(url, problem, served=True)
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
            attempt = Attempt(url, _reason(exc), served=False)
        finally:
            part.unlink(missing_ok=True)
        if index + 1 < len(tried):  # the last one is named in the error
            log.warning("%s: %s; trying the next source", attempt.url, attempt.problem)
        attempts.append(attempt)
    raise NoSource(attempts)


def _reason(exc: BaseException) -> str:
    import urllib.error

    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    reason = getattr(exc, "reason", None) or exc
    return str(getattr(reason, "strerror", None) or reason) or type(exc).__name__


def _fetch_into(url: str, part: Path, expected: str | None, bar_label: str | None) -> str | None:
    """Stream `url` into `part`, hashing as it comes (a progress bar labelled `bar_label`, if given); None when the
    bytes are the file, else what was served.

    Written here rather than with torch.hub.download_url_to_file, which has no timeout: one dead mirror in
    front would hold every download for the operating system's connect timeout."""
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": f"zoo/{__version__}"})
    digest, size, head = hashlib.sha256(), 0, b""
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response, open(part, "wb") as out:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        bar = _bar(total, bar_label) if bar_label else None
        try:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
                head = head if len(head) >= 512 else (head + chunk)[:512]
                size += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and size != total:
        return f"the download stopped after {size} of {total} bytes"
    return _not_the_file(head, size, digest.hexdigest(), expected)


def _bar(total: int | None, name: str):
    try:
        from tqdm import tqdm
    except ImportError:  # no progress bar, the download is the same
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def _not_the_file(head: bytes, size: int, actual: str, expected: str | None) -> str | None:
    """Why bytes that arrived are not the file (None: they are), in words a user can act on."""
    if head.startswith(LFS_POINTER):
        fields = dict(line.split(" ", 1) for line in head.decode("ascii", "replace").splitlines() if " " in line)
        oid = fields.get("oid", "").removeprefix("sha256:")
        same = " of this very file" if expected and oid.startswith(expected.lower()) else ""
        return (
            f"served a Git LFS pointer{same} ({size} bytes of text, oid sha256:{oid[:16]}...), not the file: "
            "the repository serves pointers instead of its LFS files (its LFS budget is spent or LFS is off)"
        )
    if head.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html")):
        return f"served an HTML page ({size} bytes), not the file"
    if expected and not actual.startswith(expected.lower()):
        return (
            f"served other bytes: sha256 {actual[:16]}... does not match the expected {expected[:16]}... ({size} bytes)"
        )
    return None
