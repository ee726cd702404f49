"""The step runner alone, with fake steps: skip when finished, rerun when an input changed,
resume an unfinished training run, stop and continue, and the step log it keeps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpedge.train.experiment._steps import (
    Step,
    StepRecord,
    StepState,
    read_step_log,
    run_steps,
    training_state,
)


class _Counter:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    def writer(self, name: str, out: Path, source: Path | None = None):
        def action(resume: bool) -> None:
            self.calls.append((name, resume))
            text = source.read_text() if source else name
            out.write_text(f"{name}:{text}")

        return action


def _plan(tmp: Path, counter: _Counter) -> list[Step]:
    src, a, b = tmp / "source.txt", tmp / "a.txt", tmp / "b.txt"
    return [
        Step("a", counter.writer("a", a, src), inputs=lambda: [src], outputs=lambda: [a]),
        Step("b", counter.writer("b", b, a), inputs=lambda: [a], outputs=lambda: [b]),
    ]


def test_finished_steps_are_skipped_and_changed_inputs_rerun(tmp_path: Path) -> None:
    (tmp_path / "source.txt").write_text("v1")
    counter, log = _Counter(), tmp_path / "steps.jsonl"
    first = run_steps(_plan(tmp_path, counter), log, progress=False)
    assert [r.status for r in first] == ["ran", "ran"]
    second = run_steps(_plan(tmp_path, counter), log, progress=False)
    assert [r.status for r in second] == ["skipped", "skipped"]
    assert [c[0] for c in counter.calls] == ["a", "b"]

    (tmp_path / "source.txt").write_text("v2")  # a's input changed: a reruns, and so does b
    third = run_steps(_plan(tmp_path, counter), log, progress=False)
    assert [r.status for r in third] == ["ran", "ran"]
    assert (tmp_path / "b.txt").read_text() == "b:a:v2"

    (tmp_path / "b.txt").unlink()  # a lost output is remade, its unchanged producer is not
    fourth = run_steps(_plan(tmp_path, counter), log, progress=False)
    assert [r.status for r in fourth] == ["skipped", "ran"]

    records = read_step_log(log)
    assert len(records) == 8
    invocations = [r["invocation"] for r in records]
    assert len(set(invocations)) == 4 and invocations[0] == invocations[1]
    assert all(set(r) >= {"step", "status", "seconds", "inputs"} for r in records)


def test_a_stopped_study_continues_at_the_next_step(tmp_path: Path) -> None:
    (tmp_path / "source.txt").write_text("v1")
    counter, log = _Counter(), tmp_path / "steps.jsonl"

    def stop_after_a(record: StepRecord) -> None:
        if record.step == "a":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_steps(_plan(tmp_path, counter), log, progress=False, on_step_done=stop_after_a)
    assert [r["step"] for r in read_step_log(log)] == ["a"]  # logged before the stop
    again = run_steps(_plan(tmp_path, counter), log, progress=False)
    assert [(r.step, r.status) for r in again] == [("a", "skipped"), ("b", "ran")]


def test_a_failing_step_is_not_logged_as_done(tmp_path: Path) -> None:
    log = tmp_path / "steps.jsonl"
    out = tmp_path / "out.txt"

    def fail(_resume: bool) -> None:
        out.write_text("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        run_steps([Step("x", fail, outputs=lambda: [out])], log, progress=False)
    counter = _Counter()
    records = run_steps([Step("x", counter.writer("x", out), outputs=lambda: [out])], log,
                        progress=False)
    assert records[0].status == "ran"  # the half-written output did not count as finished


def _fake_run(run_dir: Path, epochs_done: int, *, best: bool = True) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "last.pt").write_bytes(b"x")
    if best:
        (run_dir / "best.pt").write_bytes(b"x")
    rows = [{"epoch": e + 1} for e in range(epochs_done)]
    (run_dir / "metrics.json").write_text(json.dumps({"epochs": rows}))


def test_training_state_reads_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert training_state(run, 3) is StepState.NOT_STARTED
    _fake_run(run, 2)
    assert training_state(run, 3) is StepState.UNFINISHED
    assert training_state(run, 2) is StepState.DONE
    assert training_state(run, 1) is StepState.DONE  # fewer epochs asked: keep what is there


def test_an_unfinished_training_step_is_resumed(tmp_path: Path) -> None:
    run, log = tmp_path / "run", tmp_path / "steps.jsonl"
    _fake_run(run, 1)
    seen: list[bool] = []

    def train(resume: bool) -> None:
        seen.append(resume)
        _fake_run(run, 3)

    step = Step("train", train, weight=3, state=lambda: training_state(run, 3))
    assert [r.status for r in run_steps([step], log, progress=False)] == ["resumed"]
    assert seen == [True]
    assert [r.status for r in run_steps([step], log, progress=False)] == ["skipped"]
    assert seen == [True]


def test_duplicate_step_names_are_refused(tmp_path: Path) -> None:
    step = Step("same", lambda _r: None)
    with pytest.raises(ValueError, match="unique"):
        run_steps([step, step], tmp_path / "log", progress=False)


def test_missing_input_names_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    step = Step("needs", lambda _r: None, inputs=lambda: [missing])
    with pytest.raises(ValueError, match="nope.json"):
        run_steps([step], tmp_path / "log", progress=False)


def test_inputs_spelled_from_another_folder_are_the_same_inputs(tmp_path: Path,
                                                                 monkeypatch) -> None:
    """`experiment --out study` then `--out /abs/.../study`: the same files, and the derived
    steps are skipped (they were re-run, keyed by the paths as spelled)."""
    (tmp_path / "source.txt").write_text("v1")
    counter = _Counter()
    monkeypatch.chdir(tmp_path)
    relative = Path(".")
    first = run_steps(_plan(relative, counter), relative / "steps.jsonl", progress=False)
    assert [r.status for r in first] == ["ran", "ran"]
    monkeypatch.chdir("/")
    again = run_steps(_plan(tmp_path, counter), tmp_path / "steps.jsonl", progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert [c[0] for c in counter.calls] == ["a", "b"]


def test_a_moved_study_folder_keeps_its_finished_steps(tmp_path: Path) -> None:
    """Inputs inside the study folder are keyed relative to it: after `mv study study2` every
    derived step ran again (keyed by absolute path), though no input had changed."""
    first_dir, moved = tmp_path / "study", tmp_path / "study2"
    first_dir.mkdir()
    (first_dir / "source.txt").write_text("v1")
    counter = _Counter()
    first = run_steps(_plan(first_dir, counter), first_dir / "steps.jsonl", progress=False)
    assert [r.status for r in first] == ["ran", "ran"]
    first_dir.rename(moved)
    again = run_steps(_plan(moved, counter), moved / "steps.jsonl", progress=False)
    assert [r.status for r in again] == ["skipped", "skipped"]
    assert set(read_step_log(moved / "steps.jsonl")[-1]["inputs"]) == {"a.txt"}
