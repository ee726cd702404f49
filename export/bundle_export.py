"""``bpedge export``: two checkpoints -> a checked bundle (ONNX FP32 + FP16, manifest).

A bundle holds what a device needs: the ONNX files, the manifest and later the engines. The
training checkpoints stay beside it, in their run folders, and the manifest records where they
were and their sha256 (``training.presets.<model>.checkpoint``); ``include_checkpoints``
(``--include-checkpoints``) copies them in as well, listed and hash-checked like every other
file (what ``bpedge bench``'s PyTorch row runs).

Steps (each announced through ``log``):

1. load both checkpoints (a detector and a segmenter, each a file or a run folder's best.pt);
2. find the validation data: the frames of each checkpoint's validation split in ``--data`` (or
   the folder the checkpoint recorded), refused if its content fingerprint is not the one the
   checkpoint trained on (unless ``accept_other_data``);
3. export both models to FP32 ONNX (:mod:`bpedge.export.onnx_export`);
4. convert both to mixed-precision FP16 ONNX (:mod:`bpedge.export.fp16`);
5. run the detector (PyTorch, ONNX FP32, ONNX FP16) on its validation frames;
6. make the segmenter's validation crops the way it was trained (ground-truth boxes, the whole
   frame, or the exported detector's boxes) and run it likewise;
7. choose the mask and score thresholds on the FP32 ONNX outputs (:mod:`bpedge.export.thresholds`)
   and measure FP16 against FP32 at that mask threshold (:mod:`bpedge.export.parity`);
8. with ``int8``: quantise both models to INT8 QDQ ONNX, calibrated on training frames, in two
   forms (the CPU runtimes' U8S8 and TensorRT's symmetric S8S8), and gate each against FP32 on the
   validation frames (:mod:`bpedge.export.int8`); a model that fails its gate is not shipped in
   that form (the manifest records why), the export itself goes on;
9. fail if a parity gate fails; otherwise (with ``include_checkpoints``) copy the checkpoints
   in, write ``manifest.json`` through
   :meth:`bpedge.bundle.Bundle.create` (which hashes and checks every file) and move the finished
   bundle into place. (Without ``int8`` the steps are numbered 1-8.)

Everything is built in a temporary directory beside ``out`` and renamed to ``out`` only at the
end, so a failed or killed export leaves no ``out``. That directory carries export's marker from
the start and is locked while the export runs, so the next export into ``out`` removes one that a
killed export left (:func:`_remove_abandoned_work_dirs`) and never one in use. An existing ``out`` is replaced only with
``force``, only by a complete bundle, and only when it is itself a bundle that export made and
holds nothing else (:func:`bpedge._out_dir.is_replaceable_bundle`): any other non-empty folder,
or a bundle the user has put a file of their own into, is refused before any
work, so export never deletes a data folder, a run folder or anything else it did not write.
The replacement is one step on Linux (:func:`bpedge._atomic.exchange`): device software opening
``out`` at any moment, even after a kill mid-replacement, finds a whole bundle, old or new.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from bpedge.export import _validation as val
from bpedge.export.fp16 import Fp16Conversion, write_fp16_onnx
from bpedge.export.int8 import (
    FORMS,
    Int8Gate,
    Int8Result,
    gate_detector,
    gate_segmenter,
    quantize_gated,
)
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
from bpedge.train.checkpoint import crop_margin, model_input, preprocessing_spec

from bpedge._atomic import exchange
from bpedge._manifest import (
    FileRef,
    Manifest,
    ModelEntry,
    OnnxFiles,
    Preprocessing,
    Thresholds,
    Training,
    sha256_file,
)
from bpedge._out_dir import (
    OutDirRefused,
    foreign_bundle_entry,
    is_replaceable_bundle,
    made_by,
    mark_made_by,
)
from bpedge._partials import hold, remove_if_abandoned
from bpedge.bundle import Bundle, file_ref

if TYPE_CHECKING:
    from torch import nn

    from bpedge._preprocessing import ModelInput

__all__ = ["ExportOptions", "LoadedCheckpoint", "ParityError", "export_bundle", "load_checkpoint_of"]

STEPS = 8
FILES = {
    "detector": ("detector.fp32.onnx", "detector.fp16.onnx", "detector.pt"),
    "segmenter": ("segmenter.fp32.onnx", "segmenter.fp16.onnx", "segmenter.pt"),
}
#: INT8 QDQ files per form (:data:`bpedge.export.int8.FORMS`): the CPU runtimes' and TensorRT's.
INT8_FILES = {
    "cpu": {"detector": "detector.int8.onnx", "segmenter": "segmenter.int8.onnx"},
    "tensorrt": {"detector": "detector.int8-symmetric.onnx",
                 "segmenter": "segmenter.int8-symmetric.onnx"},
}


@dataclass(frozen=True)
class ExportOptions:
    """What ``bpedge export`` takes. ``data`` None: the folder each checkpoint recorded.
    ``max_val``: check on at most this many validation frames per model (seeded sample).
    ``force``: replace an ``out`` that is a bundle made by export (never any other folder).
    ``accept_other_data``: export although the data's fingerprint differs from the checkpoints'.
    ``include_checkpoints``: copy the two training checkpoints into the bundle (by default it holds
    ONNX files and the manifest only, which records where the checkpoints are)."""

    detector: Path
    segmenter: Path
    out: Path
    data: Path | None = None
    max_val: int | None = None
    force: bool = False
    accept_other_data: bool = False
    batch_size: int = 8
    tolerances: Tolerances = field(default_factory=Tolerances)
    include_checkpoints: bool = False
    int8: bool = False
    int8_gate: Int8Gate = field(default_factory=Int8Gate)
    calibration_frames: int = 32

    def check(self) -> None:
        """ValueError / FileNotFoundError naming the option, before any work is done."""
        if self.max_val is not None and self.max_val < 1:
            raise ValueError(f"--max-val must be at least 1, got {self.max_val}")
        if self.calibration_frames < 1:
            raise ValueError(f"--calibration-frames must be at least 1, got "
                             f"{self.calibration_frames}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {self.batch_size}")
        for flag, path in (("--detector", self.detector), ("--segmenter", self.segmenter)):
            if not Path(path).exists():
                raise FileNotFoundError(f"{flag} {path} does not exist (a checkpoint file or a "
                                        "run folder with best.pt)")
        if self.data is not None and not Path(self.data).exists():
            raise FileNotFoundError(f"--data folder {self.data} does not exist")
        out = Path(self.out)
        if out.is_symlink():
            # The bundle is published by renaming a folder onto --out, which replaces a link
            # itself (not its target): refused here rather than after the work.
            raise OutDirRefused(f"--out {out} is a symbolic link: give a real folder path (the "
                                "link's target, or a new name)")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()):
            if not is_replaceable_bundle(out):
                # Replacing a bundle deletes the whole folder: name what would be lost.
                foreign = foreign_bundle_entry(out)
                holds = f" (it holds {out / foreign}, which export did not write)" if foreign else ""
                raise OutDirRefused(
                    f"--out {out} exists and is not empty, and it is not a bundle made by `bpedge "
                    f"export` holding nothing else{holds}: export never replaces a folder it did "
                    "not make (--force replaces only such a bundle); choose a new or empty "
                    "directory")
            if not self.force:
                raise ValueError(f"--out {out} exists and is not empty (an earlier bundle): choose "
                                 "a new directory, or pass --force to replace it")


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A checkpoint file, its eval-mode CPU model and its payload (see bpedge.train.checkpoint)."""

    kind: str
    path: Path
    model: nn.Module
    payload: dict[str, Any]

    @property
    def input(self) -> ModelInput:
        """Input size and normalisation, as the checkpoint records them."""
        return model_input(self.payload)

    @property
    def input_hw(self) -> tuple[int, int]:
        return self.input.hw

    @property
    def mean(self) -> float | None:
        """The z-score mean, ``None`` when each image's own is used."""
        return self.input.norm.mean

    @property
    def std(self) -> float | None:
        """The z-score std, ``None`` when each image's own is used."""
        return self.input.norm.std


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
    def __init__(self, log: Callable[[str], None], total: int = STEPS) -> None:
        self._log = log
        self._n = 0
        self._total = total

    def __call__(self, what: str) -> None:
        self._n += 1
        self._log(f"[{self._n}/{self._total}] {what}")

    def note(self, what: str) -> None:
        self._log(f"      {what}")


