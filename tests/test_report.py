"""`zoo report`: the run's HTML page, from what a run folder holds.

Most tests build a run folder the way a run writes it (config.json, metrics.csv, summary.json with the figures of
`zoo.core.metrics`, predictions-val.npz through `ImagePredictions`), so that they take milliseconds; the tests marked
slow train the tiny backbone and read the folder the trainer wrote. The pages are checked in a real browser in
tests/test_report_browser.py.
"""

from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import make_images, tiny_run
from zoo.cli import app
from zoo.core import metrics
from zoo.core.errors import InputError, UsageError
from zoo.report import analysis
from zoo.report.folder import RunFolder
from zoo.report.page import write_report
from zoo.report.predictions import ImagePredictions

runner = CliRunner()
NASTY = ("<script>alert(1)</script>", "[red]x", 'a&b "quoted"')


def fake_run(root, name="run", classes=("cats", "dogs", "birds"), n=60, epochs=4, status="completed", seed=0,
             image_side=48, test=False, multi_label=False, summary=True):  # fmt: skip
    """A run folder as `zoo finetune` leaves it, from generated probabilities (no training): images under
    root/images, predictions-val.npz, summary.json with the figures zoo.core.metrics gives for them."""
    rng = np.random.default_rng(seed)
    run = root / name
    run.mkdir(parents=True)
    images = root / "images"
    images.mkdir(exist_ok=True)
    paths = []
    for i in range(min(n, 40)):  # the gallery shows at most a few dozen: the rest may share files
        path = images / f"img_{i}.png"
        if not path.exists():  # a smooth picture: a large one still encodes in milliseconds
            ramp = np.linspace(0, 255, image_side + 8, dtype=np.float32)[None, :, None]
            pixels = np.broadcast_to(ramp, (image_side, image_side + 8, 3)) * (0.3 + 0.7 * rng.random(3))
            Image.fromarray(pixels.astype(np.uint8)).save(path)
        paths.append(path)
    paths = [paths[i % len(paths)] for i in range(n)]
    c = len(classes)
    if multi_label:
        targets = (rng.random((n, c)) < 0.4).astype(np.float32)
        probs = np.clip(targets * 0.7 + rng.random((n, c)) * 0.4, 0, 1).astype(np.float32)
        thresholds = metrics.tune_thresholds(targets, probs)
        report = metrics.multi_label_report(targets, probs, thresholds, list(classes))
    else:
        targets = rng.integers(0, c, n)
        logits = rng.normal(0, 1, (n, c)) + 2.5 * np.eye(c)[targets] * (rng.random(n) < 0.8)[:, None]
        probs = (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32)
        thresholds = None
        report = metrics.single_label_report(targets, probs, list(classes))
    preds = ImagePredictions.from_probabilities(paths, targets, probs, classes, thresholds, multi_label)
    preds.write(run / "predictions-val.npz")
    if test:
        preds.write(run / "predictions-test.npz")
    config = {"backbone": "tiny", "data": str(images), "labels": None, "policy": "finetune", "epochs": epochs,
              "lr": 0.01, "seed": seed, "name": name, "report": True}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    rows = [
        f"{e},{1 / e:.4f},{0.5 + e / 20:.4f},{1.2 / e:.4f},{0.45 + e / 20:.4f},0.01,4.0" for e in range(1, epochs + 1)
    ]
    (run / "metrics.csv").write_text("epoch,train_loss,train_acc,val_loss,val_acc,lr,train_seconds\n" + "\n".join(rows))
    if not summary:
        return run
    best = {k: report[k] for k in metrics.METRICS if k in report}
    data = {
        "status": status, "reason": None if status == "completed" else "interrupted (SIGINT)", "backbone": "tiny",
        "policy": {"name": "finetune"}, "weights": "none", "classes": list(classes),
        "task": "multi-label" if multi_label else "single-label", "train_images": 4 * n, "val_images": n,
        "test_images": n if test else 0, "train_counts": dict.fromkeys(classes, 4 * n // c),
        "val_counts": dict.fromkeys(classes, n // c), "skipped_files": 2,
        "skipped": [f"{images}/broken.jpg (UnidentifiedImageError: cannot identify image file)",
                    f"{images}/{NASTY[0]}.png (empty file)"],
        "epochs_run": epochs, "select_by": "acc", "best_value": report["acc"], "best_val_acc": report["acc"],
        "best_epoch": epochs - 1, "best_val": best, "per_class": report["per_class"],
        "thresholds": report.get("thresholds"), "wall_seconds": 12.5, "device": "cpu",
        "test": ({"images": n, "loss": 0.5, **{k: v for k, v in report.items() if k != "preds"}} if test else None),
    }  # fmt: skip
    (run / "summary.json").write_text(json.dumps(data))
    return run


def _uris(html: str) -> list[Image.Image]:
    return [Image.open(io.BytesIO(base64.b64decode(b))) for b in re.findall(r"data:image/\w+;base64,([^\"']+)", html)]


def test_predictions_file_round_trip(tmp_path):
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]], dtype=np.float32)
    p = ImagePredictions.from_probabilities(["a.jpg", "b.jpg"], [0, 1], probs, ["x", "y", "z"])
    back = ImagePredictions.read(p.write(tmp_path / "p.npz"))
    assert back.classes == ["x", "y", "z"] and back.paths[0].endswith("a.jpg")
    assert back.predicted().tolist() == [0, 2]
    np.testing.assert_allclose(back.losses(), -np.log([0.7, 0.3]), rtol=1e-6)
    assert back.top_classes.tolist() == [[0, 1, 2], [2, 1, 0]]
    (tmp_path / "bad.npz").write_text("not numpy")
    with pytest.raises(InputError, match="not a zoo predictions file"):
        ImagePredictions.read(tmp_path / "bad.npz")


