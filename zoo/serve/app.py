"""`zoo serve MODEL.onnx`: an exported model over HTTP, on uvicorn and starlette.

Endpoints: the Open Inference Protocol (KServe v2) REST API for the model (`/v2`, health,
readiness, model metadata, `POST /v2/models/NAME/infer`), `POST /predict` for image files
(the rows of `zoo predict --json`), and Prometheus metrics at `/metrics`. Every image,
whichever endpoint brought it, goes through one `Batcher` into one onnxruntime session.

Limits (`ServeOptions`): the request body (413), an image's pixels, read from its header
before it is decoded (413), and the requests admitted at once (503 with Retry-After
beyond). Every error is JSON, `{"error": "..."}`; nothing a client sends stops the
server. On SIGTERM uvicorn stops accepting, the requests in flight finish, then the
batcher drains and stops.
"""

from __future__ import annotations

try:
    import prometheus_client as prom
    import python_multipart  # noqa: F401  (starlette parses multipart forms with it)
    import uvicorn
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.middleware import Middleware
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ModuleNotFoundError as exc:
    from zoo.core.errors import EnvironmentProblem

    raise EnvironmentProblem(
        f"zoo serve needs {exc.name}, which is not installed: add the serve extra, from zoo's folder: "
        "pip install -c constraints.txt -e '.[serve]'"
    ) from None

import asyncio
import contextlib
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from zoo.core.errors import EnvironmentProblem, UsageError, ZooError
from zoo.core.version import __version__
from zoo.runtime import DEFAULT_TOP_K
from zoo.runtime.predictions import probabilities, results
from zoo.runtime.predictor import Predictor
from zoo.serve.batcher import Batcher, BatcherStopped
from zoo.serve.inputs import MAX_IMAGES, Tensor, decode_image, infer_request
from zoo.serve.middleware import CountRequests, LimitBody, Metrics
from zoo.serve.options import ServeOptions

RETRY_AFTER_S = 1  # what a refused client is told to wait: the queue turns over in well under a second
EXTENSIONS = ("binary_tensor_data", "model_configuration")  # of the Open Inference Protocol, as Triton names them
RECEIVING_FACTOR = 4  # request bodies arriving at once, per place of --max-queue


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = exc.detail
    if exc.status_code == 404 and "route" not in request.scope:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}"
    return _error(exc.status_code, message, exc.headers)


async def _zoo_error(request: Request, exc: ZooError) -> Response:
    return _error(400 if isinstance(exc, UsageError) else 500, str(exc))


async def _client_left(request: Request, exc: ClientDisconnect) -> Response:
    return Response(status_code=499)  # nginx's "client closed request": nobody reads it, the metrics count it


async def _internal_error(request: Request, exc: Exception) -> Response:
    return _error(500, f"internal error: {type(exc).__name__}: {str(exc)[:200]}")


def create_app(predictor: Predictor, options: ServeOptions | None = None) -> Starlette:
    """The ASGI app serving `predictor` as `options.name` (default: its file's stem); its lifespan runs the batcher."""
    options = options or ServeOptions()
    if predictor.embedded:
        raise UsageError(
            f"{predictor.path}: exported with --embed-preprocessing (raw pixels in); zoo serve preprocesses uploads "
            "itself: serve a model exported without it"
        )
    service = _Service(predictor, options)
    app = Starlette(
        routes=service.routes(),
        middleware=[
            Middleware(CountRequests, metrics=service.metrics),
            Middleware(LimitBody, max_bytes=options.max_request_bytes),
        ],
        exception_handlers={
            HTTPException: _http_error,
            ZooError: _zoo_error,
            ClientDisconnect: _client_left,
            Exception: _internal_error,
        },
        lifespan=service.lifespan,
    )
    app.state.batcher, app.state.metrics, app.state.model_name = service.batcher, service.metrics, service.name
    return app


