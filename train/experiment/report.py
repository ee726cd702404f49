"""RUN/report.md and RUN/report.html, generated from the study's JSON files only.

Sources: RUN/summary.json (every table), RUN/data.json (data fingerprint and counts),
RUN/study.json (command, options, resolved presets, versions), RUN/models.json (parameters and
FLOPs), RUN/timings.json (wall time) and
the published numbers of :mod:`bpedge.train.experiment.published` (carried in summary.json).
Every number is formatted by :func:`fmt` (4 decimals), so a test can read the tables back and
compare them with the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bpedge.train.experiment._document import (
    Block,
    Code,
    Heading,
    Image,
    Items,
    Paragraph,
    Table,
    to_html,
    to_markdown,
)
from bpedge.train.experiment._files import write_text
from bpedge.train.experiment.figures import CONDITION_LABELS
from bpedge.train.experiment.layout import StudyLayout, gamma_label
from bpedge.train.experiment.report_crossval import crossval_blocks
from bpedge.train.experiment.tables import DETECTOR_METRIC_LABELS

from bpedge._display_text import markdown_code, markdown_text

__all__ = ["build_report", "fmt", "write_report"]

_ARCH = {"unet": "U-Net", "mnet": "M-Net"}
_MODEL_NAMES = {"detector": "RetinaNet", **_ARCH}
_PRESENCE_METRIC = ("mIoU x presence (the detector's validation metric): half the mean over "
                    "validation BP frames of IoU x the \"BP present\" score, half the mean over "
                    "the empty frames of validation-only subjects of 1 - the score. ")
TITLE = "bpedge study: two-stage brachial plexus segmentation"


def fmt(value: float | None, digits: int = 4) -> str:
    """A metric as the report prints it: ``n/a`` for ``None``, else ``digits`` decimals."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def _opt(value: Any) -> str:
    """An optional option's value as the report shows it."""
    return "not set" if value is None else str(value)


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


def _condition(cond: str, chosen: dict[str, float]) -> str:
    if cond != "detector":
        return CONDITION_LABELS[cond]
    gammas = ", ".join(f"{m} {gamma_label(g)}" for m, g in chosen.items())
    return f"{CONDITION_LABELS[cond]} (gamma: {gammas})"


def _without_bp(data: dict[str, Any]) -> str:
    """The subjects no subject split uses, as the Setup line names them ("" when none)."""
    no_bp = data.get("subjects_without_bp") or []  # absent from studies made before it was kept
    if not no_bp:
        return ""
    # Subject names come from the data's file names.
    return (f" ({len(no_bp)} with no BP frame, in no subject split or fold: "
            f"{markdown_text(', '.join(no_bp))})")


