"""Does the segmenter's output on the detector's crop help call "BP present"? (What
benchmarks/results/study-tiny-phantom/README.md quotes.)

    python benchmarks/presence_cues.py STUDY_DIR

For each fold of a ``bpedge experiment --folds K --gammas 2 --archs unet`` study: the fold's
detector and its detector-crop U-Net run on the fold's validation and test frames (BP and empty);
per frame, the detector's score and, from the U-Net's probability map on the crop (the study's
margin), its maximum, its mean over pixels above 0.5 and the share of the crop above 0.5, and the
detector's score on the frame mirrored left-right (test-time flip, for the rules that average
it with the score: twice the detector's work if shipped), and for a detector trained with a
presence head (whose probability is its score) the best anchor's score it would give without
that head. Each
rule below is a number per frame whose threshold is chosen on the fold's validation frames by
``bpedge._presence`` (balanced accuracy, the study's and export's rule) and applied to its test
frames; prints sensitivity and specificity pooled over the folds, and each rule's AUROC over the
pooled test frames. Reads the study; writes nothing.
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
from detector_ablation import auroc

from bpedge._preprocessing import crop_box
from bpedge._presence import choose_presence_threshold

# score, max prob, mean prob in mask, mask share, score on the mirrored frame, best anchor's score
Cues = tuple[float, float, float, float, float, float]

RULES: dict[str, Callable[[Cues], float]] = {
    "score (the shipped rule)": lambda c: c[0],
    "U-Net max prob": lambda c: c[1],
    "score x max prob": lambda c: c[0] * c[1],
    "score x mean prob in mask": lambda c: c[0] * c[2],
    "sqrt(score x min(1, 4 x mask share))": lambda c: float(np.sqrt(c[0] * min(1.0, 4 * c[3]))),
    "mean of score and mirrored-frame score": lambda c: (c[0] + c[4]) / 2,
    "min of score and mirrored-frame score": lambda c: min(c[0], c[4]),
    "best anchor's score (without a presence head)": lambda c: c[5],
    "sqrt(score x best anchor's score)": lambda c: float(np.sqrt(c[0] * c[5])),
}


def fold_cues(fold: Path, part: str) -> tuple[list[Cues], list[bool]]:
    """Cues and truth (BP present) of the fold's ``valset`` or ``testset`` frames."""
    det, det_payload = load_detector(fold / "detector/gamma_2/best.pt", "cpu")
    seg, seg_payload = load_model(fold / "segmenter/unet_detector/best.pt", "cpu")
    margin = float(seg_payload["model_config"].get("crop_margin", 0.0))
    listed = json.loads((fold / f"{part}.json").read_text())
    frames = listed["positive"] + listed["empty"]
    images = [read_image(Path(f["image"])) for f in frames]
    found = predict_boxes(det, det_payload, images)
    mirrored = predict_boxes(det, det_payload, [np.ascontiguousarray(im[:, ::-1]) for im in images])
    anchor = found
    if getattr(det, "presence_head", None) is not None:
        det.presence_head = None  # the same weights, scored by the best anchor
        anchor = predict_boxes(det, det_payload, images)
    boxes = [crop_box("detector", im.shape, margin, detected=p.box) for im, p in zip(images, found)]
    cues: list[Cues] = []
    for p, m, a, prob in zip(found, mirrored, anchor,
                             _predict_crops(seg, seg_payload, images, boxes)):
        inside = prob > 0.5
        cues.append((p.score, float(prob.max()),
                     float(prob[inside].mean()) if inside.any() else 0.0, float(inside.mean()),
                     m.score, a.score))
    return cues, [f["box"] is not None for f in frames]


def main(study: Path) -> None:
    called: dict[str, list[bool]] = {r: [] for r in RULES}
    values: dict[str, list[float]] = {r: [] for r in RULES}
    truth: list[bool] = []
    for fold in sorted(study.glob("subject-fold*")):
        val_cues, val_truth = fold_cues(fold, "valset")
        test_cues, test_truth = fold_cues(fold, "testset")
        truth += test_truth
        for name, rule in RULES.items():
            choice = choose_presence_threshold(np.array([rule(c) for c in val_cues]),
                                               np.array(val_truth))
            called[name] += [rule(c) >= choice.value for c in test_cues]
            values[name] += [rule(c) for c in test_cues]
    t = np.array(truth)
    for name, calls in called.items():
        c, v = np.array(calls), np.array(values[name])
        print(f"{name:40s} sensitivity {c[t].mean():.3f} specificity {(~c[~t]).mean():.3f} "
              f"AUROC {auroc(v[t].tolist(), v[~t].tolist()):.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
