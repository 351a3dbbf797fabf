"""The run folder: where it goes, who holds it, and the plain files in it.

    runs/NAME/  config.json  metrics.csv  summary.json  best.pt  last.pt
                curves.png  confusion_matrix.png  predictions.png  (.lock while a process trains it)

Every file is written atomically. A run folder is locked while a process trains
in it, so two `--resume` of one run cannot both train; the lock says who holds it.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from zoo.core import atomic
from zoo.core.errors import OutputError, RunLocked

LOCK_FILE = ".lock"
LOCK_HELD_ENV = "ZOO_RUN_LOCK_HELD"  # set by the distributed launcher, which holds the lock for its workers
FILES = ("config.json", "metrics.csv", "summary.json", "best.pt", "last.pt")


def check_out_folder(out: Path | str, flag: str = "--out") -> Path:
    """The folder that holds run folders: an existing writable folder, or one that can be created."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise OutputError(f"{flag} {out}: is a file, not a folder; name a folder for the run folders")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir() or not atomic.can_write_in(probe):
        raise OutputError(f"{flag} {out}: {probe} is not a writable folder; choose another {flag}")
    return out


def run_name(*parts: str) -> str:
    """A default run folder name from its parts (backbone, policy, ...): joined with '-', and every run of
    characters other than letters, digits, '_', '.' and '-' (a '/' or ':' in hub names and policies, spaces)
    made one '-', so that it is one safe folder name on every filesystem."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(parts))


def new_run_dir(out: Path | str, name: str | None, backbone: str, policy: str) -> Path:
    """A new, empty run folder under `out`: NAME, else BACKBONE-POLICY, with -2, -3... when taken."""
    root = check_out_folder(out)
    if name is not None and (not name or name in (".", "..") or "/" in name or "\\" in name):
        raise OutputError(f"--name {name!r}: a run folder name, without '/'")
    base = name or run_name(backbone, policy)
    candidate, i = root / base, 1
    try:
        while candidate.exists() and (not candidate.is_dir() or any(candidate.iterdir())):
            i += 1
            candidate = root / f"{base}-{i}"
        candidate.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"--out {root}: cannot create the run folder {candidate} ({exc.strerror or exc})") from None
    if name is not None and i > 1:  # said before the run starts, not only in its last line
        logging.getLogger(__name__).warning(
            "--name %s: %s already holds a run, so this one is %s", name, root / base, candidate.name
        )
    return candidate


class RunLock:
    """An exclusive lock on a run folder (flock on RUN/.lock), released when the process ends."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.fd: int | None = None

    def acquire(self) -> RunLock:
        if os.environ.get(LOCK_HELD_ENV) == str(self.run_dir.resolve()):
            return self  # the launcher of this distributed job holds it
        import fcntl

        path = self.run_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(
                f"{self.run_dir}: in use by {holder}; wait for it to finish or stop it, then try again"
            ) from None
        os.ftruncate(fd, 0)
        info = {"pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv)[:300]}
        os.write(fd, json.dumps(info).encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            try:
                (self.run_dir / LOCK_FILE).unlink(missing_ok=True)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096).decode() or "{}")
        return f"process {info['pid']} ({info.get('command', '?')}, since {info.get('since', '?')})"
    except (OSError, ValueError, KeyError):
        return "another process"


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic.write_json(run_dir / "config.json", config)


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    atomic.write_json(run_dir / "summary.json", summary)


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fields = list(dict.fromkeys(k for row in history for k in row))
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(history)
    atomic.write_text(run_dir / "metrics.csv", buf.getvalue())


def discard_if_unstarted(run_dir: Path) -> bool:
    """Remove a run folder in which no epoch completed (it holds config.json at most); True if removed."""
    if not run_dir.is_dir() or (run_dir / "last.pt").exists():
        return False
    leftovers = [p for p in run_dir.iterdir() if p.name not in ("config.json", "summary.json", LOCK_FILE, "cache")]
    if leftovers:
        return False
    for p in run_dir.iterdir():
        if p.is_dir():
            for child in p.rglob("*"):
                if child.is_file():
                    child.unlink()
            for child in sorted(p.rglob("*"), reverse=True):
                child.rmdir()
            p.rmdir()
        else:
            p.unlink()
    run_dir.rmdir()
    return True


def tensorboard_writer(run_dir: Path):
    """A TensorBoard writer into `run_dir/tensorboard` where tensorboard is installed, else False."""
    import importlib.util

    if importlib.util.find_spec("tensorboard") is None:
        return False
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(run_dir / "tensorboard"))
