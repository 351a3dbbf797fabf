"""`zoo serve` against bad clients: what each fault gets, and whether the server still answers afterwards.

    python bench/serve_faults.py               # about 15 s on 2 cores

EfficientNet-Lite0 with its ImageNet weights, exported as bench/serve_load.py does, served by
`zoo serve` with its defaults on 127.0.0.1. One after another: a client that disconnects in
the middle of its upload, one that disconnects while its image is being classified, malformed
JSON, a non-image upload, a real 50-megapixel PNG, a body over --max-request-mb, a v2 tensor of
the wrong shape, and a flood of 4 x --max-queue requests at once (503 with Retry-After
expected); after each one the server must answer a real request correctly. Then SIGTERM
with requests in flight (on a second server whose batches wait 500 ms, so that they are):
each must still get its 200. Results go to docs/serve.md and bench/results/serve_faults.json.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from report import publish
from serve_load import MULTIPART, export_lite0, multipart, running_server, val_images

MAX_QUEUE = 64  # zoo serve's default --max-queue
MULTIPART_HEADER = "".join(f"{k}: {v}\r\n" for k, v in MULTIPART.items())


def raw(url: str, data: bytes, then_wait: float = 0.0) -> None:
    """Send bytes on a fresh connection and hang up without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(data)
        time.sleep(then_wait)


def fifty_megapixel_png() -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (8660, 5774), (90, 140, 60))  # 50.0 MP
    ImageDraw.Draw(img).ellipse((2000, 1000, 6000, 4500), fill=(200, 180, 40))
    buffer = io.BytesIO()
    img.save(buffer, "PNG")
    return buffer.getvalue()


def status_counts(url: str) -> dict[str, float]:
    """zoo_serve_requests_total by 'endpoint status', from the server's /metrics."""
    counts = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith("zoo_serve_requests_total{"):
            labels, value = line.rsplit(" ", 1)
            endpoint = labels.split('endpoint="')[1].split('"')[0]
            status = labels.split('status="')[1].split('"')[0]
            counts[f"{endpoint} {status}"] = float(value)
    return counts


def describe(response: httpx.Response) -> str:
    text = f"{response.status_code}"
    if "retry-after" in response.headers:
        text += f", Retry-After: {response.headers['retry-after']}"
    try:
        return f"{text}, {response.json()['error'][:110]}"
    except Exception:
        return f"{text}, {response.text[:80]}"


