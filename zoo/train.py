"""The fine-tuner: any registered backbone, any freeze policy, CPU or GPU, resumable.

`finetune()` builds the model from its spec, loads weights, replaces the head,
applies the policy group by group, trains, and writes a run folder:

    runs/NAME/  config.json  metrics.csv  summary.json  best.pt  last.pt
                curves.png  confusion_matrix.png  predictions.png

When the frozen prefix is fixed and the train images are not augmented (or
`cache_augmented` copies are asked for), the prefix runs once and the rest
trains on its activations (`zoo.cache`): the same result, many times faster.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo import atomic
from zoo.backbone import Backbone
from zoo.cache import ENGINES, FeatureCache, PrefixRunner, compute_cache
from zoo.checkpoint import FORMAT, CheckpointError, preprocess_dict, read_checkpoint
from zoo.data import AUGMENTS, DataSplit, ImageDataset, Sample, build_transform, decode_size, scan
from zoo.distributed import Dist, shard, unshard
from zoo.errors import ZooError
from zoo.models import create_model, group_of_params, resolve_weights, split_outputs
from zoo.policies import GroupPlan, apply_plan, resolve_policy
from zoo.registry import get_registry

log = logging.getLogger(__name__)

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "step")
AMP_MODES = ("auto", "bf16", "fp16", "off")
CACHE_MODES = ("auto", "off")


class TrainingInterrupted(ZooError):
    """Ctrl-C during training: what was complete is saved."""

    exit_code = 130


@dataclass
class TrainConfig:
    """Every option of `zoo finetune`; saved as config.json so a run can be resumed or repeated."""

    backbone: str
    data: str
    policy: str = "finetune"
    weights: str = "default"  # a tag, "none", or a file
    epochs: int = 10
    batch_size: int | None = None  # None: 16 on the CPU (measured fastest per image here), 64 on a GPU
    lr: float | None = None  # None: 1e-3 when only the head trains, else 3e-4 (AdamW) / 1e-2 (SGD)
    optimizer: str = "adamw"
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0.05 (AdamW) or 1e-4 (SGD); never on biases and norms
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    step_size: int = 7
    gamma: float = 0.1
    label_smoothing: float = 0.1
    patience: int | None = None  # stop after this many epochs without a better val accuracy
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool | None = None  # None: on, except on MPS
    augment: str = "auto"  # auto: none when a fixed prefix is frozen (the cache applies), else light
    cache: str = "auto"
    cache_augmented: int = 0
    cache_engine: str = "auto"
    train_bn: bool = False  # let BatchNorm in frozen groups update its statistics
    sync_bn: bool = False  # distributed on CUDA: BatchNorm statistics over the global batch
    dist_timeout: float = 300.0  # seconds a collective may wait for another rank before the job fails
    val_fraction: float = 0.2
    workers: int | None = None
    out: str = "runs"
    name: str | None = None
    quiet: bool = False

    def check(self) -> None:
        def bad(flag: str, value: Any, allowed) -> None:
            if value not in allowed:
                raise ZooError(f"--{flag} {value}: choose one of {', '.join(map(str, allowed))}")

        bad("optimizer", self.optimizer, OPTIMIZERS)
        bad("schedule", self.schedule, SCHEDULES)
        bad("amp", self.amp, AMP_MODES)
        bad("cache", self.cache, CACHE_MODES)
        bad("cache-engine", self.cache_engine, ENGINES)
        bad("augment", self.augment, ("auto", *AUGMENTS))
        for flag, value, low in (
            ("epochs", self.epochs, 1),
            ("batch-size", 1 if self.batch_size is None else self.batch_size, 1),
            ("cache-augmented", self.cache_augmented, 0),
            ("step-size", self.step_size, 1),
        ):
            if value < low:
                raise ZooError(f"--{flag} {value}: must be >= {low}")
        if not self.dist_timeout > 0:
            raise ZooError(f"--dist-timeout {self.dist_timeout}: must be > 0 seconds")
        if self.lr is not None and not self.lr > 0:
            raise ZooError(f"--lr {self.lr}: must be > 0")
        if not 0 <= self.label_smoothing < 1:
            raise ZooError(f"--label-smoothing {self.label_smoothing}: must be in [0, 1)")


@dataclass
class FinetuneResult:
    """What `zoo.finetune` returns."""

    run_dir: Path
    best_val_acc: float
    best_epoch: int
    epochs_run: int
    classes: list[str]
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "best.pt"


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ZooError(f"--device {name}: not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"--device {name}: CUDA is not available here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ZooError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ZooError(f"--device {name}: MPS is not available here")
    return device


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def _rng_state(loader_gen: torch.Generator) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": loader_gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], loader_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_to_tuple(state["python"]))
    loader_gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuple(value):
    return tuple(_to_tuple(v) for v in value) if isinstance(value, list | tuple) else value


def lr_factor(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The schedule as a multiplier of each group's base LR at optimizer step `step`."""
    total = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch) if cfg.epochs > 1 else 0
    if cfg.schedule == "step":
        factor = cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    else:
        progress = (step - warmup) / max(1, total - warmup)
        factor = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    if step < warmup:
        factor *= (step + 1) / warmup
    return factor


