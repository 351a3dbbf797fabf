"""Commands that train: `zoo finetune`, `zoo advise`, `zoo demo`."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from zoo.catalogue import events
from zoo.catalogue.events import metric_name
from zoo.cli.app import BackboneArgument, DataArgument, JsonFlag, app, complete_backbone
from zoo.cli.options import FlagValueCommand, as_flags, given, options_for, with_options
from zoo.cli.render import RunRenderer, check_table, note, out, print_json, print_table, table, test_line
from zoo.core.errors import UsageError
from zoo.core.timing import mark
from zoo.training.config import MANIFEST_OPTIONS, LaunchConfig, TrainConfig


def run_finetune(*args, **kwargs):
    """The library call behind `zoo finetune` (patched by the CLI tests, which assert what it receives)."""
    from zoo.core.timing import phase

    with phase("imports"):  # torch and the training code: the first of `zoo finetune`'s phases
        from zoo.training.launch import run_finetune as run

    return run(*args, **kwargs)


@app.command(cls=FlagValueCommand)
@with_options(TrainConfig, LaunchConfig)
def finetune(
    ctx: typer.Context,
    backbone: Annotated[
        str | None, typer.Argument(help="Backbone name or alias (`zoo list`).", autocompletion=complete_backbone)
    ] = None,
    data: Annotated[
        str | None,
        typer.Argument(
            help="Image folder (DATA/<class>/*.jpg, or DATA/train + DATA/val [+ DATA/test]) or a CSV/TSV manifest."
        ),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(help="Continue the run in this folder from its last complete epoch (no BACKBONE, DATA)."),
    ] = None,
    candidates: Annotated[
        list[str] | None,
        typer.Option(
            help="With BACKBONE 'auto': the backbones `zoo rank` chooses from (names, globs, NAME@cut:GROUP; "
            "repeat it or separate with commas) [default: every backbone whose pretrained weights are at hand].",
            show_default=False,
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final line.")] = False,
    as_json: JsonFlag = False,
    **options,
):
    """Fine-tune a backbone on an image folder or a manifest with a freeze policy; writes runs/NAME/. BACKBONE
    'auto' ranks the candidates first (`zoo rank`) and fine-tunes the winner."""
    launch = LaunchConfig(**options_for(LaunchConfig, options))
    train_options = options_for(TrainConfig, options)
    renderer = RunRenderer(quiet=quiet or as_json)
    shown: list[str] = []

    def callback(event) -> None:
        renderer(event)
        if event.kind == events.TRAINED and not as_json:  # the result now, before the plots and report are drawn
            renderer.close()
            show_result(event.data["summary"], event.run_dir)
            shown.append(event.run_dir)

    try:
        if resume is not None:
            if backbone is not None or data is not None:
                raise UsageError("--resume continues a run with its own BACKBONE and DATA; leave them out")
            overrides = {k: train_options[k] for k in given(ctx, train_options)}
            result = run_finetune(None, launch, resume=resume, overrides=overrides, callback=callback)
        else:
            if candidates and backbone != "auto":
                raise UsageError("--candidates: only with BACKBONE 'auto' (zoo finetune auto DATA --candidates ...)")
            if backbone == "auto":
                train_options = choose_backbone(data or "", candidates or [], train_options, given(ctx, train_options))
                backbone = train_options.pop("backbone")
            cfg = TrainConfig(backbone=backbone or "", data=data or "", **train_options)
            result = run_finetune(cfg, launch, callback=callback)
    finally:
        renderer.close()
    if as_json:
        print_json(result.summary | {"run_dir": str(result.run_dir)})
        return
    if result.summary.get("status") == "written-on-another-node":  # (zoo.training.launch.ELSEWHERE)
        out(("done", "bold"), ": this node's workers finished; the run folder is on the node that ran global rank 0 "
            "(with --rdzv-endpoint, the rendezvous picks it; --node-rank 0 with --master-addr chooses it)")  # fmt: skip
        return
    if not shown:  # (a distributed run's events stay in its processes)
        figures = {"best_val_acc": result.best_val_acc, "best_epoch": result.best_epoch}
        show_result({**result.summary, **figures, "epochs_run": result.epochs_run}, result.run_dir)
    if result.summary.get("report"):
        out(f"report: {result.run_dir / result.summary['report']}")


def show_result(summary: dict, run_dir) -> None:
    """The result line (and the test split's), from the run's summary."""
    metric = summary.get("select_by", "acc")
    acc = summary["best_val_acc"]
    best = f"best val acc {acc:.4f}"
    if metric != "acc":
        best = f"best {metric_name('val_' + metric)} {summary.get('best_value', acc):.4f} (val acc {acc:.4f})"
    epochs = summary.get("epochs_run", 0)
    out(
        ("done", "bold"),
        f": {best} at epoch {summary.get('best_epoch')} ({epochs} epoch{'s' if epochs != 1 else ''}, "
        f"{summary.get('wall_seconds', 0):.1f} s) -> {run_dir}",
    )
    if summary.get("test"):
        out(test_line(summary["test"]))
    mark("printed")


def choose_backbone(data: str, candidates: list[str], options: dict, typed: set[str]) -> dict:
    """`zoo finetune auto`: rank the candidates (`zoo rank`) on the run's own split and sample seed; the options
    with the winner as `backbone`, its policy (a cut, or zoo advise's pick) unless --policy was given, and the
    ranking to keep in summary.json."""
    from zoo.data.split import manifest_options
    from zoo.select.rank import rank

    names = [c for text in candidates for c in text.split(",") if c.strip()]
    ranking = rank(data, names, seed=options["seed"], val_fraction=options["val_fraction"], labels=options["labels"],
                   options=manifest_options(options), advise="policy" not in typed)  # fmt: skip
    winner = ranking.winner
    if winner is None:
        reasons = "; ".join(f"{r.candidate}: {r.error}" for r in ranking.rows)
        raise UsageError(f"zoo finetune auto: no candidate could be ranked ({reasons})")
    chosen = dict(options, backbone=winner.backbone, ranking=ranking.to_dict())
    if winner.cut and "policy" in typed and options["policy"] != ranking.policy:
        raise UsageError(
            f"zoo finetune auto: the winner is {winner.candidate}, the features after {winner.cut}, which only "
            f"--policy {ranking.policy} trains; leave --policy out, or leave the cut candidates out"
        )
    if "policy" not in typed and ranking.policy:
        chosen["policy"] = ranking.policy
    note(
        f"zoo rank: {winner.candidate} wins by {ranking.estimate} ({winner.scores[ranking.estimate]:.3f}) among "
        f"{len(ranking.ranked)} candidates; fine-tuning it with --policy {chosen['policy']}"
    )
    return chosen


@app.command("lr-find", cls=FlagValueCommand)
@with_options(TrainConfig)
def lr_find(
    backbone: BackboneArgument,
    data: DataArgument,
    as_json: JsonFlag = False,
    **options,
):
    """The LR range test on the trainable groups of a policy: the loss as the LR grows from 1e-7 to 1, a plot
    and a suggested LR (the rule is printed); nothing is trained. `zoo finetune --lr auto` runs it first."""
    from zoo.training.launch import find_lr

    options = options_for(TrainConfig, options)
    renderer = RunRenderer(quiet=True)
    try:
        result, run_dir = find_lr(TrainConfig(backbone=backbone, data=data, **options), callback=renderer)
    finally:
        renderer.close()
    if as_json:
        print_json({k: v for k, v in result.items() if k not in ("lrs", "losses")} | {"run_dir": str(run_dir)})
        return
    out(("suggested lr ", "bold"), (f"{result['suggestion']:.3g}", "bold"),
        f"  ({result['rule']}; {result['steps']} steps, {result['stopped']})")  # fmt: skip
    out(f"plot: {run_dir / 'lr_find.png'}  curve: {run_dir / 'lr_find.json'}")
    same = " ".join(as_flags(TrainConfig, options, skip=("lr", "lr_find_steps", "name")))  # the set-up it tested
    command = " ".join(shlex.quote(a) for a in (backbone, data)) + (f" {same}" if same else "")
    out(f"use it: zoo finetune {command} --lr {result['suggestion']:.3g}   (or --lr auto)")


@app.command()
@with_options(TrainConfig, only=MANIFEST_OPTIONS)
def advise(
    backbone: Annotated[
        str, typer.Argument(help="Backbone name or alias, with pretrained weights.", autocompletion=complete_backbone)
    ],
    data: DataArgument,
    weights: Annotated[str, typer.Option(help="Pretrained weights tag or file.")] = "default",
    large_per_class: Annotated[int, typer.Option(help="Images in every class from which data counts as large.")] = 500,
    as_json: JsonFlag = False,
    **options,
):
    """Measure the data's size and its similarity to the pretraining data; recommend a freeze policy."""
    from zoo.data.split import manifest_options
    from zoo.training.advise import advise as run_advise

    advice = run_advise(backbone, data, weights=weights, large_per_class=large_per_class, labels=options["labels"],
                        options=manifest_options(options))  # fmt: skip
    if as_json:
        print_json(advice.to_dict())
        return
    command = f"zoo finetune {advice.backbone} {data} --policy {advice.policy.name}"
    out((advice.quadrant, "bold"), " → recommended: ", (command, "bold"))
    if advice.probes:
        t = table("linear probe on the pretrained features, by depth", [("group", "left"), ("accuracy", "right")])
        for name, acc in advice.probes.items():
            t.add_row(name + (" (best)" if name == advice.best_group else ""), f"{acc:.3f}")
        print_table(t)
    for line in advice.evidence:
        out(f"- {line}")
    out(f"({advice.seconds:.1f} s)")


@app.command()
def demo(
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the demo's run.")] = "runs",
    epochs: Annotated[int, typer.Option(help="Epochs to train.")] = 10,
    backbone: Annotated[
        str | None, typer.Option(help="Backbone with offline weights [default: registry.toml's [defaults] demo].")
    ] = None,
):
    """The whole pipeline offline: fine-tune on photos that ship with zoo, evaluate, export, predict."""
    from zoo.demo import run_demo

    def step(name: str, d: dict) -> None:
        if name == "finetune":
            out(("1/4 fine-tune", "bold"), f" {d['backbone']} (pretrained weights that ship with it) on {d['data']}")
        elif name == "evaluate":
            out(("2/4 evaluate", "bold"), f" {d['run_dir']}")
        elif name == "export":
            out(("3/4 export", "bold"), f" {d['model']}")
        elif name == "predict":
            out(("4/4 predict", "bold"), " with onnxruntime only (no torch)")

    renderer = RunRenderer()
    try:
        result = run_demo(out_dir, epochs, backbone, callback=renderer, on_step=step)
    finally:
        renderer.close()
    report = result.evaluation
    note(
        f"val accuracy {report['accuracy']:.4f} on {report['images']} images; per class: "
        + ", ".join(f"{r['class']} recall {r['recall']:.2f}" for r in report["per_class"])
    )
    print_table(check_table(f"{result.model}: onnxruntime vs torch on {result.export.images}", result.export.checks))
    for r in result.predictions:
        image = r["image"].split("/")
        tops = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
        out(f"  {'/'.join(image[-2:])}: {tops}")
    out(f"plots, checkpoints and model.onnx: {result.run_dir}")