class _Service:
    """What the endpoints share: the model and what it takes, the batcher, the metrics, the limits and the requests
    in flight; one method per endpoint, the lifespan that runs the batcher."""

    def __init__(self, predictor: Predictor, options: ServeOptions) -> None:
        self.options = options
        self.name = options.name or predictor.path.stem
        self.info = info = predictor.info
        self.model_input = Tensor.of(predictor.session.get_inputs()[0])
        self.model_output = Tensor.of(predictor.session.get_outputs()[0])
        self.image_shape = (info.preprocess.channels, *info.preprocess.input_size)
        self.labels, self.multi = list(info.labels), info.multi_label
        self.in_flight, self.is_ready = 0, False
        self.receiving = 0  # request bodies still arriving
        self.batcher = Batcher(predictor.logits, options.max_batch_size, options.max_queue_delay_ms / 1000)
        self.metrics = Metrics(self.batcher, lambda: self.in_flight)
        self.batcher.on_batch = self.metrics.batch
        self.decoder = ThreadPoolExecutor(options.decode_threads, thread_name_prefix="zoo-decode")

    def routes(self) -> list[Route]:
        return [
            Route("/v2", self.server_metadata),
            Route("/v2/health/live", self.live),
            Route("/v2/health/ready", self.ready),
            Route("/v2/models/{model}", self.model_metadata),
            Route("/v2/models/{model}/ready", self.model_ready),
            Route("/v2/models/{model}/config", self.model_config),
            Route("/v2/models/{model}/infer", self.infer, methods=["POST"]),
            Route("/predict", self.predict, methods=["POST"]),
            Route("/metrics", self.metrics_page),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app):
        await self.batcher.start()
        self.is_ready = True
        try:
            yield
        finally:
            self.is_ready = False
            await self.batcher.stop()  # uvicorn let the requests in flight finish first; whatever is queued runs
            self.decoder.shutdown(wait=True)

    # what the endpoints share

    @contextlib.contextmanager
    def admitted(self):
        """One more request in flight, or a 503 beyond --max-queue."""
        if self.in_flight >= self.options.max_queue:
            raise HTTPException(
                503, f"busy: {self.options.max_queue} requests in flight (--max-queue); retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1

    async def received(self, read):
        """The request body read by `read` (a coroutine), within --body-timeout (408 beyond). A body that is still
        arriving is not in flight; at most RECEIVING_FACTOR x --max-queue of them at once (503 beyond), so slow
        clients hold neither the admitted places nor unbounded memory."""
        if self.receiving >= RECEIVING_FACTOR * self.options.max_queue:
            read.close()
            raise HTTPException(
                503, f"busy: {self.receiving} request bodies arriving; retry later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            )  # fmt: skip
        self.receiving += 1
        try:
            return await asyncio.wait_for(read, self.options.body_timeout)
        except TimeoutError:
            raise HTTPException(
                408, f"the request body did not arrive within {self.options.body_timeout:g} s (--body-timeout)"
            ) from None
        finally:
            self.receiving -= 1

    async def in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.decoder, fn, *args)

    async def run_model(self, arrays) -> np.ndarray:
        try:
            return await self.batcher.submit(arrays)
        except BatcherStopped as exc:
            raise HTTPException(503, str(exc), headers={"Retry-After": str(RETRY_AFTER_S)}) from None

    def check_model(self, request: Request) -> None:
        asked = request.path_params["model"]
        if asked != self.name:
            raise HTTPException(404, f"unknown model {asked!r}; this server has {self.name!r}")

    # the Open Inference Protocol (KServe v2)

    async def server_metadata(self, request: Request) -> Response:
        return JSONResponse({"name": "zoo", "version": __version__, "extensions": list(EXTENSIONS)})

    async def live(self, request: Request) -> Response:
        return JSONResponse({"live": True})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"ready": self.is_ready}, status_code=200 if self.is_ready else 503)

    async def model_metadata(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse({
            "name": self.name, "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [self.model_input.to_dict()], "outputs": [self.model_output.to_dict()],
        })  # fmt: skip

    async def model_config(self, request: Request) -> Response:
        """The model configuration extension, as Triton's model config (what `get_model_config` reads)."""
        self.check_model(request)

        def tensor(t: Tensor, dims) -> dict:
            return {"name": t.name, "data_type": f"TYPE_{t.datatype}", "dims": list(dims)}

        return JSONResponse({
            "name": self.name, "platform": "onnxruntime_onnx", "backend": "onnxruntime",
            "max_batch_size": MAX_IMAGES, "input": [{**tensor(self.model_input, self.image_shape),
                                                     "format": "FORMAT_NCHW"}],
            "output": [tensor(self.model_output, self.model_output.shape[1:])],
        })  # fmt: skip

    async def model_ready(self, request: Request) -> Response:
        self.check_model(request)
        return JSONResponse({"name": self.name, "ready": self.is_ready}, status_code=200 if self.is_ready else 503)

    async def infer(self, request: Request) -> Response:
        self.check_model(request)
        header = request.headers.get("inference-header-content-length")
        if header is not None and not header.isdigit():
            raise HTTPException(400, f"Inference-Header-Content-Length {header!r}: a whole number of bytes")
        body = await self.received(request.body())
        with self.admitted():
            request_id, batch, binary = await self.in_thread(
                infer_request, body, self.model_input, self.model_output, self.image_shape,
                int(header) if header is not None else None,
            )  # fmt: skip
            logits = await self.run_model(list(batch))
        answer = {"model_name": self.name, "model_version": "1"}
        if request_id is not None:
            answer["id"] = request_id
        output = {"name": self.model_output.name, "datatype": "FP32", "shape": list(logits.shape)}
        if not binary:
            return JSONResponse({**answer, "outputs": [{**output, "data": logits.ravel().tolist()}]})
        data = np.ascontiguousarray(logits, dtype="<f4").tobytes()  # the binary tensor data extension
        head = json.dumps({**answer, "outputs": [{**output, "parameters": {"binary_data_size": len(data)}}]}).encode()
        return Response(head + data, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})  # fmt: skip

    # zoo's own

    async def predict(self, request: Request) -> Response:
        """Multipart image files (field `file` or `files`), `?top_k=` (default as `zoo predict`)."""
        top_k = request.query_params.get("top_k", str(DEFAULT_TOP_K))
        if not top_k.isdigit() or int(top_k) < 1:
            raise HTTPException(400, f"top_k {top_k!r}: a whole number >= 1")
        names, datas = await self.received(_uploads(request))
        with self.admitted():
            arrays = await asyncio.gather(
                *(
                    self.in_thread(decode_image, d, n, self.info, self.options.max_image_pixels)
                    for d, n in zip(datas, names, strict=True)
                )
            )
            logits = await self.run_model(arrays)
        probs = probabilities(logits, self.multi)
        return JSONResponse(results(names, probs, self.labels, int(top_k), self.info.thresholds))

    async def metrics_page(self, request: Request) -> Response:
        return Response(prom.generate_latest(self.metrics.registry), media_type=prom.CONTENT_TYPE_LATEST)


