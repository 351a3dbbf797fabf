"""Manifests: images listed in a CSV/TSV file with their labels, and optionally their split.

How a manifest is read (docs/data.md says the same, with examples):

- Delimiter: a tab for `.tsv` and `.tab` files; otherwise the first line decides: a tab if it has
  tabs and no comma, `;` if it has semicolons and no comma, else a comma. UTF-8 (a BOM is fine).
- Header: the first row is a header, unless its first cell names an image file that exists; then
  the columns are positional: path, label, and split when there is a third.
- Columns: `--path-column`, `--label-column`, `--split-column` (a header name or a 1-based
  number); else the first header cell named (ignoring case, spaces, `_` and `-`) one of
  `PATH_NAMES`, `LABEL_NAMES`, `SPLIT_NAMES`. With no label column, when every other column holds
  only 0 and 1 (one-hot, as many exports write), those columns are the classes: one 1 per row
  makes single-label data, any other count multi-label.
- Paths are relative to the manifest's folder (or to DATA with `--labels FILE`); a path without
  an extension is tried with each image extension (`id` columns of many exports).
- Labels: one per cell; several in one cell are separated by `--label-sep`, or else by the first
  of `|`, `;`, `,` and whitespace that any label cell contains, which makes the data multi-label.
  `--single-label` keeps every cell whole (class names with spaces); `--multi-label` makes one
  label per cell multi-label too (sigmoid outputs, an image may get none).
- Split: `train`, `val` or `test` (also training, valid, validation, dev, testing, holdout).

A row that cannot be used (no file, an empty label, an unknown split, an image listed twice) is
skipped, counted and reported with its line number; nothing here decodes an image or imports torch.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from zoo.core.errors import DataError, UsageError
from zoo.data.images import EXTENSIONS

SUFFIXES = (".csv", ".tsv", ".tab", ".txt")
PATH_NAMES = ("path", "filepath", "file", "filename", "image", "imagepath", "imagefile", "imagename", "img",
              "imageid", "id")  # fmt: skip
LABEL_NAMES = ("labels", "label", "tags", "tag", "classes", "class", "classname", "category", "categories",
               "target", "targets", "y")  # fmt: skip
SPLIT_NAMES = ("split", "subset", "set", "partition", "phase")
SPLITS = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "holdout": "test",
}  # fmt: skip
AUTO_SEPARATORS = ("|", ";", ",", " ")  # " " stands for any whitespace
_SYSTEM_TREES = ("/proc", "/sys", "/dev")
MAX_ROWS = 10_000_000


@dataclass(frozen=True)
class ManifestOptions:
    """How to read a manifest: the flags of `zoo finetune` and `zoo evaluate` that concern it."""

    path_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    label_sep: str | None = None
    multi_label: bool | None = None  # None: decided by the data


@dataclass(frozen=True)
class Row:
    line: int
    path: Path
    labels: tuple[str, ...]
    split: str | None  # train | val | test | None (no split column)


@dataclass
class Manifest:
    file: Path
    root: Path  # what paths are relative to
    rows: list[Row]
    bad: list[tuple[int, str, str]]  # (line, path cell, reason)
    total: int  # data rows read
    columns: dict[str, str]  # role -> header name (or column number)
    multi_label: bool
    separator: str | None
    classes: list[str] | None  # one-hot columns, in header order (None: the labels found, sorted)
    how: list[str] = field(default_factory=list)  # what was detected, to report

    @property
    def has_split(self) -> bool:
        return "split" in self.columns


def is_manifest(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def _delimiter(file: Path, first_line: str) -> str:
    if file.suffix.lower() in (".tsv", ".tab"):
        return "\t"
    if "\t" in first_line and "," not in first_line:
        return "\t"
    if ";" in first_line and "," not in first_line:
        return ";"
    return ","


def _read_text(file: Path) -> str:
    try:
        data = file.read_bytes()
    except IsADirectoryError:
        raise DataError(f"{file}: is a folder, not a manifest") from None
    except OSError as exc:
        raise DataError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{file}: not UTF-8 text (byte {exc.start}); save the manifest as UTF-8 CSV/TSV") from None


def resolve_path(cell: str, root: Path) -> tuple[Path | None, str]:
    """The image file a path cell names, or (None, why not)."""
    if not cell:
        return None, "empty path"
    if "\x00" in cell:
        return None, "a path with a NUL character"
    path = Path(cell).expanduser()
    if not path.is_absolute():
        path = root / path
    real = os.path.realpath(path)
    if any(real == t or real.startswith(t + "/") for t in _SYSTEM_TREES):
        return None, f"{cell}: a system file, not an image"
    candidates = [path]
    if not path.suffix:
        candidates += [path.with_name(path.name + ext) for e in EXTENSIONS for ext in (e, e.upper())]
    for candidate in candidates:
        try:
            if candidate.is_file():
                return candidate, ""
            if candidate.is_dir():
                return None, f"{cell}: is a folder, not an image file"
        except OSError as exc:
            return None, f"{cell}: cannot access it ({exc.strerror or exc})"
    return None, f"{cell}: no such file"


def _column(flag: str, given: str, header: list[str] | None) -> int:
    """The index of a column named by a flag: a header name or a 1-based number."""
    n = len(header) if header else 0
    if given.isdigit():
        index = int(given) - 1
        if not 0 <= index < max(n, 1) and header is not None:
            raise UsageError(f"--{flag} {given}: the manifest has {n} columns")
        return index
    if header is None:
        raise UsageError(f"--{flag} {given}: the manifest has no header row; give a column number (1, 2, ...)")
    keys = [_key(h) for h in header]
    if _key(given) not in keys:
        raise UsageError(f"--{flag} {given}: no such column; the header is: {', '.join(header)}")
    return keys.index(_key(given))


def _find(names: tuple[str, ...], header: list[str], taken: set[int]) -> int | None:
    keys = [_key(h) for h in header]
    for name in names:
        for i, k in enumerate(keys):
            if k == name and i not in taken:
                return i
    return None


def _binary(value: str) -> bool:
    return value.strip() in ("0", "1", "0.0", "1.0")


def _separator(cells: list[str], given: str | None, multi_label: bool | None, delimiter: str) -> str | None:
    if given is not None:
        if given == "":
            raise UsageError("--label-sep: give the character that separates labels in a cell (e.g. ' ' or '|')")
        return given
    if multi_label is False:
        return None
    for sep in AUTO_SEPARATORS:
        if sep == delimiter:
            continue
        if sep == " ":
            if any(len(c.split()) > 1 for c in cells):
                return " "
        elif any(sep in c for c in cells):
            return sep
    return None


def read(file: Path | str, root: Path | str | None = None, options: ManifestOptions | None = None) -> Manifest:
    """Read and check every row of a manifest; raise DataError for one that cannot be read at all."""
    file = Path(file).expanduser()
    options = options or ManifestOptions()
    if not file.exists():
        raise DataError(f"{file}: no such manifest file")
    root = Path(root).expanduser() if root is not None else file.parent
    text = _read_text(file)
    first_line = text.split("\n", 1)[0]
    delimiter = _delimiter(file, first_line)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows: list[tuple[int, list[str]]] = []
    try:
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append((reader.line_num, [c.strip() for c in cells]))
            if len(rows) > MAX_ROWS:
                raise DataError(f"{file}: more than {MAX_ROWS} rows; split the manifest")
    except csv.Error as exc:
        raise DataError(f"{file}: line {reader.line_num}: not valid CSV ({exc})") from None
    if not rows:
        raise DataError(f"{file}: the manifest is empty")
    how = []
    first = rows[0][1]
    known = {*PATH_NAMES, *LABEL_NAMES, *SPLIT_NAMES}
    looks_like_file = Path(first[0]).suffix.lower() in EXTENSIONS and not any(_key(c) in known for c in first)
    has_header = resolve_path(first[0], root)[0] is None and not looks_like_file
    header = first if has_header else None
    data = rows[1:] if has_header else rows
    if not data:
        raise DataError(f"{file}: only a header row, no images listed")
    width = len(header) if header else max(len(c) for _, c in data)
    columns: dict[str, str] = {}

    def name(i: int) -> str:
        return header[i] if header else f"column {i + 1}"

    # the columns: flags first, then names, then positions (no header)
    taken: set[int] = set()
    idx: dict[str, int | None] = {}
    for role, flag, names, position in (
        ("path", "path-column", PATH_NAMES, 0),
        ("label", "label-column", LABEL_NAMES, 1),
        ("split", "split-column", SPLIT_NAMES, 2),
    ):
        given = getattr(options, flag.replace("-", "_"))
        if given is not None:
            idx[role] = _column(flag, given, header)
        elif header is not None:
            idx[role] = _find(names, header, taken)
        else:
            idx[role] = position if position < width else None
        if idx[role] is not None:
            taken.add(idx[role])
    if idx["path"] is None:
        raise DataError(f"{file}: no path column in the header ({', '.join(header or [])}); name it with --path-column")
    one_hot: list[int] = []
    if idx["label"] is None:
        others = [i for i in range(width) if i not in taken]
        if len(others) >= 2 and all(all(_binary(c[i]) for i in others if i < len(c)) for _, c in data):
            one_hot = others
        else:
            raise DataError(
                f"{file}: no label column in the header ({', '.join(header or [])}); name it with --label-column "
                "(or give one 0/1 column per class)"
            )
    columns["path"] = name(idx["path"])
    if one_hot:
        columns["labels"] = ", ".join(name(i) for i in one_hot)
    else:
        columns["label"] = name(idx["label"])
    if idx["split"] is not None:
        columns["split"] = name(idx["split"])
    how.append(
        f"{'header' if header else 'no header (columns by position)'}; delimiter {delimiter!r}; columns: "
        + ", ".join(f"{role} = {col}" for role, col in columns.items())
    )

    def cell(cells: list[str], i: int | None) -> str:
        return cells[i] if i is not None and i < len(cells) else ""

    classes = [name(i) for i in one_hot] if one_hot else None
    if one_hot:
        counts = {sum(_binary(cell(c, i)) and cell(c, i).startswith("1") for i in one_hot) for _, c in data}
        multi = options.multi_label if options.multi_label is not None else counts != {1}
        separator = None
        how.append(f"one 0/1 column per class: {'multi' if multi else 'single'}-label")
    else:
        label_cells = [cell(c, idx["label"]) for _, c in data]
        separator = _separator(label_cells, options.label_sep, options.multi_label, delimiter)
        multi = options.multi_label if options.multi_label is not None else separator is not None
        if separator is not None and multi:
            shown = "whitespace" if separator == " " else repr(separator)
            how.append(
                f"multi-label: labels separated by {shown}"
                + ("" if options.label_sep is not None else " (detected; --no-multi-label keeps cells whole)")
            )
        elif multi:
            how.append("multi-label (--multi-label): one label per cell")
    good: list[Row] = []
    bad: list[tuple[int, str, str]] = []
    seen: dict[Path, int] = {}
    for line, cells in data:
        path_cell = cell(cells, idx["path"])
        path, why = resolve_path(path_cell, root)
        if path is None:
            bad.append((line, path_cell, why))
            continue
        if one_hot:
            labels = tuple(classes[k] for k, i in enumerate(one_hot) if cell(cells, i).startswith("1"))
            if not labels:
                bad.append((line, path_cell, "no class column is 1"))
                continue
            if len(labels) > 1 and not multi:
                bad.append((line, path_cell, f"{len(labels)} class columns are 1 in single-label data"))
                continue
        else:
            raw = cell(cells, idx["label"])
            if separator is None or not multi:
                labels = (raw,) if raw else ()
            elif separator == " ":
                labels = tuple(raw.split())
            else:
                labels = tuple(p.strip() for p in raw.split(separator) if p.strip())
            if not labels:
                bad.append((line, path_cell, "empty label"))
                continue
            labels = tuple(dict.fromkeys(labels))  # a label named twice counts once
        split = None
        if idx["split"] is not None:
            raw_split = cell(cells, idx["split"])
            split = SPLITS.get(raw_split.lower())
            if split is None:
                why = "empty split" if not raw_split else f"unknown split {raw_split!r}"
                bad.append((line, path_cell, f"{why} (use train, val or test)"))
                continue
        real = Path(os.path.realpath(path))
        if real in seen:
            bad.append((line, path_cell, f"the same image as line {seen[real]}"))
            continue
        seen[real] = line
        good.append(Row(line, path, labels, split))
    return Manifest(file, root, good, bad, len(data), columns, multi, separator, classes, how)
