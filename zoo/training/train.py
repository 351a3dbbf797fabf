"""The fine-tuner: the run's configuration and its training loop.

`finetune()` builds the model from its spec, loads weights, replaces the head,
resolves the freeze policy into a per-run plan, trains, and writes a run folder
(`zoo.training.runs`). The loop reports what happens as events (`zoo.catalogue.events`): the CLI
renders them; a library caller gets nothing printed unless it passes a callback.

When the frozen prefix is fixed and the train images are not augmented (or
`cache_augmented` copies are asked for), the prefix runs once and the rest
trains on its activations (`zoo.training.cache`): the same result, many times faster.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from zoo.catalogue import events
from zoo.catalogue.policies import resolve_policy
from zoo.catalogue.registry import get_registry
from zoo.core.errors import CheckpointError, Interrupted, ResumeError, Terminated, TrainingDiverged
from zoo.core.interrupts import deferred_signals, restore_sigterm, sigterm_raises
from zoo.data import balance
from zoo.data.images import decode_size
from zoo.data.split import DataSplit, load, manifest_options
from zoo.model.build import GroupMap, create_model, resolve_weights, split_outputs
from zoo.model.checkpoint import last_checkpoint, read_checkpoint, resumed_policy, write_checkpoint
from zoo.model.freeze import apply_trainable
from zoo.training import record
from zoo.training.cache import BoundaryCache
from zoo.training.config import CPU_BATCH, GPU_BATCH, RESUMABLE, TrainConfig
from zoo.training.device import amp_dtype, pick_device, seed_everything
from zoo.training.dist import DDPWrapper, Dist, shard, unshard
from zoo.training.ema import make_ema
from zoo.training.loaders import Loaders, default_workers, predates_train_size, train_size
from zoo.training.mixing import make_mixer
from zoo.training.optim import Optimizer, Schedule, base_lr, step_groups, weight_decay
from zoo.training.record import FinetuneResult
from zoo.training.runs import (
    RunLock,
    discard_if_unstarted,
    new_run_dir,
    tensorboard_writer,
    write_config,
    write_metrics,
    write_summary,
)
from zoo.training.tasks import Task

log = logging.getLogger(__name__)


class Trainer:
    """One run: set up once in `__init__` (nothing is written until it all checks out), trained in `run()`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        callback: events.Callback | None = None,
        resume: dict[str, Any] | None = None,
        run_dir: Path | None = None,
    ):
        cfg.check()
        self.cfg = cfg
        self.dist = Dist.from_env()  # set by torchrun; world 1 otherwise
        self.report = events.Reporter(callback if self.dist.is_main else None, plugins=self.dist.is_main)
        seed_everything(cfg.seed, cfg.deterministic)
        self.device = pick_device(cfg.device)
        cfg.check_distributed(self.dist.world, self.device.type)
        if self.dist.enabled:
            if self.device.type == "cuda":
                self.device = torch.device("cuda", self.dist.local_rank)
                torch.cuda.set_device(self.device)
            self.dist.init(self.device.type, cfg.dist_timeout)
        self.batch_size = cfg.batch_size or (CPU_BATCH if self.device.type == "cpu" else GPU_BATCH) * self.dist.world
        self.rank_batch = self.batch_size // self.dist.world
        self.spec = get_registry().get(cfg.backbone)
        # the data, scanned once; decoded images stay in memory
        pre = self.spec.preprocess_for(resolve_weights(self.spec, cfg.weights).tag)
        self.decoded: dict = {}
        t = time.perf_counter()
        self.split: DataSplit = load(
            cfg.data, cfg.labels, manifest_options(cfg), cfg.val_fraction, cfg.seed, decode_size(pre), self.decoded
        )
        self.scan_seconds = time.perf_counter() - t
        self.classes = self.split.classes
        if resume and resume["classes"] != self.classes:
            raise CheckpointError(f"--resume: the data's classes {self.classes} are not the run's {resume['classes']}")
        self.task = Task(self.split.multi_label, len(self.classes))
        self.balance = balance.choose(
            cfg.balance, list(self.split.counts("train").values()), len(self.split.train), self.task.multi_label
        )
        self.select_by = balance.select_metric(cfg.select_by, self.balance)
        # the policy, resolved once; the model, built once (also for `auto`, which measures it first)
        self.advice = None
        model = None
        if resume:
            self.policy = resumed_policy(resume)
        elif cfg.policy == "auto":
            from zoo.training.advise import measure, require_pretrained

            require_pretrained(self.spec, resolve_weights(self.spec, cfg.weights))
            model, self.weights = self._build(cfg.weights)
            self.advice = measure(model, self.spec, self.split, self.decoded, pre, seed=cfg.seed)
            for line in self.advice.evidence:
                log.info("auto: %s", line)
            self.policy = resolve_policy(self.advice.policy)
        else:
            self.policy = resolve_policy(cfg.policy)
        if model is None:
            model, self.weights = self._build(cfg.weights if self.policy.pretrained else "none")
        self.pre = self.spec.preprocess_for(self.weights.tag)
        if self.policy.cut:
            from zoo.model.cut import cut_model

            model, self.spec = cut_model(model, self.spec, self.policy.cut, len(self.classes))
        self.groups = GroupMap(model, self.spec)
        self.plan = self.policy.resolve(self.spec.group_names)
        # measured here: channels_last trains lite0 1.75x and resnet18 1.4x faster on the CPU, as on CUDA
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type != "mps"
        if cfg.sync_bn and self.dist.enabled:  # (on CUDA: check_distributed)
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.ema = make_ema(self.model, cfg.ema)
        self.mixer = make_mixer(cfg.mixup, cfg.cutmix, len(self.classes), self.task.multi_label)
        self.augment = cfg.augment
        if self.augment == "auto":
            cacheable = self.policy.fixed_prefix and self.plan.frozen and not cfg.cache_augmented and not self.mixer
            self.augment = "none" if cacheable else "light"
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        self.criterion = self.task.criterion(cfg.label_smoothing, self.balance).to(self.device)
        self.train_weights = self.task.sample_weights(
            torch.from_numpy(self.task.labels_array(self.split.train)), self.balance
        )  # `--balance sampler`: each train image's draw weight (None otherwise)
        self.loader_gen = torch.Generator().manual_seed(cfg.seed)
        workers = default_workers(self.device.type) if cfg.workers is None else cfg.workers
        self.loaders = Loaders(
            self.pre, self.decoded, decode_size(self.pre), self.rank_batch, workers,
            self.device.type == "cuda", self.dist.world, self.dist.rank, cfg.seed, self.task.target_fn(),
            train_size(self.pre, self.spec.min_input_size, self.plan.frozen == 0 and not predates_train_size(resume),
                       self.augment, cfg.train_size),
        )  # fmt: skip
        # --lr auto: the range test runs in run(), before the first epoch; a resumed run keeps what it found
        self.lr_found: dict[str, Any] | None = resume.get("lr_find") if resume else None
        lr = self.lr_found["suggestion"] if self.lr_found else (None if cfg.lr == "auto" else cfg.lr)
        self.base_lr = base_lr(lr, cfg.optimizer, self.plan.head_only)
        self.optimizer = self._new_optimizer()
        batches = math.ceil(math.ceil(len(self.split.train) / self.dist.world) / self.rank_batch)
        self.steps_per_epoch = math.ceil(batches / cfg.accum_steps)  # optimizer steps
        self.schedule = Schedule(
            cfg.schedule, cfg.epochs, self.steps_per_epoch, cfg.warmup_epochs, cfg.step_size, cfg.gamma
        )
        # auxiliary heads get no gradient over cached activations, nor in every forward
        self.ddp = DDPWrapper(self.dist, self.device, find_unused=bool(self.spec.aux_heads))
        self.step = 0
        self.test_report: dict[str, Any] | None = None
        self.start_epoch = 0
        self.history: list[dict[str, Any]] = []
        self.best_acc, self.best_epoch = -1.0, -1  # val accuracy at the best epoch, picked by `select_by`
        self.best_value = -1.0
        self.best_report: dict[str, Any] = {}  # the best epoch's val metrics, per class, predictions, thresholds
        self.best_state: dict[str, torch.Tensor] | None = None  # kept when a test split will need the best weights
        # everything checked out: now the run folder (rank 0 picks it; every rank uses the same one)
        if run_dir is None:
            run_dir = Path(self.dist.broadcast(str(self._new_run_dir()) if self.dist.is_main else None))
        self.run_dir = run_dir
        self.report.run_dir = str(run_dir)
        self.lock = RunLock(run_dir).acquire() if self.dist.is_main else None
        cache_dir = run_dir / "cache" / (f"rank{self.dist.rank}" if self.dist.enabled else "")
        self.cache = BoundaryCache(
            self.model, self.spec, self.groups, self.device, self.loaders, self.split.train,
            shard(self.split.val, self.dist), mode="off" if self.mixer else cfg.cache, engine=cfg.cache_engine,
            augmented_copies=cfg.cache_augmented, augment=self.augment, train_bn=cfg.train_bn,
            channels_last=self.channels_last, seed=cfg.seed, disk_dir=cache_dir,
            progress=lambda phase, done, total: self.report.progress(phase, done, total),
            sample_weights=(lambda labels: self.task.sample_weights(labels, self.balance))
            if self.balance.mode == "sampler" else None,
        )  # fmt: skip
        self.writer = None
        if self.dist.enabled:  # the model is identical on every rank (DDP broadcasts rank 0's); augmentation is not
            torch.manual_seed(cfg.seed + self.dist.rank)
        if resume:
            record.restore(self, resume)

    def _build(self, weights: str):
        choice = resolve_weights(self.spec, weights)
        model = create_model(self.spec, num_classes=len(self.classes), weights=choice, check=False)
        return model, choice

    def _new_optimizer(self) -> Optimizer:
        cfg = self.cfg
        decay = weight_decay(cfg.weight_decay, cfg.optimizer)
        return Optimizer(cfg.optimizer, self.groups, self.plan, self.base_lr, decay, cfg.momentum)

    def _new_run_dir(self) -> Path:
        return new_run_dir(self.cfg.out, self.cfg.name, self.spec.name, self.cfg.policy)

    def evaluated_state(self) -> dict[str, torch.Tensor]:
        """The weights that are evaluated, kept as best and exported: the average with --ema, else the model's."""
        if self.ema:
            return self.ema.state_dict()
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    # --- one epoch --------------------------------------------------------------------------------------------
    def _batches(self, train: bool, epoch: int):
        if self.cache.active:
            yield from self.cache.batches(train, epoch, self.rank_batch, self.loader_gen)
            return
        if train:
            loader = self.loaders.loader(
                self.split.train, self.augment, True, self.loader_gen, epoch, weights=self.train_weights
            )
        else:
            loader = self.loaders.loader(shard(self.split.val, self.dist))
        yield from self._on_device(loader)

    def _on_device(self, loader):
        for images, target in loader:
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            yield [images], target.to(self.device, non_blocking=True)

    def _forward(self, module, inputs, train: bool = True):
        """Under autocast when --amp picked a dtype: training steps always, evaluation on CUDA only (on the CPU,
        bf16 speeds up training; val figures stay float32, as `zoo evaluate` and the exported model compute)."""
        enabled = self.amp_dtype is not None and (train or self.device.type == "cuda")
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=enabled):
            return split_outputs(module(*inputs))

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        apply_trainable(self.model, self.groups, self.plan.trainable(epoch), self.cfg.train_bn)
        key = (self.cache.k if self.cache.active else None, tuple(self.optimizer.names))
        module = self.ddp.module(self.model, self.cache.suffix, key)
        total_loss = correct = seen = 0
        start = time.perf_counter()
        for group in step_groups(self._batches(True, epoch), self.cfg.accum_steps):
            # one optimizer step per group of --accum-steps batches; each batch's loss weighs its share of the
            # group's images, so the gradient is the one of a single batch that holds them all
            self.optimizer.set_lr(self.schedule.factor(self.step))
            self.optimizer.torch.zero_grad(set_to_none=True)
            group_size = sum(len(target) for _, target in group)
            for i, (inputs, target) in enumerate(group):
                if self.mixer:
                    images, target = self.mixer(inputs[0], target)
                    inputs = [images, *inputs[1:]]
                last = i == len(group) - 1
                sync = contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
                with sync:  # DDP all-reduces the gradients once per step, with the group's last batch
                    logits, aux = self._forward(module, inputs)
                    loss = self.criterion(logits.float(), target)
                    for extra in aux:  # Inception/GoogLeNet auxiliary heads, weighted as in the papers' recipes
                        loss = loss + 0.4 * self.criterion(extra.float(), target)
                    if not self.dist.enabled and not torch.isfinite(loss):
                        self._diverged(epoch, loss.item())
                    part = loss * (len(target) / group_size) if len(group) > 1 else loss
                    (self.scaler.scale(part) if self.scaler else part).backward()
                n = len(target)
                total_loss += loss.item() * n
                correct += self.task.correct(logits.detach(), target)
                seen += n
                self.report.progress(f"epoch {epoch + 1}/{self.cfg.epochs}", seen,
                                     len(self.split.train) // self.dist.world,
                                     seen / max(1e-9, time.perf_counter() - start))  # fmt: skip
            self.optimizer.step(self.scaler, self.cfg.clip_grad)
            self.step += 1
            if self.ema:
                self.ema.update(self.model)
        seconds = time.perf_counter() - start
        total_loss, correct, seen = self.dist.all_sum(total_loss, correct, seen)  # every rank logs the same
        if not math.isfinite(total_loss):
            self._diverged(epoch, total_loss)
        return {
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "train_img_s": seen / seconds,
            "train_seconds": seconds,
        }

    def _diverged(self, epoch: int, loss: float) -> None:
        kept = f"{self.run_dir} keeps epoch {len(self.history)}" if self.history else "no epoch was complete"
        raise TrainingDiverged(
            f"the training loss became {loss} in epoch {epoch + 1}, so the run stopped ({kept}); "
            "start again with a lower --lr (or a milder policy LR factor, or --amp off)"
        )

    @torch.no_grad()
    def _predict(self, module, batches, total: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, probabilities, targets) over batches of this rank's share, gathered from every rank."""
        loss_sum, probs, targets = 0.0, [], []
        for inputs, target in batches:
            logits = self._forward(module, inputs, train=False)[0].float()
            loss_sum += self.task.eval_loss(logits, target).item() * len(target)
            probs.append(self.task.probabilities(logits).cpu().numpy())
            targets.append(target.cpu().numpy())
        probs_, targets_ = np.concatenate(probs), np.concatenate(targets)
        if self.dist.enabled:  # each image was on exactly one rank: back in order, on every rank
            (loss_sum,) = self.dist.all_sum(loss_sum)
            probs_ = np.stack(unshard(self.dist.gather(list(probs_)), total))
            targets_ = np.stack(unshard(self.dist.gather(list(targets_)), total))
        return loss_sum / total, probs_, targets_

    def _evaluate(self) -> tuple[dict[str, float], dict[str, Any]]:
        """The epoch's val metrics (multi-label: at thresholds tuned on val now), and the full report."""
        self.model.eval()
        module = self.cache.suffix if self.cache.active else self.model
        loss, probs, targets = self._predict(module, self._batches(False, 0), len(self.split.val))
        report = self.task.report(targets, probs, self.classes)
        metrics = {"val_loss": float(loss), **{f"val_{k}": float(report[k]) for k in record.METRICS if k in report}}
        return {**metrics, "val_images": len(self.split.val)}, report

    def _test(self) -> dict[str, Any] | None:
        """The best checkpoint's figures on the test split, once, after training (they never pick anything)."""
        if not self.split.test:
            return None
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.model.eval()
        batches = self._on_device(self.loaders.loader(shard(self.split.test, self.dist)))
        loss, probs, targets = self._predict(self.model, batches, len(self.split.test))
        report = self.task.report(targets, probs, self.classes, self.best_report.get("thresholds"))
        return record.stored(
            {"images": len(self.split.test), "loss": loss, **{k: v for k, v in report.items() if k != "preds"}}
        )

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        cfg = self.cfg
        started = time.perf_counter()
        main = self.dist.is_main  # only rank 0 writes files
        if cfg.lr == "auto" and self.lr_found is None:
            from zoo.training import lr_find

            self.lr_found = lr_find.find_and_record(self)
            self.base_lr = self.lr_found["suggestion"]
            self.optimizer = self._new_optimizer()
        if main:
            write_config(self.run_dir, record.saved_config(cfg))
        self.report.emit(events.STARTED, **record.started(self))
        status, reason = "completed", None
        epoch = self.start_epoch
        previous = sigterm_raises()
        try:
            for epoch in range(self.start_epoch, cfg.epochs):
                self.optimizer.add_trainable(epoch)
                self.cache.ensure(self.plan.frozen_at(epoch))
                row = {"epoch": epoch + 1, **self._train_epoch(epoch)}
                with self.ema.applied(self.model) if self.ema else contextlib.nullcontext():
                    metrics, report = self._evaluate()  # --ema: the averaged weights are the ones evaluated
                row.update(metrics)
                row["lr"] = self.optimizer.lr_now
                row["cached"] = self.cache.active
                value = metrics[f"val_{self.select_by}"]
                improved = value > self.best_value
                with deferred_signals() as received:  # the epoch counts once it is saved: all of it or none
                    self.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
                    if improved:
                        self.best_acc, self.best_epoch, self.best_value = metrics["val_acc"], epoch + 1, value
                        self.best_report = record.stored(report)
                        if self.split.test:
                            self.best_state = self.evaluated_state()
                    if main:
                        self._save(epoch + 1, improved, row)
                if received:
                    raise Terminated() if received[0] == "SIGTERM" else KeyboardInterrupt()
                self.report.emit(events.EPOCH_ENDED, row=self.history[-1], improved=improved, epochs=cfg.epochs,
                                 select_by=self.select_by)  # fmt: skip
                if improved:
                    self.report.emit(
                        events.BEST_IMPROVED, epoch=epoch + 1, metric=f"val_{self.select_by}", value=self.best_value
                    )
                if cfg.patience is not None and epoch + 1 - self.best_epoch >= cfg.patience:
                    self.report.emit(
                        events.EARLY_STOPPED, epoch=epoch + 1, patience=cfg.patience, metric=f"val_{self.select_by}"
                    )
                    status = "early-stopped"
                    break
            self.test_report = self._test()
        except (KeyboardInterrupt, Terminated) as exc:
            name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            raise self._stopped("interrupted", started, epoch, Interrupted(record.kept(self, epoch), name)) from None
        except TrainingDiverged as exc:
            raise self._stopped("diverged", started, epoch, exc) from None
        finally:
            self.cache.drop()
            restore_sigterm(previous)
        with deferred_signals() as received:
            summary = self._finish(status, started, reason)
        self.ddp.release()
        self.dist.close()
        if self.lock:
            self.lock.release()
        if received:
            raise Interrupted(
                f"{received[0]} while the run was writing its last files; they were completed first: {self.run_dir}",
                received[0],
            )
        return FinetuneResult(
            self.run_dir, self.best_acc, self.best_epoch, len(self.history), self.classes, self.history, summary
        )

    def _stopped(self, status: str, started: float, epoch: int, error: Exception) -> Exception:
        """Write what is complete (or nothing, when no epoch completed) and return the error to raise."""
        with deferred_signals():
            if self.history:
                self._finish(status, started, str(error))
            elif self.dist.is_main:
                discard_if_unstarted(self.run_dir)
            self.report.emit(events.INTERRUPTED, reason=str(error), status=status, epochs_run=len(self.history))
        if self.lock:
            self.lock.release()
        return error

    def _save(self, epoch: int, improved: bool, row: dict) -> None:
        ckpt = record.checkpoint(self, epoch)
        write_checkpoint(self.run_dir / "last.pt", ckpt)
        if improved:
            write_checkpoint(self.run_dir / "best.pt", ckpt)
        write_metrics(self.run_dir, self.history)
        if self.writer is None:
            self.writer = tensorboard_writer(self.run_dir)
        if self.writer:
            for key, value in row.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, epoch)

    def _finish(self, status: str, started: float, reason: str | None = None) -> dict[str, Any]:
        if self.writer:
            self.writer.close()
        summary = record.summary(self, status, time.perf_counter() - started, reason)
        if not self.dist.is_main:
            return summary
        if self.history and self.best_report.get("preds") is not None:
            from zoo.training import plots

            try:
                plots.write_all(self.run_dir, self.history, self.classes, self.split.val, self.best_report,
                                self.decoded, self.select_by)  # fmt: skip
            except Exception as exc:  # a plot must never lose a finished run
                log.warning("could not draw plots: %s: %s", type(exc).__name__, exc)
        write_summary(self.run_dir, summary)  # last: a summary that says completed means every file is there
        if status in ("completed", "early-stopped"):
            self.report.emit(events.FINISHED, summary=summary)
        return summary


