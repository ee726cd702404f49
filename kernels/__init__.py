"""CUDA sources of the fused kernels (preprocess.cu, paste.cu), their launch contract, their NVRTC
compile and their host emulation. See kernels/README.md.

Importing this package imports neither cuda-python nor a compiler: NVRTC is loaded on the first
:func:`compile_kernel`, the emulation library is built on the first emulated launch.
"""

from bpedge.kernels._emulated import emulated_paste, emulated_preprocess
from bpedge.kernels._host_build import (
    CompilerNotFoundError,
    HostBuildError,
    build_host_library,
    load_host_library,
)
from bpedge.kernels._launch_args import (
    MAX_THREADS_PER_BLOCK,
    PASTE_BLOCK,
    PASTE_ENTRY_POINTS,
    PREPROCESS_BLOCK,
    PREPROCESS_ENTRY_POINTS,
    PREPROCESS_MAX_SIDE,
    LaunchShape,
    PasteArgs,
    PreprocessArgs,
    kernel_params,
    paste_args,
    paste_launch,
    preprocess_args,
    preprocess_launch,
)
from bpedge.kernels._nvrtc import (
    CompiledKernel,
    KernelCompileError,
    NvrtcUnavailableError,
    compile_kernel,
    cuda_include_dir,
    header_cuda_major,
    nvrtc_version,
    supported_archs,
)
from bpedge.kernels._paths import KERNEL_SOURCES, cache_root, kernel_source_path

__all__ = [
    "KERNEL_SOURCES",
    "MAX_THREADS_PER_BLOCK",
    "PASTE_BLOCK",
    "PASTE_ENTRY_POINTS",
    "PREPROCESS_BLOCK",
    "PREPROCESS_ENTRY_POINTS",
    "PREPROCESS_MAX_SIDE",
    "CompiledKernel",
    "CompilerNotFoundError",
    "HostBuildError",
    "KernelCompileError",
    "LaunchShape",
    "NvrtcUnavailableError",
    "PasteArgs",
    "PreprocessArgs",
    "build_host_library",
    "cache_root",
    "compile_kernel",
    "cuda_include_dir",
    "emulated_paste",
    "emulated_preprocess",
    "header_cuda_major",
    "kernel_params",
    "kernel_source_path",
    "load_host_library",
    "nvrtc_version",
    "paste_args",
    "paste_launch",
    "preprocess_args",
    "preprocess_launch",
    "supported_archs",
]
