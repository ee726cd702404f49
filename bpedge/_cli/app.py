"""The ``bpedge`` entry point: builds the typer app from the command modules and maps errors to
exit codes (0 done, 1 failed, 2 bad usage or input) with a one-line message unless ``--debug``."""

from __future__ import annotations

import importlib
import os
from typing import Any

import typer

from bpedge._cli._errors import DEBUG_ENV, interrupted_by
from bpedge._version import __version__

# Each module defines ``register(app: typer.Typer) -> None``; heavy imports stay inside commands.
_COMMAND_MODULES = [
    "bpedge._cli.phantom",
    "bpedge._cli.train",
    "bpedge._cli.build_engines",
    "bpedge._cli.export",
    "bpedge._cli.doctor",
    "bpedge._cli.bench",
    "bpedge._cli.segment",
    "bpedge._cli.demo",
    "bpedge._cli.experiment",
]


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"bpedge {__version__}")
        raise typer.Exit(0)


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="bpedge",
        help="Find and outline the brachial plexus in neck ultrasound: train, export, build "
        "TensorRT engines, segment and benchmark.",
        no_args_is_help=True,
        epilog="Example: bpedge demo --out demo (then: bpedge segment demo/bundle demo/heldout "
        "--out seg). Every command's --help has examples.",
        pretty_exceptions_enable=False,
        add_completion=False,
    )

    @app.callback()
    def _root(
        debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
        version: bool = typer.Option(
            False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
        ),
    ) -> None:
        if debug:
            os.environ[DEBUG_ENV] = "1"

    for name in _COMMAND_MODULES:
        importlib.import_module(name).register(app)
    return app


def _click_exceptions() -> Any:
    # typer >= 0.2x vendors click as typer._click; older typer uses click itself.
    try:
        from typer._click import exceptions
    except ImportError:
        from click import exceptions  # type: ignore[no-redef]
    return exceptions


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point. A usage error (unknown option, missing argument, bad value)
    is one line on stderr naming the problem and the ``--help`` to read, exit code 2. SIGTERM
    stops a command as Ctrl-C does (:mod:`bpedge._cli._signals`), with exit code 143."""
    import sys

    from bpedge._cli._signals import EXIT_TERMINATED, sigterm_as_interrupt

    with sigterm_as_interrupt() as sigterm:
        try:
            code = _run(argv)
        except KeyboardInterrupt as exc:  # outside a command (e.g. while click parses them)
            typer.secho(f"error: {interrupted_by(exc)}", err=True, fg=typer.colors.RED)
            code = 130
    # The command saw a KeyboardInterrupt and reported it (exit 130, or a failure it caused);
    # its status says SIGTERM ended it, as a shell reports a process the signal killed.
    sys.exit(EXIT_TERMINATED if sigterm.received and code != 0 else code)


def _run(argv: list[str] | None) -> int:
    """Run the command line; its exit code."""
    errors = _click_exceptions()
    command = typer.main.get_command(build_app())
    try:
        code = command.main(args=argv, prog_name="bpedge", standalone_mode=False)
    except errors.NoArgsIsHelpError as exc:
        exc.show()  # a bare `bpedge` or `bpedge train`: the help is the answer
        return exc.exit_code
    except errors.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx is not None else "bpedge"
        typer.secho(f"error: {exc.format_message()} (see `{where} --help`)", err=True,
                    fg=typer.colors.RED)
        return exc.exit_code
    except errors.ClickException as exc:
        typer.secho(f"error: {exc.format_message()}", err=True, fg=typer.colors.RED)
        return exc.exit_code
    except typer.Abort:
        typer.secho("error: aborted", err=True, fg=typer.colors.RED)
        return 1
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    main()
