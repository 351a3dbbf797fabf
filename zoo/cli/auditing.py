"""`zoo audit`: duplicates, leakage, likely label errors, outliers and image issues of a dataset, before training."""

from __future__ import annotations

import shlex
from typing import Annotated

import typer

from zoo.cli.app import DataArgument, JsonFlag, app
from zoo.cli.options import FlagValueCommand, as_flags, with_options
from zoo.cli.render import note, out, print_json, print_table, progress_bar, table
from zoo.training.config import MANIFEST_OPTIONS, TrainConfig

TOP = 10  # suspected label errors shown in the terminal; audit.csv and audit.html have them all


def show_audit(audit, folder) -> None:
    counts = audit.counts()
    t = table(
        f"{audit.images} images of {audit.data}, {len(audit.classes)} {'labels' if audit.multi_label else 'classes'};"
        f" {'features of ' + audit.model if audit.model else 'pixels only'}",
        [("issue", "left"), ("files", "right"), ("what", "left")],
    )
    what = {
        "exact-duplicate": f"copies with the same pixels ({sum(g.kind == 'exact' for g in audit.groups)} groups)",
        "near-duplicate": "resized, re-encoded or cropped copies",
        "label-error": "the out-of-fold probe disagrees with the label",
        "outlier": "far from every class in feature space",
        "too-small": "upscaled over 2x to the model's input, and under half the data's median size",
        "odd-aspect-ratio": "long side over 3x the short side",
        "blank": "near-constant pixels",
        "unreadable": "skipped by the scan",
    }
    for kind, n in counts.items():
        t.add_row(kind, str(n), what[kind])
    print_table(t)
    if audit.leakage:
        leak = table("duplicate groups across splits (leakage)", [("splits", "left"), ("groups", "right"),
                     ("images in the later split", "right")])  # fmt: skip
        for pair, v in sorted(audit.leakage.items()):
            leak.add_row(pair.replace("-", " / "), str(v["groups"]), str(v["images"]))
        print_table(leak)
        out(f"{audit.exact_leaks} val/test image(s) have the same pixels as an image of an earlier split")
    conflicting = sum(g.conflicting for g in audit.groups)
    if conflicting:
        out(f"{conflicting} duplicate group(s) carry different labels")
    errors = sorted(audit.of("label-error"), key=lambda f: -f.score)
    if errors:
        top = table(f"most likely label errors (top {min(TOP, len(errors))} of {len(errors)})",
                    [("score", "right"), ("file", "left"), ("split", "left"), ("given", "left"),
                     ("suggested", "left")])  # fmt: skip
        for f in errors[:TOP]:
            top.add_row(f"{f.score:.3f}", f.path, f.split or "", f.label or "", f.suggested or "")
        print_table(top)
    for line in audit.notes:
        note(line)
    seconds = ", ".join(f"{k} {v:.1f}" for k, v in audit.seconds.items() if k != "total")
    out(f"audit.json, audit.csv, audit.html: {folder} ({audit.seconds.get('total', 0):.1f} s: {seconds})")


def fix_mmap_threshold() -> None:
    """glibc raises its mmap threshold as large blocks are freed; then onnxruntime's activation buffers and the
    torch tensors computed from them share the heap and fragment it. Measured here on 32,000 images: feature
    extraction grew by about 20 MB/s to 15 GB at the end of a 40,000-image audit; with the threshold fixed at
    128 KiB (large blocks always mapped, and unmapped when freed) it stays at 1.1 GB. This command's process is
    zoo's own, so the setting is made here; elsewhere (musl, macOS) there is nothing to set."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        ctypes.CDLL(name).mallopt(-3, 128 * 1024)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError, TypeError):
        pass


@app.command(cls=FlagValueCommand)
@with_options(TrainConfig, only=MANIFEST_OPTIONS)
def audit(
    data: DataArgument,
    model: Annotated[
        str | None,
        typer.Option(
            help="Backbone whose pretrained features find label errors, outliers and cropped copies; 'none': pixel "
            "checks only [default: the smallest backbone whose pretrained weights are at hand].",
            show_default=False,
        ),
    ] = None,
    fix_manifest: Annotated[
        str | None,
        typer.Option(help="Also write a manifest (OUT.csv) without the cross-split copies, flagged rows marked."),
    ] = None,
    val_fraction: Annotated[float, typer.Option(help="As for finetune: how DATA without val/ is split.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the split and of the probe's folds.")] = 0,
    out_dir: Annotated[str, typer.Option("--out", help="Folder for the audit's folder (audit-DATA).")] = "runs",
    name: Annotated[str | None, typer.Option(help="The audit folder's name [default: audit-DATA].")] = None,
    cache: Annotated[bool, typer.Option(help="Reuse and keep features per backbone and data ($ZOO_HOME/cache).")] = (
        True
    ),
    as_json: JsonFlag = False,
    **options,
):
    """Find what is wrong with DATA before training: exact and near-duplicates (and which cross splits or carry
    different labels), likely label errors, outliers, images too small, oddly shaped or blank, unreadable files.
    Writes audit.json, audit.csv (`zoo finetune --exclude-from audit.csv`) and audit.html; never changes DATA."""
    from pathlib import Path

    from zoo.data.split import manifest_options
    from zoo.select.audit import audit as run_audit
    from zoo.select.audit_output import check_fix_manifest, needs_single_label, write_audit
    from zoo.select.audit_output import fix_manifest as write_fix
    from zoo.training.runs import new_run_dir

    fix_path = check_fix_manifest(fix_manifest, data, options["labels"]) if fix_manifest else None
    if model != "none":
        fix_mmap_threshold()
    folder = new_run_dir(out_dir, name, "audit", Path(data).stem or "data")
    try:
        with progress_bar("auditing", enabled=not as_json, unit=None) as update:
            progress = (lambda phase: update(0, None, phase)) if update else None
            result = run_audit(data, model=model, labels=options["labels"], options=manifest_options(options),
                               val_fraction=val_fraction, seed=seed, use_cache=cache, progress=progress)  # fmt: skip
    except BaseException:
        _remove_if_empty(folder)
        raise
    write_audit(result, folder)
    fixed = write_fix(result, fix_path) if fix_path else None
    if as_json:
        print_json(result.to_dict() | {"folder": str(folder), "fix_manifest": fixed and {"file": str(fix_path),
                                                                                          **fixed}})  # fmt: skip
        return
    show_audit(result, folder)
    manifest = " ".join(as_flags(TrainConfig, {k: options[k] for k in MANIFEST_OPTIONS}))
    if fixed:
        flags = " --multi-label" if result.multi_label else " --no-multi-label" if needs_single_label(result) else ""
        out(f"{fix_path}: {fixed['rows']} rows, {fixed['left_out']} cross-split copies left out, "
            f"{fixed['marked']} marked in its audit column")  # fmt: skip
        out("next: ", (f"zoo finetune MODEL {shlex.quote(str(fix_path))}{flags}", "bold"))
    elif result.findings:
        command = f"zoo finetune MODEL {shlex.quote(data)}" + (f" {manifest}" if manifest else "")
        out("next: ", (f"{command} --exclude-from {shlex.quote(str(folder / 'audit.csv'))}", "bold"),
            " (delete the rows of audit.csv to keep first)")  # fmt: skip


def _remove_if_empty(folder) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
