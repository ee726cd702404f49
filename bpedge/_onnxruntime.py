"""ONNX Runtime for the host cascade (the embedded CPU default): one session per model
(:class:`OrtModel`) and the cascade built from a bundle's two models (:func:`onnxruntime_cascade`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._manifest_fields import BundleError
from bpedge._model_tensors import DeclaredTensor, check_input_hw, check_outputs, check_tensors
from bpedge.bundle import Bundle


class OrtModel:
    """One ONNX Runtime session: feeds a float32 batch to the model's single input and returns the
    named outputs in order. ``model`` is the ONNX bytes (already hash-checked by the bundle, so
    nothing can swap the file between check and load) or a path; ``name`` labels errors.
    ``threads`` sets intra-op threads (``None``: ONNX Runtime's default)."""

    def __init__(
        self,
        model: bytes | Path,
        name: str,
        output_names: Sequence[str],
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ):
        import onnxruntime as ort

        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1 or None, got {threads}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op workers busy-wait by default; in the cascade the host stages run between
        # two model calls, and spinning workers take the cores those stages need (measured on 2
        # cores, under load: 22-33 ms -> 7.5 ms per tiny-model frame). The option is documented at
        # https://onnxruntime.ai/docs/performance/tune-performance/threading.html
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            source = model if isinstance(model, bytes) else str(model)
            self._session = ort.InferenceSession(source, options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ValueError(
                f"{name}: ONNX Runtime cannot load this model ({exc}); the file is damaged or "
                "not an ONNX model this onnxruntime reads: export the bundle again with "
                "`bpedge export` (or upgrade onnxruntime if the model is newer)"
            ) from exc
        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"{name}: expected a model with one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        #: What the model declares (for the load-time checks of :mod:`bpedge._model_tensors`).
        self.declared_inputs = _declared(inputs)
        self.declared_outputs = _declared(self._session.get_outputs())
        self._input_type = np.float16 if "float16" in inputs[0].type else np.float32
        known = {o.name for o in self._session.get_outputs()}
        missing = [n for n in output_names if n not in known]
        if missing:
            raise ValueError(f"{name}: model has no output(s) {missing}; it has {sorted(known)}")
        self.output_names = list(output_names)
        self.name = name

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self._input_type)}
        outputs = self._session.run(self.output_names, feed)
        return [np.asarray(o, dtype=np.float32) for o in outputs]


# ONNX Runtime's NodeArg.type strings -> the manifest's dtypes.
_ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(uint8)": "uint8",
               "tensor(int8)": "int8", "tensor(int32)": "int32", "tensor(int64)": "int64",
               "tensor(bool)": "bool"}


def _declared(args: Sequence[Any]) -> tuple[DeclaredTensor, ...]:
    return tuple(DeclaredTensor(a.name, _ORT_DTYPES.get(a.type, a.type),
                                tuple(d if isinstance(d, int) else str(d or "?") for d in a.shape))
                 for a in args)


def onnxruntime_cascade(bundle: Bundle, spec: CascadeSpec, precision: str,
                        threads: int | None) -> HostCascade:
    """The host cascade over ``bundle``'s ``precision`` ONNX files, each hash-checked as it is
    read (the verified bytes are what ONNX Runtime loads)."""
    return host_cascade(bundle, spec, "onnxruntime", precision, threads)


def host_cascade(bundle: Bundle, spec: CascadeSpec, runtime: str, precision: str,
                 threads: int | None) -> HostCascade:
    """The host cascade over the bundle's ONNX files run by ``runtime`` ("onnxruntime" or
    "openvino", see :mod:`bpedge._openvino`) at ``precision``; each file hash-checked as it is
    read. ``int8``: a model whose INT8 failed the export's gate runs its FP32 file."""
    import logging

    def model(name: str, outputs: list[str]) -> Any:
        onnx_precision = "fp32" if precision == "bf16" else precision
        if onnx_precision == "int8" and bundle.manifest.models[name].onnx.int8 is None:
            # The export's INT8 gate did not ship this model: it stays FP32 (the manifest's
            # parity.int8 says why), the other model still runs INT8.
            if all(bundle.manifest.models[m].onnx.int8 is None for m in ("detector", "segmenter")):
                bundle.onnx_ref(name, "int8")  # raises: no INT8 model at all, with the fix
            logging.getLogger("bpedge").info(
                "bpedge: the %s has no INT8 ONNX (it failed the export's INT8 gate or was not "
                "quantised); it runs FP32", name)
            onnx_precision = "fp32"
        ref = bundle.onnx_ref(name, onnx_precision)
        label = str(Path(bundle.root) / ref.file)
        if runtime == "openvino":
            from bpedge._openvino import OvModel

            return OvModel(bundle.read_verified(ref.file), label, outputs, precision, threads)
        return OrtModel(bundle.read_verified(ref.file), label, outputs, threads)

    detector = model("detector", ["score", "box"])
    segmenter = model("segmenter", ["prob"])
    # Both runtimes check the models against the manifest at load, not on the first frame.
    check_input_hw(detector.name, detector.declared_inputs, spec.detector_input_hw,
                   "preprocessing.detector.input_hw")
    check_input_hw(segmenter.name, segmenter.declared_inputs, spec.crop_hw,
                   "preprocessing.segmenter.crop_hw")
    for name, loaded in (("detector", detector), ("segmenter", segmenter)):
        entry = bundle.manifest.models[name]
        check_tensors(loaded.name, loaded.declared_inputs, loaded.declared_outputs, entry.inputs,
                      entry.outputs, f"models.{name}.inputs/outputs")
    check_outputs(detector.name, detector.declared_outputs,
                  {"score": ((-1,), (-1, 1)), "box": ((-1, 4),)})
    check_outputs(segmenter.name, segmenter.declared_outputs,
                  {"prob": ((-1, 1, *spec.crop_hw),)})

    def run_detector(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, box = detector(batch)
        n = len(batch)
        # One score and one box per frame, or frame i would get another frame's answer.
        if score.size != n or box.shape[-1:] != (4,) or box.size != 4 * n:
            raise BundleError(
                f"{detector.name}: gave score {list(score.shape)} and box {list(box.shape)} for "
                f"{n} frame(s); bpedge needs score [N] and box [N, 4]: this is not a bpedge "
                "detector, re-export the bundle with `bpedge export`")
        return score.reshape(-1), box.reshape(-1, 4)

    def run_segmenter(batch: np.ndarray) -> np.ndarray:
        prob = segmenter(batch)[0]
        if prob.shape != (len(batch), 1, *spec.crop_hw):
            raise BundleError(
                f"{segmenter.name}: gave prob {list(prob.shape)} for {len(batch)} crop(s) of "
                f"{list(spec.crop_hw)}; bpedge needs [N, 1, {spec.crop_hw[0]}, "
                f"{spec.crop_hw[1]}]: re-export the bundle with `bpedge export`")
        return prob  # type: ignore[no-any-return]

    return HostCascade(run_detector, run_segmenter, spec)
