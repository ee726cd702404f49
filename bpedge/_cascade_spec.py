"""The constants a cascade needs from a bundle: the preprocessing spec plus the two thresholds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bpedge._preprocessing import PreprocessingSpec

if TYPE_CHECKING:
    from bpedge._manifest import Manifest


@dataclass(frozen=True)
class CascadeSpec(PreprocessingSpec):
    """A :class:`~bpedge._preprocessing.PreprocessingSpec` (sizes, normalisation, crop margin) and
    the detector score and mask probability thresholds, as recorded in the bundle manifest."""

    score_threshold: float
    mask_threshold: float

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.mask_threshold <= 1.0:
            raise ValueError(f"mask_threshold must lie in [0, 1], got {self.mask_threshold}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must lie in [0, 1], got {self.score_threshold}")

    @property
    def preprocessing(self) -> PreprocessingSpec:
        """The preprocessing part alone."""
        return PreprocessingSpec.from_inputs(self.detector, self.crop, self.crop_margin)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> CascadeSpec:
        """The spec a bundle's manifest records."""
        p = manifest.preprocessing.spec
        return cls(p.detector_input_hw, p.detector_mean, p.detector_std, p.crop_hw, p.crop_mean,
                   p.crop_std, manifest.thresholds.score, manifest.thresholds.mask,
                   crop_margin=p.crop_margin)
