"""The training loop of a fine-tuning run: epochs over a `RunSetup`, its progress kept in a `RunState`.

`finetune()` configures a run, `Trainer` sets it up (`zoo.training.setup`: nothing is written until everything
checks out) and trains it epoch by epoch: train, evaluate on val, keep the best checkpoint, stop early when
asked, then evaluate the best weights on the test split once. What happens is reported as events
(`zoo.catalogue.events`): the CLI renders them; a library caller gets nothing printed unless it passes a callback.
The files of the run folder (`zoo.training.runs`) are written as epochs complete, summary.json last.
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

from zoo.catalogue import events
from zoo.core.errors import Interrupted, ResumeError, Terminated, TrainingDiverged
from zoo.core.interrupts import deferred_signals, restore_sigterm, sigterm_raises
from zoo.core.timing import phase
from zoo.model.checkpoint import copy_checkpoint, last_checkpoint, read_checkpoint, write_checkpoint
from zoo.model.freeze import apply_trainable
from zoo.training import record
from zoo.training.config import RESUMABLE, TrainConfig
from zoo.training.dist import shard, unshard
from zoo.training.optim import step_groups
from zoo.training.record import FinetuneResult
from zoo.training.runs import discard_if_unstarted, tensorboard_writer, write_config, write_metrics, write_summary
from zoo.training.setup import RunSetup
from zoo.training.state import RunState

log = logging.getLogger(__name__)


class Trainer:
    """One run: set up once (`RunSetup.build`), trained in `run()`; its progress is `self.state`."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        callback: events.Callback | None = None,
        resume: dict[str, Any] | None = None,
        run_dir: Path | None = None,
    ):
        state = RunState.from_checkpoint(resume) if resume else RunState()
        self.setup = RunSetup.build(cfg, callback, resume, run_dir, lr_found=state.lr_found)
        if resume:
            self.setup.restore(resume)
            if self.setup.split.test and state.best_epoch > 0:
                state.best_state = read_checkpoint(self.setup.run_dir / "best.pt")["model"]
        self.state = state
        self.writer = None

    # --- one epoch --------------------------------------------------------------------------------------------
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        setup, state, cfg = self.setup, self.state, self.setup.cfg
        model, optimizer, cache = setup.model, setup.optimizer, setup.cache
        model.train()
        apply_trainable(model, setup.choice.groups, setup.choice.plan.trainable(epoch), cfg.train_bn)
        key = (cache.k if cache.active else None, tuple(optimizer.names))
        module = setup.ddp.module(model, cache.suffix, key)
        total_loss = correct = seen = 0
        start = time.perf_counter()
        for group in step_groups(setup.batches(True, epoch), cfg.accum_steps):
            # one optimizer step per group of --accum-steps batches; each batch's loss weighs its share of the
            # group's images, so the gradient is the one of a single batch that holds them all
            optimizer.set_lr(setup.schedule.factor(state.step))
            optimizer.torch.zero_grad(set_to_none=True)
            group_size = sum(len(target) for _, target in group)
            for i, (inputs, target) in enumerate(group):
                if setup.mixer:
                    images, target = setup.mixer(inputs[0], target)
                    inputs = [images, *inputs[1:]]
                last = i == len(group) - 1
                sync = contextlib.nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()
                with sync:  # DDP all-reduces the gradients once per step, with the group's last batch
                    logits, aux = setup.forward(module, inputs)
                    loss = setup.criterion(logits.float(), target)
                    for extra in aux:  # Inception/GoogLeNet auxiliary heads, weighted as in the papers' recipes
                        loss = loss + 0.4 * setup.criterion(extra.float(), target)
                    if not setup.dist.enabled and not torch.isfinite(loss):
                        self._diverged(epoch, loss.item())
                    part = loss * (len(target) / group_size) if len(group) > 1 else loss
                    (setup.scaler.scale(part) if setup.scaler else part).backward()
                n = len(target)
                total_loss += loss.item() * n
                correct += setup.data.task.correct(logits.detach(), target)
                seen += n
                rate = seen / max(1e-9, time.perf_counter() - start)
                setup.report.progress(
                    f"epoch {epoch + 1}/{cfg.epochs}", seen, len(setup.split.train) // setup.dist.world, rate
                )
            optimizer.step(setup.scaler, cfg.clip_grad)
            state.step += 1
            if setup.ema:
                setup.ema.update(model)
        seconds = time.perf_counter() - start
        total_loss, correct, seen = setup.dist.all_sum(total_loss, correct, seen)  # every rank logs the same
        if not math.isfinite(total_loss):
            self._diverged(epoch, total_loss)
        return {
            "train_loss": total_loss / seen,
            "train_acc": correct / seen,
            "train_img_s": seen / seconds,
            "train_seconds": seconds,
        }

    def _diverged(self, epoch: int, loss: float) -> None:
        history = self.state.history
        kept = f"{self.setup.run_dir} keeps epoch {len(history)}" if history else "no epoch was complete"
        raise TrainingDiverged(
            f"the training loss became {loss} in epoch {epoch + 1}, so the run stopped ({kept}); "
            "start again with a lower --lr (or a milder policy LR factor, or --amp off)"
        )

    @torch.no_grad()
    def _predict(self, module, batches, total: int) -> tuple[float, np.ndarray, np.ndarray]:
        """(mean loss, probabilities, targets) over batches of this rank's share, gathered from every rank."""
        setup, task = self.setup, self.setup.data.task
        loss_sum, probs, targets = 0.0, [], []
        for inputs, target in batches:
            logits = setup.forward(module, inputs, train=False)[0].float()
            loss_sum += task.eval_loss(logits, target).item() * len(target)
            probs.append(task.probabilities(logits).cpu().numpy())
            targets.append(target.cpu().numpy())
        probs_, targets_ = np.concatenate(probs), np.concatenate(targets)
        dist = setup.dist
        if dist.enabled:  # each image was on exactly one rank: back in order, on every rank
            (loss_sum,) = dist.all_sum(loss_sum)
            probs_ = np.stack(unshard(dist.gather(list(probs_)), total))
            targets_ = np.stack(unshard(dist.gather(list(targets_)), total))
        return loss_sum / total, probs_, targets_

    def _evaluate(self) -> tuple[dict[str, float], dict[str, Any], tuple[np.ndarray, np.ndarray]]:
        """The epoch's val metrics (multi-label: at thresholds tuned on val now), the full report, and the
        (targets, probabilities) of the val images (kept in the run folder when the epoch is the best)."""
        setup = self.setup
        setup.model.eval()
        module = setup.cache.suffix if setup.cache.active else setup.model
        loss, probs, targets = self._predict(module, setup.batches(False, 0), len(setup.split.val))
        report = setup.data.task.report(targets, probs, setup.classes)
        metrics = {"val_loss": float(loss), **{f"val_{k}": float(report[k]) for k in record.METRICS if k in report}}
        return {**metrics, "val_images": len(setup.split.val)}, report, (targets, probs)

    def _test(self) -> dict[str, Any] | None:
        """The best checkpoint's figures on the test split, once, after training (they never pick anything)."""
        setup, state = self.setup, self.state
        test = setup.split.test
        if not test:
            return None
        if state.best_state is not None:
            setup.model.load_state_dict(state.best_state)
        setup.model.eval()
        batches = setup.on_device(setup.loaders.loader(shard(test, setup.dist)))
        loss, probs, targets = self._predict(setup.model, batches, len(test))
        report = setup.data.task.report(targets, probs, setup.classes, state.best_report.get("thresholds"))
        if setup.dist.is_main:
            predicted = record.image_predictions(setup, test, targets, probs, state.best_report.get("thresholds"))
            predicted.write(setup.run_dir / record.predictions_file("test"))
        return record.stored({"images": len(test), "loss": loss, **{k: v for k, v in report.items() if k != "preds"}})

    # --- the loop -----------------------------------------------------------------------------------------------
    def run(self) -> FinetuneResult:
        setup, state, cfg = self.setup, self.state, self.setup.cfg
        started = time.perf_counter()
        if cfg.lr == "auto" and state.lr_found is None:
            from zoo.training import lr_find

            state.lr_found = lr_find.find_and_record(setup)
            setup.set_lr(state.lr_found["suggestion"])
        if setup.dist.is_main:
            with phase("files"):
                write_config(setup.run_dir, record.saved_config(cfg))
        setup.report.emit(events.STARTED, **record.started(setup, state))
        status, epoch = "completed", state.start_epoch
        previous = sigterm_raises()
        try:
            for epoch in range(state.start_epoch, cfg.epochs):
                if self._epoch(epoch):
                    status = "early-stopped"
                    break
            with phase("evaluate"):
                state.test_report = None if cfg.trial else self._test()
        except (KeyboardInterrupt, Terminated) as exc:
            name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
            stopped = Interrupted(record.kept(state, setup.run_dir, epoch), name)
            raise self._stopped("interrupted", started, stopped) from None
        except TrainingDiverged as exc:
            raise self._stopped("diverged", started, exc) from None
        except BaseException:  # a callback that stops the run (zoo tune prunes a trial), or a bug: let go of the folder
            setup.close()
            raise
        finally:
            setup.cache.drop()
            restore_sigterm(previous)
        with deferred_signals() as received:
            summary = self._finish(status, started)
        setup.close()
        if received:
            raise Interrupted(
                f"{received[0]} while the run was writing its last files; they were completed first: {setup.run_dir}",
                received[0],
            )
        return FinetuneResult(setup.run_dir, state.best_acc, state.best_epoch, len(state.history), setup.classes,
                              state.history, summary)  # fmt: skip

    def _epoch(self, epoch: int) -> bool:
        """Train and evaluate one epoch, save it, report it; True when --patience stops the run here."""
        setup, state, cfg = self.setup, self.state, self.setup.cfg
        select_by = setup.data.select_by
        setup.optimizer.add_trainable(epoch)
        with phase("cache"):  # holds "export": the prefix to onnxruntime
            setup.cache.ensure(setup.choice.plan.frozen_at(epoch))
        with phase("train"):
            row = {"epoch": epoch + 1, **self._train_epoch(epoch)}
        with phase("evaluate"), setup.ema.applied(setup.model) if setup.ema else contextlib.nullcontext():
            metrics, report, scores = self._evaluate()  # --ema: the averaged weights are the ones evaluated
        row.update(metrics)
        row["lr"] = setup.optimizer.lr_now
        row["cached"] = setup.cache.active
        value = metrics[f"val_{select_by}"]
        improved = value > state.best_value
        with deferred_signals() as received:  # the epoch counts once it is saved: all of it or none
            state.history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in row.items()})
            if improved:
                state.best_acc, state.best_epoch, state.best_value = metrics["val_acc"], epoch + 1, value
                state.best_report = record.stored(report)
                if setup.split.test and not cfg.trial:
                    state.best_state = setup.evaluated_state()
            if setup.dist.is_main:
                with phase("files"):
                    self._save(epoch + 1, improved, row, scores, report.get("thresholds"))
        if received:
            raise Terminated() if received[0] == "SIGTERM" else KeyboardInterrupt()
        setup.report.emit(events.EPOCH_ENDED, row=state.history[-1], improved=improved, epochs=cfg.epochs,
                          select_by=select_by)  # fmt: skip
        if improved:
            setup.report.emit(events.BEST_IMPROVED, epoch=epoch + 1, metric=f"val_{select_by}", value=state.best_value)
        if cfg.patience is not None and epoch + 1 - state.best_epoch >= cfg.patience:
            setup.report.emit(events.EARLY_STOPPED, epoch=epoch + 1, patience=cfg.patience, metric=f"val_{select_by}")
            return True
        return False

    def _stopped(self, status: str, started: float, error: Exception) -> Exception:
        """Write what is complete (or nothing, when no epoch completed) and return the error to raise."""
        setup, history = self.setup, self.state.history
        with deferred_signals():
            if history:
                self._finish(status, started, str(error))
            elif setup.dist.is_main:
                discard_if_unstarted(setup.run_dir)
            setup.report.emit(events.INTERRUPTED, reason=str(error), status=status, epochs_run=len(history))
        if setup.lock:
            setup.lock.release()
        return error

    def _save(self, epoch: int, improved: bool, row: dict, scores: tuple, thresholds: list | None) -> None:
        run_dir = self.setup.run_dir
        if self.setup.cfg.trial:  # a zoo tune trial keeps its metrics only
            write_metrics(run_dir, self.state.history)
            return
        ckpt = record.checkpoint(self.setup, self.state, epoch)
        write_checkpoint(run_dir / "last.pt", ckpt)
        if improved:
            copy_checkpoint(run_dir / "last.pt", run_dir / "best.pt")
            # each val image's prediction at the best epoch: the report's gallery, confusion matrix, calibration
            predicted = record.image_predictions(self.setup, self.setup.split.val, *scores, thresholds)
            predicted.write(run_dir / record.predictions_file("val"))
        write_metrics(run_dir, self.state.history)
        if self.writer is None:
            self.writer = tensorboard_writer(run_dir)
        if self.writer:
            for key, value in row.items():
                if isinstance(value, float):
                    self.writer.add_scalar(key, value, epoch)

    def _finish(self, status: str, started: float, reason: str | None = None) -> dict[str, Any]:
        setup, state = self.setup, self.state
        if self.writer:
            self.writer.close()
        summary = record.summary(setup, state, status, time.perf_counter() - started, reason)
        if not setup.dist.is_main:
            return summary
        if status in ("completed", "early-stopped"):  # the figures are final: the CLI prints its result line now
            setup.report.emit(events.TRAINED, summary=summary)
        plotted = None
        if state.history and state.best_report.get("preds") is not None and not setup.cfg.trial:
            from zoo.training import plots

            # drawn in a child process while this one writes the report (about 1 s less to wait here)
            plotted = plots.write_all_beside(setup.run_dir, state.history, setup.classes, setup.split.val,
                                             state.best_report, setup.data.decoded, setup.data.select_by)  # fmt: skip
        if setup.cfg.report and state.history and not setup.cfg.trial:
            with phase("report"), _threads(torch.get_num_threads() - 1 if plotted is not None else None):
                self._report(summary)  # (one core is the plots' while they are drawn)
        if plotted is not None:
            with phase("plots"):  # what is left of the drawing once the report is written
                plotted()
        with phase("files"):
            write_summary(setup.run_dir, summary)  # last: a summary that says completed means every file is there
        if status in ("completed", "early-stopped"):
            setup.report.emit(events.FINISHED, summary=summary)
        return summary

    def _report(self, summary: dict[str, Any]) -> None:
        """RUN/report.html (zoo.report), from the run folder and the summary about to be written."""
        from zoo.report import write_report

        try:
            written = write_report(self.setup.run_dir, summary=summary)
        except Exception as exc:  # a report must never lose a finished run; `zoo report RUN` can write it later
            log.warning("could not write report.html: %s: %s", type(exc).__name__, exc)
            return
        summary["report"] = written.path.name


@contextlib.contextmanager
def _threads(count: int | None):
    """torch's intra-op threads set to `count` (at least 1) inside, as they were after; None: unchanged."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(max(1, count))
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
