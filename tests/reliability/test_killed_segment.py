"""``bpedge segment`` killed outright (SIGKILL: the OOM killer, a power cut) keeps the rows of
every frame it recorded.

Rows used to be kept in memory and written only at the end, so a killed run on a long input left
masks and overlays but not one score or box. Each frame's rows are now appended to
``results.partial.csv``, ``results.partial.jsonl`` and ``accuracy.partial.csv`` as it is recorded.

The run is a real subprocess, stopped at a known point: a wrapper around ``SegmentOutputs.add``
says when the N-th frame is recorded and then waits, and is SIGKILLed there; or (no wrapper, the
console command as a user runs it) SIGKILLed once the partial table on disk has N rows.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpedge import open_frames
from bpedge._cli._segment_output import PNG_RECORD
from bpedge._cli.app import build_app
from bpedge._out_dir import owned_entries

runner = CliRunner()
BASE = ["--backend", "onnxruntime", "--no-progress"]
PARTIAL = ("results.partial.csv", "results.partial.jsonl", "accuracy.partial.csv")
RECORDED = 5

#: ``bpedge segment`` with ``SegmentOutputs.add`` wrapped: once the N-th frame's add has returned
#: (its files written, its rows recorded) it prints ``recorded N`` and waits to be killed.
_PAUSED_AT = """
import sys, time
from bpedge._cli import _segment_outputs
from bpedge._cli.app import main

stop, calls, real_add = int(sys.argv[1]), [], _segment_outputs.SegmentOutputs.add

def add(self, frame, result):
    real_add(self, frame, result)
    calls.append(frame)
    if len(calls) == stop:
        print(f"recorded {stop}", flush=True)
        time.sleep(600)

_segment_outputs.SegmentOutputs.add = add
main(sys.argv[2:])
"""


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def frames(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 48 phantom frames with their masks, Kaggle layout (so accuracy is written too)."""
    folder = tmp_path_factory.mktemp("killed_segment") / "frames"
    shutil.copytree(phantom_dir, folder)
    return folder


def order(folder: Path) -> list[str]:
    """The frame names in the order segment takes them."""
    with open_frames(folder) as source:
        return [frame.name for frame in source]


def signal_when_recorded(bundle: Path, source: Path, out: Path, n: int, sent: signal.Signals,
                         *extra: str) -> tuple[int, str]:
    """Run segment until its ``n``-th frame is recorded, then send it ``sent`` there; its exit
    status and stderr."""
    args = ["segment", str(bundle), str(source), "--out", str(out), *BASE, *extra]
    proc = subprocess.Popen([sys.executable, "-c", _PAUSED_AT, str(n), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == f"recorded {n}\n", line + proc.communicate(timeout=60)[1]
        proc.send_signal(sent)
    finally:
        _stdout, stderr = proc.communicate(timeout=60)
    return proc.returncode, stderr


def kill_when_recorded(bundle: Path, source: Path, out: Path, n: int, *extra: str) -> None:
    """Run segment until its ``n``-th frame is recorded, then SIGKILL it there."""
    code, stderr = signal_when_recorded(bundle, source, out, n, signal.SIGKILL, *extra)
    assert code == -signal.SIGKILL, stderr


def table(path: Path) -> tuple[list[str], str]:
    """The complete lines of a partial table and what follows the last line break (a line a
    kill cut short, which is not a row; empty when every line is whole)."""
    text = path.read_text()
    *lines, torn = text.split("\n")
    return lines, torn


def stems(rows: list[dict[str, str]]) -> list[str]:
    return [Path(r["file"]).stem for r in rows]


def test_a_killed_run_keeps_the_rows_of_every_frame_it_recorded(tiny_bundle, frames, tmp_path):
    out = tmp_path / "out"
    kill_when_recorded(tiny_bundle, frames, out, RECORDED)
    first = order(frames)[:RECORDED]
    assert (out / "INCOMPLETE.txt").exists() and not (out / "results.csv").exists()

    lines, torn = table(out / "results.partial.csv")
    assert torn == ""  # each row is one whole line
    rows = list(csv.DictReader(lines))
    assert stems(rows) == first  # exactly the frames recorded, in order
    assert all(None not in r and None not in r.values() for r in rows)  # every column there
    jsonl, torn = table(out / "results.partial.jsonl")
    assert torn == "" and [json.loads(line)["name"] for line in jsonl] == first
    accuracy, torn = table(out / "accuracy.partial.csv")
    assert torn == "" and stems(list(csv.DictReader(accuracy))) == first
    # The rows are the frames' own: the same as a finished run writes for them.
    done = tmp_path / "done"
    assert runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                       str(done), *BASE]).exit_code == 0
    full = list(csv.DictReader((done / "results.csv").open()))
    keep = ("file", "frame", "present", "score", "x0", "y0", "x1", "y1")
    assert [{k: r[k] for k in keep} for r in rows] == [{k: r[k] for k in keep}
                                                      for r in full[:RECORDED]]
    for sub in ("masks", "overlays"):
        assert sorted(p.stem for p in (out / sub).iterdir()) == sorted(first)


