"""`ServeOptions`: every option of `zoo serve`, its default and why, checked before the model is loaded.

Kept apart from `zoo.serve.app` so that the command line builds its flags without importing
uvicorn, starlette or onnxruntime.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from zoo.core.errors import UsageError
from zoo.core.options import option
from zoo.runtime.onnx_io import PROVIDER_HELP


@dataclass(frozen=True)
class ServeOptions:
    host: str = option("127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
    port: int = option(8000, "Port to listen on (0: a free one, printed).")
    name: str | None = option(None, "The model's name in the v2 URLs [default: the file's stem].", metavar="NAME")
    max_batch_size: int = option(8, "Most images in one model call (1: each image runs alone, no batching).")
    max_queue_delay_ms: float = option(
        0.0,
        "Longest an image waits for others to fill its batch, in ms. 0: run what is waiting, never wait for more; "
        "under load images pile up while the model runs, so batches still form. A few ms pays where one call costs "
        "about the same for 1 image as for 8 (a GPU); on the CPU it only added latency (bench/serve_load.py).",
    )
    max_queue: int = option(
        64,
        "Most requests admitted at once (decoding, waiting for a batch, running: a request counts once its body "
        "has arrived); one more gets 503 with Retry-After. Bodies still arriving: at most 4x as many.",
    )
    body_timeout: float = option(
        10.0,
        "Seconds a client may take to send its request body (408 beyond): a client that trickles its upload holds "
        "no place among the requests admitted.",
    )
    max_request_mb: float = option(32.0, "Largest request body, in MB (413 beyond).")
    max_image_pixels: int = option(
        40_000_000,
        "Largest image, width x height, read from its header before decoding (413 beyond): a decoded image takes "
        "3 bytes a pixel and a PNG cannot be decoded at a smaller size, so 40 MP is 120 MB of memory per image in "
        "flight (a 50-megapixel PNG is refused); at most Pillow's own limit, 89 MP.",
    )
    threads: int | None = option(
        None,
        "onnxruntime's threads [default: half the CPUs, at least 1: the other half decodes images and speaks HTTP; "
        "on 2 cores, onnxruntime's own choice of 2 spinning threads served fewer requests (bench/serve_load.py)].",
        metavar="N",
    )
    decode_threads: int = option(2, "Threads decoding and checking requests (Pillow, JSON) beside onnxruntime's.")
    provider: str | None = option(None, PROVIDER_HELP, metavar="NAME")
    shutdown_timeout: float = option(30.0, "On SIGTERM or Ctrl-C, seconds the requests in flight get to finish.")

    def check(self) -> None:
        """Refuse a value no server can use, before the model is loaded or the port bound."""
        from zoo.data.images import MAX_PIXELS  # numpy and Pillow: not on the path of `zoo --help`

        if not 0 <= self.port <= 65535:
            raise UsageError(f"--port {self.port}: between 0 and 65535")
        if self.name is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name):
            raise UsageError(f"--name {self.name!r}: letters, digits, '_', '.' and '-' (it goes into URLs)")
        for flag, value in (
            ("max-batch-size", self.max_batch_size),
            ("max-queue", self.max_queue),
            ("decode-threads", self.decode_threads),
            ("max-image-pixels", self.max_image_pixels),
        ):
            if value < 1:
                raise UsageError(f"--{flag} {value}: must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads {self.threads}: must be >= 1")
        for flag, value in (
            ("max-queue-delay-ms", self.max_queue_delay_ms),
            ("max-request-mb", self.max_request_mb),
            ("shutdown-timeout", self.shutdown_timeout),
            ("body-timeout", self.body_timeout),
        ):
            if not math.isfinite(value):  # inf or nan would wait forever or compare false everywhere
                raise UsageError(f"--{flag} {value}: must be a finite number")
        if self.max_queue_delay_ms < 0:
            raise UsageError(f"--max-queue-delay-ms {self.max_queue_delay_ms}: must be >= 0")
        if self.max_request_mb <= 0:
            raise UsageError(f"--max-request-mb {self.max_request_mb}: must be > 0")
        if self.max_image_pixels > MAX_PIXELS:
            raise UsageError(
                f"--max-image-pixels {self.max_image_pixels}: at most {MAX_PIXELS}, Pillow's decompression-bomb limit"
            )
        if self.shutdown_timeout < 0:
            raise UsageError(f"--shutdown-timeout {self.shutdown_timeout}: must be >= 0")
        if self.body_timeout <= 0:
            raise UsageError(f"--body-timeout {self.body_timeout}: must be > 0")

    @property
    def onnxruntime_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // 2)

    @property
    def max_request_bytes(self) -> int:
        return int(self.max_request_mb * 1024 * 1024)
