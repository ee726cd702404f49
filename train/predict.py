"""Run a trained detector over frames: its top box per frame, in frame pixels, clamped to the frame.

Used by ``bpedge train segmenter --crop detector`` (boxes predicted once per run and cached) and
by the experiment runner. Preprocessing is the runtime's (:mod:`bpedge._preprocessing`):
``detector_input`` with the checkpoint's input size and normalisation, and ``frame_box`` for the
predicted box; a non-finite box is the whole frame with ``found=False``, which the callers treat
as "no BP", as the runtime marks it absent.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bpedge._preprocessing import box_found, detector_input, frame_box
from bpedge._stages import Box

if TYPE_CHECKING:
    import torch
    from bpedge.train.data import Frame
    from bpedge.train.models.retinanet import RetinaNetDetector
    from torch import nn

__all__ = ["BoxPrediction", "load_detector", "predict_boxes", "predict_decoys", "predict_frames"]


@dataclass(frozen=True)
class BoxPrediction:
    """The detector's top-1 answer for one frame: ``score`` in [0, 1] and ``box``
    ``(x0, y0, x1, y1)`` in frame pixels, clamped to the frame (at least 1 px per side).
    ``found`` is False when the model's box was not finite (``box`` is then the whole frame): the
    frame counts as "no BP" whatever the score."""

    score: float
    box: Box
    found: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"score": self.score, "box": list(self.box), "found": self.found}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BoxPrediction:
        box = tuple(float(v) for v in d["box"])
        if len(box) != 4:
            raise ValueError(f"a box needs 4 numbers, got {d['box']!r}")
        return cls(score=float(d["score"]), box=box,  # type: ignore[arg-type]
                   found=bool(d.get("found", True)))


def load_detector(
    checkpoint: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """``load_model`` for a detector checkpoint (a file or a run folder's best.pt); ValueError if
    the checkpoint holds a segmenter."""
    from bpedge.train.checkpoint import load_model, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    model, payload = load_model(path, device)
    if payload["kind"] != "detector":
        raise ValueError(f"{path} is a {payload['kind']} checkpoint; a detector is needed here")
    return model, payload


def predict_boxes(
    model: nn.Module,
    payload: dict[str, Any],
    images: Sequence[np.ndarray],
    *,
    batch_size: int = 16,
    progress: bool = False,
) -> list[BoxPrediction]:
    """Top box of each uint8 ``(H, W)`` frame in ``images`` (frames may differ in size).

    ``model`` in eval mode on its device, ``payload`` its checkpoint (for ``input_hw`` and
    ``normalization``). Returns one :class:`BoxPrediction` per frame, in order.
    """
    from bpedge.train.checkpoint import model_input
    from bpedge.train.inference import run_batches

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    for frame in images:
        if frame.ndim != 2:
            raise ValueError(f"frames must be 2-D uint8 (H, W), got shape {frame.shape}")
    spec = model_input(payload)
    chunks = [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
    batches = (np.stack([detector_input(f, spec) for f in chunk]) for chunk in chunks)
    model.eval()
    answers: Iterable[tuple[Sequence[np.ndarray], list[np.ndarray]]] = zip(
        chunks, run_batches(model, batches))
    if progress:
        from tqdm.auto import tqdm

        answers = tqdm(answers, total=len(chunks), desc="detecting", unit="batch")
    out: list[BoxPrediction] = []
    for chunk, (scores, boxes) in answers:
        for frame, score, box in zip(chunk, scores.tolist(), boxes.tolist()):
            out.append(BoxPrediction(score=float(score), box=frame_box(box, frame.shape, spec),
                                     found=box_found(box)))
    return out


def predict_decoys(
    model: nn.Module,
    payload: dict[str, Any],
    images: Sequence[np.ndarray],
    truths: Sequence[Box | None],
    *,
    max_iou: float = 0.1,
    candidates: int = 5,
    batch_size: int = 16,
) -> list[BoxPrediction | None]:
    """Per uint8 ``(H, W)`` frame, the detector's best box that misses the BP: the highest
    scoring of its top ``candidates`` boxes after non-maximum suppression whose IoU with the
    frame's ground-truth box ``truths[k]`` (frame pixels) is below ``max_iou``; on a frame
    without BP (``None``) its top box. ``None`` where no candidate misses the BP. Boxes in frame
    pixels, clamped, as :func:`predict_boxes` gives them."""
    import torch
    from bpedge.train.checkpoint import model_input

    from bpedge._metrics import box_iou

    if len(truths) != len(images):
        raise ValueError(f"one truth per frame: got {len(truths)} for {len(images)} frames")
    spec = model_input(payload)
    model.eval()
    out: list[BoxPrediction | None] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = torch.from_numpy(np.stack([detector_input(f, spec) for f in chunk]))
        with torch.inference_mode():
            found = cast("RetinaNetDetector", model).candidates(
                x.to(next(model.parameters()).device), candidates)
        for frame, truth, (scores, boxes) in zip(chunk, truths[start : start + batch_size], found):
            pick = None
            for score, box in zip(scores.tolist(), boxes.tolist()):
                framed = frame_box(box, frame.shape, spec)
                if truth is None or box_iou(framed, truth) < max_iou:
                    pick = BoxPrediction(score=float(score), box=framed, found=box_found(box))
                    break
            out.append(pick)
    return out


def predict_frames(
    checkpoint: str | os.PathLike[str] | Path,
    frames: Sequence[Frame],
    *,
    device: str = "cpu",
    batch_size: int = 16,
    progress: bool = False,
) -> dict[str, BoxPrediction]:
    """Load the detector in ``checkpoint`` and predict each frame (read from its ``image_path``).

    Returns ``{frame.key: BoxPrediction}``. Frames are read one batch at a time, so any number of
    frames fits in memory.
    """
    from bpedge.train.data import read_image
    from tqdm.auto import tqdm

    model, payload = load_detector(checkpoint, device)
    result: dict[str, BoxPrediction] = {}
    chunk = batch_size * 8
    with tqdm(total=len(frames), desc="detecting", unit="frame", disable=not progress) as bar:
        for start in range(0, len(frames), chunk):
            part = frames[start : start + chunk]
            images = [read_image(f.image_path) for f in part]
            for frame, pred in zip(part, predict_boxes(model, payload, images,
                                                       batch_size=batch_size)):
                result[frame.key] = pred
            bar.update(len(part))
    return result
