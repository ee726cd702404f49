"""The two-stage cascade on the host: detector -> clamp box -> crop -> segmenter -> paste-back.

Every stage calls the stage combinations of :mod:`bpedge._preprocessing` and the reference maths
of :mod:`bpedge._stages`; only the two model calls differ
between backends (ONNX Runtime here, PyTorch eager for the benchmark baseline), so they are
injected as :class:`ModelRunner` callables.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._preprocessing import box_found, crop_box, detector_input, frame_box, segmenter_input
from bpedge._result import Result
from bpedge._stages import paste_back

__all__ = ["DetectorRunner", "HostCascade", "SegmenterRunner", "detector_input", "frame_box",
           "segmenter_input"]

#: Detector: float32 (N, 1, H, W) -> (scores (N,), boxes (N, 4) in detector-input pixels).
DetectorRunner = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
#: Segmenter: float32 (N, 1, h, w) -> probabilities (N, 1, h, w).
SegmenterRunner = Callable[[np.ndarray], np.ndarray]


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
        # The crop box (the detector's, expanded by the margin) is what the mask is pasted into
        # and what the result reports, as on the GPU.
        boxes = [crop_box("detector", g.shape, self.spec.crop_margin,
                          detected=frame_box(raw_boxes[i], g.shape, self.spec))
                 for i, g in enumerate(greys)]
        crops = np.stack([segmenter_input(g, b, self.spec) for g, b in zip(greys, boxes)])
        t.append(time.perf_counter())
        probs = self._segmenter(crops)
        t.append(time.perf_counter())
        results = []
        for i, g in enumerate(greys):
            score = float(scores[i])
            present = bool(score >= self.spec.score_threshold) and box_found(raw_boxes[i])
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

    def run_device(self, frame: Any) -> Result:
        """Frames on a GPU are for the TensorRT backend; the host cascade refuses them."""
        raise ValueError(
            "frame is a GPU array but this Segmenter runs on ONNX Runtime (CPU): copy it to "
            "the host first (e.g. tensor.cpu().numpy())"
        )

    def close(self) -> None:
        """Nothing to release by hand: the ONNX Runtime sessions (or torch models) are freed with
        their runners when the owner drops this cascade. Idempotent."""

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
