"""ONNX Runtime for the host cascade (the embedded CPU default): one session per model
(:class:`OrtModel`) and the cascade built from a bundle's two models (:func:`onnxruntime_cascade`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._manifest import TensorSpec
from bpedge._manifest_fields import BundleError
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
        #: The model's declared input shape: ints, or strings/None for dynamic dimensions.
        self.input_shape: tuple[int | str | None, ...] = tuple(inputs[0].shape)
        self._input_type = np.float16 if "float16" in inputs[0].type else np.float32
        known = {o.name for o in self._session.get_outputs()}
        missing = [n for n in output_names if n not in known]
        if missing:
            raise ValueError(f"{name}: model has no output(s) {missing}; it has {sorted(known)}")
        self.output_names = list(output_names)
        self.name = name

    def check_input_hw(self, expected_hw: tuple[int, int], source: str) -> None:
        """ValueError unless the model takes (N, 1, H, W) with (H, W) == ``expected_hw`` (what
        ``source``, a manifest field, declares): caught at load instead of on every frame."""
        shape = self.input_shape
        hw = tuple(shape[-2:]) if len(shape) == 4 else None
        fixed = hw is not None and all(isinstance(d, int) for d in hw)
        if len(shape) != 4 or (fixed and hw != tuple(expected_hw)):
            raise ValueError(
                f"{self.name}: the model's input is {list(shape)}, but the manifest's {source} is "
                f"{list(expected_hw)}; the manifest does not describe this model: re-export the "
                "bundle with `bpedge export`"
            )

    def check_tensors(self, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                      source: str) -> None:
        """:class:`BundleError` unless the model's inputs and outputs are exactly the manifest's
        ``inputs`` and ``outputs`` (``source``: where the manifest lists them): the same names,
        element types and ranks, a fixed size wherever the manifest gives one, and a dynamic
        batch wherever it says ``"N"``. A manifest that misdescribes its model misleads every
        other reader of the bundle (C++ firmware, TensorRT builds) even where this runtime would
        still run it."""
        problems: list[str] = []
        for kind, declared, actual in (("input", inputs, self._session.get_inputs()),
                                       ("output", outputs, self._session.get_outputs())):
            found = {a.name: a for a in actual}
            names = [spec.name for spec in declared]
            if sorted(names) != sorted(found):
                problems.append(f"{kind}s {sorted(names)} in the manifest, {sorted(found)} in "
                                "the model")
                continue
            for spec in declared:
                problems += _tensor_problems(kind, spec, found[spec.name])
        if problems:
            raise BundleError(
                f"{self.name}: the model does not match {source} in the manifest ("
                f"{'; '.join(problems)}); the manifest does not describe this model: re-export "
                "the bundle with `bpedge export`")

    def check_outputs(self, allowed: dict[str, tuple[tuple[int, ...], ...]]) -> None:
        """:class:`BundleError` unless each named output's declared shape is one of its
        ``allowed`` shapes (``-1``: any size; a dynamic dimension of the model fits any size):
        the cascade reads one score, one box and one crop-sized probability map per frame."""
        declared = {o.name: list(o.shape) for o in self._session.get_outputs()}
        for name, shapes in allowed.items():
            shape = declared[name]
            if not any(len(shape) == len(want) and all(
                    w == -1 or not isinstance(d, int) or d == w for d, w in zip(shape, want))
                    for want in shapes):
                wanted = " or ".join(str(["N" if w == -1 else w for w in want]) for want in shapes)
                raise BundleError(f"{self.name}: output {name!r} is {shape}; the cascade needs "
                                  f"{wanted}: this is not a bpedge model, re-export the bundle "
                                  "with `bpedge export`")

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self._input_type)}
        outputs = self._session.run(self.output_names, feed)
        return [np.asarray(o, dtype=np.float32) for o in outputs]


# ONNX Runtime's NodeArg.type strings for the manifest's dtypes.
_ORT_TYPES = {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)",
              "int8": "tensor(int8)", "int32": "tensor(int32)", "int64": "tensor(int64)",
              "bool": "tensor(bool)"}


def _tensor_problems(kind: str, spec: TensorSpec, actual: Any) -> list[str]:
    problems = []
    if _ORT_TYPES.get(spec.dtype) != actual.type:
        problems.append(f"{kind} {spec.name!r} is {spec.dtype} in the manifest, {actual.type} in "
                        "the model")
    shape = list(actual.shape)
    dims_match = len(shape) == len(spec.shape) and all(
        (not isinstance(have, int)) if want == "N" else (not isinstance(have, int) or have == want)
        for want, have in zip(spec.shape, shape))
    if not dims_match:
        problems.append(f"{kind} {spec.name!r} is {list(spec.shape)} in the manifest, {shape} in "
                        "the model")
    return problems


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
    if isinstance(detector, OrtModel):  # ONNX Runtime sessions check the bundle's sizes
        detector.check_input_hw(spec.detector_input_hw, "preprocessing.detector.input_hw")
        segmenter.check_input_hw(spec.crop_hw, "preprocessing.segmenter.crop_hw")
        for name, session in (("detector", detector), ("segmenter", segmenter)):
            entry = bundle.manifest.models[name]
            session.check_tensors(entry.inputs, entry.outputs,
                                  f"models.{name}.inputs/outputs")
        detector.check_outputs({"score": ((-1,), (-1, 1)), "box": ((-1, 4),)})
        segmenter.check_outputs({"prob": ((-1, 1, *spec.crop_hw),)})

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
