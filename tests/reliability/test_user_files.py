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
import os
import stat
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


@pytest.mark.parametrize("kind", ["notes", "JSON of the user's", "a link to a doctor report",
                                  "a FIFO"])
def test_doctor_json_never_overwrites_a_file_it_did_not_write(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "doctor.json"
    if kind == "notes":
        target.write_bytes(USER_BYTES)
    elif kind == "JSON of the user's":
        target.write_text('{"findings": "mine"}\n')
    elif kind == "a FIFO":
        os.mkfifo(target)  # never opened: it would block a plain open() for ever
    else:
        report = tmp_path / "report.json"
        assert runner.invoke(build_app(), ["doctor", "--json", str(report)]).exit_code in (0, 1)
        target.symlink_to(report)
    before = snapshot(tmp_path)
    result = runner.invoke(build_app(), ["doctor", "--json", str(target)])
    assert_refused_in_one_line(result, target, "--json")
    assert snapshot(tmp_path) == before
    assert stat.S_ISFIFO(target.lstat().st_mode) == (kind == "a FIFO")


def test_doctor_json_replaces_its_own_report(tmp_path: Path) -> None:
    target = tmp_path / "doctor.json"
    for _ in range(2):
        result = runner.invoke(build_app(), ["doctor", "--json", str(target)])
        assert result.exit_code == 0, result.output
    assert json.loads(target.read_text())["schema"] == "bpedge-doctor"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["doctor.json"]


@pytest.mark.parametrize("edit", ["a key added", "a space added", "a report of another bpedge"])
def test_doctor_json_never_overwrites_a_report_edited_since_it_was_written(tmp_path: Path,
                                                                         edit: str) -> None:
    # A report is known by its schema, but a colleague's notes added to one are theirs.
    target = tmp_path / "colleague_doctor.json"
    assert runner.invoke(build_app(), ["doctor", "--json", str(target)]).exit_code == 0
    report = json.loads(target.read_text())
    if edit == "a key added":
        target.write_text(json.dumps({**report, "my_notes": "GPU swapped on Monday"}, indent=2))
    elif edit == "a space added":
        target.write_bytes(target.read_bytes() + b" ")
    else:
        report.pop("bpedge_sha256")
        target.write_text(json.dumps(report, indent=2) + "\n")
    before = snapshot(tmp_path)
    result = runner.invoke(build_app(), ["doctor", "--json", str(target)])
    assert_refused_in_one_line(result, target, "--json")
    assert "changed since it was written" in result.output
    assert snapshot(tmp_path) == before


def test_sealed_json_detects_any_change() -> None:
    from bpedge._out_file import is_sealed, sealed_json

    text = sealed_json({"schema": "x", "nested": {"bpedge_sha256": "0" * 64}, "n": 1.5})
    assert is_sealed(text.encode())
    assert sealed_json(json.loads(text)) == text  # a seal read back is replaced, not doubled
    for changed in (text.replace("1.5", "1.6"), text + "\n", " " + text,
                    text.replace('"n"', '"m"')):
        assert not is_sealed(changed.encode())


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


def test_bench_json_never_overwrites_a_record_edited_since_it_was_written(tmp_path: Path) -> None:
    from bpedge._bench.record import BenchRecord, read_record

    target = tmp_path / "run.json"
    target.write_text(BenchRecord({"notes": ["my edit"]}, ()).dumps())  # a record, unsealed
    read_record(target)
    before = snapshot(tmp_path)
    result = runner.invoke(build_app(), ["bench", str(tmp_path / "no_bundle"), "--json",
                                         str(target), "--no-progress"])
    assert_refused_in_one_line(result, target, "--json")
    assert "changed since it was written" in result.output
    assert snapshot(tmp_path) == before


# --- segment --save-video --------------------------------------------------------------------------


@pytest.fixture
def probe_video(phantom_dir: Path, tmp_path: Path) -> Path:
    frames = [read_image(phantom_dir / f"3_{k}.tif") for k in (1, 2, 3)]
    h, w = frames[0].shape
    video = tmp_path / "probe.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter.fourcc(*"MJPG"), 15, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return video


def segment_args(bundle: Path, source: Path, out: Path, video: Path, *extra: str) -> list[str]:
    return ["segment", str(bundle), str(source), "--out", str(out), "--save-video", str(video),
            "--no-masks", "--no-overlays", "--backend", "onnxruntime", "--no-progress", *extra]


def test_save_video_with_force_never_overwrites_the_input_video(
    tiny_bundle: Path, probe_video: Path, tmp_path: Path,
) -> None:
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), segment_args(tiny_bundle, probe_video, out, probe_video,
                                                     "--force"))
    assert_refused_in_one_line(result, probe_video, "--save-video")
    assert "not written by `bpedge segment`" in result.output
    assert snapshot(tmp_path) == before and not out.exists()  # nothing else written


