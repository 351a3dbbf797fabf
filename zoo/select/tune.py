"""`zoo tune`: hyperparameter search with Optuna, each trial a short `zoo finetune` run.

Optuna runs the search (its TPE sampler, its median or Hyperband pruner, its storages, so several processes or
machines can share one study); zoo only runs a trial and reports each epoch's val metric to it. Every trial of a
process runs inside `training.shared.sharing()`: the data is scanned once, and trials whose frozen prefix is the
same train on one activation cache, so the backbone's forward pass is paid once for the whole study, not once per
trial. A trial keeps only its metrics (`TrainConfig.trial`); at the end the best configuration is trained as an
ordinary run folder (checkpoints, pictures, the test split evaluated once), ready for `zoo export`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from zoo.core.errors import Interrupted, UsageError, ZooError
from zoo.select.space import Param, default_space, extremes, read_space

log = logging.getLogger(__name__)

PRUNERS = ("median", "hyperband", "none")
DEFAULT_TRIALS = 30


@dataclass
class StudyPlan:
    """Everything a worker needs to run trials of one study (picklable: `--workers` sends it to processes)."""

    backbone: str
    data: str
    fixed: dict[str, Any]  # the zoo finetune options every trial shares
    params: list[Param]
    metric: str  # the select_by metric each trial reports and the study maximises
    storage: str
    study: str
    folder: str
    pruner: str = "median"
    seed: int = 0
    max_epochs: int = 10
    joinable: bool = False  # --storage given: other zoo tune processes may run trials of this study too


@dataclass
class TuneResult:
    study: str
    storage: str
    folder: Path
    metric: str
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None  # number, value, params of the best trial
    importances: dict[str, float] = field(default_factory=dict)
    final: dict[str, Any] | None = None  # the best configuration's own run: run_dir, val, test
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "folder": str(self.folder)}


def plan_study(backbone: str, data: str, fixed: dict[str, Any], *, space: str | Path | None = None,
               metric: str = "auto", storage: str | None = None, study: str | None = None, out: str = "runs",
               pruner: str = "median", seed: int = 0, resume: bool = False) -> StudyPlan:  # fmt: skip
    """Check the options and the space, and pick the study's folder and storage; nothing runs yet."""
    from zoo.catalogue.policies import parse_policy
    from zoo.training.config import TrainConfig
    from zoo.training.runs import check_out_folder, run_name

    if pruner not in PRUNERS:
        raise UsageError(f"--pruner {pruner}: choose one of {', '.join(PRUNERS)}")
    base = TrainConfig(backbone=backbone, data=data, **fixed)
    base.check()
    head_only = parse_policy(base.policy).head_only
    params = read_space(space) if space else default_space(head_only)
    searched = {p.name for p in params}
    for values in extremes(params):
        where = f"--space {space}" if space else "the default space"
        try:
            TrainConfig(backbone=backbone, data=data, **{**fixed, **values}).check()
            if "policy" in values:
                parse_policy(values["policy"])
            if values.get("ema") is not None and not 0 < values["ema"] < 1:
                raise UsageError(f"--ema {values['ema']}: must be between 0 and 1")
        except ZooError as exc:
            raise UsageError(f"{where}: {exc}") from None
    name = study or run_name(backbone, Path(data).stem or "data")
    folder = check_out_folder(out) / run_name("tune", name)
    joinable = storage is not None
    if storage is None:  # the study's own file; another process joins it by naming it with --storage
        storage = f"sqlite:///{(folder / 'study.db').resolve()}"
        if not resume and (folder / "study.db").exists():
            raise UsageError(
                f"{folder}: a study '{name}' is already there; --resume continues it, --study NAME starts another"
            )
    epochs = max([p.high for p in params if p.name == "epochs" and p.high] + [base.epochs])
    fixed = {k: v for k, v in fixed.items() if k not in searched and k not in ("out", "name", "select_by")}
    return StudyPlan(
        backbone, data, fixed, params, metric, storage, name, str(folder), pruner, seed, int(epochs), joinable
    )


def _sampler_and_pruner(plan: StudyPlan, worker: int):
    import optuna

    seed = plan.seed + 1000 * worker  # each worker its own stream, the same from run to run
    if plan.joinable:  # processes that may be started apart (other machines): streams that differ between them
        seed = zlib.crc32(f"{plan.seed}:{socket.gethostname()}:{os.getpid()}:{worker}".encode())
    sampler = optuna.samplers.TPESampler(seed=seed)
    if plan.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    elif plan.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=plan.max_epochs, reduction_factor=3)
    else:
        pruner = optuna.pruners.NopPruner()
    return sampler, pruner


_SCHEMA_RETRIES = 5


