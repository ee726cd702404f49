"""The study plan: a list of named steps that trains, evaluates and reports the method's study.

For each split mode: the split and test set; a RetinaNet per focal-loss gamma and its test IoUs;
the gamma with the best VALIDATION mIoU; per segmenter a model for each condition (whole frame,
the chosen detector's crop, the ground-truth crop) and its test Dice. Then the tables
(RUN/summary.json), the figures and the report. Every step is skipped when finished and resumed
when its training run stopped part-way (see :mod:`bpedge.train.experiment._steps`).

All models of a split mode train on one split: the trainers make it from the same data, seed,
``--dedup`` and ``--limit``, and every run's split.json is checked against RUN/{mode}/split.json.
"""

from __future__ import annotations

import json
import platform
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bpedge.train.experiment._files import refuse_foreign, write_bytes, write_json
from bpedge.train.experiment._steps import (
    Step,
    StepRecord,
    StepState,
    check_no_foreign_best,
    file_sha256,
    read_step_log,
    run_steps,
    training_state,
)
from bpedge.train.experiment.layout import StudyLayout, gamma_label
from bpedge.train.experiment.options import CONDITIONS, ExperimentOptions, split_of

from bpedge._out_dir import claim_out_dir, lock_out_dir

__all__ = ["StudyOutcome", "plan_study", "run_study"]

#: Relative cost of one epoch of each kind of work, for the study's ETA (detector epoch = 1).
_SEGMENTER_EPOCH, _EVAL, _LIGHT = 0.6, 0.3, 0.2
#: Options that define what a study folder holds; changing them needs a new --out.
_FIXED_OPTIONS = ("data", "preset", "seed", "limit", "dedup", "on_error", "folds",
                  "backbone_weights")
_PATH_OPTIONS = ("data", "backbone_weights")


@dataclass(frozen=True)
class StudyOutcome:
    """What one invocation did: its step records and where the report is."""

    layout: StudyLayout
    records: list[StepRecord]

    @property
    def report(self) -> Path:
        return self.layout.report_md


def _read(path: Path) -> Any:
    return json.loads(path.read_text())


# --- Steps' actions -------------------------------------------------------------------------


def _write_data(opts: ExperimentOptions, layout: StudyLayout) -> None:
    from bpedge.train.data import find_contradictory_duplicates, scan_dataset

    index = scan_dataset(opts.data, on_error=opts.on_error,  # type: ignore[arg-type]
                         progress=opts.progress)
    removed: list[list[Any]] = []
    if opts.dedup:
        report = find_contradictory_duplicates(index.frames)
        removed = [list(p) for p in report.pairs]
    write_json(layout.data_json, {
        "root": str(index.root.resolve()),
        "fingerprint": index.fingerprint,
        "frames": len(index.frames),
        "positive": len(index.positive()),
        "empty": len(index.frames) - len(index.positive()),
        "subjects": len(index.subjects()),
        # The subject split and its folds deal only subjects with a BP frame (what the models
        # train and are scored on): these are in none of them, and the report says so.
        "subjects_without_bp": [str(s) for s in sorted(
            set(index.subjects()) - {f.subject for f in index.positive()})],
        "problems": [{"path": str(p.path), "reason": p.reason} for p in index.problems],
        "dedup": opts.dedup,
        "dedup_removed": removed,  # [kept positive key, removed empty key, similarity]
    })


def _refuse_changed_data(opts: ExperimentOptions, layout: StudyLayout) -> None:
    """A study continued on other files at the same --data path: every finished step was
    skipped as done (exit 0, the report on the old data's models), and a step still to run
    trained on the new data. Its data.json fingerprint is compared first (reading every frame
    once, as the data step did)."""
    if not (layout.data_json.is_file() and layout.study_json.is_file()):
        return
    if not _same_option("data", _read(layout.study_json)["options"].get("data"),
                        str(opts.data.resolve())):
        return  # another folder: study.json's check of the options refuses it, by name
    from bpedge.train.data import scan_dataset

    # Not data.json's root to decide whether this is the same folder: a Kaggle folder's root is
    # its train/ subfolder, never equal to --data, and the check was skipped.
    recorded = _read(layout.data_json).get("fingerprint")
    now = scan_dataset(opts.data, on_error=opts.on_error,  # type: ignore[arg-type]
                       progress=opts.progress).fingerprint
    if recorded != now:
        raise ValueError(
            f"--data {opts.data} does not hold the files this study was made from (data.json "
            f"fingerprint {str(recorded)[:12]}..., now {now[:12]}...): give the original data, "
            "or a new --out for a study of this data")