def test_save_video_with_force_replaces_only_a_video_segment_wrote(
    tiny_bundle: Path, probe_video: Path, tmp_path: Path,
) -> None:
    video = tmp_path / "probe_seg.avi"
    args = segment_args(tiny_bundle, probe_video, tmp_path / "out", video)
    assert runner.invoke(build_app(), args).exit_code == 0
    assert record_path(video).is_file()
    again = runner.invoke(build_app(), [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert f"wrote {video}: 3 frame(s)" in again.output
    video.write_bytes(USER_BYTES)  # the user saved their own file under that name
    before = snapshot(tmp_path)
    third = runner.invoke(build_app(), [*args, "--force"])
    assert_refused_in_one_line(third, video, "--save-video")
    assert snapshot(tmp_path) == before


def test_save_video_never_writes_over_a_file_at_its_temporary_name(
    tiny_bundle: Path, probe_video: Path, tmp_path: Path,
) -> None:
    video = tmp_path / "probe_seg.avi"
    old_partial = tmp_path / ".probe_seg.partial.avi"  # the fixed name bpedge once wrote to
    old_partial.write_bytes(USER_BYTES)
    result = runner.invoke(build_app(), segment_args(tiny_bundle, probe_video, tmp_path / "out",
                                                     video))
    assert result.exit_code == 0, result.output
    assert old_partial.read_bytes() == USER_BYTES
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".probe_seg.avi.bpedge-out.json", ".probe_seg.partial.avi"]


#: ``bpedge segment`` that stops for good after the first frame of its video is written, so a
#: test can SIGKILL it while its partial video exists (a kill cannot clean anything up).
SEGMENT_THEN_STALL = """
import sys, time
from bpedge._cli import _segment_outputs

real_write = _segment_outputs._VideoOut.write

def write_then_stall(self, picture):
    real_write(self, picture)
    print("video started", flush=True)
    time.sleep(600)

_segment_outputs._VideoOut.write = write_then_stall
from bpedge._cli.app import main
main(sys.argv[1:])
"""


def partials(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".probe_seg.*.partial.avi"))


def test_a_later_run_removes_the_partial_video_a_killed_run_left_and_nothing_else(
    tiny_bundle: Path, probe_video: Path, tmp_path: Path, start_paused,
) -> None:
    """SIGKILL leaves the hidden partial video (``.probe_seg.RANDOM.partial.avi``) beside
    --save-video; nothing removed it, and every killed run added one. The next run to that
    video removes it; never a partial a live run is writing, nor a file of the same pattern that
    bpedge's record does not list."""
    video = tmp_path / "probe_seg.avi"
    killed = start_paused(SEGMENT_THEN_STALL,
                          segment_args(tiny_bundle, probe_video, tmp_path / "a", video),
                          "video started")
    killed.kill()
    killed.wait()
    left = partials(tmp_path)
    assert len(left) == 1  # what the kill left
    lookalike = tmp_path / ".probe_seg.ab12cd34.partial.avi"  # not bpedge's: not listed
    lookalike.write_bytes(USER_BYTES)
    live = start_paused(SEGMENT_THEN_STALL,
                        segment_args(tiny_bundle, probe_video, tmp_path / "b", video),
                        "video started")
    try:
        (live_partial,) = set(partials(tmp_path)) - {*left, lookalike.name}
        rerun = runner.invoke(build_app(), segment_args(tiny_bundle, probe_video, tmp_path / "c",
                                                        video))
        assert rerun.exit_code == 0, rerun.output
        # The killed run's partial is gone; the live run's and the look-alike are kept.
        assert partials(tmp_path) == sorted([live_partial, lookalike.name])
    finally:
        live.kill()
        live.wait()
    again = runner.invoke(build_app(), segment_args(tiny_bundle, probe_video, tmp_path / "d",
                                                    video, "--force"))
    assert again.exit_code == 0, again.output
    assert partials(tmp_path) == [lookalike.name] and lookalike.read_bytes() == USER_BYTES
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()


