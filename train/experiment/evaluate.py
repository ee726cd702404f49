"""Per-test-image metrics of the study's models, written as JSON beside the runs.

The test set of a split mode (:func:`build_testset`) is the split's BP-positive test frames plus,
when the data holds empty frames, empty frames the models never trained on (the segmenters use
BP-positive frames only; the detector also the empty frames of subjects wholly in train): in a
``subject`` split, empty frames of the test subjects; in a ``random`` split, any but those of
subjects wholly in train. Their number keeps the data's ratio of empty to BP-positive frames; they
are drawn with the study seed.

Detector (:func:`evaluate_detector`): the top box of each test frame and, on BP-positive frames,
its IoU with the ground-truth box (the paper's mIoU is the mean over those).

Segmenter (:func:`evaluate_segmenter`), for the crop box of its condition (whole frame, the
chosen detector's box, or the ground-truth box):

- ``dice_frame``: the method's Dice, on the full frame: the 96x96 probability pasted back through
  the box (``paste_back``, threshold 0.5) against the full-resolution mask, so the three
  conditions are scored on the same pixels;
- ``dice_crop``: the Dice of the 96x96 prediction inside the box against the mask resampled into
  the box (what training validates on; a box that misses the BP scores 0);
- ``hd95`` and ``msd``: HD95 and mean surface distance of the full-frame mask, in pixels
  (:mod:`bpedge.train.experiment.boundary`; ``None`` when the prediction is empty);
- on every frame, BP-positive or empty, Kaggle's view: the mask the cascade would emit (for the
  detector condition nothing when the detector score is below ``score_threshold``), whether it is
  non-empty, and its Dice with empty-vs-empty = 1.

Crop boxes, crops and targets are the runtime's (:mod:`bpedge._preprocessing`: ``crop_box``
with the segmenter's crop margin, ``segmenter_input``, ``segmenter_target``); paste-back is
:mod:`bpedge._stages`; all metrics are :mod:`bpedge._metrics`. A detector box that was not
finite (``found`` false) counts as "no BP", as the runtime marks it absent.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bpedge.train.experiment._files import save_with, write_json
from bpedge.train.experiment.boundary import surface_metrics

from bpedge._metrics import box_iou, dice
from bpedge._preprocessing import crop_box, segmenter_input, segmenter_target
from bpedge._stages import paste_back

__all__ = [
    "MASK_THRESHOLD",
    "build_testset",
    "evaluate_detector",
    "evaluate_segmenter",
    "load_figure_masks",
]

#: Probability at or above which a pixel is BP (as in training validation and the runtime).
MASK_THRESHOLD = 0.5
_SCHEMA_TESTSET = "bpedge.study-testset/1"


def build_testset(
    split: Any,
    frames: Sequence[Any],
    mode: str,
    seed: int,
    figure_images: int,
) -> dict[str, Any]:
    """The test frames of a split mode as JSON: ``positive`` (the split's test keys, in order)
    and ``empty`` frames (see the module docstring), each ``{key, image, mask, box}`` with
    absolute paths and the ground-truth box (``None`` for empty frames); ``figure_keys`` are
    ``figure_images`` BP-positive test keys evenly spaced along the split's order (Fig. 6).

    ``split`` is a :class:`bpedge.train.data.Split`; ``frames`` every usable frame of the data
    (after ``--dedup``), positive and empty.
    """
    by_key = {f.key: f for f in frames}
    missing = [k for k in split.test if k not in by_key]
    if missing:
        raise ValueError(f"test frames {missing[:5]} of the split are not in the data")
    positives = [f for f in frames if f.present]
    empties = [f for f in frames if not f.present]
    test_subjects = {by_key[k].subject for k in split.test}
    # The detector trains on the empty frames of train-only subjects (a random split has them
    # too when every BP frame of a subject landed in train): never test on those.
    def subjects_of(keys: Sequence[str]) -> set[int]:
        return {by_key[k].subject for k in keys if k in by_key}

    train_only = subjects_of(split.train) - subjects_of((*split.val, *split.test))
    pool = [f for f in empties if f.subject in test_subjects
            or (mode == "random" and f.subject not in train_only)]
    want = round(len(split.test) * len(empties) / max(len(positives), 1))
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(pool), min(want, len(pool)), replace=False).tolist())
    test_empty = [pool[i] for i in chosen]
    n = len(split.test)
    k = min(figure_images, n)
    figure_keys = [split.test[(i * n) // k] for i in range(k)] if k else []
    return {
        "schema": _SCHEMA_TESTSET,
        "mode": mode,
        "seed": seed,
        "positive": [_frame_json(by_key[key]) for key in split.test],
        "empty": [_frame_json(f) for f in test_empty],
        "figure_keys": figure_keys,
    }


def _frame_json(frame: Any) -> dict[str, Any]:
    return {
        "key": frame.key,
        "image": str(Path(frame.image_path).resolve()),
        "mask": str(Path(frame.mask_path).resolve()),
        "box": list(frame.box) if frame.box is not None else None,
    }


def _test_frames(testset: dict[str, Any]) -> list[dict[str, Any]]:
    return list(testset["positive"]) + list(testset["empty"])


def evaluate_detector(
    checkpoint: Path, testset: dict[str, Any], out_json: Path, *, device: str = "cpu",
    progress: bool = False,
) -> dict[str, Any]:
    """Top box, score and (BP-positive frames) IoU with the ground-truth box for every test frame
    of ``testset``; writes and returns ``{"miou", "n", "images": [...]}``. Boxes in frame pixels."""
    from bpedge.train.data import read_image
    from bpedge.train.predict import load_detector, predict_boxes

    model, payload = load_detector(checkpoint, device)
    frames = _test_frames(testset)
    images = [read_image(Path(f["image"])) for f in frames]
    preds = predict_boxes(model, payload, images, progress=progress)
    rows = []
    for f, pred in zip(frames, preds):
        gt = f["box"]
        rows.append({
            "key": f["key"],
            "present": gt is not None,
            "score": pred.score,
            "found": pred.found,
            "box": list(pred.box),
            "gt_box": gt,
            "iou": box_iou(pred.box, gt) if gt is not None else None,
        })
    ious = [r["iou"] for r in rows if r["iou"] is not None]
    result = {
        "checkpoint": str(checkpoint),
        "best_epoch": int(payload["epoch"]),
        "miou": float(np.mean(ious)) if ious else None,
        "n": len(ious),
        "images": rows,
    }
    write_json(out_json, result)
    return result


def _condition_boxes(
    condition: str, frames: list[dict[str, Any]], hw: list[tuple[int, int]],
    detections: dict[str, dict[str, Any]] | None, margin: float,
) -> list[tuple[float, float, float, float] | None]:
    """Crop box per frame for a condition (``crop_box`` with the segmenter's ``margin``); ``None``
    where the condition has no box (the ground-truth crop of an empty frame)."""
    if condition not in ("none", "gt", "detector"):
        raise ValueError(f"condition must be 'none', 'gt' or 'detector', got {condition!r}")
    boxes: list[tuple[float, float, float, float] | None] = []
    for f, hw_f in zip(frames, hw):
        detected = None
        if condition == "gt" and f["box"] is None:
            boxes.append(None)
            continue
        if condition == "detector":
            if detections is None or f["key"] not in detections:
                raise ValueError(f"no detector box for test frame {f['key']}")
            detected = detections[f["key"]]["box"]
        boxes.append(crop_box(condition, hw_f, margin, truth=f["box"], detected=detected))
    return boxes


def _predict_crops(model: Any, payload: dict[str, Any], images: list[np.ndarray],
                   boxes: list[Any], batch_size: int = 32) -> list[np.ndarray | None]:
    """Probability map ``(crop_h, crop_w)`` float32 per frame (``None`` where the box is None)."""
    from bpedge.train.checkpoint import model_input
    from bpedge.train.inference import run_batches

    spec = model_input(payload)
    todo = [i for i, b in enumerate(boxes) if b is not None]
    out: list[np.ndarray | None] = [None] * len(boxes)
    groups = [todo[start : start + batch_size] for start in range(0, len(todo), batch_size)]
    batches = (np.stack([segmenter_input(images[i], boxes[i], spec) for i in idx])
               for idx in groups)
    model.eval()
    for idx, (prob,) in zip(groups, run_batches(model, batches)):
        for i, p in zip(idx, prob[:, 0]):
            out[i] = p
    return out


def evaluate_segmenter(
    checkpoint: Path,
    condition: str,
    testset: dict[str, Any],
    out_json: Path,
    masks_npz: Path,
    *,
    detector_eval: dict[str, Any] | None,
    score_threshold: float,
    device: str = "cpu",
) -> dict[str, Any]:
    """Per-image metrics of one segmenter under ``condition`` (see the module docstring); writes
    ``out_json`` and the full-frame masks of ``testset["figure_keys"]`` to ``masks_npz``.

    ``detector_eval`` is the chosen detector's :func:`evaluate_detector` result: the boxes of the
    ``detector`` condition, and every image's detector IoU (kept for the Dice-vs-IoU analysis).
    """
    from bpedge.train.checkpoint import crop_margin, load_model, model_input
    from bpedge.train.data import read_image, read_mask

    if condition == "detector" and detector_eval is None:
        raise ValueError("the detector condition needs the chosen detector's evaluation")
    model, payload = load_model(checkpoint, device)
    if payload["kind"] != "segmenter":
        raise ValueError(f"{checkpoint} holds a {payload['kind']}, not a segmenter")
    frames = _test_frames(testset)
    images = [read_image(Path(f["image"])) for f in frames]
    truths = [read_mask(Path(f["mask"])) for f in frames]
    hw = [(int(im.shape[0]), int(im.shape[1])) for im in images]
    detections = {r["key"]: r for r in detector_eval["images"]} if detector_eval else None
    boxes = _condition_boxes(condition, frames, hw, detections, crop_margin(payload))
    probs = _predict_crops(model, payload, images, boxes)
    crop_hw = model_input(payload).hw

    rows, figure_masks = [], {}
    for f, truth, (h, w), box, prob in zip(frames, truths, hw, boxes, probs):
        present = f["box"] is not None
        row: dict[str, Any] = {"key": f["key"], "present": present,
                               "box": list(box) if box is not None else None}
        det = detections.get(f["key"]) if detections else None
        row["detector_iou"] = det["iou"] if det else None
        if box is None or prob is None:  # ground-truth crop of an empty frame: no box to crop
            row.update(dice_frame=None, dice_crop=None, emitted=None, dice_kaggle=None,
                       hd95=None, msd=None)
            rows.append(row)
            continue
        mask = paste_back(prob, box, w, h, MASK_THRESHOLD)
        if present:
            truth_crop = segmenter_target(truth, box, crop_hw)[0] > 0.5
            row["dice_frame"] = dice(mask, truth)
            row["hd95"], row["msd"] = surface_metrics(mask, truth)
            # A box that misses the BP leaves nothing to find inside it: 0, not "empty vs empty".
            row["dice_crop"] = dice(prob >= MASK_THRESHOLD, truth_crop, empty=0.0)
        else:
            row["dice_frame"], row["dice_crop"] = None, None
            row["hd95"], row["msd"] = None, None
        # What the cascade would emit: nothing when the detector says the BP is absent.
        gated = det is None or condition != "detector" or (
            det.get("found", True) and det["score"] >= score_threshold)
        emitted = mask if gated else np.zeros_like(mask)
        row["emitted"] = bool(emitted.any())
        row["dice_kaggle"] = dice(emitted, truth, empty=1.0)
        rows.append(row)
        if f["key"] in testset["figure_keys"]:
            figure_masks[f["key"]] = mask
    _save_masks(masks_npz, figure_masks)
    result = {
        "checkpoint": str(checkpoint),
        "condition": condition,
        "arch": payload["arch"],
        "best_epoch": int(payload["epoch"]),
        "mask_threshold": MASK_THRESHOLD,
        "score_threshold": score_threshold,
        "images": rows,
    }
    write_json(out_json, result)
    return result


def _save_masks(path: Path, masks: dict[str, np.ndarray]) -> None:
    keys = sorted(masks)
    shapes = np.array([masks[k].shape for k in keys], dtype=np.int64).reshape(-1, 2)
    arrays: dict[str, Any] = {"keys": np.array(keys, dtype=str), "shapes": shapes}
    arrays.update({f"m{i}": np.packbits(masks[k].ravel() != 0) for i, k in enumerate(keys)})
    save_with(path, lambda fh: np.savez_compressed(fh, **arrays))


def load_figure_masks(path: Path) -> dict[str, np.ndarray]:
    """``{key: bool (H, W)}`` full-frame masks written by :func:`evaluate_segmenter`."""
    with np.load(path) as z:
        keys = [str(k) for k in z["keys"]]
        shapes = z["shapes"]
        return {
            k: np.unpackbits(z[f"m{i}"], count=int(shapes[i][0] * shapes[i][1]))
            .reshape(int(shapes[i][0]), int(shapes[i][1])).astype(bool)
            for i, k in enumerate(keys)
        }
