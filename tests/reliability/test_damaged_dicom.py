"""Damaged DICOM files: every one is read or refused with a ``ValueError`` naming it, so
``on_error="skip"`` (``bpedge segment --on-error skip``) passes over it and keeps going.

pydicom parses element values lazily and raises what the damage makes it raise:
``NotImplementedError`` for an unknown VR, ``AttributeError`` for a missing required element,
``BytesLengthException`` for a value whose length does not fit its VR, ``InvalidDicomError`` for
no header. These escaped unnamed, so one bad file ended a ``--on-error skip`` run with exit 1 and
a message that did not say which file; and ``Frames.length`` (the progress bar's total, counted
before the first frame) did the same for a file the frames would have skipped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bpedge._cli.app import build_app
from bpedge.sources import SourceError, open_frames

pytest.importorskip("pydicom")

from tests.io.conftest import write_dicom


def good_dicom(path: Path) -> Path:
    frames = np.random.default_rng(0).integers(0, 255, (3, 64, 80), dtype=np.uint8)
    return write_dicom(path, frames, "MONOCHROME2", frame_time_ms=33.0)


def damaged(tmp_path: Path, kind: str) -> Path:
    data = bytearray(good_dicom(tmp_path / "good.dcm").read_bytes())
    path = tmp_path / f"{kind}.dcm"
    if kind == "no header":
        data = bytearray(np.random.default_rng(1).integers(0, 256, 3000, np.uint8).tobytes())
    elif kind == "unknown VR":
        at = data.index(b"\x28\x00\x04\x00CS")  # (0028,0004) Photometric Interpretation
        data[at + 4: at + 6] = b"C\x8c"
    elif kind == "missing Bits Allocated":
        import pydicom

        ds = pydicom.dcmread(tmp_path / "good.dcm")
        del ds.BitsAllocated
        ds.save_as(path)
        return path
    elif kind == "value too short for its VR":
        at = data.index(b"\x28\x00\x10\x00US")  # (0028,0010) Rows: 2 bytes
        data[at + 4: at + 6] = b"UL"  # 2 bytes are no 4-byte UL
    path.write_bytes(bytes(data))
    return path


KINDS = ["no header", "unknown VR", "missing Bits Allocated", "value too short for its VR"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_dicom_is_refused_by_name(tmp_path: Path, kind: str):
    path = damaged(tmp_path, kind)
    with pytest.raises(ValueError, match=path.name):
        list(open_frames(path))


@pytest.mark.parametrize("kind", KINDS)
def test_a_damaged_dicom_is_skipped_and_never_breaks_the_count(tmp_path: Path, kind: str):
    path = damaged(tmp_path, kind)
    frames = open_frames(path, tmp_path / "good.dcm", on_error="skip")
    assert frames.length in (None, 6)  # a count it cannot read is unknown, not an error
    assert [f.name for f in frames] == ["good_f000000", "good_f000001", "good_f000002"]
    assert [label for label, _ in frames.skipped] == [str(path)]


def test_flipped_bytes_anywhere_in_the_header_are_read_or_refused_by_name(tmp_path: Path):
    data = good_dicom(tmp_path / "good.dcm").read_bytes()
    rng = np.random.default_rng(1)
    for i in range(150):
        mutated = bytearray(data)
        for _ in range(3):
            mutated[int(rng.integers(132, 700))] = int(rng.integers(0, 256))
        path = tmp_path / f"flip{i}.dcm"
        path.write_bytes(bytes(mutated))
        count = open_frames(path).length  # never raises: a count it cannot read is None
        assert count is None or count >= 1
        try:
            list(open_frames(path))
        except (ValueError, SourceError) as exc:
            assert path.name in str(exc)
        path.unlink()


def test_segment_on_error_skip_goes_past_a_damaged_dicom(tiny_bundle: Path, tmp_path: Path):
    bad = damaged(tmp_path, "unknown VR")
    out = tmp_path / "out"
    result = CliRunner().invoke(build_app(), [
        "segment", str(tiny_bundle), str(bad), str(tmp_path / "good.dcm"), "--out", str(out),
        "--backend", "onnxruntime", "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert f"skipped {bad}" in result.output
    assert len((out / "results.csv").read_text().splitlines()) == 4  # header + 3 frames
