"""What one study runs: the ``bpedge experiment`` options, checked where they enter.

Epoch counts come from the preset; ``epochs_scale`` multiplies every model's preset epochs
(rounded, at least 1) and ``detector_epochs`` / ``segmenter_epochs`` set them outright (they win
over the scale for their models). Presets themselves are never edited: the resolved epochs are
written into RUN/study.json and shown in the report.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bpedge.train.presets import Preset, get_preset

__all__ = [
    "ARCHS",
    "CONDITIONS",
    "PAPER_GAMMAS",
    "SPLIT_CHOICES",
    "ExperimentOptions",
    "fold_name",
    "parse_float_list",
    "parse_name_list",
    "split_of",
]

#: The focal-loss gammas of the published detection study (its Table 2).
PAPER_GAMMAS: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
ARCHS: tuple[str, ...] = ("unet", "mnet")
#: Segmentation conditions, in the order the paper's Table 3 lists them.
CONDITIONS: tuple[str, ...] = ("none", "detector", "gt")
SPLIT_CHOICES: tuple[str, ...] = ("random", "subject", "both")
_ON_ERROR = ("skip", "fail")
_DEVICES = ("cpu", "cuda")


#: Largest --epochs-scale: 100x the preset's epochs is already far past any study here.
MAX_EPOCHS_SCALE = 100.0

@dataclass(frozen=True)
class ExperimentOptions:
    """One study. ``split`` is ``random``, ``subject`` or ``both``; ``gammas`` and ``archs`` are
    non-empty without repeats; ``score_threshold`` in [0, 1] is the detector score at or above
    which a frame counts as holding the BP (used only for the Kaggle-style figures on empty
    frames); ``figure_images`` is the number of test images in the Fig. 6 grid."""

    data: Path
    out: Path
    preset: str = "tiny"
    gammas: tuple[float, ...] = PAPER_GAMMAS
    split: str = "subject"
    archs: tuple[str, ...] = ARCHS
    device: str = "cpu"
    seed: int = 0
    epochs_scale: float | None = None
    detector_epochs: int | None = None
    segmenter_epochs: int | None = None
    limit: int | None = None
    on_error: str = "fail"
    dedup: bool = False
    score_threshold: float = 0.5
    figure_images: int = 4
    progress: bool = True
    #: Subject-wise K-fold cross-validation of the subject split (None: one subject split).
    folds: int | None = None
    #: Local state_dict for the detector's backbone (or the whole detector); never downloaded.
    backbone_weights: Path | None = None
    #: Size of a pixel in millimetres, when known: boundary distances are also given in mm.
    pixel_spacing_mm: float | None = None

    def check(self) -> None:
        """ValueError naming the option and what it accepts for anything out of range."""
        get_preset(self.preset)  # ValueError listing the presets
        if not self.gammas:
            raise ValueError("--gammas needs at least one value, e.g. --gammas 1,2,3,5")
        if len(set(self.gammas)) != len(self.gammas):
            raise ValueError(f"--gammas repeats a value: {list(self.gammas)}")
        if not all(math.isfinite(g) and g >= 0 for g in self.gammas):
            raise ValueError(f"--gammas must be finite and >= 0, got {list(self.gammas)}")
        if self.split not in SPLIT_CHOICES:
            raise ValueError(f"--split must be one of {SPLIT_CHOICES}, got {self.split!r}")
        if not self.archs or any(a not in ARCHS for a in self.archs):
            raise ValueError(f"--archs must be a comma list of {ARCHS}, got {list(self.archs)}")
        if len(set(self.archs)) != len(self.archs):
            raise ValueError(f"--archs repeats a name: {list(self.archs)}")
        if self.device not in _DEVICES and not self.device.startswith("cuda:"):
            raise ValueError(f"--device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.epochs_scale is not None and not 0 < self.epochs_scale <= MAX_EPOCHS_SCALE:
            # inf failed after the folder was made; 1e300 began "epoch 1/2000...0"
            raise ValueError(f"--epochs-scale must be in (0, {MAX_EPOCHS_SCALE:g}], got "
                             f"{self.epochs_scale}")
        for name in ("detector_epochs", "segmenter_epochs", "limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.on_error not in _ON_ERROR:
            raise ValueError(f"--on-error must be one of {_ON_ERROR}, got {self.on_error!r}")
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"--score-threshold must be in [0, 1], got {self.score_threshold}")
        if self.figure_images < 1:
            raise ValueError(f"--figure-images must be at least 1, got {self.figure_images}")
        if self.folds is not None:
            if self.folds < 2:
                raise ValueError(f"--folds must be at least 2, got {self.folds}")
            if self.split == "random":
                raise ValueError("--folds is subject-wise cross-validation: use --split subject "
                                 "or both")
        if self.backbone_weights is not None:
            from bpedge.train.models.retinanet import read_state_dict

            # Loaded before the study folder is claimed: an unloadable file (empty, damaged)
            # was refused only after study.json recorded it, and the folder then refused every
            # run without it.
            read_state_dict(self.backbone_weights, "--backbone-weights file")
        if self.pixel_spacing_mm is not None and not (
                math.isfinite(self.pixel_spacing_mm) and self.pixel_spacing_mm > 0):
            # inf was taken, and study.json got Infinity, which JSON does not have.
            raise ValueError(f"--pixel-spacing-mm must be a finite number > 0, got "
                             f"{self.pixel_spacing_mm}")
        if not self.data.exists():
            raise FileNotFoundError(f"--data folder {self.data} does not exist")
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(f"--out {self.out} exists and is not a folder")

    @property
    def split_modes(self) -> tuple[str, ...]:
        """The names of the splits to run, each with its own models: ``random``, ``subject``,
        and with ``folds`` K the subject split's folds ``subject-fold1`` .. ``subject-foldK``."""
        modes = ("random", "subject") if self.split == "both" else (self.split,)
        names: list[str] = []
        for mode in modes:
            if mode == "subject" and self.folds is not None:
                names += [fold_name(f) for f in range(1, self.folds + 1)]
            else:
                names.append(mode)
        return tuple(names)

    def split_of(self, name: str) -> tuple[str, int | None]:
        """``(split mode, fold or None)`` of a split name from :attr:`split_modes`."""
        return split_of(name)

    @property
    def fold_names(self) -> tuple[str, ...]:
        """The K-fold split names (empty without ``folds``)."""
        return tuple(n for n in self.split_modes if split_of(n)[1] is not None)

    @property
    def preset_config(self) -> Preset:
        return get_preset(self.preset)

    def detector_epoch_count(self) -> int:
        """Epochs every detector trains for: the override, else the scaled preset value."""
        return self._epochs(self.preset_config.detector.epochs, self.detector_epochs)

    def segmenter_epoch_count(self, arch: str) -> int:
        """Epochs the ``arch`` segmenter trains for: the override, else the scaled preset value."""
        return self._epochs(self.preset_config.segmenter(arch).epochs,  # type: ignore[arg-type]
                            self.segmenter_epochs)

    def _epochs(self, preset_epochs: int, override: int | None) -> int:
        if override is not None:
            return override
        if self.epochs_scale is None:
            return preset_epochs
        return max(1, round(preset_epochs * self.epochs_scale))

    def to_json(self) -> dict[str, Any]:
        """The options as plain JSON types, plus the resolved epochs."""
        d = {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}
        d["gammas"], d["archs"] = list(self.gammas), list(self.archs)
        d["split_names"] = list(self.split_modes)
        d["resolved_epochs"] = {
            "detector": self.detector_epoch_count(),
            **{arch: self.segmenter_epoch_count(arch) for arch in self.archs},
        }
        return d


