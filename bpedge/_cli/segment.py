"""``bpedge segment BUNDLE INPUT... --out DIR``: frames, folders or videos in; masks (PNG), overlays
and a CSV of presence, scores, boxes and milliseconds out."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from bpedge._cli._errors import UsageError, command_errors

if TYPE_CHECKING:
    from bpedge._cli._frame_sources import FrameSource

CSV_COLUMNS = ("file", "frame", "present", "score", "x0", "y0", "x1", "y1", "ms")

_EPILOG = """Examples:

  bpedge segment demo_out/bundle scan1.png scan2.tif --out seg_out

  bpedge segment BUNDLE kaggle/test/ --out seg_out --no-overlays

  bpedge segment BUNDLE probe.mp4 --out seg_out --backend onnxruntime --threads 2

Writes DIR/masks/NAME.png (0/255, the frame's size), DIR/overlays/NAME.png (prediction magenta,
box yellow, ground truth green where a NAME_mask file sits beside the image) and DIR/results.csv
(file, frame, present, score, x0, y0, x1, y1 in frame pixels, ms). Video frames are named
STEM_fNNNNNN; every name is unique in a run. results.csv is written last: while a run goes on (or
after one failed) DIR/INCOMPLETE.txt says so. A non-empty DIR that segment did not make is refused
(--add-to-existing adds to it without overwriting anything); earlier results in DIR are replaced
only with --force.
"""


def register(app: typer.Typer) -> None:
    @app.command("segment", epilog=_EPILOG)
    @command_errors
    def segment(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (holds manifest.json).")],
        inputs: Annotated[
            list[Path], typer.Argument(help="Image files (tif, png, jpg, bmp), folders of them "
                                       "(Kaggle layout or plain; *_mask files skipped), or videos.")
        ],
        out: Annotated[Path, typer.Option("--out", help="Output folder (created; a non-empty "
                                          "folder segment did not make is refused).")],
        backend: Annotated[
            str, typer.Option("--backend", help="auto (TensorRT when it can run, else ONNX "
                              "Runtime), onnxruntime or tensorrt.")
        ] = "auto",
        precision: Annotated[
            str | None, typer.Option("--precision", help="fp32 or fp16 (default: fp16 on "
                                     "TensorRT, fp32 on ONNX Runtime).")
        ] = None,
        threads: Annotated[
            int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads.")
        ] = None,
        depth: Annotated[
            int, typer.Option("--depth", help="Frames in flight (overlaps reading and compute).")
        ] = 2,
        overlays: Annotated[
            bool, typer.Option("--overlays/--no-overlays", help="Write overlay PNGs.")
        ] = True,
        masks: Annotated[bool, typer.Option("--masks/--no-masks", help="Write mask PNGs.")] = True,
        force: Annotated[
            bool, typer.Option("--force", help="Replace the results (complete or not) of an "
                               "earlier segment run in --out.")
        ] = False,
        add_to_existing: Annotated[
            bool, typer.Option("--add-to-existing", help="Write into a non-empty --out that "
                               "segment did not make: adds masks/, overlays/ and results.csv, "
                               "refused if any of them is already there.")
        ] = False,
        progress: Annotated[
            bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
        ] = True,
    ) -> None:
        """Segment frames with a bundle: one mask, overlay and CSV row per frame."""
        import csv
        import io
        from collections import deque
        from collections.abc import Iterator

        import numpy as np
        from tqdm import tqdm

        from bpedge._cli import _segment_output as output
        from bpedge._cli._frame_sources import (
            collect_sources,
            count_frames,
            iter_frames,
            read_grey,
        )
        from bpedge._overlay import draw_overlay, write_png
        from bpedge.segmenter import Segmenter

        if depth < 1:
            raise UsageError(f"--depth must be >= 1, got {depth}")
        sources = collect_sources(inputs)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        names = output.output_names(sources)
        seg = Segmenter.from_bundle(bundle, backend, precision=precision,  # type: ignore[arg-type]
                                    threads=threads)
        note = f" ({seg.fallback_reason})" if seg.fallback_reason else ""
        typer.echo(f"segmenting with {seg.backend} {seg.precision}{note}", err=True)

        # Frames go into the stream and wait here (at most depth + 1 of them) until their result
        # comes back in order, so the overlay can be drawn on the frame itself.
        pending: deque[tuple[FrameSource, int, np.ndarray]] = deque()

        def frames() -> Iterator[np.ndarray]:
            for source, number, image in iter_frames(sources):
                pending.append((source, number, image))
                yield image

        rows: list[tuple[str | int, ...]] = []
        bar = tqdm(total=count_frames(sources), desc="segmenting", unit="frame",
                   disable=not progress)
        try:
            with seg, output.run_in(out, force=force, add_to_existing=add_to_existing,
                                    masks=masks, overlays=overlays):
                for result in seg.stream(frames(), depth=depth):
                    source, number, image = pending.popleft()
                    name = names[source.path] + (f"_f{number:06d}" if source.video else "")
                    if masks:
                        write_png(out / "masks" / f"{name}.png", result.mask)
                    if overlays:
                        truth = read_grey(source.mask_path) if source.mask_path else None
                        label = f"score {result.score:.2f}" + ("" if result.present else " (no BP)")
                        write_png(out / "overlays" / f"{name}.png",
                                  draw_overlay(image, result.mask, truth, result.box,
                                               result.present, label))
                    x0, y0, x1, y1 = result.box
                    rows.append((str(source.path), number, int(result.present),
                                 f"{result.score:.6f}", f"{x0:.2f}", f"{y0:.2f}", f"{x1:.2f}",
                                 f"{y1:.2f}", f"{result.timings.get('total', float('nan')):.3f}"))
                    bar.update(1)
                buffer = io.StringIO()
                writer = csv.writer(buffer, lineterminator="\n")
                writer.writerow(CSV_COLUMNS)
                writer.writerows(rows)
                output.finish(out, buffer.getvalue())
        finally:
            bar.close()
        present = sum(int(r[2]) for r in rows)
        typer.echo(f"segmented {len(rows)} frame(s) from {len(sources)} input(s): BP present in "
                   f"{present}; wrote {out / 'results.csv'}")

