"""The `zoo` Typer app, and the one place where errors become a line on stderr and an exit code.

A `ZooError` prints its message as one line with the exit code of its kind
(`zoo.core.errors`); a command-line mistake that Typer finds itself (an unknown flag, a
value that is not a number) is one line with exit code 2; a file system error on
a path the user gave is one line with exit code 5. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import errno
import logging
import sys
from typing import Annotated, Any

import typer
from typer import _click
from typer.core import TyperGroup

from zoo.cli.render import err_console, print_error
from zoo.core.errors import EXIT_ENVIRONMENT, EXIT_SIGINT, EXIT_USAGE, ZooError


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
        except (typer.Abort, KeyboardInterrupt):
            print_error("interrupted")
            code = EXIT_SIGINT
        except OSError as exc:
            if exc.errno == errno.EPIPE:  # `zoo list | head`
                sys.stderr = open("/dev/null", "w")
                code = 1
            elif exc.filename is None:
                raise
            else:
                print_error(f"{exc.filename}: {exc.strerror or exc}")
                code = EXIT_ENVIRONMENT
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(
    cls=ZooGroup,
    help="Model-zoo registry, fine-tuner and verified ONNX exporter for image classification.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help text is printed as written: `[default: ...]` and `:name:` stay literal
)

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of a table.")]


@app.callback()
def _setup(verbose: Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output.")] = 0):
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", force=True, stream=sys.stderr)