def _run_dir(cfg: TrainConfig) -> Path:
    root = Path(cfg.out).expanduser()
    base = cfg.name or f"{cfg.backbone}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', cfg.policy)}"
    candidate, i = root / base, 1
    while candidate.exists() and any(candidate.iterdir()):
        i += 1
        candidate = root / f"{base}-{i}"
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def check_distributed(cfg: TrainConfig, world: int, device_type: str) -> None:
    """What a run on `world` workers needs of its options: the launcher checks before it starts any worker,
    and each worker (also under a plain torchrun) checks again."""
    if world == 1:
        return
    if device_type not in ("cuda", "cpu"):
        raise ZooError(f"--device {cfg.device}: distributed training runs on CUDA (NCCL) or the CPU (gloo)")
    if cfg.batch_size is not None and cfg.batch_size % world:
        raise ZooError(f"--batch-size {cfg.batch_size}: the global batch must divide evenly over {world} workers")
    if cfg.sync_bn and device_type != "cuda":
        raise ZooError("--sync-bn: SyncBatchNorm needs CUDA (NCCL); on the CPU leave it off")


def last_checkpoint(run_dir: Path) -> Path:
    """RUN/last.pt, which `--resume` continues from; CheckpointError when the run never finished an epoch."""
    path = run_dir / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {run_dir}: no last.pt; the run did not finish an epoch")
    return path


class _Owner(nn.Module):
    """The suffix of a split model, as a module that owns the model's parameters (for DDP)."""

    def __init__(self, model: nn.Module, suffix: nn.Module):
        super().__init__()
        self.model = model
        self._suffix = [suffix]  # not a submodule: its parameters are the model's

    def forward(self, *inputs):
        return self._suffix[0](*inputs)


