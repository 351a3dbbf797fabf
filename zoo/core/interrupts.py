"""Stopping a run cleanly: SIGTERM handled like Ctrl-C, and signals held while the last files are written.

Only the main thread can install signal handlers; elsewhere (a notebook's worker
thread) these do nothing and the default handling applies.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Callable, Iterator

from zoo.core.errors import Interrupted, Terminated


def sigterm_raises():
    """Treat SIGTERM like Ctrl-C while training (main thread only); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def stop(signum, frame):
        raise Terminated()

    return signal.signal(signal.SIGTERM, stop)


def restore_sigterm(previous) -> None:
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def stops_as_interrupted(describe: Callable[[str], str]) -> Iterator[None]:
    """SIGTERM handled like Ctrl-C inside the block; either one leaves it as `Interrupted(describe(name), name)`
    (name: SIGINT or SIGTERM), once the block's own `finally`s have removed their temporary files."""
    previous = sigterm_raises()
    try:
        yield
    except (KeyboardInterrupt, Terminated) as exc:
        name = "SIGTERM" if isinstance(exc, Terminated) else "SIGINT"
        raise Interrupted(describe(name), name) from None
    finally:
        restore_sigterm(previous)


class deferred_signals:
    """Hold SIGINT and SIGTERM while the last files are written; the list says which arrived."""

    def __enter__(self) -> list[str]:
        self.received: list[str] = []
        self.saved = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, lambda s, f: self.received.append(signal.Signals(s).name))
        return self.received

    def __exit__(self, *exc) -> bool:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False
