"""Train a U-Net or M-Net on 96x96 crops: ``bpedge train segmenter``.

Where the crop comes from (``--crop``):

- ``none``: the whole frame, resized to 96x96 (the method's "no detection" row);
- ``gt``: the ground-truth box of the mask (the "ground-truth crop" row); training may jitter it;
- ``detector``: the top box of a trained detector (``--detector RUN_OR_CKPT``) on every frame, in
  every split, train included: the method trained on crops of the detected region, and training on
  the boxes the segmenter will be given at run time is the faithful choice. The boxes are predicted
  once, mapped to the frame with ``frame_box``, and cached in RUN/detector_boxes.json with the detector file's
  sha256; ``--resume`` reuses them (and refuses if the detector file changed).

Every crop box is ``crop_box(--crop, frame, crop_margin, ...)`` (the preset's ``crop_margin``);
crops and targets are made with ``segmenter_input`` / ``segmenter_target``, z-scored with
the training crops' mean and std (stored in the checkpoint). RMSprop minimises BCE + soft Dice
(M-Net: averaged over its four side outputs, its deep supervision). The validation metric is the
mean Dice over BP-positive validation frames on the 96x96 crops at threshold 0.5; a crop that
misses the BP entirely (possible with detector boxes) scores 0, not the 1 of "empty vs empty".
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from bpedge.train._loop import HeldParts
from bpedge.train._run_files import write_run_json
from bpedge.train._run_setup import (
    RunOptions,
    TrainingStart,
    TrainResult,
    build_optimizer,
    data_section,
    run_training,
    say,
)
from bpedge.train.augment import BModeAugment
from bpedge.train.checkpoint import ModelPayload
from bpedge.train.datasets import (
    FrameStore,
    Normalization,
    SegmenterDataset,
    fit_normalization,
)
from bpedge.train.distributed import DistContext, barrier
from bpedge.train.presets import SegmenterConfig, config_to_dict, field_defaults, get_preset
from torch import nn

from bpedge._metrics import dice
from bpedge._preprocessing import ModelInput, crop_box
from bpedge._stages import Box

__all__ = ["SegmenterOptions", "SegmenterTrainee", "resolve_segmenter_config", "train_segmenter"]

METRIC = "val_dice"
ARCHS = ("unet", "mnet")
CROPS = ("none", "gt", "detector")
BOXES_FILE = "detector_boxes.json"
THRESHOLD = 0.5


@dataclass(frozen=True)
class SegmenterOptions(RunOptions):
    """``bpedge train segmenter`` options; ``None`` keeps the preset's value."""

    arch: str = "unet"
    crop: str = "gt"
    detector: Path | None = None

    def check(self) -> None:
        super().check()
        if self.arch not in ARCHS:
            raise ValueError(f"--arch must be one of {ARCHS}, got {self.arch!r}")
        if self.crop not in CROPS:
            raise ValueError(f"--crop must be one of {CROPS}, got {self.crop!r}")
        if self.crop == "detector" and self.detector is None:
            raise ValueError("--crop detector needs --detector RUN_OR_CHECKPOINT (a detector run "
                             "folder or its best.pt)")
        if (self.crop != "detector" and self.detector is not None
                and not resolve_segmenter_config(self).decoy_crops):
            raise ValueError(f"--detector is only used with --crop detector or decoy crops (got "
                             f"--crop {self.crop})")
        if resolve_segmenter_config(self).decoy_crops and self.detector is None:
            raise ValueError("decoy crops (the preset's decoy_crops) need --detector "
                             "RUN_OR_CHECKPOINT: they are the detector's wrong boxes")
        if self.detector is not None and not self.detector.exists():
            raise FileNotFoundError(f"--detector {self.detector} does not exist")


def resolve_segmenter_config(opts: SegmenterOptions) -> SegmenterConfig:
    """The preset's config for ``opts.arch`` with this run's overrides applied."""
    return dataclasses.replace(get_preset(opts.preset).segmenter(opts.arch),  # type: ignore[arg-type]
                               **opts.overrides())


def segmenter_run_config(
    opts: SegmenterOptions, cfg: SegmenterConfig, detector_path: Path | None
) -> dict[str, Any]:
    """The resolved run config written to RUN/config.json and into every checkpoint."""
    return {
        "kind": "segmenter",
        "preset": opts.preset,
        "model": config_to_dict(cfg),
        "data": data_section(opts),
        "crop": {"mode": opts.crop, "detector": str(detector_path) if detector_path else None},
    }


