"""The validation data export checks and thresholds are measured on, and the model inputs made
from it.

Frames: the BP-positive frames of the validation split a checkpoint recorded, read from the data
folder (``--data``, else the folder recorded in the checkpoint's run config), after checking that
the folder's content fingerprint is the one the checkpoint was trained on. For the detector's
"no BP" threshold, frames without BP are added: the trainers never train on them (they keep
BP-positive frames only), so the empty frames of the validation subjects are held-out data. They
are sampled to the dataset's own ratio of empty to BP frames, as the K-fold study samples its
validation frames, so both choose the threshold on the same mix; the rule's balanced accuracy
weighs the two kinds equally whatever the mix, and the cost stays bounded on the full Kaggle set
(3,312 empty frames).

Inputs are made with the runtime's stage combinations (:mod:`bpedge._preprocessing`), the ones
training and ``bpedge.train.predict`` call: ``detector_input``, ``frame_box`` (a non-finite box is
the whole frame), ``crop_box`` with the segmenter's crop margin; segmenter crops and targets come
from the training dataset class :class:`bpedge.train.datasets.SegmenterDataset`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bpedge._preprocessing import (
    CROP_MODES,
    ModelInput,
    Normalization,
    crop_box,
    detector_input,
    frame_box,
)
from bpedge._stages import Box, scale_box

if TYPE_CHECKING:
    from bpedge.train.data import DatasetIndex, Frame
    from bpedge.train.datasets import FrameStore

__all__ = [
    "CROP_MODES",
    "DataCheck",
    "ValidationFrames",
    "check_data",
    "detector_inputs",
    "empty_frames_for_presence",
    "frame_boxes",
    "resolve_data_root",
    "segmenter_boxes",
    "segmenter_crops",
    "truth_boxes_input_px",
    "validation_frames",
]


@dataclass(frozen=True)
class DataCheck:
    """A scanned data folder and what its check against a checkpoint found."""

    root: Path
    index: DatasetIndex
    fingerprint_matches: bool

    def to_json(self) -> dict[str, Any]:
        return {"root": str(self.root), "fingerprint": self.index.fingerprint,
                "fingerprint_matches_checkpoint": self.fingerprint_matches}


@dataclass(frozen=True)
class ValidationFrames:
    """The frames one model is checked on: ``positives`` (with BP, from its validation split) and
    ``empties`` (without BP, for the presence threshold; empty for the segmenter)."""

    positives: tuple[Frame, ...]
    empties: tuple[Frame, ...]
    split_mode: str
    split_size: int

    @property
    def frames(self) -> tuple[Frame, ...]:
        return self.positives + self.empties

    def to_json(self) -> dict[str, Any]:
        return {
            "split": self.split_mode,
            "validation_frames_in_split": self.split_size,
            "frames_with_bp": len(self.positives),
            "frames_without_bp": len(self.empties),
        }


def resolve_data_root(payload: dict[str, Any], data: Path | None, label: str) -> Path:
    """``data`` if given, else the data folder recorded in the checkpoint's run config."""
    if data is not None:
        root = Path(data)
    else:
        recorded = (payload.get("config") or {}).get("data", {}).get("root")
        if not recorded:
            raise ValueError(f"the {label} checkpoint records no data folder: pass --data DIR "
                             "(the folder it was trained on)")
        root = Path(recorded)
        if not root.exists():
            raise FileNotFoundError(f"the {label} checkpoint was trained on {root}, which does not "
                                    "exist here: pass --data DIR")
    if not root.exists():
        raise FileNotFoundError(f"--data folder {root} does not exist")
    return root