class _Trainer:
    def __init__(self, cfg: TrainConfig, resume: dict[str, Any] | None = None, run_dir: Path | None = None):
        cfg.check()
        self.cfg = cfg
        self.dist = Dist.from_env()  # set by torchrun; world 1 otherwise
        self.console = _console(cfg.quiet or not self.dist.is_main)
        seed_everything(cfg.seed, cfg.deterministic)
        self.device = pick_device(cfg.device)
        check_distributed(cfg, self.dist.world, self.device.type)
        if self.dist.enabled:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.dist.local_rank)
                torch.cuda.set_device(self.device)
            self.dist.init(self.device.type, cfg.dist_timeout)
        if cfg.batch_size is None:
            cfg.batch_size = (16 if self.device.type == "cpu" else 64) * self.dist.world
        self.rank_batch = cfg.batch_size // self.dist.world
        registry = get_registry()
        self.spec: Backbone = registry.get(cfg.backbone)
        self.advice = None
        if cfg.policy == "auto":
            from zoo.advise import advise

            self.advice = advise(cfg.backbone, cfg.data, cfg.weights, cfg.val_fraction, cfg.seed)
            for line in self.advice.evidence:
                log.info("auto: %s", line)
            self.policy = resolve_policy(self.advice.policy)
        else:
            self.policy = resolve_policy(cfg.policy)
        pre = self.spec.preprocess
        weights = "none" if not self.policy.pretrained else cfg.weights
        self.weights_choice = resolve_weights(self.spec, weights)
        if self.weights_choice.tag:
            pre = self.spec.preprocess_for(self.weights_choice.tag)
        self.pre = pre
        self.decoded: dict = {}
        t = time.perf_counter()
        self.split: DataSplit = scan(cfg.data, cfg.val_fraction, cfg.seed, decode_size(pre), self.decoded)
        self.scan_seconds = time.perf_counter() - t
        if resume and resume["classes"] != self.split.classes:
            raise CheckpointError(
                f"--resume: the data's classes {self.split.classes} are not the run's {resume['classes']}"
            )
        self.classes = self.split.classes
        # checked once, below, by group_of_params (for the cut model too)
        model = create_model(self.spec, num_classes=len(self.classes), weights=self.weights_choice, check=False)
        if self.policy.cut:
            from zoo.split import cut_model

            model, self.spec = cut_model(model, self.spec, self.policy.cut, len(self.classes))
        self.groups = self.spec.group_names
        self.policy.frozen_count(self.groups)  # fail early on freeze:K out of range
        self.params = group_of_params(model, self.spec)
        # measured here: channels_last trains lite0 1.75x and resnet18 1.4x faster on the CPU, as on CUDA
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type != "mps"
        if cfg.sync_bn and self.dist.enabled:  # (on CUDA: check_distributed)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.augment = cfg.augment
        if self.augment == "auto":
            cacheable = self.policy.fixed_prefix and self.policy.frozen_count(self.groups) and not cfg.cache_augmented
            self.augment = "none" if cacheable else "light"
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.loader_gen = torch.Generator().manual_seed(cfg.seed)
        self.workers = cfg.workers if cfg.workers is not None else min(4, max(0, (os.cpu_count() or 1) - 1))
        if self.dist.enabled and cfg.workers is None and self.device.type == "cpu":
            self.workers = 0  # the ranks already share the cores; and no fork of a process that runs gloo threads
        self.optimizer: torch.optim.Optimizer | None = None
        self.in_optimizer: list[str] = []
        self.cache: FeatureCache | None = None
        self.cache_k = 0
        self.step = 0
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, -1
        self.best_preds: list[int] = []
        if run_dir is None:  # rank 0 picks the folder; every rank writes (rank 0) or reads the same one
            run_dir = Path(self.dist.broadcast(str(_run_dir(cfg)) if self.dist.is_main else None))
        self.run_dir = run_dir
        self.writer = _tensorboard(self.run_dir) if self.dist.is_main else None
        self._ddp_model, self._ddp_key = None, None
        if self.dist.enabled:  # the model is identical on every rank (DDP broadcasts rank 0's); augmentation is not
            torch.manual_seed(cfg.seed + self.dist.rank)
        if resume:
            self._restore(resume)

    # --- set-up -------------------------------------------------------------------------------------------
    def _amp_dtype(self):
        mode = self.cfg.amp
        if self.device.type != "cuda" or mode == "off":
            if mode in ("bf16", "fp16") and self.device.type != "cuda":
                log.info("--amp %s applies on CUDA only; training in float32", mode)
            return None
        if mode == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if mode == "bf16" else torch.float16

    def _base_lr(self) -> float:
        if self.cfg.lr is not None:
            return self.cfg.lr
        head_only = self.policy.frozen_count(self.groups) == len(self.groups) - 1
        if head_only:
            return 1e-3 if self.cfg.optimizer == "adamw" else 1e-2
        return 3e-4 if self.cfg.optimizer == "adamw" else 1e-2

    def _weight_decay(self) -> float:
        if self.cfg.weight_decay is not None:
            return self.cfg.weight_decay
        return 0.05 if self.cfg.optimizer == "adamw" else 1e-4

    def _add_groups(self, plan: list[GroupPlan]) -> None:
        """Put newly trainable groups into the optimizer (created on first call)."""
        base, wd = self._base_lr(), self._weight_decay()
        new = []
        for p in plan:
            if not p.trainable or p.name in self.in_optimizer:
                continue
            self.in_optimizer.append(p.name)
            decay = [t for n, t in self.params[p.name] if t.ndim > 1]
            no_decay = [t for n, t in self.params[p.name] if t.ndim <= 1]
            for params, weight_decay in ((decay, wd), (no_decay, 0.0)):
                if params:
                    new.append(
                        {
                            "params": params,
                            "weight_decay": weight_decay,
                            "base_lr": base * p.lr_mult,
                            "lr": base * p.lr_mult,
                            "group": p.name,
                        }
                    )
        if not new:
            return
        if self.optimizer is None:
            if self.cfg.optimizer == "sgd":
                self.optimizer = torch.optim.SGD(new, lr=base, momentum=self.cfg.momentum, nesterov=True)
            else:
                self.optimizer = torch.optim.AdamW(new, lr=base)
        else:
            for group in new:
                self.optimizer.add_param_group(group)

    def _plan(self, epoch: int) -> list[GroupPlan]:
        plan = self.policy.plan(self.groups, epoch)
        self._add_groups(plan)
        return plan

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        epoch = ckpt["epoch"]
        for e in range(epoch):  # replay the plan so param groups come back in their original order
            self._plan(e)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = ckpt["step"]
        self.start_epoch = epoch
        self.history = list(ckpt["history"])
        self.best_acc, self.best_epoch = ckpt["best_val_acc"], ckpt["best_epoch"]
        self.best_preds = list(ckpt.get("best_preds", []))
        _set_rng_state(ckpt["rng"], self.loader_gen)

    # --- data -------------------------------------------------------------------------------------------------
    def _loader(self, samples: list[Sample], augment: str, shuffle: bool, generator=None, epoch: int | None = None):
        """Batches of this rank's share. Train (`epoch` given): a DistributedSampler shard, padded so every
        rank takes the same number of steps; otherwise the samples as given."""
        dataset = ImageDataset(samples, build_transform(self.pre, augment), self.decoded, decode_size(self.pre))
        sampler = None
        if self.dist.enabled and epoch is not None:
            sampler = torch.utils.data.DistributedSampler(
                dataset, self.dist.world, self.dist.rank, shuffle=shuffle, seed=self.cfg.seed
            )
            sampler.set_epoch(epoch)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=self.rank_batch,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            generator=generator,
            persistent_workers=False,
            worker_init_fn=_seed_worker if self.workers else None,
            # forking a process whose gloo/NCCL threads hold locks can deadlock the child: start workers cleanly
            multiprocessing_context="forkserver" if self.dist.enabled and self.workers else None,
        )

    def _cache_wanted(self, k: int) -> bool:
        cfg = self.cfg
        if cfg.cache == "off" or k == 0 or cfg.train_bn:
            return False
        return self.augment == "none" or cfg.cache_augmented > 0

    def _ensure_cache(self, k: int) -> None:
        """Compute (or recompute, when the boundary moved) the train and val activations at group k."""
        if not self._cache_wanted(k):
            self._drop_cache()
            return
        if self.cache is not None and self.cache_k == k:
            return
        self._drop_cache()
        from zoo.split import SplitError, split_at

        try:
            prefix, suffix = split_at(self.model, self.spec, k)
        except SplitError as exc:
            log.info("frozen-prefix cache off: %s", exc)
            return
        self.model.eval()
        copies = self.cfg.cache_augmented if self.cfg.cache_augmented and self.augment != "none" else 1
        train_aug = self.augment if copies > 1 else "none"
        gen = torch.Generator().manual_seed(self.cfg.seed + 1000 * k)
        disk = self.run_dir / "cache" / (f"rank{self.dist.rank}" if self.dist.enabled else "")
        # its own RNG stream: a resumed run recomputes the cache without shifting the training's random numbers
        with torch.random.fork_rng(devices=[]), _progress(self.console, f"caching {self.groups[k - 1]}") as bar:
            torch.manual_seed(self.cfg.seed + 1000 * k)
            images = len(self.split.train) * copies + len(self.split.val)
            runner = PrefixRunner(prefix, self.device, self.cfg.cache_engine, images, self.channels_last)
            train_loader = self._loader(self.split.train, train_aug, False, gen, epoch=0)  # this rank's shard
            train = compute_cache(runner, train_loader, copies, disk_dir=disk, progress=bar)
            val_loader = self._loader(shard(self.split.val, self.dist), "none", False)
            val = compute_cache(runner, val_loader, 1, disk_dir=disk, progress=bar)
        self.cache, self.val_cache, self.suffix, self.cache_k = train, val, suffix, k
        self.cache_info = {
            "boundary": self.groups[k - 1],
            "engine": train.engine,
            "copies": copies,
            "megabytes": round((train.nbytes + val.nbytes) / 1e6, 1),
            "seconds": round(train.seconds + val.seconds, 2),
            "on_disk": train.on_disk,
        }

    def _drop_cache(self) -> None:
        if self.cache is not None:
            self.cache.release()
            self.val_cache.release()
        self.cache = None
        for disk in (self.run_dir / "cache" / f"rank{self.dist.rank}", self.run_dir / "cache"):
            try:
                disk.rmdir()  # only when empty; another rank may still be using the parent
            except OSError:
                pass

    # --- one epoch --------------------------------------------------------------------------------------------
    def _forward_loss(self, inputs, target):
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self._train_module()(*inputs)
            logits, aux = split_outputs(out)
            loss = self.criterion(logits, target)
            for extra in aux:  # Inception/GoogLeNet auxiliary heads, weighted as in the papers' recipes
                loss = loss + 0.4 * self.criterion(extra, target)
        return logits, loss

    def _batches(self, train: bool, epoch: int):
        if self.cache is not None:
            cache = self.cache if train else self.val_cache
            copy = epoch % cache.copies if train else 0
            for tensors, target in cache.batches(
                self.rank_batch, self.loader_gen if train else None, copy, shuffle=train
            ):
                yield [t.to(self.device, non_blocking=True) for t in tensors], target.to(self.device)
            return
        if train:
            loader = self._loader(self.split.train, self.augment, True, self.loader_gen, epoch=epoch)
        else:
            loader = self._loader(shard(self.split.val, self.dist), "none", False)
        for images, target in loader:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield [images], target.to(self.device, non_blocking=True)

    def _train_epoch(self, epoch: int, plan: list[GroupPlan], bar) -> dict[str, float]:
        self.model.train()
        apply_plan(self.model, self.spec, plan, self.cfg.train_bn)
        steps = math.ceil(math.ceil(len(self.split.train) / self.dist.world) / self.rank_batch)
        total_loss = correct = seen = 0
        start = time.perf_counter()
        for inputs, target in self._batches(True, epoch):
            factor = lr_factor(self.cfg, self.step, steps)
            for group in self.optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            logits, loss = self._forward_loss(inputs, target)
            self.optimizer.zero_grad(set_to_none=True)
            if self.scaler:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                loss.backward()
                self.optimizer.step()
            self.step += 1
            n = len(target)
            total_loss += loss.item() * n
            correct += (logits.argmax(1) == target).sum().item()
            seen += n
            bar(seen, len(self.split.train), seen / max(1e-9, time.perf_counter() - start))
        seconds = time.perf_counter() - start
        total_loss, correct, seen = self.dist.all_sum(total_loss, correct, seen)  # every rank logs the same
        return {
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "train_img_s": seen / seconds,
            "train_seconds": seconds,
        }

    @torch.no_grad()
    def _evaluate(self) -> tuple[dict[str, float], list[int]]:
        self.model.eval()
        total_loss = correct = seen = 0
        preds: list[int] = []
        for inputs, target in self._batches(False, 0):
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.suffix(*inputs) if self.cache is not None else self.model(inputs[0])
            logits, _ = split_outputs(out)
            logits = logits.float()
            total_loss += nn.functional.cross_entropy(logits, target).item() * len(target)
            pred = logits.argmax(1)
            correct += (pred == target).sum().item()
            seen += len(target)
            preds += pred.tolist()
        if self.dist.enabled:  # each val image was on exactly one rank: sums are exact
            total_loss, correct, seen = self.dist.all_sum(total_loss, correct, seen)
            preds = unshard(self.dist.gather(preds), len(self.split.val))
        return {"val_loss": total_loss / seen, "val_acc": correct / seen, "val_images": int(seen)}, preds

    def _train_module(self):
        """What the train step calls: the model (or the suffix over cached activations), in DDP when distributed.

        The DDP wrapper is rebuilt when the trainable groups or the cache boundary change (gradual unfreezing).
        """
        plain = self.suffix if self.cache is not None else self.model
        if not self.dist.enabled:
            return plain
        key = (self.cache_k if self.cache is not None else None, tuple(self.in_optimizer))
        if self._ddp_key != key:
            import gc

            from torch.nn.parallel import DistributedDataParallel

            self._ddp_model = None  # the old wrapper's gradient hooks go with it, before new ones are added
            gc.collect()
            wrapped = self.model if self.cache is None else _Owner(self.model, self.suffix)
            ids = [self.device.index] if self.device.type == "cuda" else None
            # auxiliary heads get no gradient over cached activations, nor in every forward
            unused = bool(self.spec.aux_heads)
            self._ddp_model = DistributedDataParallel(wrapped, device_ids=ids, find_unused_parameters=unused)
            self._ddp_key = key
        return self._ddp_model

    # --- files --------------------------------------------------------------------------------------------------
    def _checkpoint(self, epoch: int) -> dict[str, Any]:
        info = get_registry().plugins.get(self.spec.source)
        return {
            "format": FORMAT,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "backbone": get_registry().resolve(self.cfg.backbone),
            "plugin": self.spec.source,
            "plugin_version": info.version if info else "",
            "zoo_version": _zoo_version(),
            "classes": list(self.classes),
            "preprocess": preprocess_dict(self.pre),
            "policy": self.policy.to_dict(),
            "weights": self.weights_choice.label,
            "epoch": epoch,
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": _rng_state(self.loader_gen),
            "history": self.history,
            "best_val_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "best_preds": self.best_preds,
            "config": dataclasses.asdict(self.cfg),
        }

    def _write_metrics(self) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(self.history[0]))
        writer.writeheader()
        writer.writerows(self.history)
        atomic.write_text(self.run_dir / "metrics.csv", buf.getvalue())

    def print_plan(self) -> None:
        from rich.table import Table

        plan = self.policy.plan(self.groups, self.start_epoch)
        base = self._base_lr()
        table = Table(
            title=f"{self.spec.name} · policy {self.policy.name} · {self.weights_choice.label} weights",
            title_justify="left",
        )
        for column in ("group", "trains", "lr", "params"):
            table.add_column(column, justify="right" if column in ("lr", "params") else "left")
        for p in plan:
            count = sum(t.numel() for _, t in self.params[p.name])
            table.add_row(
                p.name,
                "yes" if p.trainable else "[dim]frozen[/]",
                f"{base * p.lr_mult:.2g}" if p.trainable else "-",
                f"{count:,}",
            )
        self.console.print(table)
        counts = self.split.counts("train")
        self.console.print(
            f"data: {len(self.split.train)} train / {len(self.split.val)} val images, {len(self.classes)} classes "
            f"({self.split.layout}); smallest class {min(counts.values())}; "
            f"{len(self.split.skipped)} file(s) skipped; augment {self.augment}; device {self.device}"
        )

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        cfg = self.cfg
        started = time.perf_counter()
        main = self.dist.is_main  # only rank 0 writes files
        if main:
            atomic.write_json(self.run_dir / "config.json", dataclasses.asdict(cfg))
        self.print_plan()
        status = "completed"
        epoch = self.start_epoch
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                plan = self._plan(epoch)
                self._ensure_cache(self.policy.frozen_at(self.groups, epoch))
                with _progress(self.console, f"epoch {epoch + 1}/{cfg.epochs}") as bar:
                    row = {"epoch": epoch + 1, **self._train_epoch(epoch, plan, bar)}
                metrics, preds = self._evaluate()
                row.update(metrics)
                row["lr"] = max(g["lr"] for g in self.optimizer.param_groups)
                row["cached"] = self.cache is not None
                self.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
                improved = metrics["val_acc"] > self.best_acc
                if improved:
                    self.best_acc, self.best_epoch, self.best_preds = metrics["val_acc"], epoch + 1, preds
                if main:
                    ckpt = self._checkpoint(epoch + 1)
                    atomic.torch_save(self.run_dir / "last.pt", ckpt)
                    if improved:
                        atomic.torch_save(self.run_dir / "best.pt", ckpt)
                    self._write_metrics()
                if self.writer:
                    for key, value in row.items():
                        if isinstance(value, float):
                            self.writer.add_scalar(key, value, epoch + 1)
                self.console.print(
                    f"epoch {epoch + 1}/{cfg.epochs}  train loss {row['train_loss']:.4f} acc {row['train_acc']:.3f}"
                    f"  val loss {row['val_loss']:.4f} acc {row['val_acc']:.3f}"
                    f"  {row['train_img_s']:.1f} img/s{'  (cached)' if row['cached'] else ''}"
                    f"{'  *best*' if improved else ''}"
                )
                if cfg.patience is not None and epoch + 1 - self.best_epoch >= cfg.patience:
                    self.console.print(f"early stop: no better val accuracy for {cfg.patience} epoch(s)")
                    status = "early-stopped"
                    break
        except KeyboardInterrupt:
            status = "interrupted"
            done = len(self.history)
            self._finish(status, started)
            raise TrainingInterrupted(
                f"interrupted during epoch {epoch + 1}; {done} complete epoch(s) saved in {self.run_dir}; "
                f"continue with: zoo finetune --resume {self.run_dir}"
            ) from None
        finally:
            self._drop_cache()
        summary = self._finish(status, started)
        self.dist.close()
        return FinetuneResult(
            self.run_dir, self.best_acc, self.best_epoch, len(self.history), self.classes, self.history, summary
        )

    def _finish(self, status: str, started: float) -> dict[str, Any]:
        if self.writer:
            self.writer.close()
        summary = {
            "status": status,
            "backbone": self.spec.name,
            "plugin": self.spec.source,
            "policy": self.policy.to_dict(),
            "auto": self.advice.to_dict() if self.advice else None,
            "weights": self.weights_choice.label,
            "classes": self.classes,
            "train_images": len(self.split.train),
            "val_images": len(self.split.val),
            "train_counts": self.split.counts("train"),
            "val_counts": self.split.counts("val"),
            "skipped_files": len(self.split.skipped),
            "skipped": [f"{p} ({why})" for p, why in self.split.skipped[:100]],
            "epochs_run": len(self.history),
            "best_val_acc": self.best_acc,
            "best_epoch": self.best_epoch,
            "final_val_acc": self.history[-1]["val_acc"] if self.history else None,
            "augment": self.augment,
            "cache": getattr(self, "cache_info", None),
            "device": str(self.device),
            "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "off",
            "channels_last": self.channels_last,
            "scan_seconds": round(self.scan_seconds, 2),
            "wall_seconds": round(time.perf_counter() - started, 2),
            "world_size": self.dist.world,
            "batch_size": self.cfg.batch_size,  # global; each rank takes batch_size / world_size
        }
        if not self.dist.is_main:
            return summary
        atomic.write_json(self.run_dir / "summary.json", summary)
        if self.history and self.best_preds:
            from zoo import plots

            try:
                plots.write_all(self.run_dir, self.history, self.classes, self.split.val, self.best_preds, self.decoded)
            except Exception as exc:  # a plot must never lose a finished run
                log.warning("could not draw plots: %s: %s", type(exc).__name__, exc)
        if status != "interrupted":
            self.console.print(
                f"[bold]done[/]: best val acc {self.best_acc:.4f} at epoch {self.best_epoch} "
                f"({len(self.history)} epochs, {summary['wall_seconds']:.1f} s) → {self.run_dir}"
            )
        return summary


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    random.seed(seed)


