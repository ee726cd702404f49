"""The demo's summaries from known metrics: worst frames, false negatives and positives, a Dice
histogram and a latency chart, and no Python reprs (no training needed)."""

from __future__ import annotations

from bpedge._bench.stats import summarize
from bpedge._cli._demo_report import STAGES, write_summaries
from bpedge._cli._demo_steps import DemoConfig, DemoPaths, DemoState


def _metrics():
    per_frame = [
        {"frame": "5_1", "bp": True, "present": True, "score": 0.9, "dice": 0.91, "box_iou": 0.8},
        {"frame": "5_2", "bp": True, "present": True, "score": 0.8, "dice": 0.12, "box_iou": 0.2},
        {"frame": "5_3", "bp": True, "present": False, "score": 0.1, "dice": 0.0, "box_iou": 0.0},
        {"frame": "5_4", "bp": False, "present": True, "score": 0.7, "dice": 0.0,
         "box_iou": None},
        {"frame": "5_5", "bp": False, "present": False, "score": 0.2, "dice": 1.0,
         "box_iou": None},
    ]
    return {"frames": 5, "bp_frames": 3, "test_subjects": [5], "dice_positive": 0.343,
            "box_iou_positive": 0.333, "dice_all": 0.406, "presence_accuracy": 0.6,
            "latency_ms": {s: summarize([1.0, 2.0, 3.0]).to_json() for s in STAGES},
            "backend": "onnxruntime fp32", "per_frame": per_frame}


def test_summaries_show_failures_and_charts(tmp_path):
    paths = DemoPaths(tmp_path)
    state = DemoState(DemoConfig(subjects=6, frames=30), {"phantom": 3.0, "evaluate": 1.0})
    write_summaries(paths, state, _metrics(), 12.0)
    page = (tmp_path / "summary.html").read_text()
    md = (tmp_path / "summary.md").read_text()
    for text in (page, md):
        assert "DemoConfig(" not in text and "{'" not in text  # no Python reprs
        assert "6 phantom subjects x 30 frames, seed 0" in text
        assert "held-out frames (test subject 5)" in text  # one subject, named as one
    # Worst BP frames lowest Dice first; the miss and the false alarm each in their gallery.
    worst = page.index("Worst BP frames")
    fn, fp = page.index("False negatives"), page.index("False positives")
    assert page.index("5_3: score 0.10, Dice 0.00", worst) < page.index("5_2: score", worst) < fn
    assert fn < page.index('src="overlays/5_3.png"', fn) < fp
    assert page.index("5_4: score 0.70, no BP in truth", fp) > fp
    assert "5_5" not in page[fp:]
    assert page.count("<svg") == 2 and 'aria-label="Dice histogram"' in page
    assert "overlays/5_2.png" in md
