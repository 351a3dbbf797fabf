"""Checkpoints: written and read here, loadable with weights_only=True (plain data and tensors only).

A checkpoint holds everything needed to rebuild the fine-tuned model (backbone,
classes, preprocessing, the policy as it was resolved) and, in `last.pt`,
everything needed to continue the run exactly (optimizer, schedule step, RNG
state, history).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from zoo.catalogue.backbone import Preprocess
from zoo.catalogue.policies import Policy
from zoo.core import atomic
from zoo.core.errors import CheckpointError, ResumeError, ZooError

FORMAT = "zoo-checkpoint-1"


def write_checkpoint(path: Path, ckpt: dict[str, Any]) -> Path:
    """Write atomically (complete or absent)."""
    return atomic.torch_save(path, {"format": FORMAT, **ckpt})


def copy_checkpoint(source: Path, path: Path) -> Path:
    """`path` as the same checkpoint as `source`, atomically: a hard link where the file system has them (no second
    write; `source` is later replaced by a new file, never rewritten in place), else a copy."""
    import os
    import shutil

    return atomic.atomic_write(path, lambda tmp: _link_or_copy(source, tmp, os, shutil))


def _link_or_copy(source: Path, tmp: Path, os, shutil) -> None:
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)


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


def last_checkpoint(run_dir: Path | str) -> Path:
    """RUN/last.pt, which `--resume` continues from; a one-line error for anything else."""
    run_dir = Path(run_dir).expanduser()
    if not run_dir.exists():
        raise ResumeError(f"--resume {run_dir}: no such run folder")
    if not run_dir.is_dir():
        raise ResumeError(f"--resume {run_dir}: not a folder; --resume takes a run folder (runs/NAME), not a file")
    path = run_dir / "last.pt"
    if path.is_file():
        return path
    metrics = run_dir / "metrics.csv"
    epochs = max(0, len(metrics.read_text(errors="replace").splitlines()) - 1) if metrics.is_file() else 0
    if epochs or (run_dir / "best.pt").is_file():
        raise ResumeError(
            f"--resume {run_dir}: last.pt is missing, though the run saved {epochs or 'at least one'} epoch(s); "
            "put last.pt back to continue, or start again (best.pt, if there, holds the best weights)"
        )
    if (run_dir / "config.json").is_file():
        raise ResumeError(f"--resume {run_dir}: the run did not finish an epoch (no last.pt); start it again")
    raise ResumeError(f"--resume {run_dir}: not a zoo run folder (no last.pt, no config.json)")


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
    return Preprocess.from_dict(ckpt["preprocess"])


def policy_of(ckpt: dict[str, Any]) -> Policy:
    """The policy the run used, as it was resolved when it started."""
    return Policy.from_dict(ckpt["policy"])


def resumed_policy(ckpt: dict[str, Any]) -> Policy:
    """The policy a resumed run keeps: its own, with a warning when the registry now defines that name otherwise."""
    import logging

    from zoo.catalogue.policies import parse_policy
    from zoo.core.errors import PolicyError

    policy = policy_of(ckpt)
    try:
        now = parse_policy(policy.name)
    except PolicyError:
        return policy
    if now != policy:
        logging.getLogger(__name__).warning(
            "policy '%s' is defined differently now (registry.toml or a plugin changed); the run continues with "
            "the policy it started with",
            policy.name,
        )
    return policy


def load_model(path: Path | str):
    """(model in eval mode, checkpoint dict) from a run folder or checkpoint file."""
    from zoo.catalogue.registry import get_registry
    from zoo.model.build import create_model
    from zoo.model.cut import cut_model

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
    policy = policy_of(ckpt)
    if policy.cut:
        model, spec = cut_model(model, spec, policy.cut, num_classes)
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit {spec.name} (missing {len(missing)}, "
            f"unexpected {len(unexpected)}); was the plugin upgraded?"
        )
    return model.eval(), ckpt
