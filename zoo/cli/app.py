"""The `zoo` Typer app, and the one place where errors become a line on stderr and an exit code.

A `ZooError` prints its message as one line with the exit code of its kind
(`zoo.core.errors`); a command-line mistake that Typer finds itself (an unknown flag, a
value that is not a number) is one line with exit code 2; a file system error on
a path the user gave is one line with exit code 5. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperGroup

from zoo.cli.render import err_console, print_error
from zoo.core.errors import EXIT_ENVIRONMENT, EXIT_SIGINT, EXIT_SIGPIPE, EXIT_USAGE, ZooError


class ZooGroup(TyperGroup):
    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra) -> Any:
        code = 0
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = result if isinstance(result, int) else 0
        except ZooError as exc:
            print_error(str(exc))
            code = exc.exit_code
        except _click.exceptions.NoArgsIsHelpError as exc:
            err_console.out(exc.ctx.get_help(), highlight=False)
            code = EXIT_USAGE
        except _click.exceptions.UsageError as exc:
            where = f"zoo {exc.ctx.command_path.split(' ', 1)[-1]}: " if exc.ctx and " " in exc.ctx.command_path else ""
            print_error(f"{where}{exc.format_message()} (see --help)")
            code = EXIT_USAGE
        except _click.exceptions.ClickException as exc:
            print_error(exc.format_message())
            code = exc.exit_code
        except SystemExit as exc:
            # a closed stdout (`zoo list | head -1`): typer answers it with exit 1, a bug's code, and wraps stdout
            # so that the interpreter's last flush stays quiet; it is 141, as a shell reports SIGPIPE
            if exc.code != 1 or not isinstance(sys.stdout, _click.utils.PacifyFlushWrapper):
                raise
            code = EXIT_SIGPIPE
        except (typer.Abort, KeyboardInterrupt):
            print_error("interrupted")
            code = EXIT_SIGINT
        except OSError as exc:  # (a closed stdout never arrives here: typer answers it, see SystemExit above)
            if exc.filename is None:
                raise
            print_error(f"{exc.filename}: {exc.strerror or exc}")
            code = EXIT_ENVIRONMENT
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=ZooGroup,
    help="Model-zoo registry, fine-tuner and verified ONNX exporter for image classification.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion and --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is printed as written: `[default: ...]` and `:name:` stay literal
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


def complete_backbone(incomplete: str) -> list[str]:
    """Shell completion of a BACKBONE argument: the registry's names and aliases (no torch is imported)."""
    from zoo.catalogue.registry import get_registry

    try:
        registry = get_registry()
        names = set(registry.backbones) | set(getattr(registry, "aliases", {}) or {})
    except Exception:  # completion must never print a traceback into the user's shell
        return []
    return sorted(n for n in names if n.startswith(incomplete))


BackboneArgument = Annotated[
    str, typer.Argument(help="Backbone name or alias (`zoo list`).", autocompletion=complete_backbone)
]
# the data argument of the commands that read a data set as `zoo finetune` does (advise, rank, audit, tune)
DataArgument = Annotated[
    str, typer.Argument(help="Image folder (DATA/<class>/*.jpg or DATA/train + DATA/val) or a CSV/TSV manifest.")
]


def _print_version(wanted: bool) -> None:
    if wanted:
        from zoo.core.version import __version__

        sys.stdout.write(f"zoo {__version__}\n")
        raise typer.Exit()


@app.callback()
def _setup(
    verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")] = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_print_version,
            help="Print zoo's version (`zoo version`: with Python's, the packages' and the plugins').",
        ),
    ] = False,
):
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True, stream=sys.stderr)
