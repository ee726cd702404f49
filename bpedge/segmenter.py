"""The device-software entry point: ``Segmenter`` runs the detect -> crop -> segment cascade of a
bundle on ONNX Runtime (CPU, the embedded default), OpenVINO (CPU) or TensorRT (NVIDIA GPU).

A ``Segmenter`` is used from one thread at a time; :meth:`Segmenter.stream` is how to get frames
overlapping (several in flight, results in order).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, cast

import numpy as np

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._frames import as_grey_frame
from bpedge._result import Result
from bpedge._tracking import TrackOptions
from bpedge.bundle import Bundle

Backend = Literal["auto", "onnxruntime", "openvino", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]

_BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: Precisions each CPU backend runs (TensorRT: fp32 and fp16 engines).
_CPU_PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "bf16", "int8")}
_log = logging.getLogger("bpedge")


class _Cascade(Protocol):
    def run(self, grey: np.ndarray) -> Result: ...
    def run_batch(self, greys: Sequence[np.ndarray]) -> list[Result]: ...
    def stream(self, greys: Iterable[np.ndarray], depth: int) -> Iterator[Result]: ...


class _TrackingCascade(_Cascade, Protocol):
    def stream(self, greys: Iterable[np.ndarray], depth: int,
               track: TrackOptions | None = None) -> Iterator[Result]: ...


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
                there, else OpenVINO when it is installed (``bpedge[openvino]``) and runs the
                precision, else ONNX Runtime, and logs which it took; ``"tensorrt"`` and
                ``"openvino"`` raise ``RuntimeError`` saying why they cannot run;
                ``"onnxruntime"`` always runs.
            precision: ``"fp32"``, ``"fp16"`` (ONNX Runtime, TensorRT), ``"bf16"`` (OpenVINO, on
                CPUs with native BF16) or ``"int8"`` (CPU backends; the bundle's gated INT8 QDQ
                ONNX from ``bpedge export --int8``; a model whose INT8 failed the export's gate
                runs FP32). Default: fp16 on TensorRT; on OpenVINO bf16
                where the CPU has it, else fp32; fp32 on ONNX Runtime (FP16 arithmetic on most
                CPUs is emulated and slower).
            threads: CPU intra-op threads of ONNX Runtime or OpenVINO (default: the runtime's
                choice).
            max_batch: largest :meth:`segment_batch` size the TensorRT engines must accept.
            device: CUDA device ordinal for TensorRT.
        """
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if precision not in (None, *_PRECISIONS):
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        bundle = path if isinstance(path, Bundle) else Bundle.open(path)
        spec = CascadeSpec.from_manifest(bundle.manifest)
        reason: str | None = None
        if backend in ("auto", "tensorrt"):
            from bpedge._gpu.cascade import TensorRTCascade, tensorrt_unavailable_reason

            trt_precision = precision or "fp16"
            reason = (tensorrt_unavailable_reason(bundle, trt_precision, max_batch, device)
                      if trt_precision in ("fp32", "fp16")
                      else f"TensorRT runs fp32 and fp16 engines, not {trt_precision}")
            if reason is None:
                cascade = TensorRTCascade(bundle, spec, trt_precision, max_batch, device)
                _log.info("bpedge: using TensorRT (%s) from %s", trt_precision, bundle.root)
                return cls(cascade, spec, "tensorrt", trt_precision, None, cascade)
            if backend == "tensorrt":
                raise RuntimeError(f"backend='tensorrt' cannot run: {reason}")
        if backend in ("auto", "openvino"):
            from bpedge._openvino import default_precision, openvino_unavailable_reason

            ov_reason = openvino_unavailable_reason()
            ov_precision = precision or (default_precision() if ov_reason is None else "fp32")
            if ov_reason is None and ov_precision not in _CPU_PRECISIONS["openvino"]:
                ov_reason = f"OpenVINO runs {_CPU_PRECISIONS['openvino']}, not {ov_precision}"
            if ov_reason is None:
                cascade = _host_cascade(bundle, spec, "openvino", ov_precision, threads)
                _log.info("bpedge: using OpenVINO (%s) from %s%s", ov_precision, bundle.root,
                          f"; TensorRT not used: {reason}" if reason else "")
                return cls(cascade, spec, "openvino", ov_precision, reason)
            if backend == "openvino":
                raise RuntimeError(f"backend='openvino' cannot run: {ov_reason}")
            reason = f"{reason}; OpenVINO not used: {ov_reason}" if reason else ov_reason
        ort_precision = precision or "fp32"
        if ort_precision not in _CPU_PRECISIONS["onnxruntime"]:
            raise ValueError(f"ONNX Runtime runs {_CPU_PRECISIONS['onnxruntime']}, not "
                             f"{ort_precision!r} (bf16 is an OpenVINO precision: pip install "
                             "'bpedge[openvino]')")
        cascade = _host_cascade(bundle, spec, "onnxruntime", ort_precision, threads)
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

    def stream(self, frames: Iterable[Any], depth: int = 3,
               track: bool | TrackOptions = False) -> Iterator[Result]:
        """Segment frames from an iterator with up to ``depth`` in flight; results in order.
        A bad frame raises ``ValueError`` when it is reached.

        ``track`` (CPU backends; frames of one video, in order): while the segmentation stays
        confident and inside its crop, the next frame is cropped where the last mask was and
        the detector is skipped; it runs every ``detect_every`` frames and whenever confidence
        drops (``True``: default :class:`~bpedge._tracking.TrackOptions`). Tracked frames run one
        after another (each needs the previous mask), so ``depth`` does not apply."""
        cascade = self._live()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an int >= 1, got {depth!r}")
        greys = (as_grey_frame(f) for f in frames)
        if track is False:
            return cascade.stream(greys, depth)
        options = TrackOptions() if track is True else track
        if not isinstance(options, TrackOptions):
            raise TypeError(f"track must be True, False or a TrackOptions, got {track!r}")
        if self.backend == "tensorrt":
            raise ValueError("tracking runs on the CPU backends (onnxruntime, openvino); on "
                             "TensorRT use stream(frames) without track")
        return cast("_TrackingCascade", cascade).stream(greys, depth, options)

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


