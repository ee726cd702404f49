"""Would another threshold rule meet both presence targets? (What
benchmarks/results/study-tiny-phantom/README.md quotes.)

    python benchmarks/presence_rules.py STUDY_DIR [STUDY_DIR ...]

For each fold of a ``bpedge experiment --folds K --gammas 2`` study, reads the detector scores the
study already wrote (``eval/detector_gamma_2_val.json`` for validation, ``detector_gamma_2.json``
for test; BP and empty frames), chooses a threshold on the fold's validation frames by each rule
below over the shipped grid (``bpedge._presence.PRESENCE_GRID``) and applies it to the fold's test
frames. Prints test sensitivity / specificity pooled over the folds, and the pooled AUROC of the
score (BP against empty test frames), which bounds what any threshold can reach. Reads the study;
writes nothing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from detector_ablation import auroc

from bpedge._presence import PRESENCE_GRID, _rates, choose_presence_threshold

Scores = tuple[np.ndarray, np.ndarray]  # BP frames', empty frames'
GRID = np.asarray(PRESENCE_GRID)


def _flat(val: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Scores and truth (BP present) in one array each."""
    return np.concatenate(val), np.r_[np.ones(len(val[0]), bool), np.zeros(len(val[1]), bool)]


def _grid_rates(val: Scores) -> tuple[np.ndarray, np.ndarray]:
    """Sensitivity and specificity of ``score >= t`` for every grid ``t`` (the shipped rule's
    own computation)."""
    return _rates(*_flat(val), GRID)


def _highest_with_sensitivity(level: float) -> Callable[[Scores], float]:
    def rule(val: Scores) -> float:
        ok = np.flatnonzero(_grid_rates(val)[0] >= level)
        return float(GRID[ok.max()]) if ok.size else float(GRID[0])
    return rule


def _lowest_with_specificity(level: float) -> Callable[[Scores], float]:
    def rule(val: Scores) -> float:
        ok = np.flatnonzero(_grid_rates(val)[1] >= level)
        return float(GRID[ok.min()]) if ok.size else float(GRID[-1])
    return rule


def _balanced(val: Scores) -> float:
    return choose_presence_threshold(*_flat(val)).value


RULES: dict[str, Callable[[Scores], float]] = {
    "balanced accuracy (the shipped rule)": _balanced,
    "highest with validation sensitivity >= 0.90": _highest_with_sensitivity(0.90),
    "highest with validation sensitivity >= 0.95": _highest_with_sensitivity(0.95),
    "lowest with validation specificity >= 0.90": _lowest_with_specificity(0.90),
}


def _scores(path: Path) -> Scores:
    images = json.loads(path.read_text())["images"]
    bp = np.array([im["score"] for im in images if im["present"]], np.float64)
    empty = np.array([im["score"] for im in images if not im["present"]], np.float64)
    return bp, empty


def main(studies: list[Path]) -> None:
    for study in studies:
        folds = sorted(p for p in study.glob("subject-fold*") if p.is_dir())
        if not folds:
            raise SystemExit(f"{study}: no subject-fold* folders (run bpedge experiment --folds)")
        calls: dict[str, tuple[list[bool], list[bool]]] = {name: ([], []) for name in RULES}
        bp_all: list[float] = []
        empty_all: list[float] = []
        for fold in folds:
            val = _scores(fold / "eval/detector_gamma_2_val.json")
            test_bp, test_empty = _scores(fold / "eval/detector_gamma_2.json")
            bp_all += test_bp.tolist()
            empty_all += test_empty.tolist()
            for name, rule in RULES.items():
                t = rule(val)
                calls[name][0].extend((test_bp >= t).tolist())
                calls[name][1].extend((test_empty < t).tolist())
        print(f"{study}: {len(folds)} folds, {len(bp_all)} BP / {len(empty_all)} empty test "
              f"frames; score AUROC {auroc(bp_all, empty_all):.3f}")
        # Not a rule (it looks at the test frames): the best any one pooled threshold could do.
        sens, spec = _grid_rates((np.array(bp_all), np.array(empty_all)))
        k = int(np.argmax(np.minimum(sens, spec)))
        print(f"  (upper bound: the grid threshold best for min(sensitivity, specificity) on the "
              f"test frames themselves, {GRID[k]:.2f}: {sens[k]:.3f} / {spec[k]:.3f})")
        for name, (hit, rejected) in calls.items():
            print(f"  {name}: sensitivity {np.mean(hit):.3f}, specificity {np.mean(rejected):.3f}")


if __name__ == "__main__":
    main([Path(a) for a in sys.argv[1:]])
