"""`zoo serve`: the Open Inference Protocol endpoints, POST /predict, limits, metrics, the batcher, and a real
uvicorn server under a flood, a client that leaves, and SIGTERM with a request in flight."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from conftest import build_tiny, make_images, tiny_spec
from zoo.cli import app as cli
from zoo.runtime.predictor import Predictor
from zoo.serve.app import create_app
from zoo.serve.batcher import Batcher, BatcherStopped
from zoo.serve.options import ServeOptions

runner = CliRunner()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """The tiny backbone with two labels, exported and verified by zoo's exporter."""
    import torch

    from zoo.export.exporter import export_model

    root = tmp_path_factory.mktemp("serve")
    spec = tiny_spec()
    torch.manual_seed(0)
    report = export_model(
        build_tiny(spec, num_classes=2), spec, spec.preprocess, ["ants", "bees"], root / "tiny.onnx",
        exporter="torchscript",
    )  # fmt: skip
    assert report.passed
    return root / "tiny.onnx"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = make_images(tmp_path_factory.mktemp("images"), per_class=2, size=48, ext=".jpg")
    return sorted(root.glob("*/*.jpg"))


def serving(model, **options) -> TestClient:
    return TestClient(create_app(Predictor(model), ServeOptions(**options)))


def upload(path, field="file"):
    return (field, (path.name, path.read_bytes(), "image/jpeg"))


def infer_body(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
            **extra}  # fmt: skip


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares its size and holds no pixels: only a header check can judge it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


def test_open_inference_protocol_metadata_health_and_readiness(model):
    with serving(model) as client:
        assert client.get("/v2").json()["name"] == "zoo"
        assert client.get("/v2/health/live").json() == {"live": True}
        assert client.get("/v2/health/ready").json() == {"ready": True}
        meta = client.get("/v2/models/tiny").json()
        assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
        assert meta["outputs"][0]["datatype"] == "FP32" and meta["outputs"][0]["shape"] == [-1, 2]
        assert client.get("/v2/models/tiny/ready").json() == {"name": "tiny", "ready": True}
        missing = client.get("/v2/models/other")
        assert missing.status_code == 404 and "this server has 'tiny'" in missing.json()["error"]


def test_predict_gives_the_rows_of_zoo_predict(model, images):
    expected = Predictor(model).predict(images[:3], top_k=2)
    with serving(model) as client:
        response = client.post("/predict?top_k=2", files=[upload(images[0]), upload(images[1], "files"),
                                                          upload(images[2], "files")])  # fmt: skip
    assert response.status_code == 200
    for got, want in zip(response.json(), expected, strict=True):
        assert got["image"] == images[[str(p) for p in images].index(want["image"])].name
        assert got["top"] == want["top"]


def test_v2_infer_returns_the_logits_and_echoes_the_id(model, images):
    predictor = Predictor(model)
    x = np.stack([predictor.load(p) for p in images[:2]])
    with serving(model, name="ants-bees") as client:
        response = client.post("/v2/models/ants-bees/infer", json=infer_body(x, id="req-7"))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == "req-7" and body["model_name"] == "ants-bees"
    out = body["outputs"][0]
    assert out["shape"] == [2, 2] and out["datatype"] == "FP32"
    np.testing.assert_allclose(np.array(out["data"]).reshape(2, 2), predictor.logits(x), atol=1e-5)


def half_jpeg() -> bytes:
    """A JPEG cut in half: its header reads, its pixels do not."""
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


