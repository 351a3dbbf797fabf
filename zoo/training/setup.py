"""The set-up of one run, built once before a file is written: where it runs, its data, its model and plan, how it
optimizes, its loaders, its run folder and its frozen-prefix cache.

`RunSetup.build` does it in that order, one function per idea; every check happens here, so a run that starts
has everything it needs. What changes while the run trains is `zoo.training.state.RunState`, not this.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.catalogue import events
from zoo.catalogue.backbone import Backbone, Preprocess
from zoo.catalogue.policies import Policy, RunPlan, parse_policy
from zoo.catalogue.registry import get_registry
from zoo.core.errors import CheckpointError
from zoo.core.timing import phase
from zoo.data import balance
from zoo.data.cleaning import check_leaks, exclude_listed
from zoo.data.decoder import decode_into
from zoo.data.images import decode_size
from zoo.data.split import DataSplit, load, manifest_options
from zoo.model.build import GroupMap, WeightsChoice, choose_weights, split_outputs
from zoo.model.checkpoint import resumed_policy
from zoo.training.cache import BoundaryCache
from zoo.training.config import CPU_BATCH, GPU_BATCH, TrainConfig
from zoo.training.device import amp_dtype, pick_device, seed_everything, set_rng_state
from zoo.training.dist import DDPWrapper, Dist, shard
from zoo.training.ema import make_ema
from zoo.training.loaders import Loaders, default_workers, predates_train_size, train_size
from zoo.training.mixing import make_mixer
from zoo.training.optim import Optimizer, Schedule, base_lr, weight_decay
from zoo.training.runs import RunLock, new_run_dir
from zoo.training.shared import built_model, shared
from zoo.training.store import stores_for
from zoo.training.tasks import Task

log = logging.getLogger(__name__)


@dataclass
class Placement:
    """Where the run computes: this process's rank, its device, the global and per-rank batch."""

    dist: Dist
    device: torch.device
    batch_size: int  # global: each rank takes batch_size / world
    rank_batch: int


@dataclass
class Data:
    """The scanned split (decoded once, kept in memory), its task and how its imbalance is handled."""

    split: DataSplit
    decoded: dict
    scan_seconds: float
    task: Task
    balance: balance.Balance
    select_by: str  # the val metric that picks the best epoch

    @property
    def classes(self) -> list[str]:
        return self.split.classes


@dataclass
class Choice:
    """The model the run trains and the plan it follows: the policy (measured for `auto`), weights, groups."""

    spec: Backbone
    policy: Policy
    advice: Any  # zoo.training.advise.Advice for --policy auto, else None
    weights: WeightsChoice
    pre: Preprocess
    model: nn.Module
    groups: GroupMap
    plan: RunPlan