def check_data(
    root: Path,
    payload: dict[str, Any],
    label: str,
    *,
    accept_other_data: bool,
    warn: Callable[[str], None],
    scanned: dict[tuple[Path, str], DatasetIndex] | None = None,
) -> DataCheck:
    """Scan ``root`` (as the checkpoint's run did: same ``on_error``) and compare its content
    fingerprint with the checkpoint's. A mismatch is a ``ValueError`` unless ``accept_other_data`` (then a
    warning). ``scanned`` caches scans across the two checkpoints."""
    from bpedge.train.data import scan_dataset

    on_error = (payload.get("config") or {}).get("data", {}).get("on_error", "fail")
    key = (root.resolve(), str(on_error))
    if scanned is not None and key in scanned:
        index = scanned[key]
    else:
        index = scan_dataset(root, on_error=on_error)
        if scanned is not None:
            scanned[key] = index
    expected = payload.get("data_fingerprint")
    matches = expected == index.fingerprint
    if not matches:
        message = (f"the data in {root} is not what the {label} was trained on (content "
                   f"fingerprint {index.fingerprint[:12]}..., the checkpoint recorded "
                   f"{str(expected)[:12]}...)")
        if not accept_other_data:
            raise ValueError(f"{message}: pass the training data folder with --data, or "
                             "--accept-other-data to export anyway (the parity and threshold "
                             "numbers then describe other data)")
        warn(f"warning: {message}; going on because of --accept-other-data")
    return DataCheck(root=root, index=index, fingerprint_matches=matches)


def _subset(frames: Sequence[Frame], n: int, seed: int) -> tuple[Frame, ...]:
    """A seeded random ``n`` of ``frames``, kept in their order."""
    if n >= len(frames):
        return tuple(frames)
    keep = np.sort(np.random.default_rng(seed).choice(len(frames), n, replace=False))
    return tuple(frames[i] for i in keep)


def validation_frames(
    check: DataCheck, payload: dict[str, Any], label: str, *, max_val: int | None,
    accept_other_data: bool,
    warn: Callable[[str], None],
) -> ValidationFrames:
    """The BP-positive frames of the checkpoint's validation split (a seeded random ``max_val``
    of them if that is fewer)."""
    split = payload.get("split") or {}
    keys = list(split.get("val") or [])
    if not keys:
        raise ValueError(f"the {label} checkpoint records no validation split, so export has "
                         "nothing to check it on; export a checkpoint written by `bpedge train`")
    by_key = {f.key: f for f in check.index.frames}
    missing = [k for k in keys if k not in by_key]
    if missing:
        message = (f"{len(missing)} of the {label}'s {len(keys)} validation frames are not in "
                   f"{check.root} (e.g. {missing[:3]})")
        if not accept_other_data or len(missing) == len(keys):
            raise ValueError(f"{message}: pass the training data folder with --data")
        warn(f"warning: {message}; checking on the other {len(keys) - len(missing)}")
    frames = [by_key[k] for k in keys if k in by_key]
    empty = [f.key for f in frames if not f.present]
    if empty:
        raise ValueError(f"validation frames {empty[:3]} of the {label} have empty masks in "
                         f"{check.root}, but the split holds BP-positive frames only: wrong --data?")
    seed = int(split.get("seed", 0))
    chosen = _subset(frames, max_val, seed) if max_val is not None else tuple(frames)
    return ValidationFrames(positives=chosen, empties=(), split_mode=str(split.get("mode", "?")),
                            split_size=len(keys))


def empty_frames_for_presence(
    check: DataCheck, payload: dict[str, Any], positives: Sequence[Frame], seed: int
) -> tuple[Frame, ...]:
    """Frames without BP for the presence threshold: those of the subjects of ``positives``
    (after the run's ``--dedup``, if it used it), a seeded sample at the dataset's ratio of empty
    to BP frames (at least one when any exists)."""
    frames: Sequence[Frame] = check.index.frames
    if (payload.get("config") or {}).get("data", {}).get("dedup"):
        from bpedge.train.data import drop_frames, find_contradictory_duplicates

        frames = drop_frames(frames, find_contradictory_duplicates(frames))
    n_pos = sum(1 for f in frames if f.present)
    n_empty = len(frames) - n_pos
    subjects = {f.subject for f in positives}
    candidates = [f for f in frames if not f.present and f.subject in subjects]
    if not candidates or not positives or n_pos == 0:
        return ()
    wanted = max(1, round(len(positives) * n_empty / n_pos))
    return _subset(candidates, wanted, seed)


