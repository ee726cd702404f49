"""Validation data for export: the fingerprint check, the frames chosen, and inputs made with the
shared stage definitions (compared with ``bpedge._stages`` directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bpedge.export import _validation as val
from bpedge.train.data import read_image, read_mask, scan_dataset

from bpedge._stages import crop_resize, crop_resize_normalize


@pytest.fixture(scope="module")
def index(phantom_dir: Path):
    return scan_dataset(phantom_dir)


def payload_for(index, keys: list[str], **data: Any) -> dict[str, Any]:
    return {
        "split": {"mode": "random", "seed": 0, "val": keys},
        "data_fingerprint": index.fingerprint,
        "config": {"data": {"root": str(index.root), "on_error": "fail", **data}},
    }


def positives(index, n: int) -> list[str]:
    return [f.key for f in index.frames if f.present][:n]


def test_data_root_comes_from_the_option_or_the_checkpoint(phantom_dir: Path, index) -> None:
    payload = payload_for(index, [])
    assert val.resolve_data_root(payload, None, "detector") == Path(str(index.root))
    assert val.resolve_data_root(payload, phantom_dir, "detector") == phantom_dir
    with pytest.raises(ValueError, match="records no data folder: pass --data"):
        val.resolve_data_root({}, None, "detector")
    gone = {"config": {"data": {"root": "/nonexistent/bp"}}}
    with pytest.raises(FileNotFoundError, match="does not exist here: pass --data"):
        val.resolve_data_root(gone, None, "segmenter")


def test_a_fingerprint_mismatch_is_refused_unless_accepted(phantom_dir: Path, index) -> None:
    good = payload_for(index, [])
    assert val.check_data(phantom_dir, good, "detector", accept_other_data=False,
                          warn=print).fingerprint_matches
    bad = {**good, "data_fingerprint": "0" * 64}
    with pytest.raises(ValueError, match="not what the segmenter was trained on"):
        val.check_data(phantom_dir, bad, "segmenter", accept_other_data=False, warn=print)
    warnings: list[str] = []
    check = val.check_data(phantom_dir, bad, "segmenter", accept_other_data=True,
                           warn=warnings.append)
    assert not check.fingerprint_matches and "--accept-other-data" in warnings[0]


def test_validation_frames_are_the_split_and_max_val_a_seeded_sample(phantom_dir: Path,
                                                                      index) -> None:
    keys = positives(index, 10)
    check = val.check_data(phantom_dir, payload_for(index, keys), "detector",
                           accept_other_data=False, warn=print)
    frames = val.validation_frames(check, payload_for(index, keys), "detector", max_val=None,
                                   accept_other_data=False, warn=print)
    assert [f.key for f in frames.positives] == keys
    sample = val.validation_frames(check, payload_for(index, keys), "detector", max_val=4,
                                   accept_other_data=False, warn=print)
    again = val.validation_frames(check, payload_for(index, keys), "detector", max_val=4,
                                  accept_other_data=False, warn=print)
    assert len(sample.positives) == 4 and sample.positives == again.positives
    assert {f.key for f in sample.positives} <= set(keys)
    with pytest.raises(ValueError, match="not in"):
        val.validation_frames(check, payload_for(index, [*keys, "99_1"]), "detector",
                              max_val=None, accept_other_data=False, warn=print)
    with pytest.raises(ValueError, match="records no validation split"):
        val.validation_frames(check, {}, "detector", max_val=None, accept_other_data=False,
                              warn=print)


def test_empty_frames_come_from_the_validation_subjects_at_the_data_ratio(phantom_dir: Path,
                                                                          index) -> None:
    keys = [f.key for f in index.frames if f.present and f.subject == index.frames[0].subject]
    check = val.check_data(phantom_dir, payload_for(index, keys), "detector",
                           accept_other_data=False, warn=print)
    frames = index.select(keys)
    empties = val.empty_frames_for_presence(check, payload_for(index, keys), frames, seed=0)
    n_pos = sum(f.present for f in index.frames)
    n_empty = len(index.frames) - n_pos
    assert len(empties) == min(max(1, round(len(keys) * n_empty / n_pos)),
                               sum(1 for f in index.frames
                                   if not f.present and f.subject == frames[0].subject))
    assert all(not f.present and f.subject == frames[0].subject for f in empties)


def test_inputs_and_boxes_follow_the_shared_stages(index) -> None:
    frames = [f for f in index.frames if f.present][:3]
    store = val.load_store(frames)
    x = val.detector_inputs(store, (160, 224), 120.0, 40.0)
    image = read_image(frames[1].image_path)
    h, w = image.shape
    np.testing.assert_array_equal(x[1, 0], crop_resize_normalize(image, (0, 0, w, h), 224, 160,
                                                                  120.0, 40.0))
    assert val.segmenter_boxes("gt", store) == [f.box for f in frames]
    assert val.segmenter_boxes("none", store) == [(0.0, 0.0, float(w), float(h))] * 3

    def detect(batch: np.ndarray) -> np.ndarray:
        assert batch.shape == (3, 1, 160, 224)
        # One box inside the input, one overshooting it (clamped to the frame), one degenerate.
        return np.array([[56, 40, 112, 80], [200, 100, 260, 190], [10, 10, 10, 10]], np.float32)

    boxes = val.segmenter_boxes("detector", store, detect=detect,
                                detector_input=lambda s: val.detector_inputs(s, (160, 224), 0, 1),
                                detector_input_hw=(160, 224))
    sx, sy = w / 224, h / 160
    assert boxes[0] == pytest.approx((56 * sx, 40 * sy, 112 * sx, 80 * sy))
    assert boxes[1] == pytest.approx((200 * sx, 100 * sy, float(w), float(h)))
    assert boxes[2][2] - boxes[2][0] >= 1.0  # widened to the minimum side, never zero-area
    with pytest.raises(ValueError, match="crop mode"):
        val.segmenter_boxes("random", store)

    crops, targets = val.segmenter_crops(store, boxes, (96, 96), 130.0, 45.0)
    first = read_image(frames[0].image_path)
    np.testing.assert_allclose(crops[0, 0],
                               crop_resize_normalize(first, boxes[0], 96, 96, 130.0, 45.0),
                               atol=1e-6)
    want = (crop_resize(read_mask(frames[0].mask_path), boxes[0], 96, 96) > 127.5)
    np.testing.assert_array_equal(targets[0, 0], want.astype(np.float32))



def test_a_run_trained_with_dedup_leaves_its_contradictory_frames_out(
    phantom_dir: Path, index, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bpedge.train import data
    from bpedge.train.data import DuplicateReport

    keys = [f.key for f in index.frames if f.present]
    empties = [f.key for f in index.frames if not f.present]
    flagged = set(empties[::2])  # pretend these empty frames near-copy a BP frame
    monkeypatch.setattr(data, "find_contradictory_duplicates",
                        lambda frames: DuplicateReport(tuple(sorted(flagged)), ()))
    check = val.check_data(phantom_dir, payload_for(index, keys), "detector",
                           accept_other_data=False, warn=print)
    frames = index.select(keys)
    plain = val.empty_frames_for_presence(check, payload_for(index, keys), frames, 0)
    deduped = val.empty_frames_for_presence(check, payload_for(index, keys, dedup=True), frames, 0)
    # Every subject has validation frames here, so the plain sample is every empty frame.
    assert {f.key for f in plain} == set(empties)
    assert {f.key for f in deduped} == set(empties) - flagged
