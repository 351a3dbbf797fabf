"""Shared fixtures: a tiny backbone, in-test plugins, an isolated registry."""

from __future__ import annotations

import contextlib
import gc
import types

import pytest

import zoo.catalogue.registry
from zoo import Backbone, Group, Preprocess, hookimpl
from zoo.catalogue.scaffold import small_cnn, small_cnn_source

# one model of each family the transfer-learning tutorials use
TUTORIAL_MODELS = (
    "alexnet",
    "vgg11",
    "resnet18",
    "squeezenet1_1",
    "densenet121",
    "inception_v3",
    "googlenet",
    "shufflenet_v2_x1_0",
)


TINY_WIDTHS = (8, 16, 32)  # the tiny backbone: `zoo plugin new`'s template model (scaffold.small_cnn), narrower


def build_tiny(spec, weights=None, num_classes=10, **kwargs):
    """A 3-stage CNN small enough to train in a test; `weights` is loaded from its file like any plugin would."""
    import torch

    from zoo.catalogue.weights import fetch

    model = small_cnn(TINY_WIDTHS, num_classes)
    if weights is not None:
        model.load_state_dict(torch.load(fetch(weights), weights_only=True))
    return model


def tiny_spec(name: str = "tiny", **changes) -> Backbone:
    fields = dict(
        name=name,
        family="tiny",
        build=build_tiny,
        head="fc",
        groups=(
            Group("stem", ("stem",)),
            Group("stage1", ("stage1",)),
            Group("stage2", ("stage2",)),
            Group("head", ("fc",)),
        ),
        tags=("test",),
        preprocess=Preprocess(input_size=(32, 32), crop_pct=1.0),
        num_params=6_000,
    )
    fields.update(changes)
    return Backbone(**fields)


def plugin_module(name: str, *specs: Backbone, policies=()) -> types.SimpleNamespace:
    """An in-test plugin object that registers `specs` (and (name, factory) policies)."""

    class Plugin:
        __name__ = name

        @hookimpl
        def register_backbones(self, register):
            for spec in specs:
                register(spec)

        @hookimpl
        def register_policies(self, register):
            for policy_name, factory in policies:
                register(policy_name, factory, help="test policy")

    return Plugin()


