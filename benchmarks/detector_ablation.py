"""Detector lever ablation on subject-wise K-fold splits (what benchmarks/results/
study-tiny-phantom/README.md quotes in its ablation table).

    python benchmarks/detector_ablation.py DATA OUT NAME K '{"augment": true}' [EPOCHS] [FOLDS]
    python benchmarks/detector_ablation.py DATA OUT NAME K --evaluate

trains the tiny detector with the given DetectorConfig overrides on each fold (``--folds K
--fold F``, subject-wise), and prints one JSON line per fold (validation mIoU of the kept epoch,
test mIoU over the fold's BP-positive test frames, per test subject, and the area under the ROC
curve of the detector's score separating the test subjects' BP frames from their empty frames)
and a last line with the means over the folds (and the AUROC of the frames pooled over folds). Runs resume from their last.pt. CPU, the machine's torch threads. ``--evaluate``
scores finished runs OUT/NAME/foldF (best.pt and split.json, e.g. the detectors
benchmarks/presence_ablation.py trained) without training.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
from bpedge.train import presets
from bpedge.train.data import read_image, scan_dataset
from bpedge.train.predict import load_detector, predict_boxes
from bpedge.train.train_detector import DetectorOptions, train_detector

from bpedge._metrics import box_iou


def main(argv: list[str]) -> None:
    data, out, name, k = Path(argv[1]), Path(argv[2]), argv[3], int(argv[4])
    evaluate_only = len(argv) > 5 and argv[5] == "--evaluate"
    over = json.loads(argv[5]) if len(argv) > 5 and not evaluate_only else {}
    epochs = int(argv[6]) if len(argv) > 6 else None
    folds = [int(x) for x in argv[7].split(",")] if len(argv) > 7 else list(range(1, k + 1))
    tiny = presets.PRESETS["tiny"]
    over = {key: tuple(v) if isinstance(v, list) else v for key, v in over.items()}
    presets.PRESETS["ablation"] = dataclasses.replace(
        tiny, name="ablation", detector=dataclasses.replace(tiny.detector, **over))
    by_key = {f.key: f for f in scan_dataset(data).frames}
    rows = []
    pooled_pos: list[float] = []
    pooled_neg: list[float] = []
    for fold in folds:
        run = out / name / f"fold{fold}"
        t0 = time.time()
        if not evaluate_only:
            train_detector(DetectorOptions(
                data=data, out=run, preset="ablation", split="subject", folds=k, fold=fold,
                epochs=epochs, progress=False, verbose=False, resume=(run / "last.pt").is_file()))
        best = json.loads((run / "metrics.json").read_text())
        keys = json.loads((run / "split.json").read_text())["test"]
        subjects = {by_key[key].subject for key in keys}
        empty_keys = [f.key for f in by_key.values() if f.subject in subjects and not f.present]
        model, payload = load_detector(run / "best.pt", "cpu")
        preds = predict_boxes(model, payload, [read_image(by_key[key].image_path) for key in keys])
        empty_preds = predict_boxes(model, payload,
                                    [read_image(by_key[key].image_path) for key in empty_keys])
        ious = [box_iou(p.box, by_key[key].box) for p, key in zip(preds, keys)]
        pos_scores = [p.score for p in preds]
        neg_scores = [p.score for p in empty_preds]
        pooled_pos += pos_scores
        pooled_neg += neg_scores
        per_subject: dict[str, list[float]] = {}
        for key, iou in zip(keys, ious):
            per_subject.setdefault(key.split("_")[0], []).append(iou)
        row = {"name": name, "fold": fold, "val_miou": best["best_val_metric"],
               "best_epoch": best["best_epoch"], "test_miou": float(np.mean(ious)),
               "test_auroc": auroc(pos_scores, neg_scores),
               "per_subject": {s: round(float(np.mean(v)), 3) for s, v in per_subject.items()},
               "sec": round(time.time() - t0)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps({"name": name, "data": str(data), "overrides": over,
                      "mean_test_miou": float(np.mean([r["test_miou"] for r in rows])),
                      "mean_val_miou": float(np.mean([r["val_miou"] for r in rows])),
                      "pooled_test_auroc": auroc(pooled_pos, pooled_neg)}), flush=True)


def auroc(positive: list[float], negative: list[float]) -> float | None:
    """P(score of a BP frame > score of an empty frame), ties counting one half; ``None`` when
    either list is empty."""
    if not positive or not negative:
        return None
    pos, neg = np.asarray(positive)[:, None], np.asarray(negative)[None, :]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))


if __name__ == "__main__":
    main(sys.argv)