def test_the_console_command_killed_mid_run_leaves_whole_rows_with_their_masks(
        tiny_bundle, frames, tmp_path):
    out = tmp_path / "out"
    partial = out / "results.partial.csv"
    proc = subprocess.Popen([sys.executable, "-m", "bpedge._cli.app", "segment",
                             str(tiny_bundle), str(frames), "--out", str(out), *BASE],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env())
    try:
        deadline = time.monotonic() + 120
        while not (partial.exists() and partial.read_bytes().count(b"\n") > RECORDED):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no rows appeared in 120 s"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "finished before the kill: use more frames"
    lines, _torn = table(partial)  # a line cut short by the kill is no row
    rows = list(csv.DictReader(lines))
    assert len(rows) >= RECORDED
    assert all(None not in r and None not in r.values() for r in rows)
    assert stems(rows) == order(frames)[:len(rows)]
    masks = {p.stem for p in (out / "masks").iterdir()}
    assert set(stems(rows)) <= masks
    # Rows go down before the JSON lines: at most the one frame being recorded differs.
    jsonl, _torn = table(out / "results.partial.jsonl")
    assert [json.loads(line)["name"] for line in jsonl] == stems(rows)[:len(jsonl)]
    assert len(rows) - len(jsonl) in (0, 1)


def test_the_next_run_into_a_killed_runs_folder_is_refused_then_replaces_it_with_force(
        tiny_bundle, frames, tmp_path):
    out = tmp_path / "out"
    kill_when_recorded(tiny_bundle, frames, out, RECORDED)
    with (out / "results.partial.csv").open("a") as f:
        f.write("'killed/in/a/wri")  # what a kill inside a write call would leave
    args = ["segment", str(tiny_bundle), str(frames), "--out", str(out), *BASE]
    refused = runner.invoke(build_app(), args)
    assert refused.exit_code == 2 and "--force" in refused.output
    assert len(table(out / "results.partial.csv")[0]) == RECORDED + 1  # untouched
    forced = runner.invoke(build_app(), [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert not [name for name in PARTIAL if (out / name).exists()]
    assert not (out / "INCOMPLETE.txt").exists()
    assert len(list(csv.DictReader((out / "results.csv").open()))) == len(order(frames))


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_killed_run_in_a_users_folder_owns_its_partial_tables_and_nothing_else(
        tiny_bundle, frames, tmp_path):
    study = tmp_path / "study"
    shutil.copytree(frames, study)
    (study / "notes.txt").write_text("my notes")
    mine = snapshot(study)
    extra = ("--add-to-existing", "--no-overlays")
    kill_when_recorded(tiny_bundle, study, study, RECORDED, *extra)
    # Recorded before they were created, so --force may replace them.
    assert set(PARTIAL) <= owned_entries(study, "segment")
    assert len(list(csv.DictReader(table(study / "results.partial.csv")[0]))) == RECORDED
    again = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(study), "--out",
                                        str(study), *BASE, *extra, "--force"])
    assert again.exit_code == 0, again.output
    assert not [name for name in PARTIAL if (study / name).exists()]
    assert owned_entries(study, "segment") == {"masks", "results.csv", "results.jsonl",
                                               "accuracy.csv", PNG_RECORD}
    after = snapshot(study)
    assert {k: after.get(k) for k in mine} == mine


def test_a_file_that_takes_a_partial_tables_name_mid_run_is_never_replaced_or_owned(
        tiny_bundle, frames, tmp_path, monkeypatch):
    from bpedge._cli import _segment_outputs

    study = tmp_path / "study"
    shutil.copytree(frames, study)
    real_add = _segment_outputs.SegmentOutputs.add

    def add(self, frame, result):
        if not self.recorded_frames:  # the user's own table appears just before the first row is written
            (study / "results.partial.csv").write_text("mine\n")
        real_add(self, frame, result)

    monkeypatch.setattr(_segment_outputs.SegmentOutputs, "add", add)
    args = ["segment", str(tiny_bundle), str(study), "--out", str(study), *BASE,
            "--add-to-existing"]
    failed = runner.invoke(build_app(), args)
    assert failed.exit_code == 1, failed.output
    assert "results.partial.csv" in failed.output and "not overwritten" in failed.output
    assert (study / "results.partial.csv").read_text() == "mine\n"
    assert "results.partial.csv" not in owned_entries(study, "segment")
    assert not (study / "results.partial.jsonl").exists()  # no frame was recorded
    monkeypatch.setattr(_segment_outputs.SegmentOutputs, "add", real_add)
    forced = runner.invoke(build_app(), [*args, "--force"])
    assert forced.exit_code == 2 and "never overwritten" in forced.output
    assert (study / "results.partial.csv").read_text() == "mine\n"


