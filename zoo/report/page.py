"""`zoo report RUN [DATA]`: one self-contained HTML page per run, RUN/report.html.

Everything is inside the file: images as data: URIs (thumbnails, bounded by `images.THUMB_SIDE` and the gallery's
size, so the page stays small whatever the run's size), charts as inline SVG, the style and the one small script
(sortable tables) inline. It makes no request when opened, and opens from a file:// path with no Python.
The page is rendered by Jinja2 with autoescaping on: every label, file name and run name is text, never markup.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.core import atomic
from zoo.core.errors import InputError, OutputError, UsageError
from zoo.report import sections
from zoo.report.folder import RunFolder

log = logging.getLogger(__name__)

REPORT_FILE = "report.html"
GALLERY = 16  # top-loss images per split, by default
MAX_GALLERY = 200


@dataclass(frozen=True)
class Written:
    """What `write_report` wrote."""

    path: Path
    bytes: int
    sections: list[str]  # the ids of the page's sections, in order
    notes: list[str]  # what the page could not show, and why


@functools.cache
def environment():
    """The Jinja2 environment of zoo's pages: autoescaping on for every template, undefined names an error."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("zoo.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, digits=4: "" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else v)
    return env


def _explainer(run: RunFolder, notes: list[str]):
    """Grad-CAM for the gallery, or None with a note saying why (no checkpoint, no spatial map, ...)."""
    if not (run.path / "best.pt").is_file():
        notes.append("no best.pt in the run folder: the gallery has no heat maps")
        return None
    try:
        from zoo.report.explain import Explainer

        return Explainer(run.path)
    except InputError as exc:
        notes.append(f"no heat maps: {exc}")
        return None


def context(run: RunFolder, evaluation=None, gallery: int = GALLERY, heatmaps: bool = True) -> dict[str, Any]:
    """Everything the report's template shows."""
    from zoo.core.version import __version__

    notes: list[str] = []
    explainer = _explainer(run, notes) if heatmaps and gallery else None
    figures = sections.split_figures(run)
    if evaluation is not None:
        r = evaluation.report
        figures.insert(0, sections.SplitFigures(
            "data", f"on {evaluation.where} ({len(evaluation.predictions)} images)",
            {k: r[k] for k in ("acc", "balanced_acc", "macro_f1", "micro_f1", "map") if k in r}, r["per_class"],
            r.get("confusion_matrix"), evaluation.predictions,
        ))  # fmt: skip
    blocks = []
    for fig in figures:
        try:
            blocks.append(sections.figures_context(fig, gallery, explainer))
        except InputError as exc:  # Grad-CAM refused this backbone: the gallery without heat maps
            notes.append(f"no heat maps: {exc}")
            explainer = None
            blocks.append(sections.figures_context(fig, gallery, None))
    if explainer is not None and explainer.target is not None:
        notes.append(f"heat maps: Grad-CAM of the predicted class at {explainer.target.describe()}")
    if not any(b["has_predictions"] for b in blocks) and (run.summary or run.history):
        notes.append("this run folder has no per-image predictions (predictions-val.npz: written by runs of newer "
                     "zoo versions); `zoo report RUN DATA` evaluates best.pt on DATA for the gallery, the confusion "
                     "matrix and calibration")  # fmt: skip
    return {
        "zoo_version": __version__,
        "generated": time.strftime("%Y-%m-%d %H:%M:%S"),
        "run": sections.overview(run),
        "config": sections.config_rows(run),
        "data": sections.data_summary(run),
        "evaluated_skipped": evaluation.skipped if evaluation is not None else [],
        "curves": sections.curves(run.history, run.select_by),
        "figures": blocks,
        "exports": sections.exports(run),
        "notes": notes,
    }


def render(template: str, ctx: dict[str, Any]) -> str:
    return environment().get_template(template).render(**ctx)


def write_report(
    run: Path | str,
    data: Path | str | None = None,
    *,
    labels: Path | str | None = None,
    out: Path | str | None = None,
    gallery: int = GALLERY,
    heatmaps: bool = True,
    summary: dict[str, Any] | None = None,
) -> Written:
    """Write the report of a run folder (default RUN/report.html); with DATA, also its best checkpoint's figures on
    DATA. `summary`: summary.json's content when the caller has it before the file (the training loop).

    Example:
        >>> zoo.report.write_report("runs/resnet18-finetune").path
        PosixPath('runs/resnet18-finetune/report.html')
    """
    if not 0 <= gallery <= MAX_GALLERY:
        raise UsageError(f"--gallery {gallery}: from 0 to {MAX_GALLERY} images")
    folder = RunFolder.read(run)
    if summary is not None:
        folder = dataclasses.replace(folder, summary=summary)
    target = Path(out).expanduser() if out is not None else folder.path / REPORT_FILE
    if target.is_dir():
        raise OutputError(f"--out {target}: is a folder; name the .html file to write")
    evaluation = None
    if data is not None:
        from zoo.report.evaluate import evaluate_on

        evaluation = evaluate_on(folder.path, data, labels)
    ctx = context(folder, evaluation, gallery, heatmaps)
    html = render("report.html", ctx)
    try:
        atomic.write_text(target, html)
    except OSError as exc:
        raise OutputError(f"{target}: cannot write the report ({exc.strerror or exc})") from None
    ids = ["overview", "config", "data", "curves", *(f"figures-{b['key']}" for b in ctx["figures"])]
    ids += ["exports"] if ctx["exports"] else []
    return Written(target, len(html.encode("utf-8")), ids, ctx["notes"])
