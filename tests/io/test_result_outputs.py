"""``Result.plot``, ``save``, ``to_dict``/``to_json``, and what a Segmenter puts into a Result:
the frame (its own copy), and a SourceFrame's name, timestamp and spacing (areas in mm)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from bpedge.train.data import read_image

from bpedge._overlay import draw_overlay
from bpedge.segmenter import Segmenter
from bpedge.sources import SourceFrame, open_frames


@pytest.fixture(scope="module")
def seg(tiny_bundle):
    with Segmenter.from_bundle(tiny_bundle, "onnxruntime") as s:
        yield s


@pytest.fixture(scope="module")
def frame(phantom_dir):
    return read_image(phantom_dir / "1_3.tif")


def test_plot_is_the_demo_overlay_of_the_frame(seg, frame):
    r = seg(frame)
    expected = draw_overlay(frame, r.mask, None, r.box, r.present,
                            f"score {r.score:.2f}" + ("" if r.present else " (no BP)"))
    np.testing.assert_array_equal(r.plot(), expected)
    truth = np.zeros_like(frame)
    truth[100:150, 200:260] = 255
    assert not np.array_equal(r.plot(truth=truth), expected)  # the green outline is drawn


def test_result_keeps_its_own_frame_when_the_caller_reuses_the_buffer(seg, frame):
    buffer = frame.copy()
    r = seg(buffer)
    buffer[:] = 0
    np.testing.assert_array_equal(r.frame, frame)
    [b] = list(seg.stream([frame.copy()]))
    np.testing.assert_array_equal(b.frame, frame)


def test_to_dict_json_and_save(seg, frame, tmp_path):
    r = seg(frame)
    d = r.to_dict()
    assert d["box"] == pytest.approx(list(r.box)) and d["score"] == pytest.approx(r.score)
    assert d["present"] == r.present and d["area_px"] == int(np.count_nonzero(r.mask))
    assert d["area_mm2"] is None and d["box_size_mm"] is None  # no spacing on a plain array
    assert set(d["timings_ms"]) >= {"preprocess", "detector", "crop", "segmenter", "paste", "total"}
    assert json.loads(r.to_json()) == d
    png = r.save(tmp_path / "r.png")
    np.testing.assert_array_equal(cv2.imread(str(png)), r.plot())
    assert json.loads(r.save(tmp_path / "r.json").read_text()) == d
    with pytest.raises(FileExistsError, match="r.png exists"):
        r.save(tmp_path / "r.png")
    r.save(tmp_path / "r.png", overwrite=True)
    with pytest.raises(ValueError, match=".json"):
        r.save(tmp_path / "r.txt")


def test_stream_of_source_frames_carries_name_time_and_spacing_into_mm(seg, frame):
    frames = [SourceFrame(frame, f"cine_f{k:06d}", k, k / 25, "cine.dcm", 25.0, (0.1, 0.2))
              for k in range(3)]
    results = list(seg.stream(frames, depth=2))
    assert [r.name for r in results] == ["cine_f000000", "cine_f000001", "cine_f000002"]
    assert [r.timestamp for r in results] == pytest.approx([0, 0.04, 0.08])
    r = results[1]
    assert r.spacing_mm == (0.1, 0.2)
    assert r.area_mm2 == pytest.approx(r.area_px * 0.1 * 0.2)
    w, h = r.box[2] - r.box[0], r.box[3] - r.box[1]
    assert r.box_size_mm == pytest.approx((w * 0.1, h * 0.2))
    assert r.to_dict()["area_mm2"] == pytest.approx(r.area_mm2)


def test_dicom_to_mm_end_to_end(seg, frame, dicom_writer, tmp_path):
    write, _ = dicom_writer
    regions = [{"RegionSpatialFormat": 1, "PhysicalUnitsXDirection": 3,
                "PhysicalUnitsYDirection": 3, "PhysicalDeltaX": 0.01, "PhysicalDeltaY": 0.01}]
    path = write(tmp_path / "us.dcm", frame[None], "MONOCHROME2", regions=regions)
    [r] = list(seg.stream(open_frames(path)))
    assert r.name == "us" and r.spacing_mm == pytest.approx((0.1, 0.1))
    expected = seg(frame)
    np.testing.assert_array_equal(r.mask, expected.mask)
    assert r.area_mm2 == pytest.approx(expected.area_px * 0.01)


def test_plot_without_a_frame_says_what_to_do(seg, frame):
    import dataclasses

    bare = dataclasses.replace(seg(frame), frame=None)
    with pytest.raises(ValueError, match="no frame"):
        bare.plot()


def test_a_vanishing_source_gets_its_frames_in_flight_answered_first(seg, frame):
    from bpedge.sources import SourceError

    def camera():
        for k in range(3):
            yield SourceFrame(frame, f"cam_f{k:06d}", k)
        raise SourceError("camera gone after 3 frame(s)", 3)

    names = []
    with pytest.raises(SourceError, match="camera gone"):
        names.extend(r.name for r in seg.stream(camera(), depth=3))
    assert names == ["cam_f000000", "cam_f000001", "cam_f000002"]


def test_to_dict_is_plain_json_for_a_hand_made_source_frames_numpy_values(seg, frame):
    # A capture wrapper's own SourceFrame: numpy.float64/float32 time stamps are common there.
    source = SourceFrame(frame, np.str_("cart_f000007"), 7, np.float32(0.28))
    [r] = list(seg.stream([source]))
    d = json.loads(r.to_json())
    assert d["timestamp"] == pytest.approx(0.28) and d["name"] == "cart_f000007"
    assert type(r.to_dict()["timestamp"]) is float


def test_save_under_a_file_used_as_a_folder_names_that_file(seg, frame, tmp_path):
    # "out/notes.txt/r.png": nothing is at the path, so "r.png exists" would send the user
    # looking for a file that is not there.
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt is not a folder"):
        seg(frame).save(notes / "r.png")
    assert notes.read_text() == "mine"
