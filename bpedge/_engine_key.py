"""The key that names a TensorRT engine for one target: GPU, compute capability, SM count,
TensorRT version, precision and the largest batch it was built for.

Engines do not carry across GPU models or TensorRT versions, so every engine in a bundle is
recorded with the key it was built for and the runtime only loads one whose key matches the
machine it finds. :func:`current_key` asks the real GPU (cuda-python runtime API) and TensorRT;
both imports are lazy so ``import bpedge`` works on machines without either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bpedge._machine import TensorRTProbe, probe_cuda, probe_tensorrt_module

PRECISIONS = ("fp16", "fp32", "int8")
#: The bundle ONNX file each engine precision is built from (``bpedge._manifest.ONNX_PRECISIONS``):
#: INT8 engines from the symmetric QDQ form, the only one TensorRT's explicit quantisation takes.
ENGINE_ONNX = {"fp16": "fp16", "fp32": "fp32", "int8": "int8_symmetric"}

INSTALL_HINT = ("pip install 'bpedge[tensorrt]' on a machine with an NVIDIA GPU and a CUDA 13 "
                "driver (R580 or newer), or 'bpedge[tensorrt-cu12]' with a CUDA 12 driver")

_CC_PATTERN = re.compile(r"^[0-9]+\.[0-9]+$")
_MODEL_PATTERN = re.compile(r"^[a-z][a-z0-9_]*$")


class TargetUnavailable(RuntimeError):
    """TensorRT or a usable NVIDIA GPU is missing: the message says which and how to fix it."""


@dataclass(frozen=True)
class GpuInfo:
    """What identifies a GPU for engine compatibility (from ``cudaGetDeviceProperties``)."""

    name: str
    compute_capability: str
    sm_count: int


@dataclass(frozen=True)
class EngineKey:
    """What an engine was built for (or what a caller asks for).

    ``compute_capability`` is ``"major.minor"`` (``"8.6"``); ``trt_version`` is TensorRT's full
    ``__version__`` (``"10.13.0.35"``), because plans are only guaranteed to load in the exact
    version that built them; ``max_batch`` is the largest batch the engine's profile allows.
    """

    gpu_name: str
    compute_capability: str
    sm_count: int
    trt_version: str
    precision: str
    max_batch: int

    def __post_init__(self) -> None:
        if not isinstance(self.gpu_name, str) or not self.gpu_name.strip():
            raise ValueError(f"gpu_name must be a non-empty string, got {self.gpu_name!r}")
        if not isinstance(self.compute_capability, str) or not _CC_PATTERN.match(
            self.compute_capability
        ):
            raise ValueError(
                "compute_capability must be 'major.minor' such as '8.6', "
                f"got {self.compute_capability!r}"
            )
        if not _is_int(self.sm_count) or self.sm_count < 1:
            raise ValueError(f"sm_count must be an integer >= 1, got {self.sm_count!r}")
        if not isinstance(self.trt_version, str) or not re.match(r"^[0-9][0-9A-Za-z.+-]*$",
                                                                 self.trt_version):
            raise ValueError(
                f"trt_version must be a version string such as '10.13.0.35', got "
                f"{self.trt_version!r}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not _is_int(self.max_batch) or self.max_batch < 1:
            raise ValueError(f"max_batch must be an integer >= 1, got {self.max_batch!r}")

    def mismatches(self, wanted: EngineKey) -> list[str]:
        """Why an engine built for ``self`` cannot serve ``wanted`` (empty when it can).

        Everything must be equal except the batch: an engine built for a larger batch serves a
        smaller one.
        """
        reasons = []
        if self.gpu_name != wanted.gpu_name:
            reasons.append(f"built for GPU {self.gpu_name!r}, this is {wanted.gpu_name!r}")
        if self.compute_capability != wanted.compute_capability:
            reasons.append(
                f"built for compute capability {self.compute_capability}, this GPU is "
                f"{wanted.compute_capability}"
            )
        if self.sm_count != wanted.sm_count:
            reasons.append(f"built for {self.sm_count} SMs, this GPU has {wanted.sm_count}")
        if self.trt_version != wanted.trt_version:
            reasons.append(
                f"built with TensorRT {self.trt_version}, this is TensorRT {wanted.trt_version}"
            )
        if self.precision != wanted.precision:
            reasons.append(f"precision {self.precision}, asked for {wanted.precision}")
        if self.max_batch < wanted.max_batch:
            reasons.append(f"max batch {self.max_batch}, asked for {wanted.max_batch}")
        return reasons

    def matches(self, wanted: EngineKey) -> bool:
        """True when an engine built for ``self`` can serve ``wanted`` (see :meth:`mismatches`)."""
        return not self.mismatches(wanted)

    def describe(self) -> str:
        """One line for messages: ``NVIDIA RTX A2000 (CC 8.6, 26 SMs), TensorRT 10.13.0.35, fp16,
        batch <= 8``."""
        return (
            f"{self.gpu_name} (CC {self.compute_capability}, {self.sm_count} SMs), TensorRT "
            f"{self.trt_version}, {self.precision}, batch <= {self.max_batch}"
        )

    def file_name(self, model: str) -> str:
        """A filesystem-safe engine file name, e.g.
        ``detector.fp16.sm86.rtx-a2000.26sm.trt10.13.0.35.engine``.

        The batch is not part of the name: a bundle holds one engine per (model, target,
        precision) and a rebuild for a larger batch replaces it.
        """
        if not _MODEL_PATTERN.match(model):
            raise ValueError(f"model must be a lower-case identifier, got {model!r}")
        cc = self.compute_capability.replace(".", "")
        trt = re.sub(r"[^0-9A-Za-z.]+", "-", self.trt_version)
        gpu = f"{gpu_slug(self.gpu_name)}.{self.sm_count}sm"
        return f"{model}.{self.precision}.sm{cc}.{gpu}.trt{trt}.engine"

    def to_json(self) -> dict[str, Any]:
        return {
            "gpu_name": self.gpu_name,
            "compute_capability": self.compute_capability,
            "sm_count": self.sm_count,
            "trt_version": self.trt_version,
            "precision": self.precision,
            "max_batch": self.max_batch,
        }


def gpu_slug(name: str) -> str:
    """``"NVIDIA RTX A2000"`` -> ``"rtx-a2000"``: lower case, vendor prefix dropped, every run of
    other characters made one ``-``."""
    slug = name.strip().lower()
    slug = re.sub(r"^nvidia[\s_-]+", "", slug)
    slug = re.sub(r"[^a-z0-9]+", "-", slug).strip("-")
    return slug or "gpu"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- asking the machine -----------------------------------------------------------------------


def load_tensorrt() -> Any:
    """The real ``tensorrt`` module, or :class:`TargetUnavailable`.

    ``import tensorrt`` alone proves nothing: the ``tensorrt-stubs`` package makes it succeed as
    an empty namespace package, so the check is for the API itself (``tensorrt.Builder``).
    """
    found = probe_tensorrt_module()
    problem = _tensorrt_problem(found)
    if problem is not None:
        raise TargetUnavailable(f"{problem}; fix: {INSTALL_HINT}")
    return found.module


def tensorrt_version(trt: Any) -> str:
    """TensorRT's full version string (``"10.13.0.35"``) from the module."""
    version = getattr(trt, "__version__", None)
    if not isinstance(version, str) or not version:
        raise TargetUnavailable(
            f"the tensorrt module has no __version__ (got {version!r}); fix: {INSTALL_HINT}"
        )
    return version


