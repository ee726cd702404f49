"""The steps of ``bpedge demo``, each resumable: phantom data -> tiny detector -> tiny U-Net on
ground-truth crops -> bundle -> held-out frames -> Segmenter evaluation.

``OUT/demo.json`` records the demo's settings and which steps have finished. A re-run with the same
settings skips finished steps (a training step interrupted mid-way resumes from its ``last.pt``);
a re-run with other settings is refused, so one folder never mixes two demos. Every step's output
is written atomically (the phantom and the bundle are renamed into place when complete), so an
interrupted step leaves either nothing or something the next run can resume.
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpedge._atomic import atomic_write_json
from bpedge._out_dir import OutDirRefused
from bpedge._out_file import OutFile, OutFileRefused

if TYPE_CHECKING:
    from bpedge.export.tiny_bundle import TinyPaths, TinyRecipe

STATE_FILE = "demo.json"
STEPS = ("phantom", "detector", "segmenter", "export", "heldout", "evaluate")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo makes. ``epochs`` None: the ``tiny`` preset's (12 detector, 15 U-Net)."""

    subjects: int = 6
    frames: int = 30
    seed: int = 0
    epochs: int | None = None

    def __post_init__(self) -> None:
        if self.subjects < 3:
            raise ValueError(f"--subjects must be >= 3 (a subject split needs one each for "
                             f"train, validation and test), got {self.subjects}")
        if self.frames < 4:
            raise ValueError(f"--frames must be >= 4 per subject, got {self.frames}")
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")


@dataclass
class DemoState:
    """``OUT/demo.json``: the settings and the finished steps with their seconds."""

    config: DemoConfig
    done: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"config": asdict(self.config), "done": self.done}


class DemoPaths:
    """Where everything goes under ``--out``."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.state = out / STATE_FILE
        self.data = out / "data" / "train"
        self.detector = out / "runs" / "detector"
        self.segmenter = out / "runs" / "unet"
        self.bundle = out / "bundle"
        self.heldout = out / "heldout"
        self.heldout_partial = out / ".heldout.partial"
        self.overlays = out / "overlays"
        self.metrics = out / "metrics.json"


def load_state(paths: DemoPaths, config: DemoConfig) -> DemoState:
    """The state of a previous run in ``paths.out`` with the same config, or a fresh one.
    ValueError if ``--out`` holds something else (another demo, or unrelated files)."""
    if paths.state.is_file():
        saved = json.loads(paths.state.read_text())
        if saved.get("config") != asdict(config):
            raise ValueError(
                f"{paths.out} holds a demo made with other settings ({saved.get('config')}): "
                "re-run with those settings to resume it, or choose a new --out"
            )
        return DemoState(config, {k: float(v) for k, v in saved.get("done", {}).items()})
    if paths.out.exists() and (not paths.out.is_dir() or any(paths.out.iterdir())):
        raise ValueError(f"--out {paths.out} exists and is not an empty folder (nor a demo "
                         "folder): choose a new --out")
    return DemoState(config)


def save_state(paths: DemoPaths, state: DemoState) -> None:
    atomic_write_json(paths.state, state.to_json())


def run_step(name: str, paths: DemoPaths, state: DemoState, work: Callable[[], None],
             say: Callable[[str], None]) -> None:
    """Run ``work`` unless ``name`` is already done; record its wall time."""
    index = STEPS.index(name) + 1
    if name in state.done:
        say(f"[{index}/{len(STEPS)}] {name}: done in an earlier run ({state.done[name]:.0f} s), "
            "reused")
        return
    say(f"[{index}/{len(STEPS)}] {name}")
    t0 = time.perf_counter()
    work()
    state.done[name] = time.perf_counter() - t0
    save_state(paths, state)


# --- the steps ------------------------------------------------------------------------------


# The steps are the shared tiny-bundle pipeline's (bpedge.export.tiny_bundle), one by one so each
# is timed and resumed on its own.


def _tiny(paths: DemoPaths, config: DemoConfig) -> tuple[TinyPaths, TinyRecipe]:
    from bpedge.export.tiny_bundle import TinyPaths, TinyRecipe

    return (TinyPaths(data=paths.data, detector=paths.detector, segmenter=paths.segmenter,
                      bundle=paths.bundle),
            TinyRecipe(subjects=config.subjects, frames=config.frames, seed=config.seed,
                       epochs=config.epochs, split="subject"))


def make_phantom(paths: DemoPaths, config: DemoConfig, progress: bool) -> None:
    from bpedge.export.tiny_bundle import make_phantom as make

    make(*_tiny(paths, config), progress=progress)


def train_detector_step(paths: DemoPaths, config: DemoConfig, progress: bool) -> None:
    from bpedge.export.tiny_bundle import train_tiny_detector

    train_tiny_detector(*_tiny(paths, config), progress=progress)


def train_segmenter_step(paths: DemoPaths, config: DemoConfig, progress: bool) -> None:
    from bpedge.export.tiny_bundle import train_tiny_segmenter

    train_tiny_segmenter(*_tiny(paths, config), progress=progress)


def export_step(paths: DemoPaths, config: DemoConfig, say: Callable[[str], None]) -> None:
    from bpedge.export.tiny_bundle import export_tiny

    # `bpedge bench` on the demo bundle compares with PyTorch: the checkpoints go in.
    export_tiny(_tiny(paths, config)[0], include_checkpoints=True,
                log=lambda line: say(f"    {line}"))


def test_subjects(paths: DemoPaths) -> list[int]:
    """The subjects of the detector run's test split (the segmenter's is the same split)."""
    split = json.loads((paths.detector / "split.json").read_text())
    return sorted({int(key.split("_")[0]) for key in split["test"]})


def copy_heldout(paths: DemoPaths) -> None:
    """Every frame of the test subjects (with and without BP) into ``OUT/heldout`` in the Kaggle
    layout, so ``bpedge bench --data`` and ``bpedge segment`` can be pointed at them."""
    subjects = set(test_subjects(paths))
    # What a killed run left (the copy being made, or the finished one renamed into place before
    # demo.json said so) is redone; anything else there is refused, never deleted.
    for folder in (paths.heldout_partial, paths.heldout):
        _remove_own_copy(folder, paths.data)
    paths.heldout_partial.mkdir(parents=True)
    for path in sorted(paths.data.iterdir()):
        if path.suffix == ".tif" and int(path.name.split("_")[0]) in subjects:
            shutil.copy2(path, paths.heldout_partial / path.name)
    paths.heldout_partial.rename(paths.heldout)


def foreign_heldout_entry(folder: Path, data: Path) -> Path | None:
    """The first entry of ``folder`` (``heldout/`` or its partial) that is not a copy the demo
    made, None when there is none (or no folder). The demo copies phantom frames there and
    nothing else, so an entry is the demo's only when it is a plain file with the name and the
    very bytes of a frame in ``data``: a file of the user's has neither by accident."""
    if not os.path.lexists(folder):
        return None
    if folder.is_symlink() or not folder.is_dir():
        return folder
    for entry in sorted(folder.iterdir()):
        frame = data / entry.name
        if entry.is_symlink() or not entry.is_file() or frame.is_symlink() \
                or not frame.is_file() or not filecmp.cmp(entry, frame, shallow=False):
            return entry
    return None


