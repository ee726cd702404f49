"""Bundle files that are not plain files, manifests that are not text or nest without end, and
manifests whose shapes do not describe their models: each is refused at load with a
``BundleError`` (or a ``ValueError`` naming the model file) instead of hanging, crashing with
another exception, or failing on every frame later."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest

from bpedge import Segmenter
from bpedge.bundle import Bundle, BundleError


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def opens_within(bundle: Path, seconds: float = 20.0) -> BaseException | None:
    """Open ``bundle`` on a thread; the exception it raised (None if it opened). A hang fails."""
    outcome: list[BaseException | None] = []

    def work() -> None:
        try:
            Segmenter.from_bundle(bundle, backend="onnxruntime").close()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome.append(exc)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        # Unblock the reader (a FIFO opened for writing releases a blocked open), then fail.
        for fifo in bundle.iterdir():
            if fifo.is_fifo():
                with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb", closefd=True):
                    pass
        pytest.fail(f"opening {bundle} hung for {seconds} s")
    return outcome[0]


def replace_with_fifo(path: Path) -> None:
    path.unlink()
    os.mkfifo(path)


@pytest.mark.parametrize("victim", ["manifest.json", "detector.fp32.onnx"])
@pytest.mark.parametrize("kind", ["fifo", "symlink to a fifo", "symlink to a device",
                                  "directory"])
def test_a_listed_file_that_is_not_a_regular_file_is_refused_without_hanging(copy: Path,
                                                                             victim: str,
                                                                             kind: str,
                                                                             tmp_path: Path):
    path = copy / victim
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink to a fifo":
        os.mkfifo(tmp_path / "pipe")
        path.symlink_to(tmp_path / "pipe")
    elif kind == "symlink to a device":
        path.symlink_to("/dev/zero")
    else:
        path.mkdir()
    error = opens_within(copy)
    assert isinstance(error, BundleError), repr(error)
    assert victim in str(error)


@pytest.mark.parametrize("content,words", [
    (b"\xff\xfe{not utf-8", "UTF-8"),
    (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
])
def test_a_manifest_that_is_not_text_or_nests_without_end_is_a_bundle_error(copy: Path,
                                                                              content: bytes,
                                                                              words: str):
    (copy / "manifest.json").write_bytes(content)
    with pytest.raises(BundleError, match=words):
        Bundle.open(copy)


def test_a_huge_manifest_is_refused_unread(copy: Path):
    with open(copy / "manifest.json", "r+b") as f:
        f.truncate(64 * 1024 * 1024)  # sparse: 64 MB of nothing, over the cap
    with pytest.raises(BundleError, match="limit"):
        Bundle.open(copy)


@pytest.mark.parametrize("field,value", [
    (("detector", "input_hw"), [64, 96]),
    (("segmenter", "crop_hw"), [48, 48]),
])
def test_manifest_input_sizes_that_do_not_match_the_models_are_refused_at_load(copy: Path,
                                                                                field, value):
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["preprocessing"][field[0]][field[1]] = value
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=rf"{field[1]}.*re-export"):
        Segmenter.from_bundle(copy, backend="onnxruntime")
