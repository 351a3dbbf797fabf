"""Where a command's wall time goes: named phases, timed in-process.

Off unless the environment variable ZOO_TIMINGS names a file: then every `phase` (and `mark`) is kept and the list
is written there, as JSON, when the process exits. Each entry holds wall-clock times (`time.time()`), so a bench
that notes when it launched the process can also tell the time before the first mark (interpreter start and
imports) and after the last (files closed, interpreter exit). `bench/fe_wall.py` reads it.

Phases do not nest: each names a stretch of the command that nothing else in the list covers.
"""

from __future__ import annotations

import atexit
import json
import os
import time

ENV = "ZOO_TIMINGS"

_records: list[dict] = []
_file = os.environ.get(ENV)


class phase:
    """`with phase("scan"): ...` records how long the block took (nothing when ZOO_TIMINGS is unset)."""

    __slots__ = ("name", "start")

    def __init__(self, name: str):
        self.name = name

    def __enter__(self) -> phase:
        self.start = time.time() if _file else 0.0
        return self

    def __exit__(self, *exc) -> None:
        if _file:
            _records.append({"phase": self.name, "start": self.start, "end": time.time()})


def mark(name: str) -> None:
    """A point in time (a phase of length 0): where the command's own code starts, where the result is printed."""
    if _file:
        now = time.time()
        _records.append({"phase": name, "start": now, "end": now})


def _write() -> None:
    if not _file:
        return
    try:
        with open(_file, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "exit": time.time(), "phases": _records}, f)
    except OSError:
        pass  # timings are a measurement aid: never a reason for a command to fail


if _file:
    atexit.register(_write)