@dataclass
class RunSetup:
    """Everything a run is built from. Built once by `build`; read, never replaced, while the run trains (the
    optimizer and the model change inside, as torch objects do)."""

    cfg: TrainConfig
    report: events.Reporter
    place: Placement
    data: Data
    choice: Choice
    channels_last: bool
    ema: Any  # zoo.training.ema.EMA or None
    mixer: Any  # zoo.training.mixing.Mixer or None
    augment: str
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    criterion: nn.Module
    train_weights: torch.Tensor | None  # `--balance sampler`: each train image's draw weight
    loader_gen: torch.Generator
    loaders: Loaders
    base_lr: float | None  # None until --lr auto's range test has run
    optimizer: Optimizer
    steps_per_epoch: int  # optimizer steps
    schedule: Schedule
    ddp: DDPWrapper
    run_dir: Path
    lock: RunLock | None  # rank 0 holds the run folder's lock
    cache: BoundaryCache

    # shorthands for what every part of a run reads
    @property
    def dist(self) -> Dist:
        return self.place.dist

    @property
    def device(self) -> torch.device:
        return self.place.device

    @property
    def model(self) -> nn.Module:
        return self.choice.model

    @property
    def split(self) -> DataSplit:
        return self.data.split

    @property
    def classes(self) -> list[str]:
        return self.data.classes

    @classmethod
    def build(
        cls,
        cfg: TrainConfig,
        callback: events.Callback | None = None,
        resume: dict[str, Any] | None = None,
        run_dir: Path | None = None,
        lr_found: dict[str, Any] | None = None,
    ) -> RunSetup:
        """Set up and check everything; only then create (or, resumed, reuse) the run folder."""
        cfg.check()
        with phase("registry"):  # plugins and the catalogue, as `zoo list` loads them
            spec = get_registry().get(cfg.backbone)
        with phase("setup"):
            place = _place(cfg)
            report = events.Reporter(callback if place.dist.is_main else None, plugins=place.dist.is_main)
        with phase("scan"):  # the data listed, every image decoded once
            data = _scan(cfg, spec)
        if resume and resume["classes"] != data.classes:
            raise CheckpointError(f"--resume: the data's classes {data.classes} are not the run's {resume['classes']}")
        with phase("model"):  # built, pretrained weights loaded
            choice = _choose(cfg, spec, data, resume)
        model = choice.model
        # measured here: channels_last trains lite0 1.75x and resnet18 1.4x faster on the CPU, as on CUDA
        channels_last = cfg.channels_last if cfg.channels_last is not None else place.device.type != "mps"
        if cfg.sync_bn and place.dist.enabled:  # (on CUDA: check_distributed)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(place.device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        choice.model = model
        ema = make_ema(model, cfg.ema)
        mixer = make_mixer(cfg.mixup, cfg.cutmix, len(data.classes), data.task.multi_label)
        augment = cfg.augment
        if augment == "auto":
            cacheable = choice.policy.fixed_prefix and choice.plan.frozen and not cfg.cache_augmented and not mixer
            augment = "none" if cacheable else "light"
        dtype = amp_dtype(cfg.amp, place.device)
        loaders = _loaders(cfg, place, data, choice, augment, resume)
        lr = lr_found["suggestion"] if lr_found else (None if cfg.lr == "auto" else cfg.lr)
        first_lr = base_lr(lr, cfg.optimizer, choice.plan.head_only)
        batches = math.ceil(math.ceil(len(data.split.train) / place.dist.world) / place.rank_batch)
        steps_per_epoch = math.ceil(batches / cfg.accum_steps)
        if run_dir is None:  # everything checked out: now the run folder (rank 0 picks it; every rank uses it)
            picked = new_run_dir(cfg.out, cfg.name, choice.spec.name, cfg.policy) if place.dist.is_main else None
            run_dir = Path(place.dist.broadcast(str(picked) if picked else None))
        report.run_dir = str(run_dir)
        if data.split.memo is not None and place.dist.is_main:  # what the scan learned: kept once the run starts
            data.split.memo.save()
        setup = cls(
            cfg=cfg,
            report=report,
            place=place,
            data=data,
            choice=choice,
            channels_last=channels_last,
            ema=ema,
            mixer=mixer,
            augment=augment,
            amp_dtype=dtype,
            scaler=torch.amp.GradScaler("cuda") if dtype == torch.float16 else None,
            criterion=data.task.criterion(cfg.label_smoothing, data.balance).to(place.device),
            train_weights=data.task.sample_weights(torch.from_numpy(data.task.labels_array(data.split.train)),
                                                   data.balance),
            loader_gen=torch.Generator().manual_seed(cfg.seed),
            loaders=loaders,
            base_lr=first_lr,
            optimizer=_optimizer(cfg, choice, first_lr),
            steps_per_epoch=steps_per_epoch,
            schedule=Schedule(cfg.schedule, cfg.epochs, steps_per_epoch, cfg.warmup_epochs, cfg.step_size, cfg.gamma),
            # auxiliary heads get no gradient over cached activations, nor in every forward
            ddp=DDPWrapper(place.dist, place.device, find_unused=bool(choice.spec.aux_heads)),
            run_dir=run_dir,
            lock=RunLock(run_dir).acquire() if place.dist.is_main else None,
            cache=None,  # type: ignore[arg-type]  (needs the set-up's own loaders and reporter: below)
        )  # fmt: skip
        setup.cache = _cache(setup)
        _decode_what_is_needed(setup)
        if place.dist.enabled:  # the model is identical on every rank (DDP broadcasts rank 0's); augmentation is not
            torch.manual_seed(cfg.seed + place.dist.rank)
        return setup

    def set_lr(self, lr: float) -> None:
        """--lr auto: the base LR the range test found; a fresh optimizer starts from it."""
        self.base_lr = lr
        self.optimizer = _optimizer(self.cfg, self.choice, lr)

    def restore(self, ckpt: dict[str, Any]) -> None:
        """A resumed run's weights (and their average), optimizer, scaler and RNG, where the checkpoint left them."""
        if self.ema:
            self.model.load_state_dict(ckpt["trained_model"])
            self.ema.load(ckpt["model"], ckpt["ema"]["updates"])
        else:
            self.model.load_state_dict(ckpt["model"])
        self.optimizer.restore(ckpt["optimizer"], ckpt["epoch"])
        if self.scaler and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"], self.loader_gen)

    def evaluated_state(self) -> dict[str, torch.Tensor]:
        """The weights that are evaluated, kept as best and exported: the average with --ema, else the model's."""
        if self.ema:
            return self.ema.state_dict()
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    # --- batches and the forward pass, as the loop, the evaluation and the LR range test use them ---------------
    def batches(self, train: bool, epoch: int):
        """This rank's batches of the train (shuffled for `epoch`) or val split: cached activations when the
        frozen prefix is cached, else images from the loaders, on the device."""
        if self.cache.active:
            yield from self.cache.batches(train, epoch, self.place.rank_batch, self.loader_gen)
            return
        if train:
            loader = self.loaders.loader(
                self.split.train, self.augment, True, self.loader_gen, epoch, weights=self.train_weights
            )
        else:
            loader = self.loaders.loader(shard(self.split.val, self.dist))
        yield from self.on_device(loader)

    def on_device(self, loader):
        for images, target in loader:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield [images], target.to(self.device, non_blocking=True)

    def forward(self, module, inputs, train: bool = True):
        """Under autocast when --amp picked a dtype: training steps always, evaluation on CUDA only (on the CPU,
        bf16 speeds up training; val figures stay float32, as `zoo evaluate` and the exported model compute)."""
        enabled = self.amp_dtype is not None and (train or self.device.type == "cuda")
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled):
            return split_outputs(module(*inputs))

    def close(self) -> None:
        """Release what the set-up holds: the cache, DDP, the process group, the run folder's lock."""
        self.cache.drop()
        self.ddp.release()
        self.dist.close()
        if self.lock:
            self.lock.release()


