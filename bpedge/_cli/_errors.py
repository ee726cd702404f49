"""How commands fail: one line that says what to do, exit 1 (failed) or 2 (bad usage or input).

Every command is wrapped in :func:`command_errors`, so the mapping holds both for the console
script and for typer's test runner; ``--debug`` (or ``BPEDGE_DEBUG=1``) re-raises instead. Only
an error no command foresaw (a bug, a broken install) adds the hint to run with ``--debug``: a
refusal of the user's input or set-up says what to do, and its traceback would add nothing.
"""

from __future__ import annotations

import errno
import functools
import os
import sys
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
            _fail(exc, 2, expected=True)
        except KeyboardInterrupt as exc:
            _end_progress_lines()
            typer.secho(f"error: {interrupted_by(exc)}", err=True, fg=typer.colors.RED)
            raise typer.Exit(130) from None
        except ModuleNotFoundError as exc:
            advice = missing_extra(exc)
            _fail(exc if advice is None else CommandFailed(advice), 1, expected=advice is not None)
        except OSError as exc:
            # A path the system refuses as written (a part past 255 bytes) is bad input, named
            # by the error; any other OSError is the run failing.
            if exc.errno == errno.ENAMETOOLONG:
                _fail(exc, 2, expected=True)
            _fail(exc, 1, expected=_is_expected(exc))
        except Exception as exc:  # noqa: BLE001 - the CLI boundary: any other failure is exit 1
            _fail(exc, 1, expected=_is_expected(exc))

    return wrapper  # type: ignore[return-value]


def interrupted_by(exc: KeyboardInterrupt) -> str:
    """What stopped the command, as its last line says it: SIGTERM arrives as the
    KeyboardInterrupt subclass :class:`bpedge._cli._signals.Terminated`, Ctrl-C as itself."""
    from bpedge._cli._signals import Terminated

    return "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"


def _is_expected(exc: Exception) -> bool:
    """A failure the command foresaw and worded itself (CommandFailed; a source that cannot be
    opened or stops delivering frames; pydicom missing, with the extra that installs it): its
    message says all there is, and a traceback adds nothing."""
    if isinstance(exc, CommandFailed):
        return True
    # Imported here: bpedge.sources and bpedge._dicom load NumPy, which --help does without.
    from bpedge._dicom import DicomUnavailableError
    from bpedge.sources import SourceError

    return isinstance(exc, (SourceError, DicomUnavailableError))


def _end_progress_lines() -> None:
    """End the line of every progress bar still open (one a command left open when it failed),
    showing what it last showed, so that the message after it starts on a line of its own: it
    was printed on the bar's line, and the bar was drawn again after it when Python exited."""
    tqdm_module = sys.modules.get("tqdm")
    if tqdm_module is None:
        return  # no bar was ever made
    # tqdm's registry of open bars, the one its own tqdm.write() clears them through.
    for bar in list(getattr(tqdm_module.tqdm, "_instances", ())):
        bar.close()


def _fail(exc: BaseException, code: int, *, expected: bool) -> None:
    """Print ``exc`` as one error message and exit with ``code``. ``expected``: the user's input
    or set-up caused it and the message says what to do, so no --debug hint; only for an
    unexpected error is the traceback worth asking for."""
    if os.environ.get(DEBUG_ENV) == "1":
        raise exc
    _end_progress_lines()
    # Messages name files and may quote their contents: escaped, never terminal controls.
    typer.secho(f"error: {printable(str(exc), keep_newlines=True)}", err=True,
                fg=typer.colors.RED)
    if not expected:
        typer.echo("(run with --debug for the full traceback)", err=True)
    raise typer.Exit(code) from None
