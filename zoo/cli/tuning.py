"""`zoo tune`: hyperparameter search on Optuna."""

from __future__ import annotations

from typing import Annotated

import typer

from zoo.catalogue.events import metric_name
from zoo.cli.app import BackboneArgument, DataArgument, JsonFlag, app
from zoo.cli.options import FlagValueCommand, given, options_for, with_options
from zoo.cli.render import out, print_json, print_table, progress_bar, table, test_line
from zoo.core.metrics import SELECTABLE
from zoo.core.options import cli_fields
from zoo.training.config import TrainConfig

# every zoo finetune option is a fixed option of the study, but for what zoo tune sets itself
_FIXED = tuple(f.name for f in cli_fields(TrainConfig) if f.name not in ("select_by", "name", "resume"))


@app.command(cls=FlagValueCommand)
@with_options(TrainConfig, only=_FIXED)
def tune(
    ctx: typer.Context,
    backbone: BackboneArgument,
    data: DataArgument,
    trials: Annotated[int, typer.Option(help="Trials to run (more trials of a resumed study).")] = 30,
    timeout: Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")] = None,
    metric: Annotated[
        str, typer.Option(help=f"Val metric to maximise: auto, {', '.join(SELECTABLE)} (as --select-by).")
    ] = "auto",
    space: Annotated[
        str | None, typer.Option(help="TOML file of the search space (see --show-space) [default: by policy kind].")
    ] = None,
    show_space: Annotated[bool, typer.Option("--show-space", help="Print the search space as TOML and exit.")] = False,
    storage: Annotated[
        str | None,
        typer.Option(help="Optuna storage URL, shared by every worker [default: sqlite:///OUT/tune-STUDY/study.db]."),
    ] = None,
    study: Annotated[str | None, typer.Option(help="Study name [default: BACKBONE-DATA].")] = None,
    workers: Annotated[int, typer.Option(help="Trials in parallel processes on this machine.")] = 1,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the study: run --trials more.")] = False,
    pruner: Annotated[str, typer.Option(help="Stop poor trials early: median, hyperband or none.")] = "median",
    final: Annotated[bool, typer.Option(help="Train the best configuration as a run folder at the end.")] = True,
    as_json: JsonFlag = False,
    **options,
):
    """Search learning rate, weight decay, label smoothing, epochs (or a space of your own) with Optuna; trials
    share the frozen-prefix cache; the best configuration ends as an ordinary run folder (`zoo export` works)."""
    from zoo.select.space import to_toml
    from zoo.select.tune import check_run, plan_study
    from zoo.select.tune import tune as run_tune

    check_run(trials, workers, timeout)
    fixed = {k: options[k] for k in given(ctx, options_for(TrainConfig, options))}
    plan = plan_study(backbone, data, fixed, space=space, metric=metric, storage=storage, study=study,
                      out=options["out"], pruner=pruner, seed=options["seed"], resume=resume)  # fmt: skip
    if show_space:
        typer.echo(to_toml(plan.params), nl=False)
        return
    with progress_bar(f"tune {plan.study}", enabled=not as_json, unit=None) as update:
        progress = None
        if update:
            progress = lambda done, total, t: update(done, total, f"trial {t.number} {t.state.name.lower()}")  # noqa: E731
        result = run_tune(plan, trials, timeout=timeout, workers=workers, resume=resume, final=final,
                          progress=progress)  # fmt: skip
    if as_json:
        print_json(result.to_dict())
        return
    show_result(result)


def show_result(result) -> None:
    done = [t for t in result.trials if t["state"] == "complete"]
    states = {s: sum(t["state"] == s for t in result.trials) for s in ("complete", "pruned", "fail")}
    names = sorted({k for t in result.trials for k in t["params"]})
    t = table(f"best trials of study {result.study} ({metric_name('val_' + result.metric)})",
              [("#", "right"), ("value", "right"), *[(n, "right") for n in names], ("s", "right")])  # fmt: skip
    for row in sorted(done, key=lambda r: -r["value"])[:10]:
        t.add_row(str(row["number"]), f"{row['value']:.4f}", *[_value(row["params"].get(n)) for n in names],
                  f"{row['seconds'] or 0:.1f}")  # fmt: skip
    print_table(t)
    out(f"{len(result.trials)} trials: {states['complete']} complete, {states['pruned']} pruned, {states['fail']} "
        f"failed ({result.seconds:.0f} s); study in {result.storage}")  # fmt: skip
    for row in result.trials:
        if row["state"] == "fail":
            out(f"  trial {row['number']} failed: {row['reason']}")
    if result.importances:
        out("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in result.importances.items()))
    if result.final:
        f = result.final
        out(("best", "bold"), f": trial {result.best['number']}, val {result.best['value']:.4f}; trained again as "
            f"{f['run_dir']} (val {f['val']:.4f})")  # fmt: skip
        if f.get("test"):
            out(test_line(f["test"]) + "  (the test split, evaluated once, after the search)")
        out(f"next: zoo export {f['run_dir']} -o model.onnx")
    out(f"plots and tune.json: {result.folder}")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return "-" if v is None else str(v)