def _write_models(opts: ExperimentOptions, layout: StudyLayout) -> None:
    """RUN/models.json: parameters and FLOPs of one inference of each model as configured."""
    from bpedge.train.models import build_detector, build_segmenter, model_complexity
    from bpedge.train.presets import DetectorConfig, SegmenterConfig, config_from_dict

    presets = _resolved_presets(opts)
    out = {}
    for name, cfg_dict in presets.items():
        if name == "detector":
            cfg = config_from_dict(DetectorConfig, cfg_dict)
            model, hw = build_detector(cfg), cfg.input_hw
        else:
            cfg = config_from_dict(SegmenterConfig, cfg_dict)
            model, hw = build_segmenter(cfg), cfg.crop_hw
        params, flops = model_complexity(model, (1, 1, *hw))
        out[name] = {"input": [1, 1, *hw], "parameters": params, "flops": flops}
    write_json(layout.models_json, out)


def _split_options(opts: ExperimentOptions, name: str) -> dict[str, Any]:
    """The trainers' split options for the split called ``name`` (a mode or a K-fold fold)."""
    mode, fold = split_of(name)
    return {"split": mode, "folds": opts.folds if fold is not None else None, "fold": fold}


def _write_split(opts: ExperimentOptions, layout: StudyLayout, mode: str) -> None:
    import dataclasses

    import torch
    from bpedge.train._run_setup import RunOptions, prepare_data
    from bpedge.train.distributed import DistContext
    from bpedge.train.experiment.evaluate import build_testset

    ctx = DistContext(0, 1, 0, torch.device("cpu"), initialized=False)
    # prepare_data writes split.json into its --out with a plain atomic write; the study's copy
    # must go through _files (its record says the study wrote it), so the trainers' copy is
    # left in a scratch folder and the split written from what prepare_data returns.
    with tempfile.TemporaryDirectory(prefix="bpedge-split-") as scratch:
        run = RunOptions(data=opts.data, out=Path(scratch), preset=opts.preset,
                         seed=opts.seed, dedup=opts.dedup, on_error=opts.on_error,
                         limit=opts.limit, progress=opts.progress, **_split_options(opts, mode))
        prepared = prepare_data(run, opts.seed, ctx, None)
        write_bytes(layout.split_json(mode), (Path(scratch) / "split.json").read_bytes())
    dropped = {pair[1] for pair in _read(layout.data_json)["dedup_removed"]}
    frames = [f for f in prepared.index.frames if f.key not in dropped]
    split_mode = split_of(mode)[0]
    testset = build_testset(prepared.split, frames, split_mode, opts.seed, opts.figure_images)
    write_json(layout.testset_json(mode), testset)
    # The validation frames with empty ones of the validation subjects: what chooses the
    # "BP present" threshold (never the test frames).
    as_val = dataclasses.replace(prepared.split, val=prepared.split.test, test=prepared.split.val)
    test_empty = {f["key"] for f in testset["empty"]}
    valset = build_testset(as_val, [f for f in frames if f.key not in test_empty], split_mode,
                           opts.seed, 1)
    write_json(layout.valset_json(mode), valset)


def _check_same_split(run_dir: Path, layout: StudyLayout, mode: str) -> None:
    ours, theirs = _read(layout.split_json(mode)), _read(run_dir / "split.json")
    for part in ("train", "val", "test"):
        if ours[part] != theirs[part]:
            raise ValueError(
                f"{run_dir} trained on another {part} split than {layout.split_json(mode)}; "
                "was the data changed during the study? Start again with a new --out"
            )


def _train_detector(opts: ExperimentOptions, layout: StudyLayout, mode: str, gamma: float,
                    resume: bool) -> None:
    from bpedge.train.train_detector import DetectorOptions, train_detector

    run_dir = layout.detector_run(mode, gamma)
    train_detector(DetectorOptions(
        data=opts.data, out=run_dir, preset=opts.preset, seed=opts.seed,
        epochs=opts.detector_epoch_count(), device=opts.device, resume=resume, dedup=opts.dedup,
        on_error=opts.on_error, limit=opts.limit, progress=opts.progress, gamma=gamma,
        weights=opts.backbone_weights, **_split_options(opts, mode),
    ))
    _check_same_split(run_dir, layout, mode)


