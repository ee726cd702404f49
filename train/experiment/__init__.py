"""``bpedge experiment``: the method's study end to end (detector per gamma, segmenters under three
conditions, both split modes), its tables, figures and report."""

from bpedge.train.experiment.layout import StudyLayout
from bpedge.train.experiment.options import ExperimentOptions
from bpedge.train.experiment.runner import StudyOutcome, plan_study, run_study

__all__ = ["ExperimentOptions", "StudyLayout", "StudyOutcome", "plan_study", "run_study"]
