"""Fixtures for the GPU cascade tests: most run here, without a GPU, and assert what the code does
when there is none; the ones marked ``gpu`` need an NVIDIA GPU with TensorRT and skip elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

GPU_SKIP_REASON = "needs an NVIDIA GPU with TensorRT"
HERE = Path(__file__).resolve().parent


def gpu_with_tensorrt() -> bool:
    """True when TensorRT (the real one, not the stubs) and a usable CUDA device are both here."""
    from bpedge._engine_key import TargetUnavailable, require_target

    try:
        require_target(0)
    except TargetUnavailable:
        return False
    return True


def cuda_device_present() -> bool:
    try:
        from cuda.bindings import runtime
    except ImportError:
        return False
    err, count = runtime.cudaGetDeviceCount()
    return err == runtime.cudaError_t.cudaSuccess and count > 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` skip, with the reason, where TensorRT or a GPU is missing (decided
    before any fixture runs, so no engine is built and no model trained for nothing)."""
    # The hook sees the whole session's items: only this directory's are decided here.
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None
                 and HERE in item.path.parents]
    if gpu_items and not gpu_with_tensorrt():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))


@pytest.fixture
def without_gpu() -> None:
    """For tests of the no-GPU paths, which call the real CUDA runtime and expect it to refuse."""
    pytest.importorskip("cuda.bindings", reason="the no-GPU paths are tested through cuda-bindings")
    if cuda_device_present():
        pytest.skip("asserts the behaviour without a CUDA device, and this machine has one")


@pytest.fixture
def without_gpu_tensorrt() -> None:
    if gpu_with_tensorrt():
        pytest.skip("asserts the behaviour without TensorRT or a GPU, and this machine has both")
