"""Where the detector-crop Dice loses to the ground-truth crop, and would a second crop around the
first mask win it back? (What benchmarks/results/study-tiny-phantom/README.md quotes.)

    python benchmarks/second_pass_crop.py STUDY_DIR [STUDY_DIR ...]

For each fold of a ``bpedge experiment --folds K --gammas 2 --archs unet`` study: the crop gap
(ground-truth-crop minus detector-crop full-frame Dice over BP frames, from the study's own
per-image evaluations) split by the detector's box IoU and by subject; then the fold's detector-
crop U-Net run again on each BP frame of validation and test with a second crop built from its
first mask, two ways: ``bbox`` (the mask's box, as the detector's box would be: the segmenter's
crop margin added) and ``recentre`` (the detector's box moved to the mask's centre, its size
kept). Mean Dice of the first pass and of each second pass, pooled over folds. Reads the study;
writes nothing.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from bpedge.train.checkpoint import crop_margin, load_model
from bpedge.train.data import read_image, read_mask
from bpedge.train.experiment.evaluate import MASK_THRESHOLD, _condition_boxes, _predict_crops

from bpedge._metrics import box_from_mask, dice
from bpedge._preprocessing import crop_box
from bpedge._stages import clamp_box, paste_back

IOU_BINS = ((0.0, 0.1), (0.1, 0.5), (0.5, 0.7), (0.7, 1.01))


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def gap_by_iou(study: Path) -> None:
    rows, gt = [], {}
    for fold in sorted(study.glob("subject-fold*")):
        rows += [r for r in _read(fold / "eval/segmenter_unet_detector.json")["images"]
                 if r["present"]]
        gt.update((r["key"], r["dice_frame"])
                  for r in _read(fold / "eval/segmenter_unet_gt.json")["images"] if r["present"])
    det = np.array([r["dice_frame"] for r in rows])
    truth = np.array([gt[r["key"]] for r in rows])
    iou = np.array([r["detector_iou"] for r in rows])
    print(f"{study}: {len(rows)} BP frames, detector crop {det.mean():.3f}, ground-truth crop "
          f"{truth.mean():.3f}, gap {(truth - det).mean():.3f}")
    for lo, hi in IOU_BINS:
        k = (iou >= lo) & (iou < hi)
        print(f"  detector IoU [{lo:g}, {min(hi, 1):g}): {int(k.sum()):3d} frames, share of the gap "
              f"{((truth - det) * k).sum() / len(rows):.3f}")
    misses = Counter(r["key"].split("_")[0] for r, i in zip(rows, iou) if i < 0.1)
    print(f"  frames with IoU < 0.1 by subject: {dict(misses.most_common())}")


def _second_box(kind: str, first_mask: np.ndarray, detector_box: list[float],
                hw: tuple[int, int], margin: float) -> tuple[float, ...] | None:
    h, w = hw
    mask_box = box_from_mask(first_mask)
    if mask_box is None:
        return None
    if kind == "recentre":
        cx, cy = (mask_box[0] + mask_box[2]) / 2, (mask_box[1] + mask_box[3]) / 2
        bw, bh = detector_box[2] - detector_box[0], detector_box[3] - detector_box[1]
        mask_box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
    return crop_box("detector", hw, margin, detected=clamp_box(mask_box, w, h))


def _masks(model: object, payload: dict, images: list[np.ndarray],
           boxes: list) -> list[np.ndarray]:
    probs = _predict_crops(model, payload, images, boxes)
    return [paste_back(p, b, im.shape[1], im.shape[0], MASK_THRESHOLD)
            for p, b, im in zip(probs, boxes, images)]


def second_pass(study: Path) -> None:
    dices: dict[tuple[str, str], list[float]] = {}
    for fold in sorted(study.glob("subject-fold*")):
        model, payload = load_model(fold / "segmenter/unet_detector/best.pt", "cpu")
        margin = crop_margin(payload)
        gamma = _read(fold / "eval/gamma_choice.json")["chosen_gamma"]
        for part, frames_json, det_json in (
                ("val", "valset.json", f"detector_gamma_{gamma:g}_val.json"),
                ("test", "testset.json", f"detector_gamma_{gamma:g}.json")):
            frames = list(_read(fold / frames_json)["positive"])
            det = {r["key"]: r for r in _read(fold / "eval" / det_json)["images"]}
            images = [read_image(Path(f["image"])) for f in frames]
            truths = [read_mask(Path(f["mask"])) for f in frames]
            hws = [(int(im.shape[0]), int(im.shape[1])) for im in images]

            boxes = _condition_boxes("detector", frames, hws, det, margin)
            first = _masks(model, payload, images, boxes)
            dices.setdefault((part, "first"), []).extend(map(dice, first, truths))
            for kind in ("bbox", "recentre"):
                second = [_second_box(kind, m, det[f["key"]]["box"], hw, margin) or b
                          for f, m, b, hw in zip(frames, first, boxes, hws)]
                dices.setdefault((part, kind), []).extend(
                    map(dice, _masks(model, payload, images, second), truths))
    for part in ("val", "test"):
        print(f"  {part}: " + ", ".join(f"{kind} {np.mean(dices[(part, kind)]):.4f}"
                                       for kind in ("first", "bbox", "recentre")))


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    for study in map(Path, argv[1:]):
        gap_by_iou(study)
        second_pass(study)


if __name__ == "__main__":
    main(sys.argv)
