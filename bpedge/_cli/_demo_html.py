"""The parts of the demo's summary that show where the models fail: the worst frames, the false
positives and negatives, a Dice histogram and the per-stage latency as a bar chart (inline SVG, so
``summary.html`` stays one file with no scripts)."""

from __future__ import annotations

import html
from typing import Any

#: Frames shown per gallery: enough to see a pattern, few enough to load fast.
GALLERY = 8


def galleries(per_frame: list[dict[str, Any]]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """``(title, explanation, frames)`` for the worst BP frames (lowest Dice), the false negatives
    (BP in the truth, detector says absent) and the false positives (no BP, detector says present).
    Empty galleries are kept, so the page says plainly that there were none."""
    positives = sorted((f for f in per_frame if f["bp"]), key=lambda f: (f["dice"], f["frame"]))
    misses = [f for f in per_frame if f["bp"] and not f["present"]]
    false_alarms = sorted((f for f in per_frame if not f["bp"] and f["present"]),
                          key=lambda f: -f["score"])
    return [
        ("Worst BP frames", "lowest Dice first", positives[:GALLERY]),
        ("False negatives", "BP in the truth, the detector's score below the threshold",
         misses[:GALLERY]),
        ("False positives", "no BP in the truth, the detector's score at or above the threshold",
         false_alarms[:GALLERY]),
    ]


def caption(frame: dict[str, Any]) -> str:
    """One line under an overlay: name, score and (on BP frames) Dice."""
    text = f"{frame['frame']}: score {frame['score']:.2f}"
    return text + (f", Dice {frame['dice']:.2f}" if frame["bp"] else ", no BP in truth")


def dice_histogram_svg(values: list[float], bins: int = 10) -> str:
    """Counts of BP-frame Dice in ``bins`` equal bins over [0, 1] as an SVG bar chart."""
    if not values:
        return "<p>No BP frames among the held-out frames: no Dice to show.</p>"
    counts = [0] * bins
    for v in values:
        counts[min(int(v * bins), bins - 1)] += 1
    width, height, pad = 420, 150, 24
    bar = (width - 2 * pad) / bins
    top = max(counts)
    parts = [(f'<svg width="{width}" height="{height + 2 * pad}" role="img" '
              f'aria-label="Dice histogram">')]
    for i, c in enumerate(counts):
        h = height * c / top if top else 0
        x, y = pad + i * bar, pad + height - h
        parts.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar - 2:.1f}" height="{h:.1f}" '
                     f'fill="#b03cb0"><title>{i / bins:.1f}-{(i + 1) / bins:.1f}: {c}</title></rect>')
        if c:
            parts.append(f'<text x="{x + bar / 2 - 1:.1f}" y="{y - 3:.1f}" font-size="10" '
                         f'text-anchor="middle">{c}</text>')
    for k in range(0, bins + 1, 2):
        parts.append(f'<text x="{pad + k * bar:.1f}" y="{pad + height + 14}" font-size="10" '
                     f'text-anchor="middle">{k / bins:.1f}</text>')
    parts.append(f'<text x="{width / 2:.0f}" y="{height + 2 * pad - 2}" font-size="11" '
                 'text-anchor="middle">Dice (BP frames)</text></svg>')
    return "".join(parts)


def latency_svg(latency: dict[str, dict[str, float]]) -> str:
    """Median (bar) and p90 (tick) milliseconds per stage as a horizontal SVG bar chart."""
    stages = list(latency)
    if not stages:
        return ""
    label_w, width, row = 90, 460, 22
    top = max(max(v["p90"], v["median"]) for v in latency.values()) or 1.0
    scale = (width - label_w - 60) / top
    parts = [(f'<svg width="{width}" height="{row * len(stages) + 10}" role="img" '
              f'aria-label="latency per stage">')]
    for i, stage in enumerate(stages):
        v = latency[stage]
        y = 5 + i * row
        colour = "#555" if stage == "total" else "#3c8cdc"
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" font-size="12" '
                     f'text-anchor="end">{html.escape(stage)}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 3}" width="{v["median"] * scale:.1f}" '
                     f'height="{row - 8}" fill="{colour}"/>')
        tick = label_w + v["p90"] * scale
        parts.append(f'<line x1="{tick:.1f}" x2="{tick:.1f}" y1="{y + 1}" y2="{y + row - 3}" '
                     'stroke="#000"/>')
        parts.append(f'<text x="{max(tick, label_w + v["median"] * scale) + 4:.1f}" '
                     f'y="{y + 14}" font-size="11">{v["median"]:.2f} ms</text>')
    parts.append("</svg>")
    return "".join(parts)
