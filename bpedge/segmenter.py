"""The device-software entry point: ``Segmenter`` runs the detect -> crop -> segment cascade of a
bundle on ONNX Runtime (CPU, the embedded default), OpenVINO (CPU) or TensorRT (NVIDIA GPU).

A ``Segmenter`` is used from one thread at a time; :meth:`Segmenter.stream` is how to get frames
overlapping (several in flight, results in order).

Every result belongs to the frame it was given: :meth:`Segmenter.stream` takes its own copy of a
frame when it is handed over (the caller may refill the same buffer at once, as capture loops do),
before any backend sees it, so the TensorRT pinned staging slots are filled from that copy too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._frames import as_grey_frame, host_array
from bpedge._result import Result, with_valid_score
from bpedge._tracking import SequenceFrame, TrackOptions
from bpedge.bundle import OPEN_ATTEMPTS, Bundle, BundleError
from bpedge.sources import SourceFrame, sequence_of

if TYPE_CHECKING:
    from typing_extensions import Self  # typing.Self is 3.11+; this stays a type-only import

Backend = Literal["auto", "onnxruntime", "openvino", "tensorrt"]
Precision = Literal["fp32", "fp16", "bf16", "int8"]

_BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
_PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: Precisions each CPU backend runs (TensorRT: fp32 and fp16 engines).
_CPU_PRECISIONS = {"onnxruntime": ("fp32", "fp16", "int8"), "openvino": ("fp32", "bf16", "int8")}
#: Upper bounds of the run-time knobs: far above what helps on any machine we target (an Orin has
#: 12 cores; 3 frames in flight already hide the upload), low enough that a typo such as
#: ``depth=30000`` fails at once instead of running for minutes and gigabytes.
MAX_THREADS = 256
MAX_DEPTH = 64
MAX_BATCH = 1024
_log = logging.getLogger("bpedge")


class _Cascade(Protocol):
    """What a backend's cascade offers the Segmenter (the host cascade, the TensorRT cascade)."""

    def run(self, grey: np.ndarray) -> Result: ...
    def run_batch(self, greys: Sequence[np.ndarray]) -> list[Result]: ...
    def run_device(self, frame: Any) -> Result: ...
    def stream(self, greys: Iterable[np.ndarray], depth: int) -> Iterator[Result]: ...
    def close(self) -> None: ...


class _TrackingCascade(_Cascade, Protocol):
    def stream(self, greys: Iterable[np.ndarray], depth: int,
               track: TrackOptions | None = None) -> Iterator[Result]: ...


