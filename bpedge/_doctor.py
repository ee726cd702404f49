"""``bpedge doctor``: what this machine has, which backends will run, and the fix for each gap.

Every probe is cheap and side-effect free, imports its library lazily, and turns any failure into
a finding with the reason, so the doctor itself never fails on a machine that lacks something.
TensorRT is judged by its API (``tensorrt.Builder``), not by ``import tensorrt`` succeeding: the
``tensorrt-stubs`` type stubs make that import work as an empty namespace package.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpedge._bench.machine import library_versions, machine_info
from bpedge._engine_key import INSTALL_HINT, PRECISIONS
from bpedge._machine import probe_cuda, probe_tensorrt_module

#: What a ``doctor --json`` report says it is, so a later ``--json`` knows the file is one.
SCHEMA = "bpedge-doctor"
_MAX_REPORT_BYTES = 1024 * 1024
TRAIN_HINT = "pip install 'bpedge[train]'"
DRIVER_HINT = ("install the NVIDIA driver for your GPU (Linux: the distribution's nvidia-driver "
               "package or NVIDIA's .run installer; Jetson: JetPack), then reboot")


@dataclass(frozen=True)
class Finding:
    """One fact about the machine. ``ok`` is None for plain information (CPU, memory)."""

    topic: str
    detail: str
    ok: bool | None = None
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"topic": self.topic, "ok": self.ok, "detail": self.detail, "fix": self.fix}


@dataclass(frozen=True)
class BackendVerdict:
    """Whether one backend will run here, why (not), and what would make it run."""

    backend: str
    runs: bool
    reason: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"backend": self.backend, "runs": self.runs, "reason": self.reason, "fix": self.fix}


@dataclass(frozen=True)
class DoctorReport:
    findings: tuple[Finding, ...]
    backends: tuple[BackendVerdict, ...]
    versions: dict[str, str | None] = field(default_factory=dict)

    def verdict(self, backend: str) -> BackendVerdict:
        for v in self.backends:
            if v.backend == backend:
                return v
        raise ValueError(f"unknown backend {backend!r}; choose one of "
                         f"{[v.backend for v in self.backends]}")

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "findings": [f.to_json() for f in self.findings],
                "backends": [b.to_json() for b in self.backends], "versions": self.versions}


def is_doctor_report(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a regular file holding a ``doctor --json`` report (its schema), the
    only kind of file ``doctor --json`` replaces."""
    p = Path(path)
    try:
        info = os.lstat(p)
        if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_REPORT_BYTES:
            return False
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("schema") == SCHEMA


# --- probes: each returns what it found, never raises ---------------------------------------


@dataclass(frozen=True)
class _Gpu:
    driver: str | None            # "12.4" (the CUDA version the driver supports), None: no driver
    runtime: str | None           # CUDA runtime the bindings load
    devices: tuple[str, ...]      # "NVIDIA H100 (compute capability 9.0, 132 SMs, 79.6 GiB)"
    problem: str | None           # why no GPU can be used


def probe_gpu() -> _Gpu:
    """Driver, CUDA runtime and devices (from the shared probe, :mod:`bpedge._machine`)."""
    cuda = probe_cuda()
    if cuda.missing is not None:
        return _Gpu(None, None, (), f"cuda-python is not installed ({cuda.missing})")
    if cuda.failure is not None:
        return _Gpu(None, None, (), f"CUDA runtime query failed ({cuda.failure})")
    if cuda.count_error is not None:
        problem = ("no NVIDIA driver" if cuda.count_error == "cudaErrorInsufficientDriver"
                   and not cuda.driver else f"no usable NVIDIA GPU ({cuda.count_error})")
        return _Gpu(cuda.driver, cuda.runtime, (), problem)
    devices = tuple(
        f"device {d.index}: properties unreadable ({d.error})" if d.error is not None else
        f"{d.name} (compute capability {d.compute_capability}, {d.sm_count} SMs, "
        f"{d.memory_bytes / 2**30:.1f} GiB)"
        for d in cuda.devices
    )
    return _Gpu(cuda.driver, cuda.runtime, devices,
                None if devices else "the driver reports no CUDA device")


def probe_nvrtc() -> tuple[str | None, str | None]:
    """(NVRTC version, problem)."""
    try:
        from bpedge.kernels import nvrtc_version

        major, minor = nvrtc_version()
        return f"{major}.{minor}", None
    except Exception as exc:  # noqa: BLE001 - NvrtcUnavailableError, or a broken wheel
        return None, str(exc).splitlines()[0]


