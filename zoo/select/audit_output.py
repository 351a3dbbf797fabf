"""What `zoo audit` leaves behind: audit.json (everything), audit.csv (one row per flagged file and issue), audit.html
(the duplicate groups and suspected label errors as thumbnails), and, asked for, a corrected manifest. Each file is
written whole or not at all; none is written into the data, and no data file is ever changed."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from zoo.core.atomic import atomic_write, write_json
from zoo.core.errors import UsageError
from zoo.data.manifest import AUTO_SEPARATORS, SUFFIXES

CSV_COLUMNS = ("path", "split", "label", "issue", "score", "details", "suggested", "group")


def write_audit(result, folder: Path) -> list[Path]:
    """audit.json, audit.csv and audit.html into `folder` (which exists); the paths written."""
    from zoo.select.audit_page import render

    written = [write_json(folder / "audit.json", result.to_dict())]
    written.append(atomic_write(folder / "audit.csv", lambda tmp: tmp.write_text(audit_csv(result), "utf-8")))
    written.append(atomic_write(folder / "audit.html", lambda tmp: tmp.write_text(render(result), "utf-8")))
    return written


def audit_csv(result) -> str:
    """One row per flagged file and issue, ranked within each issue (highest score first), issues in KINDS order.
    `zoo finetune --exclude-from audit.csv` leaves out every file it names: delete the rows to keep."""
    from zoo.select.audit import KINDS

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for kind in KINDS:
        for f in sorted(result.of(kind), key=lambda f: (-f.score, f.path)):
            writer.writerow([os.path.abspath(f.path), f.split or "", f.label or "", f.issue, f"{f.score:.4g}",
                             f.details, f.suggested or "", f.group or ""])  # fmt: skip
    return buffer.getvalue()


def check_fix_manifest(out: str | Path, data: str | Path, labels: str | Path | None) -> Path:
    """Refuse a --fix-manifest destination that is not a .csv/.tsv file, or that is the audited manifest itself."""
    path = Path(out).expanduser()
    if path.suffix.lower() not in (".csv", ".tsv"):
        raise UsageError(f"--fix-manifest {out}: give a .csv or .tsv file name (a manifest zoo finetune reads)")
    sources = [Path(p).expanduser() for p in (data, labels) if p is not None]
    if any(s.is_file() and s.resolve() == path.resolve() for s in sources if s.suffix.lower() in SUFFIXES):
        raise UsageError(f"--fix-manifest {out}: that is the data's own manifest; zoo audit never changes the data")
    if path.is_dir():
        raise UsageError(f"--fix-manifest {out}: a folder; give a file name")
    return path


def fix_manifest(result, out: Path) -> dict[str, int]:
    """A manifest of the audited images (path, label, split, audit) for `zoo finetune OUT.csv`: without the copies
    that leak into another split (each duplicate group keeps its images of the split of its first member), every
    other flagged image marked in the `audit` column with its issues. Paths are relative to OUT's folder."""
    issues: dict[str, list[str]] = {}
    for f in result.findings:
        if f.split is not None:
            issues.setdefault(f.path, []).append(f.issue)
    leaving = set()
    for g in result.groups:
        if g.cross_split:
            keep = g.members[0]["split"]
            leaving |= {m["path"] for m in g.members if m["split"] != keep}
    sep = next((s for s in ("|", ";") if not any(s in c for c in result.classes)), "|")
    delimiter = "\t" if out.suffix.lower() == ".tsv" else ","
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerow(("path", "labels" if result.multi_label else "label", "split", "audit"))
    kept = marked = 0
    for path, split, label in result.rows:
        if path in leaving:
            continue
        kept += 1
        marked += path in issues
        cell = label.replace("|", sep) if result.multi_label else label
        writer.writerow((_relative(path, out.parent), cell, split, ";".join(dict.fromkeys(issues.get(path, [])))))
    atomic_write(out, lambda tmp: tmp.write_text(buffer.getvalue(), "utf-8"))
    return {"rows": kept, "left_out": len(leaving), "marked": marked}


def needs_single_label(result) -> bool:
    """Single-label data whose class names hold a character the manifest reader takes for a label separator."""
    return not result.multi_label and any(
        (sep in name) if sep != " " else any(ch.isspace() for ch in name)
        for name in result.classes
        for sep in AUTO_SEPARATORS
    )


def _relative(path: str, folder: Path) -> str:
    absolute = os.path.abspath(path)
    try:
        return os.path.relpath(absolute, os.path.abspath(folder))
    except ValueError:  # another drive
        return absolute