def _chosen_detector(layout: StudyLayout, mode: str) -> tuple[float, Path]:
    choice = _read(layout.gamma_choice(mode))
    gamma = float(choice["chosen_gamma"])
    return gamma, layout.detector_run(mode, gamma) / "best.pt"


def _segmenter_state(opts: ExperimentOptions, layout: StudyLayout, mode: str, arch: str,
                     condition: str) -> StepState:
    run_dir = layout.segmenter_run(mode, arch, condition)
    boxes = run_dir / "detector_boxes.json"
    if condition == "detector" and boxes.is_file() and (run_dir / "last.pt").is_file():
        # Compared by content, so a study folder that was moved still matches its detector.
        used = _read(boxes)["detector_sha256"]
        chosen = _chosen_detector(layout, mode)[1]
        if used != file_sha256(chosen):
            raise ValueError(
                f"{run_dir} was trained on the boxes of another detector than the chosen one "
                f"({chosen}; the gamma list or the detectors changed); remove {run_dir} to "
                "retrain it on the chosen detector's boxes"
            )
    return training_state(run_dir, opts.segmenter_epoch_count(arch))


def _train_segmenter(opts: ExperimentOptions, layout: StudyLayout, mode: str, arch: str,
                     condition: str, resume: bool) -> None:
    from bpedge.train.train_segmenter import SegmenterOptions, train_segmenter

    run_dir = layout.segmenter_run(mode, arch, condition)
    detector = _chosen_detector(layout, mode)[1] if condition == "detector" else None
    train_segmenter(SegmenterOptions(
        data=opts.data, out=run_dir, preset=opts.preset, seed=opts.seed,
        **_split_options(opts, mode),
        epochs=opts.segmenter_epoch_count(arch), device=opts.device, resume=resume,
        dedup=opts.dedup, on_error=opts.on_error, limit=opts.limit, progress=opts.progress,
        arch=arch, crop=condition, detector=detector,
    ))
    _check_same_split(run_dir, layout, mode)


def _evaluate_segmenter(opts: ExperimentOptions, layout: StudyLayout, mode: str, arch: str,
                        condition: str) -> None:
    from bpedge.train.experiment.evaluate import evaluate_segmenter

    gamma, _ = _chosen_detector(layout, mode)
    evaluate_segmenter(
        layout.segmenter_run(mode, arch, condition) / "best.pt", condition,
        _read(layout.testset_json(mode)), layout.segmenter_eval(mode, arch, condition),
        layout.figure_masks(mode, arch, condition),
        detector_eval=_read(layout.detector_eval(mode, gamma)),
        score_threshold=opts.score_threshold, device=opts.device,
    )


# --- Study-level files ----------------------------------------------------------------------


def _versions() -> dict[str, str]:
    import cv2
    import matplotlib
    import numpy
    import torch
    import torchvision

    from bpedge._version import __version__

    return {
        "bpedge": __version__, "python": platform.python_version(), "torch": torch.__version__,
        "torchvision": torchvision.__version__, "numpy": numpy.__version__,
        "opencv": cv2.__version__, "matplotlib": matplotlib.__version__,
        "platform": platform.platform(), "torch_threads": str(torch.get_num_threads()),
    }


def _resolved_presets(opts: ExperimentOptions) -> dict[str, Any]:
    """The model configs every run trains with (preset + this study's seed and epochs), as the
    trainers resolve them."""
    from bpedge.train.presets import config_to_dict
    from bpedge.train.train_detector import DetectorOptions, resolve_detector_config
    from bpedge.train.train_segmenter import SegmenterOptions, resolve_segmenter_config

    common = {"data": opts.data, "out": opts.out, "preset": opts.preset, "seed": opts.seed}
    out = {"detector": config_to_dict(resolve_detector_config(DetectorOptions(
        **common, epochs=opts.detector_epoch_count())))}
    for arch in opts.archs:
        out[arch] = config_to_dict(resolve_segmenter_config(SegmenterOptions(
            **common, arch=arch, epochs=opts.segmenter_epoch_count(arch))))
    return out


