"""Where a run computes, with what precision, and its random numbers: device, AMP, seeds, RNG state."""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import torch

from zoo.core.errors import DeviceError, UsageError

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    """`auto` (CUDA, else MPS, else the CPU), or the device named; DeviceError when it is not here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"--device {name}: zoo trains on cpu, cuda or mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DeviceError(f"--device {name}: MPS is not available here")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `--amp` on `device` (None: float32). On the CPU, `auto` is bf16 where the CPU has
    native bf16 instructions (1.10x the img/s at equal accuracy here, bench/cpu_defaults.py; emulated bf16 is
    slower than float32), else float32; fp16 is CUDA's."""
    if mode == "off":
        return None
    if device.type == "cpu":
        if mode == "bf16" or (mode == "auto" and cpu_has_bf16()):
            return torch.bfloat16
        if mode == "fp16":
            log.info("--amp fp16 applies on CUDA only (the CPU has bf16: --amp bf16); training in float32")
        return None
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            log.info("--amp %s applies on CUDA and the CPU only; training in float32", mode)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(flags.split(":", 1)[-1].split())


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 natively (x86 AVX512-BF16 or AMX-BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    """Every random number generator a run draws from, to resume it exactly."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": loader_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else value
