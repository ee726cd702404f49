"""The report's cross-validation section, from ``summary["crossval"]`` (see
:mod:`bpedge.train.experiment.crossval`). Every number is printed with :func:`fmt`."""

from __future__ import annotations

from typing import Any

from bpedge.train.experiment._document import Block, Heading, Image, Paragraph, Table
from bpedge.train.experiment.figures import CONDITION_LABELS

from bpedge._display_text import markdown_text

__all__ = ["ARCH_LABELS", "crossval_blocks", "with_ci"]

ARCH_LABELS = {"unet": "U-Net", "mnet": "M-Net"}


def fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def with_ci(stat: dict[str, Any] | None, digits: int = 4) -> str:
    """``0.6123 [0.5012, 0.7034]``: the value and its 95% CI (``n/a`` parts where undefined)."""
    if stat is None or stat.get("value") is None:
        return "n/a"
    if stat.get("ci_low") is None:
        return f"{fmt(stat['value'], digits)} [CI n/a: {stat['groups']} subject]"
    return (f"{fmt(stat['value'], digits)} [{fmt(stat['ci_low'], digits)}, "
            f"{fmt(stat['ci_high'], digits)}]")


def _headline(cv: dict[str, Any], archs: list[str], conds: list[str]) -> list[Block]:
    mm = cv["pixel_spacing_mm"] is not None
    headers = ["segmenter", "condition", "Dice [95% CI]", "HD95 px [95% CI]", "MSD px [95% CI]",
               "frames without a boundary (empty prediction)"]
    if mm:
        headers[4:4] = ["HD95 mm", "MSD mm"]
    rows = []
    for arch in archs:
        for cond in conds:
            e = cv["segmentation"][arch][cond]
            row = [ARCH_LABELS[arch], CONDITION_LABELS[cond], with_ci(e["dice"]),
                   with_ci(e["hd95"], 1), with_ci(e["msd"], 1)]
            if mm:
                row += [with_ci(e["hd95_mm"], 2), with_ci(e["msd_mm"], 2)]
            row.append(str(e["hd95_undefined"]))
            rows.append(tuple(row))
    return [
        Paragraph(f"Detector (chosen gamma per fold on the validation metric): test mIoU "
                  f"{with_ci(cv['detector_miou'])} over {cv['detector_miou']['n']} BP-positive "
                  f"test frames of {cv['detector_miou']['groups']} subjects."),
        Table(tuple(headers), tuple(rows)),
    ]


def _paired(cv: dict[str, Any], archs: list[str]) -> list[Block]:
    rows = []
    for arch in archs:
        for p in cv["paired"][arch]:
            rows.append((ARCH_LABELS[arch],
                         f"{CONDITION_LABELS[p['a']]} minus {CONDITION_LABELS[p['b']]}",
                         with_ci(p["difference"]),
                         f"{p['subjects_a_better']} of {p['subjects']}"))
    return [
        Heading(3, "Paired comparison of the crop conditions"),
        Paragraph("Dice differences on the same test frames; the interval resamples subjects. "
                  "An interval that excludes 0 is a difference that holds across subjects."),
        Table(("segmenter", "difference", "mean Dice difference [95% CI]",
               "subjects where the first is better"), tuple(rows)),
    ]


def _like(cv: dict[str, Any], archs: list[str]) -> list[Block]:
    like = cv["like_with_like"]
    if "n" not in like:
        return []
    rows = tuple((ARCH_LABELS[a], with_ci(like[a]["detector_subset"]),
                  with_ci(like[a]["gt_subset"]) if like[a]["gt_subset"] else "n/a",
                  fmt(like[a]["published"])) for a in archs)
    return [
        Heading(3, f"Like with like: test frames with detector IoU >= {like['threshold']:g}"),
        Paragraph(f"The paper's RetinaNet-crop Dice was taken over test images whose detector "
                  f"IoU was >= {like['threshold']:g}; here {like['n']} of {like['n_all']} "
                  "BP-positive test frames qualify. The all-frames table above stays the "
                  "headline: this subset hides the detector's misses."),
        Table(("segmenter", "RetinaNet-crop Dice, subset [95% CI]",
               "GT-crop Dice, same frames", "published RetinaNet-crop Dice (random split)"),
              rows),
    ]