def _same_option(name: str, old: Any, new: Any) -> bool:
    """Whether a defining option is unchanged: paths by the file they name, so a study started
    with ``--data data`` continues when given ``--data /abs/path/to/data`` (it was refused). A
    relative path in an older study.json is read from the current folder."""
    if name in _PATH_OPTIONS and isinstance(old, str) and isinstance(new, str):
        return Path(old).resolve() == Path(new).resolve()
    return bool(old == new)


def _write_study_json(opts: ExperimentOptions, layout: StudyLayout, command: str | None) -> None:
    """RUN/study.json: options, resolved presets, versions and the commands. Refuses to continue a
    study whose defining options (data, preset, seed, limit, dedup, on_error) were different."""
    options = opts.to_json()
    for name in _PATH_OPTIONS:  # as absolute paths: a relative one means nothing from elsewhere
        if options[name] is not None:
            options[name] = str(Path(options[name]).resolve())
    if opts.backbone_weights is not None:
        # Other bytes at the same path started later detectors from other weights.
        options["backbone_weights_sha256"] = file_sha256(opts.backbone_weights)
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if layout.study_json.is_file():
        old = _read(layout.study_json)
        diffs = [f"--{k.replace('_', '-')}: {old['options'].get(k)!r} -> {options[k]!r}"
                 for k in _FIXED_OPTIONS if not _same_option(k, old["options"].get(k), options[k])]
        was, now = old["options"].get("backbone_weights_sha256"), \
            options.get("backbone_weights_sha256")
        if not diffs and was is not None and was != now:
            diffs.append(f"--backbone-weights: the file's contents changed (sha256 {was[:12]}... "
                         f"-> {str(now)[:12]}...)")
        if diffs:
            raise ValueError(
                f"{layout.root} holds a study made with other options ({'; '.join(diffs)}); "
                "use the original options to continue it, or a new --out"
            )
        created = old.get("created", created)
        commands = list(old.get("commands", []))
    else:
        commands = []
    if command is not None and command not in commands:
        commands.append(command)
    write_json(layout.study_json, {
        "schema": "bpedge.study/1",
        "created": created,
        "commands": commands,  # every distinct command that worked on this folder, in order
        "options": options,
        "presets": _resolved_presets(opts),
        "versions": _versions(),
        "device": opts.device,
    })
    write_json(layout.root / "eval_settings.json", {
        "score_threshold": opts.score_threshold, "figure_images": opts.figure_images,
        "pixel_spacing_mm": opts.pixel_spacing_mm,
    })


def _write_timings(layout: StudyLayout) -> None:
    """RUN/timings.json from the step log: seconds per step summed over the invocations that ran
    or resumed it, per invocation, and in all (the report step itself is not counted)."""
    per_step: dict[str, float] = {}
    per_invocation: dict[str, float] = {}
    for r in read_step_log(layout.step_log):
        if r["status"] == "skipped" or r["step"] == "report":
            continue
        per_step[r["step"]] = per_step.get(r["step"], 0.0) + float(r["seconds"])
        per_invocation[r["invocation"]] = per_invocation.get(r["invocation"], 0.0) + float(
            r["seconds"])
    write_json(layout.root / "timings.json", {
        "steps": [{"step": k, "seconds": round(v, 1)} for k, v in per_step.items()],
        "invocations": [{"started": k, "seconds": round(v, 1)} for k, v in per_invocation.items()],
        "total_seconds": round(sum(per_step.values()), 1),
    })


# --- The plan -------------------------------------------------------------------------------


def _split_step(opts: ExperimentOptions, layout: StudyLayout, mode: str) -> Step:
    return Step(
        f"{mode}/split", lambda _r: _write_split(opts, layout, mode), weight=_LIGHT,
        inputs=lambda: [layout.data_json, layout.root / "eval_settings.json"],
        outputs=lambda: [layout.split_json(mode), layout.testset_json(mode),
                         layout.valset_json(mode)],
    )


