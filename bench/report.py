"""Shared by the bench scripts: keep the raw results, and put the rendered table into docs/benchmarks.md."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"


def publish(name: str, record: dict, table: str, update_doc: bool = True) -> None:
    """Write bench/results/NAME.json, print the table, and replace the doc section marked with NAME."""
    results = ROOT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(table)
    if update_doc:
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        docs = (DOC, *sorted((ROOT / "docs").glob("*.md")))
        doc = next(p for p in docs if begin in p.read_text(encoding="utf-8"))
        text = doc.read_text(encoding="utf-8")
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        doc.write_text(f"{head}{begin}\n{table}\n{end}{tail}", encoding="utf-8")