def test_confusion_and_pairs_agree_with_summary(tmp_path):
    run = RunFolder.read(fake_run(tmp_path))
    preds = run.predictions("val")
    matrix = analysis.confusion(preds)
    assert metrics.per_class(matrix, run.classes) == [
        {k: v for k, v in r.items() if k != "ap"} for r in run.summary["per_class"]
    ]
    pairs = analysis.most_confused(matrix, run.classes)
    assert pairs == sorted(pairs, key=lambda p: -p.count) and all(p.true != p.predicted for p in pairs)
    worst = analysis.top_losses(preds, 5)
    assert list(preds.losses()[worst]) == sorted(preds.losses(), reverse=True)[:5]


def test_reliability_and_ece():
    # ten images at confidence 0.95, 9 of them right; ten at 0.65, 3 right: ECE = (|0.9 - 0.95| + |0.3 - 0.65|) / 2
    probs = np.array([[0.95, 0.05]] * 10 + [[0.65, 0.35]] * 10, dtype=np.float32)
    targets = [0] * 9 + [1] + [0] * 3 + [1] * 7
    rel = analysis.reliability(ImagePredictions.from_probabilities(["x"] * 20, targets, probs, ["a", "b"]))
    assert rel.ece == pytest.approx(0.2)
    assert [b["count"] for b in rel.bins] == [0, 0, 0, 0, 0, 0, 10, 0, 0, 10]


def test_report_has_every_section_and_bounded_thumbnails(tmp_path):
    run = fake_run(tmp_path, image_side=400, test=True)
    written = write_report(run, heatmaps=False)
    html = written.path.read_text()
    assert written.path == run / "report.html"
    for section in ("overview", "config", "data", "skipped", "curves", "figures-val", "per-class-val", "confusion-val",
                    "pairs-val", "gallery-val", "calibration-val", "figures-test", "per-class-test"):  # fmt: skip
        assert f'id="{section}"' in html, section
    thumbs = _uris(html)
    assert len(thumbs) == 16 + 16  # the val and the test galleries
    assert max(max(t.size) for t in thumbs) <= 160
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html


