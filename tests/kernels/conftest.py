"""Fixtures for the kernel tests: the host-emulation library, built once per session."""

from __future__ import annotations

import ctypes

import pytest
from bpedge.kernels import CompilerNotFoundError, load_host_library


@pytest.fixture(scope="session")
def host_library() -> ctypes.CDLL:
    """The emulation build of preprocess.cu / paste.cu. Skips only when there is no C++ compiler at
    all; a compile error fails the tests."""
    try:
        return load_host_library()
    except CompilerNotFoundError as exc:
        pytest.skip(f"needs a C++20 compiler for the kernel host emulation: {exc}")
