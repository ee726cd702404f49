"""The device-software entry point: ``Segmenter`` runs the detect -> crop -> segment cascade of a
bundle on ONNX Runtime (CPU, the embedded default) or TensorRT (NVIDIA GPU).

A ``Segmenter`` is used from one thread at a time; :meth:`Segmenter.stream` is how to get frames
overlapping (several in flight, results in order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._frames import as_grey_frame
from bpedge._result import Result
from bpedge.bundle import Bundle

Backend = Literal["auto", "onnxruntime", "tensorrt"]
Precision = Literal["fp32", "fp16"]

_BACKENDS = ("auto", "onnxruntime", "tensorrt")
_log = logging.getLogger("bpedge")


class _Cascade(Protocol):
    def run(self, grey: np.ndarray) -> Result: ...
    def run_batch(self, greys: Sequence[np.ndarray]) -> list[Result]: ...
    def stream(self, greys: Iterable[np.ndarray], depth: int) -> Iterator[Result]: ...


class Segmenter:
    """Find and outline the brachial plexus in ultrasound frames.

    Example::

        with Segmenter.from_bundle("bundle/") as seg:
            r = seg(frame)                 # frame: (H, W) uint8, or (H, W, 1) / (H, W, 3) BGR
            r.mask, r.box, r.score, r.present, r.timings

    ``backend`` is what actually runs (``"onnxruntime"`` or ``"tensorrt"``), ``precision`` the
    model precision (``"fp32"``/``"fp16"``), and ``fallback_reason`` why ``"auto"`` did not take
    TensorRT (``None`` when it did, or when a backend was asked for by name).
    """

    def __init__(self, cascade: _Cascade, spec: CascadeSpec, backend: str, precision: str,
                 fallback_reason: str | None = None, closer: Any = None):
        # Use from_bundle(); this constructor wires already-built parts together.
        self._cascade: _Cascade | None = cascade
        self._closer = closer
        self.spec = spec
        self.backend = backend
        self.precision = precision
        self.fallback_reason = fallback_reason

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str] | Bundle,
        backend: Backend = "auto",
        *,
        precision: Precision | None = None,
        threads: int | None = None,
        max_batch: int = 1,
        device: int = 0,
    ) -> Segmenter:
        """Open a bundle (every file's sha256 is checked before it is loaded) and build a cascade.

        Args:
            path: bundle directory (or an opened :class:`Bundle`).
            backend: ``"auto"`` takes TensorRT when TensorRT, a GPU and a matching engine are
                there, else ONNX Runtime, and logs which it took; ``"tensorrt"`` raises
                ``RuntimeError`` saying why it cannot run; ``"onnxruntime"`` always runs.
            precision: ``"fp32"`` or ``"fp16"``; default fp16 on TensorRT, fp32 on ONNX Runtime
                (FP16 arithmetic on most CPUs is emulated and slower).
            threads: ONNX Runtime intra-op threads (default: ONNX Runtime's choice).
            max_batch: largest :meth:`segment_batch` size the TensorRT engines must accept.
            device: CUDA device ordinal for TensorRT.
        """
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if precision not in (None, "fp32", "fp16"):
            raise ValueError(f"precision must be 'fp32' or 'fp16', got {precision!r}")
        bundle = path if isinstance(path, Bundle) else Bundle.open(path)
        spec = CascadeSpec.from_manifest(bundle.manifest)
        reason: str | None = None
        if backend in ("auto", "tensorrt"):
            from bpedge._gpu.cascade import TensorRTCascade, tensorrt_unavailable_reason

            trt_precision = precision or "fp16"
            reason = tensorrt_unavailable_reason(bundle, trt_precision, max_batch, device)
            failure: Exception | None = None
            if reason is None:
                try:
                    cascade = TensorRTCascade(bundle, spec, trt_precision, max_batch, device)
                except Exception as exc:  # noqa: BLE001 - reported as the reason, or re-raised
                    # Everything can still fail once the GPU is really used (NVRTC, the kernel
                    # cache, a plan TensorRT refuses, GPU memory); the cascade released what it
                    # had set up. "auto" says why and runs on the CPU instead.
                    failure = exc
                    reason = f"building the TensorRT cascade failed: {type(exc).__name__}: {exc}"
                else:
                    _log.info("bpedge: using TensorRT (%s) from %s", trt_precision, bundle.root)
                    return cls(cascade, spec, "tensorrt", trt_precision, None, cascade)
            if backend == "tensorrt":
                raise RuntimeError(f"backend='tensorrt' cannot run: {reason}") from failure
            if failure is not None:
                _log.warning("bpedge: %s; falling back to ONNX Runtime", reason)
        ort_precision = precision or "fp32"
        cascade = _onnxruntime_cascade(bundle, spec, ort_precision, threads)
        _log.info("bpedge: using ONNX Runtime (%s) from %s%s", ort_precision, bundle.root,
                  f"; TensorRT not used: {reason}" if reason else "")
        return cls(cascade, spec, "onnxruntime", ort_precision, reason)

    # --- running -------------------------------------------------------------------------------

    def __call__(self, frame: Any) -> Result:
        """Segment one frame. ``frame``: ``uint8`` (H, W), (H, W, 1) or (H, W, 3) BGR host array
        (float in [0, 255] also accepted), or on the TensorRT backend a device array exposing
        ``__cuda_array_interface__`` (uint8 (H, W), no copy to the host)."""
        cascade = self._live()
        if hasattr(frame, "__cuda_array_interface__") and not isinstance(frame, np.ndarray):
            if self.backend != "tensorrt":
                raise ValueError(
                    "frame is a GPU array but this Segmenter runs on ONNX Runtime (CPU): copy it to "
                    "the host first (e.g. tensor.cpu().numpy())"
                )
            return cascade.run_device(frame)  # type: ignore[attr-defined,no-any-return]
        return cascade.run(as_grey_frame(frame))

    def segment_batch(self, frames: Sequence[Any]) -> list[Result]:
        """Segment several host frames (sizes may differ) with one model call per stage."""
        cascade = self._live()
        if isinstance(frames, np.ndarray) and frames.ndim == 2:
            raise ValueError("segment_batch takes a sequence of frames; for one frame call seg(frame)")
        greys = [as_grey_frame(f) for f in frames]
        return cascade.run_batch(greys)

    def stream(self, frames: Iterable[Any], depth: int = 3) -> Iterator[Result]:
        """Segment frames from an iterator with up to ``depth`` in flight; results in order.
        A bad frame raises ``ValueError`` when it is reached."""
        cascade = self._live()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        return cascade.stream((as_grey_frame(f) for f in frames), depth)

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the engines, sessions and GPU buffers. Idempotent."""
        closer, self._closer, self._cascade = self._closer, None, None
        if closer is not None:
            closer.close()

    @property
    def closed(self) -> bool:
        return self._cascade is None

    def __enter__(self) -> Segmenter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _live(self) -> _Cascade:
        if self._cascade is None:
            raise RuntimeError("this Segmenter is closed: create a new one with Segmenter.from_bundle")
        return self._cascade

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Segmenter(backend={self.backend!r}, precision={self.precision!r}, {state})"


def _onnxruntime_cascade(bundle: Bundle, spec: CascadeSpec, precision: str,
                         threads: int | None) -> HostCascade:
    from bpedge._onnxruntime import OrtModel

    def model(name: str, outputs: list[str]) -> OrtModel:
        ref = bundle.onnx_ref(name, precision)
        return OrtModel(bundle.read_verified(ref.file), str(Path(bundle.root) / ref.file),
                        outputs, threads)

    detector = model("detector", ["score", "box"])
    segmenter = model("segmenter", ["prob"])

    def run_detector(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, box = detector(batch)
        return score.reshape(-1), box.reshape(-1, 4)

    def run_segmenter(batch: np.ndarray) -> np.ndarray:
        return segmenter(batch)[0]

    return HostCascade(run_detector, run_segmenter, spec)


__all__ = ["Backend", "Precision", "Result", "Segmenter"]
