"""`zoo runs [DIR]` and `zoo runs --compare A B ...`, over run folders as runs leave them: completed, stopped by
Ctrl-C (summary.json says interrupted), killed (no summary.json, last.pt kept), diverged, dead before an epoch,
and one still training (its lock held)."""

from __future__ import annotations

import json

import pytest
from test_report import NASTY, fake_run
from typer.testing import CliRunner

from zoo.cli import app
from zoo.report.runs import compare_runs, list_runs
from zoo.training.runs import RunLock

runner = CliRunner()


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    done = fake_run(root, "done", epochs=4)
    (done / "model.json").write_text(json.dumps({"zoo_report": "export", "path": str(done / "model.onnx"),
                                                 "passed": True, "checks": []}))  # fmt: skip
    fake_run(root, "stopped", status="interrupted", epochs=5)
    killed = fake_run(root, "killed", summary=False, epochs=6)
    (killed / "last.pt").write_bytes(b"")
    fake_run(root, "diverged", status="diverged")
    dead = root / "dead"
    dead.mkdir()
    (dead / "config.json").write_text(json.dumps({"backbone": "tiny", "policy": "finetune", "epochs": 3}))
    fake_run(root, NASTY[1])
    (root / "not-a-run").mkdir()
    return root


def test_statuses_best_epochs_and_exports(runs):
    rows = {r.name: r for r in list_runs(runs)}
    assert sorted(rows) == sorted(["done", "stopped", "killed", "diverged", "dead", NASTY[1]])
    status = {name: r.status for name, r in rows.items()}
    assert status == {"done": "completed", "stopped": "interrupted", "killed": "interrupted", "diverged": "failed",
                      "dead": "failed", NASTY[1]: "completed"}  # fmt: skip
    done = rows["done"]
    summary = json.loads((runs / "done" / "summary.json").read_text())
    assert (done.best, done.best_epoch, done.metric) == (summary["best_value"], 3, "acc")
    assert (done.epochs_run, done.epochs, done.wall_seconds) == (4, 4, 12.5)
    assert done.exports == [str(runs / "done" / "model.onnx")] and rows["stopped"].exports == []
    # a killed run has no summary: its figures come from metrics.csv
    killed = rows["killed"]
    assert killed.epochs_run == 6 and killed.best == pytest.approx(0.75) and killed.best_epoch == 6
    assert killed.wall_seconds == 24.0 and "--resume" in killed.why
    assert rows["dead"].best is None and rows["dead"].epochs_run == 0


def test_a_run_in_progress(runs):
    with RunLock(runs / "killed"):
        assert {r.name: r.status for r in list_runs(runs)}["killed"] == "running"


def test_cli_table_and_json(runs):
    result = runner.invoke(app, ["runs", str(runs)])
    assert result.exit_code == 0, result.output
    for text in ("done", "completed", "interrupted", "failed", "[red]x", "acc ", "4/4", "12.5 s", "model.onnx"):
        assert text in result.output, text
    result = runner.invoke(app, ["runs", str(runs), "--json"])
    rows = json.loads(result.output)
    assert [r["name"] for r in rows] == sorted(r["name"] for r in rows) and rows[0]["status"]
    assert runner.invoke(app, ["runs", str(runs / "done"), "--json"]).exit_code == 0  # one run folder


def test_cli_mistakes(tmp_path, runs):
    result = runner.invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert result.exit_code == 3 and "no such folder" in result.output
    result = runner.invoke(app, ["runs", str(runs / "done"), str(runs / "stopped")])
    assert result.exit_code == 2 and "zoo runs --compare" in result.output
    result = runner.invoke(app, ["runs", "--compare", str(runs / "done")])
    assert result.exit_code == 2 and "two or more" in result.output
    result = runner.invoke(app, ["runs", "--compare", str(runs / "done"), str(runs / "not-a-run")])
    assert result.exit_code == 3 and "not a zoo run folder" in result.output
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["runs", str(tmp_path / "empty")])
    assert result.exit_code == 0 and "no run folders" in result.output


def test_compare_page(tmp_path, runs):
    other = fake_run(tmp_path / "b", NASTY[0].replace("/", ""), classes=("cats", "dogs", "fish"), seed=2)
    out = tmp_path / "cmp.html"
    result = runner.invoke(app, ["runs", "--compare", str(runs / "done"), str(runs / "killed"), str(other), "-o",
                                 str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    html = out.read_text()
    for section in ("runs", "curves", "per-class", "headline", "per-class-compare"):
        assert f'id="{section}"' in html
    assert "<script>alert(1)<script>" not in html and "&lt;script&gt;alert(1)&lt;script&gt;" in html
    table = html.split('id="per-class-compare"')[1]
    for name in ("cats", "dogs", "birds", "fish"):
        assert f"<td>{name}</td>" in table
    assert "do not have the same classes" in html
    assert compare_runs([runs / "done", runs / "stopped"], tmp_path / "two.html").is_file()
