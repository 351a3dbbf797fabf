"""`zoo list` with every installed plugin (timm's 1364 architectures included) against `import torch, torchvision`.

    python bench/listing_speed.py [--repeats 7]

Both commands run as fresh processes, alternating, in one run; the table gives min/median/max seconds and the
ratio of medians. The goal: `zoo list` takes at most a quarter of the time of importing torch and torchvision.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

from report import publish

COMMANDS = {
    "zoo list": [sys.executable, "-m", "zoo", "list"],
    "zoo list --json": [sys.executable, "-m", "zoo", "list", "--json"],
    "zoo list --source timm": [sys.executable, "-m", "zoo", "list", "--source", "timm"],
    "python -c 'import torch, torchvision'": [sys.executable, "-c", "import torch, torchvision"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    rows = subprocess.run(COMMANDS["zoo list"], capture_output=True, text=True, check=True).stdout.splitlines()
    for _ in range(args.repeats):
        for name, cmd in COMMANDS.items():
            start = time.perf_counter()
            subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
    torch_median = statistics.median(times["python -c 'import torch, torchvision'"])
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')}, {platform.python_version()}, {args.repeats} runs each, alternating; "
        f"`zoo list` printed {len(rows) - 2} backbones.",
        "",
        "| command | min s | median s | max s | median / import torch |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, values in times.items():
        median = statistics.median(values)
        lines.append(
            f"| `{name}` | {min(values):.2f} | {median:.2f} | {max(values):.2f} | {median / torch_median:.2f} |"
        )
    publish("listing_speed", {"times": times, "backbones": len(rows) - 2}, "\n".join(lines))


if __name__ == "__main__":
    main()
