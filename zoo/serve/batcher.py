"""Dynamic batching: single images in, one model call per batch out.

Each request puts its images, one (C, H, W) array each, into a queue. One worker takes
up to `max_batch_size` of them, waiting at most `max_queue_delay` seconds after the
first of them arrived (an image that already waited that long goes at once), stacks
those of the same shape, and runs the model once per shape in a thread of its own: one
session, one call at a time, the event loop free meanwhile. A request cancelled while
its images wait is left out of the batch; a failing call fails only the requests in it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np


class BatcherStopped(RuntimeError):
    """The batcher is shutting down and takes no new images."""


@dataclass
class _Item:
    array: np.ndarray  # one image, (C, H, W)
    future: asyncio.Future  # its output row
    arrived: float  # loop time


class Batcher:
    """Runs `model(batch) -> outputs` on batches gathered from concurrent `submit` calls.

    Example:
        >>> batcher = Batcher(predictor.logits, max_batch_size=8, max_queue_delay=0.002)
        >>> await batcher.start()
        >>> rows = await batcher.submit([image])      # (1, classes), computed in a batch with other requests' images
        >>> await batcher.stop()                      # finishes what is queued first
    """

    def __init__(
        self,
        model: Callable[[np.ndarray], np.ndarray],
        max_batch_size: int = 8,
        max_queue_delay: float = 0.0,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        """`on_batch(size, seconds)` is called after every model call (metrics)."""
        if max_batch_size < 1 or max_queue_delay < 0:
            raise ValueError(f"max_batch_size {max_batch_size} must be >= 1 and max_queue_delay {max_queue_delay} >= 0")
        self.model = model
        self.max_batch_size = max_batch_size
        self.max_queue_delay = max_queue_delay
        self.on_batch = on_batch
        self._pending: deque[_Item] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False

    @property
    def depth(self) -> int:
        """Images waiting for a model call."""
        return len(self._pending)

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._stopping = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="zoo-infer")
        self._worker = asyncio.create_task(self._work(), name="zoo-batcher")

    async def stop(self) -> None:
        """Run every image already queued, then stop the worker."""
        if self._worker is None:
            return
        self._stopping = True
        self._arrived.set()
        try:
            await self._worker
        finally:
            self._fail(list(self._pending), BatcherStopped("the server stopped before this image ran"))
            self._pending.clear()  # left only where the worker itself was cancelled
            self._executor.shutdown(wait=True)
            self._worker = None

    async def submit(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The model's output rows for `arrays`, in order; each image may share a call with other requests'."""
        if self._worker is None or self._stopping:
            raise BatcherStopped("the server is shutting down")
        loop = asyncio.get_running_loop()
        now = loop.time()
        items = [_Item(np.asarray(a), loop.create_future(), now) for a in arrays]
        self._pending.extend(items)
        self._arrived.set()
        # a cancelled request cancels its futures; the worker skips them
        return np.stack(await asyncio.gather(*(item.future for item in items)))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while (batch := await self._collect(loop)) is not None:
            await self._run(loop, batch)

    async def _collect(self, loop: asyncio.AbstractEventLoop) -> list[_Item] | None:
        """The next batch: up to max_batch_size images, or fewer once the first has waited max_queue_delay."""
        while not self._pending:
            if self._stopping:
                return None
            self._arrived.clear()
            await self._arrived.wait()
        deadline = self._pending[0].arrived + self.max_queue_delay
        while len(self._pending) < self.max_batch_size and not self._stopping:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                break
        batch: list[_Item] = []
        while self._pending and len(batch) < self.max_batch_size:
            item = self._pending.popleft()
            if not item.future.done():  # done already: its request was cancelled (its client left)
                batch.append(item)
        return batch

    async def _run(self, loop: asyncio.AbstractEventLoop, batch: list[_Item]) -> None:
        groups: dict[tuple, list[_Item]] = {}
        for item in batch:
            groups.setdefault(item.array.shape, []).append(item)
        for items in groups.values():
            start = time.perf_counter()
            try:
                outputs = await loop.run_in_executor(self._executor, self.model, np.stack([i.array for i in items]))
                if len(outputs) != len(items):
                    raise RuntimeError(f"the model gave {len(outputs)} rows for a batch of {len(items)}")
            except asyncio.CancelledError:  # the worker itself is cancelled: nobody will answer these
                self._fail(items, BatcherStopped("the server stopped while this image ran"))
                raise
            except Exception as exc:  # this call's requests get the error; the worker goes on
                self._fail(items, exc)
                continue
            finally:
                if self.on_batch is not None:
                    self.on_batch(len(items), time.perf_counter() - start)
            for item, row in zip(items, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(row)

    @staticmethod
    def _fail(items: list[_Item], exc: BaseException) -> None:
        for item in items:
            if not item.future.done():
                item.future.set_exception(exc)