def _place(cfg: TrainConfig) -> Placement:
    dist = Dist.from_env()  # set by torchrun; world 1 otherwise
    seed_everything(cfg.seed, cfg.deterministic)
    device = pick_device(cfg.device)
    cfg.check_distributed(dist.world, device.type)
    if dist.enabled:
        if device.type == "cuda":
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        dist.init(device.type, cfg.dist_timeout)
    # --batch-size is global; the default is a per-device batch, so it grows with the number of processes
    batch_size = cfg.batch_size or (CPU_BATCH if device.type == "cpu" else GPU_BATCH) * dist.world
    return Placement(dist, device, batch_size, batch_size // dist.world)


def _scan(cfg: TrainConfig, spec: Backbone) -> Data:
    pre = spec.preprocess_for(choose_weights(spec, cfg.weights).tag)
    options = manifest_options(cfg)
    size = decode_size(pre)

    def scan():
        decoded: dict = {}
        t = time.perf_counter()
        split = load(cfg.data, cfg.labels, options, cfg.val_fraction, cfg.seed, size, decoded, memo=cfg.cache == "auto")
        return split, decoded, time.perf_counter() - t

    # inside zoo tune's `sharing()`, every trial on the same data and split reuses the first one's scan
    key = ("scan", cfg.data, cfg.labels, options, cfg.val_fraction, cfg.seed, size)
    (split, decoded, seconds), _ = shared(key, scan)
    if cfg.exclude_from:  # a copy: the scan may be shared with other trials
        split = exclude_listed(split, Path(cfg.exclude_from).expanduser())
    check_leaks(split, cfg.data, cfg.strict_data)
    task = Task(split.multi_label, len(split.classes))
    chosen = balance.choose(cfg.balance, list(split.counts("train").values()), len(split.train), task.multi_label)
    return Data(split, decoded, seconds, task, chosen, balance.select_metric(cfg.select_by, chosen))


def _decode_what_is_needed(setup: RunSetup) -> None:
    """The scan trusted its memo and decoded no unchanged file; decode them now (several at a time) unless the whole
    run trains on activations an earlier run kept, which need no pixels (the few a plot shows are read then)."""
    cfg, split = setup.cfg, setup.split
    boundaries = {setup.choice.plan.frozen_at(epoch) for epoch in range(cfg.epochs)}
    if len(boundaries) == 1 and setup.cache.stored(next(iter(boundaries))) and cfg.lr != "auto":
        return
    paths = [s.path for which in ("train", "val", "test") for s in split.samples(which)]
    with phase("scan"):
        added = decode_into(setup.data.decoded, paths, setup.loaders.short_side)
    if added:
        log.info("decoded %d image(s) the scan's memo vouched for", added)


def _choose(cfg: TrainConfig, spec: Backbone, data: Data, resume: dict[str, Any] | None) -> Choice:
    """The policy, parsed once; the model, built once (also for `auto`, which measures it first)."""
    advice, model = None, None
    if resume:
        policy = resumed_policy(resume)
    elif cfg.policy == "auto":
        from zoo.training.advise import measure, require_pretrained

        require_pretrained(spec, choose_weights(spec, cfg.weights))
        model, weights = built_model(spec, len(data.classes), cfg.weights)
        pre = spec.preprocess_for(weights.tag)
        advice = measure(model, spec, data.split, data.decoded, pre, seed=cfg.seed)
        for line in advice.evidence:
            log.info("auto: %s", line)
        policy = advice.policy
    else:
        policy = parse_policy(cfg.policy)
    if model is None:
        model, weights = built_model(spec, len(data.classes), cfg.weights if policy.pretrained else "none")
    pre = spec.preprocess_for(weights.tag)
    if policy.cut:
        from zoo.model.cut import cut_model

        model, spec = cut_model(model, spec, policy.cut, len(data.classes))
    groups = GroupMap(model, spec)
    return Choice(spec, policy, advice, weights, pre, model, groups, policy.plan(spec.group_names))


def _loaders(cfg: TrainConfig, place: Placement, data: Data, choice: Choice, augment: str, resume) -> Loaders:
    workers = default_workers(place.device.type) if cfg.workers is None else cfg.workers
    full = choice.plan.frozen == 0 and not predates_train_size(resume)  # fine-tuning every group from epoch 1
    size = train_size(choice.pre, choice.spec.min_input_size, full, augment, cfg.train_size)
    return Loaders(
        choice.pre, data.decoded, decode_size(choice.pre), place.rank_batch, workers, place.device.type == "cuda",
        place.dist.world, place.dist.rank, cfg.seed, data.task.target_fn(), size,
    )  # fmt: skip


def _optimizer(cfg: TrainConfig, choice: Choice, lr: float | None) -> Optimizer:
    decay = weight_decay(cfg.weight_decay, cfg.optimizer)
    return Optimizer(cfg.optimizer, choice.groups, choice.plan, lr, decay, cfg.momentum)


def _cache(setup: RunSetup) -> BoundaryCache:
    cfg, dist, data = setup.cfg, setup.dist, setup.data
    sampler = data.balance.mode == "sampler"
    # what the activations depend on besides the boundary: the same key inside `sharing()` means the same tensors
    share_key = (setup.choice.spec.name, setup.choice.weights.label, cfg.data, cfg.labels, manifest_options(cfg),
                 cfg.exclude_from, cfg.val_fraction, cfg.seed, cfg.cache_engine, cfg.cache_augmented, setup.augment,
                 setup.channels_last, str(setup.device), dist.rank, dist.world)  # fmt: skip
    return BoundaryCache(
        setup.model, setup.choice.spec, setup.choice.groups, setup.device, setup.loaders, data.split.train,
        shard(data.split.val, dist), mode="off" if setup.mixer else cfg.cache, engine=cfg.cache_engine,
        augmented_copies=cfg.cache_augmented, augment=setup.augment, train_bn=cfg.train_bn,
        channels_last=setup.channels_last, seed=cfg.seed,
        disk_dir=setup.run_dir / "cache" / (f"rank{dist.rank}" if dist.enabled else ""),
        progress=lambda phase, done, total: setup.report.progress(phase, done, total),
        sample_weights=(lambda labels: data.task.sample_weights(labels, data.balance)) if sampler else None,
        share_key=share_key, stores=stores_for(setup),
    )  # fmt: skip