def export_bundle(opts: ExportOptions, log: Callable[[str], None] = print) -> Bundle:
    """Run the export described in the module docstring; returns the opened bundle at
    ``opts.out``. Raises ValueError / FileNotFoundError for bad input, :class:`ParityError` when
    a parity gate fails (nothing is left at ``opts.out`` then)."""
    opts.check()
    step = _Steps(log, STEPS + 1 if opts.int8 else STEPS)
    step("loading checkpoints")
    det = load_checkpoint_of("detector", Path(opts.detector))
    seg = load_checkpoint_of("segmenter", Path(opts.segmenter))
    step.note(f"detector {det.payload['arch']} {det.input_hw[0]}x{det.input_hw[1]} from {det.path}")
    step.note(f"segmenter {seg.payload['arch']} ({seg.payload['crop_mode']} crops) from {seg.path}")

    step("checking the validation data")
    sets = _validation_sets(opts, det, seg, step.note)

    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging_dir(out) as tmp:
        fp16_info = _write_onnx_files((det, seg), tmp, step)
        runners = {
            (kind, precision): OnnxModel(tmp / FILES[kind][i], IO_NAMES[kind][0],
                                         IO_NAMES[kind][1], opts.batch_size)
            for kind in ("detector", "segmenter")
            for i, precision in enumerate(("fp32", "fp16"))
        }
        step(f"detector parity on {len(sets.detector.frames)} validation frames")
        det_runs = _run_detector(det, sets.detector, runners, opts.batch_size, step.note)
        step(f"segmenter parity on {len(sets.segmenter.positives)} validation crops "
             f"({seg.payload['crop_mode']} boxes)")
        seg_runs = _run_segmenter(seg, det, sets.segmenter, runners, opts.batch_size, step.note)

        step("choosing thresholds on validation data")
        mask = choose_mask_threshold(seg_runs.probs["fp32"], seg_runs.targets, data={
            "model": FILES["segmenter"][0], "crops": len(sets.segmenter.positives),
            "crop_boxes": seg_runs.crop_source, **sets.segmenter.to_json(),
            **sets.checks["segmenter"].to_json(),
        })
        present = np.array([f.present for f in sets.detector.frames])
        score = choose_score_threshold(det_runs.outputs["fp32"].scores, present, data={
            "model": FILES["detector"][0], **sets.detector.to_json(),
            "frames_without_bp_from": "empty frames of the validation subjects, sampled at the "
                                      "dataset's empty:BP ratio (never used in training)",
            **sets.checks["detector"].to_json(),
        })
        rates = ", ".join(f"{k} {score.how[k]:.3f}" for k in ("sensitivity", "specificity")
                          if score.how.get(k) is not None)
        step.note(f"mask threshold {mask.value:g} (mean Dice {mask.metric:.4f}); score threshold "
                  f"{score.value:g} ({score.how['method']}; validation {rates or 'no frames'})")
        seg_fp16 = compare_segmenters(seg_runs.probs["fp32"], seg_runs.probs["fp16"],
                                      seg_runs.targets, mask.value)

        tol = opts.tolerances
        problems = (fp32_problems(det_runs.fp32, seg_runs.fp32, tol)
                    + fp16_problems(det_runs.fp16, seg_fp16, tol))
        if problems:
            raise ParityError("export failed its parity checks, nothing was written:\n  "
                              + "\n  ".join(problems))
        step.note(f"FP16 vs FP32: Dice change {seg_fp16['dice_change']:+.4f}, probability "
                  f"{seg_fp16['max_prob_diff']:.2e}")

        int8: dict[str, dict[str, Int8Result]] = {}
        if opts.int8:
            step(f"INT8: calibrating on up to {opts.calibration_frames} training frames per "
                 "model, gating against FP32 on the validation frames")
            int8 = _write_int8(opts, det, seg, sets, det_runs, seg_runs, tmp, score.value,
                               mask.value, step.note)

        step(f"writing the bundle to {out}")
        parity = {
            "passed": True,
            "tolerances": tol.to_json(),
            "runtime": _runtime_versions(),
            "fp32_vs_pytorch": {"detector": det_runs.fp32, "segmenter": seg_runs.fp32},
            "fp16_vs_fp32": {"detector": det_runs.fp16, "segmenter": seg_fp16},
            "fp16_conversion": {k: v.to_json() for k, v in fp16_info.items()},
        }
        if opts.int8:
            # The CPU form's records stay where earlier bundles had them; TensorRT's beside them.
            parity["int8"] = {"gate": opts.int8_gate.to_json(),
                              **{k: v.to_json() for k, v in int8["cpu"].items()},
                              "tensorrt": {k: v.to_json() for k, v in int8["tensorrt"].items()}}
        thresholds = Thresholds(score=score.value, mask=mask.value,
                                how_chosen={"score": score.how, "mask": mask.how})
        _write_bundle(tmp, det, seg, thresholds, parity,
                      include_checkpoints=opts.include_checkpoints)
        _publish(tmp, out, opts.force)
    log(f"done: {out}")
    return Bundle.open(out)


