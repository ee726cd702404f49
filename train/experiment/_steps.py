"""A study as a list of named steps, each skipped when finished and resumed when unfinished.

Two kinds of step:

- a training step owns a run folder; it is finished when the folder's metrics cover the epochs
  asked for, unfinished when it holds a ``last.pt`` short of them (the trainer's ``--resume``
  continues it), and to do otherwise;
- a derived step (evaluation, tables, figures, report) is finished when its outputs exist and the
  sha256 of its inputs equals what the step log recorded when it last ran, so a retrained model
  re-triggers everything computed from it and nothing else.

RUN/steps.jsonl gets one JSON line per step per invocation (``ran``, ``resumed`` or ``skipped``,
seconds, input digests), rewritten atomically after each step, so a killed study loses at most the
step in progress.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bpedge._atomic import atomic_write_text

__all__ = [
    "Step", "StepRecord", "StepState", "check_no_foreign_best", "file_digests", "file_sha256",
    "is_orphan_checkpoint", "read_step_log",
    "run_steps", "training_state",
]


class StepState(enum.Enum):
    DONE = "done"
    UNFINISHED = "unfinished"
    NOT_STARTED = "not started"


@dataclass(frozen=True)
class Step:
    """One named unit of the study.

    ``action(resume)`` does the work (``resume`` is True only for an unfinished training step);
    ``weight`` is its expected cost relative to the others (epoch-equivalents), for the ETA.
    A training step gives ``state``; a derived step gives ``inputs`` and ``outputs`` instead.
    """

    name: str
    action: Callable[[bool], None]
    weight: float = 1.0
    state: Callable[[], StepState] | None = None
    inputs: Callable[[], Sequence[Path]] = lambda: ()
    outputs: Callable[[], Sequence[Path]] = lambda: ()
    #: Called just before the state is decided, e.g. to refresh an input made from the step log.
    prepare: Callable[[], None] | None = None


@dataclass(frozen=True)
class StepRecord:
    """What happened to one step in one invocation."""

    step: str
    status: str               # "ran" | "resumed" | "skipped"
    seconds: float
    finished_at: str
    invocation: str
    inputs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step, "status": self.status, "seconds": round(self.seconds, 3),
            "finished_at": self.finished_at, "invocation": self.invocation, "inputs": self.inputs,
        }


def training_state(run_dir: Path, epochs: int) -> StepState:
    """State of a training run folder asked to reach ``epochs``: DONE when RUN/metrics.json lists
    at least that many epochs and RUN/best.pt exists, UNFINISHED when RUN/last.pt exists, else NOT_STARTED
    (a ValueError when best.pt of an unfinished run lost its last.pt).

    A best.pt without last.pt is what a kill between the first epoch's two checkpoint writes
    leaves (the loop writes best.pt, then last.pt): that epoch is the interrupted one, so the
    orphan is removed and the run starts again (:attr:`StepState.NOT_STARTED`) instead of the trainer
    refusing the folder.
    It is removed only when it is that orphan by evidence (:func:`is_orphan_checkpoint`); any
    other best.pt there (a file of the user's) is refused with a ValueError naming it."""
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    done = _epochs_done(run_dir)
    if best.is_file() and done >= epochs:
        return StepState.DONE  # finished: its best.pt is the model, whatever became of last.pt
    if best.is_file() and not last.is_file():
        if done:
            # Trained for some epochs, then last.pt was removed: never delete the model.
            raise ValueError(f"{run_dir} holds best.pt after {done} epoch(s) but no last.pt to "
                             f"continue to {epochs}: move the folder away to train it again")
        check_no_foreign_best(run_dir)
        best.unlink()  # metrics come after both checkpoints: this is the orphan described above
    return StepState.UNFINISHED if last.is_file() else StepState.NOT_STARTED


def _epochs_done(run_dir: Path) -> int:
    metrics = run_dir / "metrics.json"
    return len(json.loads(metrics.read_text()).get("epochs", [])) if metrics.is_file() else 0


def check_no_foreign_best(run_dir: Path) -> None:
    """A ValueError naming RUN/best.pt when :func:`training_state` would find a best.pt with
    neither last.pt nor a finished epoch that is not the orphan of a killed first epoch
    (:func:`is_orphan_checkpoint`): a file of the user's, never deleted. Checks only; a study
    calls it for every run folder before it starts, so it refuses before any training."""
    best, last = run_dir / "best.pt", run_dir / "last.pt"
    if not best.is_file() or last.is_file() or _epochs_done(run_dir):
        return  # nothing training_state would delete
    if not is_orphan_checkpoint(run_dir):
        raise ValueError(f"{best} is not a checkpoint this study's training wrote there, so it "
                         "is never deleted: move it away, then run again")


def is_orphan_checkpoint(run_dir: Path) -> bool:
    """Whether RUN/best.pt is the checkpoint a kill in this run's first epoch left: the folder is
    one ``bpedge train`` made (its marker), and the file loads as a bpedge checkpoint (whose
    archive CRCs are checked) of epoch 1 holding this run's own RUN/config.json. A file of the
    user's has none of that by accident; the marker alone is a file anyone can write, so the
    content must say so too."""
    from bpedge.train.checkpoint import CheckpointError, load_checkpoint

    from bpedge._out_dir import made_by

    config_path = run_dir / "config.json"
    if not made_by(run_dir, "train") or not config_path.is_file():
        return False
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
        payload = load_checkpoint(run_dir / "best.pt")
        # Through JSON, as config.json was written: the checkpoint keeps tuples JSON makes lists.
        stored = json.loads(json.dumps(payload.get("config")))
    except (CheckpointError, UnicodeDecodeError, ValueError, TypeError):
        # Not readable as this run's checkpoint (CheckpointError is a ValueError too): then it
        # is not known to be ours, which is the answer, not an error.
        return False
    return payload.get("epoch") == 1 and stored == config


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex); a missing file is a ValueError naming it (the step
    that makes it has not run)."""
    if not path.is_file():
        raise ValueError(f"input {path} is missing; the step that writes it has not finished")
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digests(paths: Sequence[Path], root: Path | None = None) -> dict[str, str]:
    """``{path: sha256}`` of each input file (:func:`file_sha256`). Keyed by the path relative
    to ``root`` (the study folder) when the file is inside it, else by its resolved path: the
    same study spelled relative or absolute, through a link, or after it was moved, has the same
    inputs (keyed as spelled, each of those re-ran every derived step)."""
    base = None if root is None else root.resolve()
    out: dict[str, str] = {}
    for p in paths:
        real = p.resolve()
        key = str(real)
        if base is not None and real.is_relative_to(base):
            key = real.relative_to(base).as_posix()
        out[key] = file_sha256(p)
    return out


def read_step_log(path: Path) -> list[dict[str, Any]]:
    """The records of RUN/steps.jsonl, oldest first (empty when there is none yet)."""
    if not path.is_file():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path} line {n} is not JSON ({exc.msg}); the step log is "
                                 "rewritten atomically, so the file was edited by hand") from None
    return records


def _last_inputs(records: list[dict[str, Any]], step: str) -> dict[str, str] | None:
    for r in reversed(records):
        if r["step"] == step and r["status"] in ("ran", "resumed"):
            return dict(r.get("inputs", {}))
    return None


def _derived_state(step: Step, records: list[dict[str, Any]],
                   root: Path) -> tuple[StepState, dict[str, str]]:
    digests = file_digests(step.inputs(), root)
    outputs_exist = all(p.exists() for p in step.outputs())
    if outputs_exist and _last_inputs(records, step.name) == digests:
        return StepState.DONE, digests
    return StepState.NOT_STARTED, digests


def run_steps(
    steps: Sequence[Step],
    log_path: Path,
    *,
    progress: bool = True,
    on_step_done: Callable[[StepRecord], None] | None = None,
) -> list[StepRecord]:
    """Run ``steps`` in order, skipping finished ones; returns this invocation's records.

    The state of each step is decided just before it runs (a step may depend on what earlier
    steps wrote). ``on_step_done`` is called after each step's record is logged, e.g. to report
    progress, or to stop a study after a given step.
    """
    from tqdm.auto import tqdm

    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ValueError(f"step names must be unique, got {names}")
    # Start time plus a random tag: two invocations within one second stay apart.
    invocation = f"{datetime.now(timezone.utc).isoformat(timespec='seconds')} {uuid.uuid4().hex[:6]}"
    records = read_step_log(log_path)
    total = sum(s.weight for s in steps)
    done_weight, run_weight, run_seconds = 0.0, 0.0, 0.0
    mine: list[StepRecord] = []
    bar = tqdm(total=total, desc="study", unit="ep", disable=not progress,
               dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix}")
    try:
        for step in steps:
            bar.set_description_str(f"study: {step.name}")
            if step.prepare is not None:
                step.prepare()
            digests: dict[str, str] = {}
            if step.state is not None:
                state = step.state()
            else:
                state, digests = _derived_state(step, records, log_path.parent)
            t0 = time.perf_counter()
            if state is not StepState.DONE:
                step.action(state is StepState.UNFINISHED)
                if step.state is None:
                    digests = file_digests(step.inputs(), log_path.parent)
            seconds = time.perf_counter() - t0
            status = {StepState.DONE: "skipped", StepState.UNFINISHED: "resumed",
                      StepState.NOT_STARTED: "ran"}[state]
            record = StepRecord(step.name, status, seconds,
                                datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                invocation, digests)
            records.append(record.to_json())
            mine.append(record)
            atomic_write_text(log_path, "".join(json.dumps(r) + "\n" for r in records))
            done_weight += step.weight
            if status != "skipped":
                run_weight, run_seconds = run_weight + step.weight, run_seconds + seconds
            bar.update(step.weight)
            bar.set_postfix_str(_eta_text(run_seconds, run_weight, total - done_weight))
            if on_step_done is not None:
                on_step_done(record)
    finally:
        bar.close()
    return mine


def _eta_text(seconds: float, weight: float, remaining: float) -> str:
    """Elapsed time of the steps run so far and the time the remaining weight should take at
    their pace (skipped steps cost nothing, so they do not count toward the pace)."""
    if weight <= 0 or seconds <= 0:
        return f"{_clock(seconds)} elapsed, ETA unknown"
    return f"{_clock(seconds)} elapsed, ETA {_clock(seconds / weight * remaining)}"


def _clock(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"
