"""cuda-python (``cuda.bindings``) with every call checked, and the few CUDA resources the GPU
cascade owns: device buffers, pinned host buffers, streams, events and executable graphs.

Every runtime (``cudart``) or driver call goes through :func:`rt_call` / :func:`drv_call`, which
turn a failed status into :class:`CudaError` naming the call (``cudaMalloc failed:
cudaErrorInsufficientDriver (CUDA driver version is insufficient ...)``), and so does a driver
library that cannot even be loaded (cuda-bindings raises ``DynamicLibNotFoundError`` there).

Ownership follows Polygraphy (``polygraphy/cuda/cuda.py``): each resource has one owner, ``free()``
is idempotent, the classes are context managers, and ``__del__`` only warns about a leak; it never
frees (a finaliser may run on another thread or at interpreter exit, when CUDA is gone).

``cuda.bindings`` is imported on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import abc
import ctypes
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from bpedge._engine_key import INSTALL_HINT


class CudaUnavailableError(RuntimeError):
    """cuda-python (``cuda.bindings``) is not installed."""


class CudaError(RuntimeError):
    """A CUDA runtime or driver call failed; ``call`` is its name, ``code`` the error's name."""

    def __init__(self, call: str, code: str, detail: str) -> None:
        super().__init__(f"{call} failed: {code} ({detail})")
        self.call = call
        self.code = code


def runtime_api() -> Any:
    """The ``cuda.bindings.runtime`` module (the CUDA runtime API)."""
    try:
        from cuda.bindings import runtime
    except ImportError as exc:
        raise CudaUnavailableError(
            f"the GPU backend needs cuda-python's cuda-bindings: {INSTALL_HINT} ({exc})"
        ) from exc
    return runtime


def driver_api() -> Any:
    """The ``cuda.bindings.driver`` module (the CUDA driver API)."""
    try:
        from cuda.bindings import driver
    except ImportError as exc:
        raise CudaUnavailableError(
            f"the GPU backend needs cuda-python's cuda-bindings: {INSTALL_HINT} ({exc})"
        ) from exc
    return driver


