"""A run as a user waits for it: what is kept between runs (the prefix's ONNX file, the activations, the scan's
verdicts), what is imported when, the plots drawn beside the report, the result line before them, and the exit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import zoo.training.plots
from conftest import build_tiny, install_tiny_plugin, make_images, tiny_spec
from zoo.catalogue import events
from zoo.data import decoder as decoding
from zoo.data.images import decode_many, try_decode
from zoo.data.split import load
from zoo.model.checkpoint import copy_checkpoint, read_checkpoint, write_checkpoint
from zoo.training import store
from zoo.training.train import finetune


def _weights(tmp_path):
    """The tiny backbone's weights as a file: weights other runs can share (random ones are never kept)."""
    path = tmp_path / "tiny-weights.pt"
    if not path.exists():
        torch.manual_seed(0)
        torch.save(build_tiny(tiny_spec(), num_classes=2).state_dict(), path)
    return str(path)


def _run(tmp_path, data, name, **extra):
    options = {
        "epochs": 2,
        "batch_size": 8,
        "workers": 0,
        "policy": "feature-extract",
        "weights": _weights(tmp_path),
        "cache_engine": "onnxruntime",
        "out": str(tmp_path / "runs"),
        "name": name,
        "report": False,
        **extra,
    }
    return finetune("tiny", data, **options)  # fmt: skip


def _cache_files(kind: str) -> list:
    folder = store.cache_root() / kind
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_a_second_run_on_the_same_data_reads_the_activations_and_learns_the_same(tmp_path, tiny_registry, monkeypatch):
    data = make_images(tmp_path / "data", per_class=10)
    first = _run(tmp_path, data, "first")
    assert first.summary["cache"]["stored"] is False and first.summary["cache"]["engine"] == "onnxruntime"
    assert len(_cache_files("activations")) == 2 and len(_cache_files("prefix")) == 1  # KEY.npz + KEY.json

    def no_forward(*args, **kwargs):
        raise AssertionError("the activations were computed again")

    monkeypatch.setattr("zoo.training.cache.compute_cache", no_forward)
    second = _run(tmp_path, data, "second")
    assert second.summary["cache"]["stored"] is True
    assert [h["val_loss"] for h in second.history] == [h["val_loss"] for h in first.history]
    assert second.best_val_acc == first.best_val_acc


def test_changed_data_or_cache_memory_computes_the_activations_again(tmp_path, tiny_registry, monkeypatch):
    data = make_images(tmp_path / "data", per_class=10)
    _run(tmp_path, data, "first")
    image = sorted((data / "cats").iterdir())[0]
    os.utime(image, ns=(image.stat().st_atime_ns, image.stat().st_mtime_ns + 10**9))  # touched: not the same file
    again = _run(tmp_path, data, "touched")
    assert again.summary["cache"]["stored"] is False
    assert len(_cache_files("activations")) == 4  # a second entry

    home = tmp_path / "other-home"
    monkeypatch.setenv("ZOO_HOME", str(home))
    memory = _run(tmp_path, data, "memory", cache="memory")
    assert memory.summary["cache"]["stored"] is False
    assert not (home / "cache").exists()  # neither activations, nor the prefix, nor the scan's verdicts


def test_unreadable_stored_activations_are_computed_again(tmp_path, tiny_registry):
    data = make_images(tmp_path / "data", per_class=10)
    first = _run(tmp_path, data, "first")
    for f in _cache_files("activations"):
        if f.suffix == ".npz":
            f.write_bytes(b"not an npz file")
    again = _run(tmp_path, data, "again")
    assert again.summary["cache"]["stored"] is False
    assert again.best_val_acc == first.best_val_acc


def test_the_prefix_export_is_reused_on_other_data(tmp_path, tiny_registry, monkeypatch):
    import zoo.runtime.onnx_io

    _run(tmp_path, make_images(tmp_path / "a", per_class=10, seed=1), "a")
    exports = []
    original = zoo.runtime.onnx_io.write_onnx
    monkeypatch.setattr(zoo.runtime.onnx_io, "write_onnx", lambda *a, **k: exports.append(1) or original(*a, **k))
    other = _run(tmp_path, make_images(tmp_path / "b", per_class=10, seed=2), "b")
    assert exports == [] and other.summary["cache"]["engine"] == "onnxruntime"  # loaded, checked, used


