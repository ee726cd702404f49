"""How much do a study's models lose when the scanner's grey levels change? (What
benchmarks/results/study-tiny-phantom/README.md quotes.)

    python benchmarks/intensity_robustness.py STUDY_DIR

For each fold of a ``bpedge experiment --folds K --gammas 2 --archs unet`` study, the fold's
detector and its ground-truth-crop U-Net run on the fold's BP test frames after a global change
of grey levels (each rounded and clipped to 8 bits as a scanner would write it): gain (x0.6,
x1.4: the log-compression's dynamic range), an offset (+30: overall gain in dB adds to every
grey level), gamma (0.7, 1.4) and contrast about the frame's mean (x0.6). Prints, pooled over the
folds, the detector's test mIoU and the U-Net's Dice on the ground-truth box (the study's margin;
crop level, against the mask's crop) for each change. Reads the study; writes nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bpedge.train.checkpoint import load_model
from bpedge.train.data import read_image
from bpedge.train.experiment.evaluate import _predict_crops
from bpedge.train.predict import load_detector, predict_boxes

from bpedge._metrics import box_iou, dice
from bpedge._preprocessing import crop_box, segmenter_target

CHANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "none": lambda x: x,
    "gain x0.6": lambda x: x * 0.6,
    "gain x1.4": lambda x: x * 1.4,
    "offset +30": lambda x: x + 30.0,
    "gamma 0.7": lambda x: 255.0 * (x / 255.0) ** 0.7,
    "gamma 1.4": lambda x: 255.0 * (x / 255.0) ** 1.4,
    "contrast x0.6": lambda x: (x - x.mean()) * 0.6 + x.mean(),
}


def main(study: Path) -> None:
    ious: dict[str, list[float]] = {name: [] for name in CHANGES}
    dices: dict[str, list[float]] = {name: [] for name in CHANGES}
    for fold in sorted(study.glob("subject-fold*")):
        det, det_payload = load_detector(fold / "detector/gamma_2/best.pt", "cpu")
        seg, seg_payload = load_model(fold / "segmenter/unet_gt/best.pt", "cpu")
        margin = float(seg_payload["model_config"].get("crop_margin", 0.0))
        crop_hw = tuple(seg_payload["input_hw"])
        frames = json.loads((fold / "testset.json").read_text())["positive"]
        originals = [read_image(Path(f["image"])).astype(np.float64) for f in frames]
        masks = [read_image(Path(f["mask"])) for f in frames]
        boxes = [crop_box("gt", m.shape, margin, truth=f["box"]) for m, f in zip(masks, frames)]
        targets = [segmenter_target(m, b, crop_hw)[0] for m, b in zip(masks, boxes)]
        for name, change in CHANGES.items():
            images = [np.clip(np.rint(change(im)), 0, 255).astype(np.uint8) for im in originals]
            found = predict_boxes(det, det_payload, images)
            ious[name] += [box_iou(p.box, f["box"]) for p, f in zip(found, frames)]
            probs = _predict_crops(seg, seg_payload, images, boxes)
            dices[name] += [dice(p >= 0.5, t > 0.5) for p, t in zip(probs, targets)
                            if p is not None]
    for name in CHANGES:
        print(f"{name:14s} detector test mIoU {np.mean(ious[name]):.3f}   "
              f"U-Net Dice on the ground-truth crop {np.mean(dices[name]):.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
