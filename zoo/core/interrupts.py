"""Stopping a run cleanly: SIGTERM handled like Ctrl-C, and signals held while the last files are written.

Only the main thread can install signal handlers; elsewhere (a notebook's worker
thread) these do nothing and the default handling applies.
"""

from __future__ import annotations

import signal
import threading

from zoo.core.errors import Terminated


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