def _presence(cv: dict[str, Any]) -> list[Block]:
    pr = cv["presence"]
    # A fold whose validation had frames of one kind only kept the rule's default ("method").
    fold_rows = tuple((f["split"], fmt(f["threshold"], 2)
                       + (" (default)" if f.get("method") == "default" else ""),
                       fmt(f["val_balanced_accuracy"]),
                       f"{f['val_frames_with_bp']} / {f['val_frames_without_bp']}")
                      for f in pr["folds"])
    rel_rows = tuple((f"{r['low']:.1f}-{r['high']:.1f}", str(r["n"]), fmt(r["mean_score"]),
                      fmt(r["fraction_present"])) for r in pr["reliability"])
    return [
        Heading(3, "\"BP present\": a threshold chosen on validation"),
        Paragraph(f"Rule: {pr['rule']}. Test frames: {pr['test_frames_with_bp']} with BP, "
                  f"{pr['test_frames_without_bp']} without (all from test subjects)."),
        Table(("fold", "threshold", "validation balanced accuracy",
               "validation frames with / without BP"), fold_rows),
        Table(("threshold", "sensitivity [95% CI]", "specificity [95% CI]"), (
            ("chosen on validation (per fold)", with_ci(pr["chosen"]["sensitivity"]),
             with_ci(pr["chosen"]["specificity"])),
            (f"fixed {pr['fixed']['threshold']:g}", with_ci(pr["fixed"]["sensitivity"]),
             with_ci(pr["fixed"]["specificity"])),
        )),
        Paragraph(f"Calibration of the detector score as P(BP present) on the test frames: "
                  f"expected calibration error (ECE, 10 bins) {fmt(pr['ece'])}."),
        Table(("score bin", "frames", "mean score", "share with BP"), rel_rows),
        Image("figures/reliability.png", "Reliability diagram of the detector score"),
    ]


def _margins(cv: dict[str, Any], archs: list[str]) -> list[Block]:
    sweeps = cv.get("margin_sweep") or {}
    blocks: list[Block] = []
    for arch in archs:
        sw = sweeps.get(arch)
        if not sw:
            continue
        rows = tuple((f"{r['margin']:g}" + (" (trained)" if r["margin"] == sw["trained_margin"]
                                             else ""),
                      fmt(r["val_dice"]), with_ci(r["test_dice"])) for r in sw["rows"])
        blocks += [
            Heading(3, f"Crop margin swept ({ARCH_LABELS[arch]}, RetinaNet crop)"),
            Paragraph(f"The segmenter trained with margin {sw['trained_margin']:g} (the value its "
                      f"bundle carries) evaluated at other margins around the detector's box. "
                      f"Validation Dice peaks at {sw['chosen_on_validation']:g}."),
            Table(("margin", "validation Dice", "test Dice [95% CI]"), rows),
        ]
    return blocks


def _per_subject(cv: dict[str, Any], archs: list[str], conds: list[str]) -> list[Block]:
    headers = ["subject", "fold", "BP frames", "detector mIoU"]
    headers += [f"{ARCH_LABELS[a]}: {CONDITION_LABELS[c]}" for a in archs for c in conds]
    rows = tuple(
        # A subject's name comes from the data's file names.
        (markdown_text(s["subject"]), s["fold"] or "none (no BP frame)", str(s["frames"]),
         fmt(s["detector_miou"]), *(fmt(s["dice"][a][c]) for a in archs for c in conds))
        for s in cv["per_subject"])
    blocks: list[Block] = [Heading(3, "Per subject (Dice over the subject's BP-positive test "
                                      "frames)")]
    no_bp = cv.get("subjects_without_bp") or []
    if no_bp:
        blocks.append(Paragraph(
            f"{len(no_bp)} subject(s) have no BP frame at all "
            f"({markdown_text(', '.join(no_bp))}): the folds deal the subjects with BP frames, "
            "so these are in no fold and none of their (empty) frames is tested; they count in "
            "no number above."))
    return [*blocks, Table(tuple(headers), rows)]


def crossval_blocks(summary: dict[str, Any]) -> list[Block]:
    """The section, or nothing when the study ran without ``--folds``."""
    cv = summary.get("crossval")
    if not cv:
        return []
    archs, conds = list(summary["archs"]), list(summary["conditions"])
    boot = cv["bootstrap"]
    return [
        Heading(2, f"Subject-wise {len(cv['folds'])}-fold cross-validation (the headline)"),
        Paragraph(f"Every subject is tested in exactly one fold, by models that never saw it; "
                  f"the folds' test frames are pooled. Numbers are means over BP-positive test "
                  f"frames with a {boot['level']:.0%} percentile-bootstrap interval over "
                  f"{boot['unit']}s ({boot['samples']} resamples, seed {boot['seed']}). Dice is "
                  "full-frame; HD95 and mean surface distance (MSD) are in pixels, over frames "
                  "with a non-empty prediction."),
        *_headline(cv, archs, conds),
        *_paired(cv, archs),
        *_like(cv, archs),
        *_presence(cv),
        *_margins(cv, archs),
        *_per_subject(cv, archs, conds),
    ]
