"""The ``tensorrt`` API bpedge uses (TensorRT 10.13 names), with the engine run by ONNX Runtime.

The builder "builds" a plan that holds the ONNX and what the build was configured with (TF32,
strong typing, the batch profile); the runtime deserialises only such plans for this stand-in's
GPU and version (anything else: None, as TensorRT returns for a foreign plan); an execution
context enqueues ONNX Runtime on the stand-in's stream, reading and writing the tensor addresses.

Rules, each reported as TensorRT does (False/None and a message on the logger):
T1 After an input shape or a tensor address changed, enqueue once outside capture before
   capturing: trtexec "Avoid[s] capturing initialization calls by executing the enqueue function
   at least once before starting CUDA graph capture" (samples/common/sampleInference.cpp), and a
   graph "fixes the input shapes, tensor addresses" (TensorRT developer guide, "CUDA Graphs",
   https://docs.nvidia.com/deeplearning/tensorrt/latest/performance/best-practices.html). An
   enqueue in capture with pending changes fails and invalidates the capture.
T2 "Each ICudaEngine object is bound to a specific GPU when it is instantiated ... Each
   IExecutionContext is bound to the same GPU as the engine ... When calling execute() or
   enqueue(), ensure that the thread is associated with the correct device by calling
   cudaSetDevice() if necessary." (TensorRT developer guide, FAQ "How do I use TensorRT on
   multiple GPUs?"). The stream must belong to that device too.
T3 Every input shape (within the profile) and every I/O address is set before enqueueing
   (``set_input_shape`` returns False outside the profile).
T4 ``BuilderFlag.TF32`` is on by default ("TF32 ... enabled by default", TensorRT ``BuilderFlag``
   reference); the plan records whether it was cleared.
T5 Q/DQ networks are symmetric: "TensorRT uses a symmetric quantization scheme" with signed INT8
   (TensorRT developer guide, "Working with Quantized Types",
   https://docs.nvidia.com/deeplearning/tensorrt/latest/inference-library/work-quantized-types.html),
   so the parser reports a QuantizeLinear/DequantizeLinear whose zero point is not an INT8 zero
   (a uint8 or asymmetric one, as the CPU runtimes' U8S8 form has); and explicit quantisation
   goes with strong typing, "precision-control build flags are not required and should not be
   specified" ("Explicit Quantization", same guide): a Q/DQ network that is not strongly typed is
   refused at build.
"""

from __future__ import annotations

import ctypes
import enum
import json
import types
from typing import Any

import numpy as np

from .cudart import Machine

VERSION = "10.13.0.35"
PLAN_MAGIC = b"BPEDGE-CUDA-STANDIN-PLAN\n"
_ORT_TYPES = {"tensor(float)": ("FLOAT", np.float32), "tensor(float16)": ("HALF", np.float16)}


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT32 = 3


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    TF32 = 7


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class Dims(tuple):
    def __new__(cls, shape: Any):
        return super().__new__(cls, (int(d) for d in shape))


def _session(onnx: bytes) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])


def _io(onnx: bytes) -> tuple[Any, list[dict[str, Any]]]:
    session = _session(onnx)
    tensors = []
    for mode, items in ((TensorIOMode.INPUT, session.get_inputs()),
                        (TensorIOMode.OUTPUT, session.get_outputs())):
        for item in items:
            dtype_name, dtype = _ORT_TYPES[item.type]
            shape = [d if isinstance(d, int) else -1 for d in item.shape]
            tensors.append({"name": item.name, "mode": mode, "dtype": DataType[dtype_name],
                            "np": np.dtype(dtype), "shape": shape})
    return session, tensors


def _qdq_nodes(onnx: bytes) -> tuple[int, list[str]]:
    """How many Q/DQ nodes the model has, and the names of those whose zero point is missing
    (ONNX's default is uint8), not INT8 or not 0 (rule T5). Written from TensorRT's rule, not
    shared with bpedge's own export check, so that the two can disagree."""
    import onnx as onnx_lib
    from onnx import numpy_helper

    model = onnx_lib.load_from_string(onnx)
    inits = {t.name: t for t in model.graph.initializer}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    bad = []
    for node in qdq:
        zp = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if (zp is None or zp.data_type != onnx_lib.TensorProto.INT8
                or numpy_helper.to_array(zp).any()):
            bad.append(node.name)
    return len(qdq), bad


