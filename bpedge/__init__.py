"""bpedge: find and outline the brachial plexus in neck ultrasound, on the CPU or NVIDIA GPUs.

The public surface is :class:`Segmenter`, :class:`Result` and :class:`Bundle`, and
:func:`open_frames` / :class:`SourceFrame` (``bpedge.sources``: files, folders, globs, videos, DICOM,
capture devices and streams as frames for ``Segmenter.stream``); everything else is internal. ``import bpedge`` needs only the runtime dependencies (no torch, no TensorRT).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bpedge._version import __version__

if TYPE_CHECKING:
    from bpedge._result import Result
    from bpedge.bundle import Bundle
    from bpedge.segmenter import Segmenter
    from bpedge.sources import SourceFrame, open_frames

__all__ = ["Bundle", "Result", "Segmenter", "SourceFrame", "__version__", "open_frames"]

_LAZY = {"Bundle": "bpedge.bundle", "Result": "bpedge._result", "Segmenter": "bpedge.segmenter",
         "SourceFrame": "bpedge.sources", "open_frames": "bpedge.sources"}


def __getattr__(name: str) -> Any:
    # Lazy so that `import bpedge` stays cheap; the runtime modules import onnxruntime/cv2 themselves.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bpedge' has no attribute {name!r}")
