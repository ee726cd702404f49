"""Datasets: the Kaggle ultrasound-nerve layout reader, splits, de-duplication and the phantom generator."""

from bpedge.train.data.dedup import DuplicateReport, drop_frames, find_contradictory_duplicates
from bpedge.train.data.kaggle import (
    DatasetError,
    DatasetIndex,
    Frame,
    Problem,
    read_image,
    read_mask,
    scan_dataset,
)
from bpedge.train.data.phantom import PhantomConfig, generate_phantom, render_subject
from bpedge.train.data.splits import (
    Split,
    kfold_groups,
    load_split,
    make_kfold_split,
    make_split,
    save_split,
)

__all__ = [
    "DatasetError",
    "DatasetIndex",
    "DuplicateReport",
    "Frame",
    "PhantomConfig",
    "Problem",
    "Split",
    "drop_frames",
    "find_contradictory_duplicates",
    "generate_phantom",
    "kfold_groups",
    "load_split",
    "make_kfold_split",
    "make_split",
    "read_image",
    "read_mask",
    "render_subject",
    "save_split",
    "scan_dataset",
]
