"""The search space of `zoo tune`, declared as data: which `zoo finetune` options, their ranges, log scale or not.

    [lr]                      # a float option: low, high, optional log
    low = 1e-4
    high = 0.3
    log = true
    [epochs]                  # an int option: low, high, optional step
    low = 5
    high = 40
    [policy]                  # any option: a list of choices
    choices = ["feature-extract", "freeze:3", "finetune"]

The default depends on the kind of policy the study trains (`default_space`); a TOML file (`--space FILE`) replaces
it. A space is checked before any trial runs: an unknown option, an empty range, a wrong type or a value
`zoo finetune` would refuse is one line naming the file and the option.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.core.errors import UsageError

# the options a study may search, and the type of their values
SEARCHABLE: dict[str, type] = {
    "lr": float,
    "weight_decay": float,
    "label_smoothing": float,
    "epochs": int,
    "policy": str,
    "ema": float,
    "mixup": float,
    "cutmix": float,
    "train_size": int,
    "batch_size": int,
}


@dataclass(frozen=True)
class Param:
    """One searched option: a range (low..high, log scale or not, an int step) or a list of choices."""

    name: str
    kind: type  # float, int or str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial) -> Any:
        """The value of this option for an Optuna trial."""
        if self.choices:
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step or 1, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)

    def to_toml(self) -> str:
        if self.choices:
            return f"[{self.name}]\nchoices = [{', '.join(_toml(c) for c in self.choices)}]\n"
        lines = [f"[{self.name}]", f"low = {_toml(self.low)}", f"high = {_toml(self.high)}"]
        lines += ["log = true"] if self.log else []
        lines += [f"step = {self.step}"] if self.step else []
        return "\n".join(lines) + "\n"


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{value:g}" if isinstance(value, float) else str(value)


HEAD_ONLY = {  # only the new head trains: cheap trials on cached features, so a wide space
    "lr": {"low": 1e-4, "high": 0.3, "log": True},
    "weight_decay": {"low": 1e-6, "high": 0.1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.3},
    "epochs": {"low": 5, "high": 40, "step": 5},
}
BODY = {  # pretrained groups train too: smaller LRs, fewer epochs (each one costs a pass through the backbone)
    "lr": {"low": 1e-5, "high": 3e-3, "log": True},
    "weight_decay": {"low": 1e-5, "high": 0.1, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "epochs": {"low": 3, "high": 15},
}


def default_space(head_only: bool) -> list[Param]:
    """lr, weight decay, label smoothing and epochs, with ranges for a head-only policy or for one that trains more."""
    return parse(HEAD_ONLY if head_only else BODY, "the default space")


def read_space(path: Path | str) -> list[Param]:
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--space {path}: cannot read it ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--space {path}: not valid TOML ({exc})") from None
    return parse(data, f"--space {path}")


def parse(data: dict[str, Any], where: str) -> list[Param]:
    """Params from `{option: {low, high, log, step} | {choices}}`; UsageError naming `where` and the option."""
    if not data:
        raise UsageError(f"{where}: no option to search; give at least one of {', '.join(SEARCHABLE)}")
    params = []
    for name, spec in data.items():
        if name not in SEARCHABLE:
            raise UsageError(
                f"{where}: [{name}] is not an option zoo tune searches; it searches {', '.join(SEARCHABLE)}"
            )
        if not isinstance(spec, dict):
            raise UsageError(f"{where}: [{name}] must be a table (low/high, or choices)")
        params.append(_param(name, SEARCHABLE[name], spec, f"{where}: [{name}]"))
    return params


def _param(name: str, kind: type, spec: dict[str, Any], where: str) -> Param:
    unknown = set(spec) - {"low", "high", "log", "step", "choices"}
    if unknown:
        raise UsageError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; use low, high, log, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise UsageError(f"{where}: choices must be a non-empty list")
        for c in choices:
            if not _is(c, kind):
                raise UsageError(f"{where}: choice {c!r} is not a{'n' if kind is int else ''} {kind.__name__}")
        return Param(name, kind, choices=tuple(choices))
    if kind is str:
        raise UsageError(f"{where}: a {name} is searched among choices = [...], not a range")
    if "low" not in spec or "high" not in spec:
        raise UsageError(f"{where}: give low and high (or choices)")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    for key, value in (("low", low), ("high", high)):
        if not _is(value, kind):
            raise UsageError(f"{where}: {key} = {value!r} is not a{'n' if kind is int else ''} {kind.__name__}")
    if not isinstance(log, bool):
        raise UsageError(f"{where}: log must be true or false")
    if not low < high:
        raise UsageError(f"{where}: the range {low}..{high} is empty; low must be below high")
    if log and low <= 0:
        raise UsageError(f"{where}: a log scale needs low > 0 (low = {low})")
    if step is not None and (kind is not int or not isinstance(step, int) or step < 1 or log):
        raise UsageError(f"{where}: step is a whole number >= 1, for an int option on a linear scale")
    return Param(name, kind, float(low) if kind is float else int(low), float(high) if kind is float else int(high),
                 log, step)  # fmt: skip


def _is(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, str)


def extremes(params: list[Param]) -> list[dict[str, Any]]:
    """Values that together cover every end of every range and every choice: each must be one `zoo finetune`
    accepts (TrainConfig.check), so a space is refused before any trial when one is not."""
    out = []
    for p in params:
        for value in p.choices or (p.low, p.high):
            out.append({p.name: value})
    return out


def to_toml(params: list[Param]) -> str:
    return "\n".join(p.to_toml() for p in params)
