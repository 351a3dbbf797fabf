"""How the CLI shows things: consoles, tables, JSON, and a fine-tuning run's events.

Results go to stdout, progress and diagnostics to stderr. User text (class names,
paths, policy names) is printed literally: the consoles interpret no markup and
no emoji codes. When stdout is not a terminal, lines are not wrapped.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from zoo.catalogue import events


class _Console(Console):
    def on_broken_pipe(self) -> None:
        """The reader of stdout went away (`zoo list | head -1`): as for any other write, the error goes to the
        one place that answers it (zoo.cli.app), not to rich's own exit code 1."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    terminal = stream.isatty()
    return _Console(
        stderr=stderr,
        markup=False,
        emoji=False,
        highlight=False,
        soft_wrap=True,
        width=None if terminal else 100_000,  # a pipe or a file gets whole lines, never wrapped at 80 columns
    )


console = _console(stderr=False)  # writes to whatever sys.stdout is at the time (rich looks it up)
err_console = _console(stderr=True)


def out(*parts: str | tuple[str, str]) -> None:
    """One line on stdout; a (text, style) part is styled, plain strings are printed literally."""
    console.print(Text.assemble(*parts))


def note(message: str) -> None:
    """One line on stderr."""
    err_console.print(Text(message))


def print_error(message: str) -> None:
    err_console.print(Text.assemble(("error:", "bold red"), " ", message))


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def print_table(table: Table, stderr: bool = False) -> None:
    (err_console if stderr else console).print(table)


def print_columns(title: str, columns: list[tuple[str, str]], rows: list[tuple[str, ...]]) -> None:
    """A plain aligned table (no box): thousands of rows in milliseconds, one line per row for grep and wc."""
    widths = [max([len(name), *(len(r[i]) for r in rows)]) for i, (name, _) in enumerate(columns)]

    aligns = [justify for _, justify in columns]

    def line(cells) -> str:
        padded = (c.rjust(w) if j == "right" else c.ljust(w) for c, w, j in zip(cells, widths, aligns, strict=True))
        return "  ".join(padded).rstrip()

    lines = [title, line([name for name, _ in columns]), *(line(r) for r in rows)]
    console.file.write("\n".join(lines) + "\n")


def table(title: str, columns: list[tuple[str, str]]) -> Table:
    """A table with (name, justify) columns."""
    t = Table(title=title, title_justify="left")
    for name, justify in columns:
        t.add_column(name, justify=justify, overflow="fold")
    return t


def test_line(test: dict[str, Any]) -> str:
    """The test split's figures, as `zoo finetune` prints them after training."""
    line = (
        f"test ({test['images']} images, evaluated once with the best checkpoint): acc {test['acc']:.4f}  "
        f"balanced acc {test['balanced_acc']:.4f}  macro-F1 {test['macro_f1']:.4f}"
    )
    if "micro_f1" in test:
        line += f"  micro-F1 {test['micro_f1']:.4f}"
    return line + f"  mAP {test['map']:.4f}"


def count(n: int | None) -> str:
    """12.3M, 45.6K: parameter counts for tables."""
    if not n:
        return "?"
    return f"{n / 1e6:.1f}M" if n >= 100_000 else f"{n / 1e3:.1f}K"


def check_table(title: str, checks) -> Table:
    """The per-batch comparison table of `zoo export`, `zoo verify` and `zoo import`."""
    labelled = len({c.output for c in checks}) > 1 or any(c.output != "logits" for c in checks)
    columns = [("inputs", "left")] if labelled else []
    agreement = f"{checks[0].agreement} agreement" if checks else "top-1 agreement"
    columns += [(c, "right") for c in ("batch", "shape", "max abs diff", "tolerance", agreement, "result")]
    t = table(title, columns)
    for c in checks:
        t.add_row(
            *([c.output] if labelled else []),
            str(c.batch),
            "x".join(map(str, c.torch_shape)),
            f"{c.max_abs_diff:.2e}",
            f"{c.atol:.1e}",
            f"{c.top1_agreement:.1%}",
            "ok" if not c.failures else "; ".join(c.failures),
        )
    return t


def show_prediction(r: dict[str, Any]) -> None:
    """One image's prediction on one line: its top k; multi-label: the labels over their thresholds first."""
    if "error" in r:
        out(f"{r['image']}: error: {r['error']}")
        return
    top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["top"])
    if "labels" in r:
        chosen = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in r["labels"]) or "no label"
        out(f"{r['image']}: ", (chosen, "bold"), f"  (top {len(r['top'])}: {top})")
    else:
        out(f"{r['image']}: {top}")


def show_predictions(rows) -> None:
    for r in rows:
        show_prediction(r)


class JsonList:
    """A JSON list on stdout, written item by item as rows arrive (so a long stream shows as it goes)."""

    def __init__(self):
        self.count = 0

    def write(self, rows) -> None:
        for r in rows:
            item = "\n".join("  " + line for line in json.dumps(r, indent=2, default=str).splitlines())
            sys.stdout.write(("[\n" if not self.count else ",\n") + item)
            self.count += 1

    def close(self) -> None:
        sys.stdout.write("\n]\n" if self.count else "[]\n")


