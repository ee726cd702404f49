"""``bpedge export`` through typer's test runner: help, a small run, and bad input exiting 2."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from bpedge._cli import app as cli_app
from bpedge._cli import export as export_cli
from bpedge.bundle import Bundle


def _app() -> typer.Typer:
    """The real app; while another command module of ``_COMMAND_MODULES`` is still missing from the
    tree, an app with the same root options holding only this command."""
    try:
        return cli_app.build_app()
    except ModuleNotFoundError as exc:
        if exc.name == "bpedge._cli.export":
            raise
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False)

    @app.callback()
    def _root() -> None:
        pass

    export_cli.register(app)
    return app


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_command_is_registered() -> None:
    assert "bpedge._cli.export" in cli_app._COMMAND_MODULES


def test_help_names_every_option(runner: CliRunner) -> None:
    result = runner.invoke(_app(), ["export", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for option in ("--detector", "--segmenter", "--out", "--data", "--max-val", "--force"):
        assert option in result.output


def test_a_small_run_with_detector_crops_replaces_an_old_bundle_with_force(
    runner: CliRunner, tiny_checkpoints: tuple[Path, Path], detector_crop_segmenter: Path,
    phantom_dir: Path, tiny_bundle: Path, tmp_path: Path,
) -> None:
    # The old bundle is one export made; a folder export did not make is never replaced (see
    # tests/reliability/test_user_folders.py).
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    old_created = Bundle.open(out).manifest.created
    args = ["export", "--detector", str(tiny_checkpoints[0]), "--segmenter",
            str(detector_crop_segmenter), "--out", str(out), "--data", str(phantom_dir),
            "--max-val", "2"]
    refused = runner.invoke(_app(), args)
    assert refused.exit_code == 2 and "--force" in refused.output
    result = runner.invoke(_app(), [*args, "--force"])
    assert result.exit_code == 0, result.output
    for step in range(1, 9):
        assert f"[{step}/8]" in result.output
    assert f"bundle {out}: score threshold" in result.output
    manifest = Bundle.open(out).manifest
    assert manifest.created >= old_created
    mask = manifest.thresholds.how_chosen["mask"]
    assert mask["data"]["crop_boxes"] == "boxes of the exported FP32 detector (ONNX Runtime)"
    assert mask["data"]["frames_with_bp"] == 2
    assert manifest.training.presets["segmenter"]["crop_mode"] == "detector"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]  # no staging directory left


def test_a_missing_checkpoint_exits_2(runner: CliRunner, tiny_checkpoints: tuple[Path, Path],
                                      tmp_path: Path) -> None:
    result = runner.invoke(_app(), ["export", "--detector", str(tmp_path / "nope.pt"),
                                    "--segmenter", str(tiny_checkpoints[1]),
                                    "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "--detector" in result.output and "does not exist" in result.output
    assert not (tmp_path / "b").exists()


def test_a_checkpoint_of_the_wrong_kind_exits_2(runner: CliRunner,
                                                tiny_checkpoints: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    detector = tiny_checkpoints[0]
    result = runner.invoke(_app(), ["export", "--detector", str(detector), "--segmenter",
                                    str(detector), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "holds a detector checkpoint; --segmenter needs a segmenter" in result.output
    assert not (tmp_path / "b").exists()


def test_a_file_that_is_no_checkpoint_exits_2(runner: CliRunner,
                                              tiny_checkpoints: tuple[Path, Path],
                                              tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    result = runner.invoke(_app(), ["export", "--detector", str(tiny_checkpoints[0]),
                                    "--segmenter", str(junk), "--out", str(tmp_path / "b")])
    assert result.exit_code == 2
    assert "junk.pt" in result.output


#: ``bpedge export`` that stops for good once its staging folder holds the ONNX files, so a test
#: can SIGKILL it mid-export (a kill cannot clean anything up).
EXPORT_THEN_STALL = """
import sys, time
from bpedge.export import bundle_export

real_write = bundle_export._write_onnx_files

def write_then_stall(*args, **kwargs):
    real_write(*args, **kwargs)
    print("staging written", flush=True)
    time.sleep(600)

bundle_export._write_onnx_files = write_then_stall
from bpedge._cli.app import main
main(sys.argv[1:])
"""


def test_the_next_export_removes_the_staging_folder_a_killed_export_left(
        runner: CliRunner, tiny_checkpoints: tuple[Path, Path], phantom_dir: Path,
        tmp_path: Path, start_paused) -> None:
    """SIGKILL mid-export left ``.bundle.export-RANDOM/`` (ONNX files and all) beside --out, and
    nothing removed it. The next export into that --out does; never the staging folder of an
    export still running, nor a folder of that name without export's marker."""
    out = tmp_path / "bundle"
    args = ["export", "--detector", str(tiny_checkpoints[0]), "--segmenter",
            str(tiny_checkpoints[1]), "--out", str(out), "--data", str(phantom_dir),
            "--max-val", "2"]
    killed = start_paused(EXPORT_THEN_STALL, args, "staging written")
    killed.kill()
    killed.wait()
    (left,) = tmp_path.glob(".bundle.export-*")
    assert any(left.glob("*.onnx"))  # what the kill left
    lookalike = tmp_path / ".bundle.export-ab12cd34"  # not export's: no marker in it
    lookalike.mkdir()
    (lookalike / "notes.txt").write_text("mine")
    live = start_paused(EXPORT_THEN_STALL, args, "staging written")
    try:
        (running,) = set(tmp_path.glob(".bundle.export-*")) - {left, lookalike}
        result = runner.invoke(_app(), args)
        assert result.exit_code == 0, result.output
        assert sorted(tmp_path.iterdir()) == sorted([out, running, lookalike])
        assert (lookalike / "notes.txt").read_text() == "mine"
    finally:
        live.kill()
        live.wait()