IMAGE = np.zeros((1, 3, 32, 32), np.float32)
HALF_JPEG = half_jpeg()
BINARY_HEAD = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                      "parameters": {"binary_data_size": 8}}]}).encode()  # fmt: skip
BAD = [
    # (what, request kwargs for client.post, path, status, words in the error)
    ("malformed JSON", {"content": b'{"inputs": [}'}, "/v2/models/tiny/infer", 400, "malformed JSON"),
    ("deep JSON", {"content": b"[" * 100_000}, "/v2/models/tiny/infer", 400, "malformed JSON"),
    ("not an object", {"json": [1, 2]}, "/v2/models/tiny/infer", 400, "'inputs' list"),
    ("two inputs", {"json": {"inputs": [{}, {}]}}, "/v2/models/tiny/infer", 400, "one input"),
    ("wrong name", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "name": "x"}]}},
     "/v2/models/tiny/infer", 400, "input is 'input'"),
    ("INT8 data", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "datatype": "INT8"}]}},
     "/v2/models/tiny/infer", 400, "FP32"),
    ("wrong shape", {"json": infer_body(np.zeros((1, 3, 16, 16), np.float32))}, "/v2/models/tiny/infer", 400,
     "[-1, 3, 32, 32]"),
    ("too few values", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "data": [1.0, 2.0]}]}},
     "/v2/models/tiny/infer", 400, "2 values"),
    ("text values", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "data": ["a"] * 3072}]}},
     "/v2/models/tiny/infer", 400, "not a list of numbers"),
    ("ragged values", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "data": [[1.0], [1.0, 2.0]]}]}},
     "/v2/models/tiny/infer", 400, "not a list of numbers"),
    ("number strings", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "data": ["0.5"] * 3072}]}},
     "/v2/models/tiny/infer", 400, "holds strings"),
    ("booleans", {"json": {"inputs": [{**infer_body(IMAGE)["inputs"][0], "data": [True] * 3072}]}},
     "/v2/models/tiny/infer", 400, "holds booleans"),
    ("batch of 0", {"json": infer_body(np.zeros((0, 3, 32, 32), np.float32))}, "/v2/models/tiny/infer", 400,
     "N must be"),
    ("unknown output", {"json": infer_body(IMAGE, outputs=[{"name": "probs"}])}, "/v2/models/tiny/infer", 400,
     "output is"),
    ("non-image upload", {"files": [("file", ("notes.txt", b"hello", "text/plain"))]}, "/predict", 415, "notes.txt"),
    ("JPEG signature only", {"files": [("file", ("cut.jpg", b"\xff\xd8\xff\xe0" + b"\0" * 40, "image/jpeg"))]},
     "/predict", 415, "cut.jpg"),
    ("50-megapixel header", {"files": [("file", ("huge.png", png_header(10_000, 5_000), "image/png"))]},
     "/predict", 413, "50.0 megapixels"),
    ("a text field", {"data": {"file": "ants.jpg"}}, "/predict", 400, "a file upload"),
    ("truncated image data", {"files": [("file", ("half.jpg", HALF_JPEG, "image/jpeg"))]}, "/predict", 400,
     "half.jpg: cannot decode"),
    ("no file", {"content": b""}, "/predict", 400, "no image"),
    ("broken multipart", {"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=x"}},
     "/predict", 400, ""),
    ("top_k 0", {"files": [("file", ("a.png", png_header(8, 8), "image/png"))], "params": {"top_k": "0"}},
     "/predict", 400, "top_k"),
    ("binary data size", {"content": BINARY_HEAD + b"\0" * 8,
                          "headers": {"Inference-Header-Content-Length": str(len(BINARY_HEAD))}},
     "/v2/models/tiny/infer", 400, "bytes for FP32 shape"),
    ("binary header length", {"content": b"{}", "headers": {"Inference-Header-Content-Length": "50"}},
     "/v2/models/tiny/infer", 400, "the body has 2 bytes"),
    ("unknown model", {"json": infer_body(IMAGE)}, "/v2/models/nope/infer", 404, "unknown model"),
    ("unknown endpoint", {"json": {}}, "/v1/models/tiny:predict", 404, "no such endpoint"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "kwargs", "path", "status", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_json_4xx_and_the_server_goes_on(model, images, what, kwargs, path, status, words):
    with serving(model) as client:
        response = client.post(path, **kwargs)
        assert response.status_code == status, response.text
        assert words in response.json()["error"]
        assert client.post("/predict", files=[upload(images[0])]).status_code == 200


def test_limits_on_the_body_and_the_pixels(model, images):
    with serving(model, max_request_mb=0.001, max_image_pixels=1000) as client:
        big = client.post("/predict", files=[("file", ("big.jpg", b"\xff" * 5000, "image/jpeg"))])
        assert big.status_code == 413 and "--max-request-mb" in big.json()["error"]
        assert client.post("/v2/models/tiny/infer", json=infer_body(IMAGE)).status_code == 413
    with serving(model, max_image_pixels=1000) as client:
        wide = client.post("/predict", files=[upload(images[0])])  # 48x48 = 2304 pixels
        assert wide.status_code == 413 and "--max-image-pixels" in wide.json()["error"]
        assert client.get("/v2/health/live").status_code == 200
    with pytest.raises(Exception, match="--max-image-pixels"):
        ServeOptions(max_image_pixels=100_000_000).check()


def test_metrics_count_requests_batches_and_the_queue_per_app(model, images):
    with serving(model) as one, serving(model) as two:  # registries of their own: two apps in one process
        one.post("/predict", files=[upload(images[0]), upload(images[1])])
        one.post("/predict", files=[("file", ("x.txt", b"no", "text/plain"))])
        text = one.get("/metrics").text
        assert 'zoo_serve_requests_total{endpoint="/predict",status="200"} 1.0' in text
        assert 'zoo_serve_requests_total{endpoint="/predict",status="415"} 1.0' in text
        assert "zoo_serve_batch_size_count" in text and "zoo_serve_queue_depth 0.0" in text
        assert "zoo_serve_request_duration_seconds_bucket" in text and "zoo_serve_requests_in_flight" in text
        assert 'status="200"} 1.0' not in two.get("/metrics").text


def test_the_batcher_batches_groups_by_shape_and_isolates_failures():
    calls = []

    def model(batch):
        calls.append(batch.shape)
        if batch.shape[-1] == 5:
            raise ValueError("this shape breaks the model")
        return batch.reshape(len(batch), -1).sum(axis=1, keepdims=True)

    async def scenario():
        batcher = Batcher(model, max_batch_size=4, max_queue_delay=0.05)
        await batcher.start()
        ones = [np.full((1, 2, 2), i, np.float32) for i in range(6)]
        gone = asyncio.ensure_future(batcher.submit([np.ones((1, 2, 2), np.float32)]))
        await asyncio.sleep(0)
        gone.cancel()  # its client left: the batch goes on without it
        got = asyncio.gather(*(batcher.submit([x]) for x in ones), batcher.submit([np.ones((1, 5, 5))]),
                             return_exceptions=True)  # fmt: skip
        results = await got
        await batcher.stop()
        with pytest.raises(BatcherStopped):
            await batcher.submit(ones[:1])
        return results

    results = asyncio.run(scenario())
    assert [float(r[0, 0]) for r in results[:6]] == [4.0 * i for i in range(6)]
    assert isinstance(results[6], ValueError)
    assert calls[0] == (4, 1, 2, 2)  # the cancelled image was skipped, four others filled the batch
    assert sorted(calls[1:]) == [(1, 1, 5, 5), (2, 1, 2, 2)]


def test_cli_builds_the_server_from_its_flags_and_refuses_bad_ones(model, tmp_path, monkeypatch):
    import zoo.serve.app

    seen = {}

    def run(self):
        seen.update(state=self.app.state, url=self.url)
        self.socket.close()

    monkeypatch.setattr(zoo.serve.app.Server, "run", run)
    args = ["serve", str(model), "--port", "0", "--max-batch-size", "3", "--max-queue-delay-ms", "7", "--name", "m"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert seen["state"].batcher.max_batch_size == 3 and seen["state"].batcher.max_queue_delay == 0.007
    assert seen["state"].model_name == "m" and f"on {seen['url']}" in result.output
    missing = runner.invoke(cli, ["serve", str(tmp_path / "missing.onnx")])
    assert missing.exit_code == 3 and "no such model file" in missing.output
    zero = runner.invoke(cli, ["serve", str(model), "--max-batch-size", "0"])
    assert zero.exit_code == 2 and "--max-batch-size 0" in zero.output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = runner.invoke(cli, ["serve", str(model), "--port", str(taken.getsockname()[1])])
    assert busy.exit_code == 5 and "cannot listen on 127.0.0.1" in busy.output


def test_without_the_serve_extra_it_says_what_to_install(model):
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name.split('.')[0] == 'uvicorn':\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from zoo.cli import main\n"
        "sys.argv = ['zoo', 'serve', sys.argv[1]]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 5
    assert "zoo serve needs uvicorn" in result.stderr
    assert "pip install -c constraints.txt -e '.[serve]'" in result.stderr
    assert "Traceback" not in result.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_real_server_survives_a_flood_a_client_that_leaves_and_finishes_requests_on_sigterm(model, images):
    """uvicorn in a subprocess. Each request waits up to 1 s for its batch to fill, so requests stay in flight."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ["--port", str(port), "--max-queue", "4", "--max-batch-size", "64", "--max-queue-delay-ms", "1000"]
    zoo = [sys.executable, "-c", "from zoo.cli import main; main()", "serve", str(model), *flags]
    proc = subprocess.Popen(zoo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    body = images[0].read_bytes()
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()

        async def flood():
            async with httpx.AsyncClient(base_url=url, timeout=30) as client:
                return await asyncio.gather(
                    *(client.post("/predict", files={"file": ("a.jpg", body)}) for _ in range(12))
                )

        answers = asyncio.run(flood())
        statuses = sorted(r.status_code for r in answers)
        assert statuses.count(200) >= 4 and statuses.count(503) >= 4, statuses
        assert set(statuses) == {200, 503}
        refused = next(r for r in answers if r.status_code == 503)
        assert refused.headers["retry-after"] == "1" and "--max-queue" in refused.json()["error"]

        with socket.create_connection(("127.0.0.1", port)) as s:  # leaves in the middle of its upload
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"; "
                      b"filename=\"a.jpg\"\r\n\r\n" + body[:500])  # fmt: skip
        whole = httpx.Request("POST", f"{url}/predict", files={"file": ("a.jpg", body)})
        head = "".join(f"{k}: {v}\r\n" for k, v in whole.headers.items())
        with socket.create_connection(("127.0.0.1", port)) as s:  # leaves while its image waits for a batch
            s.sendall(f"POST /predict HTTP/1.1\r\n{head}\r\n".encode() + whole.read())
            time.sleep(0.1)
        assert httpx.get(f"{url}/v2/health/live").status_code == 200

        in_flight = {}

        def slow_request():
            in_flight["response"] = httpx.post(f"{url}/predict", files={"file": ("a.jpg", body)}, timeout=30)

        thread = threading.Thread(target=slow_request)
        thread.start()
        time.sleep(0.5)  # the request is waiting for its batch (up to 1 s)
        proc.send_signal(signal.SIGTERM)
        thread.join(timeout=30)
        assert in_flight["response"].status_code == 200, in_flight["response"].text
        assert in_flight["response"].json()[0]["top"][0]["label"] in ("ants", "bees")
        proc.wait(timeout=30)
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_options_are_checked_before_anything_starts():
    for bad, words in (
        ({"port": 70000}, "--port"), ({"name": "a/b"}, "--name"), ({"max_queue": 0}, "--max-queue"),
        ({"max_queue_delay_ms": -1}, "--max-queue-delay-ms"), ({"max_request_mb": 0}, "--max-request-mb"),
        ({"threads": 0}, "--threads"),
        ({"max_queue_delay_ms": float("inf")}, "--max-queue-delay-ms inf: must be a finite"),
        ({"max_queue_delay_ms": float("nan")}, "--max-queue-delay-ms nan"),
        ({"shutdown_timeout": float("inf")}, "--shutdown-timeout"),
        ({"max_request_mb": float("inf")}, "--max-request-mb"),
    ):  # fmt: skip
        with pytest.raises(Exception, match=words):
            ServeOptions(**bad).check()
    assert json.loads(json.dumps(ServeOptions().__dict__))["max_image_pixels"] < 50_000_000


def test_docs_give_the_defaults_of_the_options():
    text = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `--([a-z-]+)` \| ([0-9.]+) \|", text, re.M)
    defaults = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(ServeOptions)}
    assert len(rows) >= 6
    for flag, value in rows:
        assert float(value) == defaults[flag], f"docs/serve.md says --{flag} {value}, the code {defaults[flag]}"


@pytest.mark.slow
def test_clients_that_trickle_their_body_hold_no_place_and_time_out(model, images):
    """More slow uploads than --max-queue: a whole request still gets its answer, and each slow one a 408."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    flags = ["--port", str(port), "--max-queue", "2", "--body-timeout", "1.5"]
    zoo = [sys.executable, "-c", "from zoo.cli import main; main()", "serve", str(model), *flags]
    proc = subprocess.Popen(zoo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    body = images[0].read_bytes()
    slow = []
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        started = time.time()
        for _ in range(5):  # headers, then a trickle of the body that never completes in time
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b\r\n")  # fmt: skip
            slow.append(s)
        time.sleep(0.3)
        whole = httpx.post(f"{url}/predict", files={"file": ("a.jpg", body)}, timeout=30)
        assert whole.status_code == 200, whole.text  # (before: 503, every place held by a slow upload)
        for s in slow:
            s.settimeout(30)
            answer = ""
            while not answer.endswith("}") and (chunk := s.recv(4096)):  # the head, then the JSON body
                answer += chunk.decode(errors="replace")
            assert answer.startswith("HTTP/1.1 408"), answer[:200]
            assert "--body-timeout" in answer
        assert time.time() - started < 20
    finally:
        for s in slow:
            s.close()
        proc.kill()
        proc.wait()


@pytest.mark.slow
def test_tritonclient_with_its_defaults_binary_tensors_and_the_model_config(model, images):
    """Triton's own HTTP client, as a user calls it: binary tensor data both ways (its default), and
    get_model_config; the logits are those of the JSON form."""
    import tritonclient.http as triton

    port = _free_port()
    zoo = [sys.executable, "-c", "from zoo.cli import main; main()", "serve", str(model), "--port", str(port)]
    proc = subprocess.Popen(zoo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        for _ in range(300):
            try:
                if client.is_server_ready():
                    break
            except Exception:
                time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read()
        assert set(client.get_server_metadata()["extensions"]) >= {"binary_tensor_data", "model_configuration"}
        config = client.get_model_config("tiny")
        assert config["input"][0]["dims"] == [3, 32, 32] and config["output"][0]["dims"] == [2]
        x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)  # binary_data=True: the binary tensor data extension
        binary = client.infer("tiny", [tensor]).as_numpy("logits")
        wanted = client.infer("tiny", [tensor], outputs=[triton.InferRequestedOutput("logits")]).as_numpy("logits")
        as_json = httpx.post(f"http://127.0.0.1:{port}/v2/models/tiny/infer", json=infer_body(x)).json()
        expected = np.asarray(as_json["outputs"][0]["data"], np.float32).reshape(3, 2)
        assert binary.shape == (3, 2) and np.array_equal(binary, expected) and np.array_equal(wanted, expected)
    finally:
        proc.kill()
        proc.wait()
