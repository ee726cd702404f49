"""The runtimes a benchmark compares, each opened as a :class:`~bpedge.segmenter.Segmenter` over the
same bundle, or skipped with the reason it cannot run here.

The PyTorch-eager baseline is a :class:`~bpedge._cascade.HostCascade` whose two model runners are
the bundle's own checkpoints run by PyTorch under ``torch.inference_mode()``: the pre- and
post-processing are the same code as on the ONNX Runtime rows, so the only difference between
rows is the model runtime.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge.bundle import Bundle, BundleError
from bpedge.segmenter import Segmenter

if TYPE_CHECKING:
    from torch import nn

BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
#: The precisions each backend can run: other pairs are not rows at all.
SUPPORTED = {"torch": ("fp32",), "onnxruntime": ("fp32", "fp16", "int8"),
             "openvino": ("fp32", "bf16", "int8"), "tensorrt": ("fp32", "fp16", "int8")}
#: The row every speed-up is measured against.
BASELINE = ("torch", "fp32")


class RowUnavailable(RuntimeError):
    """This backend/precision cannot run here; the message says why (shown in the table)."""


@dataclass(frozen=True)
class RowChoice:
    backend: str
    precision: str

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    @property
    def label(self) -> str:
        names = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                 "tensorrt": "TensorRT"}
        return f"{names[self.backend]} {self.precision}"


def parse_choices(backends: str, precisions: str) -> list[RowChoice]:
    """Comma-separated backend and precision lists -> the rows to run: the PyTorch-eager fp32
    baseline first (if ``torch`` is listed), then every other (backend, precision) pair.
    ValueError names the bad entry and the valid ones."""
    bs = [b.strip() for b in backends.split(",") if b.strip()]
    ps = [p.strip() for p in precisions.split(",") if p.strip()]
    if not bs or not ps:
        raise ValueError("--backends and --precisions must each name at least one entry")
    for b in bs:
        if b not in BACKENDS:
            raise ValueError(f"--backends: unknown backend {b!r}; choose from {list(BACKENDS)}")
    for p in ps:
        if p not in PRECISIONS:
            raise ValueError(f"--precisions: unknown precision {p!r}; choose from {list(PRECISIONS)}")
    # PyTorch eager is the fp32 baseline only: whenever "torch" is asked for, it runs in fp32
    # (the speed-ups need it), and never as an fp16 row.
    pairs = [RowChoice(b, p) for b in dict.fromkeys(bs) if b != "torch" for p in dict.fromkeys(ps)
             if p in SUPPORTED[b]]
    if "torch" in bs:
        pairs.insert(0, RowChoice(*BASELINE))
    return pairs


def open_row(bundle: Bundle, choice: RowChoice, threads: int, max_batch: int) -> Segmenter:
    """A Segmenter for ``choice`` over ``bundle``, with ``threads`` intra-op threads on the CPU,
    or :class:`RowUnavailable` saying why it cannot run here."""
    if choice.backend == "torch":
        return _torch_segmenter(bundle, choice.precision, threads)
    if choice.backend in ("onnxruntime", "openvino"):
        try:
            return Segmenter.from_bundle(bundle, choice.backend, precision=choice.precision,  # type: ignore[arg-type]
                                         threads=threads, max_batch=max_batch)
        except (BundleError, ValueError, RuntimeError) as exc:
            raise RowUnavailable(str(exc).splitlines()[0].removeprefix(
                "backend='openvino' cannot run: ").removeprefix(
                "backend='openvino' cannot run this precision: ")) from exc
    try:
        return Segmenter.from_bundle(bundle, "tensorrt", precision=choice.precision,  # type: ignore[arg-type]
                                     max_batch=max_batch)
    except (RuntimeError, ImportError, BundleError, ValueError) as exc:
        raise RowUnavailable(str(exc).splitlines()[0].removeprefix(
            "backend='tensorrt' cannot run: ")) from exc


def _torch_segmenter(bundle: Bundle, precision: str, threads: int) -> Segmenter:
    if precision != "fp32":
        raise RowUnavailable("the PyTorch-eager baseline runs fp32 only (PyTorch's CPU FP16 "
                             "convolutions are not a deployment path)")
    try:
        import torch
    except ImportError as exc:
        raise RowUnavailable(f"PyTorch is not installed ({exc}); pip install 'bpedge[train]'") \
            from exc
    refs = {name: bundle.manifest.models[name].checkpoint for name in ("detector", "segmenter")}
    missing = [name for name, ref in refs.items() if ref is None]
    if missing:
        raise RowUnavailable(f"the bundle carries no {' or '.join(missing)} checkpoint to run "
                             "in PyTorch (export it with --include-checkpoints)")
    torch.set_num_threads(threads)
    spec = CascadeSpec.from_manifest(bundle.manifest)
    detector = _role_model(bundle, refs["detector"].file, "detector",  # type: ignore[union-attr]
                           spec.detector_input_hw)
    segmenter = _role_model(bundle, refs["segmenter"].file, "segmenter",  # type: ignore[union-attr]
                            spec.crop_hw)
    cascade = HostCascade(torch_detector_runner(detector), torch_segmenter_runner(segmenter), spec)
    return Segmenter(cascade, spec, "torch", "fp32")


def _role_model(bundle: Bundle, file: str, role: str, input_hw: tuple[int, int]) -> nn.Module:
    """The checkpoint ``file`` (hash-checked) as the eval-mode model of ``role``, or
    :class:`RowUnavailable` naming it when it is another kind of model or takes another input
    size than the manifest's (its ONNX files are checked the same way at load): a U-Net in the
    detector's place ran until its outputs failed to unpack, in a message naming no file."""
    from bpedge.train.checkpoint import CheckpointError, load_model

    path = bundle.verified_path(file)
    try:
        model, payload = load_model(path)
    except CheckpointError as exc:
        raise RowUnavailable(str(exc).splitlines()[0]) from exc
    kind, arch = payload.get("kind"), payload.get("arch")
    if kind != role:
        raise RowUnavailable(f"{path} holds a {kind} checkpoint ({arch}), not the {role}")
    hw = tuple(payload.get("input_hw") or ())
    if hw != tuple(input_hw):
        raise RowUnavailable(f"{path}: a {role} for {list(hw)} inputs, the manifest's takes "
                             f"{list(input_hw)}")
    return model


def torch_detector_runner(model: nn.Module) -> Any:
    """An eval-mode detector as a :data:`~bpedge._cascade.DetectorRunner`: float32 (N, 1, H, W)
    -> (scores (N,), boxes (N, 4) in detector-input pixels), NumPy in and out."""
    from bpedge.train.inference import run_batches

    def run(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ((scores, boxes),) = run_batches(model, [batch])
        return scores.reshape(-1), boxes.reshape(-1, 4)

    return run


def torch_segmenter_runner(model: nn.Module) -> Any:
    """An eval-mode segmenter as a :data:`~bpedge._cascade.SegmenterRunner`: float32
    (N, 1, h, w) -> probabilities (N, 1, h, w)."""
    from bpedge.train.inference import run_batches

    def run(batch: np.ndarray) -> np.ndarray:
        ((prob,),) = run_batches(model, [batch])
        return prob

    return run
