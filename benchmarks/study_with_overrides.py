"""Run ``bpedge experiment`` with a preset whose detector fields are overridden (a lever measured
in the full study before a preset changes), e.g. what benchmarks/results/study-tiny-phantom quotes:

    python benchmarks/study_with_overrides.py '{"empty_fraction": 0.25}' --data DATA --out OUT \
        --preset tiny --split subject --folds 5 --gammas 2 --archs unet --segmenter-epochs 12

The first argument is JSON of ``DetectorConfig`` fields, and of a segmenter's fields under its
arch's key (``{"mnet": {"crop_margin": 0.2}}``); the rest are ``bpedge experiment``'s own
options. The study runs under a preset named ``<preset>+overrides`` (so its report and
study.json say it is not the shipped preset) whose detector has those fields replaced.
"""

from __future__ import annotations

import dataclasses
import json
import sys


def main(argv: list[str]) -> None:
    from bpedge.train import presets

    from bpedge._cli.app import main as bpedge_main

    def fields(items: dict) -> dict:
        return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}

    given = json.loads(argv[1])
    segmenters = {arch: fields(given.pop(arch)) for arch in ("unet", "mnet") if arch in given}
    over = fields(given)
    rest = argv[2:]
    base = rest[rest.index("--preset") + 1] if "--preset" in rest else "tiny"
    name = f"{base}+overrides"
    preset = presets.get_preset(base)
    presets.PRESETS[name] = dataclasses.replace(
        preset, name=name, detector=dataclasses.replace(preset.detector, **over),
        **{arch: dataclasses.replace(getattr(preset, arch), **f) for arch, f in segmenters.items()})
    if "--preset" in rest:
        rest[rest.index("--preset") + 1] = name
    else:
        rest += ["--preset", name]
    bpedge_main(["experiment", *rest])


if __name__ == "__main__":
    main(sys.argv)
