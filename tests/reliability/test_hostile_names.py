"""File names made to break what bpedge writes: bytes that are not UTF-8 (OpenCV's putText
crashed the process on one, and the UTF-8 tables refused to be written), terminal control
sequences (printed as they were, they recolour or retitle the terminal), spreadsheet formulas
(``=cmd|...`` in a CSV cell runs when the table is opened), names near the 255-byte limit."""

from __future__ import annotations

import csv
import os
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from bpedge._cli.app import build_app
from bpedge._display_text import printable, spreadsheet_cell
from bpedge._overlay import draw_overlay

runner = CliRunner()
BASE = ["--backend", "onnxruntime", "--no-progress"]


def test_a_label_with_undecodable_bytes_or_controls_is_drawn():
    frame = np.zeros((64, 64), np.uint8)
    for label in ("x\udcff\udcfe", "\x1b[31mred\x1b]0;title\x07", "é ü"):
        assert draw_overlay(frame, label=label).shape == (64, 64, 3)


def test_printable_and_spreadsheet_cells():
    assert printable("bad\udcff.tif") == "bad\\udcff.tif"
    assert printable("\x1b[31mX") == "\\x1b[31mX"
    assert printable("two\nlines") == "two\\nlines"
    assert printable("two\nlines", keep_newlines=True) == "two\nlines"
    for start in "=+-@":
        assert spreadsheet_cell(f"{start}cmd|calc!A1.tif") == f"'{start}cmd|calc!A1.tif"
    assert spreadsheet_cell("scans/=a.tif") == "scans/=a.tif"


@pytest.mark.skipif(os.name != "posix", reason="names with arbitrary bytes need POSIX")
def test_segment_writes_every_table_for_hostile_names(tiny_bundle, phantom_dir, tmp_path,
                                                      monkeypatch):
    folder = tmp_path / "frames"
    folder.mkdir()
    names = [os.fsdecode(b"bad\xff\xfe.tif"), "\x1b[31mEVIL\x1b]0;pwned\x07x.tif",
             "=cmd|calc!A1.tif", "x" * 240 + ".tif"]
    for name in names:
        shutil.copy(phantom_dir / "1_1.tif", folder / name)
    out = tmp_path / "out"
    monkeypatch.chdir(folder)  # names given as they are: each file cell starts with one
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), *names, "--out", str(out),
                                         *BASE])
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.output
    with (out / "results.csv").open(encoding="utf-8") as f:
        cells = [row["file"] for row in csv.DictReader(f)]
    assert len(cells) == len(names)
    assert "'=cmd|calc!A1.tif" in cells  # shown as text by a spreadsheet, never run
    assert not any(c.startswith(("=", "+", "-", "@")) for c in cells)
    assert not any("\x1b" in c for c in cells)
    assert len(list((out / "masks").iterdir())) == len(names)
    assert len(list((out / "overlays").iterdir())) == len(names)
