"""The machine behind the stand-in (devices, memory, streams, events, graphs, captures) and the
``cuda.bindings.runtime`` functions bpedge calls.

Rules enforced, each with where it is documented:

R1 ``cudaEventRecordExternal`` only while the stream is capturing: "When using stream capture,
   create an event record node instead of the default behavior. This flag is invalid when used
   outside of capture." (cuda-bindings ``EventRecordFlags.EXTERNAL``,
   https://nvidia.github.io/cuda-python/cuda-bindings/latest/module/driver.html, and the CUDA
   driver API ``cuEventRecordWithFlags``). Reported: ``cudaErrorInvalidValue``.
R2 No potentially unsafe call (allocation, free, synchronous copy, synchronisation, query) from a
   thread whose capture forbids it, and no synchronisation of a capturing stream in any mode
   (CUDA runtime API ``cudaThreadExchangeStreamCaptureMode``: Global / ThreadLocal / Relaxed;
   https://docs.nvidia.com/dl-cuda-graph/latest/cuda-graph-basics/constraints.html "No
   Host-Device Synchronization", "No Stream/Event Query Operations"). Reported:
   ``cudaErrorStreamCaptureUnsupported``; the capture is invalidated and ends with
   ``cudaErrorStreamCaptureInvalidated``.
R3 No async copy from pageable host memory into a capture: such a copy is staged through the
   host before the call returns, which a graph cannot replay (CUDA runtime API
   ``cudaMemcpyAsync``: "It only works on page-locked host memory",
   https://developer.download.nvidia.com/compute/DevZone/docs/html/C/doc/html/group__CUDART__MEMORY_g732efed5ab5cb184c920a21eb36e8ce4.html;
   ``cudaErrorStreamCaptureUnsupported``: "The operation is not permitted when the stream is
   capturing"). Reported: ``cudaErrorStreamCaptureUnsupported``; the capture is invalidated.
   Also from ``cudaStreamBeginCapture``: the legacy stream cannot be captured, and a capture not
   begun in relaxed mode must be ended on the thread that began it
   (``cudaErrorStreamCaptureWrongThread``).
R4 An event last recorded inside a capture cannot be waited for, queried or timed from the host
   (``cudaErrorCapturedEvent``: "The operation is not permitted on an event which was last
   recorded in a capturing stream.").
R5 Handles and memory used after they were freed: ``cudaErrorInvalidResourceHandle`` ("a
   resource handle passed to the API call was not valid. Resource handles are opaque types like
   cudaStream_t and cudaEvent_t."), ``cudaErrorInvalidValue`` for a pointer freed twice or not
   allocated (``cudaFree``), and ``cudaErrorIllegalAddress`` (sticky, reported at the next
   synchronisation) for work that touches freed memory.
R6 The current device is per host thread and defaults to device 0 (``cudaSetDevice``). Per the
   CUDA C++ Programming Guide, "Multi-Device System" > "Stream and Event Behavior": a kernel
   launch fails on a stream of another device than the current one; ``cudaEventRecord`` fails if
   the event and the stream belong to different devices; ``cudaEventElapsedTime`` fails for
   events of two devices; copies, ``cudaEventSynchronize`` and ``cudaStreamWaitEvent`` work
   across devices. Reported: ``cudaErrorInvalidResourceHandle`` / ``cudaErrorInvalidValue``.
R8 A 2D copy's pitches are bounded: ``cudaMemcpy2DAsync`` "returns an error if dpitch or
   spitch is greater than the maximum allowed" (CUDA runtime API, memory management,
   https://developer.download.nvidia.com/compute/DevZone/docs/html/C/doc/html/group__CUDART__MEMORY_gedfe4cb63f692bde9dcbfc9a74d9a70c.html),
   that maximum being ``cudaDeviceProp::memPitch``, "the maximum pitch in bytes allowed by the
   memory copy functions". The documentation gives no number; the stand-in uses 2^31 - 1, what
   deviceQuery reports on NVIDIA GPUs of the last generations. A 1D ``cudaMemcpyAsync`` has no
   pitch. Reported: ``cudaErrorInvalidPitchValue``.
R7 Every function returns a tuple ``(err, *outputs)``, as cuda-bindings does, and the handle
   types give their address through ``cuda.bindings.utils.get_cuda_native_handle``; ``int()`` on
   a handle warns (the maintainers are replacing it: NVIDIA/cuda-python#564, #773).
"""

from __future__ import annotations

