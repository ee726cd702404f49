"""Studies on valid but unusual data: what must refuse before any model trains, and what must be
reported rather than silently left out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("matplotlib")

from bpedge.train.experiment import ExperimentOptions, StudyLayout, run_study


def _options(data: Path, out: Path, **kw: Any) -> ExperimentOptions:
    base: dict[str, Any] = {
        "preset": "tiny", "gammas": (2.0,), "split": "subject", "archs": ("unet",),
        "detector_epochs": 1, "segmenter_epochs": 1, "figure_images": 1, "progress": False,
    }
    return ExperimentOptions(data=data, out=out, **{**base, **kw})


def test_too_few_subjects_for_the_folds_refuses_before_the_random_split_trains(
        phantom_dir: Path, tmp_path: Path) -> None:
    # The session phantom has 4 subjects; 3 folds need 5. With --split both the random split
    # came first and trained all its models before the fold split refused.
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="3 folds need at least 5 subjects"):
        run_study(_options(phantom_dir, out, split="both", folds=3))
    layout = StudyLayout(out)
    assert not layout.detector_run("random", 2.0).exists()
    assert not (out / "random" / "segmenter").exists()


@pytest.fixture(scope="module")
def no_bp_subject_study(tmp_path_factory: pytest.TempPathFactory) -> StudyLayout:
    """A 2-fold study of 4 small subjects with BP frames and subject 5, whose every mask is
    empty."""
    import numpy as np
    import tifffile
    from bpedge.train.data.phantom import PhantomConfig, generate_phantom

    data = generate_phantom(tmp_path_factory.mktemp("data") / "train",
                            PhantomConfig(subjects=5, frames=4, height=128, width=160, seed=3))
    for mask in data.glob("5_*_mask.tif"):
        tifffile.imwrite(mask, np.zeros_like(tifffile.imread(mask)), compression="lzw")
    out = tmp_path_factory.mktemp("cv") / "run"
    run_study(_options(data, out, folds=2))
    return StudyLayout(out)


def test_a_subject_without_bp_frames_is_listed_not_silently_dropped(
        no_bp_subject_study: StudyLayout) -> None:
    import json

    layout = no_bp_subject_study
    assert json.loads(layout.data_json.read_text())["subjects_without_bp"] == ["5"]
    cv = json.loads(layout.summary_json.read_text())["crossval"]
    # Subject 5 is in no fold (the folds deal subjects with BP frames), so nothing of it is tested.
    assert cv["subjects_without_bp"] == ["5"]
    rows = {r["subject"]: r for r in cv["per_subject"]}
    assert sorted(rows) == ["1", "2", "3", "4", "5"]
    assert rows["5"]["fold"] is None and rows["5"]["frames"] == 0
    assert rows["5"]["dice"]["unet"] == {"none": None, "detector": None, "gt": None}
    assert cv["segmentation"]["unet"]["gt"]["dice"]["groups"] == 4
    report = layout.report_md.read_text()
    assert "from 5 subjects (1 with no BP frame, in no subject split or fold: 5)" in report
    assert "| 5 | none (no BP frame) | 0 | n/a | n/a | n/a | n/a |" in report
    assert "1 subject(s) have no BP frame at all (5)" in report
