"""OpenVINO model runners for the host cascade (CPU): the bundle's ONNX files compiled by OpenVINO.

OpenVINO reads ONNX directly (``Core.read_model`` on the hash-checked bytes, so nothing can swap
the file between check and load). Precision is the *inference* precision of the CPU plugin
(https://docs.openvino.ai/2025/openvino-workflow/running-inference/optimize-inference/precision-control.html):

- ``fp32``: the FP32 ONNX with ``INFERENCE_PRECISION_HINT=f32``. It is set explicitly because on a
  CPU with BF16 support the plugin's default inference precision is bf16;
- ``bf16``: the FP32 ONNX with ``INFERENCE_PRECISION_HINT=bf16``, only where the CPU reports
  ``BF16`` in ``OPTIMIZATION_CAPABILITIES`` (otherwise it would be emulated, and slower);
- ``int8``: the bundle's INT8 QDQ ONNX (written and gated by ``bpedge export --int8``); the plugin
  runs the quantised convolutions in int8 and the rest in f32.

``openvino`` is imported lazily: ``import bpedge`` works without it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from bpedge._model_tensors import DeclaredTensor

#: Precisions this backend runs (bf16 reads the FP32 ONNX, int8 the INT8 QDQ ONNX).
PRECISIONS = ("fp32", "bf16", "int8")

#: Held around the first ``infer`` of every infer request. OpenVINO's Python binding (2026.4)
#: initialises a C++ function-local static on the way into an inference while waiting for the
#: GIL inside that static's guard, so two threads making their first call at once can deadlock:
#: one holds the guard and waits for the GIL, the other holds the GIL and waits for the guard
#: (py-spy: ``__cxa_guard_acquire`` against ``pthread_cond_timedwait`` under
#: ``data_dispatcher``). Seen as ``bpedge segment VIDEO`` (depth 2) and ``stream(depth=3)`` hanging
#: forever in 2 of ~12 fresh processes. The static is one per process, so this lock is too; a
#: request's later calls do not take it.
_FIRST_INFER = threading.Lock()

#: The process's one OpenVINO ``Core`` (:func:`_core`), made at first use and never destroyed.
#: The CPU plugin gives a thread that compiles a model an alternate signal stack
#: (``sigaltstack``) and, when its Core is destroyed, puts back the stack it found there. Two
#: Cores destroyed in the order they were made (a Segmenter's detector, then its segmenter) left
#: the thread on the first Core's stack, already freed, and the next signal it got (Ctrl-C,
#: SIGTERM, even one Python handles) killed the process with SIGSEGV (OpenVINO 2026.4; seen as
#: ``bpedge bench`` dying when interrupted after its OpenVINO rows). One Core that outlives every
#: model never hands back a freed stack; OpenVINO's guides reuse one Core per application too.
_CORE: Any = None
_CORE_LOCK = threading.Lock()


def _core() -> Any:
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            import openvino as ov

            _CORE = ov.Core()
        return _CORE


def openvino_unavailable_reason() -> str | None:
    """None when OpenVINO imports and lists a CPU device, else why not (with the fix)."""
    try:
        import openvino  # noqa: F401  (whether it imports at all)
    except ImportError as exc:
        return f"OpenVINO is not installed ({exc}); fix: pip install 'bpedge[openvino]'"
    try:
        devices = _core().available_devices
    except RuntimeError as exc:
        return f"OpenVINO cannot start its CPU plugin ({exc})"
    if "CPU" not in devices:
        return f"OpenVINO lists no CPU device (it lists {devices})"
    return None


def cpu_capabilities() -> tuple[str, ...]:
    """The CPU plugin's ``OPTIMIZATION_CAPABILITIES`` (e.g. ``FP32``, ``BF16``, ``INT8``)."""
    return tuple(str(c) for c in _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def default_precision() -> str:
    """The precision ``precision=None`` picks, as for TensorRT (the fastest reduced precision the
    hardware runs natively that needs no other file): bf16 where the CPU has it, else fp32."""
    return "bf16" if "BF16" in cpu_capabilities() else "fp32"


class OvModel:
    """One compiled OpenVINO model: feeds a float32 batch to the single input and returns the
    named outputs in order. ``model`` is ONNX bytes (already hash-checked); ``name`` labels
    errors; ``threads`` sets ``INFERENCE_NUM_THREADS`` (``None``: OpenVINO's choice).

    One infer request per calling thread, so :meth:`~bpedge.segmenter.Segmenter.stream`'s workers
    never share one."""

    def __init__(self, model: bytes, name: str, output_names: Sequence[str], precision: str,
                 threads: int | None = None):
        if precision not in PRECISIONS:
            raise ValueError(f"{name}: OpenVINO precision must be one of {PRECISIONS}, got "
                             f"{precision!r}")
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        if precision == "bf16" and "BF16" not in cpu_capabilities():
            raise ValueError(f"{name}: this CPU has no native BF16 (OpenVINO's CPU capabilities: "
                             f"{list(cpu_capabilities())}); use precision 'fp32' or 'int8'")
        self.name = name
        self.output_names = list(output_names)
        core = _core()
        try:
            read = core.read_model(model)
        except RuntimeError as exc:
            raise ValueError(
                f"{name}: OpenVINO cannot read this model ({str(exc).splitlines()[0]}); export "
                "the bundle again with `bpedge export`, or use backend='onnxruntime'"
            ) from exc
        #: What the model declares (for the load-time checks of :mod:`bpedge._model_tensors`).
        self.declared_inputs = _declared(read.inputs)
        self.declared_outputs = _declared(read.outputs)
        config: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        if len(read.inputs) != 1:
            raise ValueError(f"{name}: expected a model with one input, found {len(read.inputs)}")
        known = {n for o in read.outputs for n in o.get_names()}
        missing = [n for n in output_names if n not in known]
        if missing:
            raise ValueError(f"{name}: model has no output(s) {missing}; it has {sorted(known)}")
        self._core, self._config = core, config
        # Batch 1 (every frame of seg(frame) and stream) runs a copy compiled for that static
        # shape: measured on the demo's tiny detector, OpenVINO 2026.4, 2 threads of an AVX2
        # EPYC, 12.3 -> 11.5 ms a frame against the dynamic-batch compile. Other batch sizes
        # compile the dynamic model the first time they come.
        shape = read.inputs[0].get_partial_shape()
        if shape.rank.is_static and len(shape) >= 1 and shape[0].is_dynamic:
            self._dynamic_model: Any = read.clone()  # compiled on the first batch > 1
            read.reshape([1, *(d.get_length() if d.is_static else -1 for d in list(shape)[1:])])
            self._batch1 = self._compile(read)
            self._dynamic = None
        else:
            self._batch1 = None
            self._dynamic = self._compile(read)
            self._dynamic_model = None
        self._compile_lock = threading.Lock()
        self._local = threading.local()
        self.precision = precision

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, "CPU", self._config)
        except RuntimeError as exc:
            raise ValueError(
                f"{self.name}: OpenVINO cannot compile this model ({str(exc).splitlines()[0]}); "
                "export the bundle again with `bpedge export`, or use backend='onnxruntime'"
            ) from exc

    def _request(self, n: int) -> tuple[Any, Any, list[bool]]:
        """This thread's infer request for a batch of ``n``, its output ports, and whether it has
        run an inference (a one-item list, set by the first call)."""
        static = n == 1 and self._batch1 is not None
        key = "batch1" if static else "dynamic"
        found = getattr(self._local, key, None)
        if found is None:
            compiled = self._batch1 if static else self._dynamic
            if compiled is None:
                with self._compile_lock:
                    if self._dynamic is None:
                        self._dynamic = self._compile(self._dynamic_model)
                        self._dynamic_model = None
                compiled = self._dynamic
            found = (compiled.create_infer_request(),
                     [compiled.output(name) for name in self.output_names], [False])
            setattr(self._local, key, found)
        return found  # type: ignore[no-any-return]

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        request, outputs, called = self._request(len(batch))
        # share_inputs: OpenVINO reads the caller's contiguous float32 buffer without a copy.
        inputs = [np.ascontiguousarray(batch, np.float32)]
        if called[0]:
            results = request.infer(inputs, share_inputs=True)
        else:
            with _FIRST_INFER:  # see _FIRST_INFER: a first call racing another thread's can hang
                results = request.infer(inputs, share_inputs=True)
            called[0] = True
        # Copies: the request's output tensors are reused by its next inference.
        return [np.array(results[o], dtype=np.float32) for o in outputs]


# OpenVINO element type names -> the manifest's dtypes.
_OV_DTYPES = {"f32": "float32", "f16": "float16", "u8": "uint8", "i8": "int8", "i32": "int32",
              "i64": "int64", "boolean": "bool"}


def _declared(ports: Sequence[Any]) -> tuple[DeclaredTensor, ...]:
    tensors = []
    for port in ports:
        kind = port.get_element_type().get_type_name()
        shape = port.get_partial_shape()
        dims: tuple[int | str, ...] = (
            tuple(d.get_length() if d.is_static else "?" for d in shape)
            if shape.rank.is_static else ("...",))
        tensors.append(DeclaredTensor(port.get_any_name(), _OV_DTYPES.get(kind, kind), dims))
    return tuple(tensors)