import ctypes
import enum
import itertools
import threading
import time
import types
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidPitchValue = 12
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInvalidMemcpyDirection = 21
    cudaErrorInsufficientDriver = 35
    cudaErrorInvalidDevice = 101
    cudaErrorInvalidResourceHandle = 400
    cudaErrorIllegalState = 401
    cudaErrorNotReady = 600
    cudaErrorIllegalAddress = 700
    cudaErrorNotSupported = 801
    cudaErrorStreamCaptureUnsupported = 900
    cudaErrorStreamCaptureInvalidated = 901
    cudaErrorStreamCaptureUnmatched = 903
    cudaErrorStreamCaptureIsolation = 905
    cudaErrorCapturedEvent = 907
    cudaErrorStreamCaptureWrongThread = 908


class cudaStreamCaptureMode(enum.IntEnum):
    cudaStreamCaptureModeGlobal = 0
    cudaStreamCaptureModeThreadLocal = 1
    cudaStreamCaptureModeRelaxed = 2


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


E = cudaError_t
GLOBAL, THREAD_LOCAL, RELAXED = (cudaStreamCaptureMode.cudaStreamCaptureModeGlobal,
                                 cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal,
                                 cudaStreamCaptureMode.cudaStreamCaptureModeRelaxed)
EVENT_BLOCKING_SYNC, EVENT_DISABLE_TIMING, EVENT_RECORD_EXTERNAL = 1, 2, 1
LEGACY_STREAM_VALUES = (0, 1, 2)  # NULL, cudaStreamLegacy, cudaStreamPerThread
MAX_PITCH = 2**31 - 1  # cudaDeviceProp::memPitch as modelled (R8)


class Handle:
    """An opaque cuda-bindings handle. ``int(handle)`` works but warns (R7)."""

    def __init__(self, init_value: int = 0) -> None:
        self._value = int(init_value)

    def getPtr(self) -> int:
        return id(self)

    def __int__(self) -> int:
        warnings.warn(f"int() on a {type(self).__name__} is being replaced by "
                      "cuda.bindings.utils.get_cuda_native_handle (NVIDIA/cuda-python#773)",
                      DeprecationWarning, stacklevel=2)
        return self._value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Handle) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} 0x{self._value:x}>"


class cudaStream_t(Handle):
    pass


class cudaEvent_t(Handle):
    pass


class cudaGraph_t(Handle):
    pass


class cudaGraphExec_t(Handle):
    pass


def native(handle: Any) -> int:
    """The value behind a handle or an int, without the deprecated ``int()``."""
    return handle._value if isinstance(handle, Handle) else int(handle)


class Fault(Exception):
    """Work on a stream failed while running (reported as a sticky error, as on a GPU)."""

    def __init__(self, code: cudaError_t, why: str) -> None:
        super().__init__(why)
        self.code = code


# --- state --------------------------------------------------------------------------------------


@dataclass
class Allocation:
    base: int
    nbytes: int
    kind: str  # "device" or "pinned"
    device: int
    array: np.ndarray
    freed: bool = False


@dataclass
class Token:
    """Marks one event record in a stream's queue; ``done`` once the stream ran up to it."""

    stream: Stream
    done: bool = False


@dataclass
class Capture:
    stream: Stream
    mode: cudaStreamCaptureMode
    thread: int
    nodes: list[Any] = field(default_factory=list)
    invalidated: str | None = None


@dataclass
class Stream:
    value: int
    device: int
    queue: deque[Callable[[], None]] = field(default_factory=deque)
    capture: Capture | None = None
    destroyed: bool = False
    legacy: bool = False


@dataclass
class Event:
    value: int
    device: int
    flags: int
    token: Token | None = None
    time: float | None = None
    captured: bool = False
    destroyed: bool = False


@dataclass
class RecordNode:
    """An event-record node of a graph (``cudaEventRecordExternal`` in capture): each launch of
    the graph makes the event pending again until the stream reaches the node."""

    event: Event

    def arm(self, stream: Stream) -> Callable[[], None]:
        event, token = self.event, Token(stream)
        event.token, event.captured, event.time = token, False, None

        def record() -> None:
            token.done, event.time = True, time.perf_counter()
        return record


@dataclass
class Graph:
    value: int
    device: int
    nodes: list[Any]
    destroyed: bool = False


@dataclass
class DeviceInfo:
    name: str
    major: int
    minor: int
    sms: int
    total: int
    used: int = 0


