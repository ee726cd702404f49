"""Every case of tests/gpu/test_cascade_gpu.py, run on the CPU: the real TensorRTCascade (slots,
pinned and device buffers, streams, events, CUDA graphs, NVRTC-compiled kernels) against the
rule-checking stand-in, compared frame by frame with the ONNX Runtime cascade.

The kernels run through their host emulation and the engines through ONNX Runtime on the
bundle's own ONNX, so the masks must agree with the ONNX Runtime cascade almost exactly; what
these tests prove is the wiring (addresses, strides, shapes, stream order, graph capture and
replay, the device per thread), and that no documented CUDA/TensorRT rule is broken on the way.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bpedge._cascade_spec import CascadeSpec
from bpedge._metrics import dice
from bpedge.bundle import Bundle

pytestmark = pytest.mark.gpu_emulated

MAX_BATCH = 4  # as the engines were built in conftest.py
STAGES = ("upload", "preprocess", "detector", "crop", "segmenter", "paste", "download", "total")


def _cascade(bundle_path, precision: str = "fp32", **kw):
    from bpedge._gpu.cascade import TensorRTCascade

    bundle = Bundle.open(bundle_path)
    return TensorRTCascade(bundle, CascadeSpec.from_manifest(bundle.manifest), precision,
                           MAX_BATCH, **kw)


def _onnxruntime(bundle_path, precision: str = "fp32"):
    from bpedge import Segmenter

    return Segmenter.from_bundle(bundle_path, backend="onnxruntime", precision=precision)


def _agrees(got, want, spec: CascadeSpec, precision: str) -> None:
    """The emulated GPU result against the ONNX Runtime cascade's, for one frame."""
    np.testing.assert_allclose(got.box, want.box, atol=1.0)
    assert got.score == pytest.approx(want.score, abs=1e-2 if precision == "fp16" else 1e-4)
    if abs(want.score - spec.score_threshold) > 1e-2:
        assert got.present == want.present
    if want.present and got.present:
        assert dice(got.mask, want.mask) > (0.98 if precision == "fp16" else 0.99)
    assert got.mask.shape == want.mask.shape and got.mask.dtype == np.uint8


def _same(a, b) -> None:
    np.testing.assert_array_equal(a.mask, b.mask)
    assert a.box == b.box and a.score == b.score and a.present == b.present


def _no_violations(machine) -> None:
    assert machine.violations == [], machine.violations
    assert machine.sticky is None


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_single_frames_match_the_onnxruntime_cascade(machine, emulated_bundle, small_frames,
                                                     precision):
    spec = CascadeSpec.from_manifest(Bundle.open(emulated_bundle).manifest)
    with _onnxruntime(emulated_bundle, precision) as cpu, \
            _cascade(emulated_bundle, precision) as gpu:
        for grey in small_frames:
            got = gpu.run(grey)
            _agrees(got, cpu(grey), spec, precision)
            assert all(got.timings[stage] >= 0.0 for stage in STAGES)
        assert gpu._slots[0].graphs.graphs() == 1, "the steady frame size is replayed as a graph"
    _no_violations(machine)


def test_graphs_replay_what_direct_enqueues_compute(machine, emulated_bundle, small_frames):
    with _cascade(emulated_bundle, use_graphs=False) as direct, \
            _cascade(emulated_bundle) as graphed:
        for grey in small_frames[:3] * 2:
            _same(graphed.run(grey), direct.run(grey))
        assert graphed._slots[0].graphs.graphs() == 1
        assert direct._slots[0].graphs.graphs() == 0
    assert machine.instantiate_calls == 1
    _no_violations(machine)


def test_a_batch_matches_single_frames(machine, emulated_bundle, small_frames):
    spec = CascadeSpec.from_manifest(Bundle.open(emulated_bundle).manifest)
    frames = small_frames[:MAX_BATCH + 2]  # one full batch and a partial one
    with _onnxruntime(emulated_bundle) as cpu, _cascade(emulated_bundle) as gpu:
        batched = gpu.run_batch(frames)
        assert len(batched) == len(frames)
        for grey, got in zip(frames, batched):
            _agrees(got, cpu(grey), spec, "fp32")
    _no_violations(machine)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
def test_stream_keeps_order_across_frame_sizes(machine, emulated_bundle, small_frames, depth):
    import cv2

    frames = [g if i % 3 else cv2.resize(g, (96, 72)) for i, g in enumerate(small_frames[:6])]
    with _cascade(emulated_bundle, depth=1) as gpu:
        one_by_one = [gpu.run(f) for f in frames]
        streamed = list(gpu.stream(iter(frames), depth=depth))
        assert len(gpu._slots) == max(1, depth)
        batched = gpu.run_batch(frames)  # two sizes: batches grouped by size, over the slots
    assert len(streamed) == len(batched) == len(frames)
    for a, b, c in zip(one_by_one, streamed, batched):
        _same(a, b)
        _same(a, c)
    _no_violations(machine)


