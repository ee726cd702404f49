"""Presets are data: the published sizes and hyper-parameters (``paper``) and a CPU-sized twin (``tiny``).

Every CLI command takes ``--preset NAME``; individual fields are overridden with
``dataclasses.replace``, and the resolved config is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

SegmenterArch = Literal["unet", "mnet"]
CropMode = Literal["none", "gt", "detector"]


@dataclass(frozen=True)
class DetectorConfig:
    """RetinaNet: backbone, input size (frames are resized to it whole), anchors and training."""

    backbone: str = "resnet50"          # resnet18 | resnet34 | resnet50 | resnet_tiny
    input_hw: tuple[int, int] = (416, 576)  # (H, W); keeps the 420x580 aspect ratio, divisible by 32
    fpn_channels: int = 256
    head_convs: int = 4                  # four 3x3 conv + ReLU per sub-network, as published
    # One anchor size per FPN level P3..P7, in detector-input pixels: the BP is a single small
    # target (typically 40-150 px wide in a 580 px frame), so sizes start well below the default 32.
    anchor_sizes: tuple[int, ...] = (24, 48, 96, 192, 384)
    anchor_scales: tuple[float, ...] = (1.0, 1.26, 1.59)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    optimizer: str = "adam"
    lr: float = 1e-4
    # "constant", or "cosine": the rate decays from lr to near 0 over the epochs (train/_loop.py
    # lr_factor).
    lr_schedule: str = "constant"
    batch_size: int = 8
    epochs: int = 100
    weight_decay: float = 0.0
    seed: int = 0
    hflip: bool = False                  # training augmentation: random horizontal flip
    augment: bool = False                # training augmentation: B-mode transforms (train/augment.py)
    # With augment: every grey level also scaled by exp(U(-gain_scale, gain_scale)) (another
    # dynamic range of the log-compression; BModeAugment.gain_scale). 0: not scaled.
    gain_scale: float = 0.0
    box_loss: str = "l1"                 # l1 | smooth_l1 | giou
    fg_iou: float = 0.5                  # anchor IoU >= fg_iou: positive
    bg_iou: float = 0.4                  # anchor IoU < bg_iou: negative (in between ignored)
    # Boxes of the top_k anchors averaged with their scores as weights (1: the best anchor's box).
    top_k: int = 1
    # Empty frames (no BP) of train-only subjects drawn per epoch, as a fraction of the BP frames
    # (0: none, as published): every anchor is a negative on them, so the score learns what "no
    # BP" looks like and "BP present" can be called on it.
    empty_fraction: float = 0.0
    # Copy-paste samples per epoch, as a fraction of the BP frames: a training frame's BP
    # blended into an empty frame of a train-only subject at a random place (train/augment.py
    # paste_bp). None without such empty frames.
    paste_fraction: float = 0.0
    # > 0: validate, keep and export an exponential moving average of the weights with this
    # decay per optimiser step (train/_loop.py WeightAverage); 0: the weights as trained.
    ema_decay: float = 0.0
    # A frame-level "BP present" head on the pooled FPN features, whose probability becomes the
    # exported score (the box stays the best anchor's); it learns from the empty frames drawn
    # by empty_fraction (which must then be > 0), and they no longer reach the focal loss.
    presence_head: bool = False
    # What the kept checkpoint (best.pt) and the study's gamma are chosen on: "miou" (the top
    # box's IoU over the validation BP frames, as published) or, with presence_head,
    # "miou_presence" (train/train_detector.py VALIDATION_METRICS: the box and the presence
    # call on validation BP frames and on the empty frames of validation-only subjects, each
    # half of the metric), so an epoch whose head has not yet learnt "no BP" is not kept.
    select_on: str = "miou"
    # How the resized frame is z-scored: "dataset" (the training split's mean and std, fixed) or
    # "per_image" (each frame's own mean and std), which makes the detector blind to the
    # scanner's overall gain and offset (a linear change of grey levels), as the GPU kernel and
    # the bundle already support.
    normalization: str = "dataset"


@dataclass(frozen=True)
class SegmenterConfig:
    """U-Net / M-Net on 96x96 crops, z-score normalised with the training split's statistics."""

    arch: SegmenterArch = "unet"
    crop_hw: tuple[int, int] = (96, 96)
    base_filters: int = 32               # doubles per level
    depth: int = 5                       # encoder levels
    kernel_size: int = 5
    dropout: float = 0.4                 # encoder only, as published
    optimizer: str = "rmsprop"
    lr: float = 1e-4
    batch_size: int = 128
    epochs: int = 80
    seed: int = 0
    hflip: bool = False                  # training augmentation: random horizontal flip
    # Training augmentation: the photometric B-mode transforms of the detector's (gain/TGC,
    # gamma/contrast, speckle, blur; train/augment.py augment_grey) on each crop, with grey
    # levels also scaled by exp(U(-gain_scale, gain_scale)). No geometric ones: box_jitter
    # already moves the crop.
    augment: bool = False
    gain_scale: float = 0.0
    # --crop gt / detector training: move box edges by up to this x side, so the segmenter
    # learns from boxes as imperfect as a detector's on a subject it never saw.
    box_jitter: float = 0.0
    # Fraction the crop box grows by (width and height, about its centre) before cropping; it
    # travels in the checkpoint and the bundle (bpedge._preprocessing.PreprocessingSpec).
    crop_margin: float = 0.0
    # With a detector (``--detector``): its best box that misses the BP on every training frame
    # (BP or empty; bpedge.train.predict.predict_decoys) is added as one more crop, jittered like
    # the others, whose target holds no BP (or the part of it the crop catches). The segmenter
    # then learns to leave what the detector confuses with the BP empty.
    decoy_crops: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    detector: DetectorConfig
    unet: SegmenterConfig
    mnet: SegmenterConfig

    def segmenter(self, arch: SegmenterArch) -> SegmenterConfig:
        if arch == "unet":
            return self.unet
        if arch == "mnet":
            return self.mnet
        raise ValueError(f"unknown segmenter arch {arch!r}; choose 'unet' or 'mnet'")


PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        detector=DetectorConfig(),
        unet=SegmenterConfig(arch="unet", lr=1e-4),
        mnet=SegmenterConfig(arch="mnet", lr=3e-4),
    ),
    "tiny": Preset(
        name="tiny",
        detector=DetectorConfig(
            backbone="resnet_tiny",
            # What tells the BP from look-alike clusters is the fascicles' thin bright rims, which
            # a 160x224 input (0.39x) blurs away. Subject-wise 3-fold, 10x24 phantoms, test mIoU
            # (mean of folds): 160x224 0.348 / 0.547 (seeds 1 / 2) -> 320x448 0.545 / 0.599;
            # 0.69 GFLOP a frame, under a hundredth of the paper detector's 94. The 5-fold study
            # (benchmarks/results/study-tiny-phantom): test mIoU 0.44 / 0.50 -> 0.60 / 0.71.
            input_hw=(320, 448),
            fpn_channels=32,
            head_convs=2,
            anchor_sizes=(24, 48, 96, 192, 384),  # the paper's: anchors scale with the input
            lr=1e-3,
            # Measured on a 6x40 phantom, subject split: batch 16 x 12 epochs stalled (val mIoU
            # 0.03); batch 8 reached 0.32 and adding horizontal flips 0.52 within 20 epochs.
            batch_size=8,
            epochs=20,
            hflip=True,
            # B-mode augmentation (gain/TGC, gamma/contrast, speckle, blur, scale/shift/rotate):
            # subject-wise 3-fold, 10x24 phantoms, test mIoU by fold, seed 1: 0.246/0.441 ->
            # 0.234/0.408; seed 2: 0.273/0.407 -> 0.738/0.302. Noisy, with one large gain.
            # Measured and left at their defaults: top_k box voting (eval-only on the same
            # detectors, test mIoU top-1/3/5/9: seed 1 0.392/0.366/0.357/0.344, seed 2
            # 0.381/0.382/0.367/0.343); empty_fraction 0.25 at 320x448 (test mIoU 0.545 ->
            # 0.540 / 0.599 -> 0.638, score AUROC BP vs empty test frames, mean of folds, 0.830
            # -> 0.808 / 0.895 -> 0.954: no gain on seed 1). Later, seeds 1 / 3 (benchmarks/
            # results/study-tiny-phantom/ablation_avx2): paste_fraction 0.5 (copy-paste) 0.580 ->
            # 0.511 / 0.569 -> 0.514; ema_decay 0.98 0.580 -> 0.570 / 0.569 -> 0.590. On the
            # 20-subject 5-fold study (benchmarks/results/study-tiny-phantom), normalization
            # "per_image" was blind to the gain but worse on both seeds tried (mIoU 0.752 /
            # 0.652 -> 0.714 / 0.641, score AUROC 0.921 / 0.879 -> 0.863 / 0.863).
            augment=True,
            # Grey levels also scaled by exp(U(-0.5, 0.5)) (another dynamic range). 20-subject
            # 5-fold study, seeds 1 / 3, with the U-Net's gain_scale below: test mIoU 0.752 /
            # 0.652 -> 0.713 / 0.672 (folds move both ways by up to 0.14); with the test frames'
            # grey levels scaled by 0.6 (benchmarks/intensity_robustness.py) 0.585 / 0.430 ->
            # 0.706 / 0.638, by 1.4 0.599 / 0.549 -> 0.651 / 0.671.
            gain_scale=0.5,
            # A presence head gives the score, learning "no BP" from every empty frame of the
            # training subjects. 20-subject 5-fold study, seeds 1 / 2 / 3 (before gain_scale):
            # "BP present" balanced accuracy 0.820 / 0.782 / 0.756 -> 0.921 / 0.865 / 0.790,
            # score AUROC 0.921 / 0.917 / 0.879 -> 0.959 / 0.931 / 0.872; detector mIoU 0.752 /
            # 0.768 / 0.652 -> 0.667 / 0.763 / 0.709. Its INT8 export holds since the gate runs
            # the CPU form as ONNX Runtime's fused kernels do (bpedge.export.int8).
            presence_head=True,
            empty_fraction=1.0,
        ),
        unet=SegmenterConfig(
            arch="unet", base_filters=8, depth=4, kernel_size=3, dropout=0.1,
            # Batch 32 x 15 epochs (60 steps) left the whole-frame (--crop none) U-Net at chance on
            # held-out phantom subjects; batch 8 gives 4x the steps for the same compute.
            # Detector-like training boxes (box_jitter, below). A crop margin
            # of 0.2 peaked on validation in the recorded 5-fold study (benchmarks/results/
            # study-tiny-phantom, both seeds; detector-crop Dice 0.503 -> 0.573 and
            # 0.726 -> 0.765 from margin 0 to 0.2). The GPU crop kernel applies it too.
            # decoy_crops left off: detector-crop Dice 0.722 -> 0.664 / 0.678 -> 0.653 (seeds
            # 1 / 3, 3-fold), and "BP present" vetoed by an empty mask kept the specificity of
            # the score alone (0.74 -> 0.74 / 0.56 -> 0.54).
            # B-mode augmentation of the crop with gain_scale 0.5, seeds 1 / 3 as the detector's:
            # ground-truth-crop test Dice 0.926 / 0.929 -> 0.937 / 0.935; with the test frames'
            # grey levels scaled by 0.6 0.190 / 0.520 -> 0.929 / 0.921, contrast x0.6 0.715 /
            # 0.793 -> 0.935 / 0.926 (benchmarks/intensity_robustness.py).
            # Box jitter 0.2 (edges moved by up to 20% of the side, from 0.1): the 20-subject
            # 5-fold study, seeds 1 / 3, the same detectors (bit for bit): detector-crop Dice
            # 0.878 / 0.824 -> 0.884 / 0.827, ground-truth-crop 0.937 / 0.935 -> 0.933 / 0.932
            # (benchmarks/results/study-tiny-phantom/subjects20-jitter). Small, on both seeds,
            # and the segmenter's tolerance of an imperfect box is what unseen subjects test.
            lr=1e-3, batch_size=8, epochs=20, box_jitter=0.2, crop_margin=0.2,
            augment=True, gain_scale=0.5,
        ),
        mnet=SegmenterConfig(
            arch="mnet", base_filters=8, depth=4, kernel_size=3, dropout=0.1,
            # Crop margin as the U-Net's: M-Net trained with 0.2 in the 5-fold study (seeds 1 and
            # 2, benchmarks/results/study-tiny-phantom), margins swept at evaluation: validation
            # Dice 0.904 / 0.907 at 0 -> 0.920 / 0.932 at 0.2 (0.921 / 0.925 at 0.1), detector-
            # crop test Dice 0.752 / 0.771 -> 0.780 / 0.813.
            # Augmented as the U-Net (not measured on the M-Net itself).
            lr=1e-3, batch_size=8, epochs=20, box_jitter=0.1, crop_margin=0.2,
            augment=True, gain_scale=0.5,
        ),
    ),
}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; a ``ValueError`` lists the valid names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return dataclasses.asdict(cfg)


def field_defaults(cls: type) -> dict[str, Any]:
    """The default of each field of config dataclass ``cls`` that has one, JSON-ready like
    :func:`config_to_dict` (what a run saved before the field existed ran with)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return json.loads(json.dumps(out))


def config_from_dict(cls: type, data: dict[str, Any]) -> Any:
    """Rebuild a config dataclass from :func:`config_to_dict` output, restoring tuples; unknown keys raise."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**kwargs)


__all__ = [
    "PRESETS",
    "CropMode",
    "DetectorConfig",
    "Preset",
    "SegmenterArch",
    "SegmenterConfig",
    "config_from_dict",
    "config_to_dict",
    "field_defaults",
    "get_preset",
]
