"""Could a presence head be added after the detector is trained, leaving its boxes untouched?
(What benchmarks/results/study-tiny-phantom/README.md quotes.)

    python benchmarks/presence_probe.py DATA STUDY_DIR

For each fold of a ``bpedge experiment --folds K --gammas 2`` study on ``DATA``: the fold's
detector, frozen (eval mode), gives each frame the features a presence head would read (each FPN
level max-pooled over the frame, :class:`bpedge.train.models._heads.PresenceHead`'s input). A
logistic regression on them (L2 weight decay, full batch) is fitted on the fold's training
subjects' BP and empty frames (each also mirrored left-right), its threshold chosen on the fold's
validation frames by ``bpedge._presence`` (the shipped rule), and applied to its test frames.
Prints sensitivity and specificity pooled over the folds and the pooled AUROC, beside the same
for the detector's own score. Reads the study; writes nothing.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from bpedge.train.checkpoint import model_input
from bpedge.train.data import read_image, scan_dataset
from bpedge.train.models._heads import PresenceHead
from bpedge.train.predict import load_detector
from detector_ablation import auroc

from bpedge._preprocessing import detector_input
from bpedge._presence import choose_presence_threshold

WEIGHT_DECAY = 1e-2
STEPS = 500


def pooled_features(model, payload, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(N, levels x C) max-pooled FPN features and (N,) detector scores of uint8 frames."""
    spec = model_input(payload)
    feats, scores = [], []
    with torch.no_grad():
        for start in range(0, len(images), 16):
            x = torch.from_numpy(np.stack([detector_input(im, spec)
                                           for im in images[start:start + 16]]))
            feats.append(PresenceHead.pool(list(model.backbone(x).values())).numpy())
            scores.append(model(x)[0].numpy())
    return np.concatenate(feats), np.concatenate(scores)


def fit_logistic(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, torch.nn.Linear]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    torch.manual_seed(0)
    layer = torch.nn.Linear(x.shape[1], 1)
    xs = torch.from_numpy((x - mean) / std).float()
    ys = torch.from_numpy(y).float()
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-2, weight_decay=WEIGHT_DECAY)
    positives = float(ys.mean())
    weight = torch.where(ys > 0.5, 0.5 / positives, 0.5 / (1 - positives))  # balanced classes
    for _ in range(STEPS):
        optimiser.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(layer(xs)[:, 0], ys,
                                                                    weight=weight)
        loss.backward()
        optimiser.step()
    return mean, std, layer


def scored(fold: Path, part: str, model, payload,
           probe: tuple[np.ndarray, np.ndarray, torch.nn.Linear]
           ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each rule's number for the fold's ``valset`` or ``testset`` frames, and their truth."""
    mean, std, layer = probe
    listed = json.loads((fold / f"{part}.json").read_text())
    items = listed["positive"] + listed["empty"]
    feats, det_scores = pooled_features(model, payload,
                                        [read_image(Path(f["image"])) for f in items])
    with torch.no_grad():
        probability = torch.sigmoid(layer(torch.from_numpy((feats - mean) / std).float())[:, 0])
    return ({"presence probe": probability.numpy(), "detector score (shipped)": det_scores},
            np.array([f["box"] is not None for f in items]))


def main(data: Path, study: Path) -> None:
    frames = scan_dataset(data).frames
    by_key = {f.key: f for f in frames}
    # per rule: its scores on the BP test frames, on the empty ones
    rows: dict[str, tuple[list[float], list[float]]] = {
        "presence probe": ([], []), "detector score (shipped)": ([], [])}
    calls: dict[str, list[bool]] = {name: [] for name in rows}
    truth: list[bool] = []
    for fold in sorted(study.glob("subject-fold*")):
        model, payload = load_detector(fold / "detector/gamma_2/best.pt", "cpu")
        model.eval()
        split = json.loads((fold / "split.json").read_text())
        train_subjects = {by_key[k].subject for k in split["train"]}
        train = [f for f in frames if f.subject in train_subjects]
        images = [read_image(f.image_path) for f in train]
        images += [np.ascontiguousarray(im[:, ::-1]) for im in images]
        y = np.array([f.present for f in train] * 2, np.float32)
        x, _ = pooled_features(model, payload, images)
        mean, std, layer = fit_logistic(x, y)

        val, val_truth = scored(fold, "valset", model, payload, (mean, std, layer))
        test, test_truth = scored(fold, "testset", model, payload, (mean, std, layer))
        truth += test_truth.tolist()
        for name in rows:
            choice = choose_presence_threshold(val[name], val_truth)
            calls[name] += (test[name] >= choice.value).tolist()
            rows[name][0].extend(test[name][test_truth].tolist())
            rows[name][1].extend(test[name][~test_truth].tolist())
        fold_auroc = {name: auroc(v[test_truth].tolist(), v[~test_truth].tolist())
                      for name, v in test.items()}
        print(f"{fold.name}: " + ", ".join(f"{name} AUROC {a:.3f}" for name, a in fold_auroc.items()),
              flush=True)
    t = np.array(truth)
    for name, (pos, neg) in rows.items():
        c = np.array(calls[name])
        print(f"{name:26s} sensitivity {c[t].mean():.3f} specificity {(~c[~t]).mean():.3f} "
              f"AUROC {auroc(pos, neg):.3f}", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
