"""The host cascade's plumbing with fake models: boxes scaled and clamped, batching, streaming order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from bpedge._cascade import HostCascade, frame_box
from bpedge._cascade_spec import CascadeSpec
from bpedge._stages import paste_back

SPEC = CascadeSpec((16, 24), 100.0, 50.0, (8, 8), None, None, score_threshold=0.5, mask_threshold=0.5)


def fake_detector(scores, boxes):
    def run(batch):
        assert batch.shape[1:] == (1, 16, 24) and batch.dtype == np.float32
        n = len(batch)
        return np.asarray(scores[:n], np.float32), np.asarray(boxes[:n], np.float32)
    return run


def ones_segmenter(batch):
    assert batch.shape[1:] == (1, 8, 8)
    return np.ones_like(batch)


def test_box_scaled_to_frame_and_clamped():
    assert frame_box(np.array([0, 0, 12, 8]), (40, 60), SPEC) == (0, 0, 30, 20)
    assert frame_box(np.array([-5, -5, 100, 100]), (40, 60), SPEC) == (0, 0, 60, 40)


def test_present_and_absent_frames():
    frames = [np.full((40, 60), 10, np.uint8), np.full((30, 30), 200, np.uint8)]
    cascade = HostCascade(fake_detector([0.9, 0.1], [[0, 0, 12, 8], [0, 0, 24, 16]]), ones_segmenter, SPEC)
    r0, r1 = cascade.run_batch(frames)
    assert r0.present and r0.box == (0, 0, 30, 20)
    np.testing.assert_array_equal(r0.mask, paste_back(np.ones((8, 8)), r0.box, 60, 40, 0.5))
    assert r0.mask[:20, :30].all() and not r0.mask[20:].any()
    assert not r1.present and r1.mask.shape == (30, 30) and not r1.mask.any()
    assert set(r0.timings) == {"preprocess", "detector", "crop", "segmenter", "paste", "total"}
    assert cascade.run_batch([]) == []


def test_a_long_batch_runs_in_bounded_chunks_with_each_result_on_its_own_frame():
    # One model call for every frame passed would need memory in proportion to the list.
    from bpedge._cascade import HOST_BATCH_CHUNK

    sizes = []

    def detector(batch):
        sizes.append(len(batch))
        # The score is the frame's own grey level: a result from another frame shows.
        return batch[:, 0, 0, 0] * 50.0 + 100.0, np.tile(np.float32([0, 0, 12, 8]), (len(batch), 1))

    n = 2 * HOST_BATCH_CHUNK + 5
    frames = [np.full((40, 60), i, np.uint8) for i in range(n)]
    results = HostCascade(detector, ones_segmenter, SPEC).run_batch(frames)
    assert sizes == [HOST_BATCH_CHUNK, HOST_BATCH_CHUNK, 5]
    assert [round(r.score) for r in results] == list(range(n))


def test_stream_keeps_order_and_overlaps():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_segmenter(batch):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02)
        with lock:
            in_flight[0] -= 1
        return np.full_like(batch, batch.mean() / 100)  # masks flip at frame 5: order is observable

    def detector(batch):
        return np.full(len(batch), 0.9, np.float32), np.tile([0, 0, 24, 16], (len(batch), 1)).astype(np.float32)

    spec = CascadeSpec((16, 24), 0.0, 1.0, (8, 8), 0.0, 1.0, 0.5, 0.5)
    cascade = HostCascade(detector, slow_segmenter, spec)
    frames = [np.full((20, 20), i * 10, np.uint8) for i in range(8)]
    results = list(cascade.stream(iter(frames), depth=3))
    expected = [cascade.run(f).mask for f in frames]
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got.mask, want)
    assert peak[0] >= 2
    with pytest.raises(ValueError, match="depth"):
        list(cascade.stream(iter(frames), depth=0))


def test_non_finite_detector_box_is_whole_frame_and_absent():
    nan = float("nan")
    cascade = HostCascade(fake_detector([0.9], [[nan, 0, 12, 8]]), ones_segmenter, SPEC)
    r = cascade.run(np.full((40, 60), 10, np.uint8))
    assert r.box == (0, 0, 60, 40) and not r.present and not r.mask.any()
