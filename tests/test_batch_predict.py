"""`zoo predict MODEL.onnx DIR_OR_GLOB --out results.csv|.jsonl`: streamed in batches, unreadable files as error
rows, output written whole or not at all, the same predictions as `Predictor.predict`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import zoo.runtime.batch_predict as bp
from conftest import make_images, tiny_spec
from zoo.cli import app
from zoo.core.errors import Interrupted
from zoo.runtime.predictor import Predictor

runner = CliRunner()


def _export(path: Path, batch: str = "dynamic", thresholds=None) -> Path:
    import torch

    from zoo.export.exporter import export_model
    from zoo.model.build import create_model

    spec = tiny_spec()
    torch.manual_seed(0)  # the same weights in every export: models that differ in batch predict the same
    model = create_model(spec, num_classes=2, weights="none")
    report = export_model(model, spec, spec.preprocess, ["cats", "dogs"], path, batch=batch, exporter="torchscript",
                          thresholds=thresholds)  # fmt: skip
    assert report.passed
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An exported tiny model, a folder of 12 images with a corrupt, an empty and a non-image file in it."""
    root = tmp_path_factory.mktemp("batch-predict")
    model = _export(root / "model.onnx")
    images = make_images(root / "images", per_class=6, size=40)
    (images / "dogs" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 10)
    (images / "cats" / "empty.png").write_bytes(b"")
    (images / "cats" / "notes.txt").write_text("not an image name: left out of a folder walk")
    (images / ".hidden").mkdir()
    (images / ".hidden" / "x.png").write_bytes(b"")  # hidden folders are left out
    good = sorted(str(p) for p in images.rglob("*.png") if p.stat().st_size and ".hidden" not in p.parts)
    return {"root": root, "model": model, "images": images, "good": good}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_folder_with_bad_files_is_rows_with_errors_and_exit_0_csv(world, tmp_path):
    out = tmp_path / "results.csv"
    result = runner.invoke(app, ["predict", str(world["model"]), str(world["images"]), "--out", str(out),
                                 "--top-k", "2", "--batch-size", "5"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "14 image(s), 2 error(s)" in result.stderr and str(out) in result.stderr
    rows = _csv(out)
    assert list(rows[0]) == ["image", "label", "probability", "top1_label", "top1_prob", "top2_label", "top2_prob",
                             "error"]  # fmt: skip
    assert [r["image"] for r in rows] == sorted(r["image"] for r in rows)  # sorted, whole-path order
    errors = {Path(r["image"]).name: r["error"] for r in rows if r["error"]}
    assert errors["empty.png"] == "empty file"
    assert errors["corrupt.jpg"].startswith("cannot read it as an image (")
    good = [r for r in rows if not r["error"]]
    assert [r["image"] for r in good] == world["good"]
    expected = Predictor(world["model"]).predict(world["good"], top_k=2)
    for row, want in zip(good, expected, strict=True):
        assert row["label"] == row["top1_label"] == want["top"][0]["label"]
        assert float(row["probability"]) == want["top"][0]["probability"]
        assert [row["top1_label"], row["top2_label"]] == [t["label"] for t in want["top"]]
        assert [float(row["top1_prob"]), float(row["top2_prob"])] == [t["probability"] for t in want["top"]]
    assert not list(tmp_path.glob(".*tmp*"))  # the temp file became results.csv


def test_jsonl_rows_are_predict_json_objects(world, tmp_path):
    out = tmp_path / "results.jsonl"
    result = runner.invoke(app, ["predict", str(world["model"]), str(world["images"]), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)  # --json with --out: the summary, as JSON
    assert summary["images"] == 14 and summary["errors"] == 2 and summary["out"] == str(out)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    good = [r for r in rows if "error" not in r]
    assert good == Predictor(world["model"]).predict(world["good"], top_k=3)  # exactly `zoo predict --json`'s
    bad = [r for r in rows if "error" in r]
    assert {Path(r["image"]).name for r in bad} == {"empty.png", "corrupt.jpg"} and all(set(r) == {"image", "error"}
                                                                                       for r in bad)  # fmt: skip


def test_without_out_prints_rows_and_takes_folders_and_globs(world):
    model, images = str(world["model"]), world["images"]
    result = runner.invoke(app, ["predict", model, str(images / "cats"), "--json"])
    assert result.exit_code == 0, result.stderr
    rows = json.loads(result.stdout)  # one JSON list, as before
    assert [r for r in rows if "error" not in r] == Predictor(model).predict(
        [g for g in world["good"] if "/cats/" in g], top_k=3
    )
    assert [r["error"] for r in rows if "error" in r] == ["empty file"]
    text = runner.invoke(app, ["predict", model, str(images / "dogs" / "*.png"), str(images / "dogs" / "corrupt.jpg")])
    assert text.exit_code == 0, text.stderr
    lines = text.stdout.splitlines()
    assert len(lines) == 7 and lines[-1].startswith(f"{images / 'dogs' / 'corrupt.jpg'}: error: cannot read it")
    assert all(line.split(": ", 1)[1].split()[0] in ("cats", "dogs") for line in lines[:-1])


def test_glob_missing_file_and_pattern_without_match(world, tmp_path):
    images = world["images"]
    out = tmp_path / "r.jsonl"
    args = [str(images / "*" / "dogs_1.png"), str(images / "cats" / "cats_[0-2].png"), str(images / "no" / "*.png"),
            str(images / "missing.jpg")]  # fmt: skip
    result = runner.invoke(app, ["predict", str(world["model"]), *args, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    names = [Path(r["image"]).name for r in rows]
    assert names == ["dogs_1.png", "cats_0.png", "cats_1.png", "cats_2.png", "*.png", "missing.jpg"]
    assert [r.get("error") for r in rows[-2:]] == ["no image file matches this pattern", "no such file"]


def test_rows_are_written_batch_by_batch_and_images_loaded_lazily(world, tmp_path, monkeypatch):
    """12 images in batches of 3: the model runs on a batch when at most two batches have been decoded, and each
    batch's rows are in the temp file before the next batch runs; fails if every image were loaded first."""
    out = tmp_path / "r.csv"
    loads, seen = [], []
    load, logits = Predictor.load, Predictor.logits

    def counting_load(self, path):
        loads.append(path)
        return load(self, path)

    def watching_logits(self, batch):
        tmp = list(tmp_path.glob(".r.csv.tmp-*"))
        seen.append((len(loads), len(tmp[0].read_text().splitlines()) - 1 if tmp else None))
        return logits(self, batch)

    monkeypatch.setattr(Predictor, "load", counting_load)
    monkeypatch.setattr(Predictor, "logits", watching_logits)
    summary = bp.predict_many(world["model"], world["good"], out=out, batch_size=3, workers=2)
    assert summary.images == 12 and summary.errors == 0
    assert len(seen) == 4
    assert all(n_loaded <= 3 * (i + 2) for i, (n_loaded, _) in enumerate(seen)), seen  # one batch ahead at most
    assert [rows for _, rows in seen] == [0, 3, 6, 9], seen  # the rows of each earlier batch are on disk
    assert len(_csv(out)) == 12


def test_existing_output_is_refused_unless_overwrite(world, tmp_path):
    out = tmp_path / "mine.csv"
    out.write_text("my data\n")
    args = ["predict", str(world["model"]), world["good"][0], "--out", str(out)]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "add --overwrite" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1 and out.read_text() == "my data\n"
    replaced = runner.invoke(app, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.stderr
    assert _csv(out)[0]["image"] == world["good"][0]


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--out", "OUT/r.txt"], 2, "must end in .csv or .jsonl"),
        (["--out", "OUT/missing/r.csv"], 2, "does not exist"),
        (["--out", "OUT"], 2, "is a folder"),
        (["--batch-size", "0"], 2, "--batch-size 0"),
    ],
)
def test_bad_output_and_options_are_one_line_before_any_work(world, tmp_path, args, code, message):
    argv = [a.replace("OUT", str(tmp_path)) for a in args]
    result = runner.invoke(app, ["predict", str(world["model"]), str(world["images"]), *argv])
    assert result.exit_code == code and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_with_out_or_a_folder_asks_for_an_export(world, tmp_path):
    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"")
    result = runner.invoke(app, ["predict", str(ckpt), str(world["images"]), "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 2 and "needs an exported model" in result.stderr and "zoo export" in result.stderr
    result = runner.invoke(app, ["predict", str(ckpt), str(world["images"])])
    assert result.exit_code == 2 and "is a folder" in result.stderr and "zoo export" in result.stderr


def test_nothing_readable_is_an_input_error(world, tmp_path):
    out = tmp_path / "r.csv"
    result = runner.invoke(app, ["predict", str(world["model"]), str(world["images"] / "cats" / "empty.png"),
                                 "--out", str(out)])  # fmt: skip
    assert result.exit_code == 3 and "none of the 1 image(s) could be read" in result.stderr
    assert _csv(out)[0]["error"] == "empty file"  # the reason is in the file


def test_interrupted_writes_nothing(world, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    calls = []
    logits = Predictor.logits

    def interrupted(self, batch):
        calls.append(1)
        if len(calls) % 2 == 0:
            raise KeyboardInterrupt
        return logits(self, batch)

    monkeypatch.setattr(Predictor, "logits", interrupted)
    with pytest.raises(Interrupted, match="interrupted after 4 image"):
        bp.predict_many(world["model"], world["good"], out=out, batch_size=4)
    assert list(tmp_path.iterdir()) == []  # neither r.csv nor its temp file
    result = runner.invoke(app, ["predict", str(world["model"]), *world["good"], "--out", str(out),
                                 "--batch-size", "4"])  # fmt: skip
    assert result.exit_code == 130 and f"{out} was not written" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_and_multi_label_models(world, tmp_path):
    fixed = _export(tmp_path / "fixed.onnx", batch="3")  # takes exactly 3 images: the last batch is padded
    rows = [r for rows in bp.stream(Predictor(fixed), bp.expand(world["good"][:7])) for r in rows]
    want = Predictor(world["model"]).predict(world["good"][:7], top_k=3)
    assert [[t["label"] for t in r["top"]] for r in rows] == [[t["label"] for t in r["top"]] for r in want]
    assert np.allclose([[t["probability"] for t in r["top"]] for r in rows],
                       [[t["probability"] for t in r["top"]] for r in want], atol=1e-5)  # fmt: skip
    tags = _export(tmp_path / "tags.onnx", thresholds=[0.0, 1.0])  # every image: cats, never dogs
    out = tmp_path / "tags.csv"
    bp.predict_many(tags, world["good"][:2], out=out, top_k=1)
    got = _csv(out)
    assert list(got[0]) == ["image", "label", "probability", "labels", "top1_label", "top1_prob", "error"]
    assert [r["labels"] for r in got] == ["cats", "cats"]


def test_arrays_of_different_shapes_run_in_separate_groups_in_order():
    """Some models take any image size: a batch is split by shape, and the rows keep the input order."""

    class Fake:
        info = type("Info", (), {"multi_label": False, "labels": ("a", "b"), "thresholds": None})()
        fixed_batch = None
        probabilities_of = Predictor.probabilities_of  # the runtime's own grouping

        def __init__(self):
            self.shapes: list[tuple[int, ...]] = []

        def probabilities(self, batch):
            self.shapes.append(batch.shape)
            return np.stack([[1.0, 0.0] for _ in batch])

    fake = Fake()
    small, big = np.zeros((3, 4, 4), np.float32), np.zeros((3, 8, 8), np.float32)
    loaded = [("1", small, None), ("2", big, None), ("3", None, "empty file"), ("4", small, None)]
    rows = bp._run_batch(fake, loaded, 1)
    assert sorted(fake.shapes) == [(1, 3, 8, 8), (2, 3, 4, 4)]
    assert [r["image"] for r in rows] == ["1", "2", "3", "4"] and rows[2] == {"image": "3", "error": "empty file"}


def test_expand_walks_folders_in_sorted_order_without_hidden_or_linked_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "c").mkdir(parents=True)
    for name in ("b/2.jpg", "a/z.png", "a/c/1.jpg", "a.jpg", "a/notes.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "a" / "loop").symlink_to(tmp_path)
    shutil.copy(tmp_path / "a.jpg", tmp_path / "a" / ".hidden.jpg")
    found = [p for p, err in bp.expand([str(tmp_path)]) if err is None]
    assert found == [str(tmp_path / n) for n in ("a/c/1.jpg", "a/z.png", "a.jpg", "b/2.jpg")]
    assert bp.count([str(tmp_path), str(tmp_path / "b")]) == 5