class Machine:
    """Devices, memory and every live handle; thread-safe (one lock around each API call)."""

    def __init__(self, device_count: int = 2, name: str = "bpedge stand-in GPU",
                 capability: tuple[int, int] = (8, 6), sms: int = 84,
                 total_memory: int = 4 << 30) -> None:
        self.lock = threading.RLock()
        self.devices = [DeviceInfo(name, *capability, sms, total_memory)
                        for _ in range(device_count)]
        self.local = threading.local()
        self.allocations: dict[int, Allocation] = {}
        self.freed: list[Allocation] = []  # kept alive (poisoned) so stale pointers stay mapped
        self.streams: dict[int, Stream] = {}
        self.events: dict[int, Event] = {}
        self.graphs: dict[int, Graph] = {}
        self.execs: dict[int, Graph] = {}
        self.captures: list[Capture] = []
        self.sticky: cudaError_t | None = None
        self.violations: list[str] = []  # every rule broken, for the tests to read
        self.fail_instantiate = False     # fault injection: cudaGraphInstantiate fails
        self.instantiate_calls = 0
        self._handles = itertools.count(0x7000_0000_1000, 16)
        self._legacy: dict[int, Stream] = {}

    # --- threads and devices ---------------------------------------------------------------

    def thread_device(self) -> int | None:
        return getattr(self.local, "device", None)

    def runtime_device(self) -> int:
        """The calling thread's device; a runtime call on a fresh thread uses device 0 and makes
        its primary context current (R6)."""
        device = self.thread_device()
        if device is None:
            device = self.local.device = 0
        return device

    def context_device(self) -> int | None:
        """The device whose primary context is current for driver calls (None: no context)."""
        return self.thread_device()

    def capture_mode(self) -> cudaStreamCaptureMode:
        return getattr(self.local, "mode", GLOBAL)

    def violation(self, rule: str, message: str) -> None:
        self.violations.append(f"{rule}: {message}")

    # --- memory ----------------------------------------------------------------------------

    def allocate(self, nbytes: int, kind: str) -> Allocation:
        array = np.full(int(nbytes), 0xA5, np.uint8)  # not zeroed, like cudaMalloc
        allocation = Allocation(array.ctypes.data, int(nbytes), kind, self.runtime_device(), array)
        self.allocations[allocation.base] = allocation
        return allocation

    def release(self, allocation: Allocation) -> None:
        allocation.freed = True
        allocation.array[:] = 0xDD  # poison: a stale read shows garbage, not the old data
        del self.allocations[allocation.base]
        self.freed.append(allocation)

    def find(self, ptr: int, extent: int) -> Allocation | None:
        """The live allocation holding ``[ptr, ptr + extent)``."""
        for allocation in self.allocations.values():
            if allocation.base <= ptr and ptr + extent <= allocation.base + allocation.nbytes:
                return allocation
        return None

    def was_freed(self, ptr: int) -> bool:
        return any(a.base <= ptr < a.base + a.nbytes for a in self.freed)

    def check_live(self, ptr: int, extent: int, what: str) -> None:
        """Raise :class:`Fault` (illegal address) unless device memory ``[ptr, +extent)`` is live
        (R5): run when the work runs, as the GPU would fault then."""
        allocation = self.find(ptr, extent)
        if allocation is None or allocation.kind != "device":
            freed = " (freed)" if self.was_freed(ptr) else ""
            self.violation("R5", f"{what} touches 0x{ptr:x}{freed}, not live device memory")
            raise Fault(E.cudaErrorIllegalAddress, f"{what}: illegal address 0x{ptr:x}{freed}")

    # --- streams and work ------------------------------------------------------------------

    def new_handle(self) -> int:
        return next(self._handles)

    def stream(self, handle: Any) -> Stream | None:
        """The stream behind a handle, a CUstream or an int (TensorRT takes the address); the
        special values are the current device's legacy stream. None: invalid or destroyed."""
        value = native(handle) if handle is not None else 0
        if value in LEGACY_STREAM_VALUES:
            device = self.runtime_device()
            if device not in self._legacy:
                self._legacy[device] = Stream(value, device, legacy=True)
            return self._legacy[device]
        stream = self.streams.get(value)
        if stream is None or stream.destroyed:
            return None
        return stream

    def enqueue(self, stream: Stream, op: Callable[[], None]) -> cudaError_t:
        """Put ``op`` on the stream, or into its capture."""
        if self.sticky is not None:
            return self.sticky
        if stream.capture is not None:
            if stream.capture.invalidated:
                return E.cudaErrorStreamCaptureInvalidated
            stream.capture.nodes.append(op)
        else:
            stream.queue.append(op)
        return E.cudaSuccess

    def run(self, stream: Stream, until: Token | None = None) -> cudaError_t:
        """Run the stream's queued work (up to ``until``); a fault becomes the sticky error."""
        try:
            while stream.queue and not (until is not None and until.done):
                stream.queue.popleft()()
        except Fault as fault:
            self.sticky = fault.code
            stream.queue.clear()
        return self.sticky or E.cudaSuccess

    def run_device(self, device: int) -> cudaError_t:
        for stream in [*self.streams.values(), *self._legacy.values()]:
            if stream.device == device and stream.capture is None:
                self.run(stream)
        return self.sticky or E.cudaSuccess

    # --- capture rules ---------------------------------------------------------------------

    def invalidate(self, capture: Capture, why: str) -> None:
        if capture.invalidated is None:
            capture.invalidated = why

    def unsafe_call(self, name: str) -> cudaError_t | None:
        """R2: a potentially unsafe call, checked against the captures in progress."""
        if self.capture_mode() == RELAXED:
            return None
        me = threading.get_ident()
        own = [c for c in self.captures if c.thread == me and c.mode != RELAXED]
        others = ([c for c in self.captures if c.thread != me and c.mode == GLOBAL]
                  if self.capture_mode() == GLOBAL else [])
        if not own and not others:
            return None
        for capture in own + others:
            self.invalidate(capture, f"{name} during the capture")
        self.violation("R2", f"{name} while a stream capture forbids it")
        return E.cudaErrorStreamCaptureUnsupported


