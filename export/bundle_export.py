"""``bpedge export``: two checkpoints -> a checked bundle (ONNX FP32 + FP16, manifest, checkpoints).

Steps (each announced through ``log``):

1. load both checkpoints (a detector and a segmenter, each a file or a run folder's best.pt);
2. find the validation data: the frames of each checkpoint's validation split in ``--data`` (or
   the folder the checkpoint recorded), refused if its content fingerprint is not the one the
   checkpoint trained on (unless ``force``);
3. export both models to FP32 ONNX (:mod:`bpedge.export.onnx_export`);
4. convert both to mixed-precision FP16 ONNX (:mod:`bpedge.export.fp16`);
5. run the detector (PyTorch, ONNX FP32, ONNX FP16) on its validation frames;
6. make the segmenter's validation crops the way it was trained (ground-truth boxes, the whole
   frame, or the exported detector's boxes) and run it likewise;
7. choose the mask and score thresholds on the FP32 ONNX outputs (:mod:`bpedge.export.thresholds`)
   and measure FP16 against FP32 at that mask threshold (:mod:`bpedge.export.parity`);
8. fail if a parity gate fails; otherwise copy the checkpoints in, write ``manifest.json`` through
   :meth:`bpedge.bundle.Bundle.create` (which hashes and checks every file) and move the finished
   bundle into place.

Everything is built in a temporary directory beside ``out`` and renamed to ``out`` only at the
end, so a failed or killed export leaves no ``out`` (and an existing bundle is replaced, with
``force``, only by a complete one).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bpedge.export import _validation as val
from bpedge.export.fp16 import write_fp16_onnx
from bpedge.export.onnx_export import IO_NAMES, export_onnx
from bpedge.export.parity import (
    DetectorOutputs,
    OnnxModel,
    ParityError,
    Tolerances,
    compare_detectors,
    compare_segmenters,
    fp16_problems,
    fp32_problems,
    run_torch,
)
from bpedge.export.thresholds import choose_mask_threshold, choose_score_threshold

from bpedge._manifest import (
    DetectorPreprocessing,
    Manifest,
    ModelEntry,
    OnnxFiles,
    Preprocessing,
    SegmenterPreprocessing,
    Thresholds,
    Training,
)
from bpedge.bundle import Bundle, file_ref

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ExportOptions", "LoadedCheckpoint", "ParityError", "export_bundle", "load_checkpoint_of"]

STEPS = 8
FILES = {
    "detector": ("detector.fp32.onnx", "detector.fp16.onnx", "detector.pt"),
    "segmenter": ("segmenter.fp32.onnx", "segmenter.fp16.onnx", "segmenter.pt"),
}


@dataclass(frozen=True)
class ExportOptions:
    """What ``bpedge export`` takes. ``data`` None: the folder each checkpoint recorded.
    ``max_val``: check on at most this many validation frames per model (seeded sample).
    ``force``: replace a non-empty ``out`` and accept data whose fingerprint differs."""

    detector: Path
    segmenter: Path
    out: Path
    data: Path | None = None
    max_val: int | None = None
    force: bool = False
    batch_size: int = 8
    tolerances: Tolerances = field(default_factory=Tolerances)

    def check(self) -> None:
        """ValueError / FileNotFoundError naming the option, before any work is done."""
        if self.max_val is not None and self.max_val < 1:
            raise ValueError(f"--max-val must be at least 1, got {self.max_val}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        for flag, path in (("--detector", self.detector), ("--segmenter", self.segmenter)):
            if not Path(path).exists():
                raise FileNotFoundError(f"{flag} {path} does not exist (a checkpoint file or a "
                                        "run folder with best.pt)")
        if self.data is not None and not Path(self.data).exists():
            raise FileNotFoundError(f"--data folder {self.data} does not exist")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not self.force:
            raise ValueError(f"--out {out} exists and is not empty: choose a new directory, or "
                             "pass --force to replace it")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint file, its eval-mode CPU model and its payload (see bpedge.train.checkpoint)."""

    kind: str
    path: Path
    model: nn.Module
    payload: dict[str, Any]

    @property
    def input_hw(self) -> tuple[int, int]:
        h, w = self.payload["input_hw"]
        return (int(h), int(w))

    @property
    def mean(self) -> float:
        return float(self.payload["normalization"]["mean"])

    @property
    def std(self) -> float:
        return float(self.payload["normalization"]["std"])


