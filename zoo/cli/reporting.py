"""Commands that look at runs: `zoo report`, `zoo explain`, `zoo runs`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zoo.cli.app import JsonFlag, app
from zoo.cli.render import note, out, print_json, print_table, table
from zoo.core.errors import UsageError


def _size(n: int) -> str:
    return f"{n / 1024:.0f} KB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.1f} MB"


@app.command()
def report(
    run: Annotated[str, typer.Argument(help="Run folder (runs/NAME).")],
    data: Annotated[
        str | None,
        typer.Argument(
            help="Also evaluate the best checkpoint on this image folder or manifest, image by image (the run's own "
            "data: its held-out split), for the per-class table, confusion matrix, top losses and calibration."
        ),
    ] = None,
    labels: Annotated[str | None, typer.Option(help="A CSV/TSV manifest of the images in DATA (a folder).")] = None,
    output: Annotated[
        str | None, typer.Option("--out", "-o", help="The HTML file to write [default: RUN/report.html].")
    ] = None,
    gallery: Annotated[int, typer.Option(help="Top-loss images shown per split (0 to 200).")] = 16,
    heatmaps: Annotated[
        bool, typer.Option("--heatmaps/--no-heatmaps", help="Grad-CAM heat maps beside the top-loss images.")
    ] = True,
    as_json: JsonFlag = False,
):
    """Write a run's report: one self-contained HTML page (config, data, curves, per-class table, confusion
    matrix, most-confused pairs, top losses with Grad-CAM, calibration, test figures, exported models)."""
    from zoo.report.page import write_report

    written = write_report(run, data, labels=labels, out=output, gallery=gallery, heatmaps=heatmaps)
    if as_json:
        print_json({"report": str(written.path), "bytes": written.bytes, "sections": written.sections,
                    "notes": written.notes})  # fmt: skip
        return
    for line in written.notes:
        note(line)
    out(("report ", "bold"), str(written.path), f" ({_size(written.bytes)}); open it in a browser: ",
        written.path.resolve().as_uri())  # fmt: skip


def _free(path: Path, taken: set[Path]) -> Path:
    """`path`, or path-2, path-3... when another image of this call already has its name."""
    candidate, i = path, 1
    while candidate in taken:
        i += 1
        candidate = path.with_name(f"{path.stem.removesuffix('.gradcam')}-{i}.gradcam.png")
    taken.add(candidate)
    return candidate


@app.command()
def explain(
    run: Annotated[str, typer.Argument(help="Run folder (runs/NAME) or checkpoint file.")],
    images: Annotated[list[str], typer.Argument(help="Image files to explain.")],
    class_name: Annotated[
        str | None, typer.Option("--class", help="Explain this class [default: each image's predicted class].")
    ] = None,
    output: Annotated[
        str | None, typer.Option("--out", "-o", help="Folder for the heat maps [default: RUN/explain].")
    ] = None,
    as_json: JsonFlag = False,
):
    """Grad-CAM: where the model looked, as a heat map over each image (IMAGE.gradcam.png), for the predicted
    class or --class. The target is the last spatial map before the head, found from the backbone's groups."""
    from zoo.core import atomic
    from zoo.report.explain import explain as run_explain

    target, found = run_explain(run, images, class_name)
    folder = Path(output).expanduser() if output else _run_folder(run) / "explain"
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--out {folder}: is a file; name a folder for the heat maps")
    rows, taken = [], set()
    for e in found:
        path = _free(folder / f"{Path(e.path).stem}.gradcam.png", taken)
        atomic.atomic_write(path, lambda tmp, e=e: e.picture().save(tmp, format="PNG"))
        rows.append({"image": e.path, "predicted": e.predicted, "probability": e.probability,
                     "explained": e.explained, "explained_probability": e.explained_probability,
                     "heatmap": str(path)})  # fmt: skip
    if as_json:
        print_json({"target": target.module, "group": target.group, "map": list(target.size), "images": rows})
        return
    t = table(f"Grad-CAM at {target.describe()}", [("image", "left"), ("predicted", "left"), ("explained", "left"),
                                                    ("heat map", "left")])  # fmt: skip
    for r in rows:
        t.add_row(r["image"], f"{r['predicted']} {r['probability']:.3f}",
                  f"{r['explained']} {r['explained_probability']:.3f}", r["heatmap"])  # fmt: skip
    print_table(t)


def _run_folder(run: str) -> Path:
    path = Path(run).expanduser()
    return path if path.is_dir() else path.parent


@app.command()
def runs(
    paths: Annotated[
        list[str] | None,
        typer.Argument(
            help="The folder that holds run folders [default: runs]; with --compare, the run folders to compare.",
            show_default=False,
        ),
    ] = None,
    compare: Annotated[
        bool, typer.Option("--compare", help="Write one HTML page that compares the run folders given.")
    ] = False,
    output: Annotated[str, typer.Option("--out", "-o", help="--compare: the HTML file to write.")] = "compare.html",
    as_json: JsonFlag = False,
):
    """List run folders (status, best metric, epochs, wall time, exported models), or compare runs in one page:
    `zoo runs [DIR]`, `zoo runs --compare A B ...`."""
    from zoo.report.runs import compare_runs, list_runs

    paths = paths or []
    if compare:
        written = compare_runs(paths, output)
        if as_json:
            print_json({"compare": str(written), "runs": paths})
        else:
            out(("compared ", "bold"), f"{len(paths)} runs: {written}; open it in a browser: ",
                written.resolve().as_uri())  # fmt: skip
        return
    if len(paths) > 1:
        raise UsageError(f"zoo runs takes one folder, not {len(paths)}; to compare runs: zoo runs --compare A B ...")
    folder = paths[0] if paths else "runs"
    rows = list_runs(folder)
    if as_json:
        print_json([r.to_dict() for r in rows])
        return
    if not rows:
        note(f"{folder}: no run folders")
        return
    columns = [("name", "left"), ("backbone", "left"), ("policy", "left"), ("status", "left"), ("best", "right"),
               ("epochs", "right"), ("wall", "right"), ("exported", "left")]  # fmt: skip
    t = table(f"{len(rows)} run(s) in {folder}", columns)
    for r in rows:
        best = f"{r.metric} {r.best:.4f} @{r.best_epoch}" if r.best is not None else "-"
        epochs = f"{r.epochs_run}/{r.epochs}" if r.epochs else str(r.epochs_run)
        wall = f"{r.wall_seconds:.1f} s" if r.wall_seconds is not None else "-"
        t.add_row(r.name, r.backbone, r.policy, r.status, best, epochs, wall, ", ".join(r.exports) or "-")
    print_table(t)
