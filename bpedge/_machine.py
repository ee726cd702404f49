"""The one probe of this machine's CUDA and TensorRT: what is there, as facts, never raising.

``bpedge._engine_key`` (which engine fits, and why none does) and ``bpedge._doctor`` (the report
and its fixes) word these facts for their readers; neither asks the driver or imports TensorRT
itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["CudaDevice", "CudaProbe", "TensorRTProbe", "probe_cuda", "probe_tensorrt_module"]


@dataclass(frozen=True)
class CudaDevice:
    """One CUDA device: ``error`` names the CUDA error when its properties could not be read
    (the other fields are then empty)."""

    index: int
    name: str = ""
    compute_capability: str = ""
    sm_count: int = 0
    memory_bytes: int = 0
    error: str | None = None


@dataclass(frozen=True)
class CudaProbe:
    """What ``cuda.bindings.runtime`` says. ``missing``: why cuda-python cannot be imported;
    ``failure``: an exception raised while asking (``Type: message``); ``count_error`` /
    ``count_error_text``: the CUDA error name and text of ``cudaGetDeviceCount``; ``driver`` /
    ``runtime``: CUDA versions (``"12.4"``; ``driver`` None without a driver)."""

    missing: str | None = None
    failure: str | None = None
    driver: str | None = None
    runtime: str | None = None
    count_error: str | None = None
    count_error_text: str | None = None
    devices: tuple[CudaDevice, ...] = ()


@dataclass(frozen=True)
class TensorRTProbe:
    """The ``tensorrt`` module when its API is there (``module``, ``version``), else why not:
    ``missing`` (the ImportError), ``broken`` (another import failure) or ``stubs_only``
    (``tensorrt-stubs`` makes ``import tensorrt`` succeed with no ``Builder``)."""

    module: Any = None
    version: str | None = None
    missing: str | None = None
    broken: str | None = None
    stubs_only: bool = False


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{(v % 1000) // 10}"


def _error_text(cudart: Any, err: Any) -> str | None:
    try:
        _, text = cudart.cudaGetErrorString(err)
        return bytes(text).decode("utf-8", "replace")
    except Exception:  # noqa: BLE001 - the error name alone is still a useful message
        return None


def probe_cuda() -> CudaProbe:
    """Driver, CUDA runtime and every device (name, compute capability, SMs, memory)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        return CudaProbe(missing=str(exc))
    ok = cudart.cudaError_t.cudaSuccess
    try:
        err, runtime = cudart.cudaRuntimeGetVersion()
        runtime_text = _cuda_version(runtime) if err == ok else None
        err, driver = cudart.cudaDriverGetVersion()
        # cudaDriverGetVersion answers success and 0 when no driver is installed.
        driver_text = _cuda_version(driver) if err == ok and driver > 0 else None
        err, count = cudart.cudaGetDeviceCount()
        if err != ok:
            return CudaProbe(driver=driver_text, runtime=runtime_text,
                             count_error=getattr(err, "name", str(err)),
                             count_error_text=_error_text(cudart, err))
        devices = []
        for d in range(count):
            err, prop = cudart.cudaGetDeviceProperties(d)
            if err != ok:
                devices.append(CudaDevice(d, error=getattr(err, "name", str(err))))
                continue
            name = bytes(prop.name).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
            devices.append(CudaDevice(d, name=name or f"cuda-device-{d}",
                                      compute_capability=f"{int(prop.major)}.{int(prop.minor)}",
                                      sm_count=int(prop.multiProcessorCount),
                                      memory_bytes=int(prop.totalGlobalMem)))
        return CudaProbe(driver=driver_text, runtime=runtime_text, devices=tuple(devices))
    except Exception as exc:  # noqa: BLE001 - any failure to reach the driver means "no GPU here"
        return CudaProbe(failure=f"{type(exc).__name__}: {exc}")


def probe_tensorrt_module() -> TensorRTProbe:
    """Import ``tensorrt`` and check for its API (``tensorrt.Builder``)."""
    try:
        import tensorrt
    except ImportError as exc:
        return TensorRTProbe(missing=str(exc))
    except Exception as exc:  # noqa: BLE001 - e.g. a TensorRT wheel whose libraries fail to load
        return TensorRTProbe(broken=f"{type(exc).__name__}: {exc}")
    if not hasattr(tensorrt, "Builder"):
        return TensorRTProbe(stubs_only=True)
    version = getattr(tensorrt, "__version__", None)
    return TensorRTProbe(module=tensorrt, version=version if isinstance(version, str) else None)
