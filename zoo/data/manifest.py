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
import logging
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


def image_path(cell: str, root: Path) -> tuple[Path | None, str]:
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
    delimiter = _delimiter(file, text.split("\n", 1)[0])
    header, data = _header(file, _parse(file, text, delimiter), root)
    layout = _layout(file, header, data, options)
    columns = layout.columns()
    how = [
        f"{'header' if header else 'no header (columns by position)'}; delimiter {delimiter!r}; columns: "
        + ", ".join(f"{role} = {col}" for role, col in columns.items())
    ]
    how += _label_mode(layout, data, options, delimiter)
    good, bad = _check_rows(layout, data, root)
    return Manifest(file, root, good, bad, len(data), columns, layout.multi, layout.separator, layout.classes, how)


def _parse(file: Path, text: str, delimiter: str) -> list[tuple[int, list[str]]]:
    """The rows that are not blank, as (line number, stripped cells)."""
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
    return rows


def _header(file: Path, rows: list[tuple[int, list[str]]], root: Path):
    """(the header row, or None when the first row names an image file; the data rows)."""
    first = rows[0][1]
    known = {*PATH_NAMES, *LABEL_NAMES, *SPLIT_NAMES}
    looks_like_file = Path(first[0]).suffix.lower() in EXTENSIONS and not any(_key(c) in known for c in first)
    has_header = image_path(first[0], root)[0] is None and not looks_like_file
    header = first if has_header else None
    data = rows[1:] if has_header else rows
    if not data:
        raise DataError(f"{file}: only a header row, no images listed")
    return header, data


def _cell(cells: list[str], i: int | None) -> str:
    return cells[i] if i is not None and i < len(cells) else ""


@dataclass
class _Layout:
    """Where a row's path, labels and split are, and how its label cells read."""

    header: list[str] | None
    path: int
    label: int | None  # None: one-hot columns
    split: int | None
    one_hot: list[int]  # the class columns, when there is no label column
    multi: bool = False
    separator: str | None = None

    def name(self, i: int) -> str:
        return self.header[i] if self.header else f"column {i + 1}"

    @property
    def classes(self) -> list[str] | None:
        return [self.name(i) for i in self.one_hot] if self.one_hot else None

    def columns(self) -> dict[str, str]:
        """role -> header name (or column number), as reported."""
        columns = {"path": self.name(self.path)}
        if self.one_hot:
            columns["labels"] = ", ".join(self.name(i) for i in self.one_hot)
        else:
            columns["label"] = self.name(self.label)
        if self.split is not None:
            columns["split"] = self.name(self.split)
        return columns


def _layout(file: Path, header: list[str] | None, data: list[tuple[int, list[str]]], options: ManifestOptions):
    """The columns: flags first, then names, then positions (no header); one-hot class columns when no label
    column is found."""
    width = len(header) if header else max(len(c) for _, c in data)
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
    return _Layout(header, idx["path"], idx["label"], idx["split"], one_hot)


def _label_mode(layout: _Layout, data: list[tuple[int, list[str]]], options: ManifestOptions, delimiter: str):
    """Decide whether the data is multi-label and what separates labels in a cell (set on `layout`); what was
    detected, to report."""
    if layout.one_hot:
        counts = {sum(_binary(_cell(c, i)) and _cell(c, i).startswith("1") for i in layout.one_hot) for _, c in data}
        layout.multi = options.multi_label if options.multi_label is not None else counts != {1}
        return [f"one 0/1 column per class: {'multi' if layout.multi else 'single'}-label"]
    label_cells = [_cell(c, layout.label) for _, c in data]
    separator = layout.separator = _separator(label_cells, options.label_sep, options.multi_label, delimiter)
    multi = layout.multi = options.multi_label if options.multi_label is not None else separator is not None
    if separator is not None and multi:
        shown = "whitespace" if separator == " " else repr(separator)
        spaced = [line for line, c in data if len(_cell(c, layout.label).split()) > 1] if separator == " " else []
        if options.label_sep is None and 0 < len(spaced) <= len(data) / 2:  # a few class names with spaces?
            logging.getLogger(__name__).warning(
                "%d of %d label cells hold a space (line %d first), so the data is read as multi-label; if they are "
                "class names with spaces, pass --no-multi-label", len(spaced), len(data), spaced[0])  # fmt: skip
        return [
            f"multi-label: labels separated by {shown}"
            + ("" if options.label_sep is not None else " (detected; --no-multi-label keeps cells whole)")
        ]
    return ["multi-label (--multi-label): one label per cell"] if multi else []


def _labels(layout: _Layout, cells: list[str]) -> tuple[tuple[str, ...], str]:
    """A row's labels, or ((), why not)."""
    if layout.one_hot:
        labels = tuple(layout.name(i) for i in layout.one_hot if _cell(cells, i).startswith("1"))
        if not labels:
            return (), "no class column is 1"
        if len(labels) > 1 and not layout.multi:
            return (), f"{len(labels)} class columns are 1 in single-label data"
        return labels, ""
    raw, separator = _cell(cells, layout.label), layout.separator
    if separator is None or not layout.multi:
        labels = (raw,) if raw else ()
    elif separator == " ":
        labels = tuple(raw.split())
    else:
        labels = tuple(p.strip() for p in raw.split(separator) if p.strip())
    if not labels:
        return (), "empty label"
    return tuple(dict.fromkeys(labels)), ""  # a label named twice counts once


def _split(layout: _Layout, cells: list[str]) -> tuple[str | None, str]:
    """A row's split (None without a split column), or (None, why not)."""
    if layout.split is None:
        return None, ""
    raw_split = _cell(cells, layout.split)
    split = SPLITS.get(raw_split.lower())
    if split is None:
        why = "empty split" if not raw_split else f"unknown split {raw_split!r}"
        return None, f"{why} (use train, val or test)"
    return split, ""


def _check_rows(layout: _Layout, data: list[tuple[int, list[str]]], root: Path):
    """(the usable rows, the bad ones as (line, path cell, reason)); an image listed twice is bad the second time."""
    good: list[Row] = []
    bad: list[tuple[int, str, str]] = []
    seen: dict[Path, int] = {}
    for line, cells in data:
        path_cell = _cell(cells, layout.path)
        path, why = image_path(path_cell, root)
        labels, split = (), None
        if not why:
            labels, why = _labels(layout, cells)
        if not why:
            split, why = _split(layout, cells)
        if path is None or why:
            bad.append((line, path_cell, why))
            continue
        real = Path(os.path.realpath(path))
        if real in seen:
            bad.append((line, path_cell, f"the same image as line {seen[real]}"))
            continue
        seen[real] = line
        good.append(Row(line, path, labels, split))
    return good, bad
