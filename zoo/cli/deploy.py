"""Commands that use a trained model: `zoo evaluate`, `zoo predict`, `zoo export`, `zoo verify`."""

from __future__ import annotations

from typing import Annotated

import typer

from zoo.catalogue.events import metric_name
from zoo.cli.app import JsonFlag, app
from zoo.cli.options import with_options
from zoo.cli.render import check_table, note, out, print_json, print_table, table
from zoo.core.errors import UsageError
from zoo.export.options import ExportOptions, check_destination
from zoo.runtime import DEFAULT_TOP_K
from zoo.runtime.onnx_io import PROVIDER_HELP, quiet_stdout
from zoo.training.config import MANIFEST_OPTIONS, TrainConfig


@app.command()
@with_options(TrainConfig, only=tuple(o for o in MANIFEST_OPTIONS if o != "multi_label"))
def evaluate(
    run: Annotated[str, typer.Argument(help="Run folder (uses best.pt) or checkpoint file.")],
    data: Annotated[
        str | None,
        typer.Argument(
            help="Image folder with class subfolders, or a CSV/TSV manifest (as for finetune) [default: the run's "
            "own data]."
        ),
    ] = None,
    split: Annotated[
        str,
        typer.Option(
            help="Which part: auto, train, val, test or all [auto: the run's own data: its held-out split (test, "
            "else val); other data: its test part, else its val part, else all]."
        ),
    ] = "auto",
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Also test-time augmentation: ten views per image (five crops and their flips), probabilities "
            "averaged; reported beside the plain figures.",
        ),
    ] = False,
    as_json: JsonFlag = False,
    **options,
):
    """Accuracy, balanced accuracy, macro-F1, mAP and per-class figures of a fine-tuned model (single-label: with
    the confusion matrix; multi-label: at the run's thresholds)."""
    from zoo.training.evaluate import evaluate as run_evaluate

    columns = {k: v for k, v in options.items() if k != "labels" and v is not None}
    report = run_evaluate(run, data, labels=options["labels"], split=split, columns=columns, tta=tta)
    if as_json:
        print_json(report)
        return
    multi = report["task"] == "multi-label"
    out(
        "accuracy ", (f"{report['accuracy']:.4f}", "bold"),
        f"{' (exact label sets)' if multi else ''}  balanced accuracy {report['balanced_accuracy']:.4f}  "
        f"macro-F1 {report['macro_f1']:.4f}" + (f"  micro-F1 {report['micro_f1']:.4f}" if multi else "")
        + f"  mAP {report['map']:.4f}  on {report['images']} images: {report['evaluated_on']}",
    )  # fmt: skip
    if tta:
        t = report["tta"]
        out(
            "with --tta ", (f"{t['accuracy']:.4f}", "bold"),
            f" ({(t['accuracy'] - report['accuracy']) * 100:+.1f} points)  balanced accuracy "
            f"{t['balanced_accuracy']:.4f}  macro-F1 {t['macro_f1']:.4f}"
            + (f"  micro-F1 {t['micro_f1']:.4f}" if multi else "") + f"  mAP {t['map']:.4f}  ({t['views']})",
        )  # fmt: skip
    columns = ("precision", "recall", "f1", "ap", "images") + (("threshold",) if multi else ())
    t = table("per class" + (" (at the run's thresholds)" if multi else ""), [("class", "left")]
              + [(c, "right") for c in columns])  # fmt: skip
    for row in report["per_class"]:
        cells = [f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}",
                 "-" if row["ap"] is None else f"{row['ap']:.3f}", str(row["support"])]  # fmt: skip
        t.add_row(row["class"], *cells, *([f"{row['threshold']:.3f}"] if multi else []))
    print_table(t)
    if not multi:
        matrix = table("confusion matrix (rows: true, columns: predicted)", [("", "left")])
        for name in report["classes"]:
            matrix.add_column(name, justify="right")
        for name, row in zip(report["classes"], report["confusion_matrix"], strict=True):
            matrix.add_row(name, *map(str, row))
        print_table(matrix)
    if report["skipped"]:
        note(f"skipped {len(report['skipped'])} file(s) or row(s): {'; '.join(report['skipped'][:5])}")


