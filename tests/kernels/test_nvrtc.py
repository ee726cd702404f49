"""NVRTC compiles both kernels (no GPU needed), caches them, and reports failures plainly."""

from __future__ import annotations

import pytest
from bpedge.kernels import (
    KERNEL_SOURCES,
    PASTE_ENTRY_POINTS,
    PREPROCESS_ENTRY_POINTS,
    NvrtcUnavailableError,
    _nvrtc,
    compile_kernel,
    cuda_include_dir,
    nvrtc_version,
    supported_archs,
)

ENTRY_POINTS = {"preprocess.cu": PREPROCESS_ENTRY_POINTS, "paste.cu": PASTE_ENTRY_POINTS}


@pytest.fixture(scope="module", autouse=True)
def _nvrtc_loads():
    # cuda-bindings' NVRTC needs no GPU or driver; skip only if the library truly cannot load.
    try:
        nvrtc_version()
    except NvrtcUnavailableError as exc:
        pytest.skip(f"NVRTC cannot be loaded here: {exc}")


@pytest.mark.parametrize("source", KERNEL_SOURCES)
def test_both_kernels_compile_for_sm80(source, tmp_path):
    kernel = compile_kernel(source, 80, cache_dir=tmp_path)
    assert kernel.arch == 80 and kernel.nvrtc_version == nvrtc_version()
    assert kernel.cubin[:4] == b"\x7fELF"
    ptx = kernel.ptx.decode()
    assert ".target sm_80" in ptx
    for entry in ENTRY_POINTS[source].values():
        assert f".entry {entry}(" in ptx
        assert f"Compiling entry function '{entry}' for 'sm_80'" in kernel.log


def test_second_compile_comes_from_the_cache(tmp_path, monkeypatch):
    first = compile_kernel("paste.cu", "sm_86", cache_dir=tmp_path)

    def refuse(*args, **kwargs):
        raise AssertionError("compiled again instead of using the cache")

    monkeypatch.setattr(_nvrtc, "_compile", refuse)
    assert compile_kernel("paste.cu", "8.6", cache_dir=tmp_path) == first


def test_corrupt_cache_entry_is_recompiled(tmp_path):
    first = compile_kernel("paste.cu", 80, cache_dir=tmp_path)
    (cubin,) = tmp_path.glob("*.cubin")
    cubin.write_bytes(b"garbage")
    again = compile_kernel("paste.cu", 80, cache_dir=tmp_path)
    assert again.cubin == first.cubin
    assert cubin.read_bytes() == first.cubin


def test_cache_defaults_to_xdg_cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    compile_kernel("paste.cu", 80)
    assert list((tmp_path / "bpedge" / "kernels" / "nvrtc").glob("*.cubin"))


def test_unsupported_and_malformed_archs_raise_value_errors(tmp_path):
    unsupported = next(a for a in (35, 50, 52, 60, 70) if a not in supported_archs())
    with pytest.raises(ValueError, match=f"cannot compile for sm_{unsupported}"):
        compile_kernel("paste.cu", unsupported, cache_dir=tmp_path)
    with pytest.raises(ValueError, match="compute capability"):
        compile_kernel("paste.cu", "ampere", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown kernel source"):
        compile_kernel("nope.cu", 80, cache_dir=tmp_path)


def test_compile_error_carries_the_log(tmp_path, monkeypatch):
    bad = tmp_path / "src"
    bad.mkdir()
    (bad / "paste.cu").write_text('extern "C" __global__ void k() { undeclared_name = 1; }\n')
    monkeypatch.setattr(_nvrtc, "kernel_source_path", lambda name: bad / name)
    with pytest.raises(_nvrtc.KernelCompileError, match="undeclared_name") as info:
        compile_kernel("paste.cu", 80, use_cache=False)
    assert "undeclared_name" in info.value.log


def test_half_header_is_found():
    assert (cuda_include_dir() / "cuda_fp16.h").is_file()


def _headers(root, cudart_version: int):
    include = root / "include"
    include.mkdir(parents=True)
    (include / "cuda_fp16.h").write_text("/* half */\n")
    (include / "cuda_runtime_api.h").write_text(f"#define CUDART_VERSION  {cudart_version}\n")
    return include


def test_headers_of_the_loaded_nvrtcs_cuda_major_are_chosen(tmp_path, monkeypatch):
    # cuda-pathfinder finds this machine's wheel headers first; an NVRTC of another major must
    # skip them and take the toolkit of its own major.
    own = _headers(tmp_path / "cuda-other", 12090 if nvrtc_version()[0] != 12 else 13000)
    major = 12 if nvrtc_version()[0] != 12 else 13
    monkeypatch.setenv("CUDA_HOME", str(own.parent))
    monkeypatch.setattr(_nvrtc, "nvrtc_version", lambda: (major, 0))
    assert cuda_include_dir() == own
    assert _nvrtc.header_cuda_major(own) == major


def test_no_headers_of_the_nvrtcs_major_is_an_error_naming_what_was_found(tmp_path, monkeypatch):
    monkeypatch.setenv("CUDA_HOME", str(_headers(tmp_path / "cuda-13", 13000).parent))
    monkeypatch.setattr(_nvrtc, "nvrtc_version", lambda: (11, 8))
    with pytest.raises(NvrtcUnavailableError, match=r"cuda_fp16.h for CUDA 11 .*\(CUDA 13\)"):
        cuda_include_dir()


def test_nvrtc_writes_its_outputs_into_fresh_writable_buffers(tmp_path, monkeypatch):
    real = _nvrtc._nvrtc()
    handed = []

    class Recording:
        def __getattr__(self, name):
            attr = getattr(real, name)
            if not name.startswith(("nvrtcGetCUBIN", "nvrtcGetPTX", "nvrtcGetProgramLog")) or \
                    name.endswith("Size"):
                return attr

            def call(program, buffer):
                handed.append(type(buffer))
                return attr(program, buffer)
            return call

    monkeypatch.setattr(_nvrtc, "_nvrtc", lambda: Recording())
    kernel = compile_kernel("paste.cu", 80, use_cache=False)
    assert handed == [bytearray] * 3
    assert kernel.cubin[:4] == b"\x7fELF" and isinstance(kernel.cubin, bytes)
