"""zoo-mlflow: every zoo run, tracked in MLflow, through zoo's `on_run_event` hook.

Active when MLflow is told where to track: `MLFLOW_TRACKING_URI` (MLflow's own variable: `sqlite:///mlflow.db`,
`http://server:5000`, `databricks`, ...); `ZOO_MLFLOW=0` turns it off. The experiment is
`MLFLOW_EXPERIMENT_NAME`, else "zoo". For each run:

- started: an MLflow run named after the run folder; params = the run's config.json (every option, as the
  run resolved it), tags = backbone, policy, weights, plugin, zoo.run_dir; the MLflow run id goes into the run
  folder's `mlflow.json`, so a resumed run and a later `zoo export` log into the same MLflow run;
- every epoch: its figures as metrics, at step = epoch;
- best improved: `best_<metric>` and `best_epoch`;
- finished: summary.json, metrics.csv, config.json and the plots as artefacts, the test split's figures as
  `test_*` metrics, status FINISHED; interrupted or diverged: status KILLED or FAILED (resume continues it);
- exported (`zoo export RUN`): the verified ONNX model, its report and any INT8 model under `onnx/`, and the
  check's figures as metrics.

A tracking failure never stops a run: it is one warning line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from zoo import hookimpl

log = logging.getLogger("zoo.mlflow")
RUN_FILE = "mlflow.json"
ARTEFACTS = ("summary.json", "metrics.csv", "config.json", "lr_find.json")


def enabled() -> bool:
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) and os.environ.get("ZOO_MLFLOW", "1") != "0"


@hookimpl
def on_run_event(event) -> None:
    if not enabled() or not event.run_dir:
        return
    try:
        _handle(event)
    except Exception as exc:  # tracking must never lose a run
        log.warning("zoo-mlflow: could not log %s to %s: %s: %s", event.kind, os.environ["MLFLOW_TRACKING_URI"],
                    type(exc).__name__, exc)  # fmt: skip


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()  # MLFLOW_TRACKING_URI, MLflow's own rules


def _run_id(run_dir: Path) -> str | None:
    path = run_dir / RUN_FILE
    return json.loads(path.read_text())["run_id"] if path.is_file() else None


def _handle(event) -> None:
    run_dir, data, kind = Path(event.run_dir), event.data, event.kind
    client = _client()
    run_id = _run_id(run_dir)
    if kind == "started":
        if run_id is None:  # a new run; a resumed one logs into the MLflow run it started
            run_id = _start(client, run_dir, data)
        else:
            client.update_run(run_id, status="RUNNING")
        return
    if run_id is None:
        return
    if kind == "epoch_ended":
        row = data["row"]
        step = int(row["epoch"])
        for key, value in row.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                client.log_metric(run_id, key, float(value), step=step)
    elif kind == "best_improved":
        client.log_metric(run_id, f"best_{data['metric']}", float(data["value"]), step=int(data["epoch"]))
        client.log_metric(run_id, "best_epoch", int(data["epoch"]), step=int(data["epoch"]))
    elif kind == "finished":
        summary = data.get("summary") or {}
        for key, value in (summary.get("test") or {}).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                client.log_metric(run_id, f"test_{key}", float(value))
        for name in ARTEFACTS:
            if (run_dir / name).is_file():
                client.log_artifact(run_id, str(run_dir / name))
        for png in sorted(run_dir.glob("*.png")):
            client.log_artifact(run_id, str(png), "plots")
        client.set_terminated(run_id, "FINISHED")
    elif kind == "interrupted":
        client.set_terminated(run_id, "FAILED" if data.get("status") == "diverged" else "KILLED")
    elif kind == "exported":
        path, report = Path(data["path"]), data.get("report") or {}
        client.log_artifact(run_id, str(path), "onnx")
        for extra in (Path(report.get("report_path") or ""), *path.parent.glob(f"{path.stem}.int8.onnx")):
            if extra.name and extra.is_file():
                client.log_artifact(run_id, str(extra), "onnx")
        checks = report.get("checks") or []
        if checks:
            client.log_metric(run_id, "export_top1_agreement", min(c["top1_agreement"] for c in checks))
            client.log_metric(run_id, "export_max_abs_diff", max(c["max_abs_diff"] for c in checks))
        client.set_tag(run_id, "zoo.exported", str(path))


def _start(client, run_dir: Path, data: dict[str, Any]) -> str:
    import mlflow

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "zoo"
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
    tags = {"zoo.run_dir": str(run_dir), "mlflow.runName": run_dir.name}
    for key in ("backbone", "policy", "weights"):
        if data.get(key):
            tags[f"zoo.{key}"] = str(data[key])
    run = client.create_run(experiment_id, run_name=run_dir.name, tags=tags)
    config = json.loads((run_dir / "config.json").read_text()) if (run_dir / "config.json").is_file() else {}
    params = [mlflow.entities.Param(k, str(v)[:6000]) for k, v in sorted(config.items()) if v is not None]
    client.log_batch(run.info.run_id, params=params)
    tmp = run_dir / f".{RUN_FILE}.tmp"
    tmp.write_text(json.dumps({"run_id": run.info.run_id, "tracking_uri": mlflow.get_tracking_uri()}) + "\n")
    tmp.replace(run_dir / RUN_FILE)
    return run.info.run_id
