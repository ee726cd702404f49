"""The defects of the TensorRT path that only show at run time, each reproduced on the stand-in:
a failed graph instantiation, ``backend="auto"`` when building the GPU cascade fails, and the
deprecated ``int()`` on cuda-bindings handles."""

from __future__ import annotations

import logging
import warnings

import pytest

from bpedge._cascade_spec import CascadeSpec
from bpedge.bundle import Bundle

pytestmark = pytest.mark.gpu_emulated


def _cascade(bundle_path, **kw):
    from bpedge._gpu.cascade import TensorRTCascade

    bundle = Bundle.open(bundle_path)
    return TensorRTCascade(bundle, CascadeSpec.from_manifest(bundle.manifest), "fp32", 4, **kw)


def test_a_graph_that_fails_to_instantiate_runs_eagerly_for_that_key_once(
        machine, emulated_bundle, small_frames, caplog):
    machine.fail_instantiate = True
    with _cascade(emulated_bundle, use_graphs=False) as direct, _cascade(emulated_bundle) as gpu:
        with caplog.at_level(logging.WARNING, logger="bpedge"):
            got = [gpu.run(g) for g in small_frames[:2] * 2]
        want = [direct.run(g) for g in small_frames[:2] * 2]
        assert gpu._slots[0].graphs.graphs() == 0
    for a, b in zip(got, want):
        assert (a.mask == b.mask).all() and a.box == b.box
    assert machine.instantiate_calls == 1, "the key must not be captured again every frame"
    warned = [r for r in caplog.records if "without a CUDA graph" in r.getMessage()]
    assert len(warned) == 1 and "cudaGraphInstantiate" in warned[0].getMessage()
    assert machine.violations == []


def test_no_deprecated_int_on_handles_while_running(machine, emulated_bundle, small_frames):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with _cascade(emulated_bundle) as gpu:
            for grey in small_frames[:3]:
                gpu.run(grey)


def _break_kernel_cache(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    cache.write_text("a file where the kernel cache directory should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    # A compile must happen for the cache to be written: no earlier compile may be reused.
    monkeypatch.setattr("bpedge.kernels._nvrtc._BASE_OPTIONS",
                        ("--std=c++17", "--ptxas-options=-v", "-DBPEDGE_TEST_UNCACHED=1"))


def _bad_plan(monkeypatch, machine):
    import tensorrt

    monkeypatch.setattr(tensorrt.Runtime, "deserialize_cuda_engine", lambda self, plan: None)


def _no_memory(monkeypatch, machine):
    for device in machine.devices:
        device.used = device.total - 1024  # every allocation beyond 1 KiB fails


def _nvrtc_error(monkeypatch, machine):
    from bpedge.kernels import _nvrtc

    def refuse(*args, **kwargs):
        raise _nvrtc.KernelCompileError("NVRTC could not compile preprocess.cu for sm_86",
                                         "error: expected a ';'")
    monkeypatch.setattr(_nvrtc, "_compile", refuse)
    monkeypatch.setattr(_nvrtc, "_read_cache", lambda directory, key: None)


@pytest.mark.parametrize("breakage, words", [
    (_bad_plan, "deserialize_cuda_engine returned None"),
    (_no_memory, "cudaErrorMemoryAllocation"),
    (_nvrtc_error, "NVRTC could not compile"),
    ("cache", "kernel"),
])
def test_auto_falls_back_to_onnxruntime_saying_why_for_any_gpu_failure(
        machine, emulated_bundle, small_frames, monkeypatch, tmp_path, caplog, breakage, words,
        without_openvino):
    from bpedge import Segmenter

    if breakage == "cache":
        _break_kernel_cache(monkeypatch, tmp_path)
    else:
        breakage(monkeypatch, machine)
    with caplog.at_level(logging.INFO, logger="bpedge"):
        seg = Segmenter.from_bundle(emulated_bundle, precision="fp32")
    with seg:
        assert seg.backend == "onnxruntime"
        assert seg.fallback_reason is not None and words in seg.fallback_reason
        assert seg(small_frames[0]).mask.shape == small_frames[0].shape
    assert any(words in r.getMessage() for r in caplog.records)
    with pytest.raises(RuntimeError, match="backend='tensorrt' cannot run"):
        Segmenter.from_bundle(emulated_bundle, backend="tensorrt", precision="fp32")
    assert not machine.allocations, "a failed GPU cascade must release what it allocated"
