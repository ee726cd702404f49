"""The study's figures (PNG, matplotlib's Agg renderer, no pyplot state), from the study files.

- Fig. 3: detector validation loss (and the validation metric, which picks gamma) per gamma;
- Fig. 5: segmenter train and validation loss per epoch, one panel per segmenter and condition;
- Fig. 6: test images with the ground-truth outline and each segmenter's outline per condition;
- Fig. 7: box plots of the full-frame Dice per condition and segmenter;
- Dice vs IoU: detector-crop Dice of every BP-positive test image against its detector IoU.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from bpedge.train.experiment._files import write_bytes
from bpedge.train.experiment.evaluate import load_figure_masks
from bpedge.train.experiment.layout import StudyLayout, gamma_label

__all__ = ["CONDITION_LABELS", "figure_paths", "make_figures"]

CONDITION_LABELS = {
    "none": "no detection (whole frame)",
    "detector": "RetinaNet crop",
    "gt": "ground-truth crop",
}
_ARCH_LABELS = {"unet": "U-Net", "mnet": "M-Net"}
_ARCH_COLOURS = {"unet": "#d62728", "mnet": "#1f77b4"}
_GT_COLOUR = "#2ca02c"
_DPI = 96


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def figure_paths(layout: StudyLayout, modes: Sequence[str]) -> list[Path]:
    """Every PNG :func:`make_figures` writes for these split modes."""
    paths = [layout.figure("fig3_detector_val_loss"), layout.figure("fig7_dice_boxplots"),
             layout.figure("dice_vs_iou")]
    for mode in modes:
        paths += [layout.figure(f"fig5_{mode}_segmenter_loss"),
                  layout.figure(f"fig6_{mode}_examples")]
    if any(m.startswith("subject-fold") for m in modes):
        paths.append(layout.figure("reliability"))
    return paths


def _save(fig: Any, path: Path, line_colours: Sequence[str] | None = None) -> None:
    """Write ``fig`` as an 8-bit palette PNG (a quarter of the full-colour size). With
    ``line_colours`` the palette is grey levels plus exactly those colours: ultrasound speckle
    barely compresses in full colour, and a fixed palette keeps the outline colours true;
    otherwise an adaptive palette of 256 colours, plenty for line plots."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    if line_colours is not None:
        png = _grey_palette_png(buf.getvalue(), line_colours)
    else:
        png = _adaptive_palette_png(buf.getvalue())
    write_bytes(path, png)


def _adaptive_palette_png(png: bytes) -> bytes:
    from PIL import Image as PILImage

    image = PILImage.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=256, method=PILImage.Quantize.FASTOCTREE).save(out, format="PNG",
                                                                         optimize=True)
    return out.getvalue()


def _grey_palette_png(png: bytes, colours: Sequence[str]) -> bytes:
    from matplotlib.colors import to_rgb
    from PIL import Image as PILImage

    extra = [tuple(round(255 * c) for c in to_rgb(colour)) for colour in colours]
    greys = 256 - len(extra)
    palette = [round(255 * i / (greys - 1)) for i in range(greys) for _ in range(3)]
    palette += [v for rgb in extra for v in rgb]
    target = PILImage.new("P", (1, 1))
    target.putpalette(palette)
    image = PILImage.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(palette=target, dither=PILImage.Dither.NONE).save(out, format="PNG",
                                                                      optimize=True)
    return out.getvalue()