def finetune(backbone: str, data: str | Path, *, callback: events.Callback | None = None, **options) -> FinetuneResult:
    """Fine-tune `backbone` on an image folder; the Python twin of `zoo finetune`.

    `callback(event)` receives the run's events (`zoo.catalogue.events`); nothing is printed.

    Example:
        >>> result = zoo.finetune("efficientnet_lite0", "data/", policy="feature-extract", epochs=5)
        >>> result.best_val_acc, result.run_dir
    """
    cfg = TrainConfig(backbone=backbone, data=str(data), **options)
    return train(cfg, callback=callback)


def train(cfg: TrainConfig, callback: events.Callback | None = None, run_dir: Path | None = None) -> FinetuneResult:
    """Run one configured fine-tuning (the entry point `zoo finetune` calls)."""
    return Trainer(cfg, callback=callback, run_dir=run_dir).run()


def resume_run(run_dir: str | Path, *, callback: events.Callback | None = None, **overrides) -> FinetuneResult:
    """Continue a run from its last complete epoch: weights, optimizer, schedule, RNG, the policy it started with.

    `overrides` may change what is safe to change (epochs, patience, workers, device, cache_engine,
    dist_timeout); any other option is refused (ResumeError), never silently dropped.
    """
    run_dir = Path(run_dir).expanduser()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    refused = sorted(set(overrides) - RESUMABLE)
    if refused:
        flags = ", ".join("--" + k.replace("_", "-") for k in refused)
        raise ResumeError(
            f"--resume {run_dir}: {flags} cannot change in a resumed run (it keeps its own settings); "
            f"what can: {', '.join('--' + k.replace('_', '-') for k in sorted(RESUMABLE))}"
        )
    ckpt = read_checkpoint(last_checkpoint(run_dir))
    cfg = TrainConfig.from_saved({**ckpt["config"], **overrides})
    if ckpt["epoch"] >= cfg.epochs:
        raise ResumeError(
            f"--resume {run_dir}: the run has already trained {ckpt['epoch']} epoch(s), "
            f"{'all it was asked for' if 'epochs' not in overrides else f'more than --epochs {cfg.epochs}'}; "
            f"pass --epochs N with N > {ckpt['epoch']} to train longer"
        )
    return Trainer(cfg, callback=callback, resume=ckpt, run_dir=run_dir).run()
