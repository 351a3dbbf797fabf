"""Every command over a table of bad inputs: one line on stderr, the exit code of its kind, no traceback,
no new file. (The README's promise: "Every user mistake is one line on stderr and a non-zero exit, never a
traceback.")"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

import zoo.catalogue.registry
from conftest import make_images, plugin_module, tiny_spec
from zoo.cli import app

runner = CliRunner()
USAGE, INPUT, VERIFY, ENVIRONMENT = 2, 3, 4, 5


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained tiny run, its exported model, and files of every wrong kind."""
    root = tmp_path_factory.mktemp("world")
    saved = zoo.catalogue.registry._REGISTRY
    zoo.catalogue.registry._REGISTRY = zoo.catalogue.registry.build_registry(
        extra_plugins=[("tinyplugin", plugin_module("tinyplugin", tiny_spec()))]
    )
    data = make_images(root / "data", per_class=8)
    from zoo.export.exporter import export
    from zoo.training.train import finetune

    run = finetune("tiny", data, epochs=1, weights="none", workers=0, out=str(root / "runs"), name="run").run_dir
    model = root / "model.onnx"
    export(run, model)
    for name, size in (("edited", "[16, 16]"), ("bigger", "[64, 64]")):
        edited = onnx.load(str(model))
        for p in edited.metadata_props:
            if p.key == "zoo.input_size":
                p.value = size
        onnx.save(edited, str(root / f"{name}.onnx"))
    plain = onnx.load(str(model))
    del plain.metadata_props[:]
    onnx.save(plain, str(root / "no-meta.onnx"))
    labels = onnx.load(str(model))
    for p in labels.metadata_props:
        if p.key == "zoo.labels":
            p.value = '["cats"]'
    onnx.save(labels, str(root / "labels.onnx"))
    (root / "not.onnx").write_text("not a model")
    (root / "text.jpg").write_text("not an image")
    (root / "file").write_text("a file")
    (root / "d").mkdir()
    (root / "d" / "package.json").write_text('{"name": "mine"}')
    one = make_images(root / "one-class", classes=("only",), per_class=4)
    other = make_images(root / "other-classes", classes=("cows", "dogs"), per_class=4)
    loop = make_images(root / "loop", per_class=4)
    (loop / "root").symlink_to("/")
    proc = make_images(root / "proc", per_class=4)
    (proc / "pid1").symlink_to("/proc/1")
    image = next((data / "cats").iterdir())
    paths = {
        "DATA": data, "RUN": run, "MODEL": model, "EDITED": root / "edited.onnx", "BIGGER": root / "bigger.onnx",
        "NOMETA": root / "no-meta.onnx", "LABELS": root / "labels.onnx", "NOTONNX": root / "not.onnx",
        "TEXTJPG": root / "text.jpg",
        "FILE": root / "file", "D": root / "d", "ONE": one, "OTHER": other, "LOOP": loop, "PROC": proc,
        "IMAGE": image, "MISSING": root / "missing", "ROOT": root,
    }  # fmt: skip
    try:
        yield paths
    finally:
        zoo.catalogue.registry._REGISTRY = saved