class DeviceFrame:
    """A uint8 frame in the stand-in's device memory, offered through
    ``__cuda_array_interface__`` v3 (row pitch ``pitch``, written on ``stream``)."""

    def __init__(self, grey: np.ndarray, pitch: int, stream: int | None) -> None:
        from cuda.bindings import runtime as rt

        h, w = grey.shape
        padded = np.zeros((h, pitch), np.uint8)
        padded[:, :w] = grey
        err, self.ptr = rt.cudaMalloc(padded.nbytes)
        assert err == rt.cudaError_t.cudaSuccess
        (err,) = rt.cudaMemcpy(self.ptr, padded.ctypes.data, padded.nbytes,
                               rt.cudaMemcpyKind.cudaMemcpyHostToDevice)
        assert err == rt.cudaError_t.cudaSuccess
        self.__cuda_array_interface__ = {
            "shape": (h, w), "typestr": "|u1", "data": (self.ptr, False), "version": 3,
            "strides": None if pitch == w else (pitch, 1), "stream": stream,
        }

    def free(self) -> None:
        from cuda.bindings import runtime as rt

        assert rt.cudaFree(self.ptr)[0] == rt.cudaError_t.cudaSuccess


@pytest.mark.parametrize("pitch_extra, stream", [(0, None), (64, 1)])
def test_device_resident_frames_give_the_host_result(machine, emulated_bundle, small_frames,
                                                     pitch_extra, stream):
    grey = small_frames[1]
    with _cascade(emulated_bundle) as gpu:
        want = gpu.run(grey)
        frame = DeviceFrame(grey, grey.shape[1] + pitch_extra, stream)
        for _ in range(2):  # the second one replays the device-source graph
            _same(gpu.run_device(frame), want)
        frame.free()
    _no_violations(machine)


@pytest.mark.parametrize("device", [0, 1])
def test_another_thread_and_another_device(machine, emulated_bundle, small_frames, device):
    from cuda.bindings import runtime as rt

    with _cascade(emulated_bundle, device=device) as gpu:
        want = [gpu.run(g) for g in small_frames[:2]]
        rt.cudaSetDevice(1 - device)  # the caller moves on to the other device
        got: list = []
        errors: list[BaseException] = []

        def work() -> None:  # a fresh thread: no current device of its own
            try:
                got.extend(gpu.run(g) for g in small_frames[:2])
                got.extend(gpu.stream(iter(small_frames[:2]), depth=2))
            except BaseException as exc:  # noqa: BLE001 - re-raised below, in the test thread
                errors.append(exc)
        worker = threading.Thread(target=work)
        worker.start()
        worker.join()
        assert not errors, errors
        for a, b in zip(got, want * 2):
            _same(a, b)
        same_thread = gpu.run(small_frames[0])  # and here, with the other device current
        _same(same_thread, want[0])
    _no_violations(machine)


def test_close_releases_everything_and_a_new_cascade_runs(machine, emulated_bundle,
                                                         small_frames):
    from cuda.bindings import runtime as rt

    free_before = rt.cudaMemGetInfo()[1]
    gpu = _cascade(emulated_bundle, depth=3)
    first = list(gpu.stream(iter(small_frames[:4]), depth=3))
    assert rt.cudaMemGetInfo()[1] < free_before
    gpu.close()
    gpu.close()
    assert rt.cudaMemGetInfo()[1] == free_before
    assert not machine.allocations, "pinned or device memory left allocated"
    with pytest.raises(RuntimeError, match="closed"):
        gpu.run(small_frames[0])
    with _cascade(emulated_bundle) as again:
        for a, grey in zip(first, small_frames[:4]):
            _same(again.run(grey), a)
    _no_violations(machine)


def test_auto_backend_takes_the_emulated_gpu(machine, emulated_bundle, small_frames):
    from bpedge import Segmenter

    with Segmenter.from_bundle(emulated_bundle, precision="fp32") as seg:
        assert seg.backend == "tensorrt" and seg.fallback_reason is None
        result = seg(small_frames[0])
    with _onnxruntime(emulated_bundle) as cpu:
        spec = CascadeSpec.from_manifest(Bundle.open(emulated_bundle).manifest)
        _agrees(result, cpu(small_frames[0]), spec, "fp32")
    _no_violations(machine)


def test_a_frame_larger_than_the_buffers_regrows_them_and_rebinds_the_engines(
        machine, emulated_bundle, small_frames):
    import cv2

    spec = CascadeSpec.from_manifest(Bundle.open(emulated_bundle).manifest)
    large = cv2.resize(small_frames[2], (600, 440))  # more pixels than the initial 420x580
    with _onnxruntime(emulated_bundle) as cpu, _cascade(emulated_bundle) as gpu:
        first = [gpu.run(small_frames[0]) for _ in range(2)]  # warm-up, then a captured graph
        addresses = dict(gpu._slots[0].device)
        _agrees(gpu.run(large), cpu(large), spec, "fp32")
        assert gpu._slots[0].device != addresses, "the slot's buffers were reallocated"
        for _ in range(2):  # old graphs are void: warm up and capture again at the new addresses
            _same(gpu.run(small_frames[0]), first[0])
    _no_violations(machine)
