""""BP present" lever ablation on subject-wise K-fold splits (what benchmarks/results/
study-tiny-phantom/README.md quotes in its presence table).

    python benchmarks/presence_ablation.py DATA OUT K '{"name": {"crop": "detector",
        ...segmenter overrides}, ...}' [DETECTOR_EPOCHS] [SEGMENTER_EPOCHS]

Per fold (``--folds K --fold F``, subject-wise): the tiny detector (trained once, shared by the
variants) and one tiny U-Net per variant (its ``crop`` mode, default ``gt``, and SegmenterConfig
overrides, e.g. ``{"decoy_crops": true}``; the fold's detector is passed to it when the crop is
``detector`` or with decoy crops). Every validation and test frame of the fold, with BP or empty, is
run as the cascade runs it: the detector's top box, grown by the crop margin, cropped and
segmented. Three calls of "BP present" are compared, each with its threshold chosen per fold on
the validation frames by :func:`bpedge._presence.choose_presence_threshold` (balanced accuracy):

- ``score``: detector score >= t (the published cascade; what bpedge does today);
- ``score_and_mask``: score >= t and the mask is not empty (an empty mask vetoes the frame);
- ``score_x_max``: score x the mask's highest probability >= t.

Prints one JSON line per fold and variant and a last line per variant with the pooled test
sensitivity / specificity per rule, the AUROC of each rule's continuous score, and the mean
detector-crop Dice over the test BP frames (the mask as emitted, whatever the call). CPU, the
machine's torch threads; runs resume from their last.pt.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from bpedge.train import presets
from bpedge.train.checkpoint import crop_margin, load_model
from bpedge.train.data import read_image, read_mask, scan_dataset
from bpedge.train.experiment.evaluate import MASK_THRESHOLD, _predict_crops
from bpedge.train.predict import load_detector, predict_boxes
from bpedge.train.train_detector import DetectorOptions, train_detector
from bpedge.train.train_segmenter import SegmenterOptions, train_segmenter
from detector_ablation import auroc

from bpedge._metrics import dice
from bpedge._preprocessing import crop_box
from bpedge._presence import choose_presence_threshold
from bpedge._stages import paste_back

RULES = ("score", "score_and_mask", "score_x_max")


def frames_of(split: dict[str, Any], part: str, by_key: dict[str, Any]) -> list[Any]:
    """The split's BP frames of ``part`` and the empty frames of the same subjects."""
    keys = split[part]
    subjects = {by_key[k].subject for k in keys}
    empty = [f for f in by_key.values() if f.subject in subjects and not f.present]
    return [by_key[k] for k in keys] + sorted(empty, key=lambda f: (f.subject, f.frame))


def cascade_rows(det: tuple[Any, Any], seg: tuple[Any, Any], frames: list[Any]) -> list[dict]:
    images = [read_image(f.image_path) for f in frames]
    preds = predict_boxes(det[0], det[1], images)
    model, payload = seg
    boxes = [crop_box("detector", im.shape, crop_margin(payload), detected=p.box)
             for im, p in zip(images, preds)]
    probs = _predict_crops(model, payload, images, boxes)  # the study's own segmenter run
    rows = []
    for f, im, p, box, prob in zip(frames, images, preds, boxes, probs):
        h, w = im.shape
        mask = paste_back(prob, box, w, h, MASK_THRESHOLD)
        row = {"key": f.key, "subject": f.subject, "present": f.present,
               "score": p.score if p.found else 0.0, "mask_found": bool(mask.any()),
               "max_prob": float(prob.max())}
        if f.present:
            row["dice"] = dice(mask, read_mask(f.mask_path))
        rows.append(row)
    return rows


def rule_score(rows: list[dict], rule: str) -> np.ndarray:
    s = np.array([r["score"] for r in rows])
    if rule == "score":
        return s
    if rule == "score_and_mask":
        # An empty mask scores below every threshold of the grid.
        return np.where([r["mask_found"] for r in rows], s, -1.0)
    return s * np.array([r["max_prob"] for r in rows])


def main(argv: list[str]) -> None:
    data, out, k = Path(argv[1]), Path(argv[2]), int(argv[3])
    variants = json.loads(argv[4])
    det_epochs = int(argv[5]) if len(argv) > 5 else None
    seg_epochs = int(argv[6]) if len(argv) > 6 else None
    tiny = presets.PRESETS["tiny"]
    by_key = {f.key: f for f in scan_dataset(data).frames}
    pooled: dict[str, list[dict]] = {v: [] for v in variants}
    for fold in range(1, k + 1):
        det_run = out / "detector" / f"fold{fold}"
        t0 = time.time()
        train_detector(DetectorOptions(
            data=data, out=det_run, preset="tiny", split="subject", folds=k, fold=fold,
            epochs=det_epochs, progress=False, verbose=False,
            resume=(det_run / "last.pt").is_file()))
        det = load_detector(det_run / "best.pt", "cpu")
        split = json.loads((det_run / "split.json").read_text())
        for name, variant in variants.items():
            over = {key: v for key, v in variant.items() if key != "crop"}
            crop = variant.get("crop", "gt")
            presets.PRESETS[f"ablation-{name}"] = dataclasses.replace(
                tiny, name=f"ablation-{name}", unet=dataclasses.replace(tiny.unet, **over))
            seg_run = out / f"unet-{name}" / f"fold{fold}"
            uses_detector = crop == "detector" or over.get("decoy_crops", False)
            train_segmenter(SegmenterOptions(
                data=data, out=seg_run, preset=f"ablation-{name}", split="subject", folds=k,
                fold=fold, epochs=seg_epochs, progress=False, verbose=False, crop=crop,
                detector=det_run / "best.pt" if uses_detector else None,
                resume=(seg_run / "last.pt").is_file()))
            seg_split = json.loads((seg_run / "split.json").read_text())
            if seg_split["test"] != split["test"]:
                raise RuntimeError("the detector and the segmenter were given different splits")
            seg = load_model(seg_run / "best.pt", "cpu")
            val = cascade_rows(det, seg, frames_of(split, "val", by_key))
            test = cascade_rows(det, seg, frames_of(split, "test", by_key))
            row: dict[str, Any] = {"variant": name, "fold": fold}
            for rule in RULES:
                present = np.array([r["present"] for r in val])
                choice = choose_presence_threshold(rule_score(val, rule), present)
                ts = rule_score(test, rule)
                tp = np.array([r["present"] for r in test])
                called = ts >= choice.value
                row[rule] = {"t": choice.value, "val_bacc": choice.balanced_accuracy,
                             "test_sens": float(called[tp].mean()),
                             "test_spec": float((~called[~tp]).mean())}
                for r, c in zip(test, called):
                    r[f"called_{rule}"] = bool(c)
            row["test_dice"] = float(np.mean([r["dice"] for r in test if r["present"]]))
            row["sec"] = round(time.time() - t0)
            pooled[name] += test
            print(json.dumps(row), flush=True)
    for name, test in pooled.items():
        tp = np.array([r["present"] for r in test])
        summary: dict[str, Any] = {"variant": name, "data": str(data), "overrides": variants[name],
                                   "test_bp_frames": int(tp.sum()),
                                   "test_empty_frames": int((~tp).sum()),
                                   "test_dice": float(np.mean([r["dice"] for r in test
                                                               if r["present"]]))}
        for rule in RULES:
            called = np.array([r[f"called_{rule}"] for r in test])
            values = rule_score(test, rule)
            summary[rule] = {"sens": float(called[tp].mean()), "spec": float((~called[~tp]).mean()),
                             "auroc": auroc(list(values[tp]), list(values[~tp]))}
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main(sys.argv)