def test_user_text_is_escaped(tmp_path):
    run = fake_run(tmp_path, name="<b>run<b>", classes=NASTY)
    html = write_report(run, heatmaps=False).path.read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "[red]x" in html and "a&amp;b &#34;quoted&#34;" in html
    assert "<b>run<b>" not in html and "&lt;b&gt;run&lt;b&gt;" in html


def test_multi_label_report_shows_thresholds_ap_and_pair_calibration(tmp_path):
    run = fake_run(tmp_path, multi_label=True)
    html = write_report(run, heatmaps=False).path.read_text()
    table = html.split('id="per-class-val"')[1].split("</table>")[0]
    assert ">threshold<" in table and ">AP<" in table
    summary = json.loads((run / "summary.json").read_text())
    for row in summary["per_class"]:
        assert f'data-value="{row["threshold"]}"' in table
    assert "(image, label) pairs" in html and 'id="confusion-val"' not in html


def test_an_interrupted_run_without_summary_and_an_old_folder(tmp_path):
    run = fake_run(tmp_path, summary=False)
    (run / "last.pt").write_bytes(b"")
    written = write_report(run, heatmaps=False)
    assert "interrupted" in written.path.read_text()
    old = fake_run(tmp_path, name="old")
    (old / "predictions-val.npz").unlink()
    written = write_report(old, heatmaps=False)
    assert any("no per-image predictions" in n for n in written.notes)
    assert 'id="per-class-val"' in written.path.read_text()


def test_a_folder_copied_without_its_images_or_checkpoint(tmp_path):
    run = fake_run(tmp_path)
    for image in (tmp_path / "images").iterdir():
        image.unlink()
    written = write_report(run)  # heat maps asked for: there is no best.pt to draw them with
    html = written.path.read_text()
    assert any("no best.pt" in n for n in written.notes)
    assert html.count('<div class="missing">file not found</div>') == 16 and not _uris(html)


def test_report_size_does_not_grow_with_the_run(tmp_path):
    small = write_report(fake_run(tmp_path / "s", n=500), heatmaps=False)
    large = write_report(fake_run(tmp_path / "l", n=20_000), heatmaps=False)
    assert large.bytes < small.bytes * 1.1 and large.bytes < 300_000


def test_export_reports_in_the_folder_are_shown(tmp_path):
    run = fake_run(tmp_path)
    check = {"batch": 1, "output": "logits", "torch_shape": [1, 3], "onnx_shape": [1, 3], "max_abs_diff": 2e-6,
             "atol": 1e-4, "top1_agreement": 1.0, "failures": [], "agreement": "top-1"}  # fmt: skip
    report = {"zoo_report": "export", "path": str(run / "model.onnx"), "exporter": "dynamo", "opset": 18,
              "images": "8 val images", "checks": [check, {**check, "batch": 8}], "passed": True, "precision": "fp32",
              "provider": "cpu", "seconds": 2.0, "notes": [],
              "int8": {"metric": "acc", "drop_points": 0.5,
                       "attempts": [{"calibration": "percentile", "passed": True}]}}  # fmt: skip
    (run / "model.json").write_text(json.dumps(report))
    html = write_report(run, heatmaps=False).path.read_text()
    assert 'id="exports"' in html and "model.onnx" in html and "percentile" in html and ">INT8<" in html
    # a model exported elsewhere is known from the run's exports.json (zoo.export.report.record_export)
    from zoo.export.report import EXPORTS_FILE
    from zoo.report.folder import EXPORTS_FILE as READ

    assert EXPORTS_FILE == READ
    elsewhere = {**report, "path": str(tmp_path / "deploy" / "app.onnx")}
    (run / EXPORTS_FILE).write_text(json.dumps([elsewhere, report]))
    html = write_report(run, heatmaps=False).path.read_text()
    assert "app.onnx" in html and html.count("model.onnx") >= 1
    assert [e["path"] for e in RunFolder(run).exports()] == [elsewhere["path"], report["path"]]


