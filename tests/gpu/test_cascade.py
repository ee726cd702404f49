"""TensorRTCascade and tensorrt_unavailable_reason where there is no GPU (this machine: TensorRT
stubs only, a CUDA runtime that answers cudaErrorInsufficientDriver), plus the pure parts: device
frames through __cuda_array_interface__, batch grouping, and the release of everything set up
before a failure in the constructor."""

from __future__ import annotations

import gc
import types
import warnings

import numpy as np
import pytest

from bpedge._cascade_spec import CascadeSpec
from bpedge._engine_key import EngineKey
from bpedge._gpu import cascade as cascade_module
from bpedge._gpu._chain import DeviceSource
from bpedge._gpu._engine import TensorInfo, TensorRTError
from bpedge._gpu.cascade import (
    TensorRTCascade,
    batch_groups,
    device_source,
    tensorrt_unavailable_reason,
)

SPEC = CascadeSpec(detector_input_hw=(256, 352), detector_mean=None, detector_std=None,
                   crop_hw=(96, 96), crop_mean=None, crop_std=None, score_threshold=0.5,
                   mask_threshold=0.5)
KEY = EngineKey("NVIDIA RTX A2000", "8.6", 26, "10.13.0.35", "fp16", 1)


class UntouchedBundle:
    """Where TensorRT or the GPU is missing, the bundle must not even be looked at."""

    def __getattr__(self, name):
        raise AssertionError(f"the bundle was used ({name}) although nothing can run")


class FakeBundle:
    """find_engine / engine_mismatch_reason / read_verified, with engines for ``have``."""

    def __init__(self, have=("detector", "segmenter")) -> None:
        self.have = set(have)

    def find_engine(self, model, key):
        if model not in self.have:
            return None
        return types.SimpleNamespace(file=f"{model}.engine")

    def engine_mismatch_reason(self, model, key):
        return f"the bundle has no {model} engine: build one here with `bpedge build-engines b`"

    def read_verified(self, file):
        return f"plan of {file}".encode()


@pytest.mark.usefixtures("without_gpu_tensorrt")
class TestOnThisMachine:
    def test_the_reason_names_tensorrt_the_gpu_and_the_fix(self):
        reason = tensorrt_unavailable_reason(UntouchedBundle(), "fp16")
        assert reason is not None
        assert "TensorRT is not installed" in reason
        assert "stubs" in reason
        if "cuda-python is not installed" not in reason:
            assert "cudaErrorInsufficientDriver" in reason or "no usable NVIDIA GPU" in reason
        assert "fix: pip install 'bpedge[tensorrt]'" in reason

    def test_constructing_the_cascade_raises_why_and_leaks_nothing(self):
        with warnings.catch_warnings():
            warnings.simplefilter("error", ResourceWarning)
            with pytest.raises(RuntimeError, match="cannot run here: TensorRT is not installed"):
                TensorRTCascade(UntouchedBundle(), SPEC, "fp16")  # type: ignore[arg-type]
            gc.collect()


def test_bad_arguments_are_value_errors_not_reasons():
    with pytest.raises(ValueError, match="precision"):
        tensorrt_unavailable_reason(UntouchedBundle(), "bf16")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_batch"):
        tensorrt_unavailable_reason(UntouchedBundle(), "fp16", 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="depth"):
        TensorRTCascade(UntouchedBundle(), SPEC, depth=0)  # type: ignore[arg-type]


def test_a_missing_engine_is_the_reason_once_tensorrt_and_the_gpu_are_there(monkeypatch):
    monkeypatch.setattr(cascade_module, "current_key", lambda precision, batch, device: KEY)
    reason = tensorrt_unavailable_reason(FakeBundle(have={"detector"}), "fp16")  # type: ignore[arg-type]
    assert reason is not None and "no segmenter engine" in reason and "detector" not in reason


def test_nothing_is_missing_when_every_piece_is_there(monkeypatch):
    pytest.importorskip("cuda.bindings")
    from bpedge.kernels._nvrtc import NvrtcUnavailableError, cuda_include_dir

    try:
        cuda_include_dir()
    except NvrtcUnavailableError as exc:
        pytest.skip(f"needs the CUDA headers for NVRTC: {exc}")
    monkeypatch.setattr(cascade_module, "current_key", lambda precision, batch, device: KEY)
    assert tensorrt_unavailable_reason(FakeBundle(), "fp16") is None  # type: ignore[arg-type]


def test_a_gpu_the_kernels_cannot_be_compiled_for_is_a_reason(monkeypatch):
    pytest.importorskip("cuda.bindings")
    kepler = EngineKey("Tesla K80", "3.7", 13, "10.13.0.35", "fp16", 1)
    monkeypatch.setattr(cascade_module, "current_key", lambda precision, batch, device: kepler)
    reason = tensorrt_unavailable_reason(FakeBundle(), "fp16")  # type: ignore[arg-type]
    assert reason is not None and "cannot be compiled for this GPU" in reason


# --- the constructor releases what it set up when a later step fails -------------------------


class Tracker:
    def __init__(self) -> None:
        self.events: list[str] = []


class FakeKernels:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        tracker.events.append("kernels loaded")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.tracker.events.append("kernels freed")


class FakeEngine:
    def __init__(self, tracker: Tracker, label: str, tensors) -> None:
        self.tracker, self.label, self.tensors = tracker, label, tensors

    def profile_max_batch(self, name):
        return 8

    def close(self):
        self.tracker.events.append(f"{self.label} engine closed")


