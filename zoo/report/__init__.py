"""Looking at runs: the HTML report of a run (`zoo report`), the list and comparison of runs (`zoo runs`), and
Grad-CAM explanations of predictions (`zoo explain`).

Everything here reads what a run folder holds (config.json, metrics.csv, summary.json, the per-image predictions
`predictions-val.npz` / `predictions-test.npz`, export reports, and best.pt for explanations), never a live
trainer, so it works on folders from older versions and other machines. The training loop calls
`write_report` at the end of a run and writes the predictions files through `predictions` (the one definition of
their format), which is why this folder sits below training and never imports it.

Imports zoo.model, zoo.data, zoo.runtime, zoo.catalogue and zoo.core; never zoo.training, zoo.export or zoo.serve.
"""

from __future__ import annotations

__all__ = ["compare_runs", "list_runs", "write_report"]  # and zoo.report.explain.explain


def __getattr__(name: str):
    """The public functions load on first use: the training loop imports `zoo.report.predictions` alone."""
    if name == "write_report":
        from zoo.report.page import write_report

        return write_report
    if name in ("list_runs", "compare_runs"):
        from zoo.report import runs

        return getattr(runs, name)
    raise AttributeError(f"module 'zoo.report' has no attribute '{name}'")