def probe_headers() -> tuple[str | None, str | None]:
    """(directory of the CUDA headers NVRTC compiles the kernels with, problem): the headers must
    be of the loaded NVRTC's CUDA major."""
    try:
        from bpedge.kernels import cuda_include_dir, header_cuda_major

        directory = cuda_include_dir()
        return f"{directory} (CUDA {header_cuda_major(directory)})", None
    except Exception as exc:  # noqa: BLE001 - NvrtcUnavailableError, or a broken wheel
        return None, str(exc).splitlines()[0]


def probe_tensorrt_cuda() -> int | None:
    """The CUDA major the installed TensorRT wheels are built for (``tensorrt-cu12`` /
    ``tensorrt-cu13`` and their ``_libs``), None when unknown (not from pip, or absent)."""
    from importlib import metadata

    for major in (13, 12):
        for name in (f"tensorrt-cu{major}", f"tensorrt-cu{major}-libs"):
            try:
                metadata.version(name)
            except metadata.PackageNotFoundError:
                continue
            return major
    return None


def _major(version: str | None) -> int | None:
    return int(version.split(".")[0]) if version and version.split(".")[0].isdigit() else None


def install_line(driver: str | None) -> str:
    """The pip line that installs TensorRT, cuda-bindings, NVRTC and the CUDA headers of one
    CUDA major that this driver (the CUDA version it supports, e.g. ``"12.4"``) can run."""
    major = _major(driver)
    if major is None:
        return INSTALL_HINT
    if major < 12:
        return (f"update the NVIDIA driver (it supports CUDA {driver}; bpedge needs CUDA 12 or "
                "13), then pip install 'bpedge[tensorrt-cu12]'")
    if major == 12:
        return ("pip install 'bpedge[tensorrt-cu12]' (TensorRT, cuda-python's cuda-bindings, "
                "NVRTC and the CUDA headers for CUDA 12; not 'bpedge[tensorrt]', which is the "
                "CUDA 13 set this driver cannot run)")
    return ("pip install 'bpedge[tensorrt]' (the same as 'bpedge[tensorrt-cu13]': TensorRT, "
            "cuda-python's cuda-bindings, NVRTC and the CUDA headers for CUDA 13)")


def _stack_problems(g: _Gpu, nvrtc: str | None, trt_cuda: int | None) -> list[str]:
    """Pieces of different CUDA majors, or newer than the driver: each a reason not to run."""
    driver, runtime, compiler = _major(g.driver), _major(g.runtime), _major(nvrtc)
    problems = []
    if driver is not None and runtime is not None and runtime > driver:
        problems.append(f"cuda-bindings is for CUDA {g.runtime}, this driver supports CUDA "
                        f"{g.driver}")
    if compiler is not None and runtime is not None and compiler != runtime:
        problems.append(f"NVRTC {nvrtc} and cuda-bindings for CUDA {g.runtime} are of different "
                        "CUDA majors")
    if trt_cuda is not None and driver is not None and trt_cuda > driver:
        problems.append(f"TensorRT is built for CUDA {trt_cuda}, this driver supports CUDA "
                        f"{g.driver}")
    return problems


def probe_tensorrt() -> tuple[str | None, str | None]:
    """(TensorRT version, problem): real only when the module has the ``Builder`` API."""
    found = probe_tensorrt_module()
    if found.missing is not None:
        return None, "not installed"
    if found.broken is not None:
        return None, f"import fails ({found.broken})"
    if found.stubs_only:
        return None, ("not installed: the 'tensorrt' module found has no TensorRT API (type stubs "
                      "only, e.g. tensorrt-stubs)")
    return found.version or "unknown version", None


def probe_onnxruntime() -> tuple[str | None, tuple[str, ...], str | None]:
    """(version, providers, problem)."""
    try:
        import onnxruntime as ort

        return ort.__version__, tuple(ort.get_available_providers()), None
    except Exception as exc:  # noqa: BLE001 - ImportError or a broken native library
        return None, (), f"{type(exc).__name__}: {exc}"


def probe_openvino() -> tuple[str | None, tuple[str, ...], str | None]:
    """(version, CPU optimisation capabilities such as FP32/BF16/INT8, problem)."""
    try:
        import openvino as ov
    except ImportError as exc:
        return None, (), f"not installed ({exc})"
    try:
        from bpedge._openvino import cpu_capabilities  # the process's one Core

        caps = cpu_capabilities()
    except RuntimeError as exc:
        return ov.__version__, (), f"the CPU plugin does not start ({exc})"
    return ov.__version__, caps, None


