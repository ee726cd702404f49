"""File names made to break what bpedge writes: bytes that are not UTF-8 (OpenCV's putText
crashed the process on one, and the UTF-8 tables refused to be written), terminal control
sequences (printed as they were, they recolour or retitle the terminal), spreadsheet formulas
(``=cmd|...`` in a CSV cell runs when the table is opened), names near the 255-byte limit."""

from __future__ import annotations

import csv
import html
import os
import re
import shlex
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


@pytest.mark.skipif(os.name != "posix", reason="255-byte names: POSIX file systems")
def test_names_at_the_255_byte_limit_are_segmented(tiny_bundle, phantom_dir, tmp_path):
    """A still named with 251 bytes failed the whole run: the look-up of its mask beside it
    (STEM_mask.tif, 256 bytes) raised; a video named with 250 bytes gave frame outputs
    (STEM_fNNNNNN.png) too long to write. Output stems are cut to fit, each still unique."""
    import cv2

    folder = tmp_path / "frames"
    folder.mkdir()
    still = folder / ("x" * 247 + ".tif")  # 251 bytes
    shutil.copy(phantom_dir / "1_1.tif", still)
    shutil.copy(phantom_dir / "1_2.tif", folder / ("x" * 247 + ".png"))  # the same stem
    frame = cv2.imread(str(phantom_dir / "1_1.tif"), cv2.IMREAD_GRAYSCALE)
    video = tmp_path / ("v" * 246 + ".avi")  # 250 bytes (a folder source reads images only)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                             frame.shape[::-1])
    for _ in range(2):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR))
    writer.release()
    out = tmp_path / "out"
    result = runner.invoke(build_app(), ["segment", str(tiny_bundle), str(folder), str(video),
                                         "--out", str(out), *BASE])
    assert result.exit_code == 0, result.output
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert len(masks) == 4 and len({n.casefold() for n in masks}) == 4
    assert all(len(os.fsencode(n)) <= 255 for n in masks)
    with (out / "results.csv").open(encoding="utf-8") as f:
        assert len(list(csv.DictReader(f))) == 4


# --- Markdown reports (experiment's report.md, demo's summary.md) --------------------------------

#: A path that, written into Markdown as it is, ends a code span or block, adds a table row, a
#: javascript: link, a heading and raw HTML.
HOSTILE_PATH = ("data` <script>alert(1)</script>\n# title\n```\n| x | y |\n"
                "[click](javascript:alert(1)) <img src=x onerror=alert(1)>")


def _prose(markdown: str) -> str:
    """The Markdown outside fenced code blocks and code spans (CommonMark 4.5, 6.1), where a
    link, raw HTML, a heading or a table row would be read as such."""
    kept, fence = [], None
    for line in markdown.split("\n"):
        if fence is not None:
            if re.fullmatch(rf"{fence}`*\s*", line):
                fence = None
            continue
        if opening := re.match(r"`{3,}", line):
            fence = opening.group()
            continue
        kept.append(line)
    return re.sub(r"(?<![`\\])(`+)(?!`).*?(?<!`)\1(?!`)", "", "\n".join(kept))


def assert_inert(markdown: str) -> None:
    prose = _prose(markdown)
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", prose), prose  # no raw HTML
    assert "](javascript" not in prose and "# title" not in prose and "| x | y |" not in prose


def test_report_keeps_a_hostile_data_path_and_subject_as_text() -> None:
    from bpedge.train.experiment._document import to_html, to_markdown
    from bpedge.train.experiment.report import _setup
    from bpedge.train.experiment.report_crossval import _per_subject

    study = {"commands": [f"bpedge experiment --data {shlex.quote(HOSTILE_PATH)}"],
             "device": "cpu`x", "options": {
                 "preset": "tiny", "seed": 0, "limit": None, "archs": ["unet"],
                 "resolved_epochs": {"detector": 1, "unet": 1}, "epochs_scale": None,
                 "detector_epochs": None, "segmenter_epochs": None}}
    data = {"root": HOSTILE_PATH, "fingerprint": "f00", "frames": 2, "positive": 1, "empty": 1,
            "subjects": 1, "problems": [], "dedup": False, "dedup_removed": []}
    summary = {"split_sizes": {"random": {"train": 1, "val": 1, "test": 1, "test_empty": 0}}}
    cv = {"per_subject": [{"subject": "7|<b>x</b>`", "fold": "fold1", "frames": 1,
                           "detector_miou": 0.5, "dice": {"unet": {"gt": 0.25}}}]}
    blocks = [*_setup(study, data, summary, {"total_seconds": 60.0, "invocations": [{}]}),
              *_per_subject(cv, ["unet"], ["gt"])]
    markdown = to_markdown(blocks)
    assert_inert(markdown)
    data_line = next(line for line in markdown.splitlines() if line.startswith("- Data: "))
    assert data_line.endswith("fingerprint `f00`")  # the whole path stayed on its line
    row = markdown.splitlines()[-1]
    assert row.startswith("| ") and len(re.split(r"(?<!\\)\|", row)) == 5 + 2  # 5 cells
    page = to_html(blocks, "t")
    shown = html.escape(printable(HOSTILE_PATH), quote=False)
    assert f"<li>Data: <code>{shown}</code>, fingerprint <code>f00</code></li>" in page
    assert "<td>7|&lt;b&gt;x&lt;/b&gt;`</td>" in page and "<script>" not in page
    assert f"<pre><code>bpedge experiment --data {html.escape(shlex.quote(HOSTILE_PATH))}" in page


@pytest.mark.skipif(os.name != "posix", reason="a folder name with a line break needs POSIX")
def test_demo_summary_keeps_a_hostile_out_folder_as_text(tmp_path) -> None:
    from bpedge._bench.stats import summarize
    from bpedge._cli._demo_report import STAGES, write_summaries
    from bpedge._cli._demo_steps import DemoConfig, DemoPaths, DemoState

    out = tmp_path / HOSTILE_PATH.replace("/", "%")
    out.mkdir()
    frame = {"frame": "5_1", "bp": True, "present": True, "score": 0.9, "dice": 0.9,
             "box_iou": 0.8}
    metrics = {"frames": 1, "bp_frames": 1, "test_subjects": [5], "dice_positive": 0.9,
               "box_iou_positive": 0.8, "dice_all": 0.9, "presence_accuracy": 1.0,
               "latency_ms": {s: summarize([1.0, 2.0]).to_json() for s in STAGES},
               "per_frame": [frame]}
    write_summaries(DemoPaths(out), DemoState(DemoConfig()), metrics, 1.0)
    markdown = (out / "summary.md").read_text()
    assert_inert(markdown)
    assert f"bpedge bench {printable(str(out / 'bundle'))}" not in markdown  # a line break
    assert f"bpedge bench {out / 'bundle'} --data {out / 'heldout'}" in markdown
    assert "<script>" not in (out / "summary.html").read_text()


@pytest.mark.skipif(os.name != "posix", reason="255-byte names: POSIX file systems")
def test_a_path_part_past_255_bytes_is_bad_input_in_one_line(tmp_path):
    # [Errno 36] File name too long ended phantom, train, export and doctor with exit 1 and the
    # --debug hint, as if bpedge had failed.
    result = runner.invoke(build_app(), ["phantom", "--out", str(tmp_path / ("p" * 300)),
                                         "--subjects", "1", "--frames", "1"])
    assert result.exit_code == 2, result.output
    assert "File name too long" in result.output and "--debug" not in result.output
