"""The `zoo` command line: parse, call the library, print.

Commands live by what they do (`catalogue`, `training`, `deploy`); plugins add
their own through the `register_commands(cli)` hook (the ONNX plugin adds `zoo
import` this way). Nothing on the `list`, `info` listing or `--help` path imports
torch.
"""

from __future__ import annotations

from zoo.cli import auditing, catalogue, deploy, reporting, selecting, serving, training, tuning  # noqa: F401  (each registers its commands on `app`, in this order)
from zoo.cli.app import app


def add_plugin_commands() -> None:
    """Let every plugin add its commands, one plugin at a time (a failing plugin is named and skipped)."""
    from zoo.catalogue.plugins import get_plugins

    def names() -> set[str]:
        commands = {c.name or c.callback.__name__ for c in app.registered_commands}
        return commands | {g.name for g in app.registered_groups}

    def add(register_commands, info) -> None:
        before = names()
        register_commands(cli=app)
        info.commands.extend(sorted(names() - before))

    get_plugins().each_plugin("register_commands", add)


add_plugin_commands()


def main() -> None:
    from zoo.core.timing import mark

    mark("main")  # the command's own code starts: what came before is interpreter start and imports
    try:
        app(prog_name="zoo")
    except SystemExit as exc:
        leave(exc.code)
        raise


def leave(code) -> None:
    """End the process now when torch is loaded: its interpreter teardown (every module finalised, torch's and
    onnxruntime's included) takes 0.6 to 1.3 s here after the command is done. What an exit must do still happens:
    the atexit handlers run (logging's flush, temp folders, plugins' own), stdout and stderr are flushed. Only when no
    other (non-daemon) thread is alive, which a normal exit would wait for; otherwise the usual exit follows."""
    import os
    import sys
    import threading

    if "torch" not in sys.modules or not (code is None or isinstance(code, int)):
        return
    loaders = sys.modules.get("zoo.training.loaders")
    if loaders is not None:  # its idle transform threads would count as work still running
        loaders.close_transform_pool()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    os._exit(code or 0)


__all__ = ["app", "main"]
