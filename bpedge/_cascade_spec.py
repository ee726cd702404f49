"""The constants a cascade needs from a bundle: input sizes, normalisation, thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bpedge._manifest import Manifest


@dataclass(frozen=True)
class CascadeSpec:
    """Preprocessing constants and thresholds, as recorded in the bundle manifest.

    ``*_mean``/``*_std`` of ``None`` mean per-image (per-crop) statistics. Sizes are (H, W) pixels.
    """

    detector_input_hw: tuple[int, int]
    detector_mean: float | None
    detector_std: float | None
    crop_hw: tuple[int, int]
    crop_mean: float | None
    crop_std: float | None
    score_threshold: float
    mask_threshold: float

    def __post_init__(self) -> None:
        for name in ("detector_input_hw", "crop_hw"):
            h, w = getattr(self, name)
            if h < 1 or w < 1:
                raise ValueError(f"{name} must be positive, got {(h, w)}")
        for name in ("detector_std", "crop_std"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ValueError(f"{name} must be positive or None (per image), got {v}")
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must lie in [0, 1], got {self.mask_threshold}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {self.score_threshold}")

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> CascadeSpec:
        """The spec a bundle's manifest records (``norm="per_image"`` -> per-image statistics)."""
        det, seg = manifest.preprocessing.detector, manifest.preprocessing.segmenter
        per_det, per_seg = det.norm == "per_image", seg.norm == "per_image"
        return cls(
            detector_input_hw=tuple(det.input_hw),  # type: ignore[arg-type]
            detector_mean=None if per_det else det.mean,
            detector_std=None if per_det else det.std,
            crop_hw=tuple(seg.crop_hw),  # type: ignore[arg-type]
            crop_mean=None if per_seg else seg.mean,
            crop_std=None if per_seg else seg.std,
            score_threshold=manifest.thresholds.score,
            mask_threshold=manifest.thresholds.mask,
        )
