"""``bpedge experiment`` SIGKILLed at random moments, then started again until it finishes.

A reduced study (phantom data, one gamma, the U-Net, two epochs per model) is run as a user runs
it, from the console entry point, and killed a little after a randomly chosen epoch line or late
in the derived steps: inside a training epoch, during a checkpoint or metrics write, in an
evaluation or while the figures are drawn.

After every kill: every JSON file of the study parses, every line of steps.jsonl parses, and every
checkpoint loads (weights_only). The run that finishes leaves no temporary file anywhere, its
runs hold every epoch once, epochs recorded before a kill are never trained again, and the
epochs trained over all invocations exceed the study's by at most one per kill: a kill loses at
most the epoch it interrupted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from bpedge.train.checkpoint import load_checkpoint

EPOCHS = 2
RUNS = 4  # one detector, the U-Net under three crop conditions


def command(data: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "bpedge._cli.app", "experiment", "--data", str(data),
        "--out", str(out), "--gammas", "2", "--archs", "unet",
        "--detector-epochs", str(EPOCHS), "--segmenter-epochs", str(EPOCHS), "--limit", "16",
        "--figure-images", "1", "--no-progress",
    ]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}


def is_epoch_line(line: str) -> bool:
    return line.startswith("epoch ") and f"/{EPOCHS}" in line


def run_until_killed(data: Path, out: Path, after_epochs: int, delay: float,
                     log: Path) -> list[str]:
    """Start the study, SIGKILL it ``delay`` s after its ``after_epochs``-th epoch line (or when
    it prints nothing more for that long at the end); returns the lines it printed."""
    with log.open("a") as err:
        proc = subprocess.Popen(command(data, out), stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env())
        assert proc.stdout is not None
        lines: list[str] = []
        try:
            while sum(map(is_epoch_line, lines)) < after_epochs:
                line = proc.stdout.readline()
                if not line:
                    break  # finished (or failed) before that many epochs: checked by the caller
                lines.append(line.rstrip("\n"))
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            rest, _ = proc.communicate(timeout=300)
        lines += rest.splitlines()
    return lines


def _derived_steps(out: Path) -> set[str]:
    """Steps recorded in ``out``'s step log that are not training (evaluations, tables,
    figures, report); a line still being written is skipped."""
    names = set()
    log = out / "steps.jsonl"
    for line in (log.read_text().splitlines() if log.is_file() else []):
        try:
            step = json.loads(line).get("step", "")
        except ValueError:
            continue
        if not step.endswith("/train"):
            names.add(step)
    return names


def run_until_a_derived_step(data: Path, out: Path, delay: float, log: Path) -> list[str]:
    """Start the study and SIGKILL it ``delay`` s after it records a step that is not training
    (so the kill lands among the evaluations, tables, figures or report, whatever the machine's
    speed); returns the lines it printed."""
    before = _derived_steps(out)
    with log.open("a") as err:
        proc = subprocess.Popen(command(data, out), stdout=subprocess.PIPE, stderr=err, text=True,
                                env=env())
        try:
            while proc.poll() is None and not _derived_steps(out) - before:
                time.sleep(0.005)
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            printed, _ = proc.communicate(timeout=300)
    return printed.splitlines()


def epochs_by_run(out: Path) -> dict[str, list[dict]]:
    found = {}
    for metrics in out.rglob("metrics.json"):
        found[str(metrics.parent.relative_to(out))] = json.loads(metrics.read_text())["epochs"]
    return found


def assert_nothing_corrupt(out: Path) -> None:
    for path in out.rglob("*.json"):
        if path.name.startswith(".") and ".partial." in path.name:
            continue  # an unfinished write under its own hidden name (bpedge._out_file)
        json.loads(path.read_text())  # never half a file
    steps = out / "steps.jsonl"
    if steps.exists():
        for line in steps.read_text().splitlines():
            json.loads(line)
    for path in out.rglob("*.pt"):
        payload = load_checkpoint(path)  # weights_only, format checked
        assert payload["epoch"] >= 1, path


@pytest.mark.slow
def test_a_study_killed_at_random_moments_finishes_losing_at_most_the_interrupted_epochs(
    phantom_dir: Path, tmp_path: Path
):
    out, log = tmp_path / "study", tmp_path / "stderr.log"
    rng = random.Random(11)
    printed: list[str] = []
    recorded: dict[str, list[dict]] = {}
    kills = 0
    # Kill points: a little after an epoch line (in the next epoch, a checkpoint write or an
    # evaluation), three times, then after the last epoch, in the evaluations, tables, figures
    # or report.
    for round_ in range(4):
        if round_ < 3:
            after, delay = rng.randint(1, 2), rng.uniform(0.0, 0.8)
        else:
            # The last kill lands among the derived steps: timed from the first of them this run
            # records, since a delay timed from the last epoch line let a fast (or a slow but
            # steady) machine finish the study first (three tries in a row, once in CI).
            delay = rng.uniform(0.0, 0.2)
        if round_ == 3:
            snapshot = tmp_path / "before_last_kill"
            shutil.copytree(out, snapshot, symlinks=True)
        attempts = 3 if round_ == 3 else 1
        for attempt in range(attempts):
            lines = (run_until_killed(phantom_dir, out, after, delay, log) if round_ < 3
                     else run_until_a_derived_step(phantom_dir, out, delay, log))
            if not any(line.startswith("done in") for line in lines) or attempt == attempts - 1:
                break
            # The derived steps outran the delay (seen once in CI on a busy machine): the last
            # kill did not land. Start the last round again from the state it began in, sooner.
            shutil.rmtree(out)
            shutil.copytree(snapshot, out, symlinks=True)
            delay /= 2
        printed += lines
        if any(line.startswith("done in") for line in lines):
            break  # the study finished before this kill
        kills += 1
        assert_nothing_corrupt(out)
        for run, epochs in epochs_by_run(out).items():
            assert [e["epoch"] for e in epochs] == list(range(1, len(epochs) + 1)), run
            assert epochs[: len(recorded.get(run, []))] == recorded.get(run, []), run
            recorded[run] = epochs
    assert kills == 4, "the study finished before it could be interrupted"

    final = subprocess.run(command(phantom_dir, out), env=env(), capture_output=True, text=True,
                           timeout=600, check=False)
    assert final.returncode == 0, final.stderr[-3000:]
    printed += final.stdout.splitlines()
    assert "done in" in final.stdout

    assert_nothing_corrupt(out)
    assert not sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp"))
    runs = epochs_by_run(out)
    assert len(runs) == RUNS
    for run, epochs in runs.items():
        assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1)), run
        # An epoch recorded before a kill is kept as it was, not trained again.
        assert epochs[: len(recorded.get(run, []))] == recorded.get(run, []), run
        assert load_checkpoint(out / run / "last.pt")["epoch"] == EPOCHS
    # Epoch lines count the epochs trained over all invocations: at most one more per kill than
    # the study's (a kill loses at most the epoch it interrupted). A line is printed after its
    # epoch's checkpoint and metrics are written, so a kill landing between the two leaves a
    # trained, recorded epoch without its line (seen once in CI: 7 lines for 8 epochs): the
    # lower bound allows that, and the metrics above show every epoch is there.
    trained = sum(map(is_epoch_line, printed))
    assert RUNS * EPOCHS - kills <= trained <= RUNS * EPOCHS + kills, trained
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
