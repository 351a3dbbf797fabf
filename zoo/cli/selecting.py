"""Commands that choose before training: `zoo rank`."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from zoo.cli.app import DataArgument, JsonFlag, app
from zoo.cli.options import FlagValueCommand, as_flags, with_options
from zoo.cli.render import note, out, print_json, print_table, progress_bar, table
from zoo.select.names import DEFAULT_ESTIMATE, DEFAULT_LIMIT, ESTIMATE_NAMES
from zoo.training.config import MANIFEST_OPTIONS, TrainConfig


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _params(n: int | None) -> str:
    return "-" if not n else f"{n / 1e6:.1f}M"


def show_ranking(ranking) -> None:
    """The ranked table: every estimate with its rank, the cost, the seconds; then the failed candidates."""
    names = [n for n in ESTIMATE_NAMES if any(n in r.scores for r in ranking.rows)]
    columns = [("#", "right"), ("candidate", "left")]
    columns += [(f"{n}{' (by)' if n == ranking.estimate else ''}", "right") for n in names]
    columns += [("params", "right"), ("input", "right"), ("ms/img", "right"), ("s", "right")]
    title = (
        f"{len(ranking.ranked)} candidates on {ranking.images} train images of {ranking.data}, "
        f"by {ranking.estimate} (value, rank); * = Pareto front of {ranking.estimate} and ms/img"
    )
    t = table(title, columns)
    for i, r in enumerate(ranking.ranked, 1):
        cells = [f"{r.scores[n]:.3f} ({r.ranks[n]})" if n in r.scores else "-" for n in names]
        cost = _fmt(r.ms_per_image, 1) + ("*" if r.pareto else "")
        seconds = f"{r.seconds:.1f}" + (" cached" if r.cached else "")
        t.add_row(str(i), r.candidate, *cells, _params(r.params), str(r.input_size or "-"), cost, seconds)
    print_table(t)
    for r in ranking.rows:
        if r.error:
            out(("not ranked", "bold"), f" {r.candidate}: {r.error}")
    missing = {n: why for r in ranking.ranked for n, why in r.missing.items() if n in ESTIMATE_NAMES}
    for name, why in sorted(missing.items()):
        note(f"{name}: - where {why}")


@app.command(cls=FlagValueCommand)
@with_options(TrainConfig, only=MANIFEST_OPTIONS)
def rank(
    data: DataArgument,
    candidates: Annotated[
        list[str] | None,
        typer.Argument(
            help="Backbone names, globs ('efficientnet*') or NAME@cut:GROUP (the features after GROUP) "
            "[default: every backbone whose pretrained weights are at hand].",
            show_default=False,
        ),
    ] = None,
    source: Annotated[str | None, typer.Option(help="Add every backbone of this plugin (`zoo plugins`).")] = None,
    tag: Annotated[str | None, typer.Option(help="Add every backbone with this tag (`zoo list --tag`).")] = None,
    limit: Annotated[
        int, typer.Option(help="Train images each candidate is scored on (a stratified sample).")
    ] = DEFAULT_LIMIT,
    max_params: Annotated[
        float | None, typer.Option(help="Leave out candidates with more parameters than this (e.g. 25e6).")
    ] = None,
    estimate: Annotated[
        str, typer.Option(help=f"What the ranking is by: {', '.join(ESTIMATE_NAMES)}.")
    ] = DEFAULT_ESTIMATE,
    val_fraction: Annotated[float, typer.Option(help="As for finetune: the val share left out of the ranking.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split and the sample.")] = 0,
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the ranking's folder (rank-DATA).")] = "runs",
    name: Annotated[str | None, typer.Option(help="The ranking folder's name [default: rank-DATA].")] = None,
    cache: Annotated[
        bool, typer.Option(help="Reuse and keep features per candidate and data ($ZOO_HOME/cache).")
    ] = True,
    advise: Annotated[bool, typer.Option(help="Run `zoo advise` on the winner for its policy.")] = True,
    as_json: JsonFlag = False,
    **options,
):
    """Rank backbones for DATA by transferability estimates (LogME, LEEP, NCE, H-score, GBC, a linear probe) from one
    forward pass each, with their cost; writes ranking.json and ranking.png; the last line fine-tunes the winner."""
    from pathlib import Path

    from zoo.core.errors import UsageError
    from zoo.data.split import manifest_options
    from zoo.select.output import write_ranking
    from zoo.select.rank import rank as run_rank
    from zoo.training.runs import new_run_dir

    if max_params is not None and max_params <= 0:
        raise UsageError(f"--max-params {max_params:g}: must be a positive number of parameters")
    folder = new_run_dir(out_dir, name, "rank", Path(data).stem or "data")
    try:
        with progress_bar("ranking", enabled=not as_json, unit=None) as update:
            progress = (lambda done, total, what: update(done, total, what)) if update else None
            ranking = run_rank(data, candidates or [], source=source, tag=tag, limit=limit,
                               max_params=int(max_params) if max_params is not None else None, estimate=estimate,
                               seed=seed, val_fraction=val_fraction, labels=options["labels"],
                               options=manifest_options(options), use_cache=cache, advise=advise,
                               progress=progress)  # fmt: skip
    except BaseException:
        _remove_if_empty(folder)
        raise
    write_ranking(ranking, folder)
    if as_json:
        print_json(ranking.to_dict() | {"folder": str(folder)})
    else:
        show_ranking(ranking)
        out(f"ranking.json and ranking.png: {folder} ({ranking.seconds:.1f} s)")
    if ranking.winner is None:  # every candidate is a row with its reason: exit code 3 (input), as for bad data
        if not as_json:
            out(("no candidate could be ranked", "bold"), ": see the reasons above")
        raise typer.Exit(3)
    if as_json:
        return
    if ranking.advice:
        out(f"zoo advise on {ranking.winner.backbone}: {ranking.advice['quadrant']} -> {ranking.policy}")
    manifest = " ".join(as_flags(TrainConfig, {k: options[k] for k in MANIFEST_OPTIONS}))
    command = f"zoo finetune {shlex.quote(ranking.winner.backbone)} {shlex.quote(data)}"
    command += f" --policy {ranking.policy}" if ranking.policy else ""
    out("next: ", (command + (f" {manifest}" if manifest else ""), "bold"))


def _remove_if_empty(folder) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