@contextlib.contextmanager
def _creation_lock(storage: str):
    """An exclusive flock beside a local sqlite file while optuna opens it: processes on this machine create
    its schema one after another, not at once (servers and other machines are left to open_study's retry)."""
    prefix = "sqlite:///"
    if not storage.startswith(prefix) or storage == prefix + ":memory:":
        yield
        return
    import fcntl

    lock = Path(storage[len(prefix) :] + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:  # a read-only folder: optuna's own error about the database says more
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_study(plan: StudyPlan, create: bool, worker: int = 0):
    """The Optuna study in its storage: created (or loaded, when it exists and `create` allows)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not its line for every study it creates
    Path(plan.folder).mkdir(parents=True, exist_ok=True)
    sampler, pruner = _sampler_and_pruner(plan, worker)
    try:
        for attempt in range(_SCHEMA_RETRIES + 1):
            try:
                with _creation_lock(plan.storage):
                    if create:
                        return optuna.create_study(study_name=plan.study, storage=plan.storage,
                                                   direction="maximize", sampler=sampler, pruner=pruner,
                                                   load_if_exists=True)  # fmt: skip
                    return optuna.load_study(study_name=plan.study, storage=plan.storage, sampler=sampler,
                                             pruner=pruner)  # fmt: skip
            except Exception as exc:
                # Workers started together against a new database (other machines on one server) race to
                # create its tables and its schema version row: the loser sees "table ... already exists" or
                # an IntegrityError from what the winner has just written; opening again finds it complete.
                raced = "already exists" in str(exc) or type(exc).__name__ == "IntegrityError"
                if attempt == _SCHEMA_RETRIES or not raced:
                    raise
                time.sleep(0.2 * (attempt + 1))
    except KeyError:
        raise UsageError(
            f"--resume: no study '{plan.study}' in {plan.storage}; leave --resume out to start it"
        ) from None
    except Exception as exc:  # a URL optuna cannot open: one line, not its traceback
        raise UsageError(f"--storage {plan.storage}: cannot open it ({type(exc).__name__}: {exc})") from None


def objective(plan: StudyPlan):
    """The function Optuna calls per trial: a short run with the trial's options, its val metric per epoch
    reported (and the trial stopped as soon as the pruner says so)."""
    import optuna

    from zoo.catalogue import events
    from zoo.training.config import TrainConfig
    from zoo.training.train import train

    def run(trial: optuna.Trial) -> float:
        params = {p.name: p.suggest(trial) for p in plan.params}
        trials_dir = str(Path(plan.folder) / "trials")
        cfg = TrainConfig(backbone=plan.backbone, data=plan.data, **plan.fixed, **params, select_by=plan.metric,
                          out=trials_dir, name=f"trial-{trial.number:04d}", trial=True)  # fmt: skip
        metric = None

        def report(event) -> None:
            nonlocal metric
            if event.kind == events.STARTED:
                metric = event.data.get("select_by")
            if event.kind != events.EPOCH_ENDED:
                return
            row = event.data["row"]
            value = row[f"val_{event.data['select_by']}"]
            trial.report(value, row["epoch"])
            if trial.should_prune():
                trial.set_user_attr("reason", f"pruned after epoch {row['epoch']} ({value:.4f})")
                raise optuna.TrialPruned(f"epoch {row['epoch']}: val {value:.4f}")

        started = time.perf_counter()
        try:
            result = train(cfg, callback=report)
        except Interrupted:
            raise KeyboardInterrupt from None  # Ctrl-C ends the study (Optuna marks the trial failed), not the trial
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # the trial fails, recorded with its reason; the study goes on
            trial.set_user_attr("reason", str(exc) if isinstance(exc, ZooError) else f"{type(exc).__name__}: {exc}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
        summary = result.summary
        trial.set_user_attr("run_dir", str(result.run_dir))
        trial.set_user_attr("metric", summary.get("select_by", metric))
        trial.set_user_attr("best_epoch", result.best_epoch)
        trial.set_user_attr("cache", (summary.get("cache") or {}).get("shared"))
        return float(summary["best_value"])

    return run


def run_trials(plan: StudyPlan, trials: int, timeout: float | None, worker: int = 0, progress=None,
               share: bool = True) -> None:  # fmt: skip
    """Run `trials` trials of the study in this process (fewer if `timeout` seconds pass first); other processes may
    run trials of the same study at the same time, through its storage."""
    import optuna

    from zoo.training.shared import sharing

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is a row with its reason, not a traceback
    study = open_study(plan, create=True, worker=worker)
    done = 0

    def advance(_study, trial) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(done, trials, trial)

    with sharing() if share else contextlib.nullcontext():
        study.optimize(objective(plan), n_trials=trials, timeout=timeout, callbacks=[advance], catch=(Exception,),
                       gc_after_trial=False)  # fmt: skip


def _worker_main(plan: StudyPlan, trials: int, timeout: float | None, worker: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    run_trials(plan, trials, timeout, worker)


def check_run(trials: int, workers: int, timeout: float | None) -> None:
    if trials < 1:
        raise UsageError(f"--trials {trials}: must be >= 1")
    if workers < 1:
        raise UsageError(f"--workers {workers}: must be >= 1")
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--timeout {timeout}: a number of seconds > 0")


def tune(plan: StudyPlan, trials: int = DEFAULT_TRIALS, *, timeout: float | None = None, workers: int = 1,
         resume: bool = False, final: bool = True, progress=None, share: bool = True) -> TuneResult:  # fmt: skip
    """Run `trials` more trials (with `workers` processes sharing the storage), then train the best configuration
    as an ordinary run; the study stays in its storage, readable with `optuna.load_study`. `share=False` computes
    the scan and the activations again in every trial (what bench/tune.py compares against)."""
    import multiprocessing

    from zoo.training.shared import sharing

    check_run(trials, workers, timeout)
    start = time.perf_counter()
    open_study(plan, create=not resume)
    shares = [trials // workers + (w < trials % workers) for w in range(workers)]  # N trials over the workers
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(plan, shares[w], timeout, w, threads))
                 for w in range(1, workers) if shares[w]]  # fmt: skip
        for p in procs:
            p.start()
    with sharing() if share else contextlib.nullcontext():  # the final run reuses the trials' scan and cache too
        try:
            run_trials(plan, shares[0], timeout, 0, progress, share)
        finally:
            if workers > 1:
                for p in procs:
                    p.join()
        return summarize(plan, final, time.perf_counter() - start)


def summarize(plan: StudyPlan, final: bool, seconds: float) -> TuneResult:
    """The study's trials, best trial, parameter importances, and (with `final`) the best configuration's run."""
    import optuna

    study = open_study(plan, create=False)
    rows = [trial_row(t) for t in study.trials]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    top = {"number": best.number, "value": best.value, "params": best.params} if best else None
    result = TuneResult(plan.study, plan.storage, Path(plan.folder), plan.metric, rows, top)
    if len(complete) >= 2 and plan.params:
        try:
            evaluator = optuna.importance.PedAnovaImportanceEvaluator()
            result.importances = dict(optuna.importance.get_param_importances(study, evaluator=evaluator))
        except (RuntimeError, ValueError) as exc:  # too few distinct values to weigh anything
            log.info("no parameter importances: %s", exc)
    if final and best is not None:
        result.final = train_best(plan, best.params)
    result.seconds = round(seconds, 2)
    write_outputs(result, study)
    return result


def write_outputs(result: TuneResult, study) -> None:
    """tune.json, trials.csv, and Optuna's own plots (optimisation history, parameter importances) as PNG."""
    import csv
    import io
    import warnings

    from zoo.core.atomic import atomic_write, write_json, write_text

    folder = result.folder
    write_json(folder / "tune.json", result.to_dict())
    names = sorted({k for t in result.trials for k in t["params"]})
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["number", "state", "value", *names, "epochs_reported", "seconds", "reason"])
    for t in result.trials:
        writer.writerow([t["number"], t["state"], t["value"], *[t["params"].get(n) for n in names],
                         t["epochs_reported"], t["seconds"], t["reason"] or ""])  # fmt: skip
    write_text(folder / "trials.csv", buf.getvalue())
    if not any(t["state"] == "complete" for t in result.trials):
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import optuna.visualization.matplotlib as ovm

    plots = {"history.png": ovm.plot_optimization_history}
    if result.importances:  # PED-ANOVA: Optuna's own evaluator, which needs no scikit-learn
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
        plots["importances.png"] = lambda s: ovm.plot_param_importances(s, evaluator=evaluator)
    for name, draw in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna marks its matplotlib plots experimental
            try:
                ax = draw(study)
            except (ValueError, RuntimeError) as exc:
                log.info("no %s: %s", name, exc)
                continue
        fig = ax.figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        atomic_write(folder / name, lambda tmp, fig=fig: fig.savefig(tmp, format="png", dpi=100))
        plt.close(fig)


def trial_row(t) -> dict[str, Any]:
    attrs = t.user_attrs
    reason = attrs.get("reason") or t.system_attrs.get("fail_reason")
    return {"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
            "epochs_reported": len(t.intermediate_values), "seconds": attrs.get("seconds"), "reason": reason,
            "run_dir": attrs.get("run_dir")}  # fmt: skip


def train_best(plan: StudyPlan, params: dict[str, Any]) -> dict[str, Any]:
    """The best trial's options trained as an ordinary run folder `best` (the test split evaluated once, here)."""
    from zoo.training.train import finetune

    result = finetune(plan.backbone, plan.data, **plan.fixed, **params, select_by=plan.metric, out=plan.folder,
                      name="best")  # fmt: skip
    s = result.summary
    return {"run_dir": str(result.run_dir), "params": params, "val": s.get("best_value"),
            "val_acc": s.get("best_val_acc"), "test": s.get("test"), "select_by": s.get("select_by")}  # fmt: skip
