"""The fused kernels on the GPU: NVRTC images for the device's compute capability, loaded with
``cuModuleLoadData`` / ``cuModuleGetFunction`` and launched with ``cuLaunchKernel`` through the
launch contract of :mod:`bpedge.kernels._launch_args` (one struct argument per kernel).

Which image: a CUBIN runs on GPUs of the same major compute capability and an equal or higher
minor one; anything newer than this NVRTC knows gets PTX, which the driver compiles for the GPU
(CUDA C Programming Guide, "Binary Compatibility" and "PTX Compatibility"). So the device's own
architecture is compiled when NVRTC supports it, else the highest supported one of the same major
(CUBIN), else the highest supported one below the device (PTX). NVRTC results are cached on disk
by :func:`bpedge.kernels._nvrtc.compile_kernel`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bpedge._gpu._cuda import CudaError, Stream, _Owned, drv_call
from bpedge.kernels import (
    PASTE_ENTRY_POINTS,
    PREPROCESS_ENTRY_POINTS,
    LaunchShape,
    PasteArgs,
    PreprocessArgs,
    kernel_params,
)

#: Kernel source file -> its entry points (all of them are loaded).
KERNEL_SOURCES: dict[str, tuple[str, ...]] = {
    "preprocess.cu": tuple(PREPROCESS_ENTRY_POINTS.values()),
    "paste.cu": tuple(PASTE_ENTRY_POINTS.values()),
}


@dataclass(frozen=True)
class ImageChoice:
    """What to compile for a device: ``arch`` and whether to load its CUBIN or its PTX."""

    arch: int
    format: str  # "cubin" or "ptx"


def choose_image(device_arch: int, supported: Sequence[int]) -> ImageChoice:
    """The image that runs on a device of compute capability ``device_arch`` (e.g. 86), given the
    architectures this NVRTC supports. Raises ``ValueError`` when every supported one is newer than
    the device (CUDA 13 NVRTC starts at sm_75, so a Volta or Pascal GPU lands here)."""
    if device_arch in supported:
        return ImageChoice(device_arch, "cubin")
    same_major = [a for a in supported if a // 10 == device_arch // 10 and a < device_arch]
    if same_major:
        return ImageChoice(max(same_major), "cubin")
    older = [a for a in supported if a < device_arch]
    if older:
        return ImageChoice(max(older), "ptx")
    raise ValueError(
        f"this NVRTC compiles for {', '.join(f'sm_{a}' for a in sorted(supported))}; none runs on a "
        f"compute capability {device_arch // 10}.{device_arch % 10} GPU: install a cuda-python and "
        "NVRTC of a CUDA version that still supports it (e.g. CUDA 12.x for Volta)"
    )


def kernel_images(device_arch: int) -> dict[str, bytes]:
    """Compiled image of each kernel source for the device: CUBIN, or NUL-terminated PTX (the
    driver JIT-compiles PTX text and needs the terminator). Runs NVRTC; needs no GPU."""
    from bpedge.kernels import compile_kernel, supported_archs

    choice = choose_image(device_arch, supported_archs())
    images = {}
    for source in KERNEL_SOURCES:
        compiled = compile_kernel(source, choice.arch)
        images[source] = compiled.cubin if choice.format == "cubin" else (
            compiled.ptx.rstrip(b"\0") + b"\0")
    return images


class KernelModule(_Owned):
    """One loaded module (``cuModuleLoadData``) and its functions by entry-point name."""

    _what = "CUDA module"

    def __init__(self, image: bytes, entry_points: Sequence[str]) -> None:
        super().__init__()
        self._freed = True
        self.handle = drv_call("cuModuleLoadData", image)
        self._freed = False
        try:
            self.functions: dict[str, Any] = {
                name: drv_call("cuModuleGetFunction", self.handle, name.encode())
                for name in entry_points
            }
        except CudaError:
            self.free()
            raise

    def _release(self) -> None:
        drv_call("cuModuleUnload", self.handle)


def launch(function: Any, args: PreprocessArgs | PasteArgs, shape: LaunchShape,
           stream: Stream) -> None:
    """``cuLaunchKernel`` of a one-struct kernel: ``kernelParams`` is the address of the ``void*[1]``
    array that :func:`kernel_params` builds (cuda-bindings takes an ``int`` as an already built
    ``void**``). The driver copies the struct during the call (also under stream capture, where it
    goes into the kernel node), so ``args`` only has to outlive this call."""
    params = kernel_params(args)
    gx, gy, gz = shape.grid
    bx, by, bz = shape.block
    drv_call("cuLaunchKernel", function, gx, gy, gz, bx, by, bz, 0, stream.handle,
             ctypes.addressof(params), 0)


class CascadeKernels(_Owned):
    """The preprocess and paste kernels loaded on the current device.

    ``images`` (source -> CUBIN/PTX, from :func:`kernel_images`) is loaded into one module per
    source; :meth:`function` looks an entry point up by name.
    """

    _what = "kernel modules"

    def __init__(self, images: dict[str, bytes]) -> None:
        super().__init__()
        self._freed = True
        self._modules: list[KernelModule] = []
        try:
            for source, entry_points in KERNEL_SOURCES.items():
                self._modules.append(KernelModule(images[source], entry_points))
        except BaseException:
            self._unload()
            raise
        self._freed = False

    def function(self, entry_point: str) -> Any:
        self._check_live()
        for module in self._modules:
            if entry_point in module.functions:
                return module.functions[entry_point]
        raise KeyError(f"no kernel named {entry_point!r}; loaded: "
                       f"{sorted(n for m in self._modules for n in m.functions)}")

    def launch(self, entry_point: str, args: PreprocessArgs | PasteArgs, shape: LaunchShape,
               stream: Stream) -> None:
        launch(self.function(entry_point), args, shape, stream)

    def _unload(self) -> None:
        errors = []
        for module in reversed(self._modules):
            try:
                module.free()
            except CudaError as exc:
                errors.append(exc)
        self._modules.clear()
        if errors:
            raise errors[0]

    def _release(self) -> None:
        self._unload()