def _integer_epochs(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _figure(rows: int, cols: int, size: tuple[float, float]) -> tuple[Any, np.ndarray]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    axes = np.asarray(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def _epochs(run_dir: Path) -> list[dict[str, Any]]:
    return list(_read(run_dir / "metrics.json")["epochs"])


def _fig3(layout: StudyLayout, summary: dict[str, Any]) -> None:
    modes = summary["modes"]
    fig, axes = _figure(2, len(modes), (5.2 * len(modes), 6.4))
    for col, mode in enumerate(modes):
        chosen = summary["detection"][mode]["chosen_gamma"]
        for g in summary["gammas"]:
            rows = _epochs(layout.detector_run(mode, g))
            ep = [r["epoch"] for r in rows]
            label = f"gamma {gamma_label(g)}" + (" (chosen)" if g == chosen else "")
            width = 2.4 if g == chosen else 1.4
            axes[0, col].plot(ep, [r["val_loss"] for r in rows], marker="o", ms=3, lw=width,
                              label=label)
            axes[1, col].plot(ep, [r["val_metric"] for r in rows], marker="o", ms=3, lw=width,
                              label=label)
        axes[0, col].set_title(f"{mode} split: validation loss")
        axes[0, col].set_ylabel("detector loss")
        axes[1, col].set_title(f"{mode} split: validation metric (chooses gamma)")
        axes[1, col].set_ylabel("mIoU (x presence)")
        axes[1, col].set_ylim(0, 1)
        for ax in axes[:, col]:
            _integer_epochs(ax)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle("Fig. 3: RetinaNet validation curves per focal-loss gamma")
    _save(fig, layout.figure("fig3_detector_val_loss"))


def _fig5(layout: StudyLayout, summary: dict[str, Any], mode: str) -> None:
    archs, conds = summary["archs"], summary["conditions"]
    fig, axes = _figure(len(archs), len(conds), (4.2 * len(conds), 3.0 * len(archs)))
    for i, arch in enumerate(archs):
        for j, cond in enumerate(conds):
            ax = axes[i, j]
            rows = _epochs(layout.segmenter_run(mode, arch, cond))
            ep = [r["epoch"] for r in rows]
            ax.plot(ep, [r["train_loss"] for r in rows], marker="o", ms=3, label="train loss")
            ax.plot(ep, [r["val_loss"] for r in rows], marker="s", ms=3, label="validation loss")
            best = summary["segmentation"][mode][arch][cond]["best_epoch"]
            ax.axvline(best, color="grey", ls=":", lw=1, label=f"kept epoch {best}")
            ax.set_title(f"{_ARCH_LABELS[arch]}, {CONDITION_LABELS[cond]}", fontsize=10)
            _integer_epochs(ax)
            ax.set_xlabel("epoch")
            ax.set_ylabel("BCE + Dice loss")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(f"Fig. 5: segmenter loss curves ({mode} split)")
    _save(fig, layout.figure(f"fig5_{mode}_segmenter_loss"))


def _outline(ax: Any, mask: np.ndarray, colour: str, style: str = "solid", lw: float = 1.6) -> None:
    if mask.any():  # matplotlib warns about an empty contour
        ax.contour(mask.astype(np.float32), levels=[0.5], colors=[colour], linewidths=lw,
                   linestyles=style)


def _view_window(h: int, w: int, masks: Sequence[np.ndarray], boxes: Sequence[Sequence[float]],
                 pad: float = 0.35, min_width: float = 232.0) -> tuple[float, float, float, float]:
    """The frame region to show: everything outlined or boxed, padded, with the frame's aspect
    ratio and at least ``min_width`` pixels wide (zooming makes thin outlines readable)."""
    extents = [(float(b[0]), float(b[1]), float(b[2]), float(b[3])) for b in boxes]
    for m in masks:
        ys, xs = np.nonzero(m)
        if xs.size:
            extents.append((float(xs.min()), float(ys.min()), float(xs.max() + 1),
                            float(ys.max() + 1)))
    if not extents:
        return 0.0, 0.0, float(w), float(h)
    xs0, ys0, xs1, ys1 = (list(v) for v in zip(*extents))
    x0, y0, x1, y1 = min(xs0), min(ys0), max(xs1), max(ys1)
    bw, bh = x1 - x0, y1 - y0
    bw, bh = bw * (1 + 2 * pad), bh * (1 + 2 * pad)
    bw = min(max(bw, bh * w / h, min_width), float(w))
    bh = bw * h / w
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = min(max(cx - bw / 2, 0.0), w - bw)
    top = min(max(cy - bh / 2, 0.0), h - bh)
    return float(left), float(top), float(left + bw), float(top + bh)


def _fig6(layout: StudyLayout, summary: dict[str, Any], mode: str) -> None:
    from bpedge.train.data import read_image, read_mask
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    testset = _read(layout.testset_json(mode))
    frames = {f["key"]: f for f in testset["positive"]}
    keys = testset["figure_keys"]
    archs, conds = summary["archs"], summary["conditions"]
    masks = {(a, c): load_figure_masks(layout.figure_masks(mode, a, c)) for a in archs for c in conds}
    evals = {(a, c): {r["key"]: r for r in _read(layout.segmenter_eval(mode, a, c))["images"]}
             for a in archs for c in conds}
    fig, axes = _figure(len(keys), len(conds), (3.0 * len(conds), 2.3 * len(keys) + 0.6))
    for i, key in enumerate(keys):
        image = read_image(Path(frames[key]["image"]))
        truth = read_mask(Path(frames[key]["mask"])) > 0
        row_masks = [truth] + [masks[(a, c)][key] for a in archs for c in conds]
        row_boxes = [evals[(archs[0], c)][key]["box"] for c in conds if c != "none"]
        x0, y0, x1, y1 = _view_window(truth.shape[0], truth.shape[1], row_masks, row_boxes)
        for j, cond in enumerate(conds):
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
            ax.set_xlim(x0, x1)
            ax.set_ylim(y1, y0)
            _outline(ax, truth, _GT_COLOUR, lw=2.2)
            scores = []
            for arch in archs:
                _outline(ax, masks[(arch, cond)][key], _ARCH_COLOURS[arch],
                         "dashed" if arch == "mnet" else "solid")
                scores.append(f"{_ARCH_LABELS[arch]} {evals[(arch, cond)][key]['dice_frame']:.2f}")
            box = evals[(archs[0], cond)][key]["box"]
            if cond != "none":
                ax.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1],
                                       fill=False, ec="yellow", lw=1.0, ls=":"))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("Dice " + ", ".join(scores), fontsize=8)
            if i == 0:
                ax.set_title(CONDITION_LABELS[cond], fontsize=10)
            if j == 0:
                ax.set_ylabel(f"test image {key}\nx {x0:.0f}-{x1:.0f}, y {y0:.0f}-{y1:.0f}",
                              fontsize=9)
    handles = [Line2D([], [], color=_GT_COLOUR, lw=2.2, label="ground truth")]
    handles += [Line2D([], [], color=_ARCH_COLOURS[a], ls="--" if a == "mnet" else "-",
                       label=_ARCH_LABELS[a]) for a in archs]
    handles.append(Line2D([], [], color="yellow", ls=":", label="crop box"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9)
    fig.suptitle(f"Fig. 6: test images, ground truth and predicted outlines ({mode} split)")
    _save(fig, layout.figure(f"fig6_{mode}_examples"),
          line_colours=[_GT_COLOUR, "yellow", *(_ARCH_COLOURS[a] for a in archs)])


def _fig7(layout: StudyLayout, summary: dict[str, Any]) -> None:
    from matplotlib.patches import Patch

    modes, archs, conds = summary["modes"], summary["archs"], summary["conditions"]
    fig, axes = _figure(1, len(modes), (5.6 * len(modes), 4.2))
    width = 0.8 / len(archs)
    for col, mode in enumerate(modes):
        ax = axes[0, col]
        for k, arch in enumerate(archs):
            data, positions = [], []
            for j, cond in enumerate(conds):
                rows = _read(layout.segmenter_eval(mode, arch, cond))["images"]
                data.append([r["dice_frame"] for r in rows if r["present"]])
                positions.append(j + (k - (len(archs) - 1) / 2) * width)
            bp = ax.boxplot(data, positions=positions, widths=width * 0.85, patch_artist=True,
                            showmeans=True, meanprops={"marker": "D", "markerfacecolor": "white",
                                                       "markeredgecolor": "black", "ms": 4})
            for patch in bp["boxes"]:
                patch.set_facecolor(_ARCH_COLOURS[arch])
                patch.set_alpha(0.55)
        ax.set_xticks(range(len(conds)), [CONDITION_LABELS[c].replace(" (", "\n(") for c in conds],
                      fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("Dice, full frame (BP-positive test images)")
        ax.set_title(f"{mode} split")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(handles=[Patch(color=_ARCH_COLOURS[a], alpha=0.55, label=_ARCH_LABELS[a])
                           for a in archs], fontsize=8, loc="lower right")
    fig.suptitle("Fig. 7: Dice per test image (diamond: mean)")
    _save(fig, layout.figure("fig7_dice_boxplots"))


def _dice_vs_iou(layout: StudyLayout, summary: dict[str, Any]) -> None:
    modes, archs = summary["modes"], summary["archs"]
    threshold = summary["iou_threshold"]
    fig, axes = _figure(1, len(modes), (5.4 * len(modes), 4.4))
    for col, mode in enumerate(modes):
        ax = axes[0, col]
        rows = {r["subset"]: r for r in summary["dice_vs_iou"][mode]["rows"]}
        all_row, high_row = rows["all test images"], rows[f"IoU >= {threshold:g}"]
        for arch in archs:
            images = [r for r in _read(layout.segmenter_eval(mode, arch, "detector"))["images"]
                      if r["present"]]
            ax.scatter([r["detector_iou"] for r in images], [r["dice_frame"] for r in images],
                       s=18, alpha=0.7, color=_ARCH_COLOURS[arch], edgecolors="none",
                       label=_legend_means(_ARCH_LABELS[arch], all_row[arch]["detector"],
                                           high_row[arch]["detector"], threshold))
        ax.axvline(threshold, color="black", ls="--", lw=1)
        ax.text(threshold, 1.0, f" IoU {threshold:g}", va="top", fontsize=8)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel("detector IoU with the ground-truth box")
        ax.set_ylabel("Dice, full frame (RetinaNet crop)")
        ax.set_title(f"{mode} split: {all_row['n']} images, {high_row['n']} with IoU >= "
                     f"{threshold:g}", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle("Dice of the detector-crop condition against the detector's IoU")
    _save(fig, layout.figure("dice_vs_iou"))


def _legend_means(name: str, all_mean: float | None, high_mean: float | None,
                  threshold: float) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    return f"{name}: mean {fmt(all_mean)} (all), {fmt(high_mean)} (IoU >= {threshold:g})"


def _reliability(layout: StudyLayout, presence: dict[str, Any]) -> None:
    """Reliability diagram: share of test frames with BP against the mean detector score, per
    score bin (marker area ~ frames), with the diagonal of perfect calibration."""
    rows = [r for r in presence["reliability"] if r["n"]]
    fig, axes = _figure(1, 1, (4.6, 4.4))
    ax = axes[0, 0]
    ax.plot([0, 1], [0, 1], color="#888888", lw=1, ls="--", label="perfectly calibrated")
    ax.plot([r["mean_score"] for r in rows], [r["fraction_present"] for r in rows], color="#d62728",
            lw=1.2, marker="o", label=f"detector score (ECE {presence['ece']:.3f})")
    for r in rows:
        ax.annotate(str(r["n"]), (r["mean_score"], r["fraction_present"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -10))
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("mean detector score in bin")
    ax.set_ylabel("share of test frames with BP")
    ax.set_title("Reliability of the score (frames per bin annotated)")
    ax.legend(loc="upper left", fontsize=8)
    _save(fig, layout.figure("reliability"))


def make_figures(layout: StudyLayout) -> list[Path]:
    """Draw every figure of the study in RUN/figures from RUN/summary.json and the files it was
    made from; returns the PNG paths."""
    summary = _read(layout.summary_json)
    layout.figures.mkdir(parents=True, exist_ok=True)
    _fig3(layout, summary)
    for mode in summary["modes"]:
        _fig5(layout, summary, mode)
        _fig6(layout, summary, mode)
    _fig7(layout, summary)
    _dice_vs_iou(layout, summary)
    if summary.get("crossval"):
        _reliability(layout, summary["crossval"]["presence"])
    return figure_paths(layout, summary["modes"])
