"""The GPU cascade: TensorRT engines and the fused kernels, per frame one chain on one CUDA stream
with no host synchronisation between its stages, replayed as a CUDA graph once warm.

:func:`tensorrt_unavailable_reason` says (without raising) why the GPU cascade cannot run here;
:class:`TensorRTCascade` runs it. Frames are handled in slots (:mod:`._slot`): each has its own
stream, pinned and device buffers, events, execution contexts and graphs, so that ``stream`` keeps
``depth`` frames in flight and the upload of one overlaps the compute of another. A cascade is used
from one thread at a time, any thread: every submit binds the cascade's device.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bpedge._cascade_spec import CascadeSpec
from bpedge._engine_key import PRECISIONS, TargetUnavailable, current_key
from bpedge._frames import MAX_SIDE
from bpedge._gpu._chain import (
    DETECTOR,
    SEGMENTER,
    DeviceSource,
    SlotLayout,
    TensorTypes,
    expected_tensors,
)
from bpedge._gpu._cuda import bind_device, compute_capability, use_device
from bpedge._gpu._engine import TensorRTError, TrtEngine, TrtRuntime, check_io
from bpedge._gpu._kernels import CascadeKernels, choose_image, kernel_images
from bpedge._gpu._slot import FrameSlot, in_order
from bpedge._result import Result
from bpedge.bundle import Bundle

if TYPE_CHECKING:
    from typing_extensions import Self

#: Frame size the slot buffers are first sized for (the Kaggle frames); larger frames grow them.
INITIAL_FRAME_HW = (420, 580)
#: ``cudaStreamLegacy`` (``CU_STREAM_LEGACY``), as the CUDA Array Interface numbers it.
_LEGACY_DEFAULT_STREAM = 1
#: CUDA graphs kept per slot (one per batch size, frame size and source).
GRAPHS_PER_SLOT = 4

__all__ = ["TensorRTCascade", "device_source", "tensorrt_unavailable_reason"]


def _check_request(precision: str, max_batch: int, device: int) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not isinstance(max_batch, int) or isinstance(max_batch, bool) or max_batch < 1:
        raise ValueError(f"max_batch must be an integer >= 1, got {max_batch!r}")
    if not isinstance(device, int) or isinstance(device, bool) or device < 0:
        raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")


def tensorrt_unavailable_reason(bundle: Bundle, precision: str, max_batch: int = 1,
                                device: int = 0) -> str | None:
    """None when TensorRT, cuda-python, a GPU, NVRTC and an engine of ``bundle`` for each model
    that fits this GPU, TensorRT version, ``precision`` and ``max_batch`` are all here; else one
    sentence naming what is missing and the fix. Raises only ``ValueError`` for bad arguments."""
    _check_request(precision, max_batch, device)
    try:
        key = current_key(precision, max_batch, device)  # TensorRT (real, not stubs) and the GPU
    except TargetUnavailable as exc:
        return str(exc)
    problems = [bundle.engine_mismatch_reason(model, key) for model in (DETECTOR, SEGMENTER)
                if bundle.find_engine(model, key) is None]
    from bpedge.kernels import NvrtcUnavailableError, cuda_include_dir, supported_archs

    try:
        cuda_include_dir()
        choose_image(int(key.compute_capability.replace(".", "")), supported_archs())
    except (NvrtcUnavailableError, ValueError) as exc:
        problems.append(f"the kernels cannot be compiled for this GPU: {exc}")
    return "; ".join(problems) or None


def device_source(frame: Any) -> tuple[DeviceSource, int | None]:
    """The device frame behind ``frame.__cuda_array_interface__`` and the producer's stream.

    Accepted: uint8 ``(H, W)`` or ``(H, W, 1)`` with unit pixel stride and any row pitch >= W
    (CUDA Array Interface v3, https://nvidia.github.io/numba-cuda/user/cuda_array_interface.html:
    ``strides`` None means C-contiguous; ``stream`` None means no synchronisation is needed, an
    integer is the stream to wait for, 1 and 2 the legacy and per-thread default streams, 0 is
    disallowed; without a ``stream`` entry the legacy default stream is waited for). Raises
    ``ValueError`` naming what was expected.
    """
    cai = getattr(frame, "__cuda_array_interface__", None)
    if not isinstance(cai, dict):
        raise ValueError(  # noqa: TRY004 - the SDK's contract: bad input is a ValueError
            "run_device needs a GPU array with __cuda_array_interface__ (CuPy, PyTorch CUDA "
            f"tensor, Numba), got {type(frame).__name__}")
    shape = tuple(int(d) for d in cai.get("shape", ()))
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[2] != 1):
        raise ValueError(f"device frame must be (H, W) or (H, W, 1), got shape {shape}")
    if cai.get("typestr") not in ("|u1", "<u1", ">u1"):
        raise ValueError(f"device frame must be uint8, got typestr {cai.get('typestr')!r}")
    height, width = shape[:2]
    if not (2 <= height <= MAX_SIDE and 2 <= width <= MAX_SIDE):
        raise ValueError(f"device frame sides must lie in [2, {MAX_SIDE}], got {height}x{width}")
    if cai.get("mask") is not None:
        raise ValueError("masked device arrays are not supported")
    strides = cai.get("strides")
    pitch = width
    if strides is not None:
        strides = tuple(int(s) for s in strides)
        if strides[1] != 1:
            raise ValueError(f"device frame pixels must be adjacent (stride 1), got strides "
                             f"{strides}: pass a contiguous array")
        pitch = strides[0]
        if pitch < width:
            raise ValueError(f"device frame row stride {pitch} is smaller than its width {width}")
    ptr = int(cai["data"][0])
    if ptr == 0:
        raise ValueError("device frame has a NULL data pointer")
    # No "stream" entry (a version 2 producer) says nothing about where the data was written:
    # wait for the legacy default stream (1), which waits for all work on blocking streams.
    stream = cai.get("stream", _LEGACY_DEFAULT_STREAM)
    if stream is not None and int(stream) == 0:
        raise ValueError("__cuda_array_interface__ stream 0 is disallowed by the protocol")
    return DeviceSource(ptr, height, width, pitch), (None if stream is None else int(stream))


def _check_grey(grey: Any) -> np.ndarray:
    if not isinstance(grey, np.ndarray) or grey.dtype != np.uint8 or grey.ndim != 2:
        raise ValueError("frames must be uint8 (H, W) NumPy arrays (validate them with the "
                         f"Segmenter), got {getattr(grey, 'dtype', type(grey).__name__)} "
                         f"{getattr(grey, 'shape', '')}")
    if min(grey.shape) < 2 or max(grey.shape) > MAX_SIDE:
        raise ValueError(f"frame sides must lie in [2, {MAX_SIDE}], got {grey.shape}")
    return grey


def batch_groups(shapes: Sequence[tuple[int, int]], max_batch: int) -> list[list[int]]:
    """Indices of frames grouped into batches of equal size (the kernels take one frame size per
    launch), at most ``max_batch`` each, in order of first appearance."""
    groups: dict[tuple[int, int], list[list[int]]] = {}
    order: list[list[int]] = []
    for index, shape in enumerate(shapes):
        chunks = groups.setdefault(shape, [])
        if not chunks or len(chunks[-1]) == max_batch:
            chunks.append([])
            order.append(chunks[-1])
        chunks[-1].append(index)
    return order


class TensorRTCascade:
    """Detector engine -> fused crop kernel -> segmenter engine -> paste kernel on an NVIDIA GPU.

    ``precision``: which engines of the bundle to run (``"fp16"``, ``"fp32"`` or ``"int8"``);
    ``max_batch``: the largest ``run_batch`` group (the engines must allow it); ``device``: CUDA
    device index; ``depth``: slots created up front (``stream`` adds more if asked for a larger depth).
    ``use_graphs=False`` enqueues every chain directly instead of replaying CUDA graphs.

    Raises ``RuntimeError`` saying what is missing (TensorRT, a GPU, an engine that fits) and the
    fix; whatever was set up before a failure is released. Results' ``timings`` are milliseconds:
    GPU time per stage (``upload``, ``preprocess``, ``detector``, ``crop``, ``segmenter``,
    ``paste``, ``download``, from CUDA events) and ``total`` (host clock, submit to result).
    """

    name = "tensorrt"

    def __init__(self, bundle: Bundle, spec: CascadeSpec, precision: str = "fp16",
                 max_batch: int = 1, device: int = 0, depth: int = 3, *,
                 use_graphs: bool = True) -> None:
        self._closed = True  # nothing to release (or warn about) until fully open
        _check_request(precision, max_batch, device)
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
        self.spec = spec
        self.max_batch = max_batch
        self._use_graphs = use_graphs
        self._slots: list[FrameSlot] = []
        self._stack = contextlib.ExitStack()
        try:
            reason = tensorrt_unavailable_reason(bundle, precision, max_batch, device)
            if reason is not None:
                raise RuntimeError(f"the TensorRT backend cannot run here: {reason}")
            self._open(bundle, precision, device)
            self._ensure_slots(depth)
        except BaseException:
            self._stack.close()
            raise
        self._closed = False

    def _open(self, bundle: Bundle, precision: str, device: int) -> None:
        self._device = device
        use_device(device)
        key = current_key(precision, self.max_batch, device)
        self._kernels = self._stack.enter_context(
            CascadeKernels(kernel_images(compute_capability(device))))
        runtime = TrtRuntime()
        expected = expected_tensors(self.spec)
        self._engines: dict[str, TrtEngine] = {}
        for model, input_name in ((DETECTOR, "image"), (SEGMENTER, "crop")):
            entry = bundle.find_engine(model, key)
            if entry is None:
                raise RuntimeError(bundle.engine_mismatch_reason(model, key))
            engine = runtime.deserialize(bundle.read_verified(entry.file), model)
            self._stack.callback(engine.close)
            self._engines[model] = engine
            check_io(engine.tensors, expected[model], model)
            allowed = engine.profile_max_batch(input_name)
            if allowed < self.max_batch:
                raise TensorRTError(f"{entry.file} allows batch <= {allowed}, asked for "
                                    f"{self.max_batch}: rebuild with --max-batch")
        det, seg = self._engines[DETECTOR].tensors, self._engines[SEGMENTER].tensors
        types = TensorTypes(image=det["image"].dtype.name, crop=seg["crop"].dtype.name,
                            prob=seg["prob"].dtype.name)
        self._layout = SlotLayout(self.max_batch, math.prod(INITIAL_FRAME_HW),
                                  self.spec.detector_input_hw, self.spec.crop_hw, types)
        # Registered after the engines, so slots (and their contexts) go first on close.
        self._stack.callback(self._close_slots)

    def _ensure_slots(self, count: int) -> None:
        while len(self._slots) < count:
            self._slots.append(FrameSlot(self._layout, self.spec, self._kernels, self._engines,
                                         GRAPHS_PER_SLOT, self._use_graphs, self._device))

    def _close_slots(self) -> None:
        slots, self._slots = self._slots, []
        with contextlib.ExitStack() as stack:
            for slot in slots:
                stack.callback(slot.close)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this TensorRTCascade is closed")

    # --- running ------------------------------------------------------------------------------

    def run(self, grey: np.ndarray) -> Result:
        """One validated uint8 (H, W) host frame."""
        self._check_open()
        slot = self._slots[0]
        return slot.submit_host([_check_grey(grey)]).collect()[0]

    def run_device(self, frame: Any) -> Result:
        """One uint8 frame already on this GPU (``__cuda_array_interface__``: CuPy, PyTorch, ...),
        copied on the device into the slot; nothing goes through the host but the results."""
        self._check_open()
        source, producer_stream = device_source(frame)
        return self._slots[0].submit_device(source, producer_stream).collect()[0]

    def run_batch(self, greys: Sequence[np.ndarray]) -> list[Result]:
        """Validated uint8 frames (sizes may differ): equal-sized frames run as batches of up to
        ``max_batch``, the batches pipelined over the slots. Results in input order."""
        self._check_open()
        frames = [_check_grey(g) for g in greys]
        groups = batch_groups([f.shape for f in frames], self.max_batch)
        results: list[Result | None] = [None] * len(frames)
        depth = len(self._slots)
        done = in_order(
            groups, depth,
            submit=lambda group, k: (group, self._slots[k].submit_host([frames[i] for i in group])),
            collect=lambda ticket: (ticket[0], ticket[1].collect()),
            abandon=lambda ticket: ticket[1].abandon(),
        )
        for group, group_results in done:
            for index, result in zip(group, group_results):
                results[index] = result
        return [r for r in results if r is not None]

    def stream(self, greys: Iterable[np.ndarray], depth: int) -> Iterator[Result]:
        """Results in input order with up to ``depth`` frames in flight (one slot each)."""
        self._check_open()
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"stream depth must be an integer >= 1, got {depth!r}")
        if depth > len(self._slots):
            bind_device(self._device)  # the new slots' streams and buffers go on our device
        self._ensure_slots(depth)
        return in_order(greys, depth, submit=self._submit_one, collect=self._collect_one,
                        abandon=lambda slot: slot.abandon())

    def _submit_one(self, grey: np.ndarray, slot: int) -> FrameSlot:
        self._check_open()  # a stream consumed after close() stops here, not in a freed slot
        return self._slots[slot].submit_host([_check_grey(grey)])

    def _collect_one(self, slot: FrameSlot) -> Result:
        self._check_open()
        return slot.collect()[0]

    # --- closing ------------------------------------------------------------------------------

    def close(self) -> None:
        """Free every GPU resource (slots, engines, kernels); later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        bind_device(self._device)  # modules unload and engines free in their own context
        self._stack.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn("TensorRTCascade was not closed: call close() or use it as a context "
                          "manager (its GPU memory stays allocated until the process ends)",
                          ResourceWarning, stacklevel=2)