def _refuse_foreign_heldout(folder: Path, data: Path) -> None:
    entry = foreign_heldout_entry(folder, data)
    if entry is not None:
        raise OutDirRefused(f"{entry} is not a frame `bpedge demo` copied there (a file of "
                            "yours?), so it is never deleted: move it away, then run again")


def _remove_own_copy(folder: Path, data: Path) -> None:
    """Remove ``folder`` when it holds only the demo's copies of frames (see
    :func:`foreign_heldout_entry`); refuse, naming the entry, otherwise."""
    _refuse_foreign_heldout(folder, data)
    if not os.path.lexists(folder):
        return
    for entry in folder.iterdir():
        entry.unlink()
    folder.rmdir()


def out_file(path: Path) -> OutFile:
    """A file the demo writes under ``--out`` (metrics, summaries, overlays): replaced only
    while it holds the bytes the demo wrote (its record beside it, :class:`OutFile`)."""
    return OutFile(path, "demo", "--out")


def refuse_users_files(paths: DemoPaths, state: DemoState) -> None:
    """Refuse (:class:`OutDirRefused`, exit 2), before any step runs, a file of the user's
    where this run would write or delete: the summaries and metrics, and, while the held-out
    step is still to do, anything in ``heldout/`` or its partial that is not the demo's copy."""
    for path in (paths.metrics, paths.out / "summary.md", paths.out / "summary.html"):
        refuse_foreign_file(path)
    if "heldout" not in state.done:
        for folder in (paths.heldout_partial, paths.heldout):
            _refuse_foreign_heldout(folder, paths.data)


def refuse_foreign_file(path: Path) -> None:
    if out_file(path).state() == "foreign":
        raise OutFileRefused(f"{path} was not written by `bpedge demo` (a file of yours?), so "
                             "it is never overwritten: move it away, then run again")