def _mode_steps(opts: ExperimentOptions, layout: StudyLayout, mode: str) -> list[Step]:
    """The steps of one split mode after its split (see :func:`_split_step`)."""
    from bpedge.train.experiment.evaluate import evaluate_detector
    from bpedge.train.experiment.tables import choose_gamma

    settings = layout.root / "eval_settings.json"
    steps: list[Step] = []
    det_epochs = opts.detector_epoch_count()
    for g in opts.gammas:
        run = layout.detector_run(mode, g)
        steps.append(Step(
            f"{mode}/detector/gamma_{gamma_label(g)}/train",
            lambda resume, g=g: _train_detector(opts, layout, mode, g, resume),
            weight=det_epochs, state=lambda run=run: training_state(run, det_epochs),
        ))
        steps.append(Step(
            f"{mode}/detector/gamma_{gamma_label(g)}/evaluate",
            lambda _r, g=g, run=run: (
                evaluate_detector(run / "best.pt", _read(layout.testset_json(mode)),
                                  layout.detector_eval(mode, g), device=opts.device,
                                  progress=False),
                evaluate_detector(run / "best.pt", _read(layout.valset_json(mode)),
                                  layout.detector_val_eval(mode, g), device=opts.device,
                                  progress=False)),
            weight=_EVAL, inputs=lambda run=run: [run / "best.pt", layout.testset_json(mode),
                                                  layout.valset_json(mode)],
            outputs=lambda g=g: [layout.detector_eval(mode, g), layout.detector_val_eval(mode, g)],
        ))
    steps.append(Step(
        f"{mode}/choose-gamma", lambda _r: choose_gamma(layout, mode, opts.gammas), weight=_LIGHT,
        inputs=lambda: [layout.detector_run(mode, g) / "metrics.json" for g in opts.gammas],
        outputs=lambda: [layout.gamma_choice(mode)],
    ))
    for arch in opts.archs:
        for cond in CONDITIONS:
            run = layout.segmenter_run(mode, arch, cond)
            name = f"{mode}/segmenter/{arch}_{cond}"
            steps.append(Step(
                f"{name}/train",
                lambda resume, a=arch, c=cond: _train_segmenter(opts, layout, mode, a, c, resume),
                weight=opts.segmenter_epoch_count(arch) * _SEGMENTER_EPOCH,
                state=lambda a=arch, c=cond: _segmenter_state(opts, layout, mode, a, c),
            ))
            steps.append(Step(
                f"{name}/evaluate",
                lambda _r, a=arch, c=cond: _evaluate_segmenter(opts, layout, mode, a, c),
                weight=_EVAL,
                inputs=lambda run=run: [run / "best.pt", layout.testset_json(mode), settings,
                                        layout.detector_eval(mode, _chosen_detector(layout,
                                                                                    mode)[0])],
                outputs=lambda a=arch, c=cond: [layout.segmenter_eval(mode, a, c),
                                                layout.figure_masks(mode, a, c)],
            ))
    # The margin sweep feeds the K-fold summary only (pooled over folds, CIs over subjects).
    for arch in opts.archs if split_of(mode)[1] is not None else ():
        run = layout.segmenter_run(mode, arch, "detector")
        steps.append(Step(
            f"{mode}/segmenter/{arch}_detector/margin-sweep",
            lambda _r, a=arch, run=run: _sweep_margins(opts, layout, mode, a),
            weight=_EVAL,
            inputs=lambda run=run: [run / "best.pt", layout.testset_json(mode),
                                    layout.valset_json(mode), layout.gamma_choice(mode)],
            outputs=lambda a=arch: [layout.margin_sweep(mode, a)],
        ))
    return steps


def _sweep_margins(opts: ExperimentOptions, layout: StudyLayout, mode: str, arch: str) -> None:
    from bpedge.train.experiment.margin_sweep import sweep_margins

    gamma, _ = _chosen_detector(layout, mode)
    sweep_margins(layout.segmenter_run(mode, arch, "detector") / "best.pt",
                  _read(layout.testset_json(mode)), _read(layout.valset_json(mode)),
                  _read(layout.detector_eval(mode, gamma)),
                  _read(layout.detector_val_eval(mode, gamma)), layout.margin_sweep(mode, arch),
                  device=opts.device)


def _summary_inputs(opts: ExperimentOptions, layout: StudyLayout) -> list[Path]:
    paths = [layout.data_json]
    for mode in opts.split_modes:
        paths += [layout.split_json(mode), layout.testset_json(mode), layout.gamma_choice(mode)]
        for g in opts.gammas:
            paths += [layout.detector_run(mode, g) / "metrics.json", layout.detector_eval(mode, g),
                      layout.detector_val_eval(mode, g)]
        for arch in opts.archs:
            for cond in CONDITIONS:
                paths += [layout.segmenter_run(mode, arch, cond) / "metrics.json",
                          layout.segmenter_eval(mode, arch, cond),
                          layout.figure_masks(mode, arch, cond)]
            if split_of(mode)[1] is not None:
                paths.append(layout.margin_sweep(mode, arch))
    return paths


