"""Build the kernels' host emulation (the same .cu files, compiled by g++ against host_emulation.h)
into a shared library, cached by a hash of its sources, compiler and flags, and load it with ctypes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bpedge.kernels._launch_args import PasteArgs, PreprocessArgs
from bpedge.kernels._paths import KERNEL_DIR, cache_root

#: Everything the emulation build reads; a change to any of them rebuilds.
HOST_SOURCES: tuple[str, ...] = ("host_emulation.h", "preprocess.cu", "paste.cu", "_host_launch.cpp")

# -ffp-contract=off: no fused multiply-adds, so the emulation rounds like the NumPy reference on
# every host (GCC contracts by default where the target has FMA, e.g. aarch64 / Jetson).
HOST_FLAGS: tuple[str, ...] = (
    "-std=c++20", "-O2", "-shared", "-fPIC", "-pthread", "-ffp-contract=off", "-Wall", "-Wextra",
)

_LIBRARY_NAME = "libbpedge_kernels_host.so"


class HostBuildError(RuntimeError):
    """The host emulation could not be compiled (no C++20 compiler, or a compile error)."""


class CompilerNotFoundError(HostBuildError):
    """No C++ compiler at all: the one reason a test may skip the emulation."""


def host_compiler() -> str:
    """The C++ compiler the emulation build uses: ``$CXX``, else ``g++``."""
    return os.environ.get("CXX") or "g++"


def _compiler_identity(compiler: str) -> str:
    path = shutil.which(compiler)
    if path is None:
        raise CompilerNotFoundError(
            f"the kernel host emulation needs a C++20 compiler; {compiler!r} was not found "
            "(install g++ >= 11 or set CXX)"
        )
    done = subprocess.run([path, "--version"], capture_output=True, text=True, check=False)
    return f"{path}\n{done.stdout}"


def build_key(compiler: str | None = None) -> str:
    """sha256 over the emulation sources, the compiler's identity and the flags."""
    compiler = compiler or host_compiler()
    digest = hashlib.sha256()
    digest.update(_compiler_identity(compiler).encode())
    digest.update("\0".join(HOST_FLAGS).encode())
    for name in HOST_SOURCES:
        digest.update(name.encode() + b"\0" + (KERNEL_DIR / name).read_bytes() + b"\0")
    return digest.hexdigest()


def build_host_library(compiler: str | None = None, cache_dir: Path | None = None) -> Path:
    """Compile the emulation library unless a build with the same key is cached; return its path.

    The build goes to a temporary file renamed into place, so concurrent builds (pytest-xdist)
    never load a half-written library.
    """
    compiler = compiler or host_compiler()
    key = build_key(compiler)
    target = (cache_dir or cache_root() / "host") / key[:24] / _LIBRARY_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".build.", suffix=".so", dir=target.parent)
    os.close(fd)
    command = [compiler, *HOST_FLAGS, f"-I{KERNEL_DIR}", "-o", tmp, str(KERNEL_DIR / "_host_launch.cpp")]
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise HostBuildError(
                f"compiling the kernel host emulation failed ({' '.join(command)}):\n{done.stderr}"
            )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    dims = ctypes.c_uint * 3
    lib.bp_host_preprocess.argtypes = [ctypes.POINTER(PreprocessArgs), ctypes.c_int, dims, dims]
    lib.bp_host_preprocess.restype = ctypes.c_int
    lib.bp_host_paste.argtypes = [ctypes.POINTER(PasteArgs), ctypes.c_int, dims, dims]
    lib.bp_host_paste.restype = ctypes.c_int
    lib.bp_host_probe_exchange.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    lib.bp_host_probe_exchange.restype = ctypes.c_int
    lib.bp_host_float2half.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
    lib.bp_host_float2half.restype = None
    lib.bp_host_half2float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_longlong]
    lib.bp_host_half2float.restype = None
    for name in ("bp_host_preprocess_layout", "bp_host_paste_layout"):
        getattr(lib, name).argtypes = [ctypes.POINTER(ctypes.c_longlong)]
        getattr(lib, name).restype = ctypes.c_int
    return lib


@functools.lru_cache(maxsize=1)
def load_host_library() -> ctypes.CDLL:
    """The emulation library (built on first use), with its ``extern "C"`` functions declared.

    Raises :class:`HostBuildError` when no C++20 compiler is available or the build fails.
    """
    return _declare(ctypes.CDLL(str(build_host_library())))
