"""A stream result always belongs to the frame passed, and a stream ends cleanly.

Capture loops refill one buffer for every frame (``cap.read(image=buf)``, a frame grabber's ring
buffer); ``Segmenter.stream`` must answer each frame as it was when handed over. A failing frame
or iterator still delivers the results before it, ``close()`` stops a live stream, and absurd
``depth``/``threads`` values are refused at once."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from bpedge.train.data import read_image

from bpedge import Segmenter
from bpedge._result import Result

N_FRAMES, DEPTH = 2000, 3


@pytest.fixture(scope="module")
def seg(tiny_bundle: Path):
    with Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1) as s:
        yield s


@pytest.fixture(scope="module")
def distinct(phantom_dir: Path) -> list[np.ndarray]:
    """Frames whose answers differ, shrunk (the cascade's cost is the models', not the size)."""
    import cv2

    frames = [read_image(phantom_dir / f"{s}_{f}.tif") for s in (1, 2, 3, 4) for f in (1, 5, 9)]
    return [cv2.resize(f, (145, 105), interpolation=cv2.INTER_AREA) for f in frames]


def test_a_stream_from_one_reused_buffer_gives_the_masks_of_per_frame_calls(seg, distinct):
    expected = [seg(f) for f in distinct]
    boxes = {e.box for e in expected}
    assert len(boxes) > 1  # the frames' answers differ, so a mix-up would show
    order = np.random.default_rng(0).integers(0, len(distinct), N_FRAMES)
    buffer = np.empty_like(distinct[0])

    def capture():  # what cap.read(image=buffer) does: the same array, refilled
        for i in order:
            buffer[...] = distinct[i]
            yield buffer

    wrong = 0
    count = 0
    for k, result in enumerate(seg.stream(capture(), depth=DEPTH)):
        want = expected[order[k]]
        same = (result.box == want.box and result.score == want.score
                and np.array_equal(result.mask, want.mask))
        wrong += not same
        count += 1
    assert count == N_FRAMES
    assert wrong == 0, f"{wrong} of {N_FRAMES} results were computed on another frame's pixels"


def test_a_frame_view_of_a_reused_buffer_is_owned_too(seg, distinct):
    """(H, W, 1) views and BGR views of the refilled buffer: same rule."""
    expected = [seg(f) for f in distinct[:4]]
    buffer = np.empty((*distinct[0].shape, 1), np.uint8)

    def capture():
        for i in range(40):
            buffer[..., 0] = distinct[i % 4]
            yield buffer

    results = list(seg.stream(capture(), depth=DEPTH))
    for i, result in enumerate(results):
        assert result.box == expected[i % 4].box


def test_results_before_a_failing_iterator_still_come_out_then_the_error(seg, distinct):
    expected = [seg(f) for f in distinct[:3]]

    def frames():
        yield from distinct[:3]
        raise OSError("camera unplugged")

    delivered: list[Result] = []
    with pytest.raises(OSError, match="camera unplugged"):
        delivered.extend(seg.stream(frames(), depth=3))  # keeps what came before the error
    assert [r.box for r in delivered] == [e.box for e in expected]


def test_results_before_a_bad_frame_still_come_out_then_the_error(seg, distinct):
    frames = [*distinct[:3], np.zeros((4, 4, 4), np.uint8), distinct[0]]
    delivered: list[Result] = []
    with pytest.raises(ValueError, match="1 or 3"):
        delivered.extend(seg.stream(iter(frames), depth=3))
    assert len(delivered) == 3


def test_close_during_a_stream_stops_it(tiny_bundle: Path, distinct):
    threads_before = threading.active_count()
    s = Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    stream = s.stream(iter(distinct * 4), depth=2)
    next(stream)
    s.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(stream)
    assert threading.active_count() == threads_before


class _Grabber:
    """A capture object that exposes its one buffer through ``__array__`` (a frame grabber's
    wrapper, or a camera SDK's frame object): np.asarray gives the buffer itself."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.buffer = np.empty(shape, np.uint8)

    def __array__(self, dtype=None, copy=None):
        return self.buffer


@pytest.mark.parametrize("depth", [1, DEPTH])
def test_a_stream_from_one_refilled_array_object_is_owned_too(seg, distinct, depth):
    expected = [seg(f) for f in distinct]
    grabber = _Grabber(distinct[0].shape)
    order = np.random.default_rng(1).integers(0, len(distinct), 60)

    def capture():
        for i in order:
            grabber.buffer[...] = distinct[i]
            yield grabber

    results = list(seg.stream(capture(), depth=depth))
    assert len(results) == len(order)
    for k, result in enumerate(results):
        want = expected[order[k]]
        assert result.box == want.box and np.array_equal(result.mask, want.mask)
        assert np.array_equal(result.frame, distinct[order[k]])  # the frame it was computed on


def test_single_calls_keep_their_own_copy_of_an_array_object_or_tensor(seg, distinct):
    torch = pytest.importorskip("torch")
    tensor = torch.from_numpy(distinct[0].copy())
    grabber = _Grabber(distinct[0].shape)
    grabber.buffer[...] = distinct[0]
    results = [seg(tensor), seg(grabber), *seg.segment_batch([tensor, grabber])]
    tensor.zero_()
    grabber.buffer[...] = 0
    for result in results:
        assert np.array_equal(result.frame, distinct[0])


def test_a_batch_from_an_iterator_refilling_one_buffer_gives_each_frame_its_own_answer(
        seg, distinct):
    """``segment_batch(itertools.islice(capture, 8))``: every frame is the same refilled array,
    so each must be taken as it is handed over, as stream() takes it (all results were the last
    frame's)."""
    expected = [seg(f) for f in distinct[:6]]
    buffer = np.empty_like(distinct[0])

    def capture():
        for f in distinct[:6]:
            buffer[...] = f
            yield buffer

    results = seg.segment_batch(capture())
    assert len(results) == 6
    for result, want, original in zip(results, expected, distinct):
        assert result.box == want.box and np.array_equal(result.mask, want.mask)
        np.testing.assert_array_equal(result.frame, original)


def test_a_single_call_keeps_the_frame_it_computed_on_when_the_buffer_is_refilled_meanwhile(
        seg, distinct, monkeypatch):
    # A capture thread refilling the buffer while seg(buffer) runs: the result's frame must be
    # the pixels the masks came from (it was copied only after the models ran: all zeros here).
    buffer = distinct[0].copy()
    real = seg._cascade.run

    def refilled_during_the_call(grey):
        result = real(grey)
        buffer[...] = 0
        return result

    monkeypatch.setattr(seg._cascade, "run", refilled_during_the_call)
    result = seg(buffer)
    np.testing.assert_array_equal(result.frame, distinct[0])


@pytest.mark.parametrize("channels", [2, 4])
def test_segment_batch_and_stream_refuse_one_frame_of_2_or_4_channels(seg, distinct, channels):
    # (H, W, 4) BGRA taken as a stack was H frames 4 pixels wide: 105 results, no error.
    frame = np.dstack([distinct[0]] * channels)
    with pytest.raises(ValueError, match="one frame"):
        seg.segment_batch(frame)
    with pytest.raises(ValueError, match="one frame"):
        seg.stream(frame)


@pytest.mark.parametrize("frames", [None, 5])
def test_stream_refuses_what_is_not_iterable_when_called(seg, frames):
    with pytest.raises(TypeError, match="iterable of frames"):
        seg.stream(frames)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("track", [False, True])
def test_close_before_a_streams_next_step_raises_even_with_nothing_in_flight(
        tiny_bundle: Path, distinct, depth, track):
    s = Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    stream = s.stream(iter(distinct * 2), depth=depth, track=track)
    s.close()  # before the first step: no frame is in flight yet
    with pytest.raises(RuntimeError, match="closed during stream"):
        next(stream)
    s = Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=1)
    stream = s.stream(iter(distinct * 2), depth=1, track=track)
    next(stream)
    s.close()
    with pytest.raises(RuntimeError, match="closed during stream"):
        list(stream)


