"""`zoo serve`: an exported model over HTTP (Open Inference Protocol v2 REST, `POST /predict`, Prometheus metrics)."""

from __future__ import annotations

from typing import Annotated

import typer

from zoo.cli.app import app
from zoo.cli.options import with_options
from zoo.cli.render import note, out
from zoo.serve.options import ServeOptions


@app.command()
@with_options(ServeOptions)
def serve(model: Annotated[str, typer.Argument(help="An exported model.onnx.")], **options):
    """Serve an exported model over HTTP, with dynamic batching: Open Inference Protocol (KServe v2) REST endpoints,
    POST /predict for image files, health, readiness and Prometheus metrics. SIGTERM or Ctrl-C: the requests in
    flight finish first."""
    from zoo.serve.app import open_server

    server = open_server(model, ServeOptions(**options))
    out(("serving", "bold"), f" {server.model} as '{server.name}' on {server.url}")
    note(f"endpoints: POST /predict (image files), POST /v2/models/{server.name}/infer, GET /metrics, GET /v2/...")
    server.run()
