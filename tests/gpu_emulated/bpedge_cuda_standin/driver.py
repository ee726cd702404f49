"""The ``cuda.bindings.driver`` functions bpedge calls: load the NVRTC images, look the kernels up
and launch them; a launched kernel runs, when its stream runs, through ``bpedge.kernels``' host
emulation (the same .cu source, built for the CPU).

Rules (besides the runtime's, see :mod:`.cudart`):
D1 A driver call needs a current context: a thread that never made a runtime call or
   ``cudaSetDevice`` has none (CUDA driver API, "Context Management": ``CUDA_ERROR_INVALID_CONTEXT``
   "no context is bound to the calling CPU thread").
D2 A kernel launch fails on a stream of another device than the current one, and a function can
   only be launched in the context its module was loaded in (CUDA C++ Programming Guide,
   "Multi-Device System" > "Stream and Event Behavior"; ``CUDA_ERROR_INVALID_HANDLE``).
D3 ``cuModuleLoadData`` takes a CUBIN (ELF) or NUL-terminated PTX text
   (``CUDA_ERROR_INVALID_IMAGE``), ``cuModuleGetFunction`` a name the image defines
   (``CUDA_ERROR_NOT_FOUND``); a launch is at most 256 threads per block here (the kernels'
   ``__launch_bounds__``; ``CUDA_ERROR_INVALID_VALUE``).
D4 The kernel's pointers must be live device memory when it runs, else the sticky
   ``CUDA_ERROR_ILLEGAL_ADDRESS`` (R5).
"""

from __future__ import annotations

import ctypes
import enum
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .cudart import E, Handle, Machine, Stream, native


class CUresult(enum.IntEnum):
    CUDA_SUCCESS = 0
    CUDA_ERROR_INVALID_VALUE = 1
    CUDA_ERROR_INVALID_IMAGE = 200
    CUDA_ERROR_INVALID_CONTEXT = 201
    CUDA_ERROR_INVALID_HANDLE = 400
    CUDA_ERROR_NOT_FOUND = 500
    CUDA_ERROR_ILLEGAL_ADDRESS = 700
    CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901


R = CUresult
_FROM_RUNTIME = {E.cudaErrorIllegalAddress: R.CUDA_ERROR_ILLEGAL_ADDRESS,
                 E.cudaErrorStreamCaptureInvalidated: R.CUDA_ERROR_STREAM_CAPTURE_INVALIDATED}


class CUmodule(Handle):
    pass


class CUfunction(Handle):
    pass


class CUstream(Handle):
    pass


@dataclass
class Module:
    value: int
    device: int
    image: bytes
    unloaded: bool = False


@dataclass
class Function:
    value: int
    module: Module
    name: str


def _kernel_extents(name: str, a: Any, itemsize: int) -> list[tuple[int, int, str]]:
    """(pointer, bytes it spans, field) for every pointer a kernel will touch."""
    if name.startswith("bp_preprocess"):
        spans = [(a.frames, (a.batch * a.height - 1) * a.pitch + a.width, "frames"),
                 (a.out, a.batch * a.out_h * a.out_w * itemsize, "out")]
        if a.boxes:
            spans.append((a.boxes, ((a.batch - 1) * a.box_stride + 4) * 4, "boxes"))
        if a.boxes_out:
            spans.append((a.boxes_out, a.batch * 16, "boxes_out"))
        return spans
    return [(a.prob, a.batch * a.crop_h * a.crop_w * itemsize, "prob"),
            (a.boxes, ((a.batch - 1) * a.box_stride + 4) * 4, "boxes"),
            (a.scores, ((a.batch - 1) * a.score_stride + 1) * 4, "scores"),
            (a.masks, (a.batch * a.height - 1) * a.pitch + a.width, "masks")]


