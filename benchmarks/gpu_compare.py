"""TensorRT against ONNX Runtime on frames no model trained on, for ``gpu_check.sh``: per frame
Dice of the masks, score and box differences, for fp32 and fp16; CUDA graphs against direct
enqueues, a batch against single frames, and streaming against single frames (those three must be
identical, except fp16 batches, whose kernels may differ by batch size within one profile).

Usage: python benchmarks/gpu_compare.py BUNDLE FRAMES_DIR OUT.json

Needs an NVIDIA GPU with TensorRT and the bundle's engines for it (``bpedge build-engines``).
Writes OUT.json and exits 1 when a check fails (the JSON says which).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from bpedge import Segmenter
from bpedge._cascade_spec import CascadeSpec
from bpedge._gpu.cascade import TensorRTCascade
from bpedge._metrics import dice
from bpedge.bundle import Bundle

#: The masks of TensorRT and ONNX Runtime must overlap at least this much (fp32, fp16).
MIN_DICE = {"fp32": 0.99, "fp16": 0.98}
MAX_SCORE_DIFF = {"fp32": 1e-3, "fp16": 1e-2}
MAX_BOX_DIFF_PX = 1.0
MAX_BATCH = 4


def _frames(folder: Path, limit: int = 24) -> list[np.ndarray]:
    files = sorted(p for p in folder.rglob("*.tif") if not p.stem.endswith("_mask"))[:limit]
    frames = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in files]
    if not frames or any(f is None for f in frames):
        raise SystemExit(f"gpu_compare: no readable frames under {folder}")
    return frames


def _identical(a, b) -> bool:
    return bool(np.array_equal(a.mask, b.mask) and a.box == b.box and a.score == b.score)


def _against_onnxruntime(bundle: Bundle, frames: list[np.ndarray], precision: str) -> dict:
    spec = CascadeSpec.from_manifest(bundle.manifest)
    dices, score_diffs, box_diffs, present_mismatch = [], [], [], 0
    with Segmenter.from_bundle(bundle, backend="onnxruntime", precision=precision) as cpu, \
            TensorRTCascade(bundle, spec, precision, MAX_BATCH) as gpu:
        for grey in frames:
            want, got = cpu(grey), gpu.run(grey)
            score_diffs.append(abs(got.score - want.score))
            box_diffs.append(float(np.max(np.abs(np.subtract(got.box, want.box)))))
            if got.present != want.present and abs(want.score - spec.score_threshold) > 1e-2:
                present_mismatch += 1
            if got.present and want.present:
                dices.append(dice(got.mask, want.mask))
    result = {
        "frames": len(frames), "frames_with_bp_in_both": len(dices),
        "dice_min": min(dices) if dices else None,
        "dice_mean": float(np.mean(dices)) if dices else None,
        "score_max_abs_diff": max(score_diffs), "box_max_abs_diff_px": max(box_diffs),
        "present_mismatches": present_mismatch,
    }
    result["ok"] = bool(
        (not dices or min(dices) >= MIN_DICE[precision])
        and max(score_diffs) <= MAX_SCORE_DIFF[precision]
        and max(box_diffs) <= MAX_BOX_DIFF_PX and present_mismatch == 0)
    return result


def _consistency(bundle: Bundle, frames: list[np.ndarray], precision: str) -> dict:
    spec = CascadeSpec.from_manifest(bundle.manifest)
    with TensorRTCascade(bundle, spec, precision, MAX_BATCH, use_graphs=False) as direct, \
            TensorRTCascade(bundle, spec, precision, MAX_BATCH) as graphed:
        single = [direct.run(g) for g in frames]
        replayed = [graphed.run(g) for g in frames]
        graphs = graphed._slots[0].graphs.graphs()
        batched = graphed.run_batch(frames)
        start = time.perf_counter()
        streamed = list(graphed.stream(iter(frames), depth=3))
        stream_seconds = time.perf_counter() - start
    graphs_ok = all(_identical(a, b) for a, b in zip(single, replayed)) and graphs >= 1
    stream_ok = all(_identical(a, b) for a, b in zip(single, streamed))
    if precision == "fp32":
        batch_ok = all(_identical(a, b) for a, b in zip(single, batched))
    else:  # fp16 kernels may be chosen per batch size: compare like two backends
        batch_ok = all(abs(a.score - b.score) <= 1e-2 and (not (a.present and b.present)
                       or dice(a.mask, b.mask) >= MIN_DICE["fp16"]) for a, b in zip(single, batched))
    return {"graphs_equal_eager": graphs_ok, "graphs_captured": graphs,
            "batch_matches_single": batch_ok, "stream_matches_single": stream_ok,
            "stream_depth3_frames_per_second": len(frames) / stream_seconds,
            "ok": bool(graphs_ok and batch_ok and stream_ok)}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    bundle, frames_dir, out = Bundle.open(argv[0]), Path(argv[1]), Path(argv[2])
    frames = _frames(frames_dir)
    report: dict = {"bundle": str(bundle.root), "frames_dir": str(frames_dir)}
    for precision in ("fp32", "fp16"):
        report[precision] = {"vs_onnxruntime": _against_onnxruntime(bundle, frames, precision),
                             "consistency": _consistency(bundle, frames, precision)}
    report["ok"] = all(report[p][part]["ok"] for p in ("fp32", "fp16")
                       for part in ("vs_onnxruntime", "consistency"))
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
