"""The checked-call layer and resource ownership of bpedge._gpu._cuda.

The no-GPU tests call the real CUDA runtime of cuda-bindings, which answers
cudaErrorInsufficientDriver here, and the real driver API, which cannot load libcuda: nothing is
mocked there. Graph capture's clean-up paths use a stand-in runtime module that records calls."""

from __future__ import annotations

import ctypes
import gc
import types
import warnings

import numpy as np
import pytest

from bpedge._gpu import _cuda
from bpedge._gpu._cuda import (
    CudaError,
    DeviceBuffer,
    Event,
    GraphCaptureError,
    PinnedBuffer,
    Stream,
    capture_graph,
    device_count,
    drv_call,
    memory_info,
    use_device,
)


@pytest.mark.usefixtures("without_gpu")
class TestWithoutADriver:
    def test_device_count_names_the_call_and_the_cuda_error(self):
        with pytest.raises(CudaError) as info:
            device_count()
        assert info.value.call == "cudaGetDeviceCount"
        assert info.value.code == "cudaErrorInsufficientDriver"
        assert str(info.value).startswith("cudaGetDeviceCount failed: cudaErrorInsufficientDriver (")
        assert "driver version is insufficient" in str(info.value)

    @pytest.mark.parametrize("make, call", [
        (lambda: DeviceBuffer(1024), "cudaMalloc"),
        (lambda: PinnedBuffer(1024), "cudaHostAlloc"),
        (lambda: Stream(), "cudaStreamCreateWithFlags"),
        (lambda: Event(blocking=True), "cudaEventCreateWithFlags"),
        (lambda: use_device(0), "cudaSetDevice"),
        (lambda: memory_info(), "cudaMemGetInfo"),
    ])
    def test_every_resource_refuses_with_the_failing_call_and_leaks_nothing(self, make, call):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            with pytest.raises(CudaError, match=f"^{call} failed: cudaErrorInsufficientDriver"):
                make()
            gc.collect()  # a half-built resource must not warn about a leak from __del__

    def test_a_driver_call_without_libcuda_is_a_cuda_error_naming_the_call(self):
        with pytest.raises(CudaError) as info:
            drv_call("cuInit", 0)
        assert info.value.call == "cuInit"
        assert info.value.code == "DynamicLibNotFoundError"
        assert isinstance(info.value.__cause__, RuntimeError)


def test_sizes_are_checked_before_any_cuda_call():
    with pytest.raises(ValueError, match="positive integer"):
        DeviceBuffer(0)
    with pytest.raises(ValueError, match="positive integer"):
        PinnedBuffer(2.5)  # type: ignore[arg-type]


def test_wrong_arguments_are_not_disguised_as_cuda_errors():
    # A TypeError from the bindings is a bug in the caller: it must propagate as is.
    with pytest.raises(TypeError):
        _cuda.rt_call("cudaMalloc", "not a size")


class Counted(_cuda._Owned):
    _what = "counted thing"

    def __init__(self) -> None:
        super().__init__()
        self.releases = 0

    def _release(self) -> None:
        self.releases += 1


def test_free_is_idempotent_and_the_context_manager_frees():
    thing = Counted()
    thing.free()
    thing.free()
    assert thing.releases == 1 and thing.freed
    with pytest.raises(RuntimeError, match="was freed"):
        thing._check_live()
    with Counted() as managed:
        pass
    assert managed.releases == 1


def test_del_only_warns_about_a_leak_and_never_frees():
    thing = Counted()
    counter = thing  # keep a handle on the count after __del__
    with pytest.warns(ResourceWarning, match="counted thing was never freed"):
        thing.__del__()
    assert counter.releases == 0
    thing.free()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        thing.__del__()


def test_pinned_views_alias_the_buffer_and_are_bounded():
    backing = (ctypes.c_ubyte * 64)()
    pinned = object.__new__(PinnedBuffer)
    pinned._freed, pinned.ptr, pinned.nbytes = False, ctypes.addressof(backing), 64
    floats = pinned.view(np.float32, (4, 4))
    floats[1, 2] = 1.5
    assert np.frombuffer(backing, np.float32)[6] == 1.5
    assert pinned.view(np.uint8, (64,)).base is not None
    with pytest.raises(ValueError, match="needs 68 bytes"):
        pinned.view(np.float32, (17,))
    pinned._freed = True  # it was never CUDA memory: nothing to release
    with pytest.raises(RuntimeError, match="was freed"):
        pinned.view(np.uint8, (1,))


# --- graph capture's clean-up, against a runtime stand-in -----------------------------------------


class RecordingRuntime:
    """The runtime calls capture_graph makes, recorded; statuses are the real enum's."""

    def __init__(self, end_status: str = "cudaSuccess") -> None:
        from cuda.bindings import runtime

        self.cudaError_t = runtime.cudaError_t
        self.cudaStreamCaptureMode = runtime.cudaStreamCaptureMode
        self.calls: list[str] = []
        self.end_status = getattr(runtime.cudaError_t, end_status)

    def _ok(self, name: str, *values):
        self.calls.append(name)
        return (self.cudaError_t.cudaSuccess, *values)

    def cudaStreamBeginCapture(self, stream, mode):
        assert mode == self.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        return self._ok("begin")

    def cudaStreamEndCapture(self, stream):
        self.calls.append("end")
        if self.end_status != self.cudaError_t.cudaSuccess:
            return (self.end_status, None)
        return (self.end_status, 7)

    def cudaGraphInstantiate(self, graph, flags):
        return self._ok("instantiate", 70)

    def cudaGraphDestroy(self, graph):
        return self._ok(f"destroy {graph}")

    def cudaGetLastError(self):
        return self._ok("clear error")

    def cudaGetErrorString(self, status):
        return (self.cudaError_t.cudaSuccess, b"stand-in")

    def cudaGraphExecDestroy(self, graph_exec):
        return self._ok(f"exec destroy {graph_exec}")


@pytest.fixture
def runtime(monkeypatch):
    pytest.importorskip("cuda.bindings")

    def install(**kw):
        fake = RecordingRuntime(**kw)
        monkeypatch.setattr(_cuda, "runtime_api", lambda: fake)
        return fake

    return install


STREAM = types.SimpleNamespace(handle=3)


def test_capture_instantiates_and_drops_the_intermediate_graph(runtime):
    fake = runtime()
    enqueued = []
    graph = capture_graph(STREAM, lambda: enqueued.append("chain"))
    assert enqueued == ["chain"]
    assert fake.calls == ["begin", "end", "instantiate", "destroy 7"]
    assert graph.handle == 70
    graph.free()
    assert fake.calls[-1] == "exec destroy 70"


def test_an_enqueue_that_fails_under_capture_ends_the_capture_and_clears_the_error(runtime):
    fake = runtime()

    def enqueue():
        raise RuntimeError("execute_async_v3 failed for the detector engine")

    with pytest.raises(GraphCaptureError, match="execute_async_v3") as info:
        capture_graph(STREAM, enqueue)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert fake.calls == ["begin", "end", "destroy 7", "clear error"]


def test_an_invalidated_capture_is_reported_and_nothing_is_instantiated(runtime):
    fake = runtime(end_status="cudaErrorStreamCaptureInvalidated")
    with pytest.raises(GraphCaptureError, match="cudaErrorStreamCaptureInvalidated"):
        capture_graph(STREAM, lambda: None)
    assert fake.calls == ["begin", "end", "clear error"]
