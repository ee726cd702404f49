"""The doctor's probes on this machine (no driver, stub-only TensorRT: the real answers, not
mocks) and its verdicts for a stand-in machine with a GPU."""

from __future__ import annotations

import pytest

from bpedge._doctor import _Gpu, diagnose, probe_gpu, probe_tensorrt


def _has_real_tensorrt() -> bool:
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


def test_this_machine_without_a_driver_or_tensorrt():
    gpu = probe_gpu()
    report = diagnose()
    if gpu.devices:  # run on a GPU machine: the verdict follows what is there
        assert report.verdict("tensorrt fp16").runs == _has_real_tensorrt()
        return
    assert gpu.problem == "no NVIDIA driver" or "no usable NVIDIA GPU" in (gpu.problem or "")
    findings = {f.topic: f for f in report.findings}
    assert findings["NVIDIA driver"].ok is False and findings["NVIDIA driver"].fix
    trt = report.verdict("tensorrt fp16")
    assert not trt.runs and "no NVIDIA driver" in trt.reason and trt.fix
    assert report.verdict("onnxruntime fp32").runs
    assert report.verdict("pytorch eager").runs
    assert report.to_json()["versions"]["bpedge"]


def test_stub_only_tensorrt_is_not_taken_for_tensorrt():
    version, problem = probe_tensorrt()
    if _has_real_tensorrt():
        assert version and problem is None
    else:
        assert version is None and "not installed" in str(problem)


def test_a_machine_with_everything_runs_tensorrt():
    report = diagnose(
        gpu=lambda: _Gpu("12.4", "12.6", (("NVIDIA RTX A4000 (compute capability 8.6, 48 SMs, "
                                          "15.7 GiB)"),), None),
        nvrtc=lambda: ("12.6", None),
        tensorrt=lambda: ("10.13.0.35", None),
        onnxruntime=lambda: ("1.20.0", ("CUDAExecutionProvider", "CPUExecutionProvider"), None),
        torch=lambda: (None, None, "ImportError: No module named 'torch'"),
    )
    for precision in ("fp16", "fp32"):
        verdict = report.verdict(f"tensorrt {precision}")
        assert verdict.runs and "10.13.0.35" in verdict.reason and verdict.fix is None
    torch = report.verdict("pytorch eager")
    assert not torch.runs and "bpedge[train]" in str(torch.fix)


def test_missing_pieces_are_each_named_with_a_fix():
    report = diagnose(
        gpu=lambda: _Gpu("12.4", "12.6", ("NVIDIA L4 (compute capability 8.9, 58 SMs, 22 GiB)",),
                         None),
        nvrtc=lambda: (None, "libnvrtc could not be loaded"),
        tensorrt=lambda: (None, "not installed"),
        onnxruntime=lambda: (None, (), "ImportError: onnxruntime"),
        torch=lambda: ("2.5.0", "CPU-only build, 4 threads", None),
    )
    trt = report.verdict("tensorrt fp16")
    assert not trt.runs and "TensorRT not installed" in trt.reason and "NVRTC" in trt.reason
    assert "bpedge[tensorrt]" in str(trt.fix) and "cuda-python" in str(trt.fix)
    assert not report.verdict("onnxruntime fp32").runs


def _gpu_machine(driver="12.4", runtime="12.6", nvrtc="12.6", headers=("/cuda/include", None),
                 trt_cuda=None):
    return diagnose(
        gpu=lambda: _Gpu(driver, runtime, ("NVIDIA L4 (compute capability 8.9, 58 SMs, 22 GiB)",),
                         None),
        nvrtc=lambda: (nvrtc, None),
        tensorrt=lambda: ("10.13.0.35", None),
        onnxruntime=lambda: ("1.20.0", ("CPUExecutionProvider",), None),
        torch=lambda: ("2.5.0", "CPU-only build, 4 threads", None),
        headers=lambda: headers,
        tensorrt_cuda=lambda: trt_cuda,
    )


def test_the_install_line_matches_the_drivers_cuda_major():
    for driver, extra in (("12.4", "bpedge[tensorrt-cu12]"), ("13.0", "bpedge[tensorrt]")):
        findings = {f.topic: f for f in _gpu_machine(driver=driver).findings}
        assert f"pip install '{extra}'" in findings["install line"].detail


@pytest.mark.parametrize("machine, words", [
    ({"runtime": "13.0", "nvrtc": "13.0"}, "cuda-bindings is for CUDA 13.0, this driver supports"),
    ({"nvrtc": "13.0"}, "NVRTC 13.0 and cuda-bindings for CUDA 12.6 are of different"),
    ({"headers": (None, "cuda_fp16.h for CUDA 12 not found")}, "CUDA headers: cuda_fp16.h"),
    ({"trt_cuda": 13}, "TensorRT is built for CUDA 13, this driver supports CUDA 12.4"),
])
def test_each_piece_of_the_cuda_stack_is_checked_with_the_matching_install_line(machine, words):
    report = _gpu_machine(**machine)
    for precision in ("fp16", "fp32"):
        verdict = report.verdict(f"tensorrt {precision}")
        assert not verdict.runs and words in verdict.reason
        assert "pip install 'bpedge[tensorrt-cu12]'" in str(verdict.fix)


def test_a_consistent_cuda_12_stack_runs_and_shows_its_headers():
    report = _gpu_machine(trt_cuda=12)
    assert report.verdict("tensorrt fp16").runs
    findings = {f.topic: f for f in report.findings}
    assert findings["CUDA headers"].ok and findings["CUDA headers"].detail == "/cuda/include"
    assert findings["TensorRT"].detail == "10.13.0.35 (for CUDA 12)"
