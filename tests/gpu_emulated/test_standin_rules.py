"""Each rule the stand-in enforces, broken on purpose: the violation is reported the way the real
API reports it (an error code in the ``(err, ...)`` tuple, a sticky error at the next
synchronisation, TensorRT returning False). The rules and their sources are listed in
``bpedge_cuda_standin/cudart.py``, ``driver.py`` and ``trt.py``."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest

pytestmark = pytest.mark.gpu_emulated


@pytest.fixture
def rt(machine):
    from cuda.bindings import runtime

    return runtime


def ok(result):
    from cuda.bindings import runtime

    assert result[0] == runtime.cudaError_t.cudaSuccess, result
    return result[1] if len(result) == 2 else result[1:]


def err(result):
    return result[0].name


def _capture(rt, stream, mode="cudaStreamCaptureModeThreadLocal"):
    ok(rt.cudaStreamBeginCapture(stream, getattr(rt.cudaStreamCaptureMode, mode)))


# --- R1: the event-record external flag ------------------------------------------------------


def test_r1_external_event_record_is_invalid_outside_capture(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    event = ok(rt.cudaEventCreateWithFlags(rt.cudaEventDefault))
    assert err(rt.cudaEventRecordWithFlags(event, stream, rt.cudaEventRecordExternal)) == \
        "cudaErrorInvalidValue"
    _capture(rt, stream)
    ok(rt.cudaEventRecordWithFlags(event, stream, rt.cudaEventRecordExternal))  # legal here
    ok(rt.cudaStreamEndCapture(stream))
    assert machine.violations[0].startswith("R1")


# --- R2: unsafe calls and synchronisation during capture, by capture mode -------------------------


def test_r2_allocation_in_a_capture_fails_and_invalidates_it(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    _capture(rt, stream)
    assert err(rt.cudaMalloc(256)) == "cudaErrorStreamCaptureUnsupported"
    assert err(rt.cudaStreamEndCapture(stream)) == "cudaErrorStreamCaptureInvalidated"


def test_r2_sync_of_the_capturing_stream_fails_even_in_relaxed_mode(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    _capture(rt, stream, "cudaStreamCaptureModeRelaxed")
    ok(rt.cudaMalloc(256))  # relaxed: allocation is allowed
    assert err(rt.cudaStreamSynchronize(stream)) == "cudaErrorStreamCaptureUnsupported"
    assert err(rt.cudaStreamEndCapture(stream)) == "cudaErrorStreamCaptureInvalidated"


@pytest.mark.parametrize("mode, other_thread_result", [
    ("cudaStreamCaptureModeGlobal", "cudaErrorStreamCaptureUnsupported"),
    ("cudaStreamCaptureModeThreadLocal", "cudaSuccess"),
])
def test_r2_capture_modes_decide_what_other_threads_may_do(rt, machine, mode,
                                                           other_thread_result):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    _capture(rt, stream, mode)
    seen = []
    worker = threading.Thread(target=lambda: seen.append(rt.cudaMalloc(64)[0].name))
    worker.start()
    worker.join()
    assert seen == [other_thread_result]
    end = rt.cudaStreamEndCapture(stream)[0].name
    assert end == ("cudaSuccess" if other_thread_result == "cudaSuccess"
                   else "cudaErrorStreamCaptureInvalidated")


def test_r2_bpedge_capture_reports_an_invalidated_capture_and_leaves_the_stream_usable(machine):
    from bpedge._gpu._cuda import DeviceBuffer, GraphCaptureError, Stream, capture_graph

    with Stream() as stream:
        with pytest.raises(GraphCaptureError, match="cudaErrorStreamCaptureUnsupported"):
            capture_graph(stream, lambda: DeviceBuffer(64).free())
        assert not stream.capturing
        stream.synchronize()  # not capturing any more


# --- R3: pageable memory -------------------------------------------------------------------------


def test_r3_an_async_copy_of_pageable_memory_cannot_be_captured(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    device = ok(rt.cudaMalloc(64))
    pageable = np.arange(64, dtype=np.uint8)
    pinned = ok(rt.cudaHostAlloc(64, rt.cudaHostAllocDefault))
    h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    ok(rt.cudaMemcpyAsync(device, pageable.ctypes.data, 64, h2d, stream))  # legal, not captured
    _capture(rt, stream)
    ok(rt.cudaMemcpyAsync(device, pinned, 64, h2d, stream))
    assert err(rt.cudaMemcpyAsync(device, pageable.ctypes.data, 64, h2d, stream)) == \
        "cudaErrorStreamCaptureUnsupported"
    assert err(rt.cudaStreamEndCapture(stream)) == "cudaErrorStreamCaptureInvalidated"


def test_r8_a_2d_copys_pitch_above_mem_pitch_is_refused_a_1d_copy_has_none(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    device = ok(rt.cudaMalloc(64))
    pinned = ok(rt.cudaHostAlloc(64, rt.cudaHostAllocDefault))
    h2d = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
    ok(rt.cudaMemcpy2DAsync(device, 64, pinned, 64, 64, 1, h2d, stream))
    # one row whose pitch is its whole size: what a batch copied as one row used to send
    assert err(rt.cudaMemcpy2DAsync(device, 2**31, pinned, 2**31, 64, 1, h2d, stream)) == \
        "cudaErrorInvalidPitchValue"
    ok(rt.cudaMemcpyAsync(device, pinned, 64, h2d, stream))
    ok(rt.cudaStreamSynchronize(stream))


# --- R4: events recorded in a capture --------------------------------------------------------------


def test_r4_an_event_recorded_in_a_capture_cannot_be_waited_for(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    event = ok(rt.cudaEventCreateWithFlags(rt.cudaEventDefault))
    _capture(rt, stream)
    ok(rt.cudaEventRecord(event, stream))
    ok(rt.cudaStreamEndCapture(stream))
    assert err(rt.cudaEventSynchronize(event)) == "cudaErrorCapturedEvent"
    assert err(rt.cudaEventElapsedTime(event, event)) == "cudaErrorCapturedEvent"


# --- R5: use after free ---------------------------------------------------------------------------


def test_r5_handles_and_pointers_used_after_free(rt, machine):
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ok(rt.cudaStreamDestroy(stream))
    assert err(rt.cudaStreamSynchronize(stream)) == "cudaErrorInvalidResourceHandle"
    pointer = ok(rt.cudaMalloc(64))
    ok(rt.cudaFree(pointer))
    assert err(rt.cudaFree(pointer)) == "cudaErrorInvalidValue"
    host = np.zeros(64, np.uint8)
    assert err(rt.cudaMemcpy(host.ctypes.data, pointer, 64,
                             rt.cudaMemcpyKind.cudaMemcpyDeviceToHost)) == "cudaErrorInvalidValue"


def test_r5_a_kernel_on_freed_memory_is_a_sticky_illegal_address_at_the_next_sync(machine):
    from bpedge.kernels._launch_args import paste_args, paste_launch

    from bpedge._gpu._cuda import CudaError, DeviceBuffer, Stream
    from bpedge._gpu._kernels import CascadeKernels, kernel_images

    with Stream() as stream, CascadeKernels(kernel_images(86)) as kernels:
        buffers = [DeviceBuffer(96 * 96 * 4) for _ in range(4)]
        prob, boxes, scores, masks = (b.ptr for b in buffers)
        buffers[3].free()  # the masks buffer is gone before the kernel runs
        args = paste_args(prob=prob, boxes=boxes, scores=scores, masks=masks, batch=1, width=32,
                          height=32, pitch=32, crop_w=96, crop_h=96, threshold=0.5,
                          score_threshold=0.5)
        kernels.launch("bp_paste_f32", args, paste_launch(1, 32, 32), stream)  # enqueued: fine
        with pytest.raises(CudaError, match="cudaErrorIllegalAddress"):
            stream.synchronize()
        with pytest.raises(CudaError, match="cudaErrorIllegalAddress"):
            DeviceBuffer(16)  # sticky: the context is unusable from now on
        machine.sticky = None  # let the fixture's stand-in be torn down
        for b in buffers[:3]:
            b.free()


# --- R6 / D1 / D2: the current device per thread --------------------------------------------------


def test_r6_the_current_device_is_per_thread_and_starts_at_zero(rt, machine):
    ok(rt.cudaSetDevice(1))
    assert ok(rt.cudaGetDevice()) == 1
    seen = []
    worker = threading.Thread(target=lambda: seen.append(rt.cudaGetDevice()[1]))
    worker.start()
    worker.join()
    assert seen == [0]
    stream_on_1 = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    ok(rt.cudaSetDevice(0))
    event_on_0 = ok(rt.cudaEventCreateWithFlags(rt.cudaEventDefault))
    assert err(rt.cudaEventRecord(event_on_0, stream_on_1)) == "cudaErrorInvalidResourceHandle"


def test_d1_d2_kernel_launches_need_the_streams_device_current(machine):
    from cuda.bindings import driver

    from bpedge._gpu._cuda import CudaError, Stream, bind_device
    from bpedge._gpu._kernels import CascadeKernels, kernel_images

    images = kernel_images(86)
    outcome = []

    def fresh_thread() -> None:  # no runtime call yet: no context for the driver
        outcome.append(driver.cuModuleLoadData(images["paste.cu"])[0].name)
    worker = threading.Thread(target=fresh_thread)
    worker.start()
    worker.join()
    assert outcome == ["CUDA_ERROR_INVALID_CONTEXT"]

    bind_device(1)
    with Stream() as stream_on_1, CascadeKernels(images) as kernels_on_1:
        bind_device(0)
        from bpedge.kernels._launch_args import paste_args, paste_launch

        args = paste_args(prob=1, boxes=1, scores=1, masks=1, batch=1, width=32, height=32,
                          pitch=32, crop_w=96, crop_h=96, threshold=0.5, score_threshold=0.5)
        with pytest.raises(CudaError, match="CUDA_ERROR_INVALID_HANDLE"):
            kernels_on_1.launch("bp_paste_f32", args, paste_launch(1, 32, 32), stream_on_1)
        bind_device(1)


# --- R7: (err, ...) tuples and handles ------------------------------------------------------------


def test_r7_every_call_returns_an_error_first_tuple_and_int_on_a_handle_warns(rt, machine):
    from bpedge._gpu._cuda import native_handle

    result = rt.cudaMalloc(16)
    assert isinstance(result, tuple) and result[0] == rt.cudaError_t.cudaSuccess
    with pytest.raises(TypeError):
        int(rt.cudaMalloc(16))  # the tuple is not the pointer
    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    with pytest.warns(DeprecationWarning, match="get_cuda_native_handle"):
        int(stream)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        assert native_handle(stream) == stream._value  # bpedge's accessor does not warn


# --- T1 / T2 / T3: TensorRT's rules ----------------------------------------------------------------


@pytest.fixture
def context(machine, emulated_bundle):
    """An execution context of the detector fp32 engine with its buffers bound."""
    from bpedge._gpu._engine import TrtRuntime
    from bpedge.bundle import Bundle

    bundle = Bundle.open(emulated_bundle)
    entry = next(e for e in bundle.manifest.engines
                 if e.model == "detector" and e.precision == "fp32")
    engine = TrtRuntime().deserialize(bundle.read_verified(entry.file), "detector")
    from cuda.bindings import runtime

    wrapped = engine.create_context()
    for name, info in engine.tensors.items():
        size = 4 * int(np.prod([abs(d) for d in info.shape]))
        assert wrapped.context.set_tensor_address(name, runtime.cudaMalloc(size)[1])
    yield wrapped.context
    engine.close()


def test_t1_an_enqueue_is_needed_before_capture_after_a_shape_change(rt, machine, context):
    from bpedge._gpu._cuda import native_handle

    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    assert context.set_input_shape("image", (1, *context.engine.get_tensor_shape("image")[1:]))
    _capture(rt, stream)
    assert context.execute_async_v3(native_handle(stream)) is False
    assert err(rt.cudaStreamEndCapture(stream)) == "cudaErrorStreamCaptureInvalidated"
    assert context.execute_async_v3(native_handle(stream)) is True  # the warm-up, outside
    _capture(rt, stream)
    assert context.execute_async_v3(native_handle(stream)) is True  # now it can be captured
    ok(rt.cudaStreamEndCapture(stream))
    assert [v.split(":")[0] for v in machine.violations] == ["T1"]


def test_t2_t3_enqueue_needs_the_engines_device_and_every_shape(rt, machine, context):
    from bpedge._gpu._cuda import native_handle

    stream = ok(rt.cudaStreamCreateWithFlags(rt.cudaStreamNonBlocking))
    assert context.execute_async_v3(native_handle(stream)) is False  # T3: no input shape
    assert context.set_input_shape("image", (99, 1, 1, 1)) is False  # T3: outside the profile
    assert context.set_input_shape("image", (1, *context.engine.get_tensor_shape("image")[1:]))
    ok(rt.cudaSetDevice(1))
    assert context.execute_async_v3(native_handle(stream)) is False  # T2: device 1 is current
    ok(rt.cudaSetDevice(0))
    assert context.execute_async_v3(native_handle(stream)) is True
    ok(rt.cudaStreamSynchronize(stream))


# --- T5: explicit quantisation is symmetric INT8 and strongly typed ----------------------------


def _qdq_onnx(zero_point_type: int) -> bytes:
    """x -> QuantizeLinear -> DequantizeLinear -> y, zero point 0 of the given ONNX type."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
         helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"], name="dq")],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
         helper.make_tensor("zp", zero_point_type, [], [0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def test_t5_asymmetric_qdq_is_a_parse_error_and_qdq_needs_strong_typing(machine):
    import tensorrt as trt
    from onnx import TensorProto

    logger = trt.Logger()
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert parser.parse(_qdq_onnx(TensorProto.UINT8)) is False  # the CPU runtimes' U8 form
    assert parser.num_errors == 2 and "symmetric" in parser.get_error(0)

    weak = builder.create_network(0)  # symmetric, but not strongly typed
    assert trt.OnnxParser(weak, logger).parse(_qdq_onnx(TensorProto.INT8)) is True
    assert builder.build_serialized_network(weak, builder.create_builder_config()) is None
    assert any("strong typing" in line for line in machine.trt_log)

    strong = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    assert trt.OnnxParser(strong, logger).parse(_qdq_onnx(TensorProto.INT8)) is True
    assert builder.build_serialized_network(strong, builder.create_builder_config()) is not None