@dataclass(frozen=True)
class _ValidationSets:
    checks: dict[str, val.DataCheck]
    detector: val.ValidationFrames
    segmenter: val.ValidationFrames


def _validation_sets(opts: ExportOptions, det: LoadedCheckpoint, seg: LoadedCheckpoint,
                     note: Callable[[str], None]) -> _ValidationSets:
    scanned: dict[Any, Any] = {}
    checks, frames = {}, {}
    for ck in (det, seg):
        root = val.resolve_data_root(ck.payload, opts.data, ck.kind)
        checks[ck.kind] = val.check_data(root, ck.payload, ck.kind,
                                         accept_other_data=opts.accept_other_data, warn=note,
                                         scanned=scanned)
        frames[ck.kind] = val.validation_frames(checks[ck.kind], ck.payload, ck.kind,
                                                max_val=opts.max_val,
                                                accept_other_data=opts.accept_other_data,
                                                warn=note)
    seed = int((det.payload.get("split") or {}).get("seed", 0))
    positives = frames["detector"]
    detector = replace(positives, empties=val.empty_frames_for_presence(
        checks["detector"], det.payload, positives.positives, seed))
    note(f"detector: {len(detector.positives)} validation frames with BP + "
         f"{len(detector.empties)} without; segmenter: {len(frames['segmenter'].positives)} frames")
    return _ValidationSets(checks=checks, detector=detector, segmenter=frames["segmenter"])


