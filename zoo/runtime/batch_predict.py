"""`zoo predict MODEL.onnx DIR_OR_GLOB... [--out results.csv|.jsonl]`: any number of images, streamed.

The arguments are expanded lazily (files as given, folders walked recursively for image
files, glob patterns), in sorted order within each argument; the images go through the
model in batches, the next batch decoded while the model runs on this one, and each
batch's rows are written (or handed to the caller) before the next is read. So memory
holds a batch or two of images and rows, never all of them. A file that cannot be used
(missing, empty, corrupt, not an image) is a row with an `error`, never a stop.

`--out` is written to a temp file beside it and renamed into place when every image is
done; interrupted, the temp file is removed and nothing is written. Torch-free, like
`zoo.runtime.predictor`.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from zoo.core import atomic
from zoo.core.errors import OutputError, UsageError
from zoo.core.interrupts import stops_as_interrupted
from zoo.data.images import is_image_name
from zoo.runtime import DEFAULT_TOP_K
from zoo.runtime.predictions import check_top_k, results
from zoo.runtime.predictor import Predictor

FORMATS = (".csv", ".jsonl")
GLOB_CHARS = frozenset("*?[")
LABEL_SEP = "|"  # multi-label CSV: the chosen labels in one cell (a separator zoo's manifests detect)

Item = tuple[str, str | None]  # (image path as given or found, error found while expanding, or None)
Row = dict[str, Any]


@dataclass
class Summary:
    """What one `predict_many` did."""

    images: int
    errors: int
    seconds: float
    out: str | None = None

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "out": self.out,
        }


def is_glob(arg: str) -> bool:
    return any(c in GLOB_CHARS for c in arg)


def _walk(folder: str) -> Iterator[str]:
    """Image files under `folder` in sorted path order, hidden entries and symlinked sub-folders left out."""
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = os.path.join(folder, entry.name)
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            yield from _walk(path)
        elif is_image_name(Path(entry.name)):
            yield path


def expand(args: Iterable[str]) -> Iterator[Item]:
    """(path, None) for each image the arguments name, in argument order; (arg, reason) for an argument that names
    none: a missing file, a folder without images, a pattern that matches nothing. A path that exists is taken as
    a path even when its name holds glob characters."""
    for arg in args:
        if os.path.isdir(arg):
            found = False
            for path in _walk(arg):
                found = True
                yield path, None
            if not found:
                yield arg, "no image files in this folder"
        elif os.path.lexists(arg):
            yield arg, None  # named explicitly: read whatever its name
        elif is_glob(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            found = False
            for match in matches:
                if os.path.isdir(match):
                    for path in _walk(match):
                        found = True
                        yield path, None
                elif is_image_name(Path(match)):
                    found = True
                    yield match, None
            if not found:
                yield arg, "no image file matches this pattern"
        else:
            yield arg, "no such file"


def count(args: Iterable[str]) -> int:
    """How many rows `expand(args)` gives (a walk of the folders, no image read): the progress bar's total."""
    return sum(1 for _ in expand(args))


def _reason(path: str) -> str | None:
    """Why a file cannot be read, found without decoding it (None: try it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file" + (" (a broken link)" if os.path.islink(path) else "")
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if not os.path.isfile(path):
        return "not a file"
    if st.st_size == 0:
        return "empty file"
    return None


def _load(predictor: Predictor, item: Item) -> tuple[str, np.ndarray | None, str | None]:
    path, error = item
    error = error or _reason(path)
    if error:
        return path, None, error
    try:
        return path, predictor.load(path), None
    except Exception as exc:  # PIL raises many kinds for a bad file: each is this image's error, not a stop
        detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        return path, None, f"cannot read it as an image ({type(exc).__name__}{': ' + detail if detail else ''})"


def _run_batch(predictor: Predictor, loaded: list[tuple[str, np.ndarray | None, str | None]], top_k: int) -> list[Row]:
    """Rows for one batch, in its order: an unreadable image's row is its error."""
    rows: list[Row] = [{"image": path, "error": error} for path, _, error in loaded]
    good = [i for i, (_, array, _) in enumerate(loaded) if array is not None]
    if good:
        info = predictor.info
        probs = predictor.probabilities_of([loaded[i][1] for i in good])
        paths = [loaded[i][0] for i in good]
        for i, row in zip(good, results(paths, probs, list(info.labels), top_k, info.thresholds), strict=True):
            rows[i] = row
    return rows


def stream(predictor: Predictor, items: Iterable[Item], top_k: int = DEFAULT_TOP_K, batch_size: int = 32,
           workers: int | None = None) -> Iterator[list[Row]]:  # fmt: skip
    """The rows of each batch, in input order. Images are decoded by `workers` threads, the next batch while the
    model runs on this one: at most two batches of images are in memory."""
    size = predictor.fixed_batch or batch_size
    workers = workers or min(8, 2 * (os.cpu_count() or 1))  # decoding waits on files too: 2 per core (measured)
    it = iter(items)

    def chunk() -> list[Item]:
        return [item for _, item in zip(range(size), it, strict=False)]

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="zoo-decode") as pool:

        def submit(items: list[Item]) -> list[Future]:
            return [pool.submit(_load, predictor, item) for item in items]

        pending = submit(chunk())
        try:
            while pending:
                loaded = [f.result() for f in pending]
                pending = submit(chunk())
                yield _run_batch(predictor, loaded, top_k)
        finally:
            for f in pending:
                f.cancel()


