"""Each file of a scan checked once: decoded several at a time, or vouched for by what an earlier scan learned.

`Decoder` decodes the files a scan lists (Pillow decodes outside the GIL, so threads share the work) and keeps the
decoded, downscaled images in memory up to CACHE_LIMIT_BYTES, with each usable file's pixel digest (exact
duplicates). `ScanMemo` keeps what a scan learned about each file for the next scan of the same data: usable or not
(and why), and that digest. A file is only trusted to be what it was when its path, size and modification time (in
nanoseconds) are unchanged; anything else is decoded again. The memo is one JSON file per (data, decode size) under
ZOO_HOME/cache/scan, written whole (temp file, then rename) after the scan, holding only the files that scan saw.
With it, a repeated run on the same data lists its files without decoding them, and `decode_into` decodes them when
something needs their pixels. A memo that cannot be read is ignored; one that cannot be written only costs the next
scan its decoding. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from PIL import Image

from zoo.core.atomic import write_text
from zoo.data.images import decode_many, shrink

log = logging.getLogger(__name__)

VERSION = 1
CACHE_LIMIT_BYTES = 4 << 30  # keep decoded images in memory up to this size


def memo_file(data: Path | str, min_short_side: int) -> Path:
    from zoo.catalogue.registry import zoo_home

    name = hashlib.sha256(f"{os.path.abspath(data)}\0{min_short_side}".encode()).hexdigest()[:32]
    return zoo_home() / "cache" / "scan" / f"{name}.json"


class ScanMemo:
    def __init__(self, file: Path):
        self.file = file
        self.old: dict[str, list] = {}
        self.new: dict[str, list] = {}
        self.changed = False
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
            if record.get("version") == VERSION:
                self.old = record["files"]
        except (OSError, ValueError, KeyError, TypeError):
            pass

    @staticmethod
    def _stamp(path: Path) -> list | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def get(self, path: Path) -> tuple[str | None, bytes | None] | None:
        """(reason, None) for a file known unusable, (None, digest) for one known usable, None when unknown."""
        key = os.path.abspath(path)
        entry = self.old.get(key)
        if entry is None or entry[:2] != self._stamp(path):
            return None
        self.new[key] = entry
        reason, digest = entry[2], entry[3]
        return (reason, None) if reason is not None else (None, bytes.fromhex(digest))

    def put(self, path: Path, reason: str | None, digest: bytes | None) -> None:
        stamp = self._stamp(path)
        if stamp is None:
            return
        self.new[os.path.abspath(path)] = [*stamp, reason, digest.hex() if digest is not None else None]
        self.changed = True

    def save(self) -> None:
        if not self.changed and len(self.new) == len(self.old):
            return
        try:
            write_text(self.file, json.dumps({"version": VERSION, "files": self.new}, separators=(",", ":")))
            self.old, self.changed = dict(self.new), False
        except OSError as exc:
            log.info("cannot keep the scan's verdicts in %s (%s)", self.file.parent, exc.strerror or exc)


class Decoder:
    """Decodes each file once, several at a time: usable images are kept in `decoded` (up to CACHE_LIMIT_BYTES),
    others listed with their reason. With a `memo` (`ScanMemo`), a file already checked by an earlier scan,
    unchanged since, is not decoded: its verdict and pixel digest are read back, and its pixels are decoded when
    something needs them (`decode_into`)."""

    def __init__(self, min_short_side: int, decoded: dict[Path, Image.Image] | None, memo=None):
        self.min_short_side, self.decoded, self.kept_bytes, self.digests = min_short_side, decoded, 0, {}
        self.skipped: list[tuple[Path, str]] = []
        self.memo = memo

    def check(self, paths: list[Path], wheres: list[str] | None = None) -> list[bool]:
        """Which of `paths` are usable, in order; the skipped ones listed with `wheres[i]` before the reason."""
        verdicts: dict[Path, tuple[str | None, bytes | None]] = {}
        todo: list[Path] = []
        for path in paths:
            known = self.memo.get(path) if self.memo is not None else None
            if known is not None:
                verdicts[path] = known
            else:
                todo.append(path)

        def digest_and_shrink(img: Image.Image) -> tuple[bytes, Image.Image]:
            digest = hashlib.sha256(b"%dx%d:" % img.size + img.tobytes()).digest()[:16]  # exact duplicates
            return digest, shrink(img, self.min_short_side)

        for path, (found, reason) in zip(todo, decode_many(todo, self.min_short_side, digest_and_shrink),
                                         strict=True):  # fmt: skip
            if found is None:
                verdicts[path] = (reason, None)
                continue
            digest, small = found
            verdicts[path] = (None, digest)
            if self.decoded is not None and self.kept_bytes < CACHE_LIMIT_BYTES:
                self.decoded[path] = small
                self.kept_bytes += small.width * small.height * 3
            if self.memo is not None:
                self.memo.put(path, None, digest)
        decoded_now = set(todo)
        usable = []
        for i, path in enumerate(paths):
            reason, digest = verdicts[path]
            if reason is not None:
                self.skipped.append((path, f"{wheres[i] if wheres else ''}{reason}"))
                if self.memo is not None and path in decoded_now:
                    self.memo.put(path, reason, None)
            else:
                self.digests[path] = digest
            usable.append(reason is None)
        return usable


def decode_into(decoded: dict[Path, Image.Image], paths: list[Path], min_short_side: int) -> int:
    """Decode the `paths` that `decoded` lacks into it (a scan that trusted its memo kept no pixels), up to
    CACHE_LIMIT_BYTES in all; files that fail now are left out (the loader reports them). Returns how many."""
    kept = sum(img.width * img.height * 3 for img in decoded.values())
    missing = list(dict.fromkeys(p for p in paths if p not in decoded))
    added = 0
    if kept >= CACHE_LIMIT_BYTES or not missing:
        return 0
    for path, (small, _) in zip(missing, decode_many(missing, min_short_side, lambda i: shrink(i, min_short_side)),
                                strict=True):  # fmt: skip
        if small is None:
            continue
        decoded[path] = small
        added += 1
        kept += small.width * small.height * 3
        if kept >= CACHE_LIMIT_BYTES:
            break
    return added