def _setup(study: dict[str, Any], data: dict[str, Any], summary: dict[str, Any],
           timings: dict[str, Any]) -> list[Block]:
    opts = study["options"]
    blocks: list[Block] = [
        Heading(2, "Setup"),
        Paragraph("Command(s) that made this study, in order (a re-run skips finished steps):"),
        Code("\n".join(study["commands"]) or "(run from Python; options below)"),
        Items((
            # The data path is the user's: any character may be in it.
            (f"Data: {markdown_code(data['root'])}, fingerprint "
             f"{markdown_code(data['fingerprint'])}"),
            (f"Frames: {data['frames']} ({data['positive']} with BP, {data['empty']} empty) "
             f"from {data['subjects']} subjects{_without_bp(data)}; {len(data['problems'])} "
             "file problem(s) reported"),
            (f"De-duplication (--dedup): {'on' if data['dedup'] else 'off'}; "
             f"{len(data['dedup_removed'])} empty near-copies of BP frames removed"),
            (f"Preset {markdown_code(opts['preset'])}; seed {opts['seed']} (split, "
             f"initialisation, shuffling, choice of empty test frames); --limit "
             f"{_opt(opts['limit'])}; device {markdown_code(study['device'])}"),
            (f"Epochs: detector {opts['resolved_epochs']['detector']}, "
             + ", ".join(f"{_ARCH[a]} {opts['resolved_epochs'][a]}" for a in opts["archs"])
             + f" (--epochs-scale {_opt(opts['epochs_scale'])}, --detector-epochs "
             f"{_opt(opts['detector_epochs'])}, --segmenter-epochs "
             f"{_opt(opts['segmenter_epochs'])}; the preset's own epochs where not set)"),
            (f"Wall time: {fmt(timings['total_seconds'] / 60, 1)} min of steps run, over "
             f"{len(timings['invocations'])} invocation(s) (the report step not counted)"),
        )),
        Heading(3, "Split sizes (frames)"),
        Table(("split mode", "train (BP)", "validation (BP)", "test (BP)", "test (empty)"),
              tuple((m, str(s["train"]), str(s["val"]), str(s["test"]), str(s["test_empty"]))
                    for m, s in summary["split_sizes"].items())),
        Paragraph("The segmenters train and validate on BP-positive frames only, as the method "
                  "did; the detector also on empty frames where its preset says so (training: "
                  "those of train-only subjects, `empty_fraction`; validation: those of "
                  "validation-only subjects, `select_on`). Empty test frames (never trained on; "
                  "in a subject split, from the test subjects) serve the \"BP present\" call "
                  "and the Kaggle-style figures."),
    ]
    return blocks


def _detection(summary: dict[str, Any]) -> list[Block]:
    modes, det = summary["modes"], summary["detection"]
    pub = summary["published"]["miou"]
    label = {m: DETECTOR_METRIC_LABELS[det[m]["metric"]] for m in modes}
    headers = ["gamma"]
    for m in modes:
        headers += [f"{m}: val {label[m]}", f"{m}: test mIoU"]
    headers.append("published test mIoU")
    rows = []
    for k, g in enumerate(summary["gammas"]):
        row = [gamma_label(g)]
        for m in modes:
            r = det[m]["rows"][k]
            mark = " (chosen)" if g == det[m]["chosen_gamma"] else ""
            row += [fmt(r["val_metric"]) + mark, fmt(r["test_miou"])]
        row.append(fmt(pub.get(gamma_label(g))))
        rows.append(tuple(row))
    chosen = "; ".join(f"{m}: gamma {gamma_label(det[m]['chosen_gamma'])}" for m in modes)
    return [
        Heading(2, "Detection: RetinaNet by focal-loss gamma (Table 2)"),
        Paragraph("mIoU: mean IoU of the top box with the ground-truth box over BP-positive "
                  "frames. "
                  + (_PRESENCE_METRIC if any(det[m]["metric"] == "val_miou_presence"
                                             for m in modes) else "")
                  + "The kept epoch and the gamma used downstream are chosen on the validation "
                  f"metric, never on test: {chosen}."),
        Table(tuple(headers), tuple(rows)),
        Image("figures/fig3_detector_val_loss.png",
              "Fig. 3: validation loss and validation metric per epoch for each gamma"),
    ]