def _new_progress():
    """A transient rich progress bar on stderr: the phase, the bar, done/total, the img/s, the time left."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())  # fmt: skip
    return Progress(*columns, console=err_console, transient=True)


@contextlib.contextmanager
def progress_bar(label: str, enabled: bool = True, unit: str | None = "img"):
    """A transient progress bar on stderr, when it is a terminal: yields `update(done, total, what=None)` (with the
    `unit`/s so far, and `what` is being done now beside the label), or None when there is no bar to draw."""
    if not (enabled and err_console.is_terminal):
        yield None
        return
    progress = _new_progress()
    task = progress.add_task(label, total=None, rate="")
    started = time.perf_counter()

    def update(done: int, total: int | None, what: str | None = None) -> None:
        rate = done / max(time.perf_counter() - started, 1e-9)
        shown = f"{rate:.1f} {unit}/s" if done and unit else ""
        progress.update(task, completed=done, total=total, rate=shown, description=f"{label} {what or ''}".rstrip())

    progress.start()
    try:
        yield update
    finally:
        progress.stop()


def _train_size(started: dict[str, Any]) -> str:
    """', training crops HxW' when they are not the model's input size."""
    size = started.get("train_size")
    return f" on {size[0]}x{size[1]} crops" if size and size != started.get("input_size") else ""


class RunRenderer:
    """A fine-tuning run's events as the CLI shows them: the plan table, progress bars, one line per epoch."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.phase = None

    def __call__(self, event: events.RunEvent) -> None:
        if self.quiet:
            return
        d = event.data
        if event.kind == events.PROGRESS:
            self._progress(d["phase"], d["done"], d["total"], d.get("rate"))
            return
        self._stop_progress()
        if event.kind == events.STARTED:
            self._started(d)
        elif event.kind == events.EPOCH_ENDED:
            note(events.epoch_text(d))
        elif event.kind == events.EARLY_STOPPED:
            note(f"early stop: no better {events.metric_name(d.get('metric', 'val_acc'))} for {d['patience']} epoch(s)")

    def _started(self, d: dict[str, Any]) -> None:
        t = table(
            f"{d['backbone']} · policy {d['policy']} · {d['weights']} weights",
            [("group", "left"), ("trains", "left"), ("lr", "right"), ("params", "right")],
        )
        for row in d["plan"]:
            t.add_row(
                row["group"],
                "yes" if row["trains"] else Text("frozen", style="dim"),
                f"{row['lr']:.2g}" if row["trains"] else "-",
                f"{row['params']:,}",
            )
        print_table(t, stderr=True)
        if d.get("auto"):
            auto = d["auto"]
            note(f"auto: {auto['quadrant']} -> --policy {auto['policy']}")
        manifest = d.get("manifest")
        if manifest:
            note(f"manifest {manifest['file']}: {'; '.join(manifest['how'])}")
        test = f" / {d['test_images']} test" if d.get("test_images") else ""
        skipped = f"{d['skipped']} file(s) skipped"
        if manifest:
            skipped = f"{manifest['bad_rows']} of {manifest['rows']} row(s) skipped"
        note(
            f"data: {d['train_images']} train / {d['val_images']} val{test} images, {d['classes']} classes "
            f"({d['layout']}, {d.get('task', 'single-label')}); smallest class {d['smallest_class']}; {skipped}; "
            f"augment {d['augment']}{_train_size(d)}; device {d['device']}; batch {d['batch_size']}"
            + (
                f" x {d['accum_steps']} accumulated steps = {d['batch_size'] * d['accum_steps']} images per optimizer "
                "step"
                if d.get("accum_steps", 1) > 1
                else ""
            )
            + (f"; gradients clipped to norm {d['clip_grad']:g}" if d.get("clip_grad") is not None else "")
            + (f"; resuming after epoch {d['start_epoch']}" if d.get("start_epoch") else "")
        )
        if d.get("mix"):
            note(f"{d['mix']}; the frozen-prefix cache is off: the features of a mixed image are not the mix of "
                 "its two images' features")  # fmt: skip
        if d.get("lr_find"):
            f = d["lr_find"]
            note(f"lr auto: the LR range test ({f['steps']} steps, {f['stopped']}) suggests {f['suggestion']:.3g}: "
                 f"{f['rule']}; lr_find.png in the run folder")  # fmt: skip
        if d.get("ema"):
            note(f"ema {d['ema']:g}: the moving average of the weights is evaluated, kept as best and exported")
        if d.get("balance"):
            b = d["balance"]
            note(f"balance {b['mode']}: {b['reason']}; best epoch by val {d.get('select_by', 'acc')}")

    def _progress(self, phase: str, done: int, total: int, rate: float | None) -> None:
        if not err_console.is_terminal:
            return
        if self.progress is None or self.phase != phase:
            self._stop_progress()
            self.progress = _new_progress()
            self.progress.start()
            self.task = self.progress.add_task(phase, total=total, rate="")
            self.phase = phase
        self.progress.update(self.task, completed=done, total=total, rate=f"{rate:.1f} img/s" if rate else "")

    def _stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.phase = None

    def close(self) -> None:
        self._stop_progress()
