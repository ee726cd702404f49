"""The demo's last step: run the :class:`~bpedge.segmenter.Segmenter` (ONNX Runtime, the CPU
default) on the held-out frames, score it, draw overlays, and write ``metrics.json``,
``summary.md`` and ``summary.html``.

Which Dice is which (DESIGN.md): ``dice_positive`` is the method's number, the mean over frames that
show the BP, on the full frame after paste-back; ``dice_all`` is Kaggle's, over all frames with
empty-vs-empty = 1.
"""

from __future__ import annotations

import html
import json
import os
from typing import Any
from urllib.parse import quote

import numpy as np

from bpedge._bench.stats import summarize
from bpedge._cli._demo_steps import (
    DemoPaths,
    DemoState,
    out_file,
    refuse_foreign_file,
    test_subjects,
)
from bpedge._display_text import markdown_code_block, markdown_text

STAGES = ("preprocess", "detector", "crop", "segmenter", "paste", "total")


def evaluate(paths: DemoPaths, progress: bool) -> dict[str, Any]:
    """Segment every held-out frame, write its overlay, and return (and save) the metrics."""
    from tqdm import tqdm

    from bpedge._bench.frames import kaggle_frames
    from bpedge._metrics import box_from_mask, box_iou, dice
    from bpedge._overlay import draw_overlay
    from bpedge.segmenter import Segmenter

    frames = kaggle_frames(paths.heldout)
    # An overlay's name may be taken by a file of the user's: refused before any frame is run.
    for name in frames.names:
        refuse_foreign_file(paths.overlays / f"{name}.png")
    paths.overlays.mkdir(parents=True, exist_ok=True)
    per_frame: list[dict[str, Any]] = []
    stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
    with Segmenter.from_bundle(paths.bundle, "onnxruntime") as seg:
        seg(frames.images[0])  # warm-up: session start-up is not per-frame latency
        items = zip(frames.names, frames.images, frames.masks)
        for name, image, mask in tqdm(items, total=len(frames.names), desc="held-out frames",
                                      unit="frame", disable=not progress):
            result = seg(image)
            for s in STAGES:
                stage_ms[s].append(result.timings[s])
            truth_box = box_from_mask(mask)
            d = dice(result.mask, mask, empty=1.0)
            iou = box_iou(result.box, truth_box) if truth_box is not None else None
            per_frame.append({"frame": name, "bp": truth_box is not None,
                              "present": bool(result.present), "score": result.score,
                              "dice": d, "box_iou": iou})
            label = f"{name}  score {result.score:.2f}" + (
                f"  Dice {d:.2f}" if truth_box is not None else "  (no BP in truth)")
            out_file(paths.overlays / f"{name}.png").write_bytes(_png(
                draw_overlay(image, result.mask, mask, result.box, result.present, label)))
    positives = [f for f in per_frame if f["bp"]]
    metrics = {
        "frames": len(per_frame),
        "bp_frames": len(positives),
        "test_subjects": test_subjects(paths),
        "dice_positive": float(np.mean([f["dice"] for f in positives])) if positives else None,
        "box_iou_positive": (float(np.mean([f["box_iou"] for f in positives]))
                             if positives else None),
        "dice_all": float(np.mean([f["dice"] for f in per_frame])),
        "presence_accuracy": float(np.mean([f["present"] == f["bp"] for f in per_frame])),
        "latency_ms": {s: summarize(v).to_json() for s, v in stage_ms.items()},
        "backend": "onnxruntime fp32",
        "per_frame": per_frame,
    }
    out_file(paths.metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def _png(image: np.ndarray) -> bytes:
    import cv2

    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.dtype} {image.shape} image as PNG")
    return bytes(encoded.tobytes())


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(metrics: dict[str, Any]) -> list[tuple[str, str]]:
    """(label, value) pairs shown on the console and in both summaries."""
    subjects = metrics["test_subjects"]
    # "test subjects 4" read as four subjects when it named subject 4 alone.
    named = ("test subject " if len(subjects) == 1 else "test subjects ") + ", ".join(
        map(str, subjects))
    return [
        (f"held-out frames ({named})", f"{metrics['frames']} ({metrics['bp_frames']} with BP)"),
        ("Dice, BP-positive frames, full frame after paste-back", _fmt(metrics["dice_positive"])),
        ("box IoU, BP-positive frames", _fmt(metrics["box_iou_positive"])),
        ("Dice, all frames (Kaggle: empty vs empty = 1)", _fmt(metrics["dice_all"])),
        ("presence accuracy (score threshold)", _fmt(metrics["presence_accuracy"])),
    ]


