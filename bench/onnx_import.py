"""Import ONNX classifiers zoo has never seen, check each conversion, then fine-tune and export some.

    python bench/onnx_import.py            # about 3 minutes on 2 CPU cores
    python bench/onnx_import.py --no-doc   # print only

The ONNX files are what third parties publish: torchvision architectures exported
with the TorchScript exporter at opset 13 (14 for ViT), batch fixed at 1, random
weights (seed 0; no weights can be downloaded here), plus the real ONNX Model Zoo
file ../shared/models/mnist-8.onnx. For each: does `zoo import` accept it, how far
the converted torch module is from onnxruntime on the original file (batch 1 and
8), how long the import takes, and the groups it derived. The imports that pass
are then fine-tuned for one epoch with `feature-extract` and `freeze:2` on
generated images and exported with zoo's verified export.
Results: bench/results/onnx_import.json and docs/onnx-import.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

MODELS = [
    "resnet18",
    "mobilenet_v3_small",
    "squeezenet1_1",
    "efficientnet_b0",
    "densenet121",
    "googlenet",
    "regnet_y_400mf",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
    "vit_b_16",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-doc", action="store_true")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tmp = Path(tempfile.mkdtemp(prefix="zoo-onnx-bench-"))
    os.environ["ZOO_HOME"] = str(tmp / "home")
    import torch
    import torchvision
    from report import publish
    from typer.testing import CliRunner

    from conftest import make_images
    from zoo.cli import app

    runner = CliRunner()
    data = make_images(tmp / "data", classes=("a", "b", "c"), per_class=8, size=240)
    sources = [("mnist-8 (ONNX Model Zoo)", ROOT.parent / "shared" / "models" / "mnist-8.onnx", "mnist")]
    for name in MODELS:
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        with torch.no_grad():  # BatchNorm statistics as after training, so the logits are not near zero
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.8, 1.2)
                    m.bias.uniform_(-0.2, 0.2)
                    m.running_mean.uniform_(-0.1, 0.1)
                    m.running_var.uniform_(0.5, 1.5)
        path = tmp / f"{name}.onnx"
        torch.onnx.export(
            model, (torch.randn(1, 3, 224, 224),), str(path), dynamo=False, opset_version=14 if "vit" in name else 13
        )
        sources.append((f"{name} (torchvision, TorchScript exporter)", path, f"x-{name.replace('_', '-')}"))
    rows = []
    for label, path, zoo_name in sources:
        extra = ["--mean", "0", "--std", str(1 / 255)] if zoo_name == "mnist" else []
        start = time.perf_counter()
        result = runner.invoke(app, ["import", str(path), "--name", zoo_name, "--json", *extra])
        seconds = time.perf_counter() - start
        row = {"model": label, "name": zoo_name, "import_s": round(seconds, 2), "imported": result.exit_code == 0}
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = [d if isinstance(d, int) else 1 for d in session.get_inputs()[0].shape]
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        row["max_logit"] = float(np.abs(session.run(None, {session.get_inputs()[0].name: x})[0]).max())
        if result.exit_code == 0:
            report = json.loads(result.output)
            row |= {
                "diff_b1": report["checks"][0]["max_abs_diff"],
                "diff_b8": report["checks"][1]["max_abs_diff"],
                "groups": len(report["groups"]),
                "params": report["num_params"],
            }
            if zoo_name != "mnist":
                for policy in ("feature-extract", "freeze:2"):
                    run = runner.invoke(
                        app,
                        [
                            "finetune",
                            zoo_name,
                            str(data),
                            "--policy",
                            policy,
                            "--epochs",
                            "1",
                            "--quiet",
                            "--out",
                            str(tmp / "runs"),
                            "--name",
                            f"{zoo_name}-{policy[:6]}",
                        ],
                    )
                    row[policy] = "ok" if run.exit_code == 0 else run.output.strip().splitlines()[-1][:120]
                exported = runner.invoke(
                    app, ["export", str(tmp / "runs" / f"{zoo_name}-freeze"), "-o", str(tmp / f"{zoo_name}.onnx")]
                )
                row["export"] = (
                    "verified" if exported.exit_code == 0 else exported.output.strip().splitlines()[-1][:120]
                )
        else:
            row["error"] = " ".join(result.output.split())[-300:]
        print(row, flush=True)
        rows.append(row)
    record = {"torch": torch.__version__, "torchvision": torchvision.__version__, "rows": rows}
    publish("onnx_import", record, render(rows), update_doc=not args.no_doc)


def render(rows: list[dict]) -> str:
    lines = [
        "| ONNX file | imported | max abs diff b1 / b8 | max output | groups | import s | feature-extract | freeze:2 "
        "| export |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["imported"]:
            diff = f"{r['diff_b1']:.1e} / {r['diff_b8']:.1e}"
            lines.append(
                f"| {r['model']} | yes | {diff} | {r['max_logit']:.2g} | {r['groups']} | {r['import_s']:.1f} | "
                f"{r.get('feature-extract', '-')} | {r.get('freeze:2', '-')} | {r.get('export', '-')} |"
            )
        else:
            lines.append(
                f"| {r['model']} | **refused**: {r['error']} | | {r['max_logit']:.2g} | | {r['import_s']:.1f} | | | |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
