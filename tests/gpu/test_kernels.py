"""Kernel loading and launching (bpedge._gpu._kernels): which NVRTC image a GPU gets (compiled for
real here: NVRTC needs no GPU), that loading fails cleanly without a driver, and that a launch
hands cuLaunchKernel the one-struct kernelParams of the launch contract."""

from __future__ import annotations

import ctypes
import gc
import warnings

import pytest
from bpedge.kernels._launch_args import PasteArgs, paste_args, paste_launch

from bpedge._gpu import _kernels
from bpedge._gpu._cuda import CudaError
from bpedge._gpu._kernels import (
    KERNEL_SOURCES,
    CascadeKernels,
    ImageChoice,
    KernelModule,
    choose_image,
    kernel_images,
    launch,
)

SUPPORTED = (75, 80, 86, 87, 88, 89, 90, 100, 103, 110, 120, 121)


@pytest.mark.parametrize("device, expected", [
    (86, ImageChoice(86, "cubin")),   # RTX A2000 / 30xx: its own SASS
    (87, ImageChoice(87, "cubin")),   # Jetson Orin
    (85, ImageChoice(80, "cubin")),   # a minor this NVRTC lacks: same-major SASS runs on it
    (130, ImageChoice(121, "ptx")),   # a GPU newer than this NVRTC: PTX for the driver to JIT
    (95, ImageChoice(90, "cubin")),
])
def test_image_choice_follows_cuda_binary_compatibility(device, expected):
    assert choose_image(device, SUPPORTED) == expected


def test_a_gpu_older_than_every_supported_arch_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="compute capability 7.0 GPU.*CUDA 12"):
        choose_image(70, SUPPORTED)


@pytest.fixture(scope="module")
def nvrtc():
    from bpedge.kernels._nvrtc import NvrtcUnavailableError, nvrtc_version

    try:
        nvrtc_version()
    except NvrtcUnavailableError as exc:
        pytest.skip(f"needs NVRTC: {exc}")


def test_images_for_a_supported_gpu_are_cubins_with_every_entry_point(nvrtc):
    images = kernel_images(86)
    assert set(images) == set(KERNEL_SOURCES)
    for source, entry_points in KERNEL_SOURCES.items():
        assert images[source][:4] == b"\x7fELF", f"{source}: not a CUBIN"
        for name in entry_points:
            assert name.encode() in images[source]


def test_images_for_a_newer_gpu_are_nul_terminated_ptx(nvrtc):
    from bpedge.kernels._nvrtc import supported_archs

    newest = max(supported_archs())
    future = (newest // 10 + 1) * 10
    images = kernel_images(future)
    for source, entry_points in KERNEL_SOURCES.items():
        ptx = images[source]
        assert ptx.endswith(b"\0") and ptx.count(b"\0") == 1
        assert f".target sm_{newest}".encode() in ptx
        for name in entry_points:
            assert f".entry {name}".encode() in ptx


@pytest.mark.usefixtures("without_gpu")
def test_loading_a_module_without_a_driver_names_cuModuleLoadData_and_leaks_nothing(nvrtc):
    images = kernel_images(86)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(CudaError, match="^cuModuleLoadData failed"):
            KernelModule(images["paste.cu"], KERNEL_SOURCES["paste.cu"])
        with pytest.raises(CudaError, match="^cuModuleLoadData failed"):
            CascadeKernels(images)
        gc.collect()


class FakeDriver:
    """Stands in for drv_call: module handles, function handles, launches recorded."""

    def __init__(self, fail_second_load: bool = False) -> None:
        self.calls: list[tuple] = []
        self.loads = 0
        self.fail_second_load = fail_second_load
        self.params_seen: list[PasteArgs] = []

    def __call__(self, name: str, *args):
        self.calls.append((name, *args))
        if name == "cuModuleLoadData":
            self.loads += 1
            if self.fail_second_load and self.loads == 2:
                raise CudaError(name, "CUDA_ERROR_NO_BINARY_FOR_GPU", "CUresult 209")
            return f"module{self.loads}"
        if name == "cuModuleGetFunction":
            return f"{args[0]}:{args[1].decode()}"
        if name == "cuLaunchKernel":
            # kernelParams is the address of a void*[1] whose only element points at the struct.
            params = args[9]
            struct_address = ctypes.c_void_p.from_address(params).value
            self.params_seen.append(PasteArgs.from_buffer_copy(
                (ctypes.c_byte * ctypes.sizeof(PasteArgs)).from_address(struct_address)))
        return None


def test_launch_passes_grid_block_stream_and_the_struct_by_pointer(monkeypatch):
    fake = FakeDriver()
    monkeypatch.setattr(_kernels, "drv_call", fake)
    args = paste_args(prob=0x1000, boxes=0x2000, scores=0x3000, masks=0x4000, batch=2, width=580,
                      height=420, pitch=640, crop_w=96, crop_h=96, threshold=0.5,
                      score_threshold=0.3)
    shape = paste_launch(2, 580, 420)
    stream = type("S", (), {"handle": "stream-7"})()
    launch("function", args, shape, stream)
    name, function, gx, gy, gz, bx, by, bz, smem, hstream, _, extra = fake.calls[-1]
    assert (name, function, hstream, smem, extra) == ("cuLaunchKernel", "function", "stream-7", 0, 0)
    assert (gx, gy, gz) == shape.grid == (19, 53, 2) and (bx, by, bz) == shape.block
    seen = fake.params_seen[-1]
    assert (seen.prob, seen.masks, seen.pitch, seen.crop_w, seen.score_threshold) == (
        0x1000, 0x4000, 640, 96, 0.3)


def test_kernels_are_found_by_entry_point_and_unloaded_once(monkeypatch):
    fake = FakeDriver()
    monkeypatch.setattr(_kernels, "drv_call", fake)
    kernels = CascadeKernels({"preprocess.cu": b"a", "paste.cu": b"b"})
    assert kernels.function("bp_paste_f16") == "module2:bp_paste_f16"
    assert kernels.function("bp_preprocess_f32") == "module1:bp_preprocess_f32"
    with pytest.raises(KeyError, match="bp_resize"):
        kernels.function("bp_resize")
    kernels.free()
    kernels.free()
    unloads = [c for c in fake.calls if c[0] == "cuModuleUnload"]
    assert unloads == [("cuModuleUnload", "module2"), ("cuModuleUnload", "module1")]
    with pytest.raises(RuntimeError, match="was freed"):
        kernels.function("bp_paste_f16")


def test_a_failed_second_load_unloads_the_first_module(monkeypatch):
    fake = FakeDriver(fail_second_load=True)
    monkeypatch.setattr(_kernels, "drv_call", fake)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        with pytest.raises(CudaError, match="NO_BINARY_FOR_GPU"):
            CascadeKernels({"preprocess.cu": b"a", "paste.cu": b"b"})
        gc.collect()
    assert [c for c in fake.calls if c[0] == "cuModuleUnload"] == [("cuModuleUnload", "module1")]