def _write_onnx_files(models: tuple[LoadedCheckpoint, ...], tmp: Path,
                      step: _Steps) -> dict[str, Fp16Conversion]:
    step("exporting FP32 ONNX")
    for ck in models:
        fp32 = FILES[ck.kind][0]
        exported = export_onnx(ck.model, ck.kind, ck.input_hw, tmp / fp32)
        step.note(f"{fp32}: {exported.nodes} nodes")
    step("converting to mixed-precision FP16 ONNX")
    info = {}
    for ck in models:
        fp32, fp16, _ = FILES[ck.kind]
        info[ck.kind] = write_fp16_onnx(tmp / fp32, tmp / fp16, ck.kind, ck.input_hw)
        step.note(f"{fp16}: {info[ck.kind].nodes} nodes, {len(info[ck.kind].tail_nodes)} "
                  "tail nodes kept FP32")
    return info


Runners = dict[tuple[str, str], OnnxModel]


@dataclass(frozen=True)
class _DetectorRuns:
    outputs: dict[str, DetectorOutputs]  # "torch", "fp32", "fp16"
    fp32: dict[str, Any]  # FP32 ONNX vs PyTorch
    fp16: dict[str, Any]  # FP16 ONNX vs FP32 ONNX
    inputs: np.ndarray  # float32 (N, 1, H, W): the validation frames as the detector sees them


def _run_detector(det: LoadedCheckpoint, frames: val.ValidationFrames, runners: Runners,
                  batch_size: int, note: Callable[[str], None]) -> _DetectorRuns:
    store = val.load_store(frames.frames)
    x = val.detector_inputs(store, det.input_hw, det.mean, det.std)
    outputs = {
        "torch": DetectorOutputs(*run_torch(det.model, x, batch_size)),
        "fp32": DetectorOutputs(*runners[("detector", "fp32")](x)),
        "fp16": DetectorOutputs(*runners[("detector", "fp16")](x)),
    }
    truth = val.truth_boxes_input_px(store, det.input_hw)
    fp32 = compare_detectors(outputs["torch"], outputs["fp32"], truth)
    fp16 = compare_detectors(outputs["fp32"], outputs["fp16"], truth)
    note(f"FP32 vs PyTorch: score {fp32['max_score_diff']:.2e}, box {fp32['max_box_diff_px']:.2e} "
         f"px; FP16 vs FP32: box IoU {_fmt(fp16['mean_box_iou_with_reference'])}")
    return _DetectorRuns(outputs=outputs, fp32=fp32, fp16=fp16, inputs=x)


