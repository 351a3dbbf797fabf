"""Shared by the bench scripts: keep the raw results, and put the rendered table into docs/benchmarks.md."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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


def zoo(*args: str, env: dict) -> dict:
    """Run one zoo command with --json; a failure stops the script with the command's stderr."""
    cmd = [str(Path(sys.executable).with_name("zoo")), *args, "--json"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"failed ({done.returncode}): zoo {' '.join(args)}\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout)
    return {"seconds": seconds, "out": out}
