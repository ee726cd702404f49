"""Compile the kernel sources with NVRTC (``cuda.bindings.nvrtc``) for one compute capability.

NVRTC runs without a GPU or a driver, so this works on any machine with the ``cuda-bindings`` and
``nvidia-cuda-nvrtc`` wheels; ``cuda_fp16.h`` comes from the ``nvidia-cuda-runtime`` wheel's include
directory, found with ``cuda.pathfinder`` (or ``$CUDA_HOME/include``). Results are cached on disk
under ``cache_root()/nvrtc``, keyed by the source's sha256, the architecture, the options and the
NVRTC version. ``cuda.bindings`` is imported only when a compile is asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpedge.kernels._paths import cache_root, kernel_source_path

from bpedge._atomic import atomic_write_bytes, atomic_write_json

# --ptxas-options=-v puts ptxas's register / spill / shared-memory report into the log (NVRTC
# forwards it), which compile_report parses. No --use_fast_math: the division and sqrt of the
# normalisation must stay IEEE to match the reference.
_BASE_OPTIONS: tuple[str, ...] = ("--std=c++17", "--ptxas-options=-v")


class NvrtcUnavailableError(RuntimeError):
    """NVRTC (cuda-bindings + libnvrtc) or the CUDA headers it needs cannot be found."""


class KernelCompileError(RuntimeError):
    """NVRTC rejected the source; ``log`` holds its full log."""

    def __init__(self, message: str, log: str) -> None:
        super().__init__(f"{message}\n{log}")
        self.log = log


@dataclass(frozen=True)
class CompiledKernel:
    """One source compiled for one architecture.

    ``cubin``: SASS for ``sm_<arch>`` (load with ``cuModuleLoadData``); ``ptx``: the same code as
    PTX, which the driver can JIT for newer GPUs; ``log``: NVRTC's log including ptxas's report.
    """

    source: str
    arch: int
    cubin: bytes
    ptx: bytes
    log: str
    nvrtc_version: tuple[int, int]
    options: tuple[str, ...]


def _nvrtc() -> Any:
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise NvrtcUnavailableError(
            "compiling the kernels needs cuda-python's cuda-bindings and NVRTC: pip install "
            "'bpedge[tensorrt-cu13]' (CUDA 13 driver) or 'bpedge[tensorrt-cu12]' (CUDA 12)"
        ) from exc
    return nvrtc


def _check(nvrtc: Any, result: Any, what: str) -> None:
    if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, message = nvrtc.nvrtcGetErrorString(result)
        raise KernelCompileError(f"{what} failed: {message.decode(errors='replace')}", "")


def nvrtc_version() -> tuple[int, int]:
    """(major, minor) of the NVRTC library that cuda-bindings loads."""
    nvrtc = _nvrtc()
    try:
        result, major, minor = nvrtc.nvrtcVersion()
    except Exception as exc:  # the wheel imports but libnvrtc.so is missing: say so, with the cause
        raise NvrtcUnavailableError(f"libnvrtc could not be loaded: {exc}") from exc
    _check(nvrtc, result, "nvrtcVersion")
    return int(major), int(minor)


def supported_archs() -> tuple[int, ...]:
    """Compute capabilities (e.g. 75, 80, ..., 120) this NVRTC can compile for."""
    nvrtc = _nvrtc()
    nvrtc_version()
    result, archs = nvrtc.nvrtcGetSupportedArchs()
    _check(nvrtc, result, "nvrtcGetSupportedArchs")
    return tuple(int(a) for a in archs)


#: The extra that installs a consistent TensorRT + cuda-bindings + NVRTC + headers set, by CUDA
#: major (pyproject.toml).
EXTRA_BY_CUDA_MAJOR: dict[int, str] = {12: "bpedge[tensorrt-cu12]", 13: "bpedge[tensorrt-cu13]"}


def header_cuda_major(directory: Path) -> int | None:
    """The CUDA major version of the headers in ``directory`` (``CUDART_VERSION`` in
    ``cuda_runtime_api.h``, else ``CUDA_VERSION`` in ``cuda.h``); None when neither says."""
    for name, macro in (("cuda_runtime_api.h", "CUDART_VERSION"), ("cuda.h", "CUDA_VERSION")):
        path = directory / name
        if not path.is_file():
            continue
        match = re.search(rf"^#define\s+{macro}\s+(\d+)", path.read_text(errors="replace"),
                          re.MULTILINE)
        if match:
            return int(match.group(1)) // 1000
    return None


def _header_candidates(major: int) -> list[Path]:
    """Directories that may hold the CUDA headers, most specific first: cuda-pathfinder's answer,
    $CUDA_HOME / $CUDA_PATH, and the nvidia wheels' layouts (``nvidia/cu13/include`` for CUDA 13,
    ``nvidia/cuda_runtime/include`` for CUDA 12)."""
    candidates: list[str] = []
    try:
        from cuda import pathfinder

        found = pathfinder.find_nvidia_header_directory("cudart")
        if found:
            candidates.append(found)
    except (ImportError, AttributeError, RuntimeError):
        pass  # cuda-pathfinder is optional (and older ones lack the function): other places below
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(variable):
            candidates.append(os.path.join(os.environ[variable], "include"))
    try:
        import nvidia

        for root in getattr(nvidia, "__path__", []):
            candidates += [os.path.join(root, f"cu{major}", "include"),
                           os.path.join(root, "cuda_runtime", "include")]
    except ImportError:
        pass  # no nvidia wheels installed
    return [Path(c) for c in dict.fromkeys(candidates)]


def cuda_include_dir() -> Path:
    """The directory holding ``cuda_fp16.h`` for the CUDA major of the NVRTC that is loaded.

    NVRTC must compile against headers of its own CUDA major (a CUDA 12 NVRTC cannot parse CUDA
    13's ``cuda_fp16.h`` and the other way round). Raises :class:`NvrtcUnavailableError` naming
    every header directory found and its version, and the install line, when none matches."""
    major = nvrtc_version()[0]
    seen = []
    for directory in _header_candidates(major):
        if not (directory / "cuda_fp16.h").is_file():
            continue
        found = header_cuda_major(directory)
        if found == major:
            return directory
        seen.append(f"{directory} (CUDA {found if found is not None else 'version unknown'})")
    extra = EXTRA_BY_CUDA_MAJOR.get(major, f"cuda-toolkit[cudart]=={major}.*")
    where = f"; found only {', '.join(seen)}" if seen else ""
    raise NvrtcUnavailableError(
        f"cuda_fp16.h for CUDA {major} (the loaded NVRTC's major) not found{where}: "
        f"pip install '{extra}', or set CUDA_HOME to a CUDA {major} toolkit"
    )


def _parse_arch(arch: int | str) -> int:
    text = str(arch).lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
    if not text.isdigit() or not 10 <= int(text) <= 199:
        raise ValueError(f"arch must be a compute capability such as 80, '8.6' or 'sm_90', got {arch!r}")
    return int(text)


def _read_cache(directory: Path, key: str) -> CompiledKernel | None:
    meta_path = directory / f"{key}.json"
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        cubin = (directory / f"{key}.cubin").read_bytes()
        ptx = (directory / f"{key}.ptx").read_bytes()
    except (OSError, ValueError):
        return None  # a partial or corrupt entry: compile again and overwrite it
    if hashlib.sha256(cubin).hexdigest() != meta.get("cubin_sha256") or (
        hashlib.sha256(ptx).hexdigest() != meta.get("ptx_sha256")
    ):
        return None
    return CompiledKernel(
        source=meta["source"], arch=meta["arch"], cubin=cubin, ptx=ptx, log=meta["log"],
        nvrtc_version=tuple(meta["nvrtc_version"]), options=tuple(meta["options"]),
    )


def _write_cache(directory: Path, key: str, kernel: CompiledKernel) -> None:
    atomic_write_bytes(directory / f"{key}.cubin", kernel.cubin)
    atomic_write_bytes(directory / f"{key}.ptx", kernel.ptx)
    # The metadata goes last: an entry counts only once it exists and the hashes match.
    atomic_write_json(directory / f"{key}.json", {
        "source": kernel.source, "arch": kernel.arch, "log": kernel.log,
        "nvrtc_version": list(kernel.nvrtc_version), "options": list(kernel.options),
        "cubin_sha256": hashlib.sha256(kernel.cubin).hexdigest(),
        "ptx_sha256": hashlib.sha256(kernel.ptx).hexdigest(),
    })


def _program_output(nvrtc: Any, program: Any, size_fn: str, get_fn: str) -> bytes:
    result, size = getattr(nvrtc, size_fn)(program)
    _check(nvrtc, result, size_fn)
    # NVRTC writes into the buffer: it must be a fresh, writable one. b" " * n is an immutable
    # bytes object (b" " * 1 is even the interpreter's shared one-byte singleton).
    buffer = bytearray(size)
    (result,) = getattr(nvrtc, get_fn)(program, buffer)
    _check(nvrtc, result, get_fn)
    return bytes(buffer)


def _compile(
    source_name: str, source: bytes, arch: int, options: tuple[str, ...], include_dir: Path
) -> tuple[bytes, bytes, str]:
    nvrtc = _nvrtc()
    result, program = nvrtc.nvrtcCreateProgram(source, source_name.encode(), 0, [], [])
    _check(nvrtc, result, "nvrtcCreateProgram")
    try:
        include = f"-I{include_dir}"
        encoded = [o.encode() for o in (*options, include)]
        (compiled,) = nvrtc.nvrtcCompileProgram(program, len(encoded), encoded)
        log = _program_output(nvrtc, program, "nvrtcGetProgramLogSize", "nvrtcGetProgramLog")
        log_text = log.rstrip(b"\0").decode(errors="replace")
        if compiled != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise KernelCompileError(f"NVRTC could not compile {source_name} for sm_{arch}", log_text)
        cubin = _program_output(nvrtc, program, "nvrtcGetCUBINSize", "nvrtcGetCUBIN")
        ptx = _program_output(nvrtc, program, "nvrtcGetPTXSize", "nvrtcGetPTX")
    finally:
        nvrtc.nvrtcDestroyProgram(program)
    return cubin, ptx, log_text


def compile_kernel(
    source: str, arch: int | str, *, use_cache: bool = True, cache_dir: Path | None = None
) -> CompiledKernel:
    """Compile kernel ``source`` (``"preprocess.cu"`` or ``"paste.cu"``) for compute capability
    ``arch`` (``80``, ``"8.6"``, ``"sm_90"``).

    Raises :class:`NvrtcUnavailableError` without NVRTC or the CUDA headers, :class:`ValueError` for an
    architecture this NVRTC does not support, :class:`KernelCompileError` (with the log) when the
    source does not compile.
    """
    arch_number = _parse_arch(arch)
    source_bytes = kernel_source_path(source).read_bytes()
    version = nvrtc_version()
    supported = supported_archs()
    if arch_number not in supported:
        raise ValueError(
            f"NVRTC {version[0]}.{version[1]} cannot compile for sm_{arch_number}; it supports "
            f"{', '.join(f'sm_{a}' for a in supported)}"
        )
    options = (f"-arch=sm_{arch_number}", *_BASE_OPTIONS)
    include_dir = cuda_include_dir()
    # The half-precision headers are part of what gets compiled, so they are part of the key.
    headers = b"".join((include_dir / h).read_bytes() for h in ("cuda_fp16.h", "cuda_fp16.hpp")
                       if (include_dir / h).is_file())
    key = hashlib.sha256(b"\0".join([
        source_bytes, "\0".join(options).encode(), f"nvrtc {version}".encode(), headers,
    ])).hexdigest()
    directory = cache_dir or cache_root() / "nvrtc"
    if use_cache:
        cached = _read_cache(directory, key)
        if cached is not None:
            return cached
    cubin, ptx, log = _compile(source, source_bytes, arch_number, options, include_dir)
    kernel = CompiledKernel(source=source, arch=arch_number, cubin=cubin, ptx=ptx, log=log,
                            nvrtc_version=version, options=options)
    if use_cache:
        _write_cache(directory, key, kernel)
    return kernel