class Segmenter:
    """Find and outline the brachial plexus in ultrasound frames.

    Example::

        with Segmenter.from_bundle("bundle/") as seg:
            r = seg(frame)                 # frame: (H, W) uint8, or (H, W, 1) / (H, W, 3) BGR
            r.mask, r.box, r.score, r.present, r.timings

    ``backend`` is what actually runs (``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``),
    ``precision`` the model precision (``"fp32"``/``"fp16"``/``"bf16"``/``"int8"``), and
    ``fallback_reason`` why ``"auto"`` did not take TensorRT (``None`` when it did, or when a
    backend was asked for by name).
    """

    def __init__(self, cascade: _Cascade, spec: CascadeSpec, backend: str, precision: str,
                 fallback_reason: str | None = None):
        # Use from_bundle(); this constructor wires already-built parts together. The Segmenter
        # owns ``cascade`` and closes it.
        self._cascade: _Cascade | None = cascade
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
        A bundle that ``bpedge export --force`` replaces meanwhile is read again from the start
        (the new one), up to ``bpedge.bundle.OPEN_ATTEMPTS`` times.

        Args:
            path: bundle directory (or an opened :class:`Bundle`).
            backend: ``"auto"`` takes TensorRT when TensorRT, a GPU and a matching engine are
                there, else OpenVINO when it is installed (``bpedge[openvino]``) and runs the
                precision, else ONNX Runtime, and logs which it took; ``"tensorrt"`` and
                ``"openvino"`` raise ``RuntimeError`` saying why they cannot run here, and any
                backend a ``ValueError`` for a precision it (or this CPU) does not run;
                ``"onnxruntime"`` always runs.
            precision: ``"fp32"``, ``"fp16"`` (ONNX Runtime, TensorRT), ``"bf16"`` (OpenVINO, on
                CPUs with native BF16) or ``"int8"`` (the bundle's gated INT8 QDQ ONNX from
                ``bpedge export --int8``: on the CPU backends a model whose INT8 failed the
                export's gate runs FP32; TensorRT needs INT8 engines of both models, built by
                ``bpedge build-engines -p int8`` from the symmetric QDQ files). Default: fp16
                on TensorRT; on OpenVINO bf16 where the CPU has it, else fp32; fp32 on ONNX
                Runtime (FP16 arithmetic on most CPUs is emulated and slower).
            threads: CPU intra-op threads of ONNX Runtime or OpenVINO, 1..``MAX_THREADS``
                (default: the runtime's choice).
            max_batch: largest :meth:`segment_batch` size the TensorRT engines must accept,
                1..``MAX_BATCH``.
            device: CUDA device ordinal for TensorRT.
        """
        _check_bounded("threads", threads, MAX_THREADS, none_ok=True)
        _check_bounded("max_batch", max_batch, MAX_BATCH)
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        if precision not in (None, *_PRECISIONS):
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
        if isinstance(path, Bundle):
            return cls._from_opened(path, backend, precision, threads, max_batch, device)
        attempt = 1
        while True:
            bundle = Bundle.open(path)
            try:
                return cls._from_opened(bundle, backend, precision, threads, max_batch, device)
            except BundleError:
                # The models are read (and hash-checked) again as they are loaded: a bundle that
                # `bpedge export --force` replaced since the open fails that check although both
                # bundles are whole. Start again on the new one.
                if attempt == OPEN_ATTEMPTS or not bundle.replaced_since_open():
                    raise
                attempt += 1

    @classmethod
    def _from_opened(cls, bundle: Bundle, backend: Backend, precision: Precision | None,
                     threads: int | None, max_batch: int, device: int) -> Segmenter:
        spec = CascadeSpec.from_manifest(bundle.manifest)
        reason: str | None = None
        if backend in ("auto", "tensorrt"):
            from bpedge._engine_key import PRECISIONS as TRT_PRECISIONS
            from bpedge._gpu.cascade import TensorRTCascade, tensorrt_unavailable_reason

            trt_precision = precision or "fp16"
            reason = (tensorrt_unavailable_reason(bundle, trt_precision, max_batch, device)
                      if trt_precision in TRT_PRECISIONS
                      else f"TensorRT runs {', '.join(TRT_PRECISIONS)} engines, not "
                           f"{trt_precision}")
            failure: Exception | None = None
            if reason is None:
                try:
                    gpu = TensorRTCascade(bundle, spec, trt_precision, max_batch, device)
                except Exception as exc:  # noqa: BLE001 - reported as the reason, or re-raised
                    # Everything can still fail once the GPU is really used (NVRTC, the kernel
                    # cache, a plan TensorRT refuses, GPU memory); the cascade released what it
                    # had set up. "auto" says why and runs on the CPU instead.
                    failure = exc
                    reason = f"building the TensorRT cascade failed: {type(exc).__name__}: {exc}"
                else:
                    _log.info("bpedge: using TensorRT (%s) from %s", trt_precision, bundle.root)
                    return cls(gpu, spec, "tensorrt", trt_precision, None)
            if backend == "tensorrt":
                raise RuntimeError(f"backend='tensorrt' cannot run: {reason}") from failure
            if failure is not None:
                _log.warning("bpedge: %s; falling back to a CPU backend", reason)
        from bpedge._onnxruntime import host_cascade

        if backend in ("auto", "openvino"):
            from bpedge._openvino import (
                cpu_capabilities,
                default_precision,
                openvino_unavailable_reason,
            )

            ov_reason = openvino_unavailable_reason()
            ov_precision = precision or (default_precision() if ov_reason is None else "fp32")
            # A precision OpenVINO or this CPU does not run is the caller's choice, not a fault
            # of the machine: a ValueError (exit 2 in the CLI), as ONNX Runtime's below.
            refused = None
            if ov_reason is None and ov_precision not in _CPU_PRECISIONS["openvino"]:
                refused = f"OpenVINO runs {_CPU_PRECISIONS['openvino']}, not {ov_precision!r}"
            elif ov_reason is None and ov_precision == "bf16" and "BF16" not in cpu_capabilities():
                refused = ("this CPU has no native BF16 (OpenVINO's CPU capabilities: "
                           f"{list(cpu_capabilities())}); use precision 'fp32' or 'int8'")
            if ov_reason is None and refused is None:
                host = host_cascade(bundle, spec, "openvino", ov_precision, threads)
                _log.info("bpedge: using OpenVINO (%s) from %s%s", ov_precision, bundle.root,
                          f"; TensorRT not used: {reason}" if reason else "")
                return cls(host, spec, "openvino", ov_precision, reason)
            if backend == "openvino":
                if refused is not None:
                    raise ValueError(f"backend='openvino' cannot run this precision: {refused}")
                raise RuntimeError(f"backend='openvino' cannot run: {ov_reason}")
            ov_reason = ov_reason or refused
            reason = f"{reason}; OpenVINO not used: {ov_reason}" if reason else ov_reason
        ort_precision = precision or "fp32"
        if ort_precision not in _CPU_PRECISIONS["onnxruntime"]:
            why = (f"; OpenVINO not used: {ov_reason}" if backend == "auto" and ov_reason
                   else " (bf16 is an OpenVINO precision: pip install 'bpedge[openvino]')")
            raise ValueError(f"ONNX Runtime runs {_CPU_PRECISIONS['onnxruntime']}, not "
                             f"{ort_precision!r}{why}")
        host = host_cascade(bundle, spec, "onnxruntime", ort_precision, threads)
        _log.info("bpedge: using ONNX Runtime (%s) from %s%s", ort_precision, bundle.root,
                  f"; TensorRT not used: {reason}" if reason else "")
        return cls(host, spec, "onnxruntime", ort_precision, reason)

    # --- running -------------------------------------------------------------------------------

    def __call__(self, frame: Any) -> Result:
        """Segment one frame. ``frame``: ``uint8`` (H, W), (H, W, 1) or (H, W, 3) BGR host array
        (other dtypes: see :func:`bpedge._frames.as_grey_frame` for the rule), a
        :class:`~bpedge.sources.SourceFrame` (its name, timestamp and mm spacing go into the
        Result), or on the TensorRT backend a device array exposing ``__cuda_array_interface__``
        (uint8 (H, W), no copy to the host)."""
        cascade = self._live()
        if hasattr(frame, "__cuda_array_interface__") and not isinstance(frame, np.ndarray):
            return with_valid_score(cascade.run_device(frame))
        grey, meta = _take(frame)
        return _attach(with_valid_score(cascade.run(grey)), grey, meta)

    def segment_batch(self, frames: Iterable[Any]) -> list[Result]:
        """Segment several host frames (sizes may differ) with one model call per stage (for every
        32 frames on the CPU backends, so memory stays bounded).
        ``frames``: a list (or tuple) of frames, or an (N, H, W) / (N, H, W, C) array, or any
        iterable of frames (each is copied as it is taken, so an iterator may refill one capture
        buffer for every frame, as with :meth:`stream`); a single (H, W) or (H, W, C) array with
        C <= 4 is refused (it is one frame: call ``seg(frame)``)."""
        cascade = self._live()
        _refuse_one_frame("segment_batch", frames)
        taken = [_take(f) for f in frames]
        results = cascade.run_batch([grey for grey, _ in taken])
        return [_attach(with_valid_score(r), grey, meta) for r, (grey, meta) in zip(results, taken)]

    def stream(self, frames: Iterable[Any], depth: int = 3,
               track: bool | TrackOptions = False) -> Iterator[Result]:
        """Segment frames from an iterator with up to ``depth`` (1..``MAX_DEPTH``) in flight;
        results in order, each computed on the frame as it was when the iterator handed it over
        (the stream copies it then, so the caller may reuse one buffer for every frame).

        A bad frame, or an exception from ``frames`` itself, ends the stream: the results of the
        frames before it come out first, then that exception is raised. :meth:`close` during a
        stream stops it: the next step raises ``RuntimeError``. ``frames`` may be arrays or
        :class:`~bpedge.sources.SourceFrame` objects (what :func:`bpedge.sources.open_frames`
        yields); their name, timestamp and mm spacing go into the results.

        ``track`` (CPU backends; frames of one sequence, in order; a SourceFrame carries its
        sequence, :func:`bpedge.sources.sequence_of`, and a new one starts with the detector;
        plain arrays are one sequence): while the segmentation stays
        confident, inside its crop and where the last mask was (IoU at least
        ``TrackOptions.min_overlap``), the next frame is cropped where the last mask was and
        the detector is skipped; it runs every ``detect_every`` frames (on a new track sooner:
        after ``first_check`` frames, the interval doubling while it agrees) and whenever
        confidence drops, and a frame it finds no BP in is not segmented (``True``: default
        :class:`~bpedge._tracking.TrackOptions`). Tracked frames run one
        after another (each needs the previous mask), so ``depth`` does not apply."""
        cascade = self._live()
        _refuse_one_frame("stream", frames)
        _check_bounded("depth", depth, MAX_DEPTH)
        try:
            # Here, not at the first step: a generator would only report it when iterated.
            source = iter(frames)
        except TypeError:
            raise TypeError(f"stream takes an iterable of frames, got "
                            f"{type(frames).__name__}") from None
        options: TrackOptions | None = None
        if track is not False:
            options = TrackOptions() if track is True else track
            if not isinstance(options, TrackOptions):
                raise TypeError(f"track must be True, False or a TrackOptions, got {track!r}")
            if self.backend == "tensorrt":
                raise ValueError("tracking runs on the CPU backends (onnxruntime, openvino); on "
                                 "TensorRT use stream(frames) without track")
        return self._stream(cascade, source, depth, options)

    def _stream(self, cascade: _Cascade, frames: Iterable[Any], depth: int,
                track: TrackOptions | None = None) -> Iterator[Result]:
        failure: list[Exception] = []
        # Each frame's own grey copy and metadata wait here until its result comes back (in order).
        held: deque[tuple[np.ndarray, SourceFrame | None]] = deque()

        def owned_frames() -> Iterator[Any]:
            # The one place every backend's stream gets its frames from. A failure here ends the
            # input cleanly, so the backend delivers what it has in flight; it is raised after.
            try:
                for frame in frames:
                    if self._cascade is None:
                        # Raised after the backend drains, even when nothing was in flight
                        # (returning alone would end the stream as if the frames had run out).
                        failure.append(RuntimeError(_CLOSED_DURING_STREAM))
                        return
                    grey, meta = _take(frame)
                    held.append((grey, meta))
                    if track is not None and meta is not None:
                        # A SourceFrame says which video, subject or folder it is from: a
                        # track ends where its sequence does.
                        yield SequenceFrame(grey, sequence_of(meta))
                    else:
                        yield grey
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the drained results
                failure.append(exc)

        results = (cascade.stream(owned_frames(), depth) if track is None
                   else cast("_TrackingCascade", cascade).stream(owned_frames(), depth, track))
        try:
            for result in results:
                if self._cascade is None:
                    raise RuntimeError(_CLOSED_DURING_STREAM)
                grey, meta = held.popleft()
                yield _attach(with_valid_score(result), grey, meta)
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()  # shuts the backend's workers down even when the caller stops early
        if failure:
            raise failure[0]

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the engines, sessions and GPU buffers. Idempotent."""
        cascade, self._cascade = self._cascade, None
        if cascade is not None:
            cascade.close()

    @property
    def closed(self) -> bool:
        return self._cascade is None

    def __enter__(self) -> Self:
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


def _check_bounded(name: str, value: object, maximum: int, *, none_ok: bool = False) -> None:
    if value is None and none_ok:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or not 1 <= int(value) <= maximum:
        raise ValueError(f"{name} must be an int in [1, {maximum}], got {value!r}")


_CLOSED_DURING_STREAM = ("this Segmenter was closed during stream(); its remaining frames were "
                         "not segmented")


def _refuse_one_frame(method: str, frames: Any) -> None:
    # A single (H, W) or (H, W, C) array would iterate as its rows, each taken for a frame. An
    # (H, W, 2) or BGRA (H, W, 4) frame counts too: as a stack it would be H frames 2 or 4 pixels
    # wide, which no probe makes, and seg(frame) names its channels as the problem.
    if isinstance(frames, np.ndarray) and (
        frames.ndim == 2 or (frames.ndim == 3 and frames.shape[2] <= 4)
    ):
        raise ValueError(f"{method} takes a sequence of frames, got one array of shape "
                         f"{frames.shape} (one frame): call seg(frame), or pass [frame]")


def _owned_grey(frame: Any) -> np.ndarray:
    """``as_grey_frame(frame)`` in memory nobody else holds: a converted frame is a new array
    already; one that shares memory with what the caller handed over (a uint8 frame used as it
    is, a view, the buffer behind a tensor or an ``__array__`` object) is copied (one 420x580
    frame: 240 KB)."""
    array = host_array(frame)
    return _own(as_grey_frame(array), array)


def _take(frame: Any) -> tuple[np.ndarray, SourceFrame | None]:
    """A frame handed to the Segmenter as its grey frame in memory of our own (taken before
    anything runs: the caller's buffer may be refilled at once, by the iterator that handed it
    over or by a capture thread) and its SourceFrame metadata."""
    image, meta = _split(frame)
    return _owned_grey(image), meta


def _split(frame: Any) -> tuple[Any, SourceFrame | None]:
    """A SourceFrame's image and the frame itself as metadata; anything else as it is."""
    return (frame.image, frame) if isinstance(frame, SourceFrame) else (frame, None)


def _own(grey: np.ndarray, given: np.ndarray) -> np.ndarray:
    """The grey frame a Result keeps: a copy when it may share memory with ``given``, the array
    the caller's frame was read as (:func:`~bpedge._frames.host_array`: a capture loop may
    refill that buffer, whatever object exposes it), so a result always shows the frame it was
    computed on."""
    return grey.copy() if np.may_share_memory(grey, given) else grey


def _attach(result: Result, grey: np.ndarray, meta: SourceFrame | None) -> Result:
    if meta is None:
        return dataclasses.replace(result, frame=grey)
    return dataclasses.replace(result, frame=grey, name=meta.name, timestamp=meta.timestamp,
                               spacing_mm=meta.spacing_mm)


__all__ = ["Backend", "Precision", "Result", "Segmenter", "TrackOptions"]
