"""Subject-wise K-fold results pooled over the folds: what holds on subjects no model trained on.

Every subject is tested in exactly one fold, so pooling the folds' per-image rows gives one result
per test frame of every subject. From them (RUN/summary.json ``crossval``):

- per subject: frames, detector mIoU, Dice per segmenter and condition;
- headline numbers (detector mIoU; Dice, HD95 and mean surface distance per segmenter and crop
  condition), each the mean over all test frames with a 95% bootstrap confidence interval over
  SUBJECTS (:func:`cluster_bootstrap`: subjects are resampled with replacement, and with them all
  their frames, because frames of one subject are not independent);
- paired comparisons of the three crop conditions on the same frames (mean difference, its
  subject-bootstrap CI, and in how many subjects the first condition wins);
- the paper's like-with-like subset: detector-crop Dice over test frames whose detector IoU is
  >= 0.7, beside the published value (the all-frames number stays the headline);
- "BP present": per fold a score threshold chosen on that fold's VALIDATION frames (BP-positive
  and empty frames of the validation subjects) by the rule ``bpedge export`` uses for the bundle
  (:func:`bpedge._presence.choose_presence_threshold`: balanced accuracy, the middle of the best
  run, a recorded default when a fold's validation has frames of one kind only), then sensitivity
  and specificity on the test frames with CIs; the same at the fixed threshold 0.5; and the
  detector score's calibration as P(BP present) on test frames: a reliability table (10 bins) and
  the expected calibration error (ECE);
- the crop margin swept at evaluation (:mod:`bpedge.train.experiment.margin_sweep`): pooled
  validation Dice per margin (what would choose it) and test Dice with CIs.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bpedge.train.experiment.layout import StudyLayout

from bpedge._presence import DEFAULT_PRESENCE_THRESHOLD, choose_presence_threshold

__all__ = [
    "BOOTSTRAP_SAMPLES",
    "build_crossval",
    "cluster_bootstrap",
    "expected_calibration_error",
    "reliability_table",
]

BOOTSTRAP_SAMPLES = 2000
PAIRS: tuple[tuple[str, str], ...] = (("detector", "none"), ("gt", "detector"), ("gt", "none"))
CALIBRATION_BINS = 10
FIXED_SCORE_THRESHOLD = 0.5


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _subject(key: str) -> str:
    return key.partition("_")[0]


def cluster_bootstrap(
    values: Sequence[float],
    groups: Sequence[str],
    *,
    statistic: Callable[[np.ndarray], float] = lambda v: float(np.mean(v)),
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """``{"value", "ci_low", "ci_high", "n", "groups"}``: ``statistic`` of ``values`` and its 95%
    percentile-bootstrap interval, resampling whole ``groups`` (subjects) with replacement.
    ``None`` bounds for fewer than 2 groups; all ``None`` for no values."""
    v = np.asarray(values, dtype=np.float64)
    g = np.asarray(groups)
    if v.shape != g.shape:
        raise ValueError(f"one group per value: got {v.shape} values and {g.shape} groups")
    if v.size == 0:
        return {"value": None, "ci_low": None, "ci_high": None, "n": 0, "groups": 0}
    names = sorted(set(g.tolist()))
    out = {"value": statistic(v), "n": int(v.size), "groups": len(names)}
    if len(names) < 2:
        return {**out, "ci_low": None, "ci_high": None}
    members = [v[g == name] for name in names]
    rng = np.random.default_rng(seed)
    stats = np.empty(samples)
    for b in range(samples):
        pick = rng.integers(0, len(names), len(names))
        stats[b] = statistic(np.concatenate([members[i] for i in pick]))
    low, high = np.percentile(stats, [2.5, 97.5])
    return {**out, "ci_low": float(low), "ci_high": float(high)}


def reliability_table(scores: Sequence[float], present: Sequence[bool],
                      bins: int = CALIBRATION_BINS) -> list[dict[str, Any]]:
    """Per equal-width score bin ``[lo, hi)`` (the last includes 1): frames, mean score
    (confidence) and share with BP (observed frequency)."""
    s = np.asarray(scores, dtype=np.float64)
    p = np.asarray(present, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, bins - 1)
    rows = []
    for b in range(bins):
        sel = idx == b
        rows.append({
            "low": float(edges[b]), "high": float(edges[b + 1]), "n": int(sel.sum()),
            "mean_score": float(s[sel].mean()) if sel.any() else None,
            "fraction_present": float(p[sel].mean()) if sel.any() else None,
        })
    return rows


def expected_calibration_error(scores: Sequence[float], present: Sequence[bool],
                               bins: int = CALIBRATION_BINS) -> float:
    """ECE: sum over score bins of (bin share of frames) x |share with BP - mean score|."""
    table = reliability_table(scores, present, bins)
    total = sum(r["n"] for r in table)
    if total == 0:
        raise ValueError("ECE needs at least one frame")
    return float(sum(r["n"] / total * abs(r["fraction_present"] - r["mean_score"])
                     for r in table if r["n"]))


def _summary_stat(values: list[float], subjects: list[str], seed: int) -> dict[str, Any]:
    return cluster_bootstrap(values, subjects, seed=seed)


def _sens_spec(scores: list[float], present: list[bool], subjects: list[str],
               thresholds: list[float], seed: int) -> dict[str, Any]:
    called = [s >= t for s, t in zip(scores, thresholds)]
    pos = [(c, subj) for c, p, subj in zip(called, present, subjects) if p]
    neg = [(not c, subj) for c, p, subj in zip(called, present, subjects) if not p]
    return {
        "sensitivity": cluster_bootstrap([float(c) for c, _ in pos], [s for _, s in pos],
                                         seed=seed),
        "specificity": cluster_bootstrap([float(c) for c, _ in neg], [s for _, s in neg],
                                         seed=seed),
    }


def _presence(layout: StudyLayout, folds: Sequence[str], chosen: dict[str, float],
              seed: int) -> dict[str, Any]:
    per_fold, scores, present, subjects, thresholds = [], [], [], [], []
    for name in folds:
        val = _read(layout.detector_val_eval(name, chosen[name]))["images"]
        val_present = np.array([r["present"] for r in val], dtype=bool)
        choice = choose_presence_threshold(
            np.array([r["score"] for r in val], dtype=np.float64), val_present)
        threshold = choice.value
        per_fold.append({"split": name, "threshold": threshold, "method": choice.method,
                         "val_balanced_accuracy": choice.balanced_accuracy,
                         "val_sensitivity": choice.sensitivity,
                         "val_specificity": choice.specificity,
                         "val_nonfinite_scores": choice.how["nonfinite_scores"],
                         "val_frames_with_bp": int(val_present.sum()),
                         "val_frames_without_bp": int((~val_present).sum())})
        for r in _read(layout.detector_eval(name, chosen[name]))["images"]:
            scores.append(float(r["score"]))
            present.append(bool(r["present"]))
            subjects.append(_subject(r["key"]))
            thresholds.append(threshold)
    return {
        "rule": "per fold, the score threshold maximising balanced accuracy ((sensitivity + "
                "specificity) / 2) on that fold's validation frames, BP-positive and empty, "
                "over 0.01-0.99 in 0.01 steps; ties: the middle of the longest best run; a fold "
                "whose validation has frames of one kind only keeps the default "
                f"{DEFAULT_PRESENCE_THRESHOLD:g} (its method says so). The same rule as the "
                "bundle's threshold in `bpedge export`. Target: sensitivity and specificity "
                ">= 0.90",
        "folds": per_fold,
        "test_frames_with_bp": int(sum(present)),
        "test_frames_without_bp": int(len(present) - sum(present)),
        "chosen": _sens_spec(scores, present, subjects, thresholds, seed),
        "fixed": {"threshold": FIXED_SCORE_THRESHOLD,
                  **_sens_spec(scores, present, subjects, [FIXED_SCORE_THRESHOLD] * len(scores),
                               seed)},
        "reliability": reliability_table(scores, present),
        "ece": expected_calibration_error(scores, present) if scores else None,
    }


def build_crossval(
    layout: StudyLayout,
    folds: Sequence[str],
    archs: Sequence[str],
    conditions: Sequence[str],
    *,
    published_dice: dict[str, dict[str, float]],
    iou_threshold: float,
    pixel_spacing_mm: float | None,
    seed: int = 0,
) -> dict[str, Any]:
    """The pooled K-fold tables (see the module docstring) from the folds' evaluation files."""
    chosen = {n: float(_read(layout.gamma_choice(n))["chosen_gamma"]) for n in folds}
    # Detector: every BP-positive test frame of every fold, with the fold's chosen gamma.
    det_rows = [dict(r, fold=n) for n in folds
                for r in _read(layout.detector_eval(n, chosen[n]))["images"] if r["present"]]
    det_subjects = [_subject(r["key"]) for r in det_rows]
    out: dict[str, Any] = {
        "folds": list(folds),
        "chosen_gamma": chosen,
        "bootstrap": {"samples": BOOTSTRAP_SAMPLES, "seed": seed, "level": 0.95,
                      "unit": "subject"},
        "pixel_spacing_mm": pixel_spacing_mm,
        "detector_miou": _summary_stat([float(r["iou"]) for r in det_rows], det_subjects, seed),
    }
    evals: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for arch in archs:
        for cond in conditions:
            evals[(arch, cond)] = {r["key"]: r for n in folds
                                   for r in _read(layout.segmenter_eval(n, arch, cond))["images"]
                                   if r["present"]}
    keys = sorted(evals[(archs[0], conditions[0])])
    subjects = [_subject(k) for k in keys]
    segmentation: dict[str, Any] = {}
    for arch in archs:
        segmentation[arch] = {}
        for cond in conditions:
            rows = [evals[(arch, cond)][k] for k in keys]
            entry: dict[str, Any] = {
                "dice": _summary_stat([r["dice_frame"] for r in rows], subjects, seed)}
            for metric in ("hd95", "msd"):
                have = [(r[metric], s) for r, s in zip(rows, subjects) if r.get(metric) is not None]
                entry[metric] = _summary_stat([v for v, _ in have], [s for _, s in have], seed)
                entry[f"{metric}_undefined"] = len(rows) - len(have)
                if pixel_spacing_mm is not None:
                    entry[f"{metric}_mm"] = _summary_stat(
                        [v * pixel_spacing_mm for v, _ in have], [s for _, s in have], seed)
            segmentation[arch][cond] = entry
    out["segmentation"] = segmentation
    paired: dict[str, Any] = {}
    for arch in archs:
        paired[arch] = []
        for a, b in PAIRS:
            if a not in conditions or b not in conditions:
                continue
            diff = [evals[(arch, a)][k]["dice_frame"] - evals[(arch, b)][k]["dice_frame"]
                    for k in keys]
            by_subject: dict[str, list[float]] = {}
            for d, s in zip(diff, subjects):
                by_subject.setdefault(s, []).append(d)
            paired[arch].append({
                "a": a, "b": b, "difference": _summary_stat(diff, subjects, seed),
                "subjects_a_better": int(sum(float(np.mean(v)) > 0
                                             for v in by_subject.values())),
                "subjects": len(by_subject),
            })
    out["paired"] = paired
    iou = {k: evals[(archs[0], "detector")][k]["detector_iou"] for k in keys} \
        if "detector" in conditions else {}
    like: dict[str, Any] = {"threshold": iou_threshold}
    if iou:
        high = [k for k in keys if iou[k] is not None and iou[k] >= iou_threshold]
        like["n"], like["n_all"] = len(high), len(keys)
        for arch in archs:
            like[arch] = {
                "detector_subset": _summary_stat(
                    [evals[(arch, "detector")][k]["dice_frame"] for k in high],
                    [_subject(k) for k in high], seed),
                "gt_subset": _summary_stat([evals[(arch, "gt")][k]["dice_frame"] for k in high],
                                           [_subject(k) for k in high], seed)
                if "gt" in conditions else None,
                "published": published_dice.get(arch, {}).get("detector"),
            }
    out["like_with_like"] = like
    per_subject = []
    for s in sorted(set(subjects), key=lambda x: (len(x), x)):
        ks = [k for k in keys if _subject(k) == s]
        det = [float(r["iou"]) for r in det_rows if _subject(r["key"]) == s]
        fold = next(r["fold"] for r in det_rows if _subject(r["key"]) == s)
        per_subject.append({
            "subject": s, "fold": fold, "frames": len(ks),
            "detector_miou": float(np.mean(det)),
            "dice": {arch: {cond: float(np.mean([evals[(arch, cond)][k]["dice_frame"]
                                                 for k in ks])) for cond in conditions}
                     for arch in archs},
        })
    # A subject without any BP frame is in no fold (see the data step), so nothing of it is
    # tested; it is listed so that the table accounts for every subject of the data.
    no_bp = [str(s) for s in _read(layout.data_json).get("subjects_without_bp", [])]
    out["subjects_without_bp"] = no_bp
    per_subject += [{"subject": s, "fold": None, "frames": 0, "detector_miou": None,
                     "dice": {arch: dict.fromkeys(conditions) for arch in archs}}
                    for s in no_bp]
    per_subject.sort(key=lambda r: (len(r["subject"]), r["subject"]))
    out["per_subject"] = per_subject
    out["presence"] = _presence(layout, folds, chosen, seed)
    out["margin_sweep"] = {arch: _margin_sweep(layout, folds, arch, seed) for arch in archs
                           if all(layout.margin_sweep(n, arch).is_file() for n in folds)}
    return out


def _margin_sweep(layout: StudyLayout, folds: Sequence[str], arch: str,
                  seed: int) -> dict[str, Any]:
    """Pooled detector-crop Dice per margin: validation mean (chooses) and test with its CI."""
    sweeps = [_read(layout.margin_sweep(n, arch)) for n in folds]
    margins = [f"{m:g}" for m in sweeps[0]["margins"]]
    rows: list[dict[str, Any]] = []
    for m in margins:
        val = [d for sw in sweeps for d in sw["val"]["dice"][m]]
        test = [d for sw in sweeps for d in sw["test"]["dice"][m]]
        subjects = [_subject(k) for sw in sweeps for k in sw["test"]["keys"]]
        rows.append({"margin": float(m), "val_dice": float(np.mean(val)) if val else None,
                     "test_dice": _summary_stat(test, subjects, seed)})
    best = max(rows, key=lambda r: -1.0 if r["val_dice"] is None else float(r["val_dice"]))
    return {"trained_margin": sweeps[0]["trained_margin"], "rows": rows,
            "chosen_on_validation": best["margin"]}
