"""Training checkpoints: plain, safely loadable files that carry everything a model needs.

A checkpoint is one ``torch.save`` of a dict holding only tensors and plain Python types (dict,
list, str, int, float, bool, None), so ``torch.load(weights_only=True)`` reads it without running
any pickled code. Besides the weights it carries what export and the runtime need to use them
(kind, architecture, model config, input size, normalisation) and what ``--resume`` needs to
continue exactly (optimizer state, epoch, RNG states, split, history, best metric).

Payload keys (``FORMAT_VERSION`` 1)::

    format            "bpedge-checkpoint"
    format_version    1
    kind              "detector" | "segmenter"
    arch              "retinanet" | "unet" | "mnet"
    model_config      DetectorConfig / SegmenterConfig as a dict (config_to_dict)
    config            the resolved run config (what RUN/config.json holds)
    model_state       the model's state_dict (tensors)
    optimizer_state   the optimizer's state_dict
    epoch             number of completed epochs (1-based count)
    rng               {"torch": ByteTensor, "numpy": {...}, "python": [...], "cuda": [ByteTensor]}
    crop_mode         "none" | "gt" | "detector" for a segmenter, None for a detector
    crop_margin       a segmenter's crop margin (PreprocessingSpec.crop_margin; 0.0 if absent)
    normalization     {"mean": float, "std": float} of the model's training inputs (0-255 scale)
    input_hw          [H, W] of the model input
    frame_hw          [H, W] of the training frames
    split             the split as plain JSON types
    metric_name       "val_miou" | "val_dice"
    best_metric       best validation metric so far (float, -inf before any epoch)
    history           list of per-epoch metric rows (dicts of plain types)
    bpedge_version    version that wrote it
    data_fingerprint  fingerprint of the dataset index it was trained on
"""

from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import numpy as np

from bpedge._atomic import atomic_save_with
from bpedge._preprocessing import ModelInput, Normalization, PreprocessingSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "bpedge-checkpoint"
FORMAT_VERSION = 1
KINDS = ("detector", "segmenter")
REQUIRED_KEYS = (
    "format", "format_version", "kind", "arch", "model_config", "model_state", "normalization",
    "input_hw", "epoch",
)


