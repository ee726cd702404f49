"""``bpedge segment`` with the sources and outputs of issue 16: accuracy against masks beside the
frames, DICOM with mm, ``--save-video`` at the source rate, a capture device that vanishes, and
``--on-error skip|fail``. Inputs are files the tests make."""

from __future__ import annotations

import csv
import json
import os
import shutil

import cv2
import numpy as np
import pytest
from bpedge.train.data import read_image, read_mask
from typer.testing import CliRunner

from bpedge import sources
from bpedge._cli._segment_output import PNG_RECORD, PngRecord
from bpedge._cli.app import build_app
from bpedge._metrics import dice
from bpedge._surface import hd95
from bpedge.segmenter import Segmenter

runner = CliRunner()
BASE = ["--backend", "onnxruntime", "--no-progress"]


def _rows(path):
    with path.open() as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def kaggle(phantom_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("kaggle16") / "frames"
    folder.mkdir()
    for stem in ("1_1", "1_2", "2_11", "2_12"):  # subject 2's frames 11/12 hold no BP
        for suffix in (".tif", "_mask.tif"):
            shutil.copy(phantom_dir / f"{stem}{suffix}", folder / f"{stem}{suffix}")
    return folder


def test_accuracy_against_masks_beside_the_frames(tiny_bundle, kaggle, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 0, result.output
    assert "accuracy against 4 ground-truth mask(s)" in result.output
    assert "presence correct" in result.output and "Dice over all frames" in result.output
    rows = _rows(out / "accuracy.csv")
    assert [r["file"].rsplit("/", 1)[-1] for r in rows] == ["1_1.tif", "1_2.tif", "2_11.tif",
                                                           "2_12.tif"]
    with Segmenter.from_bundle(tiny_bundle, "onnxruntime") as seg:
        for row in rows:
            name = row["file"].rsplit("/", 1)[-1]
            r = seg(read_image(kaggle / name))
            truth = read_mask(kaggle / name.replace(".tif", "_mask.tif"))
            assert float(row["dice"]) == pytest.approx(dice(r.mask, truth), abs=1e-6)
            assert int(row["truth_present"]) == int(truth.any())
            assert int(row["presence_correct"]) == int(bool(truth.any()) == r.present)
            h = hd95(r.mask, truth)
            assert row["hd95_px"] == ("" if h is None else f"{h:.3f}")
    jsonl = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [j["name"] for j in jsonl] == ["1_1", "1_2", "2_11", "2_12"]
    assert all(j["area_mm2"] is None and j["area_px"] >= 0 for j in jsonl)


def test_dicom_in_gives_areas_in_mm(tiny_bundle, phantom_dir, tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

    frame = read_image(phantom_dir / "1_3.tif")
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = frame.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelSpacing = [0.12, 0.1]
    ds.PixelData = frame.tobytes()
    path = tmp_path / "scan.dcm"
    ds.save_as(path, enforce_file_format=True)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(path), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 0, result.output
    [line] = (out / "results.jsonl").read_text().splitlines()
    j = json.loads(line)
    assert j["name"] == "scan" and j["spacing_mm"] == pytest.approx([0.1, 0.12])
    assert j["area_mm2"] == pytest.approx(j["area_px"] * 0.1 * 0.12)
    assert (out / "masks" / "scan.png").is_file()


def test_save_video_at_the_source_frame_rate(tiny_bundle, phantom_dir, tmp_path):
    frames = [read_image(phantom_dir / f"3_{k}.tif") for k in (1, 2, 3, 4)]
    h, w = frames[0].shape
    video = tmp_path / "probe.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 15, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    target = tmp_path / "probe_seg.mp4"
    args = ["segment", str(tiny_bundle), str(video), "--out", str(tmp_path / "out"),
            "--save-video", str(target), "--no-masks", "--no-overlays", *BASE]
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 0, result.output
    assert f"wrote {target}: 4 frame(s) at 15 fps" in result.output
    capture = cv2.VideoCapture(str(target))
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(15.0)
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
    ok, first = capture.read()
    capture.release()
    assert ok and first.shape == (h, w, 3)
    assert not list(tmp_path.glob(".*partial*"))
    args[args.index("--out") + 1] = str(tmp_path / "out2")
    again = runner.invoke(build_app(), args)
    assert again.exit_code == 2 and f"--save-video {target} exists" in again.output


class _VanishingCamera:
    def __init__(self, frame: np.ndarray, n: int) -> None:
        self.frame, self.n, self.reads = frame, n, 0

    def isOpened(self) -> bool:
        return True

    def read(self):
        if self.reads >= self.n:
            return False, None
        self.reads += 1
        return True, cv2.cvtColor(self.frame, cv2.COLOR_GRAY2BGR)

    def get(self, prop):
        return 25.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        pass


def test_capture_device_that_vanishes_keeps_what_was_done(tiny_bundle, phantom_dir, tmp_path,
                                                         monkeypatch):
    frame = read_image(phantom_dir / "1_4.tif")
    monkeypatch.setattr(sources, "_open_capture", lambda target, api: _VanishingCamera(frame, 3))
    out = tmp_path / "live"
    video = tmp_path / "live.mp4"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), "0", "--out", str(out),
                                         "--save-video", str(video), *BASE])
    assert result.exit_code == 1, result.output
    assert "capture device 0 stopped delivering frames after 3 frame(s)" in result.output
    assert "the 3 frame(s) segmented before it are in" in result.output
    assert not (out / "results.csv").exists()  # results.csv means complete (issue 12)
    rows = _rows(out / "results.partial.csv")
    assert [r["frame"] for r in rows] == ["0", "1", "2"]
    assert sorted(p.name for p in (out / "masks").iterdir()) == [
        "camera0_f000000.png", "camera0_f000001.png", "camera0_f000002.png"]
    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    assert capture.get(cv2.CAP_PROP_FPS) == pytest.approx(25.0)
    capture.release()


