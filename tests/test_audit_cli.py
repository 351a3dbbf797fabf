"""`zoo audit` end to end on planted data (a tiny backbone with 'pretrained' weights), its files, the corrected
manifest, `zoo finetune --exclude-from` and `--strict-data`, and the bad inputs."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import build_tiny, make_images, make_tagged, plugin_module, tiny_spec
from zoo.catalogue.backbone import Weights
from zoo.cli import app
from zoo.core.errors import DataError, UsageError
from zoo.data.cleaning import check_leaks, cross_split_duplicates, exclude_listed
from zoo.data.split import load, load_for_run
from zoo.select.audit import audit

runner = CliRunner()


def _pretrained(tmp_path, name: str = "tiny_pre"):
    import torch

    torch.manual_seed(0)
    path = tmp_path / f"{name}.pt"
    torch.save(build_tiny(None).state_dict(), path)
    weights = Weights(tag="pre", url=path.as_uri(), sha256=hashlib.sha256(path.read_bytes()).hexdigest())
    return tiny_spec(name, weights=(weights,), default_weights="pre")


@pytest.fixture
def registry(use_registry, tmp_path):
    return use_registry(("auditplugin", plugin_module("auditplugin", _pretrained(tmp_path), tiny_spec("tiny_none"))))


def _fields(root, per_class: int = 14, val: int = 7):
    """root/{train,val}/{red,blue,green}/: smooth random colour fields (each its own picture), tinted by class."""
    rng = np.random.default_rng(0)
    tints = {"red": (1.6, 0.5, 0.5), "blue": (0.5, 0.5, 1.6), "green": (0.5, 1.6, 0.5)}
    for split, n in (("train", per_class), ("val", val)):
        for name, tint in tints.items():
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                small = np.clip(rng.integers(40, 200, (8, 8, 3)) * np.array(tint), 0, 255).astype(np.uint8)
                img = Image.fromarray(small).resize((40, 40), Image.Resampling.BICUBIC)
                img.save(root / split / name / f"{name}_{i}.png")
    return root


@pytest.fixture
def planted(tmp_path):
    """3 colour classes (train 14 / val 7 per class) with: a red image filed as blue (train), a byte copy of a
    train image in val, a resized copy of another in val filed under another class, a blank image, a tiny one,
    and an unreadable file."""
    root = _fields(tmp_path / "data")
    truth = {"flipped": root / "train" / "blue" / "red_0.png"}
    (root / "train" / "red" / "red_0.png").rename(truth["flipped"])
    truth["exact"] = root / "val" / "green" / "copy_of_green_3.png"
    shutil.copyfile(root / "train" / "green" / "green_3.png", truth["exact"])
    truth["near"] = root / "val" / "red" / "blue_5_small.png"
    Image.open(root / "train" / "blue" / "blue_5.png").resize((30, 30)).save(truth["near"])
    truth["blank"] = root / "train" / "green" / "blank.png"
    Image.new("RGB", (40, 40), (120, 120, 120)).save(truth["blank"])
    truth["tiny"] = root / "train" / "red" / "tiny.png"
    Image.open(root / "train" / "red" / "red_4.png").resize((8, 8)).save(truth["tiny"])
    truth["broken"] = root / "train" / "blue" / "broken.png"
    truth["broken"].write_bytes(b"\x89PNG not really")
    return root, truth


def _snapshot(root):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_audit_finds_what_was_planted_and_never_touches_the_data(registry, planted):
    root, truth = planted
    before = _snapshot(root)
    result = audit(root, model="tiny_pre")
    assert _snapshot(root) == before
    flagged = {(f.issue, f.path) for f in result.findings}
    assert ("label-error", str(truth["flipped"])) in flagged
    error = next(f for f in result.findings if f.issue == "label-error" and f.path == str(truth["flipped"]))
    assert error.label == "blue" and error.suggested == "red" and error.score > 0.5
    assert ("exact-duplicate", str(truth["exact"])) in flagged
    assert ("blank", str(truth["blank"])) in flagged and ("too-small", str(truth["tiny"])) in flagged
    assert ("unreadable", str(truth["broken"])) in flagged
    near = [g for g in result.groups if any(m["path"] == str(truth["near"]) for m in g.members)]
    assert len(near) == 1 and near[0].kind == "near" and near[0].cross_split and near[0].conflicting
    exact = [g for g in result.groups if g.kind == "exact"]
    assert len(exact) == 1 and [m["split"] for m in exact[0].members] == ["train", "val"]
    assert result.leakage["train-val"] == {"groups": 2, "images": 2}
    # the same count zoo finetune warns about
    assert result.exact_leaks == 1 == cross_split_duplicates(load(root))
    assert result.counts()["label-error"] <= 3  # the probe rarely doubts a colour


def test_pixels_only_audit_finds_copies_and_image_issues(registry, planted):
    root, truth = planted
    cropped = root / "val" / "blue" / "green_6_cropped.jpg"  # a crop re-encoded: no pixel or hash in common
    Image.open(root / "train" / "green" / "green_6.png").crop((2, 1, 38, 38)).save(cropped, quality=80)
    result = audit(root, model="none")
    assert result.model is None and not result.of("label-error") and not result.of("outlier")
    assert {f.path for f in result.of("exact-duplicate")} == {str(truth["exact"])}
    near = {f.path for f in result.of("near-duplicate")}
    assert near == {str(truth["near"]), str(cropped), str(truth["tiny"])}  # tiny: an 8x8 copy of red_4
    assert any("label errors and outliers were not looked for" in n for n in result.notes)
    assert any("most images are small (median short side 40 px)" in n for n in result.notes)
    assert set(result.seconds) == {"scan", "images", "duplicates", "total"}


@pytest.mark.slow
def test_multi_label_manifest_audit(registry, tmp_path):
    manifest = make_tagged(tmp_path / "tags", n=48, splits=["train", "train", "val"])
    lines = manifest.read_text().splitlines()
    path, tags, split = lines[1].split(",")
    wrong = "red" if "red" not in tags.split() else "green" if "green" not in tags.split() else "blue"
    lines[1] = f"{path},{wrong},{split}"  # every tag of image 0 replaced by one it does not show
    manifest.write_text("\n".join(lines) + "\n")
    result = audit(manifest, model="tiny_pre")
    assert result.multi_label and result.images == 48
    [error] = result.of("label-error")
    assert error.path.endswith("img/0.png") and error.label == wrong
    assert error.suggested == "|".join(sorted(tags.split())) and f"{wrong} given, probably absent" in error.details


@pytest.mark.slow
def test_cli_writes_json_csv_html_and_a_fix_manifest(registry, planted, tmp_path):
    root, truth = planted
    fixed = tmp_path / "fixed.csv"
    args = ["audit", str(root), "--model", "tiny_pre", "--out", str(tmp_path / "o"), "--fix-manifest", str(fixed)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "label-error" in result.output and "most likely label errors" in result.output
    folder = tmp_path / "o" / "audit-data"
    saved = json.loads((folder / "audit.json").read_text())
    assert saved["counts"]["exact-duplicate"] == 1 and saved["model"] == "tiny_pre"
    rows = list(csv.DictReader((folder / "audit.csv").open()))
    assert {"path", "issue", "score", "details"} <= set(rows[0])
    assert {(r["issue"], r["path"]) for r in rows} >= {("exact-duplicate", str(truth["exact"].resolve()))}
    page = (folder / "audit.html").read_text()
    assert page.count("data:image/jpeg;base64,") >= 4 and "http://" not in page and "https://" not in page
    # the fix manifest: readable by zoo finetune, without the cross-split copies, flagged rows marked
    split = load(fixed)
    paths = {s.path.resolve() for w in ("train", "val", "test") for s in split.samples(w)}
    assert truth["exact"].resolve() not in paths and truth["near"].resolve() not in paths
    assert truth["flipped"].resolve() in paths and split.layout == "manifest"
    marks = {r["path"]: r["audit"] for r in csv.DictReader(fixed.open())}
    assert "label-error" in marks["data/train/blue/red_0.png"]
    as_json = runner.invoke(app, [*args, "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["fix_manifest"]["left_out"] == 2


def test_html_escapes_user_text(registry, tmp_path):
    root = make_images(tmp_path / "d", classes=("<b>bold", "plain"), per_class=6)
    shutil.copyfile(root / "plain" / "plain_0.png", root / "<b>bold" / "<script>x.png")
    result = runner.invoke(app, ["audit", str(root), "--model", "none", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "o" / "audit-d" / "audit.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;x.png" in page
    assert "<b>bold" not in page and "&lt;b&gt;bold" in page


@pytest.mark.slow
def test_finetune_warns_on_leaks_strict_data_stops_and_exclude_from_fixes(registry, planted, tmp_path, caplog):
    root, truth = planted
    split = load(root)
    with caplog.at_level(logging.WARNING):
        assert check_leaks(split, root, strict=False) == 1
    assert "1 image(s) of val/test have the same pixels" in caplog.text and f"zoo audit {root}" in caplog.text
    base = ["finetune", "tiny_none", str(root), "--weights", "none", "--epochs", "1", "--workers", "0"]
    strict = runner.invoke(app, [*base, "--strict-data", "--out", str(tmp_path / "runs")])
    assert strict.exit_code == 3 and "--strict-data" in strict.output and "Traceback" not in strict.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    audited = runner.invoke(app, ["audit", str(root), "--model", "none", "--out", str(tmp_path / "o")])
    assert audited.exit_code == 0, audited.output
    listing = tmp_path / "o" / "audit-data" / "audit.csv"
    trained = runner.invoke(app, [*base, "--strict-data", "--exclude-from", str(listing),
                                  "--out", str(tmp_path / "runs"), "--json"])  # fmt: skip
    assert trained.exit_code == 0, trained.output
    config = json.loads(next((tmp_path / "runs").glob("*/config.json")).read_text())
    rescanned = load_for_run(config, 64)  # zoo evaluate and export see the data the run trained on
    assert truth["exact"] not in {s.path for s in rescanned.val}
    kept = exclude_listed(split, listing)
    left = {s.path for w in ("train", "val", "test") for s in kept.samples(w)}
    assert truth["exact"] not in left and truth["blank"] not in left and cross_split_duplicates(kept) == 0


def test_exclude_from_refuses_listings_that_do_not_fit(planted, tmp_path):
    root, _ = planted
    split = load(root)
    other = tmp_path / "other.csv"
    other.write_text("path,issue\n/elsewhere/x.png,blank\n")
    with pytest.raises(DataError, match="none of its 1 file"):
        exclude_listed(split, other)
    no_path = tmp_path / "nopath.csv"
    no_path.write_text("file,issue\nx.png,blank\n")
    with pytest.raises(DataError, match="no 'path' column"):
        exclude_listed(split, no_path)
    everything = tmp_path / "all.csv"
    everything.write_text("path\n" + "\n".join(str(s.path) for s in split.samples("train") if s.label == 0) + "\n")
    with pytest.raises(DataError, match="empties class 'blue'"):
        exclude_listed(split, everything)
    missing = runner.invoke(app, ["finetune", "tiny", str(root), "--exclude-from", str(tmp_path / "nope.csv")])
    assert missing.exit_code == 2 and "--exclude-from" in missing.output


@pytest.mark.parametrize("case", ["empty", "one-class", "rows-all-fail", "no-weights", "bad-fix", "own-manifest"])
def test_bad_inputs_are_one_line(registry, tmp_path, case):
    args = ["audit"]
    if case == "empty":
        (tmp_path / "empty").mkdir()
        args += [str(tmp_path / "empty"), "--model", "none"]
        code, message = 3, "no class folders"
    elif case == "one-class":
        args += [str(make_images(tmp_path / "one", classes=("red",), per_class=5)), "--model", "none"]
        code, message = 3, "only one class"
    elif case == "rows-all-fail":
        (tmp_path / "m.csv").write_text("path,label\nnope1.png,a\nnope2.png,b\n")
        args += [str(tmp_path / "m.csv"), "--model", "none"]
        code, message = 3, "none of its 2 row(s) can be used"
    elif case == "no-weights":
        args += [str(make_images(tmp_path / "d", per_class=4)), "--model", "tiny_none"]
        code, message = 2, "random features find no label errors"
    elif case == "bad-fix":
        args += [str(make_images(tmp_path / "d", per_class=4)), "--fix-manifest", str(tmp_path / "fixed.txt")]
        code, message = 2, "--fix-manifest"
    else:
        manifest = make_tagged(tmp_path / "t", n=12)
        args += [str(manifest), "--model", "none", "--fix-manifest", str(manifest)]
        code, message = 2, "the data's own manifest"
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "o")])
    assert result.exit_code == code, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_no_pretrained_weights_is_refused_in_the_library_too(registry, planted):
    with pytest.raises(UsageError, match="--model tiny_none: no pretrained weights"):
        audit(planted[0], model="tiny_none")


def test_the_scan_counts_the_same_pixels_in_another_format_as_a_leak(tmp_path):
    root = make_images(tmp_path / "d", per_class=6, layout="train/val")
    img = Image.open(root / "train" / "cats" / "cats_0.png")
    img.save(root / "val" / "cats" / "renamed.bmp")  # the same pixels, another name and format
    img.resize((20, 20)).save(root / "val" / "dogs" / "resized.png")  # a near copy, not an exact one
    split = load(root)
    assert cross_split_duplicates(split) == 1
    with pytest.raises(DataError, match="--strict-data"):
        check_leaks(split, root, strict=True)
