"""How long `zoo audit` takes, and how much memory, on 400, 4,000 and 40,000 generated images.

    python bench/audit_speed.py                  # pixels only and with features, 400 / 4,000 / 40,000 images
    python bench/audit_speed.py --sizes 400 4000 --modes none

The images are generated once under a temporary folder: 10 classes of smooth random colour fields (128x96 JPEG,
each its own picture, the class a tint), split train/val 80/20, with 1% of the images copied byte for byte into
the other split. Each audit runs as its own `zoo audit ... --json --no-cache` process (a cold feature cache);
its wall time and its peak resident memory (ru_maxrss of that process, from os.wait4) are recorded, with the
seconds of each phase that the audit reports. Modes: `none` (`--model none`: duplicates and image checks from
pixels), `model` (the default backbone's features too: label errors, outliers, cropped copies).

Results: bench/results/audit_speed.json and docs/audit.md (between the markers).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report import publish

CLASSES = 10


def generate(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    tints = rng.uniform(0.5, 1.5, (CLASSES, 3))
    written = []
    for i in range(n):
        c = i % CLASSES
        split = "val" if (i // CLASSES) % 5 == 4 else "train"
        folder = root / split / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        small = np.clip(rng.integers(0, 256, (6, 8, 3)) * tints[c], 0, 255).astype(np.uint8)
        path = folder / f"{i:06d}.jpg"
        Image.fromarray(small).resize((128, 96), Image.Resampling.BICUBIC).save(path, quality=90)
        written.append((path, split, c))
    for path, split, c in written[::100]:  # 1%: a byte copy in the other split
        other = root / ("val" if split == "train" else "train") / f"class{c}" / f"copy_{path.name}"
        shutil.copyfile(path, other)


def run(data: Path, mode: str, out: Path) -> dict:
    zoo = str(Path(sys.executable).with_name("zoo"))
    cmd = [zoo, "audit", str(data), "--no-cache", "--json", "--out", str(out)]
    if mode == "none":
        cmd += ["--model", "none"]
    started = time.perf_counter()
    with open(out / "stdout.json", "w") as stdout, open(out / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(cmd, stdout=stdout, stderr=stderr)
        _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"failed: {' '.join(cmd)}\n{(out / 'stderr.txt').read_text()[-3000:]}")
    result = json.loads((out / "stdout.json").read_text())
    return {"images": result["images"], "mode": mode, "seconds": round(seconds, 1),
            "peak_rss_mib": round(usage.ru_maxrss / 1024), "phases": result["seconds"],
            "exact_duplicates": result["counts"]["exact-duplicate"], "model": result["model"],
            "load": round(os.getloadavg()[0], 1)}  # fmt: skip


def growth(rows: list[dict]) -> dict[str, float]:
    """The exponent of time against images between consecutive sizes, per mode (1 = linear, 2 = quadratic)."""
    out = {}
    for mode in {r["mode"] for r in rows}:
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["images"])
        for a, b in itertools.pairwise(mine):
            out[f"{mode} {a['images']}->{b['images']}"] = round(
                math.log(b["seconds"] / a["seconds"]) / math.log(b["images"] / a["images"]), 2
            )
    return out


def table(rows: list[dict]) -> str:
    lines = ["| images | mode | seconds | peak memory (MiB) | scan | images pass | features | duplicates | labels |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        p = r["phases"]
        cells = [p.get(k) for k in ("scan", "images", "features", "duplicates", "labels")]
        timed = " | ".join("-" if c is None else f"{c:.1f}" for c in cells)
        mode = r["mode"] if r["mode"] == "none" else r["model"]
        lines.append(f"| {r['images']} | {mode} | {r['seconds']} | {r['peak_rss_mib']} | {timed} |")
    lines += ["", "Growth of the wall time (exponent k of seconds ~ images^k): "
              + ", ".join(f"{k}: {v}" for k, v in sorted(growth(rows).items()))]  # fmt: skip
    return "\n".join(lines)


def merged(rows: list[dict]) -> list[dict]:
    """These rows and the earlier results' other (images, mode) rows: sizes and modes can be measured in turns."""
    earlier = Path(__file__).parent / "results" / "audit_speed.json"
    kept = json.loads(earlier.read_text())["rows"] if earlier.exists() else []
    new = {(r["images"], r["mode"]) for r in rows}
    return sorted(
        [r for r in kept if (r["images"], r["mode"]) not in new] + rows, key=lambda r: (r["mode"], r["images"])
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 4000, 40000])
    parser.add_argument("--modes", nargs="+", default=["none", "model"], choices=["none", "model"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            data = Path(tmp) / f"gen{n}"
            started = time.perf_counter()
            generate(data, n)
            print(f"generated {n} images in {time.perf_counter() - started:.0f} s", flush=True)
            for mode in args.modes:
                out = Path(tmp) / f"out-{n}-{mode}"
                out.mkdir()
                rows.append(run(data, mode, out))
                print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(data)
    rows = merged(rows)
    load = os.getloadavg()
    header = (f"Measured {time.strftime('%Y-%m-%d')} by `python bench/audit_speed.py`: 2 CPU cores shared with other "
              f"work (load average {load[0]:.1f} at the end), a cold feature cache, each audit its own process; "
              "seconds are wall time, memory the process's peak resident set.")  # fmt: skip
    header += " Load averages when each row was measured: " + ", ".join(
        f"{r['images']} {r['mode']}: {r['load']}" for r in rows if "load" in r
    )
    publish("audit_speed", {"rows": rows, "growth": growth(rows)}, header + "\n\n" + table(rows))


if __name__ == "__main__":
    main()
