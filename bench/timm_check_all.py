"""zoo's plugin check over every timm architecture: build, head, groups, forward, cut at every boundary, export.

    python bench/timm_check_all.py                 # every architecture (hours on 2 cores; resumable)
    python bench/timm_check_all.py 'resnet*' vit_tiny_patch16_224   # some (fnmatch patterns)
    python bench/timm_check_all.py --table         # only rewrite the table from bench/results

Each architecture runs in its own process (a crash or a memory blow-up costs one row, not the run), at
random init, at its smallest input size (64 at least; fixed-size models at theirs), stage by stage:

- build: `create_model(spec, num_classes=3, weights="none")`: timm builds it, zoo replaces every classifier;
- groups: zoo's GroupMap: every parameter in exactly one group, the head group last, no empty group;
- forward: logits of shape (2, 3), finite, after BatchNorm statistics are calibrated (as in check_backbone);
- cut: `zoo.model.cut.cut_at` at every group boundary, the two halves together equal the model (what the
  frozen-prefix cache and `cut:GROUP` do); an architecture torch.fx cannot trace is counted as "falls back"
  (zoo trains it uncached, and `zoo info` says so);
- export: `zoo.export.exporter.export_model` (TorchScript exporter first for speed, dynamo where it fails or does not
  match), verified against onnxruntime at batch 1 and 2.

An architecture whose parameters need more than a sixth of this machine's memory in float32 (the model, its
traced copy, the ONNX file and onnxruntime's session hold about four copies at once, plus activations) is not
run: it is listed as "does not fit in memory here" with its size, outside the share.

Results accumulate in bench/results/timm_check_all.json (a rerun skips what is there unless --again), and
the table goes to docs/timm.md.
"""

from __future__ import annotations

import argparse
import collections
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from report import ROOT, publish

RESULTS = ROOT / "bench" / "results" / "timm_check_all.json"
STAGES = ("build", "groups", "forward", "cut", "export")


def check_one(name: str) -> dict:
    """Every stage for one architecture; the first failure stops the rest."""
    import dataclasses

    import torch

    from zoo.catalogue.registry import get_registry
    from zoo.data.check_images import generated_inputs
    from zoo.export.exporter import export_model
    from zoo.model.build import GroupMap, create_model, split_outputs
    from zoo.model.cut import cut_at
    from zoo.testing import calibrate_batchnorm

    torch.set_num_threads(int(os.environ.get("CHECK_THREADS", "1")))
    spec = get_registry().get(f"timm/{name}")
    row = {"name": name, "params": spec.num_params, "stages": {}, "seconds": {}}
    side = spec.min_input_size if spec.min_input_size >= min(spec.preprocess.input_size) else max(
        64, spec.min_input_size)  # fmt: skip
    hw = tuple(spec.preprocess.input_size) if side >= min(spec.preprocess.input_size) else (side, side)
    pre = dataclasses.replace(spec.preprocess, input_size=hw, crop_pct=1.0)
    row["input"] = list(hw)
    state = {}

    def stage(label, fn):
        t = time.perf_counter()
        try:
            result = fn()
            row["stages"][label] = result if isinstance(result, str) else "ok"
        except Exception as exc:
            text = str(exc).strip().splitlines()
            row["stages"][label] = "failed"
            row["error"] = {"stage": label, "reason": f"{type(exc).__name__}: {text[0][:300] if text else ''}"}
        row["seconds"][label] = round(time.perf_counter() - t, 2)
        return row["stages"][label] != "failed"

    def build():
        torch.manual_seed(0)
        state["model"] = create_model(spec, num_classes=3, weights="none", check=False).eval()

    def groups():
        state["groups"] = GroupMap(state["model"], spec)

    def forward():
        model = state["model"]
        calibrate_batchnorm(model, torch.from_numpy(generated_inputs(pre, 16, seed=1)))
        x = torch.from_numpy(generated_inputs(pre, 2))
        with torch.no_grad():
            out = split_outputs(model(x))[0]
        if tuple(out.shape) != (2, 3) or not torch.isfinite(out).all():
            raise ValueError(f"logits of shape {tuple(out.shape)}, finite: {bool(torch.isfinite(out).all())}")
        state["x"], state["out"] = x, out

    def cut():
        if any("torch.fx cannot trace" in n for n in spec.notes):
            return "falls back"
        model, x, out = state["model"], state["x"], state["out"]
        for k in range(1, len(spec.groups)):
            prefix, suffix = cut_at(model, spec, k, state["groups"])
            with torch.no_grad():
                again = split_outputs(suffix(*prefix(x)))[0]
            diff = (again - out).abs().max().item()
            if diff > 1e-4 * max(1.0, out.abs().max().item()):
                raise ValueError(f"cut after group '{spec.groups[k - 1].name}' changes the output by {diff:.3g}")

    def export():
        with tempfile.TemporaryDirectory() as tmp:
            report = export_model(state["model"], spec, pre, ["a", "b", "c"], Path(tmp) / "m.onnx", check_batch=2,
                                  exporter="torchscript")  # fmt: skip
        row["exporter"] = report.exporter
        if not report.passed:
            raise ValueError("; ".join(f for c in report.checks for f in c.failures) + _conditioning())

    def _conditioning() -> str:
        """How far torch's own float32 output is from float64 on the same input: when the ONNX difference is of
        that size, the random-init network is ill-conditioned (roundoff is amplified), not exported wrongly."""
        model, x = state["model"], torch.from_numpy(generated_inputs(pre, 2))
        with torch.no_grad():
            fp32 = split_outputs(model(x))[0].double()
            fp64 = split_outputs(model.double()(x.double()))[0]
        model.float()
        return f" (torch float32 itself differs from float64 by {(fp32 - fp64).abs().max().item():.3g})"

    for label, fn in zip(STAGES, (build, groups, forward, cut, export), strict=True):
        if not stage(label, fn):
            break
    return row


def memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def run_all(patterns: list[str], again: bool, timeout: int) -> dict:
    from zoo.catalogue.registry import get_registry

    doc = json.loads((ROOT / "plugins" / "zoo-timm" / "zoo_timm" / "models.json").read_text())
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    for record in doc["models"]:
        if record.get("error"):
            results[record["name"]] = {"name": record["name"], "stages": {}, "not_registered": record["error"]}
    names = sorted(s.name.split("/", 1)[1] for s in get_registry().list(source="timm"))
    names = [n for n in names if not patterns or any(fnmatch.fnmatch(n, p) for p in patterns)]
    sizes = {r["name"]: r.get("num_params") or 0 for r in doc["models"]}
    todo = sorted((n for n in names if again or n not in results or "stages" not in results[n]), key=sizes.get)
    print(f"{len(todo)} of {len(names)} architectures to check", file=sys.stderr)
    budget = memory_bytes() / 6 / 4  # parameters that fit, in float32
    for i, name in enumerate(todo):
        t = time.perf_counter()
        if sizes[name] > budget:
            results[name] = {
                "name": name,
                "stages": {},
                "too_big": f"{sizes[name] / 1e9:.2f}B parameters, "
                f"{sizes[name] * 4 / 2**30:.1f} GiB in float32 ({memory_bytes() / 2**30:.0f} GiB here)",
            }
            continue
        try:
            out = subprocess.run([sys.executable, __file__, "--one", name], capture_output=True, text=True,
                                 timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {
                "name": name, "stages": {}, "error": {"stage": "process", "reason": _died(out)}}  # fmt: skip
        except subprocess.TimeoutExpired:
            row = {"name": name, "stages": {}, "error": {"stage": "process", "reason": f"over {timeout} s"}}
        row["wall"] = round(time.perf_counter() - t, 1)
        results[name] = row
        RESULTS.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
        status = "ok" if "error" not in row else f"{row['error']['stage']}: {row['error']['reason'][:100]}"
        print(f"[{i + 1}/{len(todo)}] {name} {row['wall']}s {status}", file=sys.stderr, flush=True)
    return results


def _died(out: subprocess.CompletedProcess) -> str:
    if out.returncode < 0:
        import signal

        return f"killed by {signal.Signals(-out.returncode).name} (out of memory?)"
    tail = (out.stderr or "").strip().splitlines()
    return f"exit {out.returncode}: {tail[-1][:300] if tail else ''}"


def table(results: dict) -> str:
    rows = list(results.values())
    too_big = sorted((r["name"], r["too_big"]) for r in rows if "too_big" in r)
    registered = [r for r in rows if "not_registered" not in r and "too_big" not in r]
    checked = [r for r in registered if r.get("stages") or r.get("error")]
    counts = {s: sum(1 for r in checked if r["stages"].get(s) in ("ok", "falls back")) for s in STAGES}
    falls_back = [r["name"] for r in checked if r["stages"].get("cut") == "falls back"]
    everything = [r for r in checked if all(r["stages"].get(s) == "ok" for s in STAGES)]
    reasons = collections.defaultdict(list)
    for r in checked:
        if "error" in r:
            key = f"{r['error']['stage']}: {_short(r['error']['reason'])}"
            reasons[key].append(r["name"])
    n = len(checked)
    largest = max((r.get("params", 0) for r in checked), default=0)
    doc = json.loads((ROOT / "plugins" / "zoo-timm" / "zoo_timm" / "models.json").read_text())
    unregistered = sum(1 for r in doc["models"] if r.get("error"))
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with timm {doc['timm']}: {len(doc['models'])} architectures in "
        f"timm.list_models(), {len(doc['models']) - unregistered} registered ({unregistered} encoders without a "
        f"classifier are not), {len(too_big)} do not fit in memory here, {n} checked.",
    ]
    left = len(doc["models"]) - unregistered - len(too_big) - n
    if left > 0:
        lines += [
            "",
            f"**Coverage: {n} of {n + left} ({n / (n + left):.0%}).** The check runs the architectures smallest first "
            f"and resumes where it stopped; on this 2-core machine it reached {largest / 1e6:.1f}M parameters in the "
            f"time it had, and the {left} larger ones (each slower to trace and export) are not checked yet: "
            "`python bench/timm_check_all.py` goes on from here.",
        ]
    lines += [
        "",
        "| stage | passed | share of checked |",
        "|---|---:|---:|",
    ]
    for s in STAGES:
        extra = f" ({len(falls_back)} fall back: not traceable)" if s == "cut" and falls_back else ""
        lines.append(f"| {s}{extra} | {counts[s]} | {counts[s] / max(1, n):.1%} |")
    lines.append(f"| **every stage** | **{len(everything)}** | **{len(everything) / max(1, n):.1%}** |")
    usable = len(everything) + sum(1 for r in checked if r["stages"].get("export") == "ok" and r["name"] in falls_back)
    lines.append(f"| every stage, or falls back to uncached training | {usable} | {usable / max(1, n):.1%} |")
    lines += ["", "Failures, by stage and reason:", ""]
    for key, names in sorted(reasons.items(), key=lambda kv: -len(kv[1])):
        if len(names) <= 3:  # few: each with its own figures
            shown = ", ".join(f"{n} ({results[n]['error']['reason'].split(': ', 1)[-1]})" for n in sorted(names))
        else:
            shown = ", ".join(sorted(names)[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        lines.append(f"- {len(names)} x {key}: {shown}")
    if too_big:
        lines += [
            "",
            "Not run, too big for this machine (float32 parameters over a sixth of its memory): "
            + ", ".join(f"{name} ({why.split(',')[0]})" for name, why in too_big)
            + ".",
        ]
    if falls_back:
        lines += ["", f"Not traceable (cut falls back, training uncached): {', '.join(sorted(falls_back))}."]
    return "\n".join(lines)


def _short(reason: str) -> str:
    import re

    reason = re.sub(r"(?<![a-z0-9.])\d+(\.\d+)?(e[+-]?\d+)?", "N", reason)
    return reason[:120]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("patterns", nargs="*")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--again", action="store_true", help="check again what was checked before")
    parser.add_argument("--table", action="store_true", help="only rewrite the table")
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per architecture")
    args = parser.parse_args(argv)
    if args.one:
        try:
            print(json.dumps(check_one(args.one)))
        except Exception:
            traceback.print_exc()
            return 1
        return 0
    results = json.loads(RESULTS.read_text()) if args.table else run_all(args.patterns, args.again, args.timeout)
    publish("timm_check_all", results, table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
