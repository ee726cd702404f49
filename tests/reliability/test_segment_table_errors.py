"""``bpedge segment`` failing while it writes its tables says which file failed and where the rows
of the frames done are, and never lets a later error hide the run's first one.

The disk fills up (``ENOSPC`` from ``os.write``, which names no file) while a frame's row is
appended to a partial table; the final rewrite of the tables fails too, or a user puts a file of
their own at a table's name while a run that is about to fail goes on.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bpedge._cli import _segment_outputs
from bpedge._cli.app import build_app

runner = CliRunner()
BASE = ["--backend", "onnxruntime", "--no-progress"]
FAIL_AT = 3  # the frame whose row meets the full disk


@pytest.fixture
def frames(phantom_dir: Path, tmp_path: Path) -> Path:
    """Five phantom frames with their ground-truth masks (so accuracy.partial.csv is written)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for name in ("1_1", "1_2", "1_3", "1_4", "1_5"):
        for suffix in (".tif", "_mask.tif"):
            shutil.copy(phantom_dir / f"{name}{suffix}", folder / f"{name}{suffix}")
    return folder


def error_line(output: str) -> str:
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def fill_disk_at_row(table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``os.write`` fails with ENOSPC on the ``FAIL_AT``-th row appended to ``table`` (a CSV
    table's header is its first write)."""
    real_write, writes = os.write, []
    fail_at = FAIL_AT + table.endswith(".csv")

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(os.sep + table):
            writes.append(data)
            if len(writes) == fail_at:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="finds a descriptor's file through /proc/self/fd")


@pytest.mark.parametrize("table", ["results.partial.csv", "results.partial.jsonl"])
def test_a_full_disk_while_appending_a_row_names_the_table_and_where_the_rows_are(
        tiny_bundle, frames, tmp_path, monkeypatch, table):
    out = tmp_path / "out"
    fill_disk_at_row(table, monkeypatch)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    error, _, kept = line.partition(" (the ")
    # The error itself names the table (os.write's own message names none) ...
    assert "No space left on device" in error and str(out / table) in error, line
    # ... and the message says where the rows of the frames done are.
    assert kept.startswith(f"{FAIL_AT - 1} frame(s) segmented before it are in "), line
    for name in ("results.partial.csv", "results.partial.jsonl", "accuracy.partial.csv"):
        assert str(out / name) in kept, line
    assert len(rows(out / "results.partial.csv")) == FAIL_AT - 1
    assert len((out / "results.partial.jsonl").read_text().splitlines()) == FAIL_AT - 1


def test_a_full_disk_that_also_fails_the_tables_rewrite_keeps_the_first_error(
        tiny_bundle, frames, tmp_path, monkeypatch):
    out = tmp_path / "out"
    fill_disk_at_row("results.partial.csv", monkeypatch)

    def disk_still_full(path, *args, **kw):  # the final tables' atomic writer
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(_segment_outputs, "atomic_open", disk_still_full)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 1, result.output
    line = error_line(result.output)
    first, _, then = line.partition("; then writing the tables failed too: ")
    assert "No space left on device" in first and str(out / "results.partial.csv") in first, line
    assert "No space left on device" in then, line
    # The appended tables are left as they are: their first rows are the frames done.
    assert f"are the first {FAIL_AT - 1} row(s) of {out / 'results.partial.csv'}" in then, line
    assert len(rows(out / "results.partial.csv")) >= FAIL_AT - 1


def test_a_users_file_at_a_partial_tables_name_never_hides_the_runs_own_error(
        tiny_bundle, frames, tmp_path, monkeypatch):
    """The run fails at a broken frame; meanwhile the user moved results.partial.csv away and
    put their own file there. Refusing to overwrite it must not replace the broken frame's error
    in the message (it did: only the FileExistsError was shown)."""
    (frames / "1_9.tif").write_bytes(b"not an image")  # the last frame: the run fails there
    real_add = _segment_outputs.SegmentOutputs.add

    def add(self, frame, result):
        real_add(self, frame, result)
        if self.recorded_frames == 2:
            os.replace(frames / "results.partial.csv", tmp_path / "moved.csv")
            (frames / "results.partial.csv").write_text("mine\n")

    monkeypatch.setattr(_segment_outputs.SegmentOutputs, "add", add)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(frames), *BASE, "--add-to-existing"])
    assert result.exit_code == 2, result.output  # the broken frame's (bad input) exit code
    line = error_line(result.output)
    first, _, then = line.partition("; then writing the tables failed too: ")
    assert "1_9.tif" in first and "not a readable image" in first, line
    assert str(frames / "results.partial.csv") in then and "not overwritten" in then, line
    # Where the rows are: the JSON lines this run appended; the user's file is not named.
    assert f"the first 5 row(s) of {frames / 'results.partial.jsonl'}" in then, line
    assert (frames / "results.partial.csv").read_text() == "mine\n"