def check_out(out: Path, overwrite: bool) -> None:
    """Before any work: a .csv or .jsonl path in a writable folder, not a file already there (unless `overwrite`)."""
    if out.is_dir():
        raise OutputError(f"--out {out}: is a folder; name the .csv or .jsonl file to write")
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {out}: the file name must end in .csv or .jsonl")
    if not out.parent.is_dir():
        what = "is a file, not a folder" if out.parent.exists() else "does not exist; create it"
        raise OutputError(f"--out {out}: {out.parent} {what}")
    if not atomic.can_write_in(out.parent):
        raise OutputError(f"--out {out}: {out.parent} is not a writable folder")
    if out.exists() and not overwrite:
        raise OutputError(f"--out {out}: the file exists; add --overwrite to replace it, or choose another name")


class _CsvRows:
    """image, label, probability (the top label), [labels: multi-label's chosen ones], top1_label, top1_prob, ...,
    error."""

    def __init__(self, f: IO[str], k: int, multi_label: bool):
        self.writer = csv.writer(f, lineterminator="\n")
        self.k, self.multi = k, multi_label
        tops = [c for i in range(1, k + 1) for c in (f"top{i}_label", f"top{i}_prob")]
        self.writer.writerow(["image", "label", "probability", *(["labels"] if multi_label else []), *tops, "error"])

    def write(self, rows: list[Row]) -> None:
        for row in rows:
            if "error" in row:
                cells = [""] * (2 + int(self.multi) + 2 * self.k)
                self.writer.writerow([row["image"], *cells, row["error"]])
                continue
            top = row["top"]
            chosen = [LABEL_SEP.join(t["label"] for t in row["labels"])] if self.multi else []
            tops = [x for t in top for x in (t["label"], t["probability"])] + [""] * (2 * (self.k - len(top)))
            self.writer.writerow([row["image"], top[0]["label"], top[0]["probability"], *chosen, *tops, ""])


class _JsonRows:
    """One JSON object per line: the object `zoo predict --json` gives per image, or {"image", "error"}."""

    def __init__(self, f: IO[str]):
        self.f = f

    def write(self, rows: list[Row]) -> None:
        for row in rows:
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")


def predict_many(
    model: str | Path,
    inputs: list[str],
    *,
    out: str | Path | None = None,
    top_k: int = DEFAULT_TOP_K,
    batch_size: int = 32,
    overwrite: bool = False,
    on_rows: Callable[[list[Row]], None] | None = None,
    on_progress: Callable[[int, int | None], None] | None = None,
    total: bool = False,
    threads: int | None = None,
    workers: int | None = None,
    provider: str | None = None,
) -> Summary:
    """Predict every image `inputs` name (files, folders, glob patterns) with an exported model, batch by batch.

    `out` (.csv or .jsonl): the rows go there, written whole when all are done (an existing file is refused
    unless `overwrite`). `on_rows(rows)`: called with each batch's rows as they come. `on_progress(done, total)`:
    after each batch; `total` counts the images first (a walk of the folders) so the total is known, else None.
    Ctrl-C or SIGTERM: Interrupted, and `out` is not written.
    """
    check_top_k(top_k)
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be >= 1")
    if not inputs:
        raise UsageError("no image given: pass image files, folders or glob patterns")
    target = Path(out) if out is not None else None
    if target is not None:
        check_out(target, overwrite)
    predictor = Predictor(model, threads=threads, provider=provider)
    k = min(top_k, len(predictor.info.labels))
    n_total = count(inputs) if total else None
    done = errors = 0
    start = time.perf_counter()

    def run(f: IO[str] | None) -> None:
        nonlocal done, errors
        writer = None
        if f is not None:
            is_csv = target.suffix.lower() == ".csv"
            writer = _CsvRows(f, k, predictor.info.multi_label) if is_csv else _JsonRows(f)
            f.flush()
        if on_progress:
            on_progress(0, n_total)
        for rows in stream(predictor, expand(inputs), top_k, batch_size, workers):
            if writer is not None:
                writer.write(rows)
                f.flush()  # each batch reaches the file before the next one is read
            if on_rows:
                on_rows(rows)
            done += len(rows)
            errors += sum("error" in r for r in rows)
            if on_progress:
                on_progress(done, n_total)

    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            run(f)

    where = f"; {target} was not written (it is written whole, when every image is done)" if target else ""
    with stops_as_interrupted(lambda _name: f"interrupted after {done} image(s){where}"):
        if target is None:
            run(None)
        else:
            atomic.atomic_write(target, write)
    return Summary(done, errors, time.perf_counter() - start, str(target) if target else None)
