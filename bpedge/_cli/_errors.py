"""How commands fail: one line that says what to do, exit 1 (failed) or 2 (bad usage or input).

Every command is wrapped in :func:`command_errors`, so the mapping holds both for the console
script and for typer's test runner; ``--debug`` (or ``BPEDGE_DEBUG=1``) re-raises instead.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from bpedge._display_text import printable

DEBUG_ENV = "BPEDGE_DEBUG"

F = TypeVar("F", bound=Callable[..., Any])


#: Optional modules and the extra that installs each (pyproject.toml's optional-dependencies):
#: a command that needs one and finds it missing says which ``pip install`` adds it.
EXTRA_FOR_MODULE = {
    "torch": "train", "torchvision": "train", "onnx": "train", "onnxsim": "train",
    "matplotlib": "train", "PIL": "train",
    "pydicom": "dicom", "pylibjpeg": "dicom",
    "openvino": "openvino",
    "tensorrt": "tensorrt", "tensorrt_bindings": "tensorrt",
}


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The advice for a missing optional module (None for any other missing module: that is a
    broken install or a bug, and its own message is the clearest)."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRA_FOR_MODULE.get(top)
    if extra is None:
        return None
    return (f"{top} is not installed, and this command needs it: pip install 'bpedge[{extra}]' "
            f"(or, in a checkout, pip install -e '.[{extra}]')")


class UsageError(Exception):
    """Bad input or usage: the CLI prints the message and exits with code 2."""


class CommandFailed(Exception):
    """The command ran and failed: the CLI prints the message and exits with code 1."""


def command_errors(fn: F) -> F:
    """Map exceptions raised by a command to a one-line message and an exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (UsageError, ValueError, FileNotFoundError, NotADirectoryError) as exc:
            _fail(exc, 2)
        except KeyboardInterrupt:
            typer.secho("error: interrupted", err=True, fg=typer.colors.RED)
            raise typer.Exit(130) from None
        except ModuleNotFoundError as exc:
            advice = missing_extra(exc)
            _fail(exc if advice is None else CommandFailed(advice), 1)
        except Exception as exc:  # noqa: BLE001 - the CLI boundary: any other failure is exit 1
            _fail(exc, 1)

    return wrapper  # type: ignore[return-value]


def _fail(exc: BaseException, code: int) -> None:
    if os.environ.get(DEBUG_ENV) == "1":
        raise exc
    # Messages name files and may quote their contents: escaped, never terminal controls.
    typer.secho(f"error: {printable(str(exc), keep_newlines=True)}", err=True,
                fg=typer.colors.RED)
    typer.echo("(run with --debug for the full traceback)", err=True)
    raise typer.Exit(code) from None