# --- partials a record lists: a record alone never gets a file removed ----------------------------


def video_out_file(tmp_path: Path):
    from bpedge._cli._segment_outputs import video_signature
    from bpedge._out_file import OutFile

    video = tmp_path / "probe_seg.avi"
    return OutFile(video, "segment", "--save-video", partial_signature=video_signature(".avi"))


def forge_record(target, listed: Path, **fields) -> None:
    """A record of the user's own making beside ``target``'s path that lists the user's file
    ``listed`` as a partial: its inode and device (what the record of bpedge then held), and any
    ``fields`` a forger could add from ``stat``."""
    info = listed.stat()
    record_path(target.path).write_text(json.dumps({
        "format": "bpedge-out-file", "command": target.command, "file": target.path.name,
        "sha256": [], "partials": [{"name": listed.name, "dev": info.st_dev, "ino": info.st_ino,
                                    **fields}]}))


def abandon(target, tmp: Path) -> None:
    """What SIGKILL leaves of a run writing ``tmp``: the file, listed, and no lock on it."""
    target._held.pop(tmp).release()


@pytest.mark.parametrize("forged", ["inode", "inode, size and time", "inode, later time"])
@pytest.mark.parametrize("kind", ["video", "timing cache"])
def test_a_forged_record_never_gets_a_users_file_removed_as_a_partial(tmp_path: Path, kind: str,
                                                                      forged: str) -> None:
    """A record listing the inode of the user's file (at a name of bpedge's partials) used to be
    all it took for the next write to delete that file: the record is a file the user can write.
    Now the file itself must show it is bpedge's (unchanged since recorded, with the recorded
    sha256; or a video's header)."""
    from bpedge.export.tensorrt_build import timing_cache_file

    target = video_out_file(tmp_path) if kind == "video" else timing_cache_file(
        tmp_path / "timing.cache")
    mine = target.path.with_name(f".{target.path.stem}.ab12cd34.partial{target.path.suffix}")
    mine.write_bytes(USER_BYTES)
    info = mine.stat()
    fields = {"inode": {},
              "inode, size and time": {"size": info.st_size, "mtime_ns": info.st_mtime_ns,
                                       "sha256": "0" * 64},
              "inode, later time": {"size": 0, "mtime_ns": 0}}[forged]
    forge_record(target, mine, **fields)
    tmp = target.new_temporary()  # where the partials killed runs left are removed
    target.discard(tmp)
    assert mine.read_bytes() == USER_BYTES


