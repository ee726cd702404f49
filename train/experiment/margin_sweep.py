"""The crop margin swept at evaluation: how the detector-crop Dice depends on the margin around
the detector's box, on validation (what chooses) and on test (what it gives).

The segmenter is trained with one margin (its preset's ``crop_margin``, the value the bundle and
runtime use); with box jitter in training it has seen boxes somewhat tighter and looser than that,
so evaluating it over a grid of margins shows whether the trained value sits where validation Dice
peaks. Boxes are ``crop_box("detector", ..., margin)`` of the chosen detector's boxes, exactly as
the runtime crops (:mod:`bpedge._preprocessing`); Dice is full-frame over BP-positive frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bpedge.train.experiment._files import write_json

__all__ = ["MARGINS", "sweep_margins"]

#: Margins tried (fraction the box's width and height grow by, about its centre).
MARGINS: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4)


def _dice_by_margin(model: Any, payload: dict[str, Any], frameset: dict[str, Any],
                    detector_eval: dict[str, Any], margins: Sequence[float]) -> dict[str, Any]:
    from bpedge.train.data import read_image, read_mask
    from bpedge.train.experiment.evaluate import MASK_THRESHOLD, _condition_boxes, _predict_crops

    from bpedge._metrics import dice
    from bpedge._stages import paste_back

    frames = list(frameset["positive"])
    images = [read_image(Path(f["image"])) for f in frames]
    truths = [read_mask(Path(f["mask"])) for f in frames]
    hw = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    detections = {r["key"]: r for r in detector_eval["images"]}
    out: dict[str, Any] = {"keys": [f["key"] for f in frames], "dice": {}}
    for m in margins:
        boxes = _condition_boxes("detector", frames, hw, detections, m)
        probs = _predict_crops(model, payload, images, boxes)
        out["dice"][f"{m:g}"] = [
            dice(paste_back(p, b, w, h, MASK_THRESHOLD), t)
            for p, b, (h, w), t in zip(probs, boxes, hw, truths)
        ]
    return out


def sweep_margins(checkpoint: Path, testset: dict[str, Any], valset: dict[str, Any],
                  detector_test: dict[str, Any], detector_val: dict[str, Any], out_json: Path,
                  *, margins: Sequence[float] = MARGINS, device: str = "cpu") -> dict[str, Any]:
    """Per-frame full-frame Dice of a detector-crop segmenter at each margin, on the BP-positive
    validation and test frames; writes and returns ``{"trained_margin", "margins", "val",
    "test"}`` (``val``/``test``: ``{"keys", "dice": {margin: [per frame]}}``)."""
    from bpedge.train.checkpoint import crop_margin, load_model

    model, payload = load_model(checkpoint, device)
    if payload.get("crop_mode") != "detector":
        raise ValueError(f"{checkpoint} is not a detector-crop segmenter")
    result = {
        "checkpoint": str(checkpoint),
        "trained_margin": crop_margin(payload),
        "margins": [float(m) for m in margins],
        "val": _dice_by_margin(model, payload, valset, detector_val, margins),
        "test": _dice_by_margin(model, payload, testset, detector_test, margins),
    }
    write_json(out_json, result)
    return result