@pytest.fixture(scope="session", autouse=True)
def _gc_frozen_after_collection():
    """The training loop calls gc.collect() (zoo.training.dist.release): in a test process that holds torch, onnx,
    matplotlib and every collected test, one full collection takes ~0.3 s. What is alive once the tests are
    collected lives to the end (modules, test functions), so it is frozen: collections scan the rest."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(autouse=True)
def _gc_scans_only_new_objects(_gc_frozen_after_collection):
    """The same before each test, for what the tests before it left alive (fixtures of wider scope, caches)."""
    gc.collect()
    gc.freeze()


_DRAW_PICTURES = {"now": False, "report": False}
_REPORT_MODULES = ("test_report", "test_report_browser", "test_runs", "test_explain")


@pytest.fixture(scope="module", autouse=True)
def _run_pictures_switch():
    """A run's pictures (zoo.training.plots.write_all: curves, confusion matrix, predictions) take matplotlib
    longer to draw than the tiny backbone takes to train. In these modules they are drawn only in the tests marked
    `plots`, the tests that check them; in every other test, and in the module-scoped fixtures that train (set up
    after this autouse one), nothing is drawn: a failing picture never fails a run, so nothing else saw them.
    Outside these modules (the plugins' tests) write_all is zoo's own again."""
    import zoo.training.plots

    drawn = zoo.training.plots.write_all

    def write_all(*args, **kwargs):
        if _DRAW_PICTURES["now"]:
            drawn(*args, **kwargs)

    import zoo.report.page

    written = zoo.report.page.write_report

    def write_report(*args, **kwargs):  # the run's report.html (Grad-CAM included): likewise, only where checked
        if _DRAW_PICTURES["report"]:
            return written(*args, **kwargs)
        return types.SimpleNamespace(path=args[0] / "report.html-not-written-in-this-test")

    _DRAW_PICTURES["now"] = False
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(zoo.training.plots, "write_all", write_all)
        patch.setattr(zoo.report.page, "write_report", write_report)
        yield


@pytest.fixture(autouse=True)
def _no_run_pictures(request, _run_pictures_switch):
    _DRAW_PICTURES["now"] = request.node.get_closest_marker("plots") is not None
    _DRAW_PICTURES["report"] = _DRAW_PICTURES["now"] or request.module.__name__.split(".")[-1] in _REPORT_MODULES
    yield
    _DRAW_PICTURES["now"] = _DRAW_PICTURES["report"] = False


@pytest.fixture
def use_registry():
    """Install a registry built with extra in-test plugins; the real one comes back afterwards."""
    saved = zoo.catalogue.registry._REGISTRY

    def install(*plugins: tuple[str, object]):
        zoo.catalogue.registry._REGISTRY = zoo.catalogue.registry.build_registry(extra_plugins=plugins)
        return zoo.catalogue.registry._REGISTRY

    try:
        yield install
    finally:
        zoo.catalogue.registry._REGISTRY = saved


@pytest.fixture
def tiny_registry(use_registry):
    return use_registry(("tinyplugin", plugin_module("tinyplugin", tiny_spec())))


@pytest.fixture
def served(tmp_path):
    """An HTTP server on 127.0.0.1 serving files from a folder; yields (folder, base_url)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    # shutdown() waits for serve_forever's next poll: 0.5 s by default, at every teardown
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def make_images(root, classes=("cats", "dogs"), per_class=12, size=40, layout="split", seed=0, ext=".png"):
    """Generated, easily separable photos: each class has its own colour, plus noise.

    `per_class` may be a dict (class -> count) for imbalanced data; layout "train/val/test" adds a test/ part."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = [(200, 40, 40), (40, 40, 200), (40, 200, 40), (200, 200, 40)]
    counts = per_class if isinstance(per_class, dict) else dict.fromkeys(classes, per_class)
    classes = tuple(counts)
    smallest = min(counts.values())
    splits = {"": None}
    if layout.startswith("train/"):
        splits = {"train": None, **{part: max(2, smallest // 2) for part in layout.split("/")[1:]}}
    for split, fixed in splits.items():
        for c, name in enumerate(classes):
            folder = root / split / name if split else root / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(fixed or counts[name]):
                base = np.array(colours[c % len(colours)], dtype=np.float32)
                pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{name}_{i}{ext}")
    return root


TINY_PLUGIN_SOURCE = (
    """
from zoo import Backbone, Group, Preprocess, hookimpl

"""
    + small_cnn_source()
    + f"""
def build(spec, weights=None, **kwargs):
    return small_cnn({TINY_WIDTHS}, 10)

@hookimpl
def register_backbones(register):
    register(Backbone(name="tiny", family="tiny", build="zoo_tiny:build", head="fc",
                      groups=(Group("stem", ("stem",)), Group("stage1", ("stage1",)),
                              Group("stage2", ("stage2",)), Group("head", ("fc",))),
                      preprocess=Preprocess(input_size=(32, 32), crop_pct=1.0)))
"""
)


def install_tiny_plugin(root):
    """The tiny backbone as an installed plugin (module + .dist-info) under `root`, for subprocess tests."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "zoo_tiny.py").write_text(TINY_PLUGIN_SOURCE)
    info = root / "zoo_tiny-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: zoo-tiny\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[zoo]\ntiny = zoo_tiny\n")
    return root


TAGS = ("red", "green", "blue")


def make_tagged(root, n=36, size=32, seed=0, splits=None, sep=" ", name="tags.csv"):
    """Multi-label data: grey images with a coloured quadrant for each of their tags, and a CSV manifest of them
    (`path,labels` and, with `splits` (a list of split names to cycle through), a split column)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = {"red": (230, 30, 30), "green": (30, 230, 30), "blue": (30, 30, 230)}
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = ["path,labels" + (",split" if splits else "")]
    half = size // 2
    for i in range(n):
        tags = [t for t in TAGS if rng.random() < 0.45] or [TAGS[i % 3]]
        pixels = np.clip(128 + rng.normal(0, 20, (size, size, 3)), 0, 255).astype(np.uint8)
        for k, tag in enumerate(TAGS):
            if tag in tags:
                y, x = divmod(k, 2)
                pixels[y * half : (y + 1) * half, x * half : (x + 1) * half] = colours[tag]
        Image.fromarray(pixels).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,{sep.join(tags)}" + (f",{splits[i % len(splits)]}" if splits else ""))
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


@contextlib.contextmanager
def tiny_run(root, **options):
    """(FinetuneResult, data folder, root): the tiny backbone fine-tuned for 3 epochs on generated train/val images,
    through an in-test plugin that stays registered while the context is open."""
    from zoo.training.train import finetune

    saved = zoo.catalogue.registry._REGISTRY
    zoo.catalogue.registry._REGISTRY = zoo.catalogue.registry.build_registry(
        [("tinyplugin", plugin_module("tinyplugin", tiny_spec()))]
    )
    try:
        data = make_images(root / "data", per_class=16, layout="train/val")
        settings = dict(policy="finetune", epochs=3, weights="none", workers=0, lr=0.01, out=str(root / "runs"))
        yield finetune("tiny", data, **{**settings, **options}), data, root
    finally:
        zoo.catalogue.registry._REGISTRY = saved