def test_on_error_skip_or_fail(tiny_bundle, kaggle, tmp_path):
    folder = tmp_path / "frames"
    shutil.copytree(kaggle, folder)
    (folder / "1_5.tif").write_bytes(b"truncated")
    skip = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(folder), "--out",
                                       str(tmp_path / "skip"), "--on-error", "skip", *BASE])
    assert skip.exit_code == 0, skip.output
    assert "skipped" in skip.output and "1_5.tif" in skip.output
    assert len(_rows(tmp_path / "skip" / "results.csv")) == 4
    fail = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(folder), "--out",
                                       str(tmp_path / "fail"), *BASE])
    assert fail.exit_code == 2, fail.output
    assert "1_5.tif: not a readable image" in fail.output
    # Natural order: 1_1, 1_2, then 1_5 fails; the two frames before it are kept.
    assert "the 2 frame(s) segmented before it" in fail.output
    assert len(_rows(tmp_path / "fail" / "results.partial.csv")) == 2
    bad = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(folder), "--out",
                                      str(tmp_path / "x"), "--on-error", "ignore", *BASE])
    assert bad.exit_code == 2 and "--on-error" in bad.output


@pytest.mark.parametrize("damage", ["empty", "wrong size"])
def test_on_error_skip_skips_a_bad_ground_truth_mask_and_keeps_its_frame(tiny_bundle, kaggle,
                                                                         tmp_path, damage):
    folder = tmp_path / "frames"
    shutil.copytree(kaggle, folder)
    bad = folder / "1_2_mask.tif"
    if damage == "empty":
        bad.write_bytes(b"")
    else:
        cv2.imwrite(str(bad), np.zeros((10, 12), np.uint8))
    skip = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(folder), "--out",
                                       str(tmp_path / "skip"), "--on-error", "skip", *BASE])
    assert skip.exit_code == 0, skip.output
    assert "skipped" in skip.output and "1_2_mask.tif" in skip.output
    assert "written without accuracy" in skip.output
    assert len(_rows(tmp_path / "skip" / "results.csv")) == 4  # every frame segmented
    accuracy = _rows(tmp_path / "skip" / "accuracy.csv")
    assert len(accuracy) == 3 and not any("1_2" in row["file"] for row in accuracy)
    fail = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(folder), "--out",
                                       str(tmp_path / "fail"), *BASE])
    assert fail.exit_code == 2 and "1_2_mask.tif" in fail.output


@pytest.mark.parametrize("fps", ["inf", "nan", "0", "-1", "100000"])
def test_video_fps_outside_a_frame_rate_is_refused_before_anything_runs(tiny_bundle, kaggle,
                                                                        tmp_path, fps):
    # inf sent OpenCV's VideoWriter into a loop that ignored Ctrl-C
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle / "1_1.tif"),
                                         "--out", str(out), "--save-video",
                                         str(tmp_path / "v.mp4"), "--video-fps", fps, *BASE])
    assert result.exit_code == 2, result.output
    assert "--video-fps must be a number in (0, 1000]" in result.output
    assert not out.exists() and not (tmp_path / "v.mp4").exists()