class CheckpointError(ValueError):
    """A file is not a readable bpedge checkpoint (the message names the file and why)."""


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (see the module docstring) to ``path``.

    ``format``/``format_version`` are filled in; the payload is checked to be loadable with
    ``weights_only=True`` before anything is written, so a stray NumPy array or custom object is
    a ``TypeError`` here rather than an unloadable file later.
    """
    atomic_save_with(path, checkpoint_writer(payload, Path(path)))


def checkpoint_writer(payload: dict[str, Any], path: Path) -> Callable[[IO[bytes]], None]:
    """What :func:`save_checkpoint` writes, as ``write(fileobj)`` for a caller that publishes
    the file its own way (a run folder's :func:`bpedge.train._run_files.write_run_file`); the
    payload is checked now, and ``path`` names the file in the messages."""
    import torch

    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    _check_plain(body, "payload")
    _check_payload(body, path)
    return lambda f: torch.save(body, f)


def load_checkpoint(path: str | os.PathLike[str], map_location: str = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises ``FileNotFoundError`` if ``path`` does not exist and :class:`CheckpointError` (a
    ``ValueError``) naming the file if it cannot be unpickled safely (e.g. it holds code to run)
    or is not a bpedge checkpoint.
    """

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    payload = torch_load_weights_only(p, "bpedge checkpoint", map_location)
    _check_payload(payload, p)
    return payload


def torch_load_weights_only(path: Path, what: str, map_location: str = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, or :class:`CheckpointError` naming ``path`` and
    ``what`` it should be. A damaged file fails inside torch with almost any exception (flipped
    bytes gave KeyError, UnicodeDecodeError and others, whose text named neither the file nor
    the problem); a file that needs a pickled object is refused without torch's advice to load
    it with ``weights_only=False``, which would run code from the file."""
    import torch

    _check_stored_checksums(path, what)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        need = f"it needs {found.group(1)}" if found else "it holds more than tensors"
        raise CheckpointError(
            f"{path} was refused as a {what}: {need}, a pickled Python object, and loading one "
            "could run code from the file") from None
    except Exception as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else ""
        raise CheckpointError(f"{path} is not a loadable {what} (damaged or not a torch.save "
                              f"file: {type(exc).__name__}{': ' + first if first else ''})"
                              ) from exc


#: Bytes read at a time when checking a record's checksum.
_CHUNK = 1 << 20


def _check_stored_checksums(path: Path, what: str) -> None:
    """:class:`CheckpointError` naming ``path`` when a record of its ``torch.save`` archive no
    longer has the CRC-32 stored for it.

    torch stores a CRC-32 per record when it saves but never checks one when it loads, so bytes
    flipped inside tensor data loaded silently as other weights. Checking costs one read of the
    file on load and nothing on save. A record stored without a checksum (CRC 0, as
    ``torch.serialization.set_crc32_options(False)`` writes) is not checked; a file that is not a
    zip archive is left to ``torch.load``, which names what is wrong with it."""
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        return  # not a zip archive (torch's legacy format, or no checkpoint): torch.load judges
    except OSError:
        raise
    except Exception as exc:  # a damaged directory fails with almost any exception
        raise _damaged(path, what, "its zip directory is unreadable", exc) from exc
    with archive:
        for info in archive.infolist():
            if info.CRC == 0:
                continue
            try:
                with archive.open(info) as record:
                    while record.read(_CHUNK):
                        pass  # zipfile compares the CRC-32 when the record's end is read
            except OSError:
                raise
            except Exception as exc:  # a bad checksum, or a damaged header of the record
                raise _damaged(path, what, f"its record {info.filename} does not match what "
                               "was stored when it was written", exc) from exc


def _damaged(path: Path, what: str, why: str, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{path} is damaged: {why} ({type(exc).__name__}: {exc}); it cannot "
                           f"be used as a {what}: restore it from a copy, or train again")


def _check_payload(payload: Any, path: Path) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a bpedge checkpoint (no format={FORMAT!r} marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')!r}; this bpedge "
            f"reads version {FORMAT_VERSION}"
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is missing checkpoint fields {missing}")
    if payload["kind"] not in KINDS:
        raise CheckpointError(f"{path} has kind {payload['kind']!r}; expected one of {KINDS}")


def _check_plain(obj: Any, where: str) -> None:
    """Refuse anything ``weights_only=True`` would not load back (only tensors and plain types)."""
    import torch

    if obj is None or isinstance(obj, (bool, int, float, str, torch.Tensor, torch.Size)):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint {where} has a key of type {type(k).__name__}")
            _check_plain(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(
        f"checkpoint {where} is a {type(obj).__name__}; only tensors and plain Python types "
        "(dict, list, str, int, float, bool, None) may be stored"
    )


# --- RNG state as plain types ---------------------------------------------------------------


def capture_rng_state() -> dict[str, Any]:
    """The torch, CUDA, NumPy (global) and Python ``random`` states as tensors and plain types."""
    import torch

    np_state = cast("tuple[Any, ...]", np.random.get_state(legacy=True))
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [int(py_version), [int(v) for v in py_internal], py_gauss],
        "cuda": [],
    }
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (CUDA states are restored only where CUDA is present)."""
    import torch

    torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available() and len(cuda_states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.to("cpu", torch.uint8) for s in cuda_states])


# --- Models from checkpoints ------------------------------------------------------------------


def model_input(payload: dict[str, Any]) -> ModelInput:
    """The model's input as the runtime's typed spec: ``input_hw`` and ``normalization``."""
    h, w = payload["input_hw"]
    norm = payload["normalization"]
    return ModelInput((int(h), int(w)),
                      Normalization(_statistic(norm["mean"]), _statistic(norm["std"])))


def _statistic(value: Any) -> float | None:
    """A stored z-score statistic; ``None`` (JSON null) means it is taken per image."""
    return None if value is None else float(value)


@dataclass(frozen=True)
class ModelPayload:
    """The part of a checkpoint that says what the weights are and how to feed them (the keys
    above from ``kind`` to ``data_fingerprint``), typed; :meth:`to_dict` is what is saved.

    ``input``: the model's input size and normalisation; ``crop_mode`` / ``crop_margin``: how a
    segmenter's crops were made (None / 0.0 for a detector); ``frame_hw``: the training frames'
    common size (None when sizes differ)."""

    kind: str
    arch: str
    model_config: dict[str, Any]
    config: dict[str, Any]
    input: ModelInput
    frame_hw: tuple[int, int] | None
    split: dict[str, Any]
    data_fingerprint: str
    crop_mode: str | None = None
    crop_margin: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if (self.kind == "segmenter") != (self.crop_mode is not None):
            raise ValueError(f"a segmenter records its crop mode and a detector none, got "
                             f"kind {self.kind!r} with crop_mode {self.crop_mode!r}")

    def to_dict(self) -> dict[str, Any]:
        """The checkpoint keys, as plain types (a detector writes no ``crop_margin``)."""
        return {
            "kind": self.kind,
            "arch": self.arch,
            "model_config": self.model_config,
            "config": self.config,
            "crop_mode": self.crop_mode,
            **({"crop_margin": self.crop_margin} if self.kind == "segmenter" else {}),
            "normalization": self.input.norm.to_dict(),
            "input_hw": list(self.input.hw),
            "frame_hw": list(self.frame_hw) if self.frame_hw else None,
            "split": self.split,
            "data_fingerprint": self.data_fingerprint,
        }

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> ModelPayload:
        """The typed view of a loaded checkpoint (older ones: no margin means 0.0)."""
        frame_hw = payload.get("frame_hw")
        return cls(
            kind=payload["kind"], arch=payload["arch"], model_config=payload["model_config"],
            config=payload.get("config") or {}, input=model_input(payload),
            frame_hw=(int(frame_hw[0]), int(frame_hw[1])) if frame_hw else None,
            split=payload.get("split") or {}, data_fingerprint=str(payload.get("data_fingerprint")),
            crop_mode=payload.get("crop_mode"), crop_margin=crop_margin(payload),
        )


def crop_margin(payload: dict[str, Any]) -> float:
    """A segmenter's crop margin; a checkpoint written before margins existed cropped the box as
    found (0.0)."""
    return float(payload.get("crop_margin", 0.0))


def preprocessing_spec(detector: dict[str, Any], segmenter: dict[str, Any]) -> PreprocessingSpec:
    """The bundle's preprocessing spec from a detector's and a segmenter's payloads."""
    return PreprocessingSpec.from_inputs(model_input(detector), model_input(segmenter),
                                         crop_margin(segmenter))


def build_model_from_payload(payload: dict[str, Any]) -> nn.Module:
    """A freshly initialised model of the kind, architecture and config a checkpoint describes."""
    from bpedge.train.presets import DetectorConfig, SegmenterConfig, config_from_dict

    if payload["kind"] == "detector":
        from bpedge.train.models import build_detector

        return build_detector(config_from_dict(DetectorConfig, payload["model_config"]))
    from bpedge.train.models import build_segmenter

    return build_segmenter(config_from_dict(SegmenterConfig, payload["model_config"]))


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model a checkpoint describes, load its weights, move it to ``device``, set eval mode.

    Returns ``(model, payload)``; ``payload["normalization"]`` and ``payload["input_hw"]`` say how
    to prepare inputs (see :mod:`bpedge._stages`).
    """
    payload = load_checkpoint(path)
    try:
        model = build_model_from_payload(payload)
    except (TypeError, ValueError, KeyError) as exc:  # a field of the wrong type or shape
        raise CheckpointError(f"{path}: its stored config does not build a model ({exc})") from exc
    if not isinstance(payload["model_state"], Mapping):
        raise CheckpointError(f"{path}: its model_state is a {type(payload['model_state']).__name__}"
                              ", not a state_dict")
    try:
        model.load_state_dict(payload["model_state"])
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: the stored weights do not fit a {payload['arch']} built from the stored "
            f"config: {str(exc).splitlines()[0]}"
        ) from exc
    model.to(device)
    model.eval()
    return model, payload


def resolve_checkpoint(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file from either a file path or a run folder (its ``best.pt``)."""
    p = Path(path)
    if p.is_dir():
        best = p / "best.pt"
        if not best.is_file():
            raise FileNotFoundError(f"run folder {p} has no best.pt (has it finished an epoch?)")
        return best
    if not p.is_file():
        raise FileNotFoundError(f"{p} is neither a checkpoint file nor a run folder")
    return p


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "CheckpointError",
    "build_model_from_payload",
    "capture_rng_state",
    "checkpoint_writer",
    "load_checkpoint",
    "load_model",
    "resolve_checkpoint",
    "restore_rng_state",
    "save_checkpoint",
    "torch_load_weights_only",
]