def fold_name(fold: int) -> str:
    """The split name of subject-wise fold ``fold`` (from 1): ``subject-fold1``."""
    return f"subject-fold{fold}"


def split_of(name: str) -> tuple[str, int | None]:
    """``"subject-fold3"`` -> ``("subject", 3)``; ``"random"`` -> ``("random", None)``."""
    if name.startswith("subject-fold") and name[len("subject-fold"):].isdigit():
        return "subject", int(name[len("subject-fold"):])
    if name in ("random", "subject"):
        return name, None
    raise ValueError(f"unknown split name {name!r}")


def parse_float_list(text: str, option: str) -> tuple[float, ...]:
    """``"1,2,3.5"`` -> ``(1.0, 2.0, 3.5)``; ValueError naming ``option`` otherwise."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{option} must be a comma list of numbers, e.g. 1,2,3,5; got {text!r}") \
            from None
    if not values:
        raise ValueError(f"{option} needs at least one number, got {text!r}")
    return values


def parse_name_list(text: str, option: str, choices: tuple[str, ...]) -> tuple[str, ...]:
    """``"unet,mnet"`` -> ``("unet", "mnet")``, each one of ``choices``."""
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [n for n in names if n not in choices]
    if bad or not names:
        raise ValueError(f"{option} must be a comma list of {list(choices)}, got {text!r}")
    return names