def make_tensorrt_module(m: Machine) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = VERSION
    trt.DataType, trt.TensorIOMode, trt.Dims = DataType, TensorIOMode, Dims
    trt.NetworkDefinitionCreationFlag, trt.BuilderFlag = NetworkDefinitionCreationFlag, BuilderFlag
    trt.MemoryPoolType = MemoryPoolType
    m.trt_log = []  # type: ignore[attr-defined]

    def log(message: str) -> None:
        m.trt_log.append(message)  # type: ignore[attr-defined]

    class Logger:
        WARNING, ERROR, INFO = 2, 1, 3

        def __init__(self, severity: int = 2) -> None:
            self.severity = severity

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    # --- building ---

    class Tensor:
        def __init__(self, name: str, shape: list[int]) -> None:
            self.name, self.shape = name, Dims(shape)

    class Network:
        def __init__(self, flags: int) -> None:
            self.flags, self.onnx, self.inputs = int(flags), b"", []
            self.qdq = 0  # Q/DQ nodes of the parsed model (rule T5)

        @property
        def num_inputs(self) -> int:
            return len(self.inputs)

        def get_input(self, i: int) -> Tensor:
            return self.inputs[i]

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.network, self.errors = network, []

        def parse(self, data: bytes, path: str | None = None) -> bool:
            try:
                _, tensors = _io(bytes(data))
                qdq, asymmetric = _qdq_nodes(bytes(data))
            except Exception as exc:  # noqa: BLE001 - a parser reports, it does not raise
                self.errors.append(str(exc))
                return False
            if asymmetric:  # T5
                self.errors += [f"{name}: TensorRT supports symmetric INT8 quantization only "
                                "(zero point must be an INT8 0)" for name in asymmetric]
                return False
            self.network.onnx = bytes(data)
            self.network.qdq = qdq
            self.network.inputs = [Tensor(t["name"], t["shape"]) for t in tensors
                                   if t["mode"] == TensorIOMode.INPUT]
            return True

        @property
        def num_errors(self) -> int:
            return len(self.errors)

        def get_error(self, i: int) -> str:
            return self.errors[i]

    class TimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> memoryview:
            return memoryview(self.data)

    class Profile:
        def __init__(self) -> None:
            self.shapes: dict[str, list[list[int]]] = {}

        def set_shape(self, name: str, lo: Any, opt: Any, hi: Any) -> None:
            self.shapes[name] = [list(lo), list(opt), list(hi)]

    class Config:
        def __init__(self) -> None:
            self.flags = {BuilderFlag.TF32}  # T4: on unless cleared
            self.profiles: list[Profile] = []
            self.cache = TimingCache(b"")
            self.progress_monitor = None
            self.pools: dict[int, int] = {}

        def set_flag(self, flag: BuilderFlag) -> None:
            self.flags.add(BuilderFlag(flag))

        def clear_flag(self, flag: BuilderFlag) -> None:
            self.flags.discard(BuilderFlag(flag))

        def get_flag(self, flag: BuilderFlag) -> bool:
            return BuilderFlag(flag) in self.flags

        def set_memory_pool_limit(self, pool: int, size: int) -> None:
            self.pools[int(pool)] = int(size)

        def add_optimization_profile(self, profile: Profile) -> int:
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, data: bytes) -> TimingCache:
            return TimingCache(data)

        def set_timing_cache(self, cache: TimingCache, ignore_mismatch: bool) -> bool:
            self.cache = cache
            return True

        def get_timing_cache(self) -> TimingCache:
            return self.cache

    class Builder:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def create_network(self, flags: int = 0) -> Network:
            return Network(flags)

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> Profile:
            return Profile()

        def build_serialized_network(self, network: Network, config: Config) -> bytes | None:
            device = m.devices[m.runtime_device()]
            strongly_typed = bool(network.flags
                                  & (1 << NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            if network.qdq and not strongly_typed:  # T5
                log("Q/DQ (explicitly quantized) network built without strong typing")
                return None
            header = {
                "trt": VERSION, "gpu": device.name, "cc": [device.major, device.minor],
                "strongly_typed": strongly_typed,
                "tf32": config.get_flag(BuilderFlag.TF32),
                "profiles": [p.shapes for p in config.profiles],
            }
            return PLAN_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx

    # --- running ---

    class ICudaEngine:
        def __init__(self, header: dict[str, Any], onnx: bytes, device: int) -> None:
            self.header, self.device = header, device
            self.session, tensors = _io(onnx)
            self._tensors = {t["name"]: t for t in tensors}
            self._names = [t["name"] for t in tensors]

        @property
        def num_io_tensors(self) -> int:
            return len(self._names)

        def get_tensor_name(self, index: int) -> str:
            return self._names[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            return self._tensors[name]["mode"] if name in self._tensors else TensorIOMode.NONE

        def get_tensor_dtype(self, name: str) -> DataType:
            return self._tensors[name]["dtype"]

        def get_tensor_shape(self, name: str) -> Dims:
            return Dims(self._tensors[name]["shape"])

        def get_tensor_profile_shape(self, name: str, profile: int) -> list[Dims]:
            return [Dims(s) for s in self.header["profiles"][profile][name]]

        def create_execution_context(self) -> IExecutionContext | None:
            if m.runtime_device() != self.device:
                log(f"T2: create_execution_context on device {m.runtime_device()} for an engine "
                    f"of device {self.device}")
                m.violation("T2", "execution context created on the wrong device")
                return None
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.shapes: dict[str, tuple[int, ...]] = {}
            self.addresses: dict[str, int] = {}
            self.changed = True  # nothing enqueued yet
            self.enqueues = 0

        def set_input_shape(self, name: str, shape: Any) -> bool:
            tensor = self.engine._tensors.get(name)
            shape = tuple(int(d) for d in shape)
            if tensor is None or tensor["mode"] != TensorIOMode.INPUT:
                log(f"set_input_shape: {name!r} is not an input")
                return False
            lo, _, hi = self.engine.header["profiles"][0][name]
            if len(shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
                log(f"T3: set_input_shape({name!r}, {shape}) is outside the profile {lo}..{hi}")
                return False
            if self.shapes.get(name) != shape:
                self.shapes[name], self.changed = shape, True
            return True

        def set_tensor_address(self, name: str, address: int) -> bool:
            if name not in self.engine._tensors:
                log(f"set_tensor_address: no tensor {name!r}")
                return False
            if self.addresses.get(name) != int(address):
                self.addresses[name], self.changed = int(address), True
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            with m.lock:
                return self._enqueue(stream_handle)

        def _enqueue(self, stream_handle: int) -> bool:
            engine = self.engine
            stream = m.stream(int(stream_handle))
            if stream is None:
                log(f"execute_async_v3: {stream_handle:#x} is not a live stream")
                m.violation("R5", "execute_async_v3 on a dead stream")
                return False
            current = m.runtime_device()
            if current != engine.device or stream.device != engine.device:
                log(f"T2: execute_async_v3 for an engine of device {engine.device} with device "
                    f"{current} current, on a stream of device {stream.device}")
                m.violation("T2", "enqueue on the wrong device")
                return False
            inputs = [n for n, t in engine._tensors.items() if t["mode"] == TensorIOMode.INPUT]
            missing = [n for n in inputs if n not in self.shapes]
            missing += [n for n in engine._tensors if n not in self.addresses]
            if missing:
                log(f"T3: execute_async_v3 with no shape or address for {missing}")
                return False
            if stream.capture is not None and self.changed:
                log("T1: execute_async_v3 captured right after a shape or address change: "
                    "enqueue once outside capture first")
                m.violation("T1", "TensorRT enqueue captured before a warm-up enqueue")
                m.invalidate(stream.capture, "TensorRT setup work inside the capture")
                return False
            batch = self.shapes[inputs[0]][0]
            plan = {name: (self.addresses[name], t["np"], (batch, *t["shape"][1:]))
                    for name, t in engine._tensors.items()}

            def run() -> None:
                feeds = {}
                for name in inputs:
                    address, dtype, shape = plan[name]
                    nbytes = int(np.prod(shape)) * dtype.itemsize
                    m.check_live(address, nbytes, f"engine input {name}")
                    raw = (ctypes.c_char * nbytes).from_address(address)
                    feeds[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
                outputs = engine.session.run(None, feeds)
                for meta, value in zip(engine.session.get_outputs(), outputs):
                    address, dtype, shape = plan[meta.name]
                    value = np.ascontiguousarray(value, dtype=dtype).reshape(shape)
                    m.check_live(address, value.nbytes, f"engine output {meta.name}")
                    ctypes.memmove(address, value.ctypes.data, value.nbytes)
            if m.enqueue(stream, run):
                return False
            self.changed = False
            self.enqueues += 1
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            self.logger = logger

        def deserialize_cuda_engine(self, plan: bytes) -> ICudaEngine | None:
            data = bytes(plan)
            if not data.startswith(PLAN_MAGIC):
                log("deserialize_cuda_engine: not a plan of this TensorRT")
                return None
            header_line, onnx = data[len(PLAN_MAGIC):].split(b"\n", 1)
            header = json.loads(header_line)
            device = m.runtime_device()
            info = m.devices[device]
            if header["trt"] != VERSION or header["gpu"] != info.name or header["cc"] != [
                    info.major, info.minor]:
                log(f"deserialize_cuda_engine: plan built for {header['gpu']} / TensorRT "
                    f"{header['trt']}")
                return None
            return ICudaEngine(header, onnx, device)

    trt.Logger, trt.IProgressMonitor, trt.OnnxParser, trt.Builder = (Logger, IProgressMonitor,
                                                                     OnnxParser, Builder)
    trt.Runtime, trt.ICudaEngine, trt.IExecutionContext = Runtime, ICudaEngine, IExecutionContext
    return trt