def latency_rows(metrics: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(stage, median, p90, p99, max) in ms."""
    return [(s, *(f"{v[k]:.2f}" for k in ("median", "p90", "p99", "max")))  # type: ignore[misc]
            for s, v in metrics["latency_ms"].items()]


def write_summaries(paths: DemoPaths, state: DemoState, metrics: dict[str, Any],
                    total_seconds: float) -> None:
    """``summary.md`` and ``summary.html`` under ``--out`` (overlays linked relatively)."""
    from bpedge._cli import _demo_html as parts

    steps = [(name, f"{seconds:.0f} s") for name, seconds in state.done.items()]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    c = state.config
    settings = (f"{c.subjects} phantom subjects x {c.frames} frames, seed {c.seed}, epochs "
                + (str(c.epochs) if c.epochs is not None else "of the tiny preset"))
    context = (f"demo settings: {settings}; wall time of this run {total_seconds:.0f} s"
               + (f"; load average now {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
                  f"on {os.cpu_count()} cores" if load else ""))
    shown_sets = parts.galleries(metrics["per_frame"])
    dice_bp = [f["dice"] for f in metrics["per_frame"] if f["bp"]]
    next_steps = [f"bpedge bench {paths.bundle} --data {paths.heldout}",
                  f"bpedge segment {paths.bundle} {paths.heldout} --out {paths.out / 'segmented'}"]

    md = ["# bpedge demo", "", ("Phantom data, tiny detector and U-Net (ground-truth crops), "
          "exported bundle, Segmenter (ONNX Runtime fp32) on the held-out subjects."), "",
          "| metric | value |", "|---|---|"]
    md += [f"| {k} | {v} |" for k, v in summary_lines(metrics)]
    md += ["", "Latency per frame, ms (host clock, ONNX Runtime, this machine):", "",
           "| stage | median | p90 | p99 | max |", "|---|---|---|---|---|"]
    md += [f"| {' | '.join(r)} |" for r in latency_rows(metrics)]
    md += ["", "Steps (seconds when each ran):", ""] + [f"- {n}: {s}" for n, s in steps]
    md += ["", context, "", ("Overlays (every frame's is in overlays/): ground truth green, "
           "prediction magenta, box yellow (grey when the detector says no BP)."), ""]
    for title, why, frames in shown_sets:
        md += [f"### {title} ({why}): {len(frames)} shown", ""]
        md += [f"![{markdown_text(parts.caption(f))}]({quote('overlays/' + f['frame'])}.png)"
               for f in frames] or ["none"]
        md += [""]
    # The commands hold --out, which may hold any character: a fence no line can close.
    md += ["", "Next:", "", markdown_code_block("\n".join(next_steps)), ""]
    out_file(paths.out / "summary.md").write_text("\n".join(md))

    e = html.escape
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in summary_lines(metrics))
    lat = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>"
                  for r in latency_rows(metrics))
    imgs = ""
    for title, why, frames in shown_sets:
        figures = "".join(f'<figure><img src="overlays/{e(f["frame"])}.png" width="290">'
                          f"<figcaption>{e(parts.caption(f))}</figcaption></figure>"
                          for f in frames) or "<p>none</p>"
        imgs += f"<h3>{e(title)}</h3><p>{e(why)}</p>{figures}"
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>bpedge demo</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px}}
figure{{display:inline-block;margin:4px}}</style></head><body>
<h1>bpedge demo</h1>
<p>Phantom data, tiny detector and U-Net (ground-truth crops), exported bundle, Segmenter (ONNX
Runtime fp32) on the held-out subjects.</p>
<table><tr><th>metric</th><th>value</th></tr>{rows}</table>
<h2>Latency per frame, ms</h2>
{parts.latency_svg(metrics["latency_ms"])}
<p>bar: median, tick: p90</p>
<table><tr><th>stage</th><th>median</th><th>p90</th><th>p99</th><th>max</th></tr>{lat}</table>
<h2>Dice over the BP frames</h2>
{parts.dice_histogram_svg(dice_bp)}
<h2>Steps</h2><ul>{"".join(f"<li>{e(n)}: {e(s)}</li>" for n, s in steps)}</ul>
<p>{e(context)}</p>
<h2>Where it fails</h2><p>ground truth green, prediction magenta, box yellow (grey: no BP);
every frame's overlay is in overlays/</p>{imgs}
<h2>Next</h2><pre>{e(chr(10).join(next_steps))}</pre>
</body></html>
"""
    out_file(paths.out / "summary.html").write_text(page)