def make_driver_module(m: Machine) -> types.ModuleType:
    from bpedge.kernels._host_build import load_host_library
    from bpedge.kernels._launch_args import MAX_THREADS_PER_BLOCK, PasteArgs, PreprocessArgs

    drv = types.ModuleType("cuda.bindings.driver")
    drv.CUresult, drv.CUmodule, drv.CUfunction, drv.CUstream = CUresult, CUmodule, CUfunction, CUstream
    modules: dict[int, Module] = {}
    functions: dict[int, Function] = {}

    def api(fn: Callable[..., tuple[Any, ...]]) -> Callable[..., tuple[Any, ...]]:
        def call(*args: Any) -> tuple[Any, ...]:
            with m.lock:
                if m.sticky is not None:
                    return (_FROM_RUNTIME.get(m.sticky, R.CUDA_ERROR_ILLEGAL_ADDRESS),)
                if m.context_device() is None:
                    m.violation("D1", f"{fn.__name__} on a thread with no current context")
                    return (R.CUDA_ERROR_INVALID_CONTEXT,)
                return fn(*args)
        call.__name__ = fn.__name__
        setattr(drv, fn.__name__, call)
        return call

    @api
    def cuModuleLoadData(image: bytes) -> tuple[Any, ...]:
        data = bytes(image)
        if not (data.startswith(b"\x7fELF") or (b".version" in data and data.endswith(b"\0"))):
            return R.CUDA_ERROR_INVALID_IMAGE, None
        module = Module(m.new_handle(), m.context_device() or 0, data)
        modules[module.value] = module
        return R.CUDA_SUCCESS, CUmodule(module.value)

    @api
    def cuModuleGetFunction(module: Any, name: bytes) -> tuple[Any, ...]:
        mod = modules.get(native(module)) if isinstance(module, CUmodule) else None
        if mod is None or mod.unloaded:
            m.violation("R5", f"cuModuleGetFunction on {module!r}")
            return R.CUDA_ERROR_INVALID_HANDLE, None
        if bytes(name) not in mod.image:
            return R.CUDA_ERROR_NOT_FOUND, None
        function = Function(m.new_handle(), mod, bytes(name).decode())
        functions[function.value] = function
        return R.CUDA_SUCCESS, CUfunction(function.value)

    @api
    def cuModuleUnload(module: Any) -> tuple[Any, ...]:
        mod = modules.get(native(module)) if isinstance(module, CUmodule) else None
        if mod is None or mod.unloaded:
            m.violation("R5", f"cuModuleUnload of {module!r}")
            return (R.CUDA_ERROR_INVALID_HANDLE,)
        m.run_device(mod.device)
        mod.unloaded = True
        return (R.CUDA_SUCCESS,)

    @api
    def cuLaunchKernel(f: Any, gx: int, gy: int, gz: int, bx: int, by: int, bz: int,
                       shared: int, stream: Any, params: int, extra: Any) -> tuple[Any, ...]:
        function = functions.get(native(f)) if isinstance(f, CUfunction) else None
        if function is None or function.module.unloaded:
            m.violation("R5", f"cuLaunchKernel of {f!r} (unknown or unloaded)")
            return (R.CUDA_ERROR_INVALID_HANDLE,)
        s: Stream | None = m.stream(stream)
        if s is None:
            m.violation("R5", f"cuLaunchKernel on {stream!r}")
            return (R.CUDA_ERROR_INVALID_HANDLE,)
        current = m.context_device()
        if s.device != current or function.module.device != current:
            m.violation("D2", f"kernel of device {function.module.device} launched on a stream "
                              f"of device {s.device} while device {current} is current")
            return (R.CUDA_ERROR_INVALID_HANDLE,)
        if min(gx, gy, gz, bx, by, bz) < 1 or bx * by * bz > MAX_THREADS_PER_BLOCK:
            return (R.CUDA_ERROR_INVALID_VALUE,)
        cls = PreprocessArgs if function.name.startswith("bp_preprocess") else PasteArgs
        # The driver copies the parameters during the call (also into a captured kernel node).
        struct_ptr = ctypes.c_void_p.from_address(int(params)).value
        args = cls.from_buffer_copy(ctypes.string_at(struct_ptr, ctypes.sizeof(cls)))
        fp16 = int(function.name.endswith("_f16"))
        itemsize = 2 if fp16 else 4
        dims = ctypes.c_uint * 3
        host = load_host_library()
        launcher = (host.bp_host_preprocess if cls is PreprocessArgs else host.bp_host_paste)

        def run() -> None:
            for ptr, extent, what in _kernel_extents(function.name, args, itemsize):
                m.check_live(int(ptr), int(extent), f"{function.name}.{what}")
            if launcher(ctypes.byref(args), fp16, dims(gx, gy, gz), dims(bx, by, bz)) != 0:
                raise AssertionError(f"the host emulation refused {function.name}")
        err = m.enqueue(s, run)
        return (_FROM_RUNTIME.get(err, R.CUDA_ERROR_INVALID_VALUE) if err else R.CUDA_SUCCESS,)

    return drv
