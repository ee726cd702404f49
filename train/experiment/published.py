"""The published numbers the study is compared against: the ONE place they are written down.

Source: the method's publication as summarised in the project's design document
(``DESIGN.md``, section "bpedge design", first table and the line after it): Kaggle "Ultrasound
Nerve Segmentation" data, 2,323 BP-positive 420x580 frames of 47 subjects, 2,100 train / 223 test
frames (a random split), Dice over BP-positive test frames. The bibliographic reference of the
paper is not recorded in DESIGN.md, so none is given here.
"""

from __future__ import annotations

from typing import Any

__all__ = ["PUBLISHED", "SOURCE", "published_json"]

SOURCE = (
    "published study as quoted in DESIGN.md ('Published results for that method'): Kaggle "
    "Ultrasound Nerve Segmentation, 2,323 BP-positive frames, 2,100 train / 223 test, random split"
)

#: Dice on test (BP-positive frames) by segmenter and condition: the paper's Table 3.
PUBLISHED_DICE: dict[str, dict[str, float]] = {
    "unet": {"none": 0.7192, "detector": 0.7957, "gt": 0.8454},
    "mnet": {"none": 0.6892, "detector": 0.7720, "gt": 0.8384},
}

#: Detection mean IoU on test by focal-loss gamma: the paper's Table 2.
PUBLISHED_MIOU: dict[float, float] = {1.0: 0.6794, 2.0: 0.6691, 3.0: 0.6845, 5.0: 0.6858}

PUBLISHED: dict[str, Any] = {"dice": PUBLISHED_DICE, "miou": PUBLISHED_MIOU}


def published_json() -> dict[str, Any]:
    """The published numbers as plain JSON types (gamma keys as strings like ``"2"``)."""
    return {
        "source": SOURCE,
        "split": "random",
        "dice": {arch: dict(v) for arch, v in PUBLISHED_DICE.items()},
        "miou": {f"{g:g}": v for g, v in PUBLISHED_MIOU.items()},
    }
