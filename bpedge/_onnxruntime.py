"""ONNX Runtime for the host cascade (the embedded CPU default): one session per model
(:class:`OrtModel`) and the cascade built from a bundle's two models (:func:`onnxruntime_cascade`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
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

    def __call__(self, batch: np.ndarray) -> list[np.ndarray]:
        feed = {self.input_name: np.ascontiguousarray(batch, dtype=self._input_type)}
        outputs = self._session.run(self.output_names, feed)
        return [np.asarray(o, dtype=np.float32) for o in outputs]


def onnxruntime_cascade(bundle: Bundle, spec: CascadeSpec, precision: str,
                        threads: int | None) -> HostCascade:
    """The host cascade over ``bundle``'s ``precision`` ONNX files, each hash-checked as it is
    read (the verified bytes are what ONNX Runtime loads)."""

    def model(name: str, outputs: list[str]) -> OrtModel:
        ref = bundle.onnx_ref(name, precision)
        return OrtModel(bundle.read_verified(ref.file), str(Path(bundle.root) / ref.file),
                        outputs, threads)

    detector = model("detector", ["score", "box"])
    segmenter = model("segmenter", ["prob"])
    detector.check_input_hw(spec.detector_input_hw, "preprocessing.detector.input_hw")
    segmenter.check_input_hw(spec.crop_hw, "preprocessing.segmenter.crop_hw")

    def run_detector(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        score, box = detector(batch)
        return score.reshape(-1), box.reshape(-1, 4)

    def run_segmenter(batch: np.ndarray) -> np.ndarray:
        return segmenter(batch)[0]

    return HostCascade(run_detector, run_segmenter, spec)