# --- the runtime module ---------------------------------------------------------------------------


#: Runtime calls that do not initialise a context on the calling thread.
_NO_CONTEXT = frozenset({"cudaGetErrorString", "cudaGetLastError", "cudaRuntimeGetVersion",
                         "cudaDriverGetVersion", "cudaGetDeviceCount", "cudaSetDevice",
                         "cudaGetDeviceProperties"})


def make_runtime_module(m: Machine) -> types.ModuleType:
    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaError_t = cudaError_t
    rt.cudaStreamCaptureMode = cudaStreamCaptureMode
    rt.cudaMemcpyKind = cudaMemcpyKind
    rt.cudaStream_t, rt.cudaEvent_t = cudaStream_t, cudaEvent_t
    rt.cudaGraph_t, rt.cudaGraphExec_t = cudaGraph_t, cudaGraphExec_t
    rt.cudaStreamDefault, rt.cudaStreamNonBlocking = 0, 1
    rt.cudaEventDefault, rt.cudaEventBlockingSync = 0, EVENT_BLOCKING_SYNC
    rt.cudaEventDisableTiming = EVENT_DISABLE_TIMING
    rt.cudaEventRecordDefault, rt.cudaEventRecordExternal = 0, EVENT_RECORD_EXTERNAL
    rt.cudaHostAllocDefault = 0
    last_error = threading.local()

    def api(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
        """Every call: under the lock, sticky errors first, the error remembered per thread."""
        def call(*args: Any) -> tuple[Any, ...]:
            with m.lock:
                if m.sticky is not None and fn.__name__ not in ("cudaGetErrorString",
                                                                "cudaGetLastError"):
                    result: tuple[Any, ...] = (m.sticky,)
                else:
                    if fn.__name__ not in _NO_CONTEXT:
                        m.runtime_device()  # a runtime call makes a context current (R6)
                    result = fn(*args)
            if result[0] != E.cudaSuccess:
                last_error.value = result[0]
            return result
        call.__name__ = fn.__name__
        setattr(rt, fn.__name__, call)
        return call

    def stream_or_error(handle: Any) -> Stream | None:
        stream = m.stream(handle)
        if stream is None:
            m.violation("R5", f"stream {handle!r} is not a live stream")
        return stream

    def event_or_error(handle: Any) -> Event | None:
        event = m.events.get(native(handle)) if isinstance(handle, cudaEvent_t) else None
        if event is None or event.destroyed:
            m.violation("R5", f"event {handle!r} is not a live event")
            return None
        return event

    # --- errors and devices ---

    @api
    def cudaGetErrorString(err: Any) -> tuple[Any, ...]:
        return E.cudaSuccess, f"{cudaError_t(err).name} (bpedge CUDA stand-in)".encode()

    @api
    def cudaGetLastError() -> tuple[Any, ...]:
        err = m.sticky or getattr(last_error, "value", E.cudaSuccess)
        last_error.value = E.cudaSuccess
        return (err,)

    @api
    def cudaRuntimeGetVersion() -> tuple[Any, ...]:
        return E.cudaSuccess, 13000

    @api
    def cudaDriverGetVersion() -> tuple[Any, ...]:
        return E.cudaSuccess, 13000

    @api
    def cudaGetDeviceCount() -> tuple[Any, ...]:
        return E.cudaSuccess, len(m.devices)

    @api
    def cudaSetDevice(device: int) -> tuple[Any, ...]:
        if not 0 <= int(device) < len(m.devices):
            return (E.cudaErrorInvalidDevice,)
        m.local.device = int(device)
        return (E.cudaSuccess,)

    @api
    def cudaGetDevice() -> tuple[Any, ...]:
        return E.cudaSuccess, m.runtime_device()

    @api
    def cudaGetDeviceProperties(device: int) -> tuple[Any, ...]:
        if not 0 <= int(device) < len(m.devices):
            return E.cudaErrorInvalidDevice, None
        d = m.devices[int(device)]
        prop = types.SimpleNamespace(name=d.name.encode(), major=d.major, minor=d.minor,
                                     multiProcessorCount=d.sms, totalGlobalMem=d.total)
        return E.cudaSuccess, prop

    @api
    def cudaMemGetInfo() -> tuple[Any, ...]:
        d = m.devices[m.runtime_device()]
        return E.cudaSuccess, d.total - d.used, d.total

    @api
    def cudaDeviceSynchronize() -> tuple[Any, ...]:
        refused = m.unsafe_call("cudaDeviceSynchronize")
        return (refused or m.run_device(m.runtime_device()),)

    # --- memory ---

    @api
    def cudaMalloc(nbytes: int) -> tuple[Any, ...]:
        refused = m.unsafe_call("cudaMalloc")
        if refused:
            return refused, 0
        d = m.devices[m.runtime_device()]
        if nbytes < 1 or d.used + nbytes > d.total:
            return E.cudaErrorMemoryAllocation, 0
        d.used += int(nbytes)
        return E.cudaSuccess, m.allocate(nbytes, "device").base

    @api
    def cudaHostAlloc(nbytes: int, flags: int) -> tuple[Any, ...]:
        refused = m.unsafe_call("cudaHostAlloc")
        if refused:
            return refused, 0
        return E.cudaSuccess, m.allocate(nbytes, "pinned").base

    def free(ptr: int, kind: str, name: str) -> tuple[Any, ...]:
        refused = m.unsafe_call(name)
        if refused:
            return (refused,)
        m.runtime_device()
        if int(ptr) == 0:
            return (E.cudaSuccess,)  # cudaFree(0): the context-initialisation idiom
        allocation = m.allocations.get(int(ptr))
        if allocation is None or allocation.kind != kind:
            why = "freed twice" if m.was_freed(int(ptr)) else "not an allocation"
            m.violation("R5", f"{name}(0x{int(ptr):x}): {why}")
            return (E.cudaErrorInvalidValue,)
        m.run_device(allocation.device)  # cudaFree synchronises with the device's work
        if kind == "device":
            m.devices[allocation.device].used -= allocation.nbytes
        m.release(allocation)
        return (E.cudaSuccess,)

    @api
    def cudaFree(ptr: int) -> tuple[Any, ...]:
        return free(ptr, "device", "cudaFree")

    @api
    def cudaFreeHost(ptr: int) -> tuple[Any, ...]:
        return free(ptr, "pinned", "cudaFreeHost")

    def copy_sides(dst: int, dst_extent: int, src: int, src_extent: int,
                   kind: cudaMemcpyKind) -> tuple[cudaError_t, bool]:
        """Check both sides of a copy; returns (error, whether a host side is pageable)."""
        device_dst = kind in (cudaMemcpyKind.cudaMemcpyHostToDevice,
                              cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        device_src = kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost,
                              cudaMemcpyKind.cudaMemcpyDeviceToDevice)
        pageable = False
        for ptr, extent, on_device in ((dst, dst_extent, device_dst), (src, src_extent, device_src)):
            allocation = m.find(ptr, extent)
            if on_device:
                if allocation is None or allocation.kind != "device":
                    freed = " (freed)" if m.was_freed(ptr) else ""
                    m.violation("R5", f"copy {kind.name}: 0x{ptr:x}{freed} is not live device "
                                      "memory of that size")
                    return E.cudaErrorInvalidValue, False
            elif allocation is not None and allocation.kind == "device":
                m.violation("R5", f"copy {kind.name}: host side 0x{ptr:x} is device memory")
                return E.cudaErrorInvalidMemcpyDirection, False
            elif allocation is None:
                pageable = True
        return E.cudaSuccess, pageable

    def copy_op(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int,
                kind: cudaMemcpyKind) -> Callable[[], None]:
        def run() -> None:
            for ptr, pitch, side in ((dst, dpitch, "dst"), (src, spitch, "src")):
                on_device = (kind.name.endswith("ToDevice") if side == "dst"
                             else kind.name.startswith("cudaMemcpyDevice"))
                if on_device:
                    m.check_live(ptr, pitch * (height - 1) + width, f"copy {side}")
            for row in range(height):
                ctypes.memmove(dst + row * dpitch, src + row * spitch, width)
        return run

    @api
    def cudaMemcpy2DAsync(dst: int, dpitch: int, src: int, spitch: int, width: int,
                          height: int, kind: Any, stream: Any) -> tuple[Any, ...]:
        if max(dpitch, spitch) > MAX_PITCH:  # R8
            return (E.cudaErrorInvalidPitchValue,)
        return copy_async(dst, dpitch, src, spitch, width, height, kind, stream)

    def copy_async(dst: int, dpitch: int, src: int, spitch: int, width: int, height: int,
                   kind: Any, stream: Any) -> tuple[Any, ...]:
        s = stream_or_error(stream)
        if s is None:
            return (E.cudaErrorInvalidResourceHandle,)
        if width > dpitch or width > spitch or height < 1:
            return (E.cudaErrorInvalidPitchValue,)
        kind = cudaMemcpyKind(kind)
        extent_d, extent_s = dpitch * (height - 1) + width, spitch * (height - 1) + width
        err, pageable = copy_sides(dst, extent_d, src, extent_s, kind)
        if err:
            return (err,)
        if pageable and s.capture is not None:
            m.invalidate(s.capture, "an async copy of pageable host memory")
            m.violation("R3", "cudaMemcpy2DAsync of pageable host memory during capture")
            return (E.cudaErrorStreamCaptureUnsupported,)
        op = copy_op(dst, dpitch, src, spitch, width, height, kind)
        if pageable:  # staged through the driver before the call returns: in stream order, now
            m.run(s)
            op()
            return (E.cudaSuccess,)
        return (m.enqueue(s, op),)

    @api
    def cudaMemcpyAsync(dst: int, src: int, count: int, kind: Any,
                        stream: Any) -> tuple[Any, ...]:
        return copy_async(dst, count, src, count, count, 1, kind, stream)  # no pitch: no R8

    @api
    def cudaMemcpy(dst: int, src: int, count: int, kind: Any) -> tuple[Any, ...]:
        refused = m.unsafe_call("cudaMemcpy")
        if refused:
            return (refused,)
        kind = cudaMemcpyKind(kind)
        err, _ = copy_sides(dst, count, src, count, kind)
        if err:
            return (err,)
        m.run_device(m.runtime_device())  # synchronous: after all earlier work on the device
        copy_op(dst, count, src, count, count, 1, kind)()
        return (E.cudaSuccess,)

    # --- streams ---

    @api
    def cudaStreamCreateWithFlags(flags: int) -> tuple[Any, ...]:
        stream = Stream(m.new_handle(), m.runtime_device())
        m.streams[stream.value] = stream
        return E.cudaSuccess, cudaStream_t(stream.value)

    @api
    def cudaStreamDestroy(stream: Any) -> tuple[Any, ...]:
        s = stream_or_error(stream)
        if s is None or s.legacy:
            return (E.cudaErrorInvalidResourceHandle,)
        m.run(s)  # the device finishes the queued work; the handle is invalid from now on
        s.destroyed = True
        return (E.cudaSuccess,)

    @api
    def cudaStreamSynchronize(stream: Any) -> tuple[Any, ...]:
        s = stream_or_error(stream)
        if s is None:
            return (E.cudaErrorInvalidResourceHandle,)
        if s.capture is not None:  # conflicts with capture in every mode
            m.invalidate(s.capture, "cudaStreamSynchronize of the capturing stream")
            m.violation("R2", "cudaStreamSynchronize on a capturing stream")
            return (E.cudaErrorStreamCaptureUnsupported,)
        refused = m.unsafe_call("cudaStreamSynchronize")
        if refused:
            return (refused,)
        return (m.run_device(s.device) if s.legacy else m.run(s),)

    @api
    def cudaStreamWaitEvent(stream: Any, event: Any, flags: int) -> tuple[Any, ...]:
        s, e = stream_or_error(stream), event_or_error(event)
        if s is None or e is None:
            return (E.cudaErrorInvalidResourceHandle,)
        if s.capture is not None:
            if e.captured:
                return (E.cudaSuccess,)  # a dependency inside the capture
            m.invalidate(s.capture, "a wait on an event recorded outside the capture")
            m.violation("R2", "cudaStreamWaitEvent in capture on an event from outside it")
            return (E.cudaErrorStreamCaptureIsolation,)
        token = e.token

        def wait() -> None:
            if token is not None and not token.done:
                err = m.run(token.stream, until=token)
                if err:
                    raise Fault(err, "the awaited stream failed")
        return (m.enqueue(s, wait),)

    @api
    def cudaStreamBeginCapture(stream: Any, mode: Any) -> tuple[Any, ...]:
        s = stream_or_error(stream)
        if s is None:
            return (E.cudaErrorInvalidResourceHandle,)
        if s.legacy:  # the legacy stream cannot be captured
            return (E.cudaErrorStreamCaptureUnsupported,)
        if s.capture is not None:
            return (E.cudaErrorIllegalState,)
        m.run(s)
        s.capture = Capture(s, cudaStreamCaptureMode(mode), threading.get_ident())
        m.captures.append(s.capture)
        return (E.cudaSuccess,)

    @api
    def cudaStreamEndCapture(stream: Any) -> tuple[Any, ...]:
        s = stream_or_error(stream)
        if s is None:
            return E.cudaErrorInvalidResourceHandle, None
        capture = s.capture
        if capture is None:
            return E.cudaErrorIllegalState, None
        if capture.mode != RELAXED and capture.thread != threading.get_ident():
            return E.cudaErrorStreamCaptureWrongThread, None
        s.capture = None
        m.captures.remove(capture)
        if capture.invalidated:
            return E.cudaErrorStreamCaptureInvalidated, None
        graph = Graph(m.new_handle(), s.device, list(capture.nodes))
        m.graphs[graph.value] = graph
        return E.cudaSuccess, cudaGraph_t(graph.value)

    @api
    def cudaStreamIsCapturing(stream: Any) -> tuple[Any, ...]:
        s = stream_or_error(stream)
        if s is None:
            return E.cudaErrorInvalidResourceHandle, None
        return E.cudaSuccess, int(s.capture is not None)

    @api
    def cudaThreadExchangeStreamCaptureMode(mode: Any) -> tuple[Any, ...]:
        previous = m.capture_mode()
        m.local.mode = cudaStreamCaptureMode(mode)
        return E.cudaSuccess, previous

    # --- events ---

    @api
    def cudaEventCreateWithFlags(flags: int) -> tuple[Any, ...]:
        event = Event(m.new_handle(), m.runtime_device(), int(flags))
        m.events[event.value] = event
        return E.cudaSuccess, cudaEvent_t(event.value)

    @api
    def cudaEventDestroy(event: Any) -> tuple[Any, ...]:
        e = event_or_error(event)
        if e is None:
            return (E.cudaErrorInvalidResourceHandle,)
        e.destroyed = True
        return (E.cudaSuccess,)

    @api
    def cudaEventRecordWithFlags(event: Any, stream: Any, flags: int) -> tuple[Any, ...]:
        e, s = event_or_error(event), stream_or_error(stream)
        if e is None or s is None:
            return (E.cudaErrorInvalidResourceHandle,)
        if e.device != s.device:
            m.violation("R6", f"event of device {e.device} recorded on a stream of device "
                              f"{s.device}")
            return (E.cudaErrorInvalidResourceHandle,)
        external = bool(int(flags) & EVENT_RECORD_EXTERNAL)
        if external and s.capture is None:
            m.violation("R1", "cudaEventRecordExternal outside stream capture")
            return (E.cudaErrorInvalidValue,)
        if s.capture is not None:
            if s.capture.invalidated:
                return (E.cudaErrorStreamCaptureInvalidated,)
            if not external:
                e.captured, e.token = True, None  # only a dependency inside the graph
                return (E.cudaSuccess,)

            s.capture.nodes.append(RecordNode(e))
            return (E.cudaSuccess,)
        token = Token(s)
        e.token, e.captured, e.time = token, False, None

        def record() -> None:
            token.done, e.time = True, time.perf_counter()
        return (m.enqueue(s, record),)

    @api
    def cudaEventRecord(event: Any, stream: Any) -> tuple[Any, ...]:
        return cudaEventRecordWithFlags(event, stream, 0)

    def wait_event(e: Event, name: str) -> cudaError_t:
        refused = m.unsafe_call(name)
        if refused:
            return refused
        if e.captured:
            m.violation("R4", f"{name} on an event last recorded in a capture")
            return E.cudaErrorCapturedEvent
        if e.token is not None and not e.token.done:
            return m.run(e.token.stream, until=e.token)
        return E.cudaSuccess

    @api
    def cudaEventSynchronize(event: Any) -> tuple[Any, ...]:
        e = event_or_error(event)
        return (E.cudaErrorInvalidResourceHandle if e is None
                else wait_event(e, "cudaEventSynchronize"),)

    @api
    def cudaEventQuery(event: Any) -> tuple[Any, ...]:
        e = event_or_error(event)
        if e is None:
            return (E.cudaErrorInvalidResourceHandle,)
        refused = m.unsafe_call("cudaEventQuery")
        if refused:
            return (refused,)
        if e.captured:
            return (E.cudaErrorCapturedEvent,)
        return (E.cudaErrorNotReady if e.token is not None and not e.token.done
                else E.cudaSuccess,)

    @api
    def cudaEventElapsedTime(start: Any, end: Any) -> tuple[Any, ...]:
        a, b = event_or_error(start), event_or_error(end)
        if a is None or b is None:
            return E.cudaErrorInvalidResourceHandle, 0.0
        if a.captured or b.captured:
            m.violation("R4", "cudaEventElapsedTime on an event last recorded in a capture")
            return E.cudaErrorCapturedEvent, 0.0
        if a.device != b.device:
            m.violation("R6", "cudaEventElapsedTime of events of two devices")
            return E.cudaErrorInvalidResourceHandle, 0.0
        if (a.flags | b.flags) & EVENT_DISABLE_TIMING or a.token is None or b.token is None:
            return E.cudaErrorInvalidResourceHandle, 0.0
        if not (a.token.done and b.token.done) or a.time is None or b.time is None:
            return E.cudaErrorNotReady, 0.0
        return E.cudaSuccess, (b.time - a.time) * 1e3

    # --- graphs ---

    @api
    def cudaGraphInstantiate(graph: Any, flags: int) -> tuple[Any, ...]:
        g = m.graphs.get(native(graph)) if isinstance(graph, cudaGraph_t) else None
        if g is None or g.destroyed:
            return E.cudaErrorInvalidResourceHandle, None
        m.instantiate_calls += 1
        if m.fail_instantiate:
            return E.cudaErrorNotSupported, None
        exec_ = Graph(m.new_handle(), g.device, list(g.nodes))
        m.execs[exec_.value] = exec_
        return E.cudaSuccess, cudaGraphExec_t(exec_.value)

    @api
    def cudaGraphDestroy(graph: Any) -> tuple[Any, ...]:
        g = m.graphs.get(native(graph)) if isinstance(graph, cudaGraph_t) else None
        if g is None or g.destroyed:
            return (E.cudaErrorInvalidResourceHandle,)
        g.destroyed = True
        return (E.cudaSuccess,)

    @api
    def cudaGraphLaunch(graph_exec: Any, stream: Any) -> tuple[Any, ...]:
        g = m.execs.get(native(graph_exec)) if isinstance(graph_exec, cudaGraphExec_t) else None
        s = stream_or_error(stream)
        if g is None or g.destroyed or s is None:
            m.violation("R5", f"cudaGraphLaunch of {graph_exec!r} on {stream!r}")
            return (E.cudaErrorInvalidResourceHandle,)
        for node in g.nodes:
            err = m.enqueue(s, node.arm(s) if isinstance(node, RecordNode) else node)
            if err:
                return (err,)
        return (E.cudaSuccess,)

    @api
    def cudaGraphExecDestroy(graph_exec: Any) -> tuple[Any, ...]:
        g = m.execs.get(native(graph_exec)) if isinstance(graph_exec, cudaGraphExec_t) else None
        if g is None or g.destroyed:
            return (E.cudaErrorInvalidResourceHandle,)
        g.destroyed = True
        return (E.cudaSuccess,)

    return rt


def make_utils_module() -> types.ModuleType:
    utils = types.ModuleType("cuda.bindings.utils")
    utils.get_cuda_native_handle = native
    return utils
