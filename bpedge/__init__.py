"""bpedge: find and outline the brachial plexus in neck ultrasound, on the CPU or NVIDIA GPUs.

The public surface is :class:`Segmenter`, :class:`Result` and :class:`Bundle`; everything else is
internal. ``import bpedge`` needs only the runtime dependencies (no torch, no TensorRT).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpedge._version import __version__

if TYPE_CHECKING:
    from bpedge._result import Result
    from bpedge.bundle import Bundle
    from bpedge.segmenter import Segmenter

__all__ = ["Bundle", "Result", "Segmenter", "__version__"]

_LAZY = {"Bundle": "bpedge.bundle", "Result": "bpedge._result", "Segmenter": "bpedge.segmenter"}


def __getattr__(name: str) -> Any:
    # Lazy so that `import bpedge` stays cheap; the runtime modules import onnxruntime/cv2 themselves.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bpedge' has no attribute {name!r}")
