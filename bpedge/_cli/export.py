"""``bpedge export``: turn a detector and a segmenter checkpoint into a checked bundle (FP32 and
FP16 ONNX, parity results, thresholds chosen on validation data, manifest.json).

Exit codes: 0 written; 2 bad input (a missing or wrong-kind checkpoint, data that is not what the
checkpoints trained on without --accept-other-data, a non-empty --out that is not a bundle export
made, or one that is without --force); 1 a parity check failed (nothing is written then). torch is imported inside the command, so ``bpedge --help`` works without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import command_errors


def register(app: typer.Typer) -> None:
    @app.command("export", epilog="""Examples:

  bpedge export --detector runs/detector --segmenter runs/unet --out bundle --data phantom
""")
    @command_errors
    def export_command(
        detector: Annotated[
            Path, typer.Option("--detector", help="Detector checkpoint, or its run folder "
                               "(best.pt is used).")
        ],
        segmenter: Annotated[
            Path, typer.Option("--segmenter", help="Segmenter checkpoint, or its run folder.")
        ],
        out: Annotated[
            Path, typer.Option("--out", help="Bundle directory to create (a non-empty one is "
                               "refused, unless it is a bundle export made and --force is given).")
        ],
        data: Annotated[
            Path | None,
            typer.Option("--data", help="The data folder the checkpoints were trained on "
                         "(default: the folder each checkpoint recorded). Its validation "
                         "frames are used for parity checks and thresholds."),
        ] = None,
        max_val: Annotated[
            int | None,
            typer.Option("--max-val", min=1, help="Check on at most N validation frames per "
                         "model (a seeded sample; default: all)."),
        ] = None,
        force: Annotated[
            bool,
            typer.Option("--force", help="Replace --out when it holds a bundle that export made "
                         "(never any other folder)."),
        ] = False,
        accept_other_data: Annotated[
            bool,
            typer.Option("--accept-other-data", help="Export even if the data's fingerprint "
                         "differs from the one the checkpoints trained on (the parity and "
                         "threshold numbers then describe that other data)."),
        ] = False,
        include_checkpoints: Annotated[
            bool,
            typer.Option("--include-checkpoints", help="Copy the two training checkpoints into "
                         "the bundle (what bench's PyTorch row runs). By default a bundle holds "
                         "what a device needs (ONNX, manifest, later engines) and the manifest "
                         "records where the checkpoints are."),
        ] = False,
        int8: Annotated[
            bool,
            typer.Option("--int8", help="Also write INT8 QDQ ONNX (static, per-channel), "
                         "calibrated on training frames and gated against FP32 on the "
                         "validation frames (box IoU, presence, mask Dice); a model that fails "
                         "its gate is not shipped."),
        ] = False,
        calibration_frames: Annotated[
            int,
            typer.Option("--calibration-frames", min=1, help="Training frames per model to "
                         "calibrate INT8 on (a seeded sample)."),
        ] = 32,
    ) -> None:
        """Export both models to FP32 and mixed-precision FP16 ONNX, check them against PyTorch
        and each other on the validation data, choose the mask and "no BP" score thresholds, and
        write the bundle with its manifest. Fails, writing nothing, if parity is off."""
        from bpedge.export.bundle_export import ExportOptions, export_bundle

        opts = ExportOptions(detector=detector, segmenter=segmenter, out=out, data=data,
                             max_val=max_val, force=force,
                             accept_other_data=accept_other_data,
                             include_checkpoints=include_checkpoints, int8=int8,
                             calibration_frames=calibration_frames)
        bundle = export_bundle(opts, log=lambda line: typer.echo(line, err=True))
        thresholds = bundle.manifest.thresholds
        typer.echo(f"bundle {bundle.root}: score threshold {thresholds.score:g}, mask threshold "
                   f"{thresholds.mask:g}")
        if int8:
            for precision, form in (("int8", "CPU runtimes"), ("int8_symmetric", "TensorRT")):
                shipped = [m for m, e in bundle.manifest.models.items()
                           if e.onnx_file(precision) is not None]
                typer.echo(f"INT8 for {form} shipped for: {', '.join(shipped) or 'no model'} "
                           "(gate results in the manifest's parity.int8)")
