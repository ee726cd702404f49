"""``bpedge segment --add-to-existing`` owns, in the user's folder, only the entries it wrote.

It used to record every name it *might* write (``overlays/``, ``accuracy.csv``, the partial
tables...) whatever the run wrote, so a ``--no-overlays`` run without ground truth still listed
``overlays/`` and ``accuracy.csv`` as its own, and a later ``--force`` deleted the user's own
``overlays/`` folder of pictures and ``accuracy.csv`` made after it. A name is recorded just
before it is written; names an earlier run recorded but that are gone are dropped."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from bpedge._cli._segment_output import PNG_RECORD
from bpedge._cli.app import build_app
from bpedge._out_dir import owned_entries

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def study(tmp_path: Path) -> Path:
    """A user's folder holding one scan (no ground truth beside it) and notes."""
    folder = tmp_path / "study"
    folder.mkdir()
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "scan.png"), rng.integers(0, 256, (96, 128), dtype=np.uint8))
    (folder / "notes.txt").write_text("my notes")
    return folder


def segment(bundle: Path, study: Path, *extra: str):
    return runner.invoke(build_app(), [
        "segment", str(bundle), str(study / "scan.png"), "--out", str(study), "--no-progress",
        "--backend", "onnxruntime", "--add-to-existing", *extra])


def test_force_never_deletes_entries_the_user_made_after_a_run(tiny_bundle: Path, study: Path):
    first = segment(tiny_bundle, study, "--no-overlays")
    assert first.exit_code == 0, first.output
    assert owned_entries(study, "segment") == {"masks", "results.csv", "results.jsonl",
                                               PNG_RECORD}
    # Afterwards the user keeps their own pictures and table there, under names segment uses.
    (study / "overlays").mkdir()
    cv2.imwrite(str(study / "overlays" / "mine.png"), np.full((8, 8), 7, np.uint8))
    (study / "accuracy.csv").write_text("reader,dice\nme,0.9\n")
    mine = {k: v for k, v in snapshot(study).items()
            if k.startswith("overlays") or k in ("accuracy.csv", "notes.txt", "scan.png")}
    forced = segment(tiny_bundle, study, "--no-overlays", "--force")
    assert forced.exit_code == 2, forced.output  # they are in the way: refused, not deleted
    assert "never overwritten" in forced.output and "Traceback" not in forced.output
    after = snapshot(study)
    assert {k: after.get(k) for k in mine} == mine


def test_force_still_replaces_what_segment_wrote_and_forgets_what_is_gone(tiny_bundle: Path,
                                                                         study: Path):
    assert segment(tiny_bundle, study).exit_code == 0  # with overlays
    assert "overlays" in owned_entries(study, "segment")
    again = segment(tiny_bundle, study, "--no-overlays", "--force")
    assert again.exit_code == 0, again.output
    assert not (study / "overlays").exists()
    # overlays/ was removed as segment's own; now that it is gone it is no longer claimed.
    assert "overlays" not in owned_entries(study, "segment")
    assert (study / "results.csv").is_file() and not (study / "INCOMPLETE.txt").exists()


@pytest.mark.parametrize("content", [b"my own settings", b'{"format": "something else"}'])
def test_a_users_file_under_the_markers_name_is_never_overwritten(tiny_bundle: Path, study: Path,
                                                                  content: bytes):
    (study / ".bpedge-out.json").write_bytes(content)
    before = snapshot(study)
    result = segment(tiny_bundle, study)
    assert result.exit_code == 2, result.output
    assert "not a bpedge marker" in result.output and "Traceback" not in result.output
    assert snapshot(study) == before


# In a folder segment made. Its marker said "all mine", and nothing recorded what a run wrote,
# so --force deleted every results table, masks/ and overlays/ there, whoever had put them there.

def segment_into(bundle: Path, study: Path, out: Path, *extra: str):
    return runner.invoke(build_app(), [
        "segment", str(bundle), str(study / "scan.png"), "--out", str(out), "--no-progress",
        "--backend", "onnxruntime", *extra])


@pytest.mark.parametrize("users", ["overlays/mine.png", "accuracy.csv"])
def test_force_in_segments_own_folder_never_deletes_what_a_run_did_not_write(
        tiny_bundle: Path, study: Path, tmp_path: Path, users: str):
    out = tmp_path / "out"
    first = segment_into(tiny_bundle, study, out, "--no-overlays")  # no truth: no accuracy.csv
    assert first.exit_code == 0, first.output
    mine = out / users
    mine.parent.mkdir(exist_ok=True)
    mine.write_bytes(b"the user's own")
    before = snapshot(out)
    forced = segment_into(tiny_bundle, study, out, "--force")
    assert forced.exit_code == 2, forced.output
    assert str(out / users.split("/")[0]) in forced.output and "never overwritten" in forced.output
    assert "Traceback" not in forced.output
    assert snapshot(out) == before  # refused before anything was replaced
    mine.unlink()
    if mine.parent != out:
        mine.parent.rmdir()
    again = segment_into(tiny_bundle, study, out, "--force")  # what segment wrote still goes
    assert again.exit_code == 0, again.output
    assert (out / "overlays" / "scan.png").is_file() and not (out / "accuracy.csv").exists()


def test_force_in_a_folder_whose_marker_records_nothing_deletes_nothing(
        tiny_bundle: Path, study: Path, tmp_path: Path):
    """A marker from before the record: what is there is not known to be segment's."""
    import json

    out = tmp_path / "out"
    assert segment_into(tiny_bundle, study, out).exit_code == 0
    marker = json.loads((out / ".bpedge-out.json").read_text())
    marker.pop("written", None)
    (out / ".bpedge-out.json").write_text(json.dumps(marker))
    before = snapshot(out)
    forced = segment_into(tiny_bundle, study, out, "--force")
    assert forced.exit_code == 2, forced.output
    assert "did not record" in forced.output and str(out / "results.csv") in forced.output
    assert snapshot(out) == before