def _segmentation(summary: dict[str, Any]) -> list[Block]:
    modes, seg = summary["modes"], summary["segmentation"]
    chosen = {m: summary["detection"][m]["chosen_gamma"] for m in modes}
    pub = summary["published"]["dice"]
    headers = ["segmenter", "condition"]
    headers += [f"{m}: Dice mean ± sd" for m in modes]
    headers.append("published Dice")
    overview = []
    for arch in summary["archs"]:
        for cond in summary["conditions"]:
            row = [_ARCH[arch], _condition(cond, chosen)]
            for m in modes:
                s = seg[m][arch][cond]["frame"]
                row.append(f"{fmt(s['mean'])} ± {fmt(s['sd'])}")
            row.append(fmt(pub.get(arch, {}).get(cond)))
            overview.append(tuple(row))
    blocks: list[Block] = [
        Heading(2, "Segmentation: U-Net and M-Net under three conditions (Table 3)"),
        Paragraph("Dice as the method reports it: BP-positive test frames only, computed on the "
                  "full frame after pasting the 96x96 prediction back through the crop box "
                  "(threshold 0.5), so the three conditions are scored on the same pixels."),
        Table(tuple(headers), tuple(overview)),
    ]
    for m in modes:
        rows = []
        for arch in summary["archs"]:
            for cond in summary["conditions"]:
                e = seg[m][arch][cond]
                f, c = e["frame"], e["crop"]
                rows.append((
                    _ARCH[arch], CONDITION_LABELS[cond], str(f["n"]), fmt(f["mean"]), fmt(f["sd"]),
                    fmt(f["median"]), f"{fmt(f['q1'])} to {fmt(f['q3'])}", fmt(c["mean"]),
                    fmt(e["val_dice"]), f"{e['best_epoch']} of {e['epochs']}",
                ))
        blocks += [
            Heading(3, f"{m} split: detail"),
            Table(("segmenter", "condition", "n", "Dice mean (full frame)", "sd", "median",
                   "IQR", "in-box crop Dice mean (96x96, not comparable across conditions)",
                   "val Dice (crop)", "kept epoch"), tuple(rows)),
        ]
    blocks.append(Image("figures/fig7_dice_boxplots.png",
                        "Fig. 7: full-frame Dice per BP-positive test image"))
    for m in modes:
        blocks += [
            Image(f"figures/fig5_{m}_segmenter_loss.png",
                  f"Fig. 5: segmenter train and validation loss ({m} split)"),
            Image(f"figures/fig6_{m}_examples.png",
                  f"Fig. 6: test images with the ground truth and each segmenter's outline "
                  f"({m} split; Dice per panel)"),
        ]
    return blocks


def _dice_vs_iou(summary: dict[str, Any]) -> list[Block]:
    t = summary["iou_threshold"]
    blocks: list[Block] = [
        Heading(2, "Dice against detector IoU"),
        Paragraph(f"The paper reported its detector-crop Dice on test images whose detector IoU "
                  f"was at least {t:g}; that subset hides the detector's failures, so both it "
                  "and all test images are shown. Ground-truth-crop Dice on the same images is "
                  "given for reference (full-frame Dice, BP-positive frames)."),
    ]
    for m in summary["modes"]:
        headers = ["subset", "n", "mean IoU"]
        for arch in summary["archs"]:
            headers += [f"{_ARCH[arch]}: RetinaNet-crop Dice", f"{_ARCH[arch]}: GT-crop Dice"]
        rows = []
        for r in summary["dice_vs_iou"][m]["rows"]:
            row = [r["subset"], str(r["n"]), fmt(r["mean_iou"])]
            for arch in summary["archs"]:
                row += [fmt(r[arch]["detector"]), fmt(r[arch]["gt"])]
            rows.append(tuple(row))
        blocks += [Heading(3, f"{m} split"), Table(tuple(headers), tuple(rows))]
    blocks.append(Image("figures/dice_vs_iou.png",
                        "Dice of the RetinaNet-crop condition against the detector's IoU"))
    return blocks


