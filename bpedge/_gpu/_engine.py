"""TensorRT at run time: deserialize a bundle's engine, read its I/O tensor table, and run it
through execution contexts (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``).

Every call that reports failure by returning False/None is checked here and turned into
:class:`TensorRTError` naming the call and the tensor. ``tensorrt`` is imported only by
:func:`create_runtime`; the table parsing and the checks work on any object with the engine's
methods, so they are tested without TensorRT.

TensorRT 10 and 11: every call used here exists, unchanged, in both (name-based I/O since 10.0).
TensorRT 11 removed ``ICudaEngine.device_memory_size`` / ``device_memory_size_for_profile`` in
favour of the ``_v2`` forms ("Removed Python APIs and Replacements",
https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html);
nothing here uses either: contexts allocate their own memory (the default
``ExecutionContextAllocationStrategy.STATIC``: the most any profile needs, allocated once), which
also keeps their scratch addresses fixed, as a CUDA graph that replays them requires.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import tensorrt


class TensorRTError(RuntimeError):
    """A TensorRT call failed (returned False/None) or an engine does not fit the cascade."""


#: TensorRT ``DataType`` member names -> the NumPy types the cascade's buffers and kernels use.
_DTYPES: dict[str, np.dtype] = {"FLOAT": np.dtype(np.float32), "HALF": np.dtype(np.float16)}


@dataclass(frozen=True)
class TensorInfo:
    """One engine I/O tensor: ``shape`` has -1 for a dynamic dimension (the batch)."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]

    @property
    def item_shape(self) -> tuple[int, ...]:
        """The shape of one batch item (everything after the batch dimension)."""
        return self.shape[1:]

    def item_nbytes(self) -> int:
        return int(np.prod(self.item_shape, dtype=np.int64)) * self.dtype.itemsize


def io_table(engine: tensorrt.ICudaEngine, label: str) -> dict[str, TensorInfo]:
    """The engine's I/O tensors by name (``num_io_tensors``, ``get_tensor_name``,
    ``get_tensor_mode``, ``get_tensor_dtype``, ``get_tensor_shape``). Raises
    :class:`TensorRTError` for a dtype the kernels do not handle (only float32 and float16)."""
    table = {}
    for index in range(engine.num_io_tensors):
        name = engine.get_tensor_name(index)
        mode = engine.get_tensor_mode(name).name
        if mode not in ("INPUT", "OUTPUT"):
            continue
        dtype_name = engine.get_tensor_dtype(name).name
        if dtype_name not in _DTYPES:
            raise TensorRTError(
                f"{label} engine tensor {name!r} is {dtype_name}; the cascade handles FLOAT and "
                "HALF I/O only: export the ONNX with float32 (or float16) inputs and outputs"
            )
        dims = engine.get_tensor_shape(name)
        shape = tuple(int(dims[i]) for i in range(len(dims)))  # Dims: len and [i], per the stubs
        table[name] = TensorInfo(name, mode == "INPUT", _DTYPES[dtype_name], shape)
    return table


@dataclass(frozen=True)
class Expected:
    """What the cascade needs of one engine tensor: input or output, the shape of one item (None:
    any), the number of elements per item (None: any) and allowed dtypes."""

    is_input: bool
    item_shape: tuple[int, ...] | None = None
    item_size: int | None = None
    dtypes: tuple[str, ...] = ("float32", "float16")


def check_io(table: Mapping[str, TensorInfo], expected: Mapping[str, Expected],
             label: str) -> None:
    """Raise :class:`TensorRTError` naming the first tensor that is missing, has the wrong role,
    a fixed batch, the wrong item shape or size, or a dtype the cascade cannot use there, or an
    I/O tensor the cascade does not know (it would have no buffer to bind)."""
    unknown = sorted(set(table) - set(expected))
    if unknown:
        raise TensorRTError(f"the {label} engine has I/O tensors the cascade does not use: "
                            f"{unknown} (expected {sorted(expected)}): rebuild it from this "
                            "bundle's ONNX")
    for name, want in expected.items():
        role = "input" if want.is_input else "output"
        info = table.get(name)
        if info is None:
            raise TensorRTError(f"the {label} engine has no {role} {name!r} (it has "
                                f"{sorted(table)}): rebuild it from this bundle's ONNX")
        if info.is_input != want.is_input:
            raise TensorRTError(f"{label} engine tensor {name!r} is not an {role}")
        if not info.shape or info.shape[0] != -1:
            raise TensorRTError(f"{label} engine tensor {name!r} has shape {info.shape}; expected "
                                "a dynamic batch dimension first (-1)")
        if want.item_shape is not None and info.item_shape != want.item_shape:
            raise TensorRTError(f"{label} engine tensor {name!r} has item shape {info.item_shape},"
                                f" the bundle says {want.item_shape}")
        size = int(np.prod(info.item_shape, dtype=np.int64))
        if want.item_size is not None and size != want.item_size:
            raise TensorRTError(f"{label} engine tensor {name!r} has {size} values per item, "
                                f"expected {want.item_size}")
        if info.dtype.name not in want.dtypes:
            raise TensorRTError(f"{label} engine tensor {name!r} is {info.dtype.name}; the "
                                f"kernels need {' or '.join(want.dtypes)} there")