def test_a_long_run_keeps_no_rows_in_memory(tmp_path):
    """segment kept every frame's rows (about 0.5 KB a frame) until the run ended: a camera run
    of hours grew without bound. The final tables now come from the partial tables' files."""
    import tracemalloc

    import numpy as np

    from bpedge._result import Result
    from bpedge.sources import SourceFrame

    out = tmp_path / "out"
    outputs = _segment_outputs.SegmentOutputs(out, masks=False, overlays=False, video=None,
                                              video_fps=None)
    image = np.zeros((32, 48), np.uint8)
    mask = np.zeros((32, 48), np.uint8)

    def add(i: int) -> None:
        frame = SourceFrame(image, f"camera_f{i:06d}", index=i, timestamp=i / 30,
                            source="camera:0")
        outputs.add(frame, Result(mask, (1.0, 2.0, 30.0, 20.0), 0.9, True,
                                  {"total": 1.25}, name=frame.name))

    for i in range(200):  # warm: the tables are made, every cache filled
        add(i)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(200, 2200):
            add(i)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 20 * 2000, f"{grown / 2000:.0f} bytes a frame"  # was ~500 a frame
    outputs.finish()
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 2201 and rows[1].startswith("camera:0,0,1,0.900000,1.00,2.00,30.00")
    assert rows[-1].startswith("camera:0,2199,")
    assert len((out / "results.jsonl").read_text().splitlines()) == 2200
    assert outputs.recorded_frames == outputs.present_frames == 2200


def _clean_tables(tiny_bundle: Path, frames: Path, out: Path) -> dict[str, list[str]]:
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 0, result.output
    return _tables(out)


def _tables(out: Path) -> dict[str, list[str]]:
    """Each final table's lines, the timing columns cut (they differ run to run)."""
    def cut(line: str) -> str:
        return line.rsplit(",", 1)[0] if line.count(",") >= 8 else line

    return {"results.csv": [cut(line) for line in (out / "results.csv").read_text().splitlines()],
            "accuracy.csv": (out / "accuracy.csv").read_text().splitlines(),
            "results.jsonl": [json.dumps({k: v for k, v in json.loads(line).items()
                                          if k != "timings_ms"})
                              for line in (out / "results.jsonl").read_text().splitlines()]}


@pytest.mark.parametrize("change", ["copied over", "note appended", "truncated", "bytes over"])
def test_a_partial_table_changed_in_place_mid_run_does_not_reach_the_final_tables(
        tiny_bundle, frames, tmp_path, monkeypatch, change):
    """The final tables were read back from the partial tables' files: a user's `cp` over one,
    a note appended to it, or a truncation (logrotate's copytruncate) became the run's rows, or
    failed a run that had segmented every frame. They come from the run's own spool."""
    want = _clean_tables(tiny_bundle, frames, tmp_path / "clean")
    out = tmp_path / "out"
    real_add = _segment_outputs.SegmentOutputs.add

    def add(self, frame, result):
        real_add(self, frame, result)
        if self.recorded_frames == 2:
            table = out / "results.partial.csv"
            if change == "copied over":
                with table.open("r+") as f:  # cp writes into the same file
                    f.write("my,own,data\n" * 40)
            elif change == "note appended":
                with table.open("a") as f:
                    f.write("# note\n")
            elif change == "truncated":
                os.truncate(table, 0)
            else:
                with table.open("r+b") as f:
                    f.write(b"\xff\xfe" + b"X" * 28)

    monkeypatch.setattr(_segment_outputs.SegmentOutputs, "add", add)
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 0, result.output
    assert _tables(out) == want
    assert not (out / "results.partial.csv").exists()  # it was this run's, changed or not


def test_no_accuracy_table_when_no_frame_with_ground_truth_was_recorded(
        tiny_bundle, frames, phantom_dir, tmp_path, monkeypatch):
    """The first frame with a ground-truth mask fails to record (a full disk): the accuracy
    table made for it held only its header, and the summary said 'against 0 ground-truth
    mask(s) ... nan'."""
    plain = tmp_path / "plain"
    plain.mkdir()
    for name in ("2_1", "2_2"):  # two stills without masks come first
        shutil.copy(phantom_dir / f"{name}.tif", plain / f"{name}.tif")
    fill_disk_at_row("results.partial.jsonl", monkeypatch)  # the 3rd frame's line fails
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(plain), str(frames),
                                         "--out", str(out), *BASE])
    assert result.exit_code == 1, result.output
    assert "nan" not in result.output and "0 ground-truth" not in result.output, result.output
    assert not (out / "accuracy.partial.csv").exists()
    assert len(rows(out / "results.partial.csv")) == 2


def test_a_run_stopped_while_its_tables_are_written_leaves_no_results_csv(
        tiny_bundle, frames, tmp_path, monkeypatch):
    """results.csv means "complete": written first, a run stopped while the other tables were
    written left it beside INCOMPLETE.txt and no results.jsonl."""
    real_open = _segment_outputs.atomic_open

    def atomic_open(path, *args, **kw):
        if Path(path).name == "accuracy.csv":
            raise KeyboardInterrupt
        return real_open(path, *args, **kw)

    monkeypatch.setattr(_segment_outputs, "atomic_open", atomic_open)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code != 0
    assert (out / "INCOMPLETE.txt").exists() and not (out / "results.csv").exists()
    assert len(rows(out / "results.partial.csv")) == 5  # the rows are where they were


def test_a_full_disk_at_a_final_tables_last_flush_names_the_table(
        tiny_bundle, frames, tmp_path, monkeypatch):
    """The buffered file's flush fails outside any call that names a file: the message was
    "[Errno 28] No space left on device" alone."""
    import contextlib

    @contextlib.contextmanager
    def atomic_open(path, *args, **kw):
        yield io.BytesIO()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as close() at the flush

    monkeypatch.setattr(_segment_outputs, "atomic_open", atomic_open)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(frames), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 1, result.output
    assert "No space left on device while writing results.jsonl" in error_line(result.output)