def plan_study(opts: ExperimentOptions) -> list[Step]:
    """The study's steps in the order they run (see the module docstring)."""
    from bpedge.train.experiment.figures import figure_paths, make_figures
    from bpedge.train.experiment.report import write_report
    from bpedge.train.experiment.tables import build_summary

    layout = StudyLayout(opts.out)
    steps = [Step("data", lambda _r: _write_data(opts, layout), weight=_LIGHT,
                  outputs=lambda: [layout.data_json]),
             Step("models", lambda _r: _write_models(opts, layout), weight=_LIGHT,
                  outputs=lambda: [layout.models_json])]
    # Every split before any training: a split the data cannot make (too few subjects for
    # --folds, or for the subject split of --split both) refuses at once, not after the models
    # of the modes before it have trained.
    steps += [_split_step(opts, layout, mode) for mode in opts.split_modes]
    for mode in opts.split_modes:
        steps += _mode_steps(opts, layout, mode)
    steps.append(Step(
        "summary",
        lambda _r: build_summary(layout, opts.split_modes, opts.gammas, opts.archs, CONDITIONS,
                                 opts.score_threshold, folds=opts.fold_names,
                                 pixel_spacing_mm=opts.pixel_spacing_mm, seed=opts.seed),
        weight=_LIGHT, inputs=lambda: _summary_inputs(opts, layout),
        outputs=lambda: [layout.summary_json],
    ))
    steps.append(Step(
        "figures", lambda _r: make_figures(layout), weight=_LIGHT,
        inputs=lambda: _summary_inputs(opts, layout) + [layout.summary_json],
        outputs=lambda: figure_paths(layout, opts.split_modes),
    ))
    report_inputs = [layout.summary_json, layout.data_json, layout.study_json, layout.models_json,
                     layout.root / "timings.json"]
    steps.append(Step(
        "report", lambda _r: write_report(layout), weight=_LIGHT,
        inputs=lambda: report_inputs + figure_paths(layout, opts.split_modes),
        outputs=lambda: [layout.report_md, layout.report_html],
        prepare=lambda: _write_timings(layout),
    ))
    return steps


def _refuse_users_files(opts: ExperimentOptions, layout: StudyLayout,
                        steps: list[Step]) -> None:
    """Refuse (exit 2, naming it) a file of the user's where the study would write or delete,
    before anything is trained: every file the study writes into its folder must be absent or
    one it wrote (:mod:`bpedge.train.experiment._files`), and a training folder's lone best.pt
    must be the one a killed first epoch left (:func:`check_no_foreign_best`)."""
    outputs = [layout.study_json, layout.root / "eval_settings.json", layout.root / "timings.json"]
    for step in steps:
        if step.state is None:
            outputs += step.outputs()
    refuse_foreign(outputs)
    for mode in opts.split_modes:
        for g in opts.gammas:
            check_no_foreign_best(layout.detector_run(mode, g))
        for arch in opts.archs:
            for cond in CONDITIONS:
                check_no_foreign_best(layout.segmenter_run(mode, arch, cond))


def run_study(
    opts: ExperimentOptions,
    *,
    command: str | None = None,
    on_step_done: Callable[[StepRecord], None] | None = None,
) -> StudyOutcome:
    """Run (or continue) the study ``opts`` describes in ``opts.out``; returns what this
    invocation did. ``command`` is recorded in RUN/study.json and shown in the report;
    ``on_step_done`` is called with each step's record as soon as it is logged."""
    opts.check()
    layout = StudyLayout(opts.out)
    # Writes only into a study folder it made (or a new/empty one): never into the data folder or
    # anything else a user pointed --out at by mistake.
    claim_out_dir(opts.out, "experiment")
    # One invocation per study folder: two would run the same steps into the same files.
    with lock_out_dir(opts.out, "experiment"):
        steps = plan_study(opts)
        _refuse_users_files(opts, layout, steps)
        _refuse_changed_data(opts, layout)
        _write_study_json(opts, layout, command)
        records = run_steps(steps, layout.step_log, progress=opts.progress,
                            on_step_done=on_step_done)
    return StudyOutcome(layout=layout, records=records)

