"""``bpedge phantom`` through typer's test runner: help, a small run, bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from bpedge.train.data.kaggle import scan_dataset
from typer.testing import CliRunner

from bpedge._cli import app as cli_app


def _app() -> typer.Typer:
    return cli_app.build_app()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_command_is_registered() -> None:
    assert "bpedge._cli.phantom" in cli_app._COMMAND_MODULES


def test_help(runner: CliRunner) -> None:
    result = runner.invoke(_app(), ["phantom", "--help"])
    assert result.exit_code == 0
    for option in ("--out", "--subjects", "--frames", "--seed", "--empty-fraction"):
        assert option in result.output


def test_small_run_writes_a_dataset(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    args = ["phantom", "--out", str(out), "--subjects", "2", "--frames", "3", "--seed", "4",
            "--empty-fraction", "0.34", "--height", "120", "--width", "160"]
    result = runner.invoke(_app(), args)
    assert result.exit_code == 0, result.output
    assert "wrote 6 frames" in result.output
    index = scan_dataset(out, expected_hw=(120, 160))
    assert len(index.frames) == 6 and len(index.positive()) == 4


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--subjects", "0", "subjects must be within 1..10000"),
        ("--frames", "-2", "frames within 1..100000"),
        ("--subjects", "10001", "subjects must be within 1..10000"),
        ("--height", "100000", "height and width must be within 96..4096"),
        ("--empty-fraction", "1.5", "empty_fraction"),
    ],
)
def test_bad_values_exit_2(
    runner: CliRunner, tmp_path: Path, flag: str, value: str, message: str
) -> None:
    result = runner.invoke(_app(), ["phantom", "--out", str(tmp_path / "x"), flag, value])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "x").exists()


def test_existing_dataset_is_not_overwritten(runner: CliRunner, tmp_path: Path) -> None:
    (tmp_path / "1_1.tif").write_bytes(b"precious")
    result = runner.invoke(_app(), ["phantom", "--out", str(tmp_path), "--subjects", "1"])
    assert result.exit_code == 2
    assert (tmp_path / "1_1.tif").read_bytes() == b"precious"
