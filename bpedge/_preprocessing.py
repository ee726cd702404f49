"""The preprocessing contract and the stage combinations, each defined once.

:mod:`bpedge._stages` holds the maths of one stage (crop/resize, normalise, clamp, paste-back);
this module holds the typed constants that travel with the weights (:class:`PreprocessingSpec`:
sizes, normalisation, crop margin) and the few ways the stages are combined. Training datasets,
``bpedge.train.predict``, the experiment's evaluation, export validation, the CPU cascade and the
GPU chain's plan all call these functions, so a training crop, an export-validation crop and a
runtime crop of one frame are the same array (``tests/test_preprocessing.py`` checks it).

The combinations:

- :func:`detector_input`: the whole frame resized to the detector input, normalised.
- :func:`frame_box`: a detector box (detector-input pixels) mapped to the frame and clamped to it;
  a non-finite box (a diverged model) is the whole frame and :func:`box_found` is False for it,
  so every caller marks that frame absent (one rule, the runtime's).
- :func:`crop_box`: the box a segmenter crops for a crop mode (``none`` whole frame, ``gt`` the
  ground-truth box, ``detector`` the detector's frame box), expanded by the crop margin and
  clamped to the frame.
- :func:`segmenter_input`: the crop box resized to the crop size, normalised.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from bpedge._stages import Box, clamp_box, crop_resize, crop_resize_normalize, scale_box

__all__ = [
    "CROP_MODES", "ModelInput", "Normalization", "PreprocessingSpec", "box_found", "crop_box",
    "detector_input", "expand_box", "frame_box", "full_frame_box", "segmenter_input",
    "segmenter_target",
]  # fmt: skip

#: How a segmenter's crop box is chosen: the whole frame, the ground-truth box, the detector's box.
CROP_MODES = ("none", "gt", "detector")


@dataclass(frozen=True)
class Normalization:
    """Z-score constants in 0-255 grey levels: ``(v - mean) / std``. ``None`` means that statistic
    is taken per image (per crop) instead."""

    mean: float | None
    std: float | None

    def __post_init__(self) -> None:
        if self.std is not None and not (math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"normalisation std must be positive or None (per image), got {self.std}")
        if self.mean is not None and not math.isfinite(self.mean):
            raise ValueError(f"normalisation mean must be finite or None (per image), got {self.mean}")

    @property
    def per_image(self) -> bool:
        return self.mean is None or self.std is None

    def to_dict(self) -> dict[str, float | None]:
        return {"mean": self.mean, "std": self.std}


@dataclass(frozen=True)
class ModelInput:
    """One model's input: ``hw`` (H, W) pixels and its normalisation."""

    hw: tuple[int, int]
    norm: Normalization

    def __post_init__(self) -> None:
        h, w = (int(v) for v in self.hw)
        if h < 1 or w < 1:
            raise ValueError(f"model input size must be positive, got {tuple(self.hw)}")
        object.__setattr__(self, "hw", (h, w))


@dataclass(frozen=True)
class PreprocessingSpec:
    """Everything that turns a frame into the two models' inputs; travels with the weights
    (checkpoints, the bundle manifest, ``CascadeSpec``).

    Sizes are (H, W) pixels. ``*_mean``/``*_std`` of ``None`` mean per-image (per-crop)
    statistics. ``crop_margin`` is the fraction the crop box is expanded by before cropping: its
    width and height each grow by ``crop_margin`` times the box side, about the box centre (0.0
    crops the box as found).
    """

    detector_input_hw: tuple[int, int]
    detector_mean: float | None
    detector_std: float | None
    crop_hw: tuple[int, int]
    crop_mean: float | None
    crop_std: float | None
    crop_margin: float = field(default=0.0, kw_only=True)

    def __post_init__(self) -> None:
        for name in ("detector_input_hw", "crop_hw"):
            h, w = getattr(self, name)
            if h < 1 or w < 1:
                raise ValueError(f"{name} must be positive, got {(h, w)}")
        for name in ("detector_std", "crop_std"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive or None (per image), got {v}")
        if not (math.isfinite(self.crop_margin) and self.crop_margin >= 0.0):
            raise ValueError(f"crop_margin must be a finite fraction >= 0, got {self.crop_margin}")

    @property
    def detector(self) -> ModelInput:
        return ModelInput(self.detector_input_hw, Normalization(self.detector_mean, self.detector_std))

    @property
    def crop(self) -> ModelInput:
        return ModelInput(self.crop_hw, Normalization(self.crop_mean, self.crop_std))

    @classmethod
    def from_inputs(cls, detector: ModelInput, crop: ModelInput, crop_margin: float = 0.0
                    ) -> PreprocessingSpec:
        return cls(detector.hw, detector.norm.mean, detector.norm.std, crop.hw, crop.norm.mean,
                   crop.norm.std, crop_margin=crop_margin)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, one key per field (sizes as ``[H, W]``)."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(PreprocessingSpec)}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> PreprocessingSpec:
        """Inverse of :meth:`to_json`; ``crop_margin`` may be missing (0.0, what older files
        meant). Unknown or missing keys are a ``ValueError`` naming them; a non-object a
        ``TypeError``."""
        if not isinstance(obj, Mapping):
            raise TypeError(f"a preprocessing spec must be a JSON object, got {type(obj).__name__}")
        names = [f.name for f in fields(PreprocessingSpec)]
        unknown = sorted(set(obj) - set(names))
        missing = [n for n in names if n not in obj and n != "crop_margin"]
        if unknown or missing:
            raise ValueError(f"preprocessing spec: unknown keys {unknown}, missing keys {missing}")
        def hw(key: str) -> tuple[int, int]:
            h, w = obj[key]
            return (int(h), int(w))

        return cls(hw("detector_input_hw"), obj["detector_mean"], obj["detector_std"],
                   hw("crop_hw"), obj["crop_mean"], obj["crop_std"],
                   crop_margin=float(obj.get("crop_margin", 0.0)))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), allow_nan=False)