@app.command()
def predict(
    model: Annotated[str, typer.Argument(help="Run folder, checkpoint file, or an exported model.onnx.")],
    images: Annotated[
        list[str],
        typer.Argument(
            help="Image files; with a model.onnx also folders (walked recursively) and quoted glob patterns "
            "('photos/**/*.jpg')."
        ),
    ],
    top_k: Annotated[int, typer.Option(help="How many labels per image.")] = DEFAULT_TOP_K,
    out: Annotated[
        str | None,
        typer.Option(
            "--out",
            "-o",
            help="model.onnx: write one row per image to this .csv or .jsonl file, streaming in batches (an image "
            "that cannot be read is a row with its error); written whole, or not at all if interrupted.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="model.onnx: images per batch.")] = 32,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace the --out file if it exists.")] = False,
    provider: Annotated[str | None, typer.Option(help=f"model.onnx: {PROVIDER_HELP}")] = None,
    as_json: JsonFlag = False,
):
    """Top-k labels for images, from a run, a checkpoint, or an exported model.onnx (which needs no torch and
    streams any number of images: folders, globs, --out)."""
    from pathlib import Path

    from zoo.cli import render
    from zoo.core.errors import DataError

    if not model.endswith(".onnx"):  # a run or checkpoint: torch, the image files named
        hint = f"export the model first (zoo export {model} -o model.onnx) and predict with model.onnx"
        if out is not None:
            raise UsageError(f"--out {out}: needs an exported model; {hint}")
        folder = next((i for i in images if Path(i).is_dir()), None)
        if folder is not None:
            raise UsageError(f"{folder}: is a folder; pass image files (e.g. {folder}/*.jpg), or {hint}")
        from zoo.training.evaluate import predict as run_predict

        results = run_predict(model, images, top_k)
        if as_json:
            print_json(results)
        else:
            for r in results:
                render.show_prediction(r)
        return

    from zoo.runtime.batch_predict import predict_many

    # without --out each batch is printed as it comes (--json: one JSON list); with --out, a progress bar
    printed = render.JsonList() if as_json else None
    with render.progress_bar("predict", enabled=out is not None and not as_json) as on_progress:
        summary = predict_many(
            model, images, out=out, top_k=top_k, batch_size=batch_size, overwrite=overwrite,
            on_rows=(printed.write if printed else render.show_predictions) if out is None else None,
            on_progress=on_progress, total=on_progress is not None, provider=provider,
        )  # fmt: skip
    if out is None and printed:
        printed.close()
    elif as_json:
        print_json(summary.to_dict())
    if summary.errors == summary.images:
        where = f"; each row of {summary.out} says why" if summary.out else ""
        raise DataError(f"none of the {summary.images} image(s) could be read{where}")
    note(
        f"{summary.images} image(s), {summary.errors} error(s), {summary.images_per_second:.1f} img/s "
        f"({summary.seconds:.1f} s)" + (f": {summary.out}" if summary.out else "")
    )


