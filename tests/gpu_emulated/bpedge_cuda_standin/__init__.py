"""A rule-checking stand-in for the part of ``cuda.bindings`` (runtime, driver) and ``tensorrt``
that bpedge uses, so the whole TensorRT cascade runs on the CPU in the tests.

Memory is NumPy-backed (a "device pointer" is the address of a NumPy buffer, so the kernels' host
emulation and ONNX Runtime read and write it directly); streams queue their work and run it when
the host waits (so reading a result before waiting for it reads stale data, as on a GPU); graphs
record what a capture enqueued and replay it. Kernels run through ``bpedge.kernels``' host
emulation, engines through ONNX Runtime on the bundle's ONNX.

Every rule the stand-in enforces cites where it is documented (see :mod:`.cudart`,
:mod:`.driver`, :mod:`.trt`), and a violation is reported the way the real API reports it: an
error code in the ``(err, ...)`` tuple, a sticky error at the next synchronisation, or a TensorRT
call returning False/None with a message on the logger.

Use :func:`install` (a context manager) to put it into ``sys.modules``; nothing here is part of
the bpedge package.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator

from .cudart import Machine, make_runtime_module, make_utils_module
from .driver import make_driver_module
from .trt import make_tensorrt_module

__all__ = ["Machine", "install"]


@contextlib.contextmanager
def install(machine: Machine | None = None) -> Iterator[Machine]:
    """Replace ``cuda.bindings.{runtime,driver,utils}`` and ``tensorrt`` in ``sys.modules`` with
    the stand-in for the duration of the block (the real NVRTC stays: it runs without a GPU)."""
    from cuda.bindings import nvrtc  # the real one: kernels are compiled for real

    machine = machine or Machine()
    package = types.ModuleType("cuda.bindings")
    package.__path__ = []  # a package, so "from cuda.bindings import x" looks at attributes
    modules = {
        "cuda.bindings.runtime": make_runtime_module(machine),
        "cuda.bindings.driver": make_driver_module(machine),
        "cuda.bindings.utils": make_utils_module(),
        "cuda.bindings.nvrtc": nvrtc,
        "tensorrt": make_tensorrt_module(machine),
    }
    for name, module in modules.items():
        if name.startswith("cuda.bindings."):
            setattr(package, name.rsplit(".", 1)[1], module)
    modules["cuda.bindings"] = package
    saved = {name: sys.modules.get(name) for name in modules}
    sys.modules.update(modules)
    try:
        yield machine
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
