"""Tracking against per-frame detection, accuracy only: Dice of each frame's mask with its truth.

    python benchmarks/tracking_dice.py BUNDLE DATA [--detect-every N] [--first-check N] [--json OUT]

Each subject of DATA (a phantom or Kaggle-layout folder, ``<subject>_<frame>.tif``) is one sequence
in frame order; every frame runs through ``Segmenter`` twice, per frame and in a tracked stream
(``Segmenter.stream(track=...)``, default ``TrackOptions`` but for ``--detect-every`` and
``--first-check``; ``--first-check`` equal to ``--detect-every`` is the tracker as it was before
new tracks were checked sooner), ONNX Runtime FP32 (the masks do not depend on the runtime's
speed). Prints and writes the mean Dice on BP frames and on all frames (an empty mask on an empty
frame counts 1) for both, and the share of tracked frames on which the detector ran. Speed is
``bpedge bench --track``'s job; this measures no time.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path

import numpy as np
from bpedge.train.data import read_image, read_mask

from bpedge import Segmenter
from bpedge._tracking import TrackOptions


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _sequences(data: Path) -> dict[int, list[Path]]:
    subjects: dict[int, list[tuple[int, Path]]] = {}
    for path in data.glob("*_*.tif"):
        found = re.fullmatch(r"(\d+)_(\d+)\.tif", path.name)
        if found:
            subjects.setdefault(int(found[1]), []).append((int(found[2]), path))
    if not subjects:
        raise ValueError(f"no <subject>_<frame>.tif frames in {data}")
    return {s: [p for _, p in sorted(frames)] for s, frames in sorted(subjects.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("data", type=Path)
    parser.add_argument("--json", type=Path, help="write the numbers here (a new file)")
    parser.add_argument("--detect-every", type=int, default=TrackOptions().detect_every,
                        help="run the detector at least every N tracked frames")
    parser.add_argument("--first-check", type=int, default=TrackOptions().first_check,
                        help="frames after a new track starts before the detector checks it")
    args = parser.parse_args()
    options = TrackOptions(detect_every=args.detect_every, first_check=args.first_check)
    if args.json is not None and args.json.exists():
        raise FileExistsError(f"{args.json} exists; give a new path")
    per_frame, tracked, has_bp, detector_ran = [], [], [], 0
    with Segmenter.from_bundle(args.bundle, backend="onnxruntime") as seg:
        for paths in _sequences(args.data).values():
            frames = [read_image(p) for p in paths]
            truths = [read_mask(p.with_name(p.stem + "_mask.tif")) for p in paths]
            alone = [seg(f) for f in frames]
            along = list(seg.stream(frames, depth=1, track=options))
            for truth, a, b in zip(truths, alone, along):
                per_frame.append(_dice(a.mask, truth))
                tracked.append(_dice(b.mask, truth))
                has_bp.append(bool(truth.any()))
                detector_ran += "detector" in b.timings
    p, t, bp = np.array(per_frame), np.array(tracked), np.array(has_bp)
    record = {
        "bundle": str(args.bundle), "data": str(args.data),
        "track_options": dataclasses.asdict(options),
        "frames": int(p.size), "bp_frames": int(bp.sum()),
        "dice_bp_per_frame": float(p[bp].mean()), "dice_bp_tracked": float(t[bp].mean()),
        "dice_all_per_frame": float(p.mean()), "dice_all_tracked": float(t.mean()),
        "detector_share_tracked": detector_ran / p.size,
    }
    print(f"{args.data}: Dice on BP frames {record['dice_bp_per_frame']:.4f} per frame, "
          f"{record['dice_bp_tracked']:.4f} tracked "
          f"({record['dice_bp_tracked'] - record['dice_bp_per_frame']:+.4f}); all frames "
          f"{record['dice_all_per_frame']:.4f} -> {record['dice_all_tracked']:.4f} "
          f"({record['dice_all_tracked'] - record['dice_all_per_frame']:+.4f}); detector on "
          f"{record['detector_share_tracked']:.0%} of tracked frames")
    if args.json is not None:
        args.json.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
