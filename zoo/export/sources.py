"""The model a command is pointed at: a run folder, a checkpoint file, or a registered backbone's name."""

from __future__ import annotations

from pathlib import Path

from zoo.core.errors import UsageError
from zoo.data.check_images import run_files


def model_source(source: str | Path, num_classes: int | None, weights: str):
    """What `zoo export` takes as SOURCE, as (model, spec, preprocess, labels, the run's data files (a callable) or
    None, metadata, checkpoint or None): a run folder or checkpoint (the fine-tuned model), else a backbone name
    (its pretrained weights, or a new head with `num_classes`)."""
    from zoo.catalogue.registry import get_registry
    from zoo.model.build import choose_weights, create_model, head_size
    from zoo.model.checkpoint import load_model, preprocess_of

    path = Path(source).expanduser()
    if path.exists():
        model, ckpt = load_model(path)
        spec = get_registry().get(ckpt["backbone"])
        extra = {
            "policy": ckpt["policy"]["name"],
            "val_acc": ckpt["best_val_acc"],
            "epoch": ckpt["epoch"],
            "weights": ckpt.get("weights", ""),
        }
        if ckpt.get("select_by", "acc") != "acc":
            extra[f"val_{ckpt['select_by']}"] = ckpt.get("best_value")
        return model, spec, preprocess_of(ckpt), list(ckpt["classes"]), run_files(ckpt["config"]), extra, ckpt
    spec = get_registry().get(str(source))
    if num_classes is not None and num_classes < 1:
        raise UsageError(f"--num-classes {num_classes}: must be >= 1")
    choice = choose_weights(spec, weights)
    model = create_model(spec, num_classes=num_classes, weights=choice).eval()
    n = head_size(model, spec)
    cats = list(choice.tag.categories) if choice.tag and not num_classes else []
    labels = cats if len(cats) == n else [f"class_{i}" for i in range(n)]
    return model, spec, spec.preprocess_for(choice.tag), labels, None, {"weights": choice.label}, None
