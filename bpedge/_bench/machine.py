"""What a benchmark ran on: CPU, cores, memory, load, OS and library versions.

Read from the standard library and ``/proc`` where it exists (no extra dependency); anything that
cannot be read is ``None`` rather than a guess. Library versions are read from package metadata,
so recording them imports nothing heavy.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

#: Distributions whose versions a benchmark record carries (missing ones are recorded as None).
VERSIONED = ("bpedge", "numpy", "onnxruntime", "onnx", "torch", "opencv-python-headless",
             "tensorrt", "cuda-python", "cuda-bindings")


@dataclass(frozen=True)
class MachineInfo:
    """The host. ``cores`` is what the OS schedules us on (``os.sched_getaffinity`` where it
    exists); ``memory_gib`` total RAM; ``load_average`` the 1/5/15-minute load when measured."""

    cpu_model: str | None
    cores: int
    memory_gib: float | None
    load_average: tuple[float, float, float] | None
    system: str
    python: str

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["load_average"] = list(self.load_average) if self.load_average else None
        return out


def cpu_model() -> str | None:
    """The CPU's marketing name (``/proc/cpuinfo`` ``model name``, else ``platform.processor``)."""
    info = Path("/proc/cpuinfo")
    if info.is_file():
        for line in info.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                return value.strip()
    return platform.processor() or None


def usable_cores() -> int:
    """CPU cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def memory_gib() -> float | None:
    """Total physical memory in GiB, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return None


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except (OSError, AttributeError):
        return None


def machine_info() -> MachineInfo:
    """The host as it is now (load included)."""
    return MachineInfo(
        cpu_model=cpu_model(),
        cores=usable_cores(),
        memory_gib=memory_gib(),
        load_average=load_average(),
        system=f"{platform.system()} {platform.release()} {platform.machine()}",
        python=platform.python_version(),
    )


def library_versions(names: tuple[str, ...] = VERSIONED) -> dict[str, str | None]:
    """Installed version of each distribution in ``names`` (None when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