CASES = [
    # finetune: values
    (["finetune", "tiny", "DATA", "--epochs", "abc"], USAGE, "--epochs"),
    (["finetune", "tiny", "DATA", "--epochs", "0"], USAGE, "--epochs 0: must be >= 1"),
    (["finetune", "tiny", "DATA", "--workers", "-1"], USAGE, "--workers -1"),
    (["finetune", "tiny", "DATA", "--lr", "nan"], USAGE, "--lr nan"),
    (["finetune", "tiny", "DATA", "--lr", "-1"], USAGE, "--lr -1.0"),
    (["finetune", "tiny", "DATA", "--weight-decay", "-1"], USAGE, "--weight-decay -1.0"),
    (["finetune", "tiny", "DATA", "--warmup-epochs", "-1"], USAGE, "--warmup-epochs -1.0"),
    (["finetune", "tiny", "DATA", "--warmup-epochs", "1e300"], USAGE, "--warmup-epochs 1e+300: longer than the run"),
    (["finetune", "tiny", "DATA", "--gamma", "-1"], USAGE, "--gamma -1.0"),
    (["finetune", "tiny", "DATA", "--patience", "0"], USAGE, "--patience 0"),
    (["finetune", "tiny", "DATA", "--label-smoothing", "1"], USAGE, "--label-smoothing 1.0"),
    (["finetune", "tiny", "DATA", "--val-fraction", "1.5"], USAGE, "--val-fraction 1.5"),
    (["finetune", "tiny", "DATA", "--momentum", "1"], USAGE, "--momentum 1.0"),
    (["finetune", "tiny", "DATA", "--batch-size", "0"], USAGE, "--batch-size 0"),
    (["finetune", "tiny", "DATA", "--optimizer", "adam"], USAGE, "--optimizer adam"),
    (["finetune", "tiny", "DATA", "--schedule", "linear"], USAGE, "--schedule linear"),
    (["finetune", "tiny", "DATA", "--amp", "fp8"], USAGE, "--amp fp8"),
    (["finetune", "tiny", "DATA", "--cache", "maybe"], USAGE, "--cache maybe"),
    (["finetune", "tiny", "DATA", "--cache-engine", "tensorrt"], USAGE, "--cache-engine tensorrt"),
    (["finetune", "tiny", "DATA", "--augment", "heavy"], USAGE, "--augment heavy"),
    (["finetune", "tiny", "DATA", "--dist-timeout", "0"], USAGE, "--dist-timeout 0.0"),
    (["finetune", "tiny", "DATA", "--device", "tpu"], USAGE, "--device tpu"),
    (["finetune", "tiny", "DATA", "--device", "cuda"], ENVIRONMENT, "CUDA is not available here"),
    (["finetune", "tiny", "DATA", "--nproc-per-node", "0"], USAGE, "--nproc-per-node 0"),
    (["finetune", "tiny", "DATA", "--nnodes", "0"], USAGE, "--nnodes 0"),
    (["finetune", "tiny", "DATA", "--node-rank", "3"], USAGE, "--node-rank 3"),
    (["finetune", "tiny", "DATA", "--master-port", "70000"], USAGE, "--master-port 70000"),
    (["finetune", "tiny", "DATA", "--bogus"], USAGE, "No such option: --bogus"),
    # finetune: policies, weights, names
    (["finetune", "tiny", "DATA", "--policy", "discriminative:nan"], USAGE, "finite factor"),
    (["finetune", "tiny", "DATA", "--policy", "discriminative:inf"], USAGE, "finite factor"),
    (["finetune", "tiny", "DATA", "--policy", "gradual:abc"], USAGE, "--policy gradual:abc:"),
    (["finetune", "tiny", "DATA", "--policy", "freeze:head"], USAGE, "the head group, which always trains"),
    (["finetune", "tiny", "DATA", "--policy", "freeze:9"], USAGE, "can freeze 0 to 3"),
    (["finetune", "tiny", "DATA", "--policy", "warp"], USAGE, "unknown policy 'warp'"),
    (["finetune", "tiny", "DATA", "--policy", "auto"], USAGE, "need pretrained weights"),
    (["finetune", "tiny", "DATA", "--weights", "IMAGENET_X"], USAGE, "no such tag"),
    (["finetune", "tiny", "DATA", "--weights", "MISSING/w.pt"], INPUT, "no such file"),
    (["finetune", "tiny", "DATA", "--weights", "FILE"], INPUT, "weights_only=True"),
    (["finetune", "resnet19", "DATA"], USAGE, "did you mean resnet18"),
    (["finetune"], USAGE, "needs BACKBONE and DATA"),
    (["finetune", "tiny"], USAGE, "needs BACKBONE and DATA"),
    # finetune: data and output folders
    (["finetune", "tiny", "MISSING"], INPUT, "no such folder"),
    (["finetune", "tiny", "FILE"], INPUT, "a file, not a folder or a manifest"),
    (["finetune", "tiny", "ONE"], INPUT, "only one class"),
    (["finetune", "tiny", "LOOP"], INPUT, "holds the data folder itself"),
    (["finetune", "tiny", "PROC"], INPUT, "a system folder"),
    (["finetune", "tiny", "DATA", "--out", "/proc"], USAGE, "--out /proc"),
    (["finetune", "tiny", "DATA", "--out", "FILE"], USAGE, "is a file, not a folder"),
    (["finetune", "tiny", "DATA", "--name", "a/b"], USAGE, "--name 'a/b'"),
    # resume
    (["finetune", "--resume", "MISSING"], USAGE, "no such run folder"),
    (["finetune", "--resume", "FILE"], USAGE, "not a folder"),
    (["finetune", "--resume", "DATA"], USAGE, "not a zoo run folder"),
    (["finetune", "--resume", "RUN", "--lr", "0.1"], USAGE, "--lr cannot change in a resumed run"),
    (["finetune", "--resume", "RUN", "--epochs", "1"], USAGE, "more than --epochs 1"),
    (["finetune", "tiny", "DATA", "--resume", "RUN"], USAGE, "leave them out"),
    # list
    (["list", "--source", "nosuch"], USAGE, "--source nosuch: no backbone has it; known: "),
    (["list", "--tag", "mobil"], USAGE, "--tag mobil: no backbone has it; did you mean mobile"),
    # evaluate, predict
    (["evaluate", "MISSING", "DATA"], INPUT, "no such run folder"),
    (["evaluate", "FILE", "DATA"], INPUT, "not a readable checkpoint"),
    (["evaluate", "RUN", "MISSING"], INPUT, "no such folder"),
    (["evaluate", "RUN", "OTHER"], INPUT, "cows are not among the model's classes"),
    (["predict", "RUN", "DATA"], USAGE, "is a folder"),
    (["predict", "RUN", "MISSING.jpg"], INPUT, "no such image file"),
    (["predict", "RUN", "TEXTJPG"], INPUT, "cannot read it as an image"),
    (["predict", "RUN", "IMAGE", "--top-k", "0"], USAGE, "--top-k 0"),
    (["predict", "MODEL", "IMAGE", "--top-k", "0"], USAGE, "--top-k 0"),
    (["predict", "MODEL", "DATA", "--out", "MODEL/x.csv"], USAGE, "model.onnx is a file, not a folder"),
    (["export", "RUN", "-o", "MODEL/x.onnx"], USAGE, "model.onnx is a file, not a folder"),
    (["predict", "EDITED", "IMAGE"], INPUT, "the metadata says height 16 but the graph takes 32"),
    (["predict", "BIGGER", "IMAGE"], INPUT, "the metadata says height 64 but the graph takes 32"),
    (["predict", "LABELS", "IMAGE"], INPUT, "1 labels in the metadata but the model has 2 outputs"),
    (["predict", "NOMETA", "IMAGE"], INPUT, "no zoo metadata"),
    (["predict", "NOTONNX", "IMAGE"], INPUT, "onnxruntime cannot load it"),
    (["predict", "MISSING.onnx", "IMAGE"], INPUT, "no such model file"),
    # export, verify
    (["export", "RUN", "-o", "ROOT/x.pt"], USAGE, "must end in .onnx"),
    (["export", "RUN", "-o", "MISSING/x.onnx"], USAGE, "does not exist; create it, or add --mkdir"),
    (["export", "RUN", "-o", "/proc/x.onnx"], USAGE, "/proc is not a writable folder"),
    (["export", "RUN", "-o", "D/package.onnx"], USAGE, "package.json exists and zoo did not write it"),
    (["export", "RUN", "-o", "RUN/config.onnx"], USAGE, "config.json exists and zoo did not write it"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--opset", "5"], USAGE, "--opset 5"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--opset", "99"], USAGE, "--opset 99"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--int8", "--calib-size", "0"], USAGE, "--calib-size 0"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--int8", "--max-drop", "-1"], USAGE, "--max-drop -1.0"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--min-agreement", "2"], USAGE, "--min-agreement 2.0"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--batch", "0"], USAGE, "--batch 0"),
    (["export", "RUN", "-o", "ROOT/y.onnx", "--batch", "x"], USAGE, "--batch x"),
    (["export", "resnet19", "-o", "ROOT/y.onnx"], USAGE, "did you mean resnet18"),
    (["export", "tiny", "-o", "ROOT/y.onnx", "--num-classes", "0"], USAGE, "--num-classes 0"),
    (["export", "MISSING", "-o", "ROOT/y.onnx"], USAGE, "unknown backbone"),
    (["verify", "MISSING.onnx", "RUN"], INPUT, "no such model file"),
    (["verify", "NOTONNX", "RUN"], INPUT, "onnxruntime cannot load it"),
    (["verify", "NOMETA", "RUN"], INPUT, "no zoo metadata"),
    (["verify", "MODEL", "MISSING"], INPUT, "no such run folder"),
    # import
    (["import", "MODEL"], USAGE, "pass --name NAME"),
    (["import", "MODEL", "--name", "x" * 300], USAGE, "use up to 64"),
    (["import", "MODEL", "--name", "../../evil"], USAGE, "--name '../../evil'"),
    (["import", "MODEL", "--name", "timm/x"], USAGE, "--name 'timm/x'"),
    (["import", "nothing-here"], USAGE, "not an .onnx file nor an [onnx.NAME] registry entry"),
    (["import", "NOTONNX", "--name", "x"], INPUT, "not.onnx"),
    (["import", "MODEL", "--name", "x", "--mean", "abc"], USAGE, "--mean abc"),
    (["import", "MODEL", "--name", "x", "--input-size", "0"], USAGE, "--input-size 0"),
    (["import", "MODEL", "--name", "x", "--labels", "MISSING"], INPUT, "--labels"),
    # catalogue, advise, demo, plugin
    (["info", "resnet19"], USAGE, "did you mean resnet18"),
    (["info", "[red]x"], USAGE, "unknown backbone '[red]x'"),
    (["list", "--tag"], USAGE, "--tag"),
    (["advise", "tiny", "DATA"], USAGE, "need pretrained weights"),
    (["advise", "efficientnet_lite0", "DATA", "--large-per-class", "0"], USAGE, "--large-per-class 0"),
    (["demo", "--epochs", "0", "--out", "ROOT/demo-runs"], USAGE, "--epochs 0"),
    (["demo", "--backbone", "resnet19"], USAGE, "did you mean resnet18"),
    (["plugin", "new", "Bad Name", "--dir", "ROOT"], USAGE, "plugin name 'Bad Name'"),
    (["plugin", "new", "d", "--dir", "ROOT"], USAGE, "already exists"),
    (["nope"], USAGE, "No such command 'nope'"),
]


