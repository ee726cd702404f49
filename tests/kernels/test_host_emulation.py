"""The emulation itself: half conversions, the block barrier, the launch contract, the build cache."""

from __future__ import annotations

import ctypes
import shutil

import numpy as np
import pytest
from bpedge.kernels import (
    CompilerNotFoundError,
    PasteArgs,
    PreprocessArgs,
    _host_build,
    build_host_library,
    kernel_params,
)

pytestmark = pytest.mark.usefixtures("host_library")


def _float2half(lib: ctypes.CDLL, values: np.ndarray) -> np.ndarray:
    values = np.ascontiguousarray(values, np.float32)
    out = np.empty(values.shape, np.uint16)
    lib.bp_host_float2half(values.ctypes.data, out.ctypes.data, values.size)
    return out


def test_float2half_rounds_to_nearest_even_like_numpy(host_library):
    rng = np.random.default_rng(0)
    random_bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    # Ties and edges: half-way points between neighbouring halves (normal and subnormal), the
    # overflow threshold 65520, the smallest subnormal and its half.
    halves = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float32)
    ties = (halves[:-1] + halves[1:]) / 2
    edges = np.array([65504, 65519.996, 65520, 65536, 2**-24, 2**-25, 2**-25 * 1.0001, 0.0, -0.0,
                      np.inf, -np.inf, 1e-40], np.float32)
    values = np.concatenate([random_bits, ties, -ties, edges])
    got = _float2half(host_library, values)
    with np.errstate(over="ignore"):  # values above the half range are meant to become inf
        expected = values.astype(np.float16).view(np.uint16)
    nan = np.isnan(values)
    np.testing.assert_array_equal(got[~nan], expected[~nan])
    assert np.isnan(got[nan].view(np.float16)).all()


def test_half2float_is_exact_for_every_half(host_library):
    bits = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    out = np.empty(bits.shape, np.float32)
    host_library.bp_host_half2float(bits.ctypes.data, out.ctypes.data, bits.size)
    expected = bits.view(np.float16).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(out[~nan], expected[~nan])
    assert np.isnan(out[nan]).all()


@pytest.mark.parametrize("blocks,threads", [(3, 256), (4, 37), (1, 1)])
def test_syncthreads_is_a_real_barrier_and_shared_memory_is_per_block(host_library, blocks, threads):
    out = np.full(blocks * threads, -1, np.int32)
    assert host_library.bp_host_probe_exchange(out.ctypes.data, blocks, threads) == 0
    t = np.arange(threads)
    # Thread t ends up with what thread t-1 read from thread t: its own block's value for t.
    expected = np.concatenate([1000 * b + t for b in range(blocks)])
    np.testing.assert_array_equal(out, expected)


def test_launch_refuses_more_threads_than_the_launch_bounds(host_library):
    out = np.zeros(300, np.int32)
    assert host_library.bp_host_probe_exchange(out.ctypes.data, 1, 300) == 1
    assert not out.any()


@pytest.mark.parametrize("mirror,layout_fn", [(PreprocessArgs, "bp_host_preprocess_layout"),
                                               (PasteArgs, "bp_host_paste_layout")])
def test_ctypes_mirrors_match_the_c_struct_layout(host_library, mirror, layout_fn):
    values = (ctypes.c_longlong * 64)()
    count = getattr(host_library, layout_fn)(values)
    size, *offsets = values[:count]
    assert size == ctypes.sizeof(mirror)
    assert offsets == [getattr(mirror, name).offset for name, _ in mirror._fields_]


def test_kernel_params_points_at_the_struct():
    args = PasteArgs(width=7)
    params = kernel_params(args)
    assert params[0] == ctypes.addressof(args)
    with pytest.raises(TypeError, match="PreprocessArgs or PasteArgs"):
        kernel_params(object())  # type: ignore[arg-type]


def test_build_is_cached_and_keyed_by_the_sources(tmp_path, monkeypatch):
    first = build_host_library(cache_dir=tmp_path)
    stamp = first.stat().st_mtime_ns
    assert build_host_library(cache_dir=tmp_path) == first
    assert first.stat().st_mtime_ns == stamp
    key = _host_build.build_key()
    copy = tmp_path / "src"
    shutil.copytree(_host_build.KERNEL_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "paste.cu").write_text((copy / "paste.cu").read_text() + "\n// changed\n")
    monkeypatch.setattr(_host_build, "KERNEL_DIR", copy)
    assert _host_build.build_key() != key


def test_missing_compiler_is_reported(tmp_path):
    with pytest.raises(CompilerNotFoundError, match="C\\+\\+20 compiler"):
        build_host_library(compiler="no-such-compiler-bpedge", cache_dir=tmp_path)