@pytest.mark.parametrize("shape", [(105, 145), (105, 145, 3), (105, 145, 1)])
def test_stream_refuses_one_frame(seg, shape):
    with pytest.raises(ValueError, match="one frame"):
        seg.stream(np.zeros(shape, np.uint8))


@pytest.mark.parametrize("depth", [0, 100_000, -1, 2.5, True])
def test_absurd_depth_is_refused_at_once(seg, depth):
    with pytest.raises(ValueError, match="depth"):
        seg.stream(iter([]), depth=depth)


@pytest.mark.parametrize("threads", [0, 10_000])
def test_absurd_threads_are_refused_at_once(tiny_bundle: Path, threads):
    with pytest.raises(ValueError, match="threads"):
        Segmenter.from_bundle(tiny_bundle, backend="onnxruntime", threads=threads)


def test_segment_batch_refuses_one_colour_frame(seg, distinct):
    bgr = np.dstack([distinct[0]] * 3)
    with pytest.raises(ValueError, match="one frame"):
        seg.segment_batch(bgr)
    assert len(seg.segment_batch(np.stack(distinct[:2]))) == 2


def test_float_frames_normalised_to_0_1_are_refused(seg, distinct):
    with pytest.raises(ValueError, match=r"\[0, 1\].*255"):
        seg(distinct[0].astype(np.float32) / 255.0)
    black = seg(np.zeros((20, 30), np.float32))  # an all-black float frame is still a frame
    assert black.box == seg(np.zeros((20, 30), np.uint8)).box


@pytest.mark.parametrize("raw,said_present,score,present", [
    (1.7, True, 1.0, True), (-0.2, False, 0.0, False), (float("nan"), True, 0.0, False),
    (0.4, True, 0.4, True),
])
def test_a_detector_score_is_brought_into_0_1(raw, said_present, score, present):
    from bpedge._result import with_valid_score

    mask = np.full((4, 5), 255 if said_present else 0, np.uint8)
    fixed = with_valid_score(Result(mask, (0.0, 0.0, 5.0, 4.0), raw, said_present))
    assert fixed.score == score and fixed.present is present
    assert fixed.mask.any() == present


def test_a_nan_detector_score_from_the_model_never_reaches_the_caller(seg, distinct,
                                                                      monkeypatch):
    cascade = seg._cascade
    real = cascade._detector

    def diverged(batch):
        scores, boxes = real(batch)
        return np.full_like(scores, np.nan), boxes

    monkeypatch.setattr(cascade, "_detector", diverged)
    for result in [seg(distinct[0]), *seg.segment_batch(distinct[:2]),
                   *seg.stream(iter(distinct[:2]), depth=2)]:
        assert result.score == 0.0 and not result.present and not result.mask.any()
