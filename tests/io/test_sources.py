"""``bpedge.sources.open_frames``: files, folders, globs, videos (written with OpenCV), DICOM (written
with pydicom), capture devices and streams (fake captures), and how bad or vanishing sources end."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from bpedge import sources
from bpedge.sources import SourceError, SourceFrame, open_frames


class FakeCapture:
    """OpenCV's VideoCapture surface: ``n`` BGR frames, then ``read`` fails (the camera is gone)."""

    def __init__(self, n: int, opened: bool = True, fps: float = 30.0) -> None:
        self.n, self.opened, self.fps, self.reads, self.released = n, opened, fps, 0, False

    def isOpened(self) -> bool:
        return self.opened

    def read(self):
        if self.reads >= self.n:
            return False, None
        self.reads += 1
        frame = np.full((48, 64, 3), self.reads * 10, np.uint8)
        return True, frame

    def get(self, prop: int) -> float:
        return self.fps if prop == cv2.CAP_PROP_FPS else 0.0

    def release(self) -> None:
        self.released = True


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "frames"
    root.mkdir()
    rng = np.random.default_rng(0)
    for stem in ("1_2", "1_10", "1_1"):
        cv2.imwrite(str(root / f"{stem}.png"), rng.integers(0, 255, (40, 50), np.uint8))
    cv2.imwrite(str(root / "1_1_mask.png"), np.zeros((40, 50), np.uint8))
    (root / "notes.txt").write_text("not a frame")
    return root


def _video(path, frames, fps=12.0):
    h, w = frames[0].shape
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    return path


def test_folder_in_natural_order_masks_skipped_truth_found(folder):
    frames = list(open_frames(folder))
    assert [f.name for f in frames] == ["1_1", "1_2", "1_10"]
    assert frames[0].truth_path == folder / "1_1_mask.png" and frames[1].truth_path is None
    assert all(f.image.dtype == np.uint8 and f.image.shape == (40, 50) for f in frames)
    assert frames[0].timestamp is None and frames[0].source == str(folder / "1_1.png")
    np.testing.assert_array_equal(np.asarray(frames[2]), cv2.imread(str(folder / "1_10.png"), 0))


