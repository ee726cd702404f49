"""The public Segmenter on a real exported bundle (ONNX Runtime, the CPU default)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bpedge.train.data import read_image, scan_dataset

from bpedge import Result, Segmenter
from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge.bundle import Bundle
from tests.conftest import hide_openvino


@pytest.fixture(scope="module")
def frames(phantom_dir: Path) -> list[np.ndarray]:
    index = scan_dataset(phantom_dir)
    picked = index.frames[:: max(1, len(index.frames) // 6)][:6]
    return [read_image(f.image_path) for f in picked]


@pytest.fixture(scope="module")
def seg(tiny_bundle: Path):
    with pytest.MonkeyPatch.context() as mp:
        hide_openvino(mp)
        with Segmenter.from_bundle(tiny_bundle, backend="auto") as s:
            yield s


def test_auto_falls_back_to_onnxruntime_and_says_why(seg):
    assert seg.backend == "onnxruntime" and seg.precision == "fp32"
    assert seg.fallback_reason and "TensorRT" in seg.fallback_reason


def test_tensorrt_requested_without_it_is_a_clear_error(tiny_bundle):
    with pytest.raises(RuntimeError, match="tensorrt"):
        Segmenter.from_bundle(tiny_bundle, backend="tensorrt")
    with pytest.raises(ValueError, match="backend"):
        Segmenter.from_bundle(tiny_bundle, backend="cuda")  # type: ignore[arg-type]


def test_result_contract(seg, frames):
    r = seg(frames[0])
    assert isinstance(r, Result)
    assert r.mask.shape == frames[0].shape and r.mask.dtype == np.uint8
    assert set(np.unique(r.mask)) <= {0, 255}
    x0, y0, x1, y1 = r.box
    assert 0 <= x0 < x1 <= frames[0].shape[1] and 0 <= y0 < y1 <= frames[0].shape[0]
    assert 0.0 <= r.score <= 1.0 and r.present == (r.score >= seg.spec.score_threshold)
    if not r.present:
        assert not r.mask.any()
    assert r.timings["total"] > 0


def test_masks_equal_the_pytorch_models_on_the_same_frames(tiny_bundle, frames):
    """The ONNX Runtime cascade and the PyTorch models, through the same host stages, agree."""
    import torch
    from bpedge.train.checkpoint import load_model

    bundle = Bundle.open(tiny_bundle)
    detector, _ = load_model(bundle.verified_path("detector.pt"))
    segmenter, _ = load_model(bundle.verified_path("segmenter.pt"))

    def run_detector(x):
        with torch.inference_mode():
            s, b = detector(torch.from_numpy(x))
        return s.numpy(), b.numpy()

    def run_segmenter(x):
        with torch.inference_mode():
            return segmenter(torch.from_numpy(x)).numpy()

    torch_cascade = HostCascade(run_detector, run_segmenter, CascadeSpec.from_manifest(bundle.manifest))
    with Segmenter.from_bundle(bundle, backend="onnxruntime") as seg:
        for frame in frames:
            want, got = torch_cascade.run(frame), seg(frame)
            assert got.score == pytest.approx(want.score, abs=1e-4)
            np.testing.assert_allclose(got.box, want.box, atol=0.5)
            differ = np.count_nonzero(got.mask != want.mask)
            # Only pixels whose probability sits on the threshold within float error may differ.
            assert differ <= max(2, 1e-4 * got.mask.size), differ


def test_batch_and_stream_equal_single_calls(seg, frames):
    singles = [seg(f) for f in frames]
    batched = seg.segment_batch(frames)
    streamed = list(seg.stream(iter(frames), depth=3))
    for a, b, c in zip(singles, batched, streamed):
        np.testing.assert_array_equal(a.mask, b.mask)
        np.testing.assert_array_equal(a.mask, c.mask)
        assert a.box == pytest.approx(b.box, abs=1e-3) and a.box == c.box


def test_any_frame_size_and_channels(seg, frames):
    f = frames[0]
    small = np.ascontiguousarray(f[::3, ::2])
    assert seg(small).mask.shape == small.shape
    bgr = np.dstack([f, f, f])
    np.testing.assert_array_equal(seg(bgr).mask, seg(f).mask)


def test_bad_input_leaves_the_segmenter_usable(seg, frames):
    for bad in (np.zeros((5,), np.uint8), np.full((8, 8), np.nan), np.zeros((4, 4, 4), np.uint8), "x"):
        with pytest.raises(ValueError):
            seg(bad)
    assert seg(frames[1]).mask.shape == frames[1].shape
    with pytest.raises(ValueError, match="depth"):
        seg.stream(iter(frames), depth=0)
    with pytest.raises(ValueError, match="sequence"):
        seg.segment_batch(frames[0])


def test_closed_segmenter_refuses_work(tiny_bundle, frames):
    s = Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    s.close()
    s.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        s(frames[0])


def test_fp16_models_run_and_stay_close(tiny_bundle, frames):
    with Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", precision="fp16") as s16, \
         Segmenter.from_bundle(tiny_bundle, backend="onnxruntime") as s32:
        for f in frames[:3]:
            a, b = s16(f), s32(f)
            assert abs(a.score - b.score) < 0.02


def test_a_tracked_stream_of_source_frames_tells_the_tracker_each_frames_sequence(
        seg, phantom_dir, monkeypatch):
    # open_frames gives a Kaggle folder's subjects one after another, all one size: the tracker
    # must know where each subject starts (tests/test_tracking.py: a new sequence ends the
    # track), or the next subject's first frame inherits the last subject's box and score.
    from bpedge._tracking import SequenceFrame
    from bpedge.sources import open_frames, sequence_of

    seen = []
    real = HostCascade.stream

    def spy(self, greys, depth, track=None):
        def watched():
            for item in greys:
                seen.append(item)
                yield item
        return real(self, watched(), depth, track)

    monkeypatch.setattr(HostCascade, "stream", spy)
    frames = list(open_frames(phantom_dir))
    results = list(seg.stream(iter(frames), track=True))
    assert [r.name for r in results] == [f.name for f in frames]
    assert all(isinstance(item, SequenceFrame) for item in seen)
    assert [item.sequence for item in seen] == [sequence_of(f) for f in frames]
    subjects = {f.name.split("_")[0] for f in frames}
    assert len(subjects) >= 2 and len({item.sequence for item in seen}) == len(subjects)
    for item, frame in zip(seen, frames):
        np.testing.assert_array_equal(item.grey, frame.image)
