"""Bad command lines fail first, in one line, with exit 2, and leave nothing behind: usage errors
through the real entry point (what the console script runs), a missing bundle before a missing
TensorRT, a bad ``bench --json`` before the run, a refused pickle in ``train --weights``."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpedge._cli.app import build_app, main

runner = CliRunner()


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    captured = capsys.readouterr()
    return int(stopped.value.code or 0), captured.out + captured.err


@pytest.mark.parametrize("argv,words", [
    (["segment"], "Missing argument"),
    (["segment", "--bogus"], "No such option: --bogus"),
    (["bench", "--depth", "x", "b"], "Invalid value for '--depth'"),
    (["export", "--out", "x"], "Missing option"),
    (["train", "detector", "--data"], "requires an argument"),
])
def test_a_usage_error_is_one_line_with_exit_2(argv, words, capsys):
    code, output = run_main(argv, capsys)
    assert code == 2
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1, output
    assert lines[0].startswith("error:") and words in lines[0] and "--help" in lines[0]


def test_help_and_version_still_exit_0(capsys):
    assert run_main(["segment", "--help"], capsys)[0] == 0
    code, output = run_main(["--version"], capsys)
    assert code == 0 and "bpedge" in output


def test_build_engines_reports_a_missing_bundle_first(tmp_path: Path):
    result = runner.invoke(build_app(), ["build-engines", str(tmp_path / "nope")])
    assert result.exit_code == 2, result.output
    assert "does not exist" in result.output and "TensorRT" not in result.output


@pytest.mark.parametrize("make", ["folder", "user file", "under a file"])
def test_bench_json_is_checked_before_the_run(tiny_bundle: Path, tmp_path: Path, make: str,
                                              monkeypatch: pytest.MonkeyPatch):
    import bpedge._bench.run as bench_run

    def must_not_run(*args, **kwargs):
        raise AssertionError("the benchmark ran before --json was checked")

    monkeypatch.setattr(bench_run, "run_bench", must_not_run)
    if make == "folder":
        target = tmp_path
    elif make == "user file":
        target = tmp_path / "notes.json"
        target.write_text('{"mine": 1}')
    else:
        (tmp_path / "file").write_text("x")
        target = tmp_path / "file" / "run.json"
    result = runner.invoke(build_app(), ["bench", str(tiny_bundle), "--json", str(target),
                                         "--backends", "onnxruntime", "--iterations", "1",
                                         "--warmup-seconds", "0", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "--json" in result.output and "AssertionError" not in result.output
    if make == "user file":
        assert target.read_text() == '{"mine": 1}'


def test_train_weights_with_a_refused_pickle_is_one_line_exit_2_and_leaves_nothing(
    phantom_dir: Path, tmp_path: Path,
):
    import torch

    weights = tmp_path / "evil.pt"
    # A dict subclass from this test module: weights_only=True refuses to build it.
    torch.save({"state": _Evil(a=1)}, weights)
    out = tmp_path / "run"
    result = runner.invoke(build_app(), ["train", "detector", "--data", str(phantom_dir),
                                         "--out", str(out), "--weights", str(weights),
                                         "--epochs", "1", "--limit", "2", "--no-progress"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refused" in errors[0] and str(weights) in errors[0]
    assert "weights_only=False" not in result.output
    assert not out.exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX FIFOs (os.mkfifo)")
@pytest.mark.parametrize("kind", ["folder", "FIFO", "missing", "under a file", "link loop"])
def test_train_weights_that_is_not_a_file_says_what_it_is(phantom_dir: Path, tmp_path: Path,
                                                          kind: str):
    """A folder or a FIFO given as --weights was reported as "does not exist"."""
    weights = {"folder": tmp_path / "w", "FIFO": tmp_path / "w.pt", "missing": tmp_path / "no.pt",
               "under a file": tmp_path / "file.pt" / "w.pt", "link loop": tmp_path / "loop.pt"}[kind]
    if kind == "folder":
        weights.mkdir()
    elif kind == "FIFO":
        os.mkfifo(weights)
    elif kind == "under a file":
        weights.parent.write_text("x")
    elif kind == "link loop":  # was "[Errno 40] Too many levels of symbolic links", exit 1
        weights.symlink_to(weights)
    out = tmp_path / "run"
    result = runner.invoke(build_app(), ["train", "detector", "--data", str(phantom_dir),
                                         "--out", str(out), "--weights", str(weights),
                                         "--epochs", "1", "--no-progress"])
    assert result.exit_code == 2, result.output
    want = {"folder": "is a directory, not a file", "FIFO": "is a FIFO (named pipe), not a file",
            "missing": "does not exist",
            "under a file": "does not exist (a part of the path is a file)",
            "link loop": "cannot be read: Too many levels of symbolic links"}[kind]
    assert f"--weights file {weights} {want}" in " ".join(result.output.split()), result.output
    assert not out.exists()


class _Evil(dict):
    """A dict subclass defined here: pickled by reference to this module, so not loadable
    with ``weights_only=True``."""


@pytest.mark.parametrize("command", ["segment", "bench"])
def test_detect_every_without_track_is_refused(tiny_bundle: Path, phantom_dir: Path,
                                               tmp_path: Path, command: str):
    """--detect-every was taken without --track and did nothing."""
    out = tmp_path / "out"
    args = {"segment": ["segment", str(tiny_bundle), str(phantom_dir / "1_1.tif"), "--out",
                        str(out)],
            "bench": ["bench", str(tiny_bundle)]}[command]
    result = runner.invoke(build_app(), [*args, "--detect-every", "5"])
    assert result.exit_code == 2, result.output
    assert "--detect-every applies to --track only" in " ".join(result.output.split())
    assert not out.exists()