def test_glob_and_repeated_stems_get_unique_names(folder, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(folder / "1_2.png", other / "1_2.png")
    frames = list(open_frames(str(folder / "1_*.png"), other / "1_2.png"))
    assert [f.name for f in frames] == ["1_1", "1_2", "1_10", "1_2-2"]


def test_video_frames_have_index_timestamps_and_fps(tmp_path):
    grey = [np.full((32, 48), v, np.uint8) for v in (20, 120, 220)]
    path = _video(tmp_path / "probe.avi", grey, fps=12.0)
    stream = open_frames(path)
    assert stream.length == 3
    frames = list(stream)
    assert [f.name for f in frames] == ["probe_f000000", "probe_f000001", "probe_f000002"]
    assert [f.timestamp for f in frames] == pytest.approx([0.0, 1 / 12, 2 / 12])
    assert all(f.fps == pytest.approx(12.0) for f in frames)
    assert [int(f.image.mean()) for f in frames] == pytest.approx([20, 120, 220], abs=3)


def test_dicom_file_frames_carry_spacing(dicom_writer, tmp_path):
    write, picture = dicom_writer
    rgb = np.stack([picture(seed=k) for k in range(2)])
    path = write(tmp_path / "cine.dcm", rgb, "RGB", pixel_spacing=(0.3, 0.2), frame_time_ms=50)
    stream = open_frames(path)
    assert stream.length == 2
    frames = list(stream)
    assert [f.name for f in frames] == ["cine_f000000", "cine_f000001"]
    assert frames[1].spacing_mm == pytest.approx((0.2, 0.3))
    assert frames[1].timestamp == pytest.approx(0.05) and frames[1].fps == pytest.approx(20.0)


def test_capture_object_that_vanishes_keeps_the_frames_it_gave():
    capture = FakeCapture(4)
    got: list[SourceFrame] = []
    with pytest.raises(SourceError, match="stopped delivering frames after 4") as info:
        got.extend(open_frames(capture))
    assert info.value.frames_read == 4
    assert [f.name for f in got] == [f"capture_f{k:06d}" for k in range(4)]
    assert [int(f.image[0, 0]) for f in got] == [10, 20, 30, 40]
    assert all(f.timestamp is not None and f.fps == 30.0 for f in got)


def test_skipping_a_source_that_fails_mid_way_says_its_first_frames_are_kept():
    reasons: list[str] = []
    got = list(open_frames(FakeCapture(3), on_error="skip",
                           on_skip=lambda label, why: reasons.append(why)))
    assert len(got) == 3  # the frames it gave are results, so "skipped" alone misled
    assert len(reasons) == 1 and "its first 3 frame(s) were read and are kept" in reasons[0]


def test_device_index_opens_a_capture_and_releases_it(monkeypatch):
    opened = {}

    def fake_open(target, api):
        opened["target"] = target
        opened["capture"] = FakeCapture(2)
        return opened["capture"]

    monkeypatch.setattr(sources, "_open_capture", fake_open)
    stream = open_frames("0")
    assert stream.length is None
    first = next(stream)
    assert opened["target"] == 0 and first.name == "camera0_f000000"
    stream.close()
    assert opened["capture"].released


def test_device_that_cannot_open_and_url_password_hidden(monkeypatch):
    monkeypatch.setattr(sources, "_open_capture", lambda target, api: FakeCapture(0, opened=False))
    with pytest.raises(SourceError, match="capture device 3: cannot be opened"):
        list(open_frames(3))
    with pytest.raises(SourceError) as info:
        list(open_frames("rtsp://nurse:secret@10.0.0.5/probe"))
    assert "secret" not in str(info.value) and "rtsp://nurse:***@10.0.0.5/probe" in str(info.value)


def test_gstreamer_pipeline_needs_an_opencv_with_gstreamer():
    if sources.gstreamer_available():
        pytest.skip("this OpenCV has GStreamer; the refusal cannot be shown here")
    with pytest.raises(ValueError, match="without GStreamer"):
        open_frames("videotestsrc ! videoconvert ! appsink")


def test_skip_bad_files_or_fail(folder):
    (folder / "1_5.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="1_5.png: not a readable image"):
        list(open_frames(folder))
    reported = []
    stream = open_frames(folder, on_error="skip", on_skip=lambda name, why: reported.append(name))
    assert [f.name for f in stream] == ["1_1", "1_2", "1_10"]
    assert reported == [str(folder / "1_5.png")] and len(stream.skipped) == 1


def test_missing_and_unsupported_inputs_are_refused_at_once(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png does not exist"):
        open_frames(tmp_path / "missing.png")
    with pytest.raises(FileNotFoundError, match="no file matches"):
        open_frames(str(tmp_path / "*.png"))
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type"):
        open_frames(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="on_error"):
        open_frames(tmp_path, on_error="ignore")  # type: ignore[arg-type]


def test_a_finite_stream_that_declares_its_length_ends_normally(monkeypatch):
    class FiniteStream(FakeCapture):
        def get(self, prop: int) -> float:
            return 3.0 if prop == cv2.CAP_PROP_FRAME_COUNT else super().get(prop)

    monkeypatch.setattr(sources, "_open_capture", lambda target, api: FiniteStream(3))
    frames = list(open_frames("http://server/clip.mp4"))
    assert [f.name for f in frames] == ["stream_f000000", "stream_f000001", "stream_f000002"]
    # Containers round their counts: one frame short is an end; more is a dropped stream.
    monkeypatch.setattr(sources, "_open_capture", lambda target, api: FiniteStream(1))
    with pytest.raises(SourceError, match="stopped delivering frames after 1"):
        list(open_frames("http://server/clip.mp4"))


def test_peek_reads_the_first_frame_ahead_and_the_iteration_still_yields_it(folder):
    stream = open_frames(folder)
    first = stream.peek()
    assert first is not None and first.name == "1_1"
    assert stream.peek() is first  # peeking again reads nothing more
    assert [f.name for f in stream] == ["1_1", "1_2", "1_10"]
    assert stream.peek() is None  # nothing left
    empty = open_frames(FakeCapture(0), on_error="skip")
    assert empty.peek() is None and len(empty.skipped) == 1


def test_peek_opens_the_first_source_so_one_that_cannot_be_read_fails_or_is_skipped_there(
        folder, tmp_path):
    # bpedge segment peeks before it creates --out: a file that fails before its first frame
    # must fail there, not after the folder (which then refused the rerun) was made.
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    stream = open_frames(bad, folder)
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        stream.peek()
    reported: list[str] = []
    stream = open_frames(bad, folder, on_error="skip",
                         on_skip=lambda name, why: reported.append(name))
    first = stream.peek()
    assert reported == [str(bad)] and first is not None and first.name == "1_1"
    assert [f.name for f in stream] == ["1_1", "1_2", "1_10"]


def test_closing_after_a_peek_releases_the_capture_and_drops_the_frame(monkeypatch):
    capture = FakeCapture(3)
    monkeypatch.setattr(sources, "_open_capture", lambda target, api: capture)
    stream = open_frames(0)
    assert stream.peek() is not None and capture.reads == 1
    stream.close()
    assert capture.released and list(stream) == []


@pytest.mark.parametrize("source,error,words", [
    ("", ValueError, "an empty source"),  # Path("") is the current folder
    ("   ", ValueError, "an empty source"),
    ("99999999999999999999", ValueError, "no device has an index past 2147483647"),
    (2**40, ValueError, r"an index must be in \[0, 2147483647\]"),
    (-1, ValueError, r"an index must be in \[0, 2147483647\]"),
    ("²", FileNotFoundError, "does not exist"),  # isdigit(), but no int
])
def test_sources_no_capture_can_be_opened_from_are_refused_by_name(tmp_path, monkeypatch,
                                                                     source, error, words):
    monkeypatch.chdir(tmp_path)  # an empty source must not become this folder
    (tmp_path / "1_1.png").write_bytes(b"")
    with pytest.raises(error, match=words):
        sources.resolve(source)


@pytest.mark.skipif(not hasattr(__import__("os"), "symlink"), reason="needs symbolic links")
def test_an_image_that_cannot_be_read_is_named_not_a_crash(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "a.png").symlink_to("b.png")  # a loop: open() fails with ELOOP
    (folder / "b.png").symlink_to("a.png")
    with pytest.raises(ValueError, match=r"a\.png cannot be read \(Too many levels"):
        next(open_frames(folder))


@pytest.mark.parametrize("keep", [0.5, 0.8])
def test_a_video_cut_short_gives_only_whole_frames_then_says_where_it_ends(tmp_path, keep):
    """The last frame OpenCV decodes from a cut file is decoded from part of its data (on a cut
    MJPEG AVI, 14-15 grey levels off on average); it was segmented as if whole."""
    rng = np.random.default_rng(3)
    frames = [cv2.GaussianBlur(rng.integers(0, 255, (96, 128), dtype=np.uint8), (9, 9), 3)
              for _ in range(16)]
    whole = tmp_path / "whole.avi"
    writer = cv2.VideoWriter(str(whole), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    reference = [f.image for f in open_frames(whole)]
    assert len(reference) == 16
    data = whole.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * keep)])
    capture = cv2.VideoCapture(str(cut))
    decoded = 0
    while capture.read()[0]:
        decoded += 1
    capture.release()
    assert 1 < decoded < 15  # the cut file ends early, its last decoded frame at the cut
    got = []
    with pytest.raises(SourceError, match=r"ended after .* of the 16 frames .* is not segmented"
                       ) as info:
        for frame in open_frames(cut):
            got.append(frame.image)
    assert len(got) == decoded - 1 == info.value.frames_read
    for a, b in zip(got, reference):
        np.testing.assert_array_equal(a, b)


def _clip(path, n=3):
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    for k in range(n):
        writer.write(np.full((48, 64, 3), 40 + 20 * k, np.uint8))
    writer.release()
    return path


def test_each_input_is_its_own_sequence_even_the_same_file_twice(tmp_path, dicom_writer):
    """Keyed by the label or by timestamps, the same video given twice was one sequence, and a
    cine without a frame rate joined its folder's stills: a track ran from one into the other."""
    from bpedge.sources import sequence_of

    write, _ = dicom_writer
    clip = _clip(tmp_path / "clip.avi")
    cine = write(tmp_path / "cine.dcm", np.full((2, 48, 64), 90, np.uint8), "MONOCHROME2")
    still = tmp_path / "1_1.png"
    cv2.imwrite(str(still), np.full((48, 64), 70, np.uint8))
    frames = list(open_frames(clip, clip, cine, still))
    assert len(frames) == 9 and frames[6].timestamp is None  # the cine declares no frame rate
    runs = [sequence_of(f) for f in frames]
    assert runs[:3] == [runs[0]] * 3 and runs[3:6] == [runs[3]] * 3 and runs[6] == runs[7]
    assert len({runs[0], runs[3], runs[6], runs[8]}) == 4


def test_a_single_frame_dicom_named_like_a_video_frame_keeps_names_unique(tmp_path,
                                                                         dicom_writer):
    write, _ = dicom_writer
    write(tmp_path / "clip_f000000.dcm", np.full((1, 48, 64), 90, np.uint8), "MONOCHROME2")
    _clip(tmp_path / "clip.avi")
    frames = list(open_frames(tmp_path / "clip_f000000.dcm", tmp_path / "clip.avi"))
    names = [f.name for f in frames]
    assert len(names) == 4 and len({n.casefold() for n in names}) == 4, names


@pytest.mark.parametrize("field,value", [("timestamp", float("nan")), ("fps", float("inf")),
                                         ("fps", -25.0), ("spacing_mm", (float("inf"), 0.1)),
                                         ("spacing_mm", (0.1, 0.0))])
def test_a_source_frame_refuses_values_json_cannot_hold(field, value):
    with pytest.raises(ValueError, match=field):
        SourceFrame(np.zeros((8, 8), np.uint8), "x", **{field: value})