async def _uploads(request: Request) -> tuple[list[str], list[bytes]]:
    """The names and bytes of a multipart form's image files (field `file` or `files`); a 400 for none or a text
    value."""
    async with request.form(max_files=MAX_IMAGES, max_fields=MAX_IMAGES) as form:
        uploads = [(key, value) for key, value in form.multi_items() if key in ("file", "files")]
        if not uploads:
            raise HTTPException(
                400, "no image: send multipart/form-data with one or more files in the field 'file' or 'files'"
            )
        for key, value in uploads:
            if isinstance(value, str):
                raise HTTPException(400, f"field {key!r}: a file upload, not a text value")
        names = [upload.filename or f"{key}{i}" for i, (key, upload) in enumerate(uploads)]
        datas = [await upload.read() for _, upload in uploads]
    return names, datas


class Server:
    """A bound socket and uvicorn over the app: `url` is known before `run()` blocks until SIGTERM or Ctrl-C."""

    def __init__(self, app: Starlette, model: Path, options: ServeOptions) -> None:
        self.app, self.model, self.name = app, model, app.state.model_name
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets; without it every answer waits
        # 40 ms for the client's delayed ACK (Nagle)
        self.socket = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((options.host, options.port))
        except OSError as exc:
            self.socket.close()
            raise EnvironmentProblem(f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}") from None
        host, port = self.socket.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if family == socket.AF_INET6 else host}:{port}"
        config = uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="on",
            timeout_graceful_shutdown=options.shutdown_timeout,
        )  # fmt: skip
        self.uvicorn = uvicorn.Server(config)

    def run(self) -> None:
        self.uvicorn.run(sockets=[self.socket])


def open_server(model: str | Path, options: ServeOptions) -> Server:
    """Check the options, load and warm up the model, bind the port: every mistake is raised before serving."""
    options.check()
    predictor = Predictor(model, options.onnxruntime_threads, provider=options.provider)
    app = create_app(predictor, options)  # refuses a model it cannot serve before any work
    pre = predictor.info.preprocess
    # the first call allocates: slow for a client, so the server makes it
    predictor.logits(np.zeros((1, pre.channels, *pre.input_size), np.float32))
    return Server(app, Path(model), options)