_CROP_SOURCES = {
    "gt": "ground-truth boxes",
    "none": "whole frames",
    "detector": "boxes of the exported FP32 detector (ONNX Runtime)",
}


@dataclass(frozen=True)
class _SegmenterRuns:
    probs: dict[str, np.ndarray]  # "torch", "fp32", "fp16": float32 (N, 1, h, w)
    targets: np.ndarray  # float32 (N, 1, h, w) 0/1
    crop_source: str
    fp32: dict[str, Any]  # FP32 ONNX vs PyTorch
    inputs: np.ndarray  # float32 (N, 1, h, w): the validation crops


def _run_segmenter(seg: LoadedCheckpoint, det: LoadedCheckpoint, frames: val.ValidationFrames,
                   runners: Runners, batch_size: int,
                   note: Callable[[str], None]) -> _SegmenterRuns:
    store = val.load_store(frames.positives)
    detector32 = runners[("detector", "fp32")]
    boxes = val.segmenter_boxes(
        seg.payload["crop_mode"], store,
        detect=lambda x: detector32(x)[1],
        detector_input=lambda s: val.detector_inputs(s, det.input_hw, det.mean, det.std),
        detector_input_hw=det.input_hw,
        margin=crop_margin(seg.payload),
    )
    crops, targets = val.segmenter_crops(store, boxes, seg.input_hw, seg.mean, seg.std)
    probs = {
        "torch": run_torch(seg.model, crops, batch_size)[0],
        "fp32": runners[("segmenter", "fp32")](crops)[0],
        "fp16": runners[("segmenter", "fp16")](crops)[0],
    }
    fp32 = compare_segmenters(probs["torch"], probs["fp32"])
    note(f"FP32 vs PyTorch: probability {fp32['max_prob_diff']:.2e}")
    return _SegmenterRuns(probs=probs, targets=targets,
                          crop_source=_CROP_SOURCES[seg.payload["crop_mode"]], fp32=fp32,
                          inputs=crops)


def _training_frames(check: val.DataCheck, payload: dict[str, Any], n: int) -> list[Any]:
    """A seeded ``n`` of the BP-positive frames of the checkpoint's training split (calibration
    data that the gate's validation frames are not part of)."""
    keys = list((payload.get("split") or {}).get("train") or [])
    by_key = {f.key: f for f in check.index.frames}
    frames = [by_key[k] for k in keys if k in by_key and by_key[k].present]
    if not frames:
        raise ValueError("the checkpoint's training split has no BP frames in the data folder to "
                         "calibrate INT8 on: pass the training data folder with --data")
    seed = int((payload.get("split") or {}).get("seed", 0))
    if len(frames) > n:
        keep = np.sort(np.random.default_rng(seed).choice(len(frames), n, replace=False))
        frames = [frames[i] for i in keep]
    return frames