def test_a_stored_prefix_that_disagrees_with_torch_is_dropped(tmp_path, tiny_registry):
    _run(tmp_path, make_images(tmp_path / "a", per_class=10, seed=1), "a")
    (prefix,) = _cache_files("prefix")
    torch.manual_seed(5)
    other = build_tiny(tiny_spec(), num_classes=2).eval()  # another prefix under this key: its output differs
    from zoo.catalogue.registry import get_registry
    from zoo.model.cut import cut_at

    wrong, _ = cut_at(other, get_registry().get("tiny"), 3)
    torch.onnx.export(wrong, (torch.rand(2, 3, 32, 32),), str(prefix), input_names=["input"], output_names=["out0"],
                      dynamic_axes={"input": {0: "b"}, "out0": {0: "b"}}, dynamo=False)  # fmt: skip
    run = _run(tmp_path, make_images(tmp_path / "b", per_class=10, seed=2), "b")
    assert run.summary["cache"]["engine"] == "torch"  # computed with torch, as it must be
    assert not prefix.exists()


def test_the_activations_folder_stays_under_its_limit(tmp_path):
    kept = store.ActivationStore({"x": 1}, tmp_path / "activations")
    for i in range(4):
        kept.save(f"k{i}", {"i": i}, {"a": np.zeros(1000, dtype=np.float32)})
        os.utime(tmp_path / "activations" / f"k{i}.npz", (i + 1, i + 1))  # k0 the least recently used
    sizes = [(tmp_path / "activations" / f"k{i}.npz").stat().st_size for i in range(4)]
    kept.prune(limit=sizes[2] + sizes[3])
    assert sorted(p.name for p in (tmp_path / "activations").glob("*.npz")) == ["k2.npz", "k3.npz"]
    assert not (tmp_path / "activations" / "k0.json").exists()


def test_the_scan_memo_decodes_nothing_it_already_checked(tmp_path, monkeypatch):
    data = make_images(tmp_path / "data", per_class=6)
    (data / "cats" / "broken.png").write_bytes(b"\x89PNG not really")
    first = load(data, memo=True, decoded=(decoded := {}))
    first.memo.save()
    assert len(decoded) == 12 and len(first.skipped) == 1

    decoded_paths = []
    original = decoding.decode_many
    monkeypatch.setattr(decoding, "decode_many", lambda paths, *a, **k: decoded_paths.extend(paths) or
                        original(paths, *a, **k))  # fmt: skip
    second = load(data, memo=True, decoded=(kept := {}))
    assert decoded_paths == [] and kept == {}  # nothing decoded: verdicts and digests read back
    assert second.train == first.train and second.val == first.val and second.digests == first.digests
    assert [why for _, why in second.skipped] == [why for _, why in first.skipped]

    changed = sorted((data / "dogs").iterdir())[0]
    changed.write_bytes((data / "cats" / sorted(os.listdir(data / "cats"))[0]).read_bytes())
    load(data, memo=True)
    assert decoded_paths == [changed]  # only the file that changed


def test_decoding_in_threads_gives_what_decoding_one_by_one_gives(tmp_path):
    data = make_images(tmp_path / "data", per_class=5, size=300, ext=".jpg")
    files = sorted(data.rglob("*.jpg"))
    (data / "empty.jpg").write_bytes(b"")
    truncated = data / "truncated.jpg"
    truncated.write_bytes(files[0].read_bytes()[:400])
    files += [data / "empty.jpg", truncated, data / "missing.jpg"]
    threaded = list(decode_many(files, 128, threads=2, chunk=3))
    for path, (img, reason) in zip(files, threaded, strict=True):
        one_img, one_reason = try_decode(path, 128)
        assert reason == one_reason
        if img is not None:
            assert np.array_equal(np.asarray(img), np.asarray(one_img))
    assert [r is None for _, r in threaded] == [True] * 10 + [False] * 3


def test_best_pt_is_the_best_epoch_even_once_last_pt_moves_on(tmp_path):
    write_checkpoint(tmp_path / "last.pt", {"epoch": 1})
    copy_checkpoint(tmp_path / "last.pt", tmp_path / "best.pt")
    write_checkpoint(tmp_path / "last.pt", {"epoch": 2})
    assert read_checkpoint(tmp_path / "best.pt")["epoch"] == 1 and read_checkpoint(tmp_path / "last.pt")["epoch"] == 2


@pytest.mark.plots
def test_the_plots_are_drawn_beside_the_report_and_a_failure_only_warns(tmp_path, caplog):
    history = [{"epoch": 1, "train_loss": 1.0, "val_loss": 1.1, "train_acc": 0.5, "val_acc": 0.5}]
    report = {"confusion_matrix": [[1, 0], [0, 1]], "preds": [0, 1]}
    data = make_images(tmp_path / "data", per_class=1)
    samples = [type("S", (), {"path": p, "label": i})() for i, p in enumerate(sorted(data.rglob("*.png")))]
    wait = zoo.training.plots.write_all_beside(tmp_path, history, ["cats", "dogs"], samples, report, {})
    assert wait() is True
    assert all((tmp_path / f).stat().st_size > 0 for f in ("curves.png", "confusion_matrix.png", "predictions.png"))
    broken = zoo.training.plots.write_all_beside(tmp_path / "nowhere", history, ["cats"], samples, {"preds": None},
                                                 {})  # fmt: skip
    assert broken() is False