def _empty_frames(summary: dict[str, Any]) -> list[Block]:
    blocks: list[Block] = [Heading(2, "Empty frames: Kaggle-style figures")]
    if all(summary["empty_frames"][m] is None for m in summary["modes"]):
        return blocks + [Paragraph("The test sets hold no empty frames, so presence accuracy "
                                   "and the Kaggle-style mean Dice are not reported.")]
    blocks.append(Paragraph(
        "Over all test frames, BP-positive and empty. A frame counts as predicted BP when the "
        "emitted mask is non-empty; in the RetinaNet-crop condition nothing is emitted when the "
        f"detector score is below {summary['score_threshold']:g}. Kaggle-style mean Dice: "
        "empty prediction on an empty frame = 1. The ground-truth crop needs a ground-truth box, "
        "which empty frames lack (n/a). These are NOT the method's Dice (above)."))
    for m in summary["modes"]:
        e = summary["empty_frames"][m]
        if e is None:
            blocks += [Heading(3, f"{m} split"), Paragraph("No empty test frames.")]
            continue
        rows = []
        for arch in summary["archs"]:
            for cond in summary["conditions"]:
                c = e[arch][cond]
                values = (("n/a",) * 4 if c is None else
                          (fmt(c["presence_accuracy"]), fmt(c["empty_correct"]),
                           fmt(c["positive_found"]), fmt(c["kaggle_mean_dice"])))
                rows.append((_ARCH[arch], CONDITION_LABELS[cond], *values))
        blocks += [
            Heading(3, f"{m} split ({e['n_positive']} BP + {e['n_empty']} empty test frames)"),
            Table(("segmenter", "condition", "presence accuracy (all frames)",
                   "empty frames called empty", "BP frames called BP",
                   "Kaggle-style mean Dice (all frames)"), tuple(rows)),
        ]
    return blocks


def _provenance(study: dict[str, Any], timings: dict[str, Any], summary: dict[str, Any],
                models: dict[str, Any]) -> list[Block]:
    return [
        Heading(2, "Published numbers"),
        Paragraph(f"Source: {summary['published']['source']}. Those numbers are for the real "
                  "data; on other data (a phantom in particular) they are context, not a target."),
        Heading(2, "Models"),
        Table(("model", "input (N, C, H, W)", "parameters", "GFLOPs per inference"),
              tuple((_MODEL_NAMES.get(name, name), "x".join(str(v) for v in m["input"]),
                     f"{m['parameters']:,}", fmt(m["flops"] / 1e9, 3))
                    for name, m in models.items())),
        Paragraph("FLOPs as torch's FlopCounterMode counts them: 2 per multiply-add of "
                  "convolutions and matrix products."),
        Heading(2, "Model configurations as trained"),
        Paragraph("Read back from every training run's config.json (the detectors' focal-loss "
                  "gamma left out); a model listed with more than one configuration was trained "
                  "with different settings in different runs."),
        Code(json.dumps({k: v[0] if len(v) == 1 else v
                         for k, v in summary["trained_configs"].items()}, indent=2)),
        Heading(2, "Versions"),
        Table(("component", "version"), tuple((k, str(v)) for k, v in study["versions"].items())),
        Heading(2, "Wall time per step"),
        Table(("step", "seconds"), tuple((s["step"], fmt(s["seconds"], 1))
                                         for s in timings["steps"])),
    ]


def build_report(layout: StudyLayout) -> list[Block]:
    """The report's blocks, from the study files in ``layout``."""
    summary = _read(layout.summary_json)
    study = _read(layout.study_json)
    data = _read(layout.data_json)
    timings = _read(layout.root / "timings.json")
    blocks: list[Block] = [
        Heading(1, TITLE),
        Paragraph("Generated by `bpedge experiment` from the study's metrics files "
                  "(summary.json, data.json, study.json, timings.json); no number is typed by "
                  "hand. Dice and IoU are in [0, 1]."),
    ]
    blocks += _setup(study, data, summary, timings)
    blocks += crossval_blocks(summary)
    blocks += _detection(summary)
    blocks += _segmentation(summary)
    blocks += _dice_vs_iou(summary)
    blocks += _empty_frames(summary)
    blocks += _provenance(study, timings, summary, _read(layout.models_json))
    return blocks


def write_report(layout: StudyLayout) -> tuple[Path, Path]:
    """Write RUN/report.md and RUN/report.html; returns their paths."""
    blocks = build_report(layout)
    write_text(layout.report_md, to_markdown(blocks))
    write_text(layout.report_html, to_html(blocks, TITLE))
    return layout.report_md, layout.report_html