def _write_int8(opts: ExportOptions, det: LoadedCheckpoint, seg: LoadedCheckpoint,
                sets: _ValidationSets, det_runs: _DetectorRuns, seg_runs: _SegmenterRuns,
                tmp: Path, score_threshold: float, mask_threshold: float,
                note: Callable[[str], None]) -> dict[str, dict[str, Int8Result]]:
    """Quantise, gate and (if it passes) write each model's INT8 QDQ ONNX into ``tmp``, in each
    form (the CPU runtimes' and TensorRT's), keyed by form then model."""
    gate = opts.int8_gate
    det_store = val.load_store(_training_frames(sets.checks["detector"], det.payload,
                                                opts.calibration_frames))
    det_calibration = val.detector_inputs(det_store, det.input_hw, det.mean, det.std)
    seg_store = val.load_store(_training_frames(sets.checks["segmenter"], seg.payload,
                                                opts.calibration_frames))
    detector32 = OnnxModel(tmp / FILES["detector"][0], *IO_NAMES["detector"], opts.batch_size)
    boxes = val.segmenter_boxes(
        seg.payload["crop_mode"], seg_store, detect=lambda x: detector32(x)[1],
        detector_input=lambda st: val.detector_inputs(st, det.input_hw, det.mean, det.std),
        detector_input_hw=det.input_hw,
    )
    seg_calibration, _ = val.segmenter_crops(seg_store, boxes, seg.input_hw, seg.mean, seg.std)
    note(f"calibration: {len(det_calibration)} detector frames, {len(seg_calibration)} "
         "segmenter crops from the training split")
    fp32_det = det_runs.outputs["fp32"]

    def gates(form: str) -> dict[str, tuple[np.ndarray, Callable[[Path], Any]]]:
        run = _int8_runner(form, opts.batch_size)

        def detector_gate(path: Path) -> tuple[dict[str, Any], list[str]]:
            scores, boxes8 = run(path, "detector", det_runs.inputs)
            return gate_detector((fp32_det.scores, fp32_det.boxes), (scores, boxes8),
                                 score_threshold, gate)

        def segmenter_gate(path: Path) -> tuple[dict[str, Any], list[str]]:
            probs = run(path, "segmenter", seg_runs.inputs)[0]
            return gate_segmenter(seg_runs.probs["fp32"], probs, mask_threshold, gate)

        return {"detector": (det_calibration, detector_gate),
                "segmenter": (seg_calibration, segmenter_gate)}

    return {
        form: {kind: quantize_gated(kind, tmp / FILES[kind][0], tmp / INT8_FILES[form][kind],
                                    IO_NAMES[kind][0], calibration, run_gate, note,
                                    form=FORMS[form])
               for kind, (calibration, run_gate) in gates(form).items()}
        for form in ("cpu", "tensorrt")
    }