def probe_torch() -> tuple[str | None, str | None, str | None]:
    """(version, CUDA status, problem)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - ImportError, or a wheel built for another CUDA
        return None, None, f"{type(exc).__name__}: {exc}"
    try:
        cuda = (f"CUDA {torch.version.cuda} build, GPU available" if torch.cuda.is_available()
                else f"CUDA {torch.version.cuda} build, no GPU visible" if torch.version.cuda
                else "CPU-only build")
    except Exception as exc:  # noqa: BLE001
        cuda = f"CUDA status unknown ({exc})"
    return torch.__version__, f"{cuda}, {torch.get_num_threads()} threads", None


# --- the report ----------------------------------------------------------------------------------


def diagnose(
    gpu: Callable[[], _Gpu] = probe_gpu,
    nvrtc: Callable[[], tuple[str | None, str | None]] = probe_nvrtc,
    tensorrt: Callable[[], tuple[str | None, str | None]] = probe_tensorrt,
    onnxruntime: Callable[[], tuple[str | None, tuple[str, ...], str | None]] = probe_onnxruntime,
    torch: Callable[[], tuple[str | None, str | None, str | None]] = probe_torch,
    headers: Callable[[], tuple[str | None, str | None]] = probe_headers,
    tensorrt_cuda: Callable[[], int | None] = probe_tensorrt_cuda,
    openvino: Callable[[], tuple[str | None, tuple[str, ...], str | None]] = probe_openvino,
) -> DoctorReport:
    """Run every probe and judge each backend. The probes are parameters so tests can stand in a
    machine with a GPU; the defaults ask this machine."""
    host = machine_info()
    mem = f", {host.memory_gib:.1f} GiB memory" if host.memory_gib else ""
    findings = [Finding("CPU", f"{host.cpu_model or 'unknown model'}, {host.cores} cores{mem}")]

    g = gpu()
    if g.driver:
        findings.append(Finding("NVIDIA driver", f"supports CUDA {g.driver}", True))
    else:
        findings.append(Finding("NVIDIA driver", "no NVIDIA driver", False, DRIVER_HINT))
    if g.devices:
        findings += [Finding("GPU", d, True) for d in g.devices]
    else:
        # Without a driver the driver row already carries the fix.
        findings.append(Finding("GPU", g.problem or "none", False,
                                None if not g.driver else "check that nvidia-smi lists the GPU"))
    line = install_line(g.driver)
    findings.append(Finding("install line", f"for this driver: {line}" if g.driver else line))
    findings.append(Finding("CUDA runtime",
                            f"cuda-bindings for CUDA {g.runtime}" if g.runtime else "not found",
                            g.runtime is not None, None if g.runtime else line))
    nv_version, nv_problem = nvrtc()
    findings.append(Finding("NVRTC", nv_version or nv_problem or "not found", nv_version is not None,
                            None if nv_version else line))
    header_dir, header_problem = headers() if nv_version else (None, "needs NVRTC first")
    findings.append(Finding("CUDA headers", header_dir or header_problem or "not found",
                            header_dir is not None, None if header_dir else line))
    trt_version, trt_problem = tensorrt()
    trt_major = tensorrt_cuda()
    findings.append(Finding(
        "TensorRT", (f"{trt_version}" + (f" (for CUDA {trt_major})" if trt_major else ""))
        if trt_version else (trt_problem or "not found"),
        trt_version is not None, None if trt_version else line))
    stack = _stack_problems(g, nv_version, trt_major)
    if stack:
        findings.append(Finding("CUDA versions", "; ".join(stack), False, line))
    ort_version, providers, ort_problem = onnxruntime()
    findings.append(Finding(
        "ONNX Runtime",
        f"{ort_version}; providers: {', '.join(providers)}" if ort_version else str(ort_problem),
        ort_version is not None, None if ort_version else "pip install onnxruntime",
    ))
    torch_version, torch_cuda, torch_problem = torch()
    findings.append(Finding("PyTorch", f"{torch_version} ({torch_cuda})" if torch_version
                            else f"not usable ({torch_problem})", torch_version is not None,
                            None if torch_version else TRAIN_HINT))

    ov_version, ov_caps, ov_problem = openvino()
    findings.append(Finding(
        "OpenVINO", f"{ov_version}; CPU capabilities: {', '.join(ov_caps)}" if ov_caps
        else str(ov_problem), bool(ov_caps), None if ov_caps else OPENVINO_HINT))

    backends = _backends(g, nv_version, trt_version, trt_problem, ort_version, providers,
                         torch_version, torch_problem,
                         [*stack, *([f"CUDA headers: {header_problem}"] if nv_version and
                                    header_dir is None else [])], line)
    backends[3:3] = _openvino_backends(ov_caps, ov_problem)
    return DoctorReport(tuple(findings), tuple(backends), library_versions())


OPENVINO_HINT = "pip install 'bpedge[openvino]' (an optional, faster CPU backend)"


def _openvino_backends(caps: tuple[str, ...], problem: str | None) -> list[BackendVerdict]:
    if not caps:
        why = f"OpenVINO {problem or 'unusable'}"
        return [BackendVerdict(f"openvino {p}", False, why, OPENVINO_HINT)
                for p in ("fp32", "bf16", "int8")]
    return [
        BackendVerdict("openvino fp32", True, "OpenVINO CPU plugin present; backend='auto' "
                       "prefers it over ONNX Runtime"),
        BackendVerdict("openvino bf16", "BF16" in caps,
                       "this CPU has native BF16 (the OpenVINO default precision here)"
                       if "BF16" in caps else "this CPU has no native BF16",
                       None if "BF16" in caps else "use fp32 or int8"),
        BackendVerdict("openvino int8", True, "runs the bundle's INT8 QDQ ONNX (export with "
                       "`bpedge export --int8`)" + ("; the CPU has int8 dot-product support"
                                                    if "INT8" in caps else "")),
    ]


def _backends(g: _Gpu, nvrtc: str | None, trt: str | None, trt_problem: str | None,
              ort: str | None, providers: tuple[str, ...], torch: str | None,
              torch_problem: str | None, stack: list[str],
              line: str) -> list[BackendVerdict]:
    cpu_ok = ort is not None and "CPUExecutionProvider" in providers
    out = [
        BackendVerdict("onnxruntime fp32", cpu_ok,
                       "ONNX Runtime CPU provider present" if cpu_ok else "ONNX Runtime unusable",
                       None if cpu_ok else "pip install onnxruntime"),
        BackendVerdict("onnxruntime fp16", cpu_ok,
                       "runs with a bundle exported with FP16 ONNX; most CPUs lack FP16 "
                       "arithmetic, so expect it slower than fp32" if cpu_ok
                       else "ONNX Runtime unusable", None if cpu_ok else "pip install onnxruntime"),
        BackendVerdict("onnxruntime int8", cpu_ok,
                       "runs the bundle's INT8 QDQ ONNX (export with `bpedge export --int8`)"
                       if cpu_ok else "ONNX Runtime unusable",
                       None if cpu_ok else "pip install onnxruntime"),
    ]
    missing: list[tuple[str, str]] = []
    if trt is None:
        missing.append((f"TensorRT {trt_problem or 'missing'}", line))
    if not g.driver:
        missing.append(("no NVIDIA driver", DRIVER_HINT))
    elif not g.devices:
        missing.append((g.problem or "no GPU", "check that nvidia-smi lists the GPU"))
    if nvrtc is None:
        nvrtc_why = ("NVRTC missing (the fused pre/post-processing kernels are compiled with "
                     "it)")
        missing.append((nvrtc_why, line))
    missing += [(problem, line) for problem in stack]
    for precision in PRECISIONS:
        if missing:
            out.append(BackendVerdict(f"tensorrt {precision}", False,
                                      "; ".join(m for m, _ in missing),
                                      "; ".join(dict.fromkeys(f for _, f in missing))))
        else:
            how = ("`bpedge build-engines BUNDLE`" if precision != "int8" else
                   "`bpedge build-engines BUNDLE -p int8`, from the symmetric INT8 QDQ files of "
                   "`bpedge export --int8`")
            out.append(BackendVerdict(
                f"tensorrt {precision}", True,
                f"TensorRT {trt} and {g.devices[0]}; engines are built per GPU with {how}"))
    out.append(BackendVerdict(
        "pytorch eager", torch is not None,
        "training and the benchmark baseline" if torch else f"PyTorch not usable ({torch_problem})",
        None if torch else TRAIN_HINT))
    return out