class _SegmenterLoss(nn.Module):
    """BCE + soft Dice of a batch as one scalar (M-Net: mean over its side outputs)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from bpedge.train.losses import segmentation_loss

        sides = getattr(self.model, "forward_sides", None)
        if sides is None:
            return segmentation_loss(self.model(x), y)
        outputs = sides(x)
        return torch.stack([segmentation_loss(p, y) for p in outputs]).mean()


class SegmenterTrainee(HeldParts):
    """The segmenter as the epoch loop sees it (see :class:`bpedge.train._loop.Trainee`)."""

    metric_name = METRIC

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_set: SegmenterDataset,
        val_set: SegmenterDataset,
        payload: dict[str, Any],
    ) -> None:
        super().__init__(model, _SegmenterLoss(model), optimizer, train_set, val_set, payload)

    def evaluate_batch(self, batch: list[torch.Tensor]) -> tuple[float, float, int]:
        from bpedge.train.losses import segmentation_loss

        x, y = batch
        prob = self.model(x)  # the averaged output for M-Net: what is exported and served
        n = int(x.shape[0])
        loss = float(segmentation_loss(prob, y)) * n
        pred = (prob >= THRESHOLD).cpu().numpy()
        truth = y.cpu().numpy()
        total = sum(dice(pred[k, 0], truth[k, 0], empty=0.0) for k in range(n))
        return loss, float(total), n


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def detector_boxes(
    run_dir: Path,
    detector: Path,
    store: FrameStore,
    ctx: DistContext,
    *,
    resume: bool,
    progress: bool,
    decoys: Sequence[int] = (),
) -> tuple[list[Box], list[Box | None]]:
    """The detector's clamped top box for every frame of ``store`` (frame pixels) and, for the
    frames ``decoys`` (store indices: training frames only, since finding a decoy reads the
    frame's ground truth), its best box that misses the BP
    (:func:`bpedge.train.predict.predict_decoys`; ``None`` where none does and for every other
    frame), predicted once by rank 0 and cached in RUN/detector_boxes.json; a resumed run must
    find the cache."""
    from bpedge.train.predict import BoxPrediction, load_detector, predict_boxes, predict_decoys

    cache = run_dir / BOXES_FILE
    digest = _sha256(detector)
    if not resume and ctx.is_main:
        model, payload = load_detector(detector, ctx.device)
        preds = predict_boxes(model, payload, store.images, progress=progress)
        record: dict[str, Any] = {
            "detector": str(detector),
            "detector_sha256": digest,
            "frames": {k: p.to_json() for k, p in zip(store.keys, preds)},
        }
        if decoys:
            found = predict_decoys(model, payload, [store.images[i] for i in decoys],
                                   [store.boxes[i] for i in decoys])
            record["decoys"] = {store.keys[i]: p.to_json() if p else None
                                for i, p in zip(decoys, found)}
        write_run_json(run_dir, BOXES_FILE, record)
    barrier(ctx)
    if not cache.is_file():
        raise ValueError(f"--resume: {cache} is missing; start a new run with a new --out")
    cached = json.loads(cache.read_text())
    if cached.get("detector_sha256") != digest:
        raise ValueError(
            f"{detector} changed since this run cached its boxes in {cache}; resume with the "
            "original detector, or start a new run with a new --out"
        )
    frames = cached["frames"]
    missing = [k for k in store.keys if k not in frames]
    cached_decoys = cached.get("decoys", {})
    missing += [f"{store.keys[i]} (decoy)" for i in decoys if store.keys[i] not in cached_decoys]
    if missing:
        raise ValueError(f"{cache} has no box for frame(s) {missing[:5]}; start a new run")
    wrong: list[Box | None] = [None] * len(store)
    for i in decoys:
        if cached_decoys[store.keys[i]] is not None:
            wrong[i] = BoxPrediction.from_json(cached_decoys[store.keys[i]]).box
    return [BoxPrediction.from_json(frames[k]).box for k in store.keys], wrong


def _check_detector_split(detector_payload: dict[str, Any], split_json: dict[str, Any],
                          ctx: DistContext, verbose: bool) -> None:
    trained_on = set(detector_payload.get("split", {}).get("train", []))
    ours = set(split_json["val"]) | set(split_json["test"])
    leaked = trained_on & ours
    if leaked:
        say(ctx, verbose,
            f"warning: the detector was trained on {len(leaked)} of this run's validation/test "
            "frames; its boxes there are optimistic (train both with the same data, --split, "
            "--seed, --dedup and --limit)")


def train_segmenter(opts: SegmenterOptions) -> TrainResult:
    """Train (or ``opts.resume``) a segmenter run in ``opts.out``; see the module docstring."""
    from bpedge.train.checkpoint import load_checkpoint, resolve_checkpoint
    from bpedge.train.models import build_segmenter

    opts.check()
    cfg = resolve_segmenter_config(opts)
    detector = resolve_checkpoint(opts.detector).resolve() if opts.detector else None
    config = segmenter_run_config(opts, cfg, detector)
    # Built here so that a bad range is refused before the run folder is made.
    augment = BModeAugment(gain_scale=cfg.gain_scale) if cfg.augment else None

    def make_trainee(start: TrainingStart) -> SegmenterTrainee:
        ctx, data, resume_from = start.ctx, start.data, start.resume_from
        # Test frames are loaded only to cache their detector boxes for later evaluation.
        frames = data.train + data.val + (data.test if opts.crop == "detector" else ())
        empties = data.train_empty if cfg.decoy_crops else ()
        store = FrameStore(frames + empties, progress=opts.progress and ctx.is_main)
        train_idx = list(range(len(data.train)))
        val_idx = list(range(len(data.train), len(data.train) + len(data.val)))
        empty_idx = list(range(len(frames), len(store)))
        detected: list[Box | None] = [None] * len(frames)
        decoys: list[Box | None] = [None] * len(store)
        if detector is not None:
            _check_detector_split(load_checkpoint(detector), data.split.to_json(), ctx,
                                  opts.verbose)
            found, decoys = detector_boxes(opts.out, detector, store, ctx,
                                           resume=resume_from is not None,
                                           progress=opts.progress and ctx.is_main,
                                           decoys=train_idx + empty_idx if cfg.decoy_crops
                                           else ())
            if opts.crop == "detector":
                detected = list(found)
        # The one crop rule (bpedge._preprocessing.crop_box), as export validation and the
        # runtime apply it; positives only, so a ground-truth box is never None.
        boxes = [crop_box(opts.crop, store.hw(i), cfg.crop_margin, truth=store.boxes[i],
                          detected=detected[i]) for i in range(len(frames))]
        if resume_from is not None:
            norm = Normalization(**resume_from["normalization"])
        else:
            norm = fit_normalization(store, train_idx, [boxes[i] for i in train_idx], cfg.crop_hw)
        # Detector boxes of training frames are as good as they get (the detector trained on
        # those frames); jitter makes them as imperfect as on a new subject.
        jitter = cfg.box_jitter if opts.crop in ("gt", "detector") else 0.0
        # The detector's best wrong box on every training frame (BP or empty): what it most
        # easily mistakes for the BP, cropped as the runtime would crop it.
        decoy_idx = [i for i in train_idx + empty_idx if decoys[i] is not None]
        decoy_boxes = [crop_box("detector", store.hw(i), cfg.crop_margin, detected=decoys[i])
                       for i in decoy_idx]
        train_set = SegmenterDataset(
            store, train_idx + decoy_idx, [boxes[i] for i in train_idx] + decoy_boxes,
            cfg.crop_hw, norm, hflip=cfg.hflip, jitter=jitter, seed=cfg.seed,
            augment=augment)
        val_set = SegmenterDataset(store, val_idx, [boxes[i] for i in val_idx], cfg.crop_hw, norm)

        model = build_segmenter(cfg).to(ctx.device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr)
        payload = ModelPayload(
            kind="segmenter", arch=cfg.arch, model_config=config_to_dict(cfg), config=config,
            input=ModelInput(cfg.crop_hw, norm), frame_hw=store.frame_hw(),
            split=data.split.to_json(), data_fingerprint=data.fingerprint,
            crop_mode=opts.crop, crop_margin=cfg.crop_margin,
        )
        say(ctx, opts.verbose,
            f"{cfg.arch} on {opts.crop} crops {cfg.crop_hw[0]}x{cfg.crop_hw[1]}: "
            f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test BP frames"
            f"{f' + {len(decoy_idx)} decoy crops' if decoy_idx else ''} "
            f"({data.split.mode} split, seed {cfg.seed}); z-score mean {norm.mean:.2f} "
            f"std {norm.std:.2f}; {ctx.world_size} process(es) on {ctx.device}")
        return SegmenterTrainee(model, optimizer, train_set, val_set, payload.to_dict())

    return run_training(opts, config, seed=cfg.seed, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, label=cfg.arch, metric_name=METRIC,
                        make_trainee=make_trainee,
                        defaults={"model": field_defaults(SegmenterConfig)})
