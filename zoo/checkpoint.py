"""Checkpoints: everything needed to rebuild a fine-tuned model, loadable with weights_only=True."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from zoo.backbone import Preprocess
from zoo.errors import ZooError

FORMAT = "zoo-checkpoint-1"


class CheckpointError(ZooError):
    """A run folder or checkpoint file cannot be used."""


def find_checkpoint(path: Path | str, prefer: str = "best.pt") -> Path:
    """A checkpoint file from a run folder (best.pt, else last.pt) or a file path."""
    path = Path(path).expanduser()
    if path.is_dir():
        for name in (prefer, "best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no best.pt or last.pt; is this a zoo run folder (runs/NAME)?")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such run folder or checkpoint file")
    return path


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    import torch

    path = find_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a zoo checkpoint (no '{FORMAT}' marker); "
            "to start from plain weights use `zoo finetune MODEL DATA --weights PATH`"
        )
    return ckpt


def preprocess_of(ckpt: dict[str, Any]) -> Preprocess:
    data = dict(ckpt["preprocess"])
    for key in ("input_size", "mean", "std"):
        data[key] = tuple(data[key])
    return Preprocess(**data)


def preprocess_dict(pre: Preprocess) -> dict[str, Any]:
    return asdict(pre)


def load_model(path: Path | str):
    """(model in eval mode, checkpoint dict) from a run folder or checkpoint file."""
    from zoo.models import create_model
    from zoo.policies import Policy
    from zoo.registry import get_registry
    from zoo.split import cut_model

    ckpt = read_checkpoint(path)
    try:
        spec = get_registry().get(ckpt["backbone"])
    except ZooError:
        raise CheckpointError(
            f"{path}: backbone '{ckpt['backbone']}' comes from plugin '{ckpt.get('plugin')}', "
            "which is not installed; install it, then try again"
        ) from None
    num_classes = len(ckpt["classes"])
    model = create_model(spec, num_classes=num_classes, weights="none", check=False)
    policy = Policy(**ckpt["policy"])
    if policy.cut:
        model, spec = cut_model(model, spec, policy.cut, num_classes)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {spec.name} (missing {len(missing)}, "
            f"unexpected {len(unexpected)}); was the plugin upgraded?"
        )
    return model.eval(), ckpt
