"""The study's tables as one JSON file (RUN/summary.json), computed from the per-image metrics.

Everything the report prints comes from here (plus RUN/data.json, RUN/study.json and the step
log), so the report can be checked against the files it was made from.

- detection (Table 2): per gamma, the validation metric of the kept checkpoint (what chooses the
  gamma: mIoU, or mIoU with the presence call, :data:`DETECTOR_METRIC_LABELS`) and the test
  mIoU;
- segmentation (Table 3 and Fig. 7): per split mode, segmenter and condition, statistics of the
  full-frame Dice and of the in-box crop Dice over BP-positive test frames;
- Dice vs detector IoU: the detector-crop Dice (and, on the same images, the ground-truth-crop
  Dice) over all BP-positive test images, the IoU >= 0.7 subset the paper used, the rest, and
  IoU bins;
- empty frames (Kaggle's view), when the test set has any: presence accuracy and mean Dice over
  all test frames with empty-vs-empty = 1.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bpedge.train.experiment._files import write_json
from bpedge.train.experiment.layout import StudyLayout, gamma_label
from bpedge.train.experiment.published import published_json

__all__ = ["IOU_BINS", "IOU_THRESHOLD", "build_summary", "choose_gamma", "describe"]

#: The paper kept test images whose detector IoU was at least this for its detector-crop Dice.
IOU_THRESHOLD = 0.7
IOU_BINS: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.9, 1.0)
_SCHEMA = "bpedge.study-summary/1"


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def describe(values: Sequence[float]) -> dict[str, Any]:
    """``n``, ``mean``, ``sd`` (sample, ddof 1; 0 for one value), ``median``, ``q1``, ``q3``,
    ``min``, ``max`` of ``values``; all but ``n`` are ``None`` when there are none."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        return {"n": 0, **{k: None for k in ("mean", "sd", "median", "q1", "q3", "min", "max")}}
    q1, median, q3 = (float(x) for x in np.percentile(v, [25, 50, 75]))
    return {
        "n": int(v.size),
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0,
        "median": median,
        "q1": q1,
        "q3": q3,
        "min": float(v.min()),
        "max": float(v.max()),
    }


# The detector trainer's validation metrics (train_detector.VALIDATION_METRICS) as tables say them.
DETECTOR_METRIC_LABELS = {"val_miou": "mIoU", "val_miou_presence": "mIoU x presence"}


def _detector_metric(metrics: dict[str, Any]) -> str:
    """A detector run's validation metric name (runs from before it was recorded: mIoU)."""
    name = str(metrics.get("metric_name", "val_miou"))
    if name not in DETECTOR_METRIC_LABELS:
        raise ValueError(f"a detector run validated on {name!r}, which the study does not know")
    return name


def choose_gamma(layout: StudyLayout, mode: str, gammas: Sequence[float]) -> dict[str, Any]:
    """Pick the gamma whose kept checkpoint has the highest VALIDATION metric (mIoU, or mIoU
    with the presence call; ties: the first in ``gammas``); the test set plays no part. Writes
    RUN/{mode}/eval/gamma_choice.json."""
    val, names = {}, set()
    for g in gammas:
        metrics = _read(layout.detector_run(mode, g) / "metrics.json")
        if metrics.get("best_val_metric") is None:
            raise ValueError(f"detector run for gamma {g:g} ({mode}) has no finished epoch")
        val[gamma_label(g)] = float(metrics["best_val_metric"])
        names.add(_detector_metric(metrics))
    if len(names) > 1:
        raise ValueError(f"the detector runs ({mode}) validated on different metrics "
                         f"{sorted(names)}: their values cannot choose between them")
    (metric,) = names
    chosen = max(gammas, key=lambda g: (val[gamma_label(g)], -list(gammas).index(g)))
    result = {
        "rule": f"highest validation {DETECTOR_METRIC_LABELS[metric]} of the kept (best) "
                "checkpoint; test data not used",
        "metric": metric,
        "val_metric": val,
        "chosen_gamma": float(chosen),
        "checkpoint": str(layout.detector_run(mode, chosen) / "best.pt"),
    }
    write_json(layout.gamma_choice(mode), result)
    return result