def _files(*roots: Path) -> set[tuple[str, int]]:
    out = set()
    for root in roots:
        if root.exists():
            out |= {(str(p), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*") if not p.is_symlink()}
    return out


@pytest.mark.parametrize("args, code, message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(world, tmp_path, monkeypatch, args, code, message):
    (world["ROOT"] / "zoo-d").mkdir(exist_ok=True)  # `plugin new d` would write zoo-d/
    monkeypatch.chdir(tmp_path)
    home = Path(os.environ["ZOO_HOME"])

    def fill(arg: str) -> str:
        for key in sorted(world, key=len, reverse=True):
            if arg == key or arg.startswith(key + "/") or arg.startswith(key + "."):
                return str(world[key]) + arg[len(key) :]
        return arg

    argv = [fill(a) for a in args]
    message = message.replace("MISSING", str(world["MISSING"]))
    before = _files(world["ROOT"], tmp_path, home)
    result = runner.invoke(app, argv)
    after = _files(world["ROOT"], tmp_path, home)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, f"exit {result.exit_code}: {result.stderr}{result.stdout}"
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert after == before, f"files changed: {sorted(after ^ before)[:5]}"


def test_user_text_is_printed_literally(tmp_path, use_registry, monkeypatch):
    """Class names and help text are not read as rich markup or emoji codes."""
    use_registry(("tinyplugin", plugin_module("tinyplugin", tiny_spec())))
    data = make_images(tmp_path / "data", classes=("[red]ants", ":bee:"), per_class=6)
    monkeypatch.chdir(tmp_path)
    trained = runner.invoke(app, ["finetune", "tiny", str(data), "--epochs", "1", "--weights", "none",
                                  "--workers", "0", "--out", "runs"])  # fmt: skip
    assert trained.exit_code == 0, trained.stderr
    assert trained.stdout.startswith("done: ")  # the result line goes to stdout, progress to stderr
    evaluated = runner.invoke(app, ["evaluate", "runs/tiny-finetune", str(data)])
    assert "[red]ants" in evaluated.stdout and ":bee:" in evaluated.stdout and "🐝" not in evaluated.stdout
    image = next((data / ":bee:").iterdir())
    predicted = runner.invoke(app, ["predict", "runs/tiny-finetune", str(image)])
    assert ":bee:" in predicted.stdout and "[red]ants" in predicted.stdout
    helped = runner.invoke(app, ["finetune", "--help"])
    assert "[default: 16" in helped.stdout and "[default: 10]" in helped.stdout  # printed as written


def test_long_lines_are_not_wrapped_when_output_is_not_a_terminal():
    result = runner.invoke(app, ["info", "resnet18"])
    line = next(x for x in result.stdout.splitlines() if x.startswith("preprocess:"))
    assert "std [0.229, 0.224, 0.225]" in line  # one line, values beside their names


@pytest.mark.slow
def test_int8_json_is_valid_json(world, tmp_path):
    out = tmp_path / "q.onnx"
    result = runner.invoke(app, ["export", str(world["RUN"]), "-o", str(out), "--int8", "--max-drop", "100",
                                 "--calib-size", "4", "--json"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["int8"]["path"] == str(tmp_path / "q.int8.onnx") and report["opset"] == 18
    verified = runner.invoke(app, ["verify", str(tmp_path / "q.int8.onnx"), str(world["RUN"])])
    assert verified.exit_code == 0, verified.stderr
    assert "INT8 gate" in verified.stdout


@pytest.mark.slow
def test_export_rewrites_its_own_report_and_names_a_failed_one(world, tmp_path, monkeypatch):
    out = tmp_path / "m.onnx"
    for _ in range(2):  # the second export overwrites what the first wrote: its own files
        assert runner.invoke(app, ["export", str(world["RUN"]), "-o", str(out)]).exit_code == 0
    import zoo.export.exporter

    monkeypatch.setattr(zoo.export.exporter, "compare", _wrong_compare(zoo.export.exporter.compare))
    failed = runner.invoke(app, ["export", str(world["RUN"]), "-o", str(tmp_path / "f.onnx")])
    assert failed.exit_code == VERIFY
    assert f"report: {tmp_path / 'f.FAILED.json'}" in failed.stderr
    assert (tmp_path / "f.FAILED.json").is_file() and not (tmp_path / "f.onnx").exists()


def _wrong_compare(compare):
    def wrong(model, session, images, atol, sizes, min_agreement=None, thresholds=None):
        rows = compare(model, session, images, atol, sizes, min_agreement, thresholds)
        for row in rows:
            row.failures.append("made to fail")
        return rows

    return wrong


@pytest.mark.slow
def test_export_mkdir_creates_the_folder(world, tmp_path):
    out = tmp_path / "new" / "deeper" / "m.onnx"
    result = runner.invoke(app, ["export", str(world["RUN"]), "-o", str(out), "--mkdir"])
    assert result.exit_code == 0, result.stderr
    assert out.is_file() and out.with_suffix(".json").is_file()


def test_registry_problems_are_named(tmp_path, use_registry, caplog):
    home = Path(os.environ["ZOO_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "registry.toml").write_text('[aliases]\nresnet18 = "alexnet"\nmine = "gone"\n')
    registry = use_registry()
    assert registry.get("resnet18").name == "resnet18"  # a real backbone's name cannot be taken by an alias
    assert "'resnet18' is the name of a backbone (torchvision); the alias to 'alexnet' is ignored" in caplog.text
    result = runner.invoke(app, ["info", "mine"])
    assert result.exit_code == INPUT
    assert "alias 'mine'" in result.stderr and "names 'gone', which is not a backbone" in result.stderr
    assert "did you mean" not in result.stderr


def test_onnx_entry_without_sha256_is_refused_unless_it_says_so(tmp_path, served, use_registry):
    root, base = served
    shutil.copy(Path(__file__).resolve().parents[2] / "shared" / "models" / "mnist-8.onnx", root / "m.onnx")
    home = Path(os.environ["ZOO_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    entry = f'[onnx.nosha]\nurl = "{base}/m.onnx"\nmean = [0.0]\nstd = [1.0]\n'
    (home / "registry.toml").write_text(entry)
    use_registry()
    refused = runner.invoke(app, ["import", "nosha"])
    assert refused.exit_code == INPUT and "no sha256, so the download cannot be checked" in refused.stderr
    (home / "registry.toml").write_text(entry + "skip_sha256 = true\n")
    use_registry()
    accepted = runner.invoke(app, ["import", "nosha"])
    assert accepted.exit_code == 0, accepted.stderr
    assert "not checked" in accepted.stderr  # said, not silent


def test_import_with_fewer_labels_than_outputs_is_refused(tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("zero\none\n")
    model = Path(__file__).resolve().parents[2] / "shared" / "models" / "mnist-8.onnx"
    result = runner.invoke(app, ["import", str(model), "--name", "digits", "--labels", str(labels),
                                 "--mean", "0", "--std", "0.00392156862745098"])  # fmt: skip
    assert result.exit_code == INPUT and "2 labels for 10 outputs" in result.stderr


def test_a_fifo_among_the_images_is_skipped_not_waited_on(world, tmp_path):
    """A named pipe in a class folder: evaluate and predict list it as skipped instead of blocking on its read."""
    import threading

    data = tmp_path / "data"
    shutil.copytree(world["DATA"], data)
    os.mkfifo(data / "cats" / "pipe.jpg")
    results = {}

    def run():
        results["evaluate"] = runner.invoke(app, ["evaluate", str(world["RUN"]), str(data), "--json"])
        results["predict"] = runner.invoke(app, ["predict", str(world["MODEL"]), str(data / "cats" / "pipe.jpg")])

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)
    if worker.is_alive():  # unblock the reader so the test process can end
        with open(data / "cats" / "pipe.jpg", "wb"):
            pass
        pytest.fail("a FIFO among the images blocked the read")
    evaluated = results["evaluate"]
    assert evaluated.exit_code == 0, evaluated.output
    assert any("pipe.jpg" in line for line in json.loads(evaluated.stdout)["skipped"])
    assert results["predict"].exit_code != 0 and "pipe.jpg" in results["predict"].output


def test_a_malformed_user_registry_is_named_first_and_alone(tmp_path):
    """The user's registry.toml is read before any plugin runs: no plugin is blamed for the user's file."""
    import subprocess
    import sys

    (tmp_path / "registry.toml").write_text("[backbones.x\n")
    env = {**os.environ, "ZOO_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "zoo", "list"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == INPUT
    assert result.stderr.splitlines() == [result.stderr.strip()]  # one line
    assert result.stderr.startswith(f"error: {tmp_path / 'registry.toml'}: not valid TOML")