def load_checkpoint_of(kind: str, path: Path) -> LoadedCheckpoint:
    """Load ``path`` (file or run folder) and insist that it holds a ``kind`` model."""
    from bpedge.train.checkpoint import load_model, resolve_checkpoint

    file = resolve_checkpoint(path)
    model, payload = load_model(file, "cpu")
    if payload["kind"] != kind:
        raise ValueError(f"{file} holds a {payload['kind']} checkpoint; --{kind} needs a {kind} "
                         "checkpoint")
    if kind == "segmenter" and payload.get("crop_mode") not in val.CROP_MODES:
        raise ValueError(f"{file} does not record the crop mode it was trained with "
                         f"(crop_mode={payload.get('crop_mode')!r}, expected one of "
                         f"{val.CROP_MODES})")
    return LoadedCheckpoint(kind=kind, path=file, model=model, payload=payload)


class _Steps:
    def __init__(self, log: Callable[[str], None]) -> None:
        self._log = log
        self._n = 0

    def __call__(self, what: str) -> None:
        self._n += 1
        self._log(f"[{self._n}/{STEPS}] {what}")

    def note(self, what: str) -> None:
        self._log(f"      {what}")


def export_bundle(opts: ExportOptions, log: Callable[[str], None] = print) -> Bundle:
    """Run the export described in the module docstring; returns the opened bundle at
    ``opts.out``. Raises ValueError / FileNotFoundError for bad input, :class:`ParityError` when
    a parity gate fails (nothing is left at ``opts.out`` then)."""
    import onnxruntime
    import torch

    opts.check()
    step = _Steps(log)
    step("loading checkpoints")
    det = load_checkpoint_of("detector", Path(opts.detector))
    seg = load_checkpoint_of("segmenter", Path(opts.segmenter))
    step.note(f"detector {det.payload['arch']} {det.input_hw[0]}x{det.input_hw[1]} from {det.path}")
    step.note(f"segmenter {seg.payload['arch']} ({seg.payload['crop_mode']} crops) from {seg.path}")

    step("checking the validation data")
    scanned: dict[Any, Any] = {}
    checks = {}
    frames = {}
    for ck in (det, seg):
        root = val.resolve_data_root(ck.payload, opts.data, ck.kind)
        checks[ck.kind] = val.check_data(root, ck.payload, ck.kind, force=opts.force,
                                         warn=step.note, scanned=scanned)
        frames[ck.kind] = val.validation_frames(checks[ck.kind], ck.payload, ck.kind,
                                                max_val=opts.max_val, force=opts.force,
                                                warn=step.note)
    seed = int((det.payload.get("split") or {}).get("seed", 0))
    det_frames = frames["detector"]
    det_frames = val.ValidationFrames(
        positives=det_frames.positives,
        empties=val.empty_frames_for_presence(checks["detector"], det.payload,
                                              det_frames.positives, seed),
        split_mode=det_frames.split_mode, split_size=det_frames.split_size,
    )
    seg_frames = frames["segmenter"]
    step.note(f"detector: {len(det_frames.positives)} validation frames with BP + "
              f"{len(det_frames.empties)} without; segmenter: {len(seg_frames.positives)} frames")

    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging_dir(out) as tmp:
        step("exporting FP32 ONNX")
        for ck in (det, seg):
            fp32, _, _ = FILES[ck.kind]
            exported = export_onnx(ck.model, ck.kind, ck.input_hw, tmp / fp32)
            step.note(f"{fp32}: {exported.nodes} nodes")

        step("converting to mixed-precision FP16 ONNX")
        fp16_info = {}
        for ck in (det, seg):
            fp32, fp16, _ = FILES[ck.kind]
            fp16_info[ck.kind] = write_fp16_onnx(tmp / fp32, tmp / fp16, ck.kind, ck.input_hw)
            step.note(f"{fp16}: {fp16_info[ck.kind].nodes} nodes, "
                      f"{len(fp16_info[ck.kind].tail_nodes)} tail nodes kept FP32")

        runners = {
            (kind, precision): OnnxModel(tmp / FILES[kind][i], IO_NAMES[kind][0],
                                         IO_NAMES[kind][1], opts.batch_size)
            for kind in ("detector", "segmenter")
            for i, precision in enumerate(("fp32", "fp16"))
        }

        step(f"detector parity on {len(det_frames.frames)} validation frames")
        det_store = val.load_store(det_frames.frames)
        det_x = val.detector_inputs(det_store, det.input_hw, det.mean, det.std)
        det_out = {
            "torch": DetectorOutputs(*run_torch(det.model, det_x, opts.batch_size)),
            "fp32": DetectorOutputs(*runners[("detector", "fp32")](det_x)),
            "fp16": DetectorOutputs(*runners[("detector", "fp16")](det_x)),
        }
        truth = val.truth_boxes_input_px(det_store, det.input_hw)
        det_fp32 = compare_detectors(det_out["torch"], det_out["fp32"], truth)
        det_fp16 = compare_detectors(det_out["fp32"], det_out["fp16"], truth)
        step.note(f"FP32 vs PyTorch: score {det_fp32['max_score_diff']:.2e}, box "
                  f"{det_fp32['max_box_diff_px']:.2e} px; FP16 vs FP32: box IoU "
                  f"{_fmt(det_fp16['mean_box_iou_with_reference'])}")
        del det_x

        step(f"segmenter parity on {len(seg_frames.positives)} validation crops "
             f"({seg.payload['crop_mode']} boxes)")
        seg_store = val.load_store(seg_frames.positives)
        detector32 = runners[("detector", "fp32")]
        boxes = val.segmenter_boxes(
            seg.payload["crop_mode"], seg_store,
            detect=lambda x: detector32(x)[1],
            detector_input=lambda s: val.detector_inputs(s, det.input_hw, det.mean, det.std),
            detector_input_hw=det.input_hw,
        )
        crops, targets = val.segmenter_crops(seg_store, boxes, seg.input_hw, seg.mean, seg.std)
        probs = {
            "torch": run_torch(seg.model, crops, opts.batch_size)[0],
            "fp32": runners[("segmenter", "fp32")](crops)[0],
            "fp16": runners[("segmenter", "fp16")](crops)[0],
        }
        seg_fp32 = compare_segmenters(probs["torch"], probs["fp32"])
        step.note(f"FP32 vs PyTorch: probability {seg_fp32['max_prob_diff']:.2e}")

        step("choosing thresholds on validation data")
        crop_source = {
            "gt": "ground-truth boxes", "none": "whole frames",
            "detector": "boxes of the exported FP32 detector (ONNX Runtime)",
        }[seg.payload["crop_mode"]]
        mask = choose_mask_threshold(probs["fp32"], targets, data={
            "model": FILES["segmenter"][0], "crops": len(seg_frames.positives),
            "crop_boxes": crop_source, **seg_frames.to_json(),
            **checks["segmenter"].to_json(),
        })
        present = np.array([f.present for f in det_frames.frames])
        score = choose_score_threshold(det_out["fp32"].scores, present, data={
            "model": FILES["detector"][0], **det_frames.to_json(),
            "frames_without_bp_from": "empty frames of the validation subjects, sampled at the "
                                      "dataset's empty:BP ratio (never used in training)",
            **checks["detector"].to_json(),
        })
        step.note(f"mask threshold {mask.value:g} (mean Dice {mask.metric:.4f}); score threshold "
                  f"{score.value:g} ({score.how['method']})")
        seg_fp16 = compare_segmenters(probs["fp32"], probs["fp16"], targets, mask.value)

        tol = opts.tolerances
        problems = fp32_problems(det_fp32, seg_fp32, tol) + fp16_problems(det_fp16, seg_fp16, tol)
        if problems:
            raise ParityError("export failed its parity checks, nothing was written:\n  "
                              + "\n  ".join(problems))
        step.note(f"FP16 vs FP32: Dice change {seg_fp16['dice_change']:+.4f}, probability "
                  f"{seg_fp16['max_prob_diff']:.2e}")

        step(f"writing the bundle to {out}")
        for ck in (det, seg):
            shutil.copyfile(ck.path, tmp / FILES[ck.kind][2])
        parity = {
            "passed": True,
            "tolerances": tol.to_json(),
            "runtime": {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                        "provider": "CPUExecutionProvider"},
            "fp32_vs_pytorch": {"detector": det_fp32, "segmenter": seg_fp32},
            "fp16_vs_fp32": {"detector": det_fp16, "segmenter": seg_fp16},
            "fp16_conversion": {k: v.to_json() for k, v in fp16_info.items()},
        }
        manifest = Manifest(
            models={ck.kind: _model_entry(ck, tmp) for ck in (det, seg)},
            preprocessing=Preprocessing(
                detector=DetectorPreprocessing(det.input_hw, det.mean, det.std, "dataset"),
                segmenter=SegmenterPreprocessing(seg.input_hw, seg.mean, seg.std, "dataset"),
            ),
            thresholds=Thresholds(score=score.value, mask=mask.value,
                                  how_chosen={"score": score.how, "mask": mask.how}),
            training=_training(det, seg),
            parity=_json_safe(parity),
        )
        Bundle.create(tmp, manifest)
        _publish(tmp, out, opts.force)
    log(f"done: {out}")
    return Bundle.open(out)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _model_entry(ck: LoadedCheckpoint, root: Path) -> ModelEntry:
    from bpedge.export.onnx_export import contract_specs
    from bpedge.train.models import model_complexity

    fp32, fp16, pt = FILES[ck.kind]
    inputs, outputs = contract_specs(ck.kind, ck.input_hw)  # both ONNX files were checked to match
    params, flops = model_complexity(ck.model, (1, 1, *ck.input_hw))
    return ModelEntry(
        onnx=OnnxFiles(fp32=file_ref(root, fp32), fp16=file_ref(root, fp16)),
        inputs=inputs,
        outputs=outputs,
        arch=str(ck.payload["arch"]),
        flops=flops,
        params=params,
        checkpoint=file_ref(root, pt),
    )


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _json_safe(obj: Any) -> Any:
    """NumPy scalars -> Python numbers, non-finite floats -> None (the manifest is strict JSON)."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return _finite_or_none(obj)


def _split_summary(payload: dict[str, Any]) -> dict[str, Any]:
    split = payload.get("split") or {}
    return {
        "mode": split.get("mode"),
        "seed": split.get("seed"),
        "counts": {part: len(split.get(part) or []) for part in ("train", "val", "test")},
    }


def _training(det: LoadedCheckpoint, seg: LoadedCheckpoint) -> Training:
    fingerprints = {ck.kind: str(ck.payload.get("data_fingerprint") or "unknown")
                    for ck in (det, seg)}
    if fingerprints["detector"] == fingerprints["segmenter"]:
        fingerprint = fingerprints["detector"]
    else:
        fingerprint = ";".join(f"{k}={v}" for k, v in fingerprints.items())
    metrics = {
        ck.kind: {
            "metric": ck.payload.get("metric_name"),
            "best": ck.payload.get("best_metric"),
            "epochs": ck.payload.get("epoch"),
        }
        for ck in (det, seg)
    }
    presets = {
        ck.kind: {
            "preset": (ck.payload.get("config") or {}).get("preset"),
            "model_config": ck.payload.get("model_config"),
            **({"crop_mode": ck.payload.get("crop_mode")} if ck.kind == "segmenter" else {}),
        }
        for ck in (det, seg)
    }
    return Training(
        data_fingerprint=fingerprint,
        metrics=_json_safe(metrics),
        split=_json_safe({ck.kind: _split_summary(ck.payload) for ck in (det, seg)}),
        presets=_json_safe(presets),
    )


@contextlib.contextmanager
def _staging_dir(out: Path) -> Iterator[Path]:
    """A fresh directory beside ``out`` (same filesystem, so the final rename is atomic),
    removed on any failure."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    # mkdtemp makes the directory private (0700); a bundle is read by other users (device
    # services, build-engines run by another account), like the files in it.
    os.chmod(tmp, 0o755)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if tmp.exists():  # not published (an early return); nothing to keep
        shutil.rmtree(tmp, ignore_errors=True)


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished bundle ``tmp`` to ``out``. An empty ``out`` directory is replaced; a
    non-empty one only with ``force``, and only now that the new bundle is complete."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    if not force or not out.is_dir():
        raise ValueError(f"--out {out} appeared during the export; nothing was replaced")
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.replaced-", dir=out.parent))
    os.replace(out, old / out.name)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
