"""The two-stage cascade on the host: detector -> clamp box -> crop -> segmenter -> paste-back.

Every stage calls the reference maths in :mod:`bpedge._stages`; only the two model calls differ
between backends (ONNX Runtime here, PyTorch eager for the benchmark baseline), so they are
injected as :class:`ModelRunner` callables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._result import Result
from bpedge._stages import clamp_box, crop_resize_normalize, paste_back, scale_box

#: Detector: float32 (N, 1, H, W) -> (scores (N,), boxes (N, 4) in detector-input pixels).
DetectorRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: Segmenter: float32 (N, 1, h, w) -> probabilities (N, 1, h, w).
SegmenterRunner = Callable[[np.ndarray], np.ndarray]


def detector_input(grey: np.ndarray, spec: CascadeSpec) -> np.ndarray:
    """The whole frame resized to the detector input and normalised: float32 (1, H, W)."""
    h, w = grey.shape
    in_h, in_w = spec.detector_input_hw
    x = crop_resize_normalize(grey, (0, 0, w, h), in_w, in_h, spec.detector_mean, spec.detector_std)
    return x[None]


def frame_box(raw_box: np.ndarray, frame_hw: tuple[int, int], spec: CascadeSpec) -> tuple[float, ...]:
    """Detector-input box -> frame pixels, clamped to the frame (crops never overshoot it).
    A non-finite box (a diverged model) becomes the whole frame; the caller marks it absent."""
    h, w = frame_hw
    if not np.isfinite(raw_box).all():
        return (0.0, 0.0, float(w), float(h))
    in_h, in_w = spec.detector_input_hw
    return clamp_box(scale_box(raw_box, w / in_w, h / in_h), w, h)


def segmenter_input(grey: np.ndarray, box: Sequence[float], spec: CascadeSpec) -> np.ndarray:
    """The box region resized to the crop size and normalised: float32 (1, h, w)."""
    ch, cw = spec.crop_hw
    return crop_resize_normalize(grey, box, cw, ch, spec.crop_mean, spec.crop_std)[None]


class HostCascade:
    """Runs the cascade on host arrays with injected model runners; one thread at a time per call,
    except :meth:`stream`, which overlaps frames on a small thread pool."""

    def __init__(self, detector: DetectorRunner, segmenter: SegmenterRunner, spec: CascadeSpec):
        self._detector = detector
        self._segmenter = segmenter
        self.spec = spec

    def run_batch(self, greys: Sequence[np.ndarray]) -> list[Result]:
        """Segment validated uint8 (H, W) frames (sizes may differ); one model call per stage."""
        if not greys:
            return []
        t = [time.perf_counter()]
        det_in = np.stack([detector_input(g, self.spec) for g in greys])
        t.append(time.perf_counter())
        scores, raw_boxes = self._detector(det_in)
        t.append(time.perf_counter())
        boxes = [frame_box(raw_boxes[i], g.shape, self.spec) for i, g in enumerate(greys)]
        crops = np.stack([segmenter_input(g, b, self.spec) for g, b in zip(greys, boxes)])
        t.append(time.perf_counter())
        probs = self._segmenter(crops)
        t.append(time.perf_counter())
        results = []
        for i, g in enumerate(greys):
            score = float(scores[i])
            present = bool(score >= self.spec.score_threshold) and bool(np.isfinite(raw_boxes[i]).all())
            mask = paste_back(probs[i, 0], boxes[i], g.shape[1], g.shape[0],
                              self.spec.mask_threshold, present)
            results.append((mask, boxes[i], score, present))
        t.append(time.perf_counter())
        n = len(greys)
        stages = ("preprocess", "detector", "crop", "segmenter", "paste")
        # Per-frame share of each batched stage, so batch and single-frame timings compare.
        timings = {s: (t[k + 1] - t[k]) * 1e3 / n for k, s in enumerate(stages)}
        timings["total"] = (t[-1] - t[0]) * 1e3 / n
        return [Result(m, tuple(b), s, p, dict(timings)) for m, b, s, p in results]  # type: ignore[arg-type]

    def run(self, grey: np.ndarray) -> Result:
        return self.run_batch([grey])[0]

    def stream(self, greys: Iterable[np.ndarray], depth: int) -> Iterator[Result]:
        """Results in input order with up to ``depth`` frames in flight on worker threads."""
        if depth < 1:
            raise ValueError(f"stream depth must be >= 1, got {depth}")
        pending: list[Future[Result]] = []
        with ThreadPoolExecutor(max_workers=depth, thread_name_prefix="bpedge-stream") as pool:
            for grey in greys:
                pending.append(pool.submit(self.run, grey))
                if len(pending) >= depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
