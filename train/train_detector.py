"""Train the RetinaNet detector: ``bpedge train detector``.

Whole frames are resized to the preset's ``input_hw`` and z-scored with the mean and std of the
training split's resized frames (stored in the checkpoint). Adam minimises focal loss + box loss;
the validation metric is mIoU, the mean IoU of the top box with the ground-truth box over the
BP-positive validation frames. Outputs in RUN: config.json, split.json, metrics.csv/json,
last.pt (every epoch) and best.pt (best val mIoU).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from bpedge.train._loop import HeldParts, lr_factor
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
    DetectorDataset,
    FrameStore,
    Normalization,
    fit_normalization,
    full_frame_box,
)
from bpedge.train.presets import DetectorConfig, config_to_dict, field_defaults, get_preset
from torch import nn

from bpedge._manifest import NORMS
from bpedge._metrics import box_iou
from bpedge._preprocessing import ModelInput

if TYPE_CHECKING:
    from bpedge.train.models import RetinaNetDetector

__all__ = ["DetectorOptions", "DetectorTrainee", "resolve_detector_config", "train_detector"]

METRIC = "val_miou"
# DetectorConfig.select_on -> the validation metric's name (metrics.json, checkpoints, reports).
# "miou_presence": half the mean over validation BP frames of IoU(top box, truth) x p, half the
# mean over empty validation frames of 1 - p (all of it the first mean when validation has no
# empty frame), p the exported score (the presence head's probability). A head stuck near the
# prior scores about as low as no box, so the checkpoint kept is one that both finds the BP and
# says when it is absent.
VALIDATION_METRICS = {"miou": METRIC, "miou_presence": "val_miou_presence"}


@dataclass(frozen=True)
class DetectorOptions(RunOptions):
    """``bpedge train detector`` options; ``None`` keeps the preset's value."""

    gamma: float | None = None
    alpha: float | None = None
    backbone: str | None = None
    weights: Path | None = None

    def check(self) -> None:
        super().check()
        if self.gamma is not None and not (math.isfinite(self.gamma) and self.gamma >= 0):
            raise ValueError(f"--gamma must be finite and >= 0, got {self.gamma}")
        if self.alpha is not None and not (0.0 <= self.alpha <= 1.0 or self.alpha == -1):
            raise ValueError(f"--alpha must be in [0, 1] (or -1 to disable), got {self.alpha}")
        if self.weights is not None:
            from bpedge.train.models.retinanet import read_state_dict

            read_state_dict(self.weights, "--weights file")  # refused before the run folder is made


def resolve_detector_config(opts: DetectorOptions) -> DetectorConfig:
    """The preset's detector config with this run's overrides applied."""
    cfg = get_preset(opts.preset).detector
    changes: dict[str, Any] = dict(opts.overrides())
    if opts.gamma is not None:
        changes["focal_gamma"] = opts.gamma
    if opts.alpha is not None:
        changes["focal_alpha"] = opts.alpha
    if opts.backbone is not None:
        changes["backbone"] = opts.backbone
    cfg = dataclasses.replace(cfg, **changes)
    if not 0.0 <= cfg.empty_fraction <= 10.0:  # also refuses NaN
        raise ValueError(f"empty_fraction must lie in [0, 10] (empty frames per BP frame), got "
                         f"{cfg.empty_fraction!r}")
    if cfg.normalization not in NORMS:
        raise ValueError(f"normalization must be one of {NORMS}, got {cfg.normalization!r}")
    if cfg.presence_head and cfg.empty_fraction == 0:
        raise ValueError("presence_head learns from empty frames: set empty_fraction > 0 (empty "
                         "frames per BP frame drawn each epoch)")
    lr_factor(cfg.lr_schedule, 1, max(cfg.epochs, 1))  # the loop's check, before the run folder
    if cfg.select_on not in VALIDATION_METRICS:
        raise ValueError(f"select_on must be one of {sorted(VALIDATION_METRICS)}, got "
                         f"{cfg.select_on!r}")
    if cfg.select_on == "miou_presence" and not cfg.presence_head:
        raise ValueError("select_on 'miou_presence' weighs the presence head's call: set "
                         "presence_head")
    return cfg


def detector_run_config(opts: DetectorOptions, cfg: DetectorConfig) -> dict[str, Any]:
    """The resolved run config written to RUN/config.json and into every checkpoint."""
    return {
        "kind": "detector",
        "preset": opts.preset,
        "model": config_to_dict(cfg),
        "data": data_section(opts),
        "init_weights": str(opts.weights.resolve()) if opts.weights else None,
    }


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    """What training minimises: the sum of the detector's losses (focal, box, and presence when
    it has that head)."""
    return torch.stack(list(losses.values())).sum()


