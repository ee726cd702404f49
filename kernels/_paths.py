"""Where the kernel sources live and where compiled artefacts are cached."""

from __future__ import annotations

import os
from pathlib import Path

#: The directory holding the ``.cu`` sources and the emulation header (installed as package data).
KERNEL_DIR = Path(__file__).resolve().parent

#: The CUDA sources, by the name the compile functions take.
KERNEL_SOURCES: tuple[str, ...] = ("preprocess.cu", "paste.cu")


def kernel_source_path(name: str) -> Path:
    """Path of the kernel source ``name`` (one of :data:`KERNEL_SOURCES`)."""
    if name not in KERNEL_SOURCES:
        raise ValueError(f"unknown kernel source {name!r}; choose one of {list(KERNEL_SOURCES)}")
    return KERNEL_DIR / name


def cache_root() -> Path:
    """``$XDG_CACHE_HOME/bpedge/kernels``, or ``~/.cache/bpedge/kernels`` when it is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bpedge" / "kernels"