def _unpack(values: tuple[Any, ...]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _invoke(module: Any, name: str, args: tuple[Any, ...]) -> tuple[Any, ...]:
    try:
        result = getattr(module, name)(*args)
    except (RuntimeError, OSError) as exc:
        # cuda-bindings loads libcuda on first driver call and raises (DynamicLibNotFoundError, a
        # RuntimeError) where there is no driver: that is this call failing, so say which call.
        # TypeError/ValueError (wrong arguments: our bug) are not caught.
        raise CudaError(name, type(exc).__name__, str(exc)) from exc
    return result if isinstance(result, tuple) else (result,)


def rt_call(name: str, *args: Any) -> Any:
    """Call ``cudart.<name>(*args)``; raise :class:`CudaError` unless it returns ``cudaSuccess``.
    Returns the call's outputs after the status: None, one value, or a tuple."""
    cudart = runtime_api()
    status, *values = _invoke(cudart, name, args)
    if status != cudart.cudaError_t.cudaSuccess:
        raise CudaError(name, *_runtime_error_text(cudart, status))
    return _unpack(tuple(values))


def drv_call(name: str, *args: Any) -> Any:
    """Call ``driver.<name>(*args)``; raise :class:`CudaError` unless it returns ``CUDA_SUCCESS``."""
    driver = driver_api()
    status, *values = _invoke(driver, name, args)
    if status != driver.CUresult.CUDA_SUCCESS:
        # The enum's name, not cuGetErrorName: that call needs the driver library as well.
        code = getattr(status, "name", str(status))
        raise CudaError(name, code, f"CUresult {int(status)}")
    return _unpack(tuple(values))


def _runtime_error_text(cudart: Any, status: Any) -> tuple[str, str]:
    name = getattr(status, "name", str(status))
    # cudaGetErrorString works without a driver (it is a table in libcudart).
    err, text = cudart.cudaGetErrorString(status)
    detail = bytes(text).decode("utf-8", "replace") if err == cudart.cudaError_t.cudaSuccess else ""
    return name, detail or f"cudaError_t {int(status)}"


# --- devices ------------------------------------------------------------------------------------


def device_count() -> int:
    """Number of CUDA devices (``cudaGetDeviceCount``); raises :class:`CudaError` without a driver."""
    return int(rt_call("cudaGetDeviceCount"))


def use_device(device: int) -> None:
    """Make ``device`` current for this thread and initialise its primary context (which the driver
    API calls of the kernel loader and TensorRT then use)."""
    rt_call("cudaSetDevice", device)
    rt_call("cudaFree", 0)  # the documented idiom that forces context creation now, not later


def bind_device(device: int) -> None:
    """Make ``device`` current for the calling thread (``cudaSetDevice``; the current device is
    per host thread, and since CUDA 12 the call also makes its primary context current, which the
    driver-API kernel launches need). Cheap: called before every submit."""
    rt_call("cudaSetDevice", device)


def compute_capability(device: int) -> int:
    """``major * 10 + minor`` of ``device`` (86 for an RTX A2000, 87 for a Jetson Orin)."""
    prop = rt_call("cudaGetDeviceProperties", device)
    return int(prop.major) * 10 + int(prop.minor)


def memory_info() -> tuple[int, int]:
    """(free, total) bytes of the current device (``cudaMemGetInfo``)."""
    free, total = rt_call("cudaMemGetInfo")
    return int(free), int(total)


# --- owned resources ----------------------------------------------------------------------------


class _Owned(abc.ABC):
    """One CUDA resource with one owner: ``free()`` releases it once; ``__del__`` only warns."""

    _what = "CUDA resource"

    def __init__(self) -> None:
        self._freed = False

    @property
    def freed(self) -> bool:
        return self._freed

    def free(self) -> None:
        """Release the resource; later calls do nothing."""
        if self._freed:
            return
        self._freed = True  # first: a release that fails must not be retried by a second free()
        self._release()

    @abc.abstractmethod
    def _release(self) -> None:
        """Give the resource back to CUDA (called once, by :meth:`free`)."""

    def _check_live(self) -> None:
        if self._freed:
            raise RuntimeError(f"this {self._what} was freed")

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.free()

    def __del__(self) -> None:
        if not getattr(self, "_freed", True):
            warnings.warn(f"{self._what} was never freed: call free() or use it as a context "
                          "manager (its memory stays allocated until the process ends)",
                          ResourceWarning, stacklevel=2)


class DeviceBuffer(_Owned):
    """``nbytes`` of device memory (``cudaMalloc``); ``ptr`` is its address."""

    _what = "device buffer"

    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self._freed = True  # nothing to free until the allocation succeeded
        if int(nbytes) != nbytes or nbytes < 1:
            raise ValueError(f"nbytes must be a positive integer, got {nbytes!r}")
        self.nbytes = int(nbytes)
        self.ptr = int(rt_call("cudaMalloc", self.nbytes))
        self._freed = False

    def _release(self) -> None:
        rt_call("cudaFree", self.ptr)


class PinnedBuffer(_Owned):
    """``nbytes`` of page-locked host memory (``cudaHostAlloc``), so that ``cudaMemcpyAsync`` is
    truly asynchronous and can be captured in a graph. :meth:`view` gives NumPy arrays over it,
    valid only until :meth:`free` (the owner keeps them private)."""

    _what = "pinned host buffer"

    def __init__(self, nbytes: int) -> None:
        super().__init__()
        self._freed = True
        if int(nbytes) != nbytes or nbytes < 1:
            raise ValueError(f"nbytes must be a positive integer, got {nbytes!r}")
        self.nbytes = int(nbytes)
        cudart = runtime_api()
        self.ptr = int(rt_call("cudaHostAlloc", self.nbytes, cudart.cudaHostAllocDefault))
        self._freed = False

    def view(self, dtype: type | np.dtype, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous ``dtype`` array of ``shape`` over the start of the buffer."""
        self._check_live()
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        if count * dtype.itemsize > self.nbytes:
            raise ValueError(f"{shape} {dtype} needs {count * dtype.itemsize} bytes, the buffer "
                             f"has {self.nbytes}")
        raw = (ctypes.c_byte * (count * dtype.itemsize)).from_address(self.ptr)
        array: np.ndarray = np.frombuffer(memoryview(raw), dtype=dtype, count=count)
        return array.reshape(shape)

    def _release(self) -> None:
        rt_call("cudaFreeHost", self.ptr)


def native_handle(handle: Any) -> int:
    """The address behind a cuda-bindings handle (``cudaStream_t``, ``cudaGraph_t``...), through
    the documented accessor ``cuda.bindings.utils.get_cuda_native_handle`` (cuda-bindings >= 12.9;
    NVIDIA/cuda-python#773 replaces ``int(handle)`` with it). Older bindings: ``int()``."""
    if isinstance(handle, int):
        return handle
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(handle)
    return int(get_cuda_native_handle(handle))


class Stream(_Owned):
    """A non-blocking CUDA stream (it does not synchronise with the legacy default stream).
    ``handle`` is the ``cudaStream_t``; :attr:`address` is what TensorRT takes. ``capturing`` is
    True while :func:`capture_graph` captures it."""

    _what = "CUDA stream"

    def __init__(self) -> None:
        super().__init__()
        self._freed = True
        self.capturing = False
        cudart = runtime_api()
        self.handle = rt_call("cudaStreamCreateWithFlags", cudart.cudaStreamNonBlocking)
        self._freed = False

    @property
    def address(self) -> int:
        return native_handle(self.handle)

    def synchronize(self) -> None:
        self._check_live()
        rt_call("cudaStreamSynchronize", self.handle)

    def wait_for(self, event: Event) -> None:
        """Make later work on this stream wait for ``event`` (no host synchronisation)."""
        self._check_live()
        rt_call("cudaStreamWaitEvent", self.handle, event.handle, 0)

    def _release(self) -> None:
        rt_call("cudaStreamDestroy", self.handle)


class Event(_Owned):
    """A CUDA event with timing enabled. ``blocking=True`` makes :meth:`synchronize` sleep instead
    of spinning (``cudaEventBlockingSync``), which matters on a small Jetson CPU."""

    _what = "CUDA event"

    def __init__(self, blocking: bool = False) -> None:
        super().__init__()
        self._freed = True
        cudart = runtime_api()
        flags = cudart.cudaEventBlockingSync if blocking else cudart.cudaEventDefault
        self.handle = rt_call("cudaEventCreateWithFlags", flags)
        self._freed = False

    def record(self, stream: Stream | Any) -> None:
        """Record on ``stream`` (a :class:`Stream` or a raw ``cudaStream_t``, never capturing).

        While a :class:`Stream` is being captured the record is made with
        ``cudaEventRecordExternal``, so that it becomes an event-record node and every replay of
        the graph still records (and times) its stages; outside capture the flag is invalid
        ("This flag is invalid when used outside of capture", cuda-bindings
        ``EventRecordFlags.EXTERNAL`` / ``cuEventRecordWithFlags``), so a plain record is made."""
        self._check_live()
        cudart = runtime_api()
        if isinstance(stream, Stream):
            flags = (cudart.cudaEventRecordExternal if stream.capturing
                     else cudart.cudaEventRecordDefault)
            rt_call("cudaEventRecordWithFlags", self.handle, stream.handle, flags)
        else:
            rt_call("cudaEventRecord", self.handle, stream)

    def synchronize(self) -> None:
        self._check_live()
        rt_call("cudaEventSynchronize", self.handle)

    def elapsed_ms(self, later: Event) -> float:
        """Milliseconds from this event to ``later`` (both must have completed)."""
        self._check_live()
        return float(rt_call("cudaEventElapsedTime", self.handle, later.handle))

    def _release(self) -> None:
        rt_call("cudaEventDestroy", self.handle)


# --- copies -------------------------------------------------------------------------------------

#: Copy directions by short name (values are ``cudaMemcpyKind`` member names).
COPY_KINDS: dict[str, str] = {
    "h2d": "cudaMemcpyHostToDevice",
    "d2h": "cudaMemcpyDeviceToHost",
    "d2d": "cudaMemcpyDeviceToDevice",
}


def copy_2d_async(dst: int, dst_pitch: int, src: int, src_pitch: int, row_bytes: int, rows: int,
                  kind: str, stream: Stream) -> None:
    """``rows`` rows of ``row_bytes`` from ``src`` to ``dst`` on ``stream`` (``cudaMemcpy2DAsync``);
    a 1-D copy is one row. ``kind`` is ``"h2d"``, ``"d2h"`` or ``"d2d"``."""
    if kind not in COPY_KINDS:
        raise ValueError(f"kind must be one of {sorted(COPY_KINDS)}, got {kind!r}")
    cudart = runtime_api()
    rt_call("cudaMemcpy2DAsync", dst, dst_pitch, src, src_pitch, row_bytes, rows,
            getattr(cudart.cudaMemcpyKind, COPY_KINDS[kind]), stream.handle)


# --- graphs -------------------------------------------------------------------------------------


class GraphCaptureError(RuntimeError):
    """The work enqueued during a stream capture could not be captured (e.g. an engine whose
    enqueue is not permitted under capture); nothing was left capturing."""


class GraphExec(_Owned):
    """An instantiated CUDA graph (``cudaGraphExec_t``); :meth:`launch` replays it on a stream."""

    _what = "CUDA graph"

    def __init__(self, handle: Any) -> None:
        super().__init__()
        self.handle = handle

    def launch(self, stream: Stream) -> None:
        self._check_live()
        rt_call("cudaGraphLaunch", self.handle, stream.handle)

    def _release(self) -> None:
        rt_call("cudaGraphExecDestroy", self.handle)


def capture_graph(stream: Stream, enqueue: Callable[[], None]) -> GraphExec:
    """Capture what ``enqueue()`` puts on ``stream`` and instantiate it.

    ``cudaStreamCaptureModeThreadLocal``: only this thread's unsafe calls invalidate the capture
    (as trtexec does, ``samples/common/sampleDevice.h``). If ``enqueue`` raises, or the capture was
    invalidated, the capture is ended, any partial graph destroyed, the sticky error cleared, and
    :class:`GraphCaptureError` raised from the cause; the stream is usable again.
    """
    cudart = runtime_api()
    rt_call("cudaStreamBeginCapture", stream.handle,
            cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
    stream.capturing = True
    try:
        enqueue()
    except BaseException as exc:
        stream.capturing = False
        _abandon_capture(cudart, stream)
        raise GraphCaptureError(f"the work could not be captured as a CUDA graph: {exc}") from exc
    stream.capturing = False
    try:
        graph = rt_call("cudaStreamEndCapture", stream.handle)
    except CudaError as exc:
        cudart.cudaGetLastError()
        raise GraphCaptureError(f"the stream capture was invalidated: {exc}") from exc
    try:
        return GraphExec(rt_call("cudaGraphInstantiate", graph, 0))
    except CudaError as exc:
        # A graph that cannot be instantiated (a node type or a size the driver refuses) is a
        # capture that did not work: the caller runs that chain eagerly from now on.
        cudart.cudaGetLastError()
        raise GraphCaptureError(f"instantiating the captured graph failed: {exc}") from exc
    finally:
        # The executable graph is independent of the graph it was made from.
        rt_call("cudaGraphDestroy", graph)


def _abandon_capture(cudart: Any, stream: Stream) -> None:
    # cudaStreamEndCapture returns cudaErrorStreamCaptureInvalidated and a NULL graph when the
    # capture broke, else a graph that must not be used: destroy it. Then clear the error.
    status, graph = cudart.cudaStreamEndCapture(stream.handle)
    if status == cudart.cudaError_t.cudaSuccess and graph is not None and native_handle(graph):
        cudart.cudaGraphDestroy(graph)
    cudart.cudaGetLastError()
