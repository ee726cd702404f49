"""The steps of ``bpedge demo``, each resumable: phantom data -> tiny detector -> tiny U-Net on
ground-truth crops -> bundle -> held-out frames -> Segmenter evaluation.

``OUT/demo.json`` records the demo's settings and which steps have finished. A re-run with the same
settings skips finished steps (a training step interrupted mid-way resumes from its ``last.pt``);
a re-run with other settings is refused, so one folder never mixes two demos. Every step's output
is written atomically (the phantom and the bundle are renamed into place when complete), so an
interrupted step leaves either nothing or something the next run can resume.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bpedge._atomic import atomic_write_json

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
    partial = paths.out / ".heldout.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for path in sorted(paths.data.iterdir()):
        if path.suffix == ".tif" and int(path.name.split("_")[0]) in subjects:
            shutil.copy2(path, partial / path.name)
    shutil.rmtree(paths.heldout, ignore_errors=True)
    partial.rename(paths.heldout)