@pytest.mark.parametrize("kind", ["video", "timing cache"])
def test_a_partial_a_killed_run_left_is_still_removed(tmp_path: Path, kind: str) -> None:
    """What bpedge left itself still goes: an empty partial, one unchanged since recorded (a
    timing cache killed just before its rename), one a video writer had written into."""
    from bpedge.export.tensorrt_build import timing_cache_file

    target = video_out_file(tmp_path) if kind == "video" else timing_cache_file(
        tmp_path / "timing.cache")
    empty = target.new_temporary()
    abandon(target, empty)
    written = target.new_temporary()
    written.write_bytes(b"+detector fp16")
    target.note_partial(written)  # as publish records it before the rename
    abandon(target, written)
    left = [empty, written]
    if kind == "video":
        grown = target.new_temporary()
        target.note_partial(grown)
        grown.write_bytes(b"RIFF\x10\x00\x00\x00AVI LIST" + bytes(100))  # a header flushed
        abandon(target, grown)
        left.append(grown)
    tmp = target.new_temporary()
    assert not [p for p in left if p.exists()]
    target.discard(tmp)


def test_a_partial_written_into_without_a_known_format_is_kept(tmp_path: Path) -> None:
    """A timing cache (an opaque format) killed while its bytes were written: nothing shows it
    is bpedge's, so it is kept (and stays listed)."""
    from bpedge.export.tensorrt_build import timing_cache_file

    target = timing_cache_file(tmp_path / "timing.cache")
    torn = target.new_temporary()
    torn.write_bytes(b"+detec")
    abandon(target, torn)
    target.discard(target.new_temporary())
    assert torn.read_bytes() == b"+detec"


# --- Result.save -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def result(tiny_bundle: Path, phantom_dir: Path):
    with Segmenter.from_bundle(tiny_bundle, "onnxruntime") as seg:
        return seg(read_image(phantom_dir / "1_3.tif"))


@pytest.mark.parametrize("name", ["overlay.png", "result.json"])
def test_result_save_never_replaces_a_dangling_symbolic_link(result, tmp_path: Path,
                                                             name: str) -> None:
    path = tmp_path / name
    path.symlink_to(tmp_path / "not-yet-there")
    with pytest.raises(FileExistsError, match=f"{name} exists"):
        result.save(path)
    assert path.is_symlink() and path.readlink() == tmp_path / "not-yet-there"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


@pytest.mark.parametrize("name", ["overlay.png", "result.json"])
def test_result_save_never_replaces_a_file_that_appears_while_it_encodes(
    result, tmp_path: Path, name: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / name
    encode, to_json = cv2.imencode, type(result).to_json

    def encode_while_the_user_saves(*args, **kwargs):
        path.write_bytes(USER_BYTES)
        return encode(*args, **kwargs)

    def to_json_while_the_user_saves(self, **kwargs):
        path.write_bytes(USER_BYTES)
        return to_json(self, **kwargs)

    monkeypatch.setattr(cv2, "imencode", encode_while_the_user_saves)
    monkeypatch.setattr(type(result), "to_json", to_json_while_the_user_saves)
    with pytest.raises(FileExistsError, match=f"{name} exists"):
        result.save(path)
    assert path.read_bytes() == USER_BYTES
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary left


def test_result_save_with_overwrite_replaces_atomically(result, tmp_path: Path) -> None:
    path = tmp_path / "overlay.png"
    path.write_bytes(USER_BYTES)
    result.save(path, overwrite=True)
    np.testing.assert_array_equal(cv2.imread(str(path)), result.plot())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["overlay.png"]


# --- the tiny-bundle pipeline (demo, soak, fixtures) -----------------------------------------------


def test_tiny_bundle_pipeline_never_removes_a_run_folder_training_did_not_make(
    phantom_dir: Path, tmp_path: Path,
) -> None:
    from bpedge.export.tiny_bundle import TinyPaths, TinyRecipe, make_tiny_bundle

    paths = TinyPaths.under(tmp_path / "work", data=phantom_dir)
    paths.detector.mkdir(parents=True)
    (paths.detector / "notes.txt").write_bytes(USER_BYTES)  # no best.pt, no last.pt
    before = snapshot(paths.detector)
    with pytest.raises(OutDirRefused, match=str(paths.detector)):
        make_tiny_bundle(paths, TinyRecipe(epochs=1, limit=4))
    assert snapshot(paths.detector) == before
    assert not paths.segmenter.exists() and not paths.bundle.exists()
