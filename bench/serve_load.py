"""`zoo serve` under load: dynamic batching against one request at a time, at concurrency 1, 8 and 32.

    python bench/serve_load.py                 # about a minute on 2 cores
    python bench/serve_load.py --rounds 1      # quicker

EfficientNet-Lite0 with its ImageNet weights (the efficientnet_lite0 backbone), exported by
`zoo export` into a temporary folder, served twice on 127.0.0.1 by `zoo serve` in
subprocesses: with its default dynamic batching, and with `--max-batch-size 1` (each image
runs alone through the same kind of onnxruntime session). An httpx async client posts the
ants/bees val JPEGs (../shared/data/hymenoptera) to `POST /predict`, keeping 1, 8 or 32
requests in flight, a fixed number of requests per level. Levels and servers alternate in
rounds, so a slow minute of a shared machine hits both. Reported per server and
concurrency: throughput (req/s), p50 and p99 latency, the server's CPU time per request;
also onnxruntime alone at batch 1 and batch 8, which says what batching can gain on this
CPU. The client runs on the same cores as the server. Results go to docs/serve.md and
bench/results/serve_load.json; every server is killed on the way out, whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from report import publish

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "hymenoptera"
LEVELS = (1, 8, 32)
BOUNDARY = "zoo-bench-boundary"
THREADS = max(1, (os.cpu_count() or 2) // 2)  # zoo serve's default --threads
SERVERS = {  # the first two are the comparison the issue asks for; the others show why the defaults are what they are
    "dynamic batching (defaults)": [],
    "one at a time (--max-batch-size 1)": ["--max-batch-size", "1"],
    "dynamic batching, --max-queue-delay-ms 2": ["--max-queue-delay-ms", "2"],
    f"dynamic batching, --threads {os.cpu_count()} (onnxruntime's own default)": ["--threads", str(os.cpu_count())],
}


def export_lite0(folder: Path) -> Path:
    """EfficientNet-Lite0 with its ImageNet weights, exported and verified by `zoo export`."""
    model = folder / "efficientnet_lite0.onnx"
    zoo = str(Path(sys.executable).with_name("zoo"))
    subprocess.run([zoo, "export", "efficientnet_lite0", "-o", str(model)], check=True, stdout=subprocess.DEVNULL)
    return model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Served:
    proc: subprocess.Popen
    url: str
    log: Path  # the server's stderr


@contextlib.contextmanager
def running_server(model: Path, *flags: str, timeout: float = 60.0):
    """`zoo serve MODEL FLAGS` on a free 127.0.0.1 port, once its readiness says yes; yields a `Served`.
    SIGTERM on the way out (SIGKILL after 15 s), whatever happened."""
    port = free_port()
    zoo = str(Path(sys.executable).with_name("zoo"))
    log = Path(tempfile.mkstemp(prefix="zoo-serve-", suffix=".log")[1])
    with log.open("w") as err:
        proc = subprocess.Popen([zoo, "serve", str(model), "--port", str(port), *flags], stdout=subprocess.DEVNULL,
                                stderr=err)  # fmt: skip
    served = Served(proc, f"http://127.0.0.1:{port}", log)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"zoo serve exited with {proc.returncode}: {log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{served.url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"zoo serve did not get ready in {timeout:.0f} s")
            time.sleep(0.1)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.unlink(missing_ok=True)


def multipart(name: str, data: bytes, content_type: str = "image/jpeg", field: str = "file") -> bytes:
    """A multipart/form-data body with one file, encoded once so the client spends no CPU on it per request."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def val_images() -> list[tuple[str, bytes]]:
    files = sorted((DATA / "val").glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no images under {DATA / 'val'}: the ants/bees data set belongs in ../shared/data")
    return [(f.name, f.read_bytes()) for f in files]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy so far, all cores together (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


async def load(url: str, bodies: list[bytes], concurrency: int, count: int, probe) -> dict:
    """`count` POST /predict requests with `concurrency` in flight, after one warm-up request per connection: wall
    time, latencies, statuses, and how much each number of `probe()` grew meanwhile."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:

        async def one(i: int) -> None:
            start = time.perf_counter()
            response = await client.post("/predict", content=bodies[i % len(bodies)], headers=MULTIPART)
            latencies.append(time.perf_counter() - start)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1

        async def worker() -> None:
            nonlocal sent
            while sent < count:
                sent += 1
                await one(sent)

        await asyncio.gather(*(one(i) for i in range(concurrency)))  # warm: every connection opened once
        latencies.clear()
        statuses.clear()
        before, client_cpu = probe(), time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        client_cpu = time.process_time() - client_cpu
        grew = [b - a for a, b in zip(before, probe(), strict=True)]
    return {"wall_s": wall, "latencies": latencies, "statuses": statuses, "grew": grew, "client_cpu_s": client_cpu}


def model_alone(model: Path, images: list[tuple[str, bytes]]) -> dict:
    """What one image costs by itself, in this process with the server's default threads: decoding (Pillow, as
    the server does it) and onnxruntime at batch 1 and at batch 8."""
    import io

    from zoo.data.images import load_for_eval
    from zoo.runtime.predictor import Predictor

    predictor = Predictor(model, THREADS)
    info = predictor.info
    start = time.perf_counter()
    arrays = [load_for_eval(io.BytesIO(data), info.preprocess, info.decode_size) for _, data in images]
    costs = {"decode_ms_per_image": 1000 * (time.perf_counter() - start) / len(images), "threads": THREADS}
    for batch in (1, 8):
        x = np.stack((arrays * batch)[:batch])
        predictor.logits(x)
        best = min(_timed(predictor.logits, x) for _ in range(max(5, 40 // batch)))
        costs[f"inference_ms_per_image_batch_{batch}"] = 1000 * best / batch
    return costs


def _timed(fn, x) -> float:
    start = time.perf_counter()
    fn(x)
    return time.perf_counter() - start


def server_counters(pid: int, url: str) -> tuple[float, float, float]:
    """The server's CPU seconds, images run and model calls so far (the last two from its own /metrics)."""
    text = httpx.get(f"{url}/metrics").text
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line.startswith("zoo_serve_batch_size_"))
    return cpu_seconds(pid), float(values["zoo_serve_batch_size_sum"]), float(values["zoo_serve_batch_size_count"])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="Rounds over every level and server.")
    parser.add_argument("--requests", type=int, default=300, help="Requests per level and round at concurrency 32.")
    parser.add_argument("--model", type=Path, help="Serve this exported model instead of exporting Lite0 again.")
    parser.add_argument("--flags", default="", help="More `zoo serve` flags for both servers, e.g. '--threads 1'.")
    parser.add_argument("--no-doc", action="store_true", help="Do not update docs/serve.md.")
    args = parser.parse_args(argv)
    extra = shlex.split(args.flags)
    counts = {1: max(40, args.requests // 4), 8: max(80, args.requests // 2), 32: args.requests}
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as servers:
        model = args.model or export_lite0(Path(tmp))
        images = val_images()
        alone = model_alone(model, images)
        procs = {name: servers.enter_context(running_server(model, *flags, *extra)) for name, flags in SERVERS.items()}
        bodies = [multipart(name, data) for name, data in images]
        runs = {(name, c): [] for name in SERVERS for c in LEVELS}

        def ours() -> float:
            return sum(cpu_seconds(s.proc.pid) for s in procs.values()) + time.process_time()

        busy, mine, begun = busy_cpu_seconds(), ours(), time.perf_counter()
        for r in range(args.rounds):
            for c in LEVELS:
                for name, served in procs.items():
                    probe = functools.partial(server_counters, served.proc.pid, served.url)
                    run = asyncio.run(load(served.url, bodies, c, counts[c], probe))
                    run["server_cpu_s"], run["images"], run["calls"] = run.pop("grew")
                    runs[name, c].append(run)
                    print(f"round {r + 1}, c={c}, {name}: {counts[c] / run['wall_s']:.1f} req/s", file=sys.stderr)
        # CPU time the machine spent on anything but this bench's client and servers, in cores
        others = (busy_cpu_seconds() - busy - (ours() - mine)) / (time.perf_counter() - begun)
    rows = []
    for (name, c), done in runs.items():
        latencies = np.array([x for run in done for x in run["latencies"]]) * 1000
        requests = sum(len(run["latencies"]) for run in done)
        statuses: dict[str, int] = {}
        for run in done:
            for status, n in run["statuses"].items():
                statuses[str(status)] = statuses.get(str(status), 0) + n
        rows.append({
            "server": name, "concurrency": c, "requests": requests, "statuses": statuses,
            "throughput_rps": requests / sum(run["wall_s"] for run in done),
            "rounds_rps": [len(run["latencies"]) / run["wall_s"] for run in done],
            "p50_ms": float(np.percentile(latencies, 50)), "p99_ms": float(np.percentile(latencies, 99)),
            "server_cpu_ms_per_request": 1000 * sum(run["server_cpu_s"] for run in done) / requests,
            "client_cpu_ms_per_request": 1000 * sum(run["client_cpu_s"] for run in done) / requests,
            "mean_batch": sum(run["images"] for run in done) / max(1, sum(run["calls"] for run in done)),
        })  # fmt: skip
    record = {
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
        "cpu": _cpu_name(),
        "python": platform.python_version(),
        "rounds": args.rounds,
        "requests_per_round": {str(c): n for c, n in counts.items()},
        "server_flags": extra,
        "model_alone": alone,
        "rows": rows,
        "goals": goals(rows),
        "wall_s": time.time() - started,
        "other_processes_cores": others,
    }
    publish("serve_load", record, render(record), update_doc=not args.no_doc)
    return 0


def goals(rows: list[dict]) -> dict:
    """The issue's goals: >= 2x the one-at-a-time throughput at concurrency 32, p99 there < 4x the c1 latency."""
    by = {(r["server"], r["concurrency"]): r for r in rows}
    batched, single = list(SERVERS)[:2]
    speedup = by[batched, 32]["throughput_rps"] / by[single, 32]["throughput_rps"]
    p99_ratio = by[batched, 32]["p99_ms"] / by[batched, 1]["p50_ms"]
    return {
        "throughput_ratio_c32": speedup,
        "throughput_goal_met": speedup >= 2.0,
        "p99_c32_over_p50_c1": p99_ratio,
        "p99_goal_met": p99_ratio < 4.0,
    }


def _cpu_name() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def render(record: dict) -> str:
    cost = record["model_alone"]
    lines = [
        f"Measured {record['date']} on {record['cpus']} CPUs ({record['cpu']}), client and server on the same "
        f"cores, other processes using {max(0.0, record['other_processes_cores']):.2f} cores meanwhile; "
        f"{record['rounds']} rounds, servers and levels alternating; {record['requests_per_round']['32']} "
        "requests per round at concurrency 32. POST /predict with one ants/bees JPEG per request (decoded, resized "
        "and cropped by the server). Mean batch: images per onnxruntime call, from the server's /metrics.",
        "",
        "| server | concurrency | req/s | p50 ms | p99 ms | mean batch | CPU ms/request: server, client | non-200 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in record["rows"]:
        errors = sum(n for s, n in r["statuses"].items() if s != "200")
        lines.append(
            f"| {r['server']} | {r['concurrency']} | {r['throughput_rps']:.1f} | {r['p50_ms']:.1f} | "
            f"{r['p99_ms']:.1f} | {r['mean_batch']:.1f} | {r['server_cpu_ms_per_request']:.1f}, "
            f"{r['client_cpu_ms_per_request']:.1f} | {errors} |"
        )
    g = record["goals"]
    lines += [
        "",
        f"One image by itself ({cost['threads']} onnxruntime thread(s), the server's default): decoding "
        f"{cost['decode_ms_per_image']:.1f} ms; inference {cost['inference_ms_per_image_batch_1']:.1f} ms at batch 1, "
        f"{cost['inference_ms_per_image_batch_8']:.1f} ms per image at batch 8.",
        "",
        f"Goals: throughput at concurrency 32, dynamic batching / one at a time = {g['throughput_ratio_c32']:.2f}x "
        f"(goal 2x: {'met' if g['throughput_goal_met'] else 'not met'}); p99 at concurrency 32 / p50 at "
        f"concurrency 1 = {g['p99_c32_over_p50_c1']:.1f}x (goal under 4x: "
        f"{'met' if g['p99_goal_met'] else 'not met'}).",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