def load_store(frames: Sequence[Frame]) -> FrameStore:
    """Decode ``frames`` once (images and masks) in their order."""
    from bpedge.train.datasets import FrameStore

    return FrameStore(frames, workers=2)


def detector_inputs(store: FrameStore, input_hw: Sequence[int], mean: float | None,
                    std: float | None) -> np.ndarray:
    """Every frame of ``store`` resized whole to ``input_hw`` and z-scored (``None``: with its own
    statistics): float32 (N, 1, H, W)."""
    spec = ModelInput((int(input_hw[0]), int(input_hw[1])), Normalization(mean, std))
    x = np.empty((len(store), 1, *spec.hw), np.float32)
    for i in range(len(store)):
        x[i] = detector_input(store.images[i], spec)
    return x


def truth_boxes_input_px(store: FrameStore, input_hw: Sequence[int]) -> np.ndarray:
    """Ground-truth boxes in detector-input pixels, float64 (N, 4); NaN rows for empty frames."""
    in_h, in_w = (int(v) for v in input_hw)
    out = np.full((len(store), 4), np.nan)
    for i, box in enumerate(store.boxes):
        if box is not None:
            h, w = store.hw(i)
            out[i] = scale_box(box, in_w / w, in_h / h)
    return out


def frame_boxes(raw_boxes: np.ndarray, store: FrameStore, input_hw: Sequence[int]) -> list[Box]:
    """Detector boxes (N, 4) in detector-input pixels -> frame pixels, clamped to each frame
    (``frame_box``: a non-finite box is the whole frame)."""
    spec = ModelInput((int(input_hw[0]), int(input_hw[1])), Normalization(None, None))
    return [frame_box(raw_boxes[i], store.hw(i), spec) for i in range(len(store))]


def segmenter_boxes(
    mode: str,
    store: FrameStore,
    detect: Callable[[np.ndarray], np.ndarray] | None = None,
    detector_input: Callable[[FrameStore], np.ndarray] | None = None,
    detector_input_hw: Sequence[int] | None = None,
    margin: float = 0.0,
) -> list[Box]:
    """The crop box of each frame of ``store`` (frame pixels) for a segmenter trained with crop
    ``mode`` and crop ``margin`` (``crop_box``): ``gt`` the ground-truth box, ``none`` the whole
    frame, ``detector`` the boxes ``detect(detector_input(store))`` returns (detector-input
    pixels, (N, 4))."""
    if mode not in CROP_MODES:
        raise ValueError(f"segmenter crop mode must be one of {CROP_MODES}, got {mode!r}")
    detected: list[Box | None] = [None] * len(store)
    if mode == "gt":
        missing = [store.keys[i] for i, b in enumerate(store.boxes) if b is None]
        if missing:
            raise ValueError(f"frames {missing[:3]} have no ground-truth box to crop at")
    if mode == "detector":
        if detect is None or detector_input is None or detector_input_hw is None:
            raise ValueError("crop mode 'detector' needs detect, detector_input and "
                             "detector_input_hw")
        detected = list(frame_boxes(detect(detector_input(store)), store, detector_input_hw))
    return [crop_box(mode, store.hw(i), margin, truth=store.boxes[i], detected=detected[i])
            for i in range(len(store))]


def segmenter_crops(
    store: FrameStore, boxes: Sequence[Box], crop_hw: Sequence[int], mean: float | None,
    std: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Crops and targets exactly as the segmenter's validation set makes them: float32
    (N, 1, h, w) z-scored crops and float32 (N, 1, h, w) 0/1 masks."""
    from bpedge.train.datasets import SegmenterDataset

    hw = (int(crop_hw[0]), int(crop_hw[1]))
    dataset = SegmenterDataset(store, list(range(len(store))), list(boxes), hw,
                               Normalization(mean=mean, std=std))
    x = np.empty((len(store), 1, *hw), np.float32)
    y = np.empty((len(store), 1, *hw), np.float32)
    for k in range(len(dataset)):
        crop, target = dataset[k]
        x[k], y[k] = crop.numpy(), target.numpy()
    return x, y
