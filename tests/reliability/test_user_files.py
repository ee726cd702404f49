"""No command or API call overwrites a single file it did not write.

The files a user names on their own (``bench --json``, ``doctor --json``, ``build-engines
--timing-cache``, ``segment --save-video``, ``Result.save(path)``) are pointed at files a careless
user would give: their notes, the input video itself, a file that appears while a long run is
under way, a symbolic link, a file at the name bpedge once used for its temporary video. Each is
refused (exit 2 and one ``error:`` line naming the file and the flag, or ``FileExistsError`` /
``OutFileRefused`` from Python) and left byte for byte; nothing else is written. A file the
command wrote itself is still replaced (re-runs, ``--force``)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from bpedge.train.data import read_image
from typer.testing import CliRunner

from bpedge._cli.app import build_app
from bpedge._out_dir import OutDirRefused
from bpedge._out_file import record_path
from bpedge.segmenter import Segmenter

runner = CliRunner()
USER_BYTES = b"my own file: keep me\n"


def snapshot(folder: Path) -> dict[str, str]:
    """Every file and link under ``folder`` (links by where they point) and its sha256."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_symlink():
            found[str(p.relative_to(folder))] = f"-> {p.readlink()}"
        elif p.is_file():
            found[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def assert_refused_in_one_line(result, path: Path, flag: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{flag} {path}" in errors[0], result.output
    assert "Traceback" not in result.output


# --- build-engines --timing-cache ----------------------------------------------------------------


def test_build_engines_refuses_a_user_file_as_timing_cache_before_anything_else(
    tiny_bundle: Path, tmp_path: Path,
) -> None:
    cache = tmp_path / "notes.txt"
    cache.write_bytes(USER_BYTES)
    before_bundle, before = snapshot(tiny_bundle), snapshot(tmp_path)
    result = runner.invoke(build_app(), ["build-engines", str(tiny_bundle), "--timing-cache",
                                         str(cache)])
    assert_refused_in_one_line(result, cache, "--timing-cache")
    assert "not written by `bpedge build-engines`" in result.output
    assert "TensorRT" not in result.output  # the user's input is checked before the machine
    assert snapshot(tmp_path) == before and snapshot(tiny_bundle) == before_bundle


# --- doctor --json ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["notes", "JSON of the user's", "a link to a doctor report"])
def test_doctor_json_never_overwrites_a_file_it_did_not_write(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "doctor.json"
    if kind == "notes":
        target.write_bytes(USER_BYTES)
    elif kind == "JSON of the user's":
        target.write_text('{"findings": "mine"}\n')
    else:
        report = tmp_path / "report.json"
        assert runner.invoke(build_app(), ["doctor", "--json", str(report)]).exit_code in (0, 1)
        target.symlink_to(report)
    before = snapshot(tmp_path)
    result = runner.invoke(build_app(), ["doctor", "--json", str(target)])
    assert_refused_in_one_line(result, target, "--json")
    assert snapshot(tmp_path) == before


def test_doctor_json_replaces_its_own_report(tmp_path: Path) -> None:
    target = tmp_path / "doctor.json"
    for _ in range(2):
        result = runner.invoke(build_app(), ["doctor", "--json", str(target)])
        assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["schema"] == "bpedge-doctor"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor.json"]


# --- bench --json ----------------------------------------------------------------------------------


def test_bench_json_that_appears_during_the_run_is_left_as_it_is(
    tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bpedge._bench.run as bench_run

    target = tmp_path / "run.json"
    measure = bench_run.run_bench

    def run_while_the_user_saves_a_file(*args, **kwargs):
        record = measure(*args, **kwargs)
        target.write_bytes(USER_BYTES)  # the run took minutes; the name was taken meanwhile
        return record

    monkeypatch.setattr(bench_run, "run_bench", run_while_the_user_saves_a_file)
    result = runner.invoke(build_app(), [
        "bench", str(tiny_bundle), "--backends", "onnxruntime", "--precisions", "fp32",
        "--iterations", "1", "--warmup-seconds", "0", "--rounds", "1", "--phantom-subjects", "1",
        "--phantom-frames", "2", "--ceiling-seconds", "0.01", "--json", str(target),
        "--no-progress"])
    assert_refused_in_one_line(result, target, "--json")
    assert target.read_bytes() == USER_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