def test_save_video_never_replaces_the_input_video(tiny_bundle, kaggle, tmp_path):
    first = tmp_path / "seg.mp4"
    made = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                       str(tmp_path / "a"), "--save-video", str(first), *BASE])
    assert made.exit_code == 0, made.output
    before = first.read_bytes()
    again = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(first), "--out",
                                        str(tmp_path / "b"), "--save-video", str(first),
                                        "--force", *BASE])
    assert again.exit_code == 2, again.output
    assert "is an input of this run" in again.output
    assert first.read_bytes() == before


def test_an_unexpected_error_mid_run_keeps_the_partial_names(tiny_bundle, kaggle, tmp_path,
                                                            monkeypatch):
    from bpedge._cli import _segment_outputs

    real_add = _segment_outputs.SegmentOutputs.add
    calls = []

    def failing_add(self, frame, result):
        calls.append(frame)
        if len(calls) == 3:
            raise RuntimeError("a failure no except clause names")
        return real_add(self, frame, result)

    monkeypatch.setattr(_segment_outputs.SegmentOutputs, "add", failing_add)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                         str(out), *BASE])
    assert result.exit_code != 0
    assert not (out / "results.csv").exists()  # results.csv means a complete run
    assert not (out / "results.jsonl").exists()
    assert len(_rows(out / "results.partial.csv")) == 2
    assert (out / "INCOMPLETE.txt").exists()


