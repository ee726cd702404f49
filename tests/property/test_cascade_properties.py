"""Property tests of the CPU cascade: random frames, detector outputs and segmenter outputs.

The host cascade runs with cheap fake model runners that return whatever a model could return:
boxes inside, partly or wholly outside the detector input, degenerate, reversed or non-finite
(a diverged model); scores anywhere in [0, 1] or NaN; probabilities random, all 0 or all 1. A few
examples also go through the real ``Segmenter`` on the session's exported bundle (ONNX Runtime).

Invariants for every frame: the mask has the frame's shape, is uint8 and holds only 0 and 255;
the box is finite and inside the frame with x0 < x1 and y0 < y1; ``present`` is exactly "the score
reaches the threshold and the box is finite"; the mask is empty when there is no BP and outside
the box; the models only ever see finite float32 batches of the shapes the spec names.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._result import Result

FAST = settings(max_examples=80, deadline=None, derandomize=True, database=None)


@st.composite
def specs(draw: st.DrawFn) -> CascadeSpec:
    dataset = draw(st.booleans())
    return CascadeSpec(
        detector_input_hw=(draw(st.integers(2, 24)), draw(st.integers(2, 24))),
        detector_mean=draw(st.floats(0, 255)) if dataset else None,
        detector_std=draw(st.floats(1e-3, 100)) if dataset else None,
        crop_hw=(draw(st.integers(1, 16)), draw(st.integers(1, 16))),
        crop_mean=draw(st.floats(0, 255)) if dataset else None,
        crop_std=draw(st.floats(1e-3, 100)) if dataset else None,
        score_threshold=draw(st.floats(0, 1)),
        mask_threshold=draw(st.floats(0, 1)),
    )


@st.composite
def frames(draw: st.DrawFn) -> np.ndarray:
    h, w = draw(st.integers(2, 64)), draw(st.integers(2, 64))
    kind = draw(st.sampled_from(["noise", "black", "white", "gradient"]))
    if kind == "black":
        return np.zeros((h, w), np.uint8)
    if kind == "white":
        return np.full((h, w), 255, np.uint8)
    if kind == "gradient":
        return np.broadcast_to(np.linspace(0, 255, w).astype(np.uint8), (h, w)).copy()
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.integers(0, 256, (h, w), dtype=np.uint8)


@st.composite
def detector_outputs(draw: st.DrawFn, in_hw: tuple[int, int]) -> tuple[float, list[float]]:
    """(score, box in detector-input pixels) as a trained, untrained or diverged model gives them."""
    ih, iw = in_hw
    score = draw(st.one_of(st.floats(0, 1), st.just(math.nan)))
    kind = draw(st.sampled_from(["inside", "anywhere", "degenerate", "reversed", "non-finite"]))
    cx = st.floats(-2.0 * iw, 3.0 * iw)
    cy = st.floats(-2.0 * ih, 3.0 * ih)
    x0, y0, x1, y1 = draw(cx), draw(cy), draw(cx), draw(cy)
    if kind == "inside":
        x0, x1 = sorted((min(max(x0, 0), iw), min(max(x1, 0), iw)))
        y0, y1 = sorted((min(max(y0, 0), ih), min(max(y1, 0), ih)))
    elif kind == "degenerate":
        x1 = x0
    elif kind == "reversed":
        x0, x1, y0, y1 = max(x0, x1), min(x0, x1), max(y0, y1), min(y0, y1)
    elif kind == "non-finite":
        box = [x0, y0, x1, y1]
        box[draw(st.integers(0, 3))] = draw(st.sampled_from([math.nan, math.inf, -math.inf]))
        return score, box
    return score, [x0, y0, x1, y1]


@st.composite
def cascade_cases(draw: st.DrawFn):
    spec = draw(specs())
    batch = draw(st.lists(frames(), min_size=1, max_size=3))
    outputs = [draw(detector_outputs(spec.detector_input_hw)) for _ in batch]
    prob_kind = draw(st.sampled_from(["random", "ones", "zeros"]))
    return spec, batch, outputs, prob_kind, draw(st.integers(0, 2**32 - 1))


class FakeModels:
    """Detector and segmenter runners that check what they are fed and answer from a script."""

    def __init__(self, spec: CascadeSpec, outputs, prob_kind: str, seed: int) -> None:
        self.spec, self.outputs, self.prob_kind = spec, outputs, prob_kind
        self.rng = np.random.default_rng(seed)
        self.calls = 0

    def detector(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        assert batch.dtype == np.float32 and batch.shape[1:] == (1, *self.spec.detector_input_hw)
        assert np.isfinite(batch).all()
        picked = self.outputs[self.calls: self.calls + len(batch)]
        self.calls += len(batch)
        scores = np.array([s for s, _ in picked], np.float32)
        return scores, np.array([b for _, b in picked], np.float32)

    def segmenter(self, batch: np.ndarray) -> np.ndarray:
        assert batch.dtype == np.float32 and batch.shape[1:] == (1, *self.spec.crop_hw)
        assert np.isfinite(batch).all()
        if self.prob_kind == "ones":
            return np.ones_like(batch)
        if self.prob_kind == "zeros":
            return np.zeros_like(batch)
        return self.rng.random(batch.shape, dtype=np.float32)


def covered(box: tuple[float, ...], width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    cx, cy = np.arange(width) + 0.5, np.arange(height) + 0.5
    return ((cy >= y0) & (cy < y1))[:, None] & ((cx >= x0) & (cx < x1))[None, :]


def check_result(r: Result, frame: np.ndarray, score_threshold: float) -> None:
    h, w = frame.shape
    assert r.mask.shape == (h, w) and r.mask.dtype == np.uint8
    assert set(np.unique(r.mask)) <= {0, 255}
    x0, y0, x1, y1 = r.box
    assert all(math.isfinite(v) for v in r.box)
    assert 0.0 <= x0 < x1 <= w and 0.0 <= y0 < y1 <= h
    if not r.present:
        assert not r.mask.any()
    else:
        assert r.score >= score_threshold
    assert not r.mask[~covered(r.box, w, h)].any()
    assert all(math.isfinite(t) and t >= 0 for t in r.timings.values())


#: Hypothesis found it: a score of 0 against a threshold below float32's range is absent.
TINY_THRESHOLD = (
    CascadeSpec((2, 2), None, None, (1, 1), None, None, score_threshold=2.2250738585072014e-308,
                mask_threshold=0.0),
    [np.zeros((2, 2), np.uint8)], [(0.0, [0.0, 0.0, 0.0, 0.0])], "random", 0,
)


@FAST
@given(cascade_cases())
@example(TINY_THRESHOLD)
def test_any_model_output_gives_a_valid_result_for_every_frame(case):
    spec, batch, outputs, prob_kind, seed = case
    models = FakeModels(spec, outputs, prob_kind, seed)
    results = HostCascade(models.detector, models.segmenter, spec).run_batch(batch)
    assert len(results) == len(batch)
    for r, frame, (score, raw_box) in zip(results, batch, outputs):
        check_result(r, frame, spec.score_threshold)
        finite_box = all(math.isfinite(v) for v in raw_box)
        # The detector's float32 score, compared as a Python float (as the cascade does).
        assert r.present == (finite_box and float(np.float32(score)) >= spec.score_threshold)
        if not finite_box:  # a diverged detector: the whole frame, reported absent
            assert r.box == (0.0, 0.0, float(frame.shape[1]), float(frame.shape[0]))
        if prob_kind == "zeros" and np.float32(spec.mask_threshold) > 0:
            assert not r.mask.any()
        if prob_kind == "ones" and r.present:
            np.testing.assert_array_equal(r.mask == 255, covered(r.box, *frame.shape[::-1]))
            assert r.mask.any()


@FAST
@given(cascade_cases())
def test_a_batch_gives_what_single_frames_give(case):
    spec, batch, outputs, _, seed = case
    batched_models = FakeModels(spec, outputs, "ones", seed)
    single_models = FakeModels(spec, outputs, "ones", seed)
    batched = HostCascade(batched_models.detector, batched_models.segmenter, spec).run_batch(batch)
    single = HostCascade(single_models.detector, single_models.segmenter, spec)
    for r, frame in zip(batched, batch):
        one = single.run(frame)
        assert one.box == r.box and one.present == r.present
        np.testing.assert_array_equal(one.mask, r.mask)


# --- a few examples through the real Segmenter (ONNX Runtime on the exported tiny bundle) -------


@pytest.fixture(scope="module")
def segmenter(tiny_bundle: Path):
    from bpedge import Segmenter

    with Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1) as seg:
        yield seg


@st.composite
def host_frames(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """(frame as given to the Segmenter, the uint8 grey frame it stands for)."""
    h, w = draw(st.integers(2, 640)), draw(st.integers(2, 800))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    grey = rng.integers(0, 256, (h, w), dtype=np.uint8)
    if draw(st.booleans()):  # smooth structure too, not only noise
        grey = np.clip(grey // 4 + np.linspace(0, 190, w, dtype=np.float32)[None, :], 0, 255)
        grey = grey.astype(np.uint8)
    form = draw(st.sampled_from(["grey", "channel", "bgr", "float"]))
    if form == "channel":
        return grey[:, :, None], grey
    if form == "bgr":
        return np.dstack([grey, grey, grey]), grey
    if form == "float":
        return grey.astype(np.float32), grey
    return grey, grey


@settings(max_examples=8, deadline=None, derandomize=True, database=None)
@given(host_frames())
def test_the_real_segmenter_keeps_the_invariants_on_random_frames(segmenter, case):
    given_frame, grey = case
    r = segmenter(given_frame)
    check_result(r, grey, segmenter.spec.score_threshold)
    assert 0.0 <= r.score <= 1.0
    assert r.present == (r.score >= segmenter.spec.score_threshold)
    again = segmenter(grey)  # every accepted form of a frame is the same frame
    assert again.box == r.box and again.score == r.score
    np.testing.assert_array_equal(again.mask, r.mask)