def query_gpu(device: int = 0) -> GpuInfo:
    """Name, compute capability and SM count of CUDA device ``device``, or
    :class:`TargetUnavailable` naming the CUDA error (e.g. ``cudaErrorInsufficientDriver`` where
    there is no driver)."""
    info, problem = _probe_gpu(device)
    if info is None:
        raise TargetUnavailable(f"{problem}; fix: {INSTALL_HINT}")
    return info


def require_target(device: int = 0) -> tuple[Any, GpuInfo]:
    """The ``tensorrt`` module and the GPU, checked together so that one message names
    everything missing (TensorRT, the GPU, or both) and the fix."""
    problems = []
    trt = probe_tensorrt_module()
    trt_problem = _tensorrt_problem(trt)
    if trt_problem is not None:
        problems.append(trt_problem)
    gpu, gpu_problem = _probe_gpu(device)
    if gpu_problem is not None:
        problems.append(gpu_problem)
    if problems or gpu is None:
        raise TargetUnavailable("; ".join(problems) + f"; fix: {INSTALL_HINT}")
    return trt.module, gpu


def current_key(precision: str, max_batch: int, device: int = 0) -> EngineKey:
    """The key of an engine that would fit this machine's GPU ``device`` and TensorRT.

    Raises :class:`TargetUnavailable` (what is missing + the fix) without TensorRT or a GPU,
    and ``ValueError`` for a bad ``precision`` or ``max_batch``.
    """
    trt, gpu = require_target(device)
    return key_for(gpu, tensorrt_version(trt), precision, max_batch)


def key_for(gpu: GpuInfo, trt_version: str, precision: str, max_batch: int) -> EngineKey:
    """The :class:`EngineKey` for a known GPU and TensorRT version."""
    return EngineKey(
        gpu_name=gpu.name,
        compute_capability=gpu.compute_capability,
        sm_count=gpu.sm_count,
        trt_version=trt_version,
        precision=precision,
        max_batch=max_batch,
    )


def _tensorrt_problem(found: TensorRTProbe) -> str | None:
    if found.missing is not None:
        return f"TensorRT is not installed ({found.missing})"
    if found.broken is not None:
        return f"TensorRT does not import ({found.broken})"
    if found.stubs_only:
        # tensorrt-stubs installs tensorrt/__init__.pyi only: the import works, the API is absent.
        return ("TensorRT is not installed (the 'tensorrt' package found has no TensorRT API, "
                "e.g. type stubs only)")
    return None


def _probe_gpu(device: int) -> tuple[GpuInfo | None, str | None]:
    if not _is_int(device) or device < 0:
        raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")
    cuda = probe_cuda()
    if cuda.missing is not None:
        return None, f"cuda-python is not installed ({cuda.missing}), so no GPU can be used"
    if cuda.failure is not None:
        return None, f"no usable NVIDIA GPU ({cuda.failure})"
    if cuda.count_error is not None:
        text = f": {cuda.count_error_text}" if cuda.count_error_text else ""
        return None, f"no usable NVIDIA GPU ({cuda.count_error}{text})"
    if device >= len(cuda.devices):
        return None, f"no CUDA device {device} (this machine has {len(cuda.devices)})"
    found = cuda.devices[device]
    if found.error is not None:
        return None, f"cannot read CUDA device {device} ({found.error})"
    return GpuInfo(name=found.name, compute_capability=found.compute_capability,
                   sm_count=found.sm_count), None