def _zoo_version() -> str:
    from zoo import __version__

    return __version__


def _tensorboard(run_dir: Path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return None
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))


def _console(quiet: bool):
    from rich.console import Console

    return Console(stderr=True, quiet=quiet, highlight=False)


class _progress:
    """A rich progress bar with img/s and ETA; a no-op when quiet or not on a terminal."""

    def __init__(self, console, description: str):
        self.console = console
        self.description = description
        self.progress = None

    def __enter__(self):
        if self.console.quiet or not self.console.is_terminal:
            return lambda done, total, rate=None: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        task = self.progress.add_task(self.description, total=None, rate="")

        def update(done: int, total: int, rate: float | None = None) -> None:
            self.progress.update(task, completed=done, total=total, rate=f"{rate:.1f} img/s" if rate else "")

        return update

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()
        return False


def finetune(backbone: str, data: str | Path, *, resume: str | Path | None = None, **options) -> FinetuneResult:
    """Fine-tune `backbone` on an image folder; the Python twin of `zoo finetune`.

    Example:
        >>> result = zoo.finetune("efficientnet_lite0", "data/", policy="feature-extract", epochs=5)
        >>> result.best_val_acc, result.run_dir
    """
    cfg = TrainConfig(backbone=backbone, data=str(data), **options)
    return _Trainer(cfg).run()


def resume_run(run_dir: str | Path, **overrides) -> FinetuneResult:
    """Continue a run from its last complete epoch: weights, optimizer, schedule, RNG, policy state."""
    run_dir = Path(run_dir).expanduser()
    ckpt = read_checkpoint(last_checkpoint(run_dir))
    saved = dict(ckpt["config"])
    saved["policy"] = ckpt["policy"]["name"]  # `auto` resumes with the policy it chose
    saved.update({k: v for k, v in overrides.items() if v is not None})
    cfg = TrainConfig(**saved)
    if ckpt["epoch"] >= cfg.epochs:
        raise ZooError(
            f"--resume {run_dir}: already trained {ckpt['epoch']} of {cfg.epochs} epochs; "
            "pass --epochs N to train longer"
        )
    return _Trainer(cfg, resume=ckpt, run_dir=run_dir).run()