async def flood(url: str, body: bytes, n: int) -> list:
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        return await asyncio.gather(
            *(client.post("/predict", content=body, headers=MULTIPART) for _ in range(n)), return_exceptions=True
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="Serve this exported model instead of exporting Lite0 again.")
    parser.add_argument("--no-doc", action="store_true", help="Do not update docs/serve.md.")
    args = parser.parse_args(argv)
    name, jpeg = val_images()[0]
    good = multipart(name, jpeg)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or export_lite0(Path(tmp))
        with running_server(model) as served:
            url = served.url
            expected = httpx.post(f"{url}/predict", content=good, headers=MULTIPART).json()[0]["top"][0]["label"]

            def still_answers() -> str:
                if served.proc.poll() is not None:
                    return f"DOWN (exit {served.proc.returncode})"
                response = httpx.post(f"{url}/predict", content=good, headers=MULTIPART, timeout=60)
                ok = response.status_code == 200 and response.json()[0]["top"][0]["label"] == expected
                return "answers (200, same top-1)" if ok else f"WRONG: {describe(response)}"

            def record(fault: str, got: str, passed: bool) -> None:
                rows.append({"fault": fault, "got": got, "passed": passed, "afterwards": still_answers()})
                print(f"{fault}: {got}", file=sys.stderr)

            head = f"POST /predict HTTP/1.1\r\nHost: x\r\n{MULTIPART_HEADER}Content-Length: {len(good) * 4}\r\n\r\n"
            before = status_counts(url).get("/predict 499", 0)
            raw(url, head.encode() + good[:2000], then_wait=0.1)
            time.sleep(0.3)
            counted = status_counts(url).get("/predict 499", 0) - before
            record("client disconnects mid-upload (sent 2 KB of a declared body, hung up)",
                   f"connection closed; the server counted it as status 499 ({counted:.0f})", counted == 1)  # fmt: skip

            before = status_counts(url)
            full = f"POST /predict HTTP/1.1\r\nHost: x\r\n{MULTIPART_HEADER}Content-Length: {len(good)}\r\n\r\n"
            raw(url, full.encode() + good, then_wait=0.005)
            time.sleep(0.5)
            after = status_counts(url)
            done, left = (after.get(f"/predict {s}", 0) - before.get(f"/predict {s}", 0) for s in ("200", "499"))
            how = "finished it, answered into the closed socket (200)" if done else "saw the hang-up first (499)"
            record("client sends a whole request and hangs up at once", f"connection closed; the server {how}",
                   done + left == 1)  # fmt: skip

            response = httpx.post(f"{url}/v2/models/{model.stem}/infer", content=b'{"inputs": [{"name": ')
            record("malformed JSON to /v2/models/NAME/infer", describe(response), response.status_code == 400)

            response = httpx.post(f"{url}/predict", files={"file": ("notes.txt", b"not an image\n" * 50)})
            record("non-image upload to /predict", describe(response), response.status_code == 415)

            png = fifty_megapixel_png()
            response = httpx.post(f"{url}/predict", files={"file": ("50mp.png", png, "image/png")}, timeout=60)
            record(f"50-megapixel PNG (8660x5774, {len(png) / 1e6:.1f} MB file)", describe(response),
                   response.status_code == 413)  # fmt: skip

            big = b"\0" * (40 * 1024 * 1024)
            response = httpx.post(f"{url}/predict", files={"file": ("big.jpg", big)}, timeout=60)
            record("40 MB body (over --max-request-mb 32)", describe(response), response.status_code == 413)

            tensor = {"inputs": [{"name": "input", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": [0.0] * 3072}]}
            response = httpx.post(f"{url}/v2/models/{model.stem}/infer", json=tensor)
            record("v2 infer with a tensor of the wrong shape", describe(response), response.status_code == 400)

            n = 4 * MAX_QUEUE
            answers = asyncio.run(flood(url, good, n))
            codes = [a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers]
            refused = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
            retry = all(r.headers.get("retry-after") == "1" for r in refused)
            summary = ", ".join(f"{codes.count(c)} x {c}" for c in sorted(set(codes), key=str))
            record(f"flood: {n} requests at once (--max-queue {MAX_QUEUE})",
                   f"{summary}; every 503 with Retry-After: {'yes' if retry else 'NO'}",
                   bool(refused) and retry and set(codes) <= {200, 503})  # fmt: skip
            log = served.log.read_text()
        rows.append(sigterm_in_flight(model, good))
        print(f"{rows[-1]['fault']}: {rows[-1]['got']}", file=sys.stderr)
    record_ = {
        "date": time.strftime("%Y-%m-%d"),
        "rows": rows,
        "tracebacks_in_server_log": log.count("Traceback"),
        "all_passed": all(r["passed"] for r in rows) and "Traceback" not in log,
    }
    publish("serve_faults", record_, render(record_), update_doc=not args.no_doc)
    return 0 if record_["all_passed"] else 1


def sigterm_in_flight(model: Path, good: bytes, n: int = 8) -> dict:
    """SIGTERM while `n` requests wait for their batch (500 ms): every one must still get its 200."""
    with running_server(model, "--max-queue-delay-ms", "500", "--max-batch-size", "64") as served:
        answers: list = []

        def send() -> None:
            answers.extend(asyncio.run(flood(served.url, good, n)))

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(0.3)  # the requests are in, waiting for the batch to fill
        served.proc.send_signal(signal.SIGTERM)
        thread.join(timeout=60)
        code = served.proc.wait(timeout=60)
        ok = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 200]
        how = signal.Signals(-code).name if code < 0 else f"exit {code}"
        got = f"{len(ok)} of {n} answered 200; then the server stopped ({how})"
        return {"fault": f"SIGTERM with {n} requests in flight", "got": got, "passed": len(ok) == n,
                "afterwards": "stopped, as asked"}  # fmt: skip


def render(record: dict) -> str:
    lines = [
        f"Measured {record['date']}: `zoo serve` with its defaults, EfficientNet-Lite0, on 127.0.0.1. After each "
        "fault a real image is posted and must get 200 with the same top-1 label as before.",
        "",
        "| fault | what the client got | the server afterwards | as expected |",
        "|---|---|---|---|",
    ]
    for r in record["rows"]:
        got = r["got"].replace("|", "\\|")
        lines.append(f"| {r['fault']} | {got} | {r['afterwards']} | {'yes' if r['passed'] else 'NO'} |")
    lines += ["", f"Tracebacks in the server's log: {record['tracebacks_in_server_log']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