def tensors(prob_dtype=np.float16):
    f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
    return {
        "detector": {"image": TensorInfo("image", True, f16, (-1, 1, 256, 352)),
                     "score": TensorInfo("score", False, f32, (-1,)),
                     "box": TensorInfo("box", False, f32, (-1, 4))},
        "segmenter": {"crop": TensorInfo("crop", True, f16, (-1, 1, 96, 96)),
                      "prob": TensorInfo("prob", False, np.dtype(prob_dtype), (-1, 1, 96, 96))},
    }


def install_fakes(monkeypatch, tracker, *, fail_model=None, prob_dtype=np.float16):
    monkeypatch.setattr(cascade_module, "tensorrt_unavailable_reason", lambda *a: None)
    monkeypatch.setattr(cascade_module, "use_device", lambda d: tracker.events.append("device"))
    monkeypatch.setattr(cascade_module, "current_key", lambda precision, batch, device: KEY)
    monkeypatch.setattr(cascade_module, "compute_capability", lambda d: 86)
    monkeypatch.setattr(cascade_module, "kernel_images", lambda arch: {})
    monkeypatch.setattr(cascade_module, "CascadeKernels", lambda images: FakeKernels(tracker))
    tables = tensors(prob_dtype)

    class FakeRuntime:
        def deserialize(self, plan, label):
            if label == fail_model:
                raise TensorRTError(f"deserialize_cuda_engine returned None for the {label} engine")
            tracker.events.append(f"{label} engine loaded")
            return FakeEngine(tracker, label, tables[label])

    monkeypatch.setattr(cascade_module, "TrtRuntime", FakeRuntime)


def test_a_failure_after_setup_began_releases_everything_in_reverse(monkeypatch):
    tracker = Tracker()
    install_fakes(monkeypatch, tracker, fail_model="segmenter")
    with pytest.raises(TensorRTError, match="segmenter engine"):
        TensorRTCascade(FakeBundle(), SPEC, "fp16")  # type: ignore[arg-type]
    assert tracker.events == ["device", "kernels loaded", "detector engine loaded",
                              "detector engine closed", "kernels freed"]


def test_an_engine_that_does_not_fit_the_kernels_is_refused_and_released(monkeypatch):
    tracker = Tracker()
    install_fakes(monkeypatch, tracker, prob_dtype=np.int32)
    with pytest.raises(TensorRTError, match="'prob' is int32"):
        TensorRTCascade(FakeBundle(), SPEC, "fp16")  # type: ignore[arg-type]
    assert tracker.events[-3:] == ["segmenter engine closed", "detector engine closed",
                                   "kernels freed"]


@pytest.mark.usefixtures("without_gpu")
def test_a_slot_that_cannot_get_a_stream_releases_engines_and_kernels(monkeypatch):
    # Everything before the slots is faked; the slot's cudaStreamCreateWithFlags is the real call.
    from bpedge._gpu._cuda import CudaError

    tracker = Tracker()
    install_fakes(monkeypatch, tracker)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(CudaError, match="^cudaStreamCreateWithFlags failed"):
            TensorRTCascade(FakeBundle(), SPEC, "fp16")  # type: ignore[arg-type]
        gc.collect()
    assert tracker.events[-3:] == ["segmenter engine closed", "detector engine closed",
                                   "kernels freed"]


# --- device frames --------------------------------------------------------------------------------


class DeviceArray:
    def __init__(self, **cai) -> None:
        self.__cuda_array_interface__ = {"shape": (420, 580), "typestr": "|u1",
                                         "data": (0x7F0000000000, False), "version": 3, **cai}


def test_a_contiguous_device_frame_has_its_width_as_pitch():
    source, stream = device_source(DeviceArray(stream=None))
    assert source == DeviceSource(0x7F0000000000, 420, 580, 580) and stream is None


def test_a_producer_that_names_no_stream_is_waited_for_on_the_legacy_default_stream():
    assert "stream" not in DeviceArray(version=2).__cuda_array_interface__
    assert device_source(DeviceArray(version=2))[1] == 1


def test_a_pitched_single_channel_frame_keeps_its_pitch_and_producer_stream():
    source, stream = device_source(DeviceArray(shape=(420, 580, 1), strides=(640, 1, 1), stream=5))
    assert (source.pitch, source.height, source.width) == (640, 420, 580) and stream == 5
    _, legacy = device_source(DeviceArray(stream=1))
    assert legacy == 1


@pytest.mark.parametrize("frame, message", [
    (np.zeros((4, 4), np.uint8), "__cuda_array_interface__"),
    (DeviceArray(typestr="<f4"), "must be uint8"),
    (DeviceArray(typestr="|b1"), "must be uint8"),
    (DeviceArray(shape=(420, 580, 3)), r"\(H, W\) or \(H, W, 1\)"),
    (DeviceArray(shape=(1, 580)), "sides must lie in"),
    (DeviceArray(strides=(1, 420)), "pixels must be adjacent"),
    (DeviceArray(strides=(500, 1)), "row stride 500 is smaller than its width 580"),
    (DeviceArray(data=(0, False)), "NULL"),
    (DeviceArray(stream=0), "stream 0 is disallowed"),
    (DeviceArray(mask=(1, 2)), "masked"),
])
def test_device_frames_are_checked_with_a_clear_value_error(frame, message):
    with pytest.raises(ValueError, match=message):
        device_source(frame)


def test_batches_group_equal_sizes_in_order_of_first_appearance():
    shapes = [(2, 2), (3, 3), (2, 2), (2, 2), (3, 3), (2, 2)]
    assert batch_groups(shapes, 2) == [[0, 2], [1, 4], [3, 5]]
    assert batch_groups(shapes, 1) == [[i] for i in range(6)]
    assert batch_groups(shapes, 8) == [[0, 2, 3, 5], [1, 4]]
    assert batch_groups([], 4) == []
