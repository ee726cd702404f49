"""How a command's failure reads: the message on a line of its own even when a progress bar was
drawn (it was printed on the bar's line), and the --debug hint only for an error the command did
not foresee (a refusal of the user's input got it too, as if it were a bug)."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bpedge._cli._errors import CommandFailed, UsageError, command_errors
from bpedge._cli.app import build_app
from bpedge.sources import SourceError

HINT = "(run with --debug for the full traceback)"


def _app(error: BaseException, *, bar: bool = False) -> typer.Typer:
    app = typer.Typer()

    @app.command()
    @command_errors
    def run() -> None:
        if bar:
            from tqdm import tqdm

            progress = tqdm(total=4, desc="segmenting", unit="frame")
            progress.update(1)  # left open, as a command that fails between frames leaves it
        raise error

    @app.command()
    def other() -> None:
        """A second command: with two, typer takes the command's name from the arguments."""

    return app


@pytest.mark.parametrize("error,code", [
    (UsageError("--depth must be >= 1"), 2),
    (ValueError("scan.dcm: declares 0 frames"), 2),
    (FileNotFoundError("input x.png does not exist"), 2),
    (CommandFailed("the table could not be written"), 1),
    (SourceError("capture device 3: cannot be opened (is a camera attached and free?)"), 1),
    (ModuleNotFoundError("No module named 'torch'", name="torch"), 1),
])
def test_errors_the_command_foresaw_get_no_debug_hint(monkeypatch: pytest.MonkeyPatch,
                                                      error: BaseException, code: int):
    monkeypatch.delenv("BPEDGE_DEBUG", raising=False)
    result = CliRunner().invoke(_app(error), ["run"])
    assert result.exit_code == code
    assert result.output.startswith("error: ") and HINT not in result.output


@pytest.mark.parametrize("error", [RuntimeError("index 7 is out of bounds"),
                                   ModuleNotFoundError("No module named 'foo'", name="foo")])
def test_an_unexpected_error_gets_the_debug_hint(monkeypatch: pytest.MonkeyPatch,
                                                 error: BaseException):
    monkeypatch.delenv("BPEDGE_DEBUG", raising=False)
    result = CliRunner().invoke(_app(error), ["run"])
    assert result.exit_code == 1 and result.output.endswith(f"\n{HINT}\n")


@pytest.mark.parametrize("error", [ValueError("o holds the partial results of an earlier run"),
                                   RuntimeError("boom")])
def test_an_error_after_a_progress_bar_starts_on_its_own_line_below_the_bar(
        monkeypatch: pytest.MonkeyPatch, error: BaseException):
    monkeypatch.delenv("BPEDGE_DEBUG", raising=False)
    result = CliRunner().invoke(_app(error, bar=True), ["run"])
    before, _, after = result.output.partition("error: ")
    assert before.endswith("\n") and "1/4" in before.splitlines()[-1]  # the bar, as it stood
    assert "segmenting" not in after  # the bar is not drawn again after the message


def test_segment_refused_by_its_out_folder_prints_the_refusal_on_its_own_line(
        tiny_bundle: Path, phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("BPEDGE_DEBUG", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's")  # a folder segment did not make: refused
    result = CliRunner().invoke(build_app(), [
        "segment", str(tiny_bundle), str(phantom_dir / "1_1.tif"), "--out", str(out),
        "--backend", "onnxruntime"])
    assert result.exit_code == 2
    before, _, after = result.output.partition("error: ")
    assert before.endswith("\n") and after and HINT not in after
    assert "segmenting:" not in after
