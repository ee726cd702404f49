"""The doctor's probes on this machine (no driver, stub-only TensorRT: the real answers, not
mocks) and its verdicts for a stand-in machine with a GPU."""

from __future__ import annotations

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