def _int8_runner(form: str, batch_size: int) -> Callable[[Path, str, np.ndarray], list[np.ndarray]]:
    """How the gate runs an INT8 candidate: the CPU form as the runtime's ONNX Runtime session
    runs it (``OrtModel``: every graph optimisation on, so the Q/DQ pairs fuse into ONNX Runtime's
    integer kernels, whose arithmetic is what a user gets: on an x86 CPU without VNNI they can
    saturate where the unfused graph does not, see :mod:`bpedge.export.int8`); the TensorRT form
    as written (Q/DQ simulated in float, like TensorRT's exact INT8 products)."""
    if form == "tensorrt":
        return lambda path, kind, x: OnnxModel(path, *IO_NAMES[kind], batch_size)(x)
    from bpedge._onnxruntime import OrtModel

    def run(path: Path, kind: str, x: np.ndarray) -> list[np.ndarray]:
        model = OrtModel(path, kind, IO_NAMES[kind][1])
        parts = [model(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return [np.concatenate([p[j] for p in parts]) if parts else np.zeros((0,), np.float32)
                for j in range(len(IO_NAMES[kind][1]))]

    return run


def _runtime_versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
            "provider": "CPUExecutionProvider"}


def _write_bundle(tmp: Path, det: LoadedCheckpoint, seg: LoadedCheckpoint,
                  thresholds: Thresholds, parity: dict[str, Any], *,
                  include_checkpoints: bool = False) -> None:
    """Write the manifest (Bundle.create hashes and checks every file it lists), and with
    ``include_checkpoints`` copy the checkpoints in first."""
    if include_checkpoints:
        for ck in (det, seg):
            shutil.copyfile(ck.path, tmp / FILES[ck.kind][2])
    manifest = Manifest(
        models={ck.kind: _model_entry(ck, tmp, include_checkpoints) for ck in (det, seg)},
        preprocessing=Preprocessing.from_spec(preprocessing_spec(det.payload, seg.payload)),
        thresholds=thresholds,
        training=_training(det, seg),
        parity=_json_safe(parity),
    )
    Bundle.create(tmp, manifest)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _model_entry(ck: LoadedCheckpoint, root: Path, include_checkpoint: bool) -> ModelEntry:
    from bpedge.export.onnx_export import contract_specs
    from bpedge.train.models import model_complexity

    fp32, fp16, pt = FILES[ck.kind]
    inputs, outputs = contract_specs(ck.kind, ck.input_hw)  # both ONNX files were checked to match
    params, flops = model_complexity(ck.model, (1, 1, *ck.input_hw))
    return ModelEntry(
        onnx=OnnxFiles(fp32=file_ref(root, fp32), fp16=file_ref(root, fp16),
                       int8=_shipped(root, INT8_FILES["cpu"][ck.kind]),
                       int8_symmetric=_shipped(root, INT8_FILES["tensorrt"][ck.kind])),
        inputs=inputs,
        outputs=outputs,
        arch=str(ck.payload["arch"]),
        flops=flops,
        params=params,
        checkpoint=file_ref(root, pt) if include_checkpoint else None,
    )


def _shipped(root: Path, name: str) -> FileRef | None:
    # A form's file exists only when it passed its gate (quantize_gated removes the rest).
    return file_ref(root, name) if (root / name).exists() else None


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
            # Where the weights came from: the checkpoint stays in its run folder.
            "checkpoint": {"path": str(ck.path.resolve()), "sha256": sha256_file(ck.path)},
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
    removed on any failure; locked, and marked as export's, from the start (see the module
    docstring)."""
    _remove_abandoned_work_dirs(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}{_STAGING}", dir=out.parent))
    held = None
    try:
        held = hold(tmp)  # before the marker: a marked staging directory is always locked
        # mkdtemp makes the directory private (0700); a bundle is read by other users (device
        # services, build-engines run by another account), like the files in it.
        os.chmod(tmp, 0o755)
        mark_made_by(tmp, "export")
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if held is not None:
            held.release()
    if tmp.exists():  # not published (an early return); nothing to keep
        shutil.rmtree(tmp, ignore_errors=True)


#: What follows ``.OUT`` in the names of export's working folders beside ``out`` (then mkdtemp's
#: eight characters): the bundle being built, and the old bundle while the new one replaces it.
_STAGING = ".export-"
_REPLACED = ".replaced-"


def _work_dir(out: Path, kind: str, entry: Path) -> bool:
    """Whether ``entry`` is a real folder named as export names its ``kind`` of working folder
    for ``out``."""
    if re.fullmatch(re.escape(f".{out.name}{kind}") + "[a-z0-9_]{8}", entry.name) is None:
        return False
    try:
        return stat.S_ISDIR(os.lstat(entry).st_mode)
    except FileNotFoundError:
        return False


def _remove_abandoned_work_dirs(out: Path) -> None:
    """Remove the working folders that exports into ``out`` killed outright left beside it: a
    staging folder with export's marker, and a folder holding only the old bundle once ``out``
    holds the new one, each only while no running export holds it."""
    if not out.parent.is_dir():
        return
    for entry in sorted(out.parent.iterdir()):
        staging = _work_dir(out, _STAGING, entry) and made_by(entry, "export")
        replaced = _work_dir(out, _REPLACED, entry) and _holds_only_a_replaced_bundle(entry, out)
        if staging or replaced:
            remove_if_abandoned(entry, shutil.rmtree)


def _holds_only_a_replaced_bundle(folder: Path, out: Path) -> bool:
    # Without a bundle at out, the old one in there may be the only copy: it is kept. A folder
    # is not enough: a script's `mkdir -p OUT` after a kill between the two renames made an empty
    # out, and the next export deleted the old bundle before building the new one.
    names = [p.name for p in folder.iterdir()]
    return out.is_dir() and is_replaceable_bundle(out) and (
        names == [] or (names == [out.name] and is_replaceable_bundle(folder / out.name)))


def _publish(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished bundle ``tmp`` to ``out``. An empty ``out`` directory is replaced; a
    non-empty one only with ``force``, only if it is (still) a bundle export made, and only now
    that the new bundle is complete: swapped with it in one step where the system can, so
    ``out`` never goes missing."""
    if out.is_dir() and not any(out.iterdir()):
        out.rmdir()
    if not out.exists():
        os.replace(tmp, out)
        return
    if not force or not out.is_dir():
        raise ValueError(f"--out {out} appeared during the export; nothing was replaced")
    if not is_replaceable_bundle(out):
        raise OutDirRefused(f"--out {out} changed during the export and is no longer a bundle "
                            "made by `bpedge export`; nothing was replaced")
    if exchange(tmp, out):
        # One step: a process killed at any moment leaves a whole bundle at out, the old one or
        # the new (then the old in the staging folder, which the next export removes).
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # Two renames where the system cannot swap: a kill between them leaves out missing, the old
    # bundle kept in the .replaced- folder.
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}{_REPLACED}", dir=out.parent))
    held = hold(old)
    try:
        os.replace(out, old / out.name)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old / out.name, out)  # the old bundle back where it was
            raise
    finally:
        held.release()
    shutil.rmtree(old, ignore_errors=True)