def test_a_row_appended_for_a_frame_then_not_recorded_is_not_kept(tiny_bundle, frames, tmp_path,
                                                                 monkeypatch):
    """Ctrl-C after a frame's rows reach the partial tables but before the frame is recorded:
    its mask is removed (no file without its row), so its rows must go too."""
    from bpedge._cli import _segment_outputs

    real_append, appended = _segment_outputs._PartialTables.append, []

    def append_then_ctrl_c(self, done):
        real_append(self, done)
        appended.append(done)
        if len(appended) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(_segment_outputs._PartialTables, "append", append_then_ctrl_c)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code != 0 and (out / "INCOMPLETE.txt").exists()
    first = order(frames)[:2]
    assert stems(list(csv.DictReader((out / "results.partial.csv").open()))) == first
    assert stems(list(csv.DictReader((out / "accuracy.partial.csv").open()))) == first
    assert [json.loads(line)["name"]
            for line in (out / "results.partial.jsonl").read_text().splitlines()] == first
    assert sorted(p.stem for p in (out / "masks").iterdir()) == sorted(first)


def test_a_finished_run_leaves_no_partial_tables(tiny_bundle, frames, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 0, result.output
    assert not [name for name in PARTIAL if (out / name).exists()]
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "accuracy.csv", "masks", "overlays", "results.csv", "results.jsonl"]


def swap_in_users_table(study: Path, name: str, when: int, monkeypatch) -> None:
    """Once ``when`` frames are recorded, the user moves ``name`` away and puts their own file
    there (the run goes on appending to the file it made, now under the user's name)."""
    from bpedge._cli import _segment_outputs

    real_add = _segment_outputs.SegmentOutputs.add

    def add(self, frame, result):
        real_add(self, frame, result)
        if self.recorded_frames == when:
            if (study / name).exists():
                os.replace(study / name, study.parent / f"moved-{name}")
            (study / name).write_text("mine\n")

    monkeypatch.setattr(_segment_outputs.SegmentOutputs, "add", add)


@pytest.mark.parametrize("name", ["results.partial.csv", "results.csv"])
def test_a_users_file_put_at_a_tables_name_mid_run_is_kept_by_a_finished_run(
        tiny_bundle, frames, tmp_path, monkeypatch, name):
    """A finished run used to delete its partial tables by name, and write its final tables over
    whatever was at theirs: the user's file that took the name during the run was gone."""
    study = tmp_path / "study"
    shutil.copytree(frames, study)
    swap_in_users_table(study, name, 2, monkeypatch)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(study), "--out",
                                         str(study), *BASE, "--add-to-existing"])
    assert (study / name).read_text() == "mine\n"
    assert name not in owned_entries(study, "segment")  # so --force never deletes it
    if name == "results.csv":
        assert result.exit_code == 1 and "not overwritten" in result.output, result.output
        assert (study / "INCOMPLETE.txt").exists()  # and every row is still on disk
        rows = list(csv.DictReader((study / "results.partial.csv").open()))
        assert len(rows) == len(order(frames))
    else:
        assert result.exit_code == 0, result.output


def test_a_users_file_put_at_a_partial_tables_name_mid_run_is_kept_by_a_failed_run(
        tiny_bundle, frames, tmp_path, monkeypatch):
    """A failed run rewrites its partial tables whole: never over a file the user put there."""
    study = tmp_path / "study"
    shutil.copytree(frames, study)
    (study / "zz_broken.png").write_bytes(b"not an image")  # the last frame: the run fails there
    swap_in_users_table(study, "results.partial.csv", 2, monkeypatch)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(study), "--out",
                                         str(study), *BASE, "--add-to-existing"])
    assert result.exit_code != 0
    assert (study / "results.partial.csv").read_text() == "mine\n"
    assert "results.partial.csv" not in owned_entries(study, "segment")


def test_sigterm_stops_a_run_as_ctrl_c_does(tiny_bundle, frames, tmp_path):
    """SIGTERM (kill, systemd, docker stop) used to end the process at once, as SIGKILL: no
    message, no tables, and the --save-video file of the frames done lost. It now stops the
    run as Ctrl-C does, with the shell's status for SIGTERM, 143."""
    out, video = tmp_path / "out", tmp_path / "done.avi"
    code, stderr = signal_when_recorded(tiny_bundle, frames, out, RECORDED, signal.SIGTERM,
                                       "--save-video", str(video))
    assert code == 143, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr
    assert f"the {RECORDED} frame(s) segmented before it" in stderr
    first = order(frames)[:RECORDED]
    rows = list(csv.DictReader((out / "results.partial.csv").open()))
    assert stems(rows) == first
    for sub in ("masks", "overlays"):
        assert sorted(p.stem for p in (out / sub).iterdir()) == sorted(first)
    assert "It stopped: Terminated" in (out / "INCOMPLETE.txt").read_text()
    import cv2

    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == RECORDED
    capture.release()
