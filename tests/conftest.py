"""Shared fixtures for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The session phantom: 4 subjects x 12 frames of 420x580 (2 empty frames per subject, 40 with BP).
PHANTOM_SUBJECTS, PHANTOM_FRAMES, PHANTOM_SEED = 4, 12, 0


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset in the Kaggle layout, generated once per test session.

    Shared by every test: treat it as read-only; copy it (``shutil.copytree``) before changing files.
    """
    from bpedge.train.data.phantom import PhantomConfig, generate_phantom

    out = tmp_path_factory.mktemp("phantom") / "train"
    config = PhantomConfig(subjects=PHANTOM_SUBJECTS, frames=PHANTOM_FRAMES, seed=PHANTOM_SEED)
    return generate_phantom(out, config)


# -------------------------------------------------------------------------------------------------
# Tiny trained models and their exported bundle (owned by the export work; appended as a block so
# nothing above changes). Shared by the export tests and the runtime tests: treat both as
# read-only and copy them before changing anything.
# -------------------------------------------------------------------------------------------------

#: Brief training on the session phantom: enough to export and check a real pipeline, not to be
#: accurate (the scores and masks of these models are close to chance).
TINY_LIMIT, TINY_EPOCHS = 16, 1


@pytest.fixture(scope="session")
def tiny_checkpoints(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """``(detector best.pt, U-Net best.pt)`` of the ``tiny`` preset, trained for ``TINY_EPOCHS`` on
    ``TINY_LIMIT`` BP frames of :func:`phantom_dir` (random split, ground-truth crops)."""
    from bpedge.export.tiny_bundle import (
        TinyPaths,
        TinyRecipe,
        train_tiny_detector,
        train_tiny_segmenter,
    )

    runs = tmp_path_factory.mktemp("tiny_runs")
    paths = TinyPaths.under(runs, data=phantom_dir)
    recipe = TinyRecipe(epochs=TINY_EPOCHS, limit=TINY_LIMIT)
    return train_tiny_detector(paths, recipe), train_tiny_segmenter(paths, recipe)


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoints: tuple[Path, Path], phantom_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle ``bpedge export`` made from :func:`tiny_checkpoints`: ``detector.fp32.onnx``,
    ``detector.fp16.onnx``, ``segmenter.fp32.onnx``, ``segmenter.fp16.onnx``, ``detector.pt``,
    ``segmenter.pt`` and ``manifest.json`` (parity passed, thresholds chosen on phantom_dir).
    The checkpoints are in because it is exported with ``include_checkpoints`` (the tests run the
    bundle's own weights in PyTorch); a plain export leaves them out."""
    from bpedge.export.tiny_bundle import TinyPaths, export_tiny

    detector, segmenter = tiny_checkpoints
    out = tmp_path_factory.mktemp("tiny_bundle") / "bundle"
    return export_tiny(TinyPaths(data=phantom_dir, detector=detector.parent,
                                 segmenter=segmenter.parent, bundle=out),
                       include_checkpoints=True)


@pytest.fixture(scope="session")
def open_gate_int8_bundle(tiny_checkpoints: tuple[Path, Path], phantom_dir: Path,
                          tmp_path_factory: pytest.TempPathFactory) -> Path:
    """:func:`tiny_checkpoints` exported with ``--int8`` and the INT8 gate opened (every limit 0),
    so both models ship in both QDQ forms whatever the barely trained test models do: for tests
    of what TensorRT is given and how INT8 engines are wired, not of the gate. Read-only: copy
    it before building engines into it."""
    from bpedge.export.bundle_export import ExportOptions, export_bundle
    from bpedge.export.int8 import Int8Gate

    detector, segmenter = tiny_checkpoints
    out = tmp_path_factory.mktemp("open_gate_int8_bundle") / "bundle"
    export_bundle(ExportOptions(detector=detector, segmenter=segmenter, out=out, data=phantom_dir,
                                int8=True, calibration_frames=8,
                                int8_gate=Int8Gate(min_box_iou=0.0, min_presence_agreement=0.0,
                                                   min_mask_dice=0.0)),
                  log=lambda line: None)
    return out


def hide_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``backend="auto"`` see a machine without OpenVINO, whatever this one has installed.

    The fallback tests pin the ONNX Runtime fallback of such a machine; with OpenVINO installed
    ``auto`` rightly takes it instead (``tests/test_openvino.py`` tests that order)."""
    import bpedge._openvino as openvino_runner

    monkeypatch.setattr(openvino_runner, "openvino_unavailable_reason",
                        lambda: "OpenVINO hidden by the test (it pins the ONNX Runtime fallback)")


@pytest.fixture
def without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_openvino(monkeypatch)


@pytest.fixture
def read_fifo():
    """``read_fifo(read, pipe)``: call ``read(pipe)`` in a daemon thread and return
    ``(what it returned, what it raised)`` (one of them None); a read still blocked after 20 s
    fails the test, after the pipe's write end is opened once to release it (so a hang cannot
    stall the run)."""
    import os
    import threading

    def call(read, pipe: Path) -> tuple[object, BaseException | None]:
        outcome: list[tuple[object, BaseException | None]] = []

        def run() -> None:
            try:
                outcome.append((read(pipe), None))
            except BaseException as exc:  # noqa: BLE001 - handed to the test
                outcome.append((None, exc))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(20)
        if worker.is_alive():
            # opening the write end lets a reader blocked in open() go on
            os.close(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail(f"reading the FIFO {pipe} hung")
        return outcome[0]

    return call


@pytest.fixture
def start_paused():
    """``start_paused(script, args, marker)``: ``python -c script *args`` started and returned
    once it prints a line starting with ``marker`` (the script then waits to be killed, which
    is what the test does to it); AssertionError with its output if it ends first. Whatever is
    still running when the test ends is killed."""
    import subprocess
    import sys

    started: list[subprocess.Popen[str]] = []

    def start(script: str, args: list[str], marker: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        started.append(proc)
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            if line.startswith(marker):
                return proc
            lines.append(line)
        proc.wait()
        raise AssertionError(f"ended before {marker!r} (exit {proc.returncode}): "
                             + "".join(lines))

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
