"""Where every artefact of a study lives under RUN, so the runner, evaluation, figures and report
agree on one set of names.

::

    RUN/study.json                  options, versions, timings (the runner)
    RUN/steps.jsonl                 one line per step per invocation: ran | resumed | skipped
    RUN/data.json                   data fingerprint, counts, de-duplication
    RUN/models.json                 parameters and FLOPs of each model as configured
    RUN/{mode}/split.json           the split every model of that mode trains on
    RUN/{mode}/testset.json         test frames: BP-positive (the split's) and empty ones
    RUN/{mode}/valset.json          validation frames likewise (chooses the "BP present" threshold)
    RUN/{mode}/detector/gamma_{g}/  a detector training run (bpedge train detector)
    RUN/{mode}/segmenter/{arch}_{condition}/   a segmenter training run
    RUN/{mode}/eval/...             per-test-image metrics (JSON)
    RUN/summary.json                every table of the report
    RUN/figures/*.png, RUN/report.md, RUN/report.html
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["StudyLayout", "gamma_label"]


def gamma_label(gamma: float) -> str:
    """``2.0`` -> ``"2"``, ``0.5`` -> ``"0.5"``: gamma as it appears in names and tables."""
    return f"{gamma:g}"


@dataclass(frozen=True)
class StudyLayout:
    """Paths of one study folder ``root``."""

    root: Path

    @property
    def study_json(self) -> Path:
        return self.root / "study.json"

    @property
    def step_log(self) -> Path:
        return self.root / "steps.jsonl"

    @property
    def data_json(self) -> Path:
        return self.root / "data.json"

    @property
    def models_json(self) -> Path:
        return self.root / "models.json"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def mode_dir(self, mode: str) -> Path:
        return self.root / mode

    def split_json(self, mode: str) -> Path:
        return self.mode_dir(mode) / "split.json"

    def testset_json(self, mode: str) -> Path:
        return self.mode_dir(mode) / "testset.json"

    def valset_json(self, mode: str) -> Path:
        return self.mode_dir(mode) / "valset.json"

    def detector_run(self, mode: str, gamma: float) -> Path:
        return self.mode_dir(mode) / "detector" / f"gamma_{gamma_label(gamma)}"

    def segmenter_run(self, mode: str, arch: str, condition: str) -> Path:
        return self.mode_dir(mode) / "segmenter" / f"{arch}_{condition}"

    def eval_dir(self, mode: str) -> Path:
        return self.mode_dir(mode) / "eval"

    def detector_eval(self, mode: str, gamma: float) -> Path:
        return self.eval_dir(mode) / f"detector_gamma_{gamma_label(gamma)}.json"

    def detector_val_eval(self, mode: str, gamma: float) -> Path:
        """The detector's boxes and scores on the validation frames (BP-positive and empty)."""
        return self.eval_dir(mode) / f"detector_gamma_{gamma_label(gamma)}_val.json"

    def gamma_choice(self, mode: str) -> Path:
        return self.eval_dir(mode) / "gamma_choice.json"

    def segmenter_eval(self, mode: str, arch: str, condition: str) -> Path:
        return self.eval_dir(mode) / f"segmenter_{arch}_{condition}.json"

    def margin_sweep(self, mode: str, arch: str) -> Path:
        """Detector-crop Dice of ``arch`` over a grid of crop margins (validation and test)."""
        return self.eval_dir(mode) / f"margin_sweep_{arch}.json"

    def figure_masks(self, mode: str, arch: str, condition: str) -> Path:
        """Full-frame masks of the Fig. 6 images (bit-packed ``.npz``)."""
        return self.eval_dir(mode) / f"figure_masks_{arch}_{condition}.npz"

    def figure(self, name: str) -> Path:
        return self.figures / f"{name}.png"