def test_force_replaces_a_run_killed_while_it_wrote_a_png(tiny_bundle, kaggle, tmp_path):
    out = tmp_path / "out"
    args = ["segment", str(tiny_bundle), str(kaggle), "--out", str(out), *BASE]
    assert runner.invoke(build_app(), args).exit_code == 0
    # What a kill inside bpedge._atomic leaves: the PNG's temporary, listed in the run's PNG
    # record as it was made (partly written), or not listed yet (killed before that: empty).
    written = out / "masks" / ".1_1.png.ab_d12x4.tmp"
    written.write_bytes(b"\x89PNG half")
    record = PngRecord(out)
    record._fd = os.open(out / PNG_RECORD, os.O_WRONLY | os.O_APPEND)
    record.add(out / "masks" / "1_1.png", os.stat(written), b"\x89PNG half, and the rest")
    record.close()
    (out / "masks" / ".1_2.png.zz_d12x4.tmp").write_bytes(b"")
    again = runner.invoke(build_app(), [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert not list((out / "masks").glob(".*.tmp"))
    (out / "masks" / "notes.txt").write_text("mine")  # anything else is still the user's
    refused = runner.invoke(build_app(), [*args, "--force"])
    assert refused.exit_code == 2 and "notes.txt" in refused.output
    assert (out / "masks" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("planted,how", [
    ("masks/mine.png", "new"),
    ("overlays/1_1.png", "deleted and made again"),  # its inode number may well be the same
    ("masks/1_1.png", "saved over in place"),  # the same inode, the user's bytes
    ("masks/.x.png.ab_d12x4.tmp", "new"),
])
def test_force_removes_only_the_pngs_a_run_wrote(tiny_bundle, kaggle, tmp_path, planted, how):
    """A PNG of the user's in a run's masks/ or overlays/ (a new name, one written over a run's
    file, a temporary's name with bytes in it) is named, and --force removes nothing."""
    out = tmp_path / "out"
    args = ["segment", str(tiny_bundle), str(kaggle), "--out", str(out), *BASE]
    assert runner.invoke(build_app(), args).exit_code == 0
    path = out / planted
    if how == "deleted and made again":
        path.unlink()
    elif how == "saved over in place":
        inode = path.stat().st_ino
    path.write_bytes(b"\x89PNG the user's")
    if how == "saved over in place":
        assert path.stat().st_ino == inode
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    refused = runner.invoke(build_app(), [*args, "--force"])
    assert refused.exit_code == 2, refused.output
    assert path.name in refused.output and "did not record writing" in refused.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _stems(folder):
    return sorted(p.stem for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("interrupted_write", [2, 4, 5])
def test_ctrl_c_while_a_frame_is_written_leaves_no_file_without_its_row(
        tiny_bundle, kaggle, tmp_path, monkeypatch, interrupted_write):
    """Ctrl-C between a frame's mask and its overlay (write 2: the first frame, 4: the second)
    or at the third frame's mask (5) left that frame's mask in masks/ with no row in
    results.partial.csv: a file that belonged to no result."""
    from bpedge import _overlay

    real_write, writes = _overlay.write_png, []

    def write_then_ctrl_c(path, image, **kwargs):
        writes.append(path)
        if len(writes) == interrupted_write:
            raise KeyboardInterrupt
        real_write(path, image, **kwargs)

    monkeypatch.setattr(_overlay, "write_png", write_then_ctrl_c)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                         str(out), "--save-video", str(tmp_path / "v.avi"),
                                         *BASE])
    assert result.exit_code != 0 and (out / "INCOMPLETE.txt").exists()
    table = out / "results.partial.csv"
    rows = [r["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0] for r in _rows(table)] \
        if table.exists() else []
    assert len(rows) == (interrupted_write - 1) // 2
    assert _stems(out / "masks") == _stems(out / "overlays") == sorted(rows)
    if rows:
        accuracy = [r["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
                    for r in _rows(out / "accuracy.partial.csv")]
        assert accuracy == rows
        capture = cv2.VideoCapture(str(tmp_path / "v.avi"))
        assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == len(rows)
        capture.release()


@pytest.mark.parametrize("folder", ["masks", "overlays"])
def test_ctrl_c_after_a_png_took_its_name_leaves_no_file_without_its_row(
        tiny_bundle, kaggle, tmp_path, monkeypatch, folder):
    """Ctrl-C in the directory fsync after a PNG was published (its write had not returned):
    the file was listed for removal only once its write returned, so the second frame's mask or
    overlay stayed in place with no row (3 runs in 25 of a prober's SIGINTs)."""
    from bpedge import _atomic

    real_fsync_dir, calls = _atomic._fsync_dir, []

    def ctrl_c_at_the_second_frame(directory):
        real_fsync_dir(directory)
        if directory.name == folder:
            calls.append(directory)
            if len(calls) == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(_atomic, "_fsync_dir", ctrl_c_at_the_second_frame)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 130, result.output
    rows = [r["file"].rsplit("/", 1)[-1].rsplit(".", 1)[0]
            for r in _rows(out / "results.partial.csv")]
    assert len(rows) == 1
    assert _stems(out / "masks") == _stems(out / "overlays") == rows
    assert not [p for p in out.rglob(".*.tmp")]


def test_a_png_that_appeared_at_its_name_is_neither_overwritten_nor_removed(
        tiny_bundle, kaggle, tmp_path, monkeypatch):
    """A file put at the overlay's name while the run went on is its owner's: kept, and the run
    stops naming it (the frame's mask, this run's, goes with the frame)."""
    from bpedge import _overlay

    real_write = _overlay.write_png

    def someone_takes_the_name(path, image, **kwargs):
        if path.parent.name == "overlays" and path.stem == "1_2":
            path.write_bytes(b"theirs")
        real_write(path, image, **kwargs)

    monkeypatch.setattr(_overlay, "write_png", someone_takes_the_name)
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                         str(out), *BASE])
    assert result.exit_code == 1, result.output
    assert "overlays/1_2.png" in result.output and "appeared while segment ran" in result.output
    assert (out / "overlays" / "1_2.png").read_bytes() == b"theirs"
    assert _stems(out / "masks") == ["1_1"]


@pytest.mark.parametrize("what", ["input", "video"])
def test_nothing_this_run_reads_or_writes_may_lie_in_its_masks_or_overlays(tiny_bundle, kaggle,
                                                                          tmp_path, what):
    """An earlier run's overlays given as this run's frames were deleted by --force before they
    were read (the earlier results and the inputs both lost); a --save-video inside masks/
    made every later --force refuse the folder."""
    out = tmp_path / "out"
    first = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(kaggle), "--out",
                                        str(out), *BASE])
    assert first.exit_code == 0, first.output
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    if what == "input":
        args = [str(out / "overlays"), "--out", str(out), "--force"]
    else:
        args = [str(kaggle), "--out", str(out), "--force", "--save-video",
                str(out / "masks" / "x.mp4")]
    again = runner.invoke(build_app(), ["segment", str(tiny_bundle), *args, *BASE])
    assert again.exit_code == 2, again.output
    assert "which segment clears and writes" in again.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