def _detection(layout: StudyLayout, mode: str, gammas: Sequence[float]) -> dict[str, Any]:
    choice = _read(layout.gamma_choice(mode))
    rows = []
    for g in gammas:
        metrics = _read(layout.detector_run(mode, g) / "metrics.json")
        ev = _read(layout.detector_eval(mode, g))
        rows.append({
            "gamma": float(g),
            "val_metric": float(metrics["best_val_metric"]),
            "best_epoch": int(metrics["best_epoch"]),
            "epochs": len(metrics["epochs"]),
            "test_miou": ev["miou"],
            "test_n": ev["n"],
        })
    return {"rows": rows, "chosen_gamma": float(choice["chosen_gamma"]), "rule": choice["rule"],
            "metric": choice.get("metric", "val_miou")}


def _segmentation(layout: StudyLayout, mode: str, archs: Sequence[str],
                  conditions: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for arch in archs:
        out[arch] = {}
        for cond in conditions:
            metrics = _read(layout.segmenter_run(mode, arch, cond) / "metrics.json")
            ev = _read(layout.segmenter_eval(mode, arch, cond))
            pos = [r for r in ev["images"] if r["present"]]
            out[arch][cond] = {
                "frame": describe([r["dice_frame"] for r in pos]),
                "crop": describe([r["dice_crop"] for r in pos]),
                "val_dice": float(metrics["best_val_metric"]),
                "best_epoch": int(metrics["best_epoch"]),
                "epochs": len(metrics["epochs"]),
            }
    return out


def _iou_subsets() -> list[tuple[str, float, float]]:
    """(label, low, high) IoU ranges, ``low <= iou < high`` (the last bin includes 1)."""
    subsets = [("all test images", -math.inf, math.inf),
               (f"IoU >= {IOU_THRESHOLD:g}", IOU_THRESHOLD, math.inf),
               (f"IoU < {IOU_THRESHOLD:g}", -math.inf, IOU_THRESHOLD)]
    for lo, hi in itertools.pairwise(IOU_BINS):
        last = hi == IOU_BINS[-1]
        label = f"{lo:g} <= IoU <= {hi:g}" if last else f"{lo:g} <= IoU < {hi:g}"
        subsets.append((label, lo, math.inf if last else hi))
    return subsets


def _dice_vs_iou(layout: StudyLayout, mode: str, archs: Sequence[str]) -> dict[str, Any]:
    per_arch = {}
    for arch in archs:
        det = {r["key"]: r for r in _read(layout.segmenter_eval(mode, arch, "detector"))["images"]
               if r["present"]}
        gt = {r["key"]: r for r in _read(layout.segmenter_eval(mode, arch, "gt"))["images"]
              if r["present"]}
        per_arch[arch] = (det, gt)
    first_det = per_arch[archs[0]][0]
    ious = {k: float(r["detector_iou"]) for k, r in first_det.items()}
    rows = []
    for label, lo, hi in _iou_subsets():
        keys = [k for k, iou in ious.items() if lo <= iou < hi]
        row: dict[str, Any] = {"subset": label, "n": len(keys),
                               "mean_iou": float(np.mean([ious[k] for k in keys])) if keys else None}
        for arch, (det, gt) in per_arch.items():
            row[arch] = {
                "detector": float(np.mean([det[k]["dice_frame"] for k in keys])) if keys else None,
                "gt": float(np.mean([gt[k]["dice_frame"] for k in keys])) if keys else None,
            }
        rows.append(row)
    return {"threshold": IOU_THRESHOLD, "rows": rows}


def _empty_frames(layout: StudyLayout, mode: str, archs: Sequence[str],
                  conditions: Sequence[str]) -> dict[str, Any] | None:
    testset = _read(layout.testset_json(mode))
    if not testset["empty"]:
        return None
    out: dict[str, Any] = {"n_positive": len(testset["positive"]), "n_empty": len(testset["empty"])}
    for arch in archs:
        out[arch] = {}
        for cond in conditions:
            rows = _read(layout.segmenter_eval(mode, arch, cond))["images"]
            scored = [r for r in rows if r["emitted"] is not None]
            if len(scored) != len(rows):  # the ground-truth crop has no box on empty frames
                out[arch][cond] = None
                continue
            empties = [r for r in rows if not r["present"]]
            positives = [r for r in rows if r["present"]]
            out[arch][cond] = {
                "presence_accuracy": float(np.mean([r["emitted"] == r["present"] for r in rows])),
                "empty_correct": float(np.mean([not r["emitted"] for r in empties])),
                "positive_found": float(np.mean([r["emitted"] for r in positives])),
                "kaggle_mean_dice": float(np.mean([r["dice_kaggle"] for r in rows])),
            }
    return out


def _split_sizes(layout: StudyLayout, mode: str) -> dict[str, int]:
    split = _read(layout.split_json(mode))
    testset = _read(layout.testset_json(mode))
    return {"train": len(split["train"]), "val": len(split["val"]), "test": len(split["test"]),
            "test_empty": len(testset["empty"])}


def _trained_configs(layout: StudyLayout, modes: Sequence[str], gammas: Sequence[float],
                     archs: Sequence[str], conditions: Sequence[str]) -> dict[str, Any]:
    """The model configs the runs actually trained with (their RUN/config.json), per model kind;
    the detectors' focal-loss gamma is left out, as it is what varies. A kind whose runs differ
    in anything else lists every variant, so the report can say so."""
    runs: dict[str, list[Path]] = {"detector": [layout.detector_run(m, g) for m in modes
                                                for g in gammas]}
    for arch in archs:
        runs[arch] = [layout.segmenter_run(m, arch, c) for m in modes for c in conditions]
    out: dict[str, Any] = {}
    for kind, dirs in runs.items():
        variants: list[dict[str, Any]] = []
        for d in dirs:
            cfg = dict(_read(d / "config.json")["model"])
            if kind == "detector":
                cfg.pop("focal_gamma", None)
            if cfg not in variants:
                variants.append(cfg)
        out[kind] = variants
    return out


def build_summary(
    layout: StudyLayout,
    modes: Sequence[str],
    gammas: Sequence[float],
    archs: Sequence[str],
    conditions: Sequence[str],
    score_threshold: float,
    *,
    folds: Sequence[str] = (),
    pixel_spacing_mm: float | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Every table of the report; writes RUN/summary.json and returns it. ``folds``: the split
    names of a subject-wise K-fold run, pooled into ``crossval``
    (:mod:`bpedge.train.experiment.crossval`); ``None`` there without folds."""
    from bpedge.train.experiment.crossval import build_crossval

    crossval = build_crossval(
        layout, folds, archs, conditions, published_dice=published_json()["dice"],
        iou_threshold=IOU_THRESHOLD, pixel_spacing_mm=pixel_spacing_mm, seed=seed,
    ) if folds else None
    summary = {
        "schema": _SCHEMA,
        "modes": list(modes),
        "gammas": [float(g) for g in gammas],
        "archs": list(archs),
        "conditions": list(conditions),
        "score_threshold": score_threshold,
        "iou_threshold": IOU_THRESHOLD,
        "split_sizes": {m: _split_sizes(layout, m) for m in modes},
        "detection": {m: _detection(layout, m, gammas) for m in modes},
        "segmentation": {m: _segmentation(layout, m, archs, conditions) for m in modes},
        "dice_vs_iou": {m: _dice_vs_iou(layout, m, archs) for m in modes},
        "empty_frames": {m: _empty_frames(layout, m, archs, conditions) for m in modes},
        "trained_configs": _trained_configs(layout, modes, gammas, archs, conditions),
        "crossval": crossval,
        "published": published_json(),
    }
    write_json(layout.summary_json, summary)
    return summary
