"""Do detectors trained differently on the same folds fail on different subjects? (what
benchmarks/results/study-tiny-phantom/README.md quotes beside its detector ablation).

    python benchmarks/detector_ensemble.py DATA RUNS_A RUNS_B [RUNS_C ...]

Each RUNS folder holds fold1..foldK of a subject-wise K-fold detector run
(benchmarks/detector_ablation.py or benchmarks/presence_ablation.py), all on the same folds. Per
fold, the members' head outputs (anchor logits and box deltas) are averaged and decoded by the
first member's ``RetinaNetDetector.decode``, as one detector would: an ensemble that still gives one (score, box). Prints one JSON
line per fold (test mIoU of the first run alone and of the ensemble, per test subject) and a last
line with their means and the AUROC of the score, BP test frames against the test subjects' empty
frames, pooled over folds. If the members' mistakes were independent, the ensemble would lift the
subjects one of them misses. CPU, one torch thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from bpedge.train.checkpoint import model_input
from bpedge.train.data import read_image, scan_dataset
from bpedge.train.predict import load_detector
from detector_ablation import auroc

from bpedge._metrics import box_iou
from bpedge._preprocessing import detector_input, frame_box


def predict(models: list, images: list[np.ndarray]) -> tuple[list[float], list]:
    """Score and frame box per image from the members' averaged head outputs."""
    spec = model_input(models[0][1])
    if any(model_input(p) != spec for _, p in models):
        raise ValueError("the members differ in input size or normalisation")
    x = torch.from_numpy(np.stack([detector_input(im, spec) for im in images]))
    with torch.inference_mode():
        outs = [m.head_outputs(x) for m, _ in models]
        # The first member's decode (the exported one) on the averaged head outputs.
        scores, boxes = models[0][0].decode(torch.stack([o[0] for o in outs]).mean(0),
                                            torch.stack([o[1] for o in outs]).mean(0))
    return scores.tolist(), [frame_box(b, im.shape, spec) for b, im in zip(boxes.tolist(), images)]


def main(argv: list[str]) -> None:
    torch.set_num_threads(1)
    data, runs = Path(argv[1]), [Path(a) for a in argv[2:]]
    by_key = {f.key: f for f in scan_dataset(data).frames}
    folds = sorted(int(p.name[4:]) for p in runs[0].glob("fold*"))
    pooled: dict[str, dict[str, list[float]]] = {}
    for fold in folds:
        keys = json.loads((runs[0] / f"fold{fold}" / "split.json").read_text())["test"]
        for run in runs[1:]:
            if json.loads((run / f"fold{fold}" / "split.json").read_text())["test"] != keys:
                raise ValueError(f"{run} fold {fold} has other test frames than {runs[0]}")
        models = [load_detector(run / f"fold{fold}" / "best.pt") for run in runs]
        for m, _ in models:
            m.eval()
        subjects = {by_key[k].subject for k in keys}
        empty = [f.key for f in by_key.values() if f.subject in subjects and not f.present]
        images = [read_image(by_key[k].image_path) for k in keys]
        empty_images = [read_image(by_key[k].image_path) for k in empty]
        row: dict[str, object] = {"fold": fold}
        for name, members in (("first", models[:1]), ("ensemble", models)):
            scores, boxes = predict(members, images)
            ious = [box_iou(b, by_key[k].box) for b, k in zip(boxes, keys)]
            per_subject: dict[str, list[float]] = {}
            for k, iou in zip(keys, ious):
                per_subject.setdefault(k.split("_")[0], []).append(iou)
            row[name] = {"test_miou": float(np.mean(ious)),
                         "per_subject": {s: round(float(np.mean(v)), 3)
                                         for s, v in per_subject.items()}}
            p = pooled.setdefault(name, {"miou": [], "pos": [], "neg": []})
            p["miou"].append(float(np.mean(ious)))
            p["pos"] += scores
            p["neg"] += predict(members, empty_images)[0]
        print(json.dumps(row), flush=True)
    print(json.dumps({"data": str(data), "runs": [str(r) for r in runs],
                      **{name: {"mean_test_miou": float(np.mean(p["miou"])),
                                "pooled_test_auroc": auroc(p["pos"], p["neg"])}
                         for name, p in pooled.items()}}), flush=True)


if __name__ == "__main__":
    main(sys.argv)