@pytest.mark.plots
def test_the_result_comes_before_the_plots_and_the_report(tmp_path, tiny_registry):
    data = make_images(tmp_path / "data", per_class=6)
    seen = []

    def callback(event):
        if event.kind in (events.TRAINED, events.FINISHED):
            run = tmp_path / "runs" / "order"
            seen.append((event.kind, (run / "predictions.png").exists(), (run / "summary.json").exists()))

    finetune("tiny", data, epochs=1, weights="none", workers=0, out=str(tmp_path / "runs"), name="order",
             callback=callback)  # fmt: skip
    assert seen == [("trained", False, False), ("finished", True, True)]


LEAVE = """
import atexit, sys, torch
atexit.register(lambda: print("atexit ran", flush=True))
from zoo.cli import leave
if sys.argv[2] == "pool":  # the evaluation transforms' threads, left idle by the frozen-prefix cache's pass
    from zoo.training.loaders import _transform_pool
    assert list(_transform_pool().map(abs, [-1, -2, -3])) == [1, 2, 3]
print("output", end="")
leave(int(sys.argv[1]))
print("not reached")
"""


@pytest.mark.parametrize("code, threads", [(0, "none"), (3, "none"), (0, "pool")])
@pytest.mark.slow
def test_leaving_early_keeps_the_exit_code_the_output_and_the_atexit_handlers(code, threads):
    """Also after the transform pool has run (every first feature-extract run): its idle threads are joined,
    not taken for work still running, which sent the process through the slow interpreter teardown (1 s)."""
    done = subprocess.run([sys.executable, "-c", LEAVE, str(code), threads], capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == code, done.stderr
    assert done.stdout == "outputatexit ran\n"


BUDGET = """
import json, sys
import zoo
from zoo.catalogue import events
seen = {}

def callback(event):
    if event.kind == events.TRAINED:
        seen.update({m: m in sys.modules for m in ("torchvision", "matplotlib")})

result = zoo.finetune("tiny", sys.argv[1], policy="feature-extract", epochs=2, weights="none", out=sys.argv[2],
                      name="budget", callback=callback)
seen["plots"] = sorted(p.name for p in result.run_dir.glob("*.png"))
seen["matplotlib_at_end"] = "matplotlib" in sys.modules
print(json.dumps(seen))
"""


@pytest.mark.slow
def test_feature_extraction_imports_neither_torchvision_nor_matplotlib_and_times_its_phases(tmp_path):
    """The import budget of the headline command (issue: small data, small wait): nothing of torchvision is used,
    and matplotlib is imported by the child process that draws the plots, never by the run's own."""
    data = make_images(tmp_path / "data", per_class=8)
    timings = tmp_path / "timings.json"
    env = dict(os.environ, PYTHONPATH=str(install_tiny_plugin(tmp_path / "site")), ZOO_TIMINGS=str(timings))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(BUDGET), str(data), str(tmp_path / "runs")],
                          capture_output=True, text=True, env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"torchvision": False, "matplotlib": False, "matplotlib_at_end": False,
                    "plots": ["confusion_matrix.png", "curves.png", "predictions.png"]}  # fmt: skip
    phases = {r["phase"] for r in json.loads(timings.read_text())["phases"]}
    assert {"registry", "scan", "model", "cache", "train", "evaluate", "files", "plots", "report"} <= phases


def test_another_seed_on_fixed_splits_reads_the_same_activations(tmp_path, tiny_registry, monkeypatch):
    """train/ and val/ folders fix the split: a run with another seed computes no activations."""
    data = make_images(tmp_path / "data", per_class=10, layout="train/val")
    _run(tmp_path, data, "seed0", seed=0)
    monkeypatch.setattr("zoo.training.cache.compute_cache", lambda *a, **k: pytest.fail("computed again"))
    assert _run(tmp_path, data, "seed1", seed=1).summary["cache"]["stored"] is True


def test_a_batch_of_evaluation_transforms_in_threads_equals_one_by_one(tmp_path):
    from zoo.training.loaders import EvalTransform, ImageDataset, build_transform

    data = make_images(tmp_path / "data", per_class=6, size=70)
    split = load(data)
    pre = tiny_spec().preprocess
    dataset = ImageDataset(split.train + split.val, EvalTransform(pre), {}, 48)
    batch = dataset.__getitems__(list(range(len(dataset))))
    assert all(torch.equal(a[0], dataset[i][0]) and a[1] == dataset[i][1] for i, a in enumerate(batch))
    augmented = ImageDataset(split.train, build_transform(pre, "light"), {}, 48)
    torch.manual_seed(3)
    first = [x for x, _ in augmented.__getitems__([0, 1, 2])]
    torch.manual_seed(3)
    again = [augmented[i][0] for i in (0, 1, 2)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))  # random draws in the same order