class _DetectorLoss(nn.Module):
    """The batch's losses summed (:func:`_total`), so DDP can wrap the whole training forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, boxes: torch.Tensor, present: torch.Tensor
    ) -> torch.Tensor:
        return _total(self.model(images, boxes, present))


class DetectorTrainee(HeldParts):
    """The detector as the epoch loop sees it (see :class:`bpedge.train._loop.Trainee`)."""

    def __init__(
        self,
        model: RetinaNetDetector,
        optimizer: torch.optim.Optimizer,
        train_set: DetectorDataset,
        val_set: DetectorDataset,
        payload: dict[str, Any],
        select_on: str = "miou",
    ) -> None:
        super().__init__(model, _DetectorLoss(model), optimizer, train_set, val_set, payload)
        self.metric_name = VALIDATION_METRICS[select_on]
        self._presence_metric = select_on == "miou_presence"
        # Each kind of frame is half of the metric, whatever their numbers: the loop averages
        # per-frame sums over all frames, so each frame is weighted by (n / 2) / its kind's n.
        n_bp, n_empty = len(val_set.indices), val_set._n_empty
        halves = 2 if n_bp and n_empty else 1
        self._weight = {True: (n_bp + n_empty) / (halves * n_bp) if n_bp else 0.0,
                        False: (n_bp + n_empty) / (halves * n_empty) if n_empty else 0.0}

    def evaluate_batch(self, batch: list[torch.Tensor]) -> tuple[float, float, int]:
        images, boxes, present = batch  # validation's empty frames only with miou_presence
        # eval mode: BatchNorm uses running stats
        losses = self.model.losses(images, boxes, present if self._presence_metric else None)
        n = int(images.shape[0])
        loss = float(_total(losses)) * n
        scores, predicted = self.model(images)
        if not self._presence_metric:
            ious = [box_iou(p, t) for p, t in zip(predicted.cpu().tolist(), boxes.cpu().tolist())]
            return loss, float(sum(ious)), n
        quality = 0.0
        for p, box, truth, bp in zip(scores.cpu().tolist(), predicted.cpu().tolist(),
                                     boxes.cpu().tolist(), present.cpu().tolist()):
            found = box_iou(box, truth) * p if bp else 1.0 - p
            quality += self._weight[bool(bp)] * found
        return loss, quality, n


def train_detector(opts: DetectorOptions) -> TrainResult:
    """Train (or ``opts.resume``) a detector run in ``opts.out``; see the module docstring."""
    opts.check()
    cfg = resolve_detector_config(opts)
    config = detector_run_config(opts, cfg)
    # Built here so that a bad range is refused before the run folder is made.
    augment = BModeAugment(gain_scale=cfg.gain_scale) if cfg.augment else None

    def make_trainee(start: TrainingStart) -> DetectorTrainee:
        ctx, data, resume_from = start.ctx, start.data, start.resume_from
        empties = data.train_empty if cfg.empty_fraction > 0 or cfg.paste_fraction > 0 else ()
        val_empties = data.val_empty if cfg.select_on == "miou_presence" else ()
        store = FrameStore(data.train + data.val + empties + val_empties,
                           progress=opts.progress and ctx.is_main)
        train_idx = list(range(len(data.train)))
        val_idx = list(range(len(data.train), len(data.train) + len(data.val)))
        empty_idx = list(range(len(data.train) + len(data.val),
                               len(data.train) + len(data.val) + len(empties)))
        if resume_from is not None:
            norm = Normalization(**resume_from["normalization"])
        elif cfg.normalization == "per_image":
            norm = Normalization(mean=None, std=None)
        else:
            norm = fit_normalization(
                store, train_idx, [full_frame_box(store.hw(i)) for i in train_idx], cfg.input_hw
            )
        train_set = DetectorDataset(store, train_idx, cfg.input_hw, norm, hflip=cfg.hflip,
                                    augment=augment,
                                    seed=cfg.seed, empties=empty_idx,
                                    empties_per_epoch=round(cfg.empty_fraction * len(train_idx)),
                                    pastes_per_epoch=round(cfg.paste_fraction * len(train_idx))
                                    if empty_idx else 0)
        val_empty_idx = list(range(len(store) - len(val_empties), len(store)))
        val_set = DetectorDataset(store, val_idx, cfg.input_hw, norm, empties=val_empty_idx,
                                  empties_per_epoch=len(val_empty_idx))

        model = build_detector_for(cfg, opts.weights).to(ctx.device)
        optimizer = build_optimizer(cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay)
        payload = ModelPayload(
            kind="detector", arch="retinanet", model_config=config_to_dict(cfg), config=config,
            input=ModelInput(cfg.input_hw, norm), frame_hw=store.frame_hw(),
            split=data.split.to_json(), data_fingerprint=data.fingerprint,
        )
        zscore = ("per image" if norm.per_image
                  else f"mean {norm.mean:.2f} std {norm.std:.2f}")
        say(ctx, opts.verbose,
            f"detector ({cfg.backbone}, input {cfg.input_hw[0]}x{cfg.input_hw[1]}): "
            f"{len(data.train)} train / {len(data.val)} val / {len(data.test)} test BP frames "
            f"({data.split.mode} split, seed {cfg.seed}), {train_set._n_empty} of "
            f"{len(empty_idx)} train empty frames and {train_set._n_paste} copy-paste samples "
            f"per epoch; {len(val_empty_idx)} val empty frames; z-score {zscore}; "
            f"{ctx.world_size} process(es) on {ctx.device}")
        return DetectorTrainee(model, optimizer, train_set, val_set, payload.to_dict(),
                               select_on=cfg.select_on)

    return run_training(opts, config, seed=cfg.seed, epochs=cfg.epochs,
                        batch_size=cfg.batch_size, label="detector",
                        metric_name=VALIDATION_METRICS[cfg.select_on],
                        make_trainee=make_trainee, ema_decay=cfg.ema_decay,
                        lr_schedule=cfg.lr_schedule,
                        defaults={"model": field_defaults(DetectorConfig)})


def build_detector_for(cfg: DetectorConfig, weights: Path | None) -> RetinaNetDetector:
    """``build_detector`` with optional initial weights (a backbone or whole-detector state_dict)."""
    from bpedge.train.models import build_detector

    return build_detector(cfg, weights=weights)