def max_profile_batch(engine: tensorrt.ICudaEngine, input_name: str) -> int:
    """The largest batch profile 0 allows for ``input_name`` (``get_tensor_profile_shape``)."""
    _minimum, _optimum, maximum = engine.get_tensor_profile_shape(input_name, 0)
    return int(maximum[0])


# --- the runtime objects ------------------------------------------------------------------------


class TrtRuntime:
    """A ``tensorrt.Runtime`` and its logger; it must outlive the engines it deserialized, so the
    engines created by :meth:`deserialize` keep a reference to it."""

    def __init__(self) -> None:
        from bpedge._engine_key import load_tensorrt

        load_tensorrt()  # TargetUnavailable with the fix when TensorRT is absent (or stubs only)
        import tensorrt as trt

        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)

    def deserialize(self, plan: bytes, label: str) -> TrtEngine:
        """An engine from a plan (bytes already checked against the manifest's sha256)."""
        engine = self.runtime.deserialize_cuda_engine(plan)
        if engine is None:
            raise TensorRTError(
                f"deserialize_cuda_engine returned None for the {label} engine: it was built by "
                "another TensorRT version or for another GPU (see TensorRT's log above); rebuild "
                "it with `bpedge build-engines <bundle> --force`"
            )
        return TrtEngine(engine, self, label)


class TrtEngine:
    """One deserialized engine, its I/O table and the execution contexts made from it.
    :meth:`close` drops the contexts first, then the engine (TensorRT frees on the last
    reference; its Python context managers are deprecated no-ops)."""

    def __init__(self, engine: tensorrt.ICudaEngine, runtime: TrtRuntime, label: str) -> None:
        self.engine: tensorrt.ICudaEngine | None = engine
        self._runtime: TrtRuntime | None = runtime
        self.label = label
        self.tensors = io_table(engine, label)
        self._contexts: list[EngineContext] = []

    def create_context(self) -> EngineContext:
        if self.engine is None:
            raise RuntimeError(f"the {self.label} engine was closed")
        context = self.engine.create_execution_context()
        if context is None:
            raise TensorRTError(f"create_execution_context returned None for the {self.label} "
                                "engine (out of GPU memory?)")
        wrapped = EngineContext(context, self.tensors, self.label)
        self._contexts.append(wrapped)
        return wrapped

    def profile_max_batch(self, input_name: str) -> int:
        """The largest batch the engine's first optimization profile allows."""
        if self.engine is None:
            raise RuntimeError(f"the {self.label} engine was closed")
        return max_profile_batch(self.engine, input_name)

    def close(self) -> None:
        for context in self._contexts:
            context.close()
        self._contexts.clear()
        self.engine = None
        self._runtime = None


class EngineContext:
    """An ``IExecutionContext`` with checked calls. Input shapes and tensor addresses are only sent
    to TensorRT when they change, so that a steady stream of frames makes no calls but
    ``execute_async_v3`` (or none at all once a CUDA graph replays it)."""

    def __init__(self, context: tensorrt.IExecutionContext, tensors: Mapping[str, TensorInfo],
                 label: str) -> None:
        self.context: tensorrt.IExecutionContext | None = context
        self.tensors = dict(tensors)
        self.label = label
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._addresses: dict[str, int] = {}

    def _live(self) -> tensorrt.IExecutionContext:
        if self.context is None:
            raise RuntimeError(f"the {self.label} execution context was closed")
        return self.context

    def set_batch(self, batch: int) -> bool:
        """Set every input's shape to ``(batch, *item_shape)`` (``set_input_shape``); True if any
        shape changed."""
        context = self._live()
        changed = False
        for info in self.tensors.values():
            if not info.is_input:
                continue
            shape = (int(batch), *info.item_shape)
            if self._shapes.get(info.name) == shape:
                continue
            if not context.set_input_shape(info.name, shape):
                raise TensorRTError(f"set_input_shape({info.name!r}, {shape}) failed for the "
                                    f"{self.label} engine: is the batch within its profile?")
            self._shapes[info.name] = shape
            changed = True
        return changed

    def bind(self, addresses: Mapping[str, int]) -> None:
        """Point each named tensor at a device address (``set_tensor_address``)."""
        context = self._live()
        missing = sorted(set(self.tensors) - set(addresses))
        if missing:
            raise ValueError(f"no address given for {self.label} tensors {missing}")
        for name, address in addresses.items():
            if self._addresses.get(name) == address:
                continue
            if not context.set_tensor_address(name, int(address)):
                raise TensorRTError(f"set_tensor_address({name!r}) failed for the {self.label} "
                                    "engine")
            self._addresses[name] = int(address)

    def execute(self, stream_address: int) -> None:
        """Enqueue inference on the stream (``execute_async_v3``); no host synchronisation."""
        if not self._live().execute_async_v3(stream_address):
            raise TensorRTError(f"execute_async_v3 failed for the {self.label} engine (see "
                                "TensorRT's log above)")

    def close(self) -> None:
        self.context = None