@app.command()
@with_options(ExportOptions)
def export(
    source: Annotated[str, typer.Argument(help="Run folder, checkpoint file, or a backbone name.")],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Where to write the .onnx file [default with --triton-repo DIR: DIR/NAME/1/model.onnx].",
        ),
    ] = None,
    *,
    as_json: JsonFlag = False,
    **options,
):
    """Export to ONNX and prove it: onnxruntime against torch on real images; a mismatch is an error."""
    chosen = ExportOptions(**options)
    check_destination(output, chosen)  # before the exporter (and torch) is imported
    from zoo.export.exporter import export as run_export

    with quiet_stdout():  # libraries that print (the exporters, INT8 calibration) never reach stdout
        report = run_export(source, output, chosen)
    if as_json:
        print_json(report.to_dict())
        return
    title = f"{report.path} ({report.exporter} exporter, opset {report.opset}): onnxruntime vs torch on {report.images}"
    if report.provider != "cpu":
        title += f", on {report.provider}"
    print_table(check_table(title, report.checks))
    if report.embedded:
        e = report.embedded
        out(
            f"preprocessing in the graph, on the raw pixels of {e['images']} images against zoo's: "
            f"{e.get('agreement', 'top-1')} agreement "
            f"{e['top1_agreement']:.3f} (>= {e['min_top1_agreement']}), probability difference median "
            f"{e['median_prob_diff']:.4f} (<= {e['max_median_prob_diff']}), p95 {e['p95_prob_diff']:.4f}, max "
            f"{e['max_prob_diff']:.4f}"
        )
    if report.fp16:
        f = report.fp16
        out(f"fp16: {f['path']}: max abs diff {f['max_abs_diff']:.3g} (<= {f['atol']:.3g}), top-1 agreement "
            f"{f['top1_agreement']:.3f}")  # fmt: skip
    for line in report.notes:
        note(f"note: {line}")
    if report.int8:
        _show_int8(report.int8)
    if report.triton:
        out(f"triton: {report.triton} (config.pbtxt, labels.txt, 1/model.onnx)")
    out(("verified", "bold"), f": {report.path} (report: {report.report_path})")


def _show_int8(q: dict) -> None:
    """`zoo export --int8`: the INT8 model's drop and speed, and every attempt when there were several."""
    metric = q["metric"]
    out(
        f"int8: {q['path']}: {metric_name(metric)} {q[f'fp32_{metric}']:.4f} -> {q[f'int8_{metric}']:.4f} "
        f"({-q['drop_points']:+.2f} points), {q['speedup']:.2f}x the fp32 speed"
    )
    if len(q["attempts"]) > 1:
        columns = [("calibration", "left"), ("kept in float", "left"), ("drop (points)", "right"),
                   ("speed", "right"), ("gate", "left")]  # fmt: skip
        attempts = table("int8 attempts", columns)
        for a in q["attempts"]:
            attempts.add_row(a["calibration"], ", ".join(a["excluded"]) or "-", f"{a['drop_points']:.2f}",
                             f"{a['speedup']:.2f}x", "passed" if a["passed"] else "failed")  # fmt: skip
        print_table(attempts)


@app.command()
def verify(
    model: Annotated[str, typer.Argument(help="An exported .onnx file (fp32 or INT8).")],
    source: Annotated[str, typer.Argument(help="The run folder or checkpoint it was exported from.")],
    check_data: Annotated[
        str | None,
        typer.Option(
            help="Images to verify with [default: 8 images of the run's data; 64 for a model with its preprocessing "
            "inside]. An INT8 model is always judged on the run's val images."
        ),
    ] = None,
    min_agreement: Annotated[float, typer.Option(help="Least top-1 agreement with torch, 0-1.")] = 1.0,
    provider: Annotated[str | None, typer.Option(help=PROVIDER_HELP)] = None,
    as_json: JsonFlag = False,
):
    """Check an ONNX file against its torch checkpoint again: a tampered or stale file fails."""
    from zoo.export.exporter import mismatch_error
    from zoo.export.verify import verify as run_verify

    report = run_verify(model, source, check_data, min_agreement=min_agreement, provider=provider)
    if as_json:
        print_json(report.to_dict())
    elif not report.passed:
        print_table(check_table(f"{model}: onnxruntime vs torch on {report.images}", report.checks), stderr=True)
    if not report.passed:
        raise mismatch_error(report)
    if not as_json:
        worst = max(c.max_abs_diff for c in report.checks)
        what = f"max abs diff {worst:.2e}"
        if report.precision == "int8":
            what = f"{report.checks[0].output.removeprefix('int8 ')} within the INT8 gate"
        out(("verified", "bold"), f": {model} matches {source} on {report.images} ({what})")