def test_bad_input_is_one_line(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path / "nowhere")])
    assert result.exit_code == 3 and "no such run folder" in result.output and "Traceback" not in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["report", str(tmp_path / "empty")])
    assert result.exit_code == 3 and "not a zoo run folder" in result.output
    run = fake_run(tmp_path)
    result = runner.invoke(app, ["report", str(run), "--gallery", "500"])
    assert result.exit_code == 2 and "--gallery 500" in result.output
    with pytest.raises(UsageError):
        write_report(run, out=tmp_path)


def test_cli_report_json(tmp_path):
    run = fake_run(tmp_path)
    result = runner.invoke(app, ["report", str(run), "--no-heatmaps", "--gallery", "4", "-o", str(tmp_path / "r.html"),
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["report"] == str(tmp_path / "r.html") and out["bytes"] == (tmp_path / "r.html").stat().st_size
    assert out["sections"][:5] == ["overview", "config", "data", "curves", "figures-val"]
    assert len(_uris((tmp_path / "r.html").read_text())) == 4


def test_no_report_flag_reaches_the_config(monkeypatch, tmp_path):
    import zoo.cli.training
    from zoo.training.train import FinetuneResult

    seen = []

    def fake(cfg, launch=None, **kwargs):
        seen.append(cfg)
        return FinetuneResult(tmp_path, 0.5, 1, 1, ["a", "b"], [], {"wall_seconds": 1.0})

    monkeypatch.setattr(zoo.cli.training, "run_finetune", fake)
    assert runner.invoke(app, ["finetune", "resnet18", "data/"]).exit_code == 0
    assert runner.invoke(app, ["finetune", "resnet18", "data/", "--no-report"]).exit_code == 0
    assert [cfg.report for cfg in seen] == [True, False]


@pytest.mark.slow
def test_finetune_writes_the_report_and_the_predictions(tmp_path):
    with tiny_run(tmp_path) as (result, _, _):
        run = result.run_dir
        assert result.summary["report"] == "report.html"
        html = (run / "report.html").read_text()
        preds = ImagePredictions.read(run / "predictions-val.npz")
        assert len(preds) == result.summary["val_images"]
        # the per-image file and summary.json come from the same probabilities: the same per-class figures
        per_class = metrics.per_class(analysis.confusion(preds), result.classes)
        assert per_class == [{k: v for k, v in r.items() if k != "ap"} for r in result.summary["per_class"]]
        assert "Grad-CAM of the predicted class at stage2" in html and 'id="gallery-val"' in html
        # zoo report RUN DATA: the checkpoint on other data, as zoo evaluate sees it
        other = make_images(tmp_path / "other", per_class=5, seed=3)
        written = write_report(run, other, out=tmp_path / "other.html", heatmaps=False)
        from zoo.training.evaluate import evaluate

        expected = evaluate(run, other)
        page = written.path.read_text()
        assert 'id="figures-data"' in page and f"({expected['images']} images)" in page
        for row in expected["per_class"]:
            assert f'data-value="{row["f1"]}"' in page


@pytest.mark.slow
def test_no_report_writes_none_and_a_test_split_is_recorded(tmp_path, tiny_registry):
    from zoo.training.train import finetune

    data = make_images(tmp_path / "tvt", per_class=12, layout="train/val/test")
    settings = dict(policy="finetune", epochs=2, weights="none", workers=0, out=str(tmp_path / "runs"))
    result = finetune("tiny", data, report=False, **settings)
    assert not (result.run_dir / "report.html").exists() and "report" not in result.summary
    result = finetune("tiny", data, **settings)
    test = ImagePredictions.read(result.run_dir / "predictions-test.npz")
    assert len(test) == result.summary["test_images"]
    assert 'id="figures-test"' in (result.run_dir / "report.html").read_text()
