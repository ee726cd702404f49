"""The two-stage cascade on the host: detector -> clamp box -> crop -> segmenter -> paste-back.

The stages run the OpenCV implementations of :mod:`bpedge._fast_stages`, which compute the maths
:mod:`bpedge._stages` defines, and the stage combinations of :mod:`bpedge._preprocessing` (which
boxes are cropped; ``detector_input`` and ``segmenter_input`` there are the reference forms the
fast path is tested against); only the two model calls differ between backends (ONNX Runtime,
OpenVINO, PyTorch eager for the benchmark baseline), so they are injected as runner callables.

Buffers: each thread that runs frames (the caller's, or a :meth:`HostCascade.stream` worker) owns
one contiguous float32 buffer per stage (detector batch, crop batch), reused from frame to frame;
frames in flight on different threads never share one. Masks are new arrays: they belong to the
result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._fast_stages import (
    crop_into,
    detector_crop_box,
    normalize_resize_frame_into,
    paste_mask,
    resize_frame_into,
    stats_after_normalization,
)
from bpedge._preprocessing import crop_box, detector_input, frame_box, segmenter_input
from bpedge._result import Result
from bpedge._stages import NORMALIZE_EPS, clamp_box
from bpedge._tracking import SequenceFrame, Tracker, TrackOptions

__all__ = ["DetectorRunner", "HostCascade", "SegmenterRunner", "detector_input", "frame_box",
           "segmenter_input"]

#: Detector: float32 (N, 1, H, W) -> (scores (N,), boxes (N, 4) in detector-input pixels).
DetectorRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: Segmenter: float32 (N, 1, h, w) -> probabilities (N, 1, h, w).
SegmenterRunner = Callable[[np.ndarray], np.ndarray]


#: Most frames one model call of :meth:`HostCascade.run_batch` takes; a longer list runs in chunks
#: of this size, so memory stays bounded whatever the caller passes (one 320x448 detector input is
#: 0.57 MB, its activations many times that: 10,000 frames in one call would not fit in RAM).
HOST_BATCH_CHUNK = 32


class _StageBuffers(threading.local):
    """Per-thread stage buffers: float32 (n, 1, H, W) detector batch, (n, 1, h, w) crop batch,
    and one float32 frame of the last frame size (OpenCV's uint8 resize rounds to integers), which
    holds the frame normalised with the detector's statistics when the bundle fixes them."""

    def __init__(self) -> None:
        self.detector = np.empty((0, 1, 1, 1), np.float32)
        self.crops = np.empty((0, 1, 1, 1), np.float32)
        self.frame: np.ndarray | None = None

    def batches(self, n: int, spec: CascadeSpec) -> tuple[np.ndarray, np.ndarray]:
        if self.detector.shape[0] < n:
            self.detector = np.empty((n, 1, *spec.detector_input_hw), np.float32)
            self.crops = np.empty((n, 1, *spec.crop_hw), np.float32)
        return self.detector[:n], self.crops[:n]

    def frame_f32(self, shape: tuple[int, ...]) -> np.ndarray:
        if self.frame is None or self.frame.shape != shape:
            self.frame = np.empty(shape, np.float32)
        return self.frame


class HostCascade:
    """Runs the cascade on host arrays with injected model runners; one thread at a time per call,
    except :meth:`stream`, which overlaps frames on a small thread pool."""

    def __init__(self, detector: DetectorRunner, segmenter: SegmenterRunner, spec: CascadeSpec):
        self._detector = detector
        self._segmenter = segmenter
        self.spec = spec
        self._buffers = _StageBuffers()
        # The crop statistics restated in the units of the frame normalised with the detector's
        # (see _one_frame_crop_source), once: recomputed per frame they cost ~0.01 ms between the
        # model calls, where the caches are cold.
        self._crop_stats_normalized: tuple[float | None, float | None, float] | None = None
        if (spec.detector_mean is not None and spec.detector_std is not None
                and spec.crop_mean is not None and spec.crop_std is not None):
            self._crop_stats_normalized = stats_after_normalization(
                spec.crop_mean, spec.crop_std, spec.detector_mean, spec.detector_std)

    def run_batch(self, greys: Sequence[np.ndarray]) -> list[Result]:
        """Segment validated uint8 (H, W) frames (sizes may differ); one model call per stage for
        every :data:`HOST_BATCH_CHUNK` frames."""
        results: list[Result] = []
        for start in range(0, len(greys), HOST_BATCH_CHUNK):
            results += self._run_batch(greys[start:start + HOST_BATCH_CHUNK])[0]
        return results

    def run_with_probability(self, grey: np.ndarray) -> tuple[Result, np.ndarray | None]:
        """:meth:`run` and the segmenter's probability map for the result's box, float32 (h, w);
        ``None`` when the detector finds no BP: then the crop and the segmenter are not run (the
        result is the one :meth:`run` gives, an empty mask, without their timings)."""
        results, probs = self._run_batch([grey], segment_absent=False)
        return results[0], (None if probs is None else probs[0, 0])

    def _run_batch(self, greys: Sequence[np.ndarray], segment_absent: bool = True
                   ) -> tuple[list[Result], np.ndarray | None]:
        spec = self.spec
        det_in, crops = self._buffers.batches(len(greys), spec)
        mean, std = spec.detector_mean, spec.detector_std
        t = [time.perf_counter()]
        for i, g in enumerate(greys):
            frame_f32 = self._buffers.frame_f32(g.shape)
            if mean is not None and std is not None:  # one pass: convert and normalise
                normalize_resize_frame_into(g, frame_f32, det_in[i, 0], mean, std)
            else:  # the resized frame's own statistics: normalised after the resize
                np.copyto(frame_f32, g, casting="unsafe")
                resize_frame_into(frame_f32, det_in[i, 0], mean, std)
        t.append(time.perf_counter())
        scores, raw_boxes = self._detector(det_in)
        t.append(time.perf_counter())
        # The crop box (the detector's, expanded by the margin) is what the mask is pasted into
        # and what the result reports, as on the GPU.
        boxes, present = [], []
        for i, g in enumerate(greys):
            box, found = detector_crop_box(raw_boxes[i], g.shape, spec.detector_input_hw,
                                           spec.crop_margin)
            boxes.append(box)
            # The float32 score compared as a Python float (NumPy would compare in float32,
            # where a threshold below float32's range rounds to 0).
            present.append(found and float(scores[i]) >= spec.score_threshold)
        if not segment_absent and len(greys) == 1 and not present[0]:
            # No BP: the mask is empty whatever the segmenter says, so it is not run.
            h, w = greys[0].shape
            timings = {"preprocess": (t[1] - t[0]) * 1e3, "detector": (t[2] - t[1]) * 1e3,
                       "total": (time.perf_counter() - t[0]) * 1e3}
            return [Result(np.zeros((h, w), np.uint8), boxes[0], float(scores[0]), False,
                           timings)], None
        if len(greys) == 1:
            source, stats = self._one_frame_crop_source(greys[0], frame_f32, mean, std)
            crop_into(source, boxes[0], crops[0, 0], *stats)
        else:
            for i, (g, b) in enumerate(zip(greys, boxes)):
                crop_into(g, b, crops[i, 0], spec.crop_mean, spec.crop_std)
        t.append(time.perf_counter())
        probs = self._segmenter(crops)
        t.append(time.perf_counter())
        results = []
        for i, g in enumerate(greys):
            mask = paste_mask(probs[i, 0], boxes[i], g.shape[1], g.shape[0],
                              spec.mask_threshold, present[i])
            results.append((mask, boxes[i], float(scores[i]), present[i]))
        t.append(time.perf_counter())
        n = len(greys)
        stages = ("preprocess", "detector", "crop", "segmenter", "paste")
        # Per-frame share of each batched stage, so batch and single-frame timings compare.
        timings = {s: (t[k + 1] - t[k]) * 1e3 / n for k, s in enumerate(stages)}
        timings["total"] = (t[-1] - t[0]) * 1e3 / n
        return ([Result(m, tuple(b), s, p, dict(timings))  # type: ignore[arg-type]
                 for m, b, s, p in results], probs)

    def _one_frame_crop_source(self, grey: np.ndarray, frame_f32: np.ndarray,
                               mean: float | None, std: float | None
                               ) -> tuple[np.ndarray, tuple[float | None, float | None, float]]:
        """The array a lone frame's crop reads and the statistics (and eps floor) that normalise
        it. Its float32 form (still in the buffer) when that can be used, so the box's pixels are
        not converted again (crop_into 0.032 -> 0.018 ms): as is when it is the exact copy of the
        frame; normalised with the detector's fixed ``mean``/``std``, with the crop's statistics
        restated in those units. Not with the crop's own statistics: on a flat crop of the
        normalised frame they are float32 rounding noise instead of the pixel value and 0, and
        the eps floor magnifies that into a crop of noise; the uint8 frame, as the batch path and
        the reference read it, gives exactly 0."""
        spec = self.spec
        own = (spec.crop_mean, spec.crop_std, NORMALIZE_EPS)
        if mean is None or std is None:
            return frame_f32, own
        if self._crop_stats_normalized is None:
            return grey, own
        return frame_f32, self._crop_stats_normalized

    def run(self, grey: np.ndarray) -> Result:
        return self.run_batch([grey])[0]

    def run_device(self, frame: Any) -> Result:
        """Frames on a GPU are for the TensorRT backend; the host cascade refuses them."""
        raise ValueError(
            "frame is a GPU array but this Segmenter runs on ONNX Runtime (CPU): copy it to "
            "the host first (e.g. tensor.cpu().numpy())"
        )

    def close(self) -> None:
        """Nothing to release by hand: the ONNX Runtime sessions (or torch models) are freed with
        their runners when the owner drops this cascade. Idempotent."""

    def run_crop(self, grey: np.ndarray, box: Sequence[float]) -> tuple[Result, np.ndarray]:
        """Segment ``grey`` inside ``box`` (frame pixels, used as the detector's box would be: the
        spec's crop margin applied, clamped) without the detector: the result (mask pasted into
        the crop box, ``present`` True, ``score`` NaN: no detector ran) and the crop's probability
        map, float32 (h, w). Timings have no ``preprocess``/``detector`` entries."""
        spec = self.spec
        h, w = grey.shape
        box = crop_box("detector", (h, w), spec.crop_margin, detected=clamp_box(box, w, h))
        _, crops = self._buffers.batches(1, spec)
        t0 = time.perf_counter()
        crop_into(grey, box, crops[0, 0], spec.crop_mean, spec.crop_std)
        t1 = time.perf_counter()
        probs = self._segmenter(crops)
        t2 = time.perf_counter()
        mask = paste_mask(probs[0, 0], box, w, h, spec.mask_threshold, True)
        t3 = time.perf_counter()
        timings = {"crop": (t1 - t0) * 1e3, "segmenter": (t2 - t1) * 1e3,
                   "paste": (t3 - t2) * 1e3, "total": (t3 - t0) * 1e3}
        return Result(mask, box, float("nan"), True, timings), probs[0, 0]

    def stream(self, greys: Iterable[np.ndarray], depth: int,
               track: TrackOptions | None = None) -> Iterator[Result]:
        """Results in input order with up to ``depth`` frames in flight on worker threads; with
        ``track``, frames run one after another on the caller's thread, each tracked frame
        cropped where the previous mask was (see :mod:`bpedge._tracking`; then ``greys`` may
        be :class:`~bpedge._tracking.SequenceFrame` items, so no track crosses sequences)."""
        if depth < 1:
            raise ValueError(f"stream depth must be >= 1, got {depth}")
        if track is not None:
            frames = cast("Iterable[np.ndarray | SequenceFrame]", greys)
            yield from Tracker(self, track).run(frames)
            return
        pending: list[Future[Result]] = []
        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="bpedge-stream") as pool:
            for grey in greys:
                pending.append(pool.submit(self.run, grey))
                if len(pending) >= depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
