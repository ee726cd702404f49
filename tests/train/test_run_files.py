"""A run folder's files: a run replaces only what it recorded writing, and removes only the
temporary files it recorded making (``bpedge.train._run_files``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from bpedge.train._loop import remove_stale_temporaries, write_metrics
from bpedge.train._run_files import RECORD_NAME, write_run_text

ROW = {"epoch": 1, "train_loss": 1.0, "val_loss": 1.0, "val_metric": 0.5, "lr": 1e-3,
       "seconds": 1.0}


def test_a_file_the_run_did_not_write_is_never_overwritten(tmp_path: Path) -> None:
    write_metrics(tmp_path, [ROW], "iou")
    write_metrics(tmp_path, [ROW, {**ROW, "epoch": 2}], "iou")  # its own: replaced
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 3
    (tmp_path / "metrics.csv").write_text("my own table\n")
    with pytest.raises(ValueError, match=str(tmp_path / "metrics.csv")):
        write_metrics(tmp_path, [ROW], "iou")
    assert (tmp_path / "metrics.csv").read_text() == "my own table\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_users_file_at_the_records_name_is_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / RECORD_NAME).write_text("notes")
    with pytest.raises(ValueError, match=RECORD_NAME):
        write_run_text(tmp_path, "metrics.csv", "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME]


KILLED = """
import os, sys
from pathlib import Path
from bpedge.train._run_files import write_run_file

def write(f):
    f.write(b"half a checkpoint")
    f.flush()
    os._exit(9)  # killed mid-write: nothing gets to clean up

write_run_file(Path(sys.argv[1]), "metrics.csv", write)
"""


def test_a_resume_removes_only_the_temporaries_a_killed_run_recorded(tmp_path: Path) -> None:
    write_metrics(tmp_path, [ROW], "iou")
    mine = [tmp_path / ".metrics.csv.keep.tmp", tmp_path / ".last.pt.k1ll3d00.tmp"]
    for p in mine:
        p.write_bytes(b"keep me")
    assert subprocess.run([sys.executable, "-c", KILLED, str(tmp_path)],
                          check=False).returncode == 9
    left = sorted(p for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p not in mine)
    assert len(left) == 1 and left[0].read_bytes() == b"half a checkpoint"
    assert remove_stale_temporaries(tmp_path) == left
    assert all(p.read_bytes() == b"keep me" for p in mine)
    assert not left[0].exists()
    write_metrics(tmp_path, [ROW], "iou")  # the killed write left the file replaceable


def test_a_temporary_of_the_record_is_removed_only_when_it_holds_a_record(tmp_path: Path) -> None:
    write_metrics(tmp_path, [ROW], "iou")
    record = (tmp_path / RECORD_NAME).read_bytes()
    # What a kill in the record's write leaves: the whole record, or (killed between creating
    # the temporary and the one write into it, the likelier moment) nothing yet.
    left = [tmp_path / f".{RECORD_NAME}.k1ll3d00.tmp", tmp_path / f".{RECORD_NAME}.k1ll3d01.tmp"]
    left[0].write_bytes(record)
    left[1].write_bytes(b"")
    mine = [tmp_path / f".{RECORD_NAME}.mynotes0.tmp", tmp_path / f".{RECORD_NAME}.mynotes1.tmp"]
    mine[0].write_bytes(b"keep me")
    mine[1].write_bytes(record[:10] + b"mine")
    assert sorted(remove_stale_temporaries(tmp_path)) == left
    assert [p.read_bytes() for p in mine] == [b"keep me", record[:10] + b"mine"]