def _detector_part(spec: PreprocessingSpec | ModelInput) -> ModelInput:
    return spec.detector if isinstance(spec, PreprocessingSpec) else spec


def _crop_part(spec: PreprocessingSpec | ModelInput) -> ModelInput:
    return spec.crop if isinstance(spec, PreprocessingSpec) else spec


def full_frame_box(hw: tuple[int, int]) -> Box:
    """The box covering a whole ``(H, W)`` frame."""
    return (0.0, 0.0, float(hw[1]), float(hw[0]))


def detector_input(frame: np.ndarray, spec: PreprocessingSpec | ModelInput) -> np.ndarray:
    """The whole uint8 ``(H, W)`` frame resized to the detector input and normalised:
    float32 ``(1, in_h, in_w)``. ``spec``: the full spec or the detector's :class:`ModelInput`."""
    model = _detector_part(spec)
    in_h, in_w = model.hw
    x = crop_resize_normalize(frame, full_frame_box(frame.shape[:2]), in_w, in_h,
                              model.norm.mean, model.norm.std)
    return x[None]


def box_found(raw_box: Sequence[float] | np.ndarray) -> bool:
    """False for a detector box with a non-finite coordinate: the frame is marked absent."""
    return bool(np.isfinite(np.asarray(raw_box, dtype=np.float64)).all())


def frame_box(raw_box: Sequence[float] | np.ndarray, frame_hw: tuple[int, int],
              spec: PreprocessingSpec | ModelInput) -> Box:
    """A detector box in detector-input pixels -> frame pixels, clamped to the frame (crops never
    overshoot it). A non-finite box becomes the whole frame; :func:`box_found` tells the caller
    to mark it absent. ``spec``: the full spec or the detector's :class:`ModelInput`."""
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if not box_found(raw_box):
        return full_frame_box((h, w))
    in_h, in_w = _detector_part(spec).hw
    return clamp_box(scale_box([float(v) for v in raw_box], w / in_w, h / in_h), w, h)


def expand_box(box: Sequence[float], margin: float) -> Box:
    """``box`` grown about its centre: width and height each by ``margin`` times their size."""
    x0, y0, x1, y1 = (float(v) for v in box)
    if margin == 0.0:  # exact: no arithmetic on the coordinates
        return (x0, y0, x1, y1)
    dx, dy = (x1 - x0) * margin / 2.0, (y1 - y0) * margin / 2.0
    return (x0 - dx, y0 - dy, x1 + dx, y1 + dy)


def crop_box(mode: str, frame_hw: tuple[int, int], margin: float, *,
             truth: Sequence[float] | None = None, detected: Sequence[float] | None = None) -> Box:
    """The frame-pixel box a segmenter crops for crop ``mode`` (one of :data:`CROP_MODES`).

    ``none``: the whole frame (no margin). ``gt``: ``truth`` (the ground-truth box); ``detector``:
    ``detected`` (a :func:`frame_box`); either expanded by ``margin`` (see
    :class:`PreprocessingSpec`) and clamped to the frame.
    """
    h, w = int(frame_hw[0]), int(frame_hw[1])
    if mode == "none":
        return full_frame_box((h, w))
    if mode == "gt":
        box = truth
    elif mode == "detector":
        box = detected
    else:
        raise ValueError(f"crop mode must be one of {CROP_MODES}, got {mode!r}")
    if box is None:
        what = "truth" if mode == "gt" else "detected"
        raise ValueError(f"crop mode {mode!r} needs the {what} box")
    return clamp_box(expand_box(box, margin), w, h)


def segmenter_input(frame: np.ndarray, box: Sequence[float],
                    spec: PreprocessingSpec | ModelInput) -> np.ndarray:
    """The ``box`` region of a uint8 ``(H, W)`` frame resized to the crop size and normalised:
    float32 ``(1, h, w)``. ``spec``: the full spec or the segmenter's :class:`ModelInput`."""
    model = _crop_part(spec)
    ch, cw = model.hw
    return crop_resize_normalize(frame, box, cw, ch, model.norm.mean, model.norm.std)[None]


def segmenter_target(mask: np.ndarray, box: Sequence[float], crop_hw: tuple[int, int]) -> np.ndarray:
    """The training target of a crop: the 0/255 ``mask`` cropped like the image, ``> 127.5`` as
    float32 0/1 ``(1, h, w)``."""
    ch, cw = crop_hw
    return (crop_resize(mask, box, cw, ch) > 127.5).astype(np.float32)[None]