def _host_cascade(bundle: Bundle, spec: CascadeSpec, runtime: str, precision: str,
                  threads: int | None) -> HostCascade:
    """The host cascade over the bundle's ONNX files run by ``runtime`` ("onnxruntime" or
    "openvino") at ``precision``."""
    def model(name: str, outputs: list[str]) -> Any:
        onnx_precision = "fp32" if precision == "bf16" else precision
        if onnx_precision == "int8" and bundle.manifest.models[name].onnx.int8 is None:
            # The export's INT8 gate did not ship this model: it stays FP32 (the manifest's
            # parity.int8 says why), the other model still runs INT8.
            if all(bundle.manifest.models[m].onnx.int8 is None for m in ("detector", "segmenter")):
                bundle.onnx_ref(name, "int8")  # raises: no INT8 model at all, with the fix
            _log.info("bpedge: the %s has no INT8 ONNX (it failed the export's INT8 gate or was "
                      "not quantised); it runs FP32", name)
            onnx_precision = "fp32"
        ref = bundle.onnx_ref(name, onnx_precision)
        label = str(Path(bundle.root) / ref.file)
        if runtime == "openvino":
            from bpedge._openvino import OvModel

            return OvModel(bundle.read_verified(ref.file), label, outputs, precision, threads)
        from bpedge._onnxruntime import OrtModel

        return OrtModel(bundle.read_verified(ref.file), label, outputs, threads)

    detector = model("detector", ["score", "box"])
    segmenter = model("segmenter", ["prob"])

    def run_detector(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, box = detector(batch)
        return score.reshape(-1), box.reshape(-1, 4)

    def run_segmenter(batch: np.ndarray) -> np.ndarray:
        return segmenter(batch)[0]  # type: ignore[no-any-return]

    return HostCascade(run_detector, run_segmenter, spec)


__all__ = ["Backend", "Precision", "Result", "Segmenter", "TrackOptions"]
