"""``bpedge segment BUNDLE SOURCE... --out DIR``: images, folders, globs, videos, DICOM, capture
devices and streams in; masks (PNG), overlays, a CSV and JSON lines of presence, scores, boxes,
areas and milliseconds out, accuracy when ground-truth masks sit beside the frames, and optionally
the annotated video."""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Annotated

import typer

from bpedge._cli._errors import CommandFailed, UsageError, command_errors
from bpedge._cli._track_option import track_options
from bpedge._frames import MAX_FPS

#: Highest --video-fps (and frame rate read from a source): above any ultrasound frame rate, and
#: far below what stalls OpenCV's writer.
MAX_VIDEO_FPS = MAX_FPS

_EPILOG = """Examples:

  bpedge segment demo_out/bundle demo_out/heldout --out seg_out  # + accuracy

  bpedge segment BUNDLE scan1.png "scans/*.tif" study.dcm --out seg_out --no-overlays

  bpedge segment BUNDLE probe.mp4 --out seg_out --save-video seg_out/probe_seg.mp4

  bpedge segment BUNDLE 0 --out live_out --save-video live.mp4   # camera 0

  bpedge segment BUNDLE rtsp://cart.local/probe --out live_out --on-error skip

SOURCE: an image (tif, png, jpg, bmp), a folder of them (Kaggle layout or
plain; *_mask files are skipped), a quoted glob, a video, a DICOM file (.dcm,
.dicom, or a file without a suffix that has the DICOM magic; needs pip install
'bpedge\\[dicom]'), a
capture device index, a stream URL, or a GStreamer pipeline (when OpenCV was
built with GStreamer).

Writes under DIR: masks/NAME.png (0/255, the frame's size); overlays/NAME.png
(prediction magenta, box yellow, ground truth green); results.csv (file,
frame, present, score, x0, y0, x1, y1 in frame pixels, ms); results.jsonl
(one Result.to_dict() per frame: box, score, presence, area in px and, for
calibrated DICOM, in mm, timings). When NAME_mask files sit beside the
images: accuracy.csv (Dice, 1 when both masks are empty; HD95 in px, empty
when one mask is; presence correct) and a summary line (Dice over BP frames
and over all frames, HD95 median, presence sensitivity and specificity).
Frames of a video or multi-frame DICOM are named STEM_fNNNNNN. While the run
goes on, each frame's rows are appended to results.partial.csv,
results.partial.jsonl (and accuracy.partial.csv) as it is done, so a run that
fails, is interrupted or is killed keeps them; a finished run replaces them
with results.csv, results.jsonl and accuracy.csv. SIGTERM (kill, systemd,
docker stop) stops a run as Ctrl-C does (exit 143; Ctrl-C: 130): the frame
being written is removed, the tables and the --save-video video of the frames
done are written.

results.csv is written last: while a run goes on (or after one failed)
DIR/INCOMPLETE.txt says so. A non-empty DIR that segment did not make is
refused (--add-to-existing adds to it without overwriting anything); earlier
results in DIR are replaced only with --force, as is a --save-video file that
segment wrote (a record beside it, .NAME.bpedge-out.json, says so); any other
file there is refused.
"""


def register(app: typer.Typer) -> None:
    @app.command("segment", epilog=_EPILOG)
    @command_errors
    def segment(
        bundle: Annotated[Path, typer.Argument(help="Bundle directory (holds manifest.json).")],
        inputs: Annotated[
            list[str], typer.Argument(help="Sources: images, folders, quoted globs, videos, DICOM "
                                      "files, a device index (0), a stream URL or a GStreamer "
                                      "pipeline.", metavar="SOURCE...")
        ],
        out: Annotated[Path, typer.Option("--out", help="Output folder (created; a non-empty "
                                          "folder segment did not make is refused).")],
        backend: Annotated[
            str, typer.Option("--backend", help="auto (TensorRT when it can run, else OpenVINO "
                              "when installed, else ONNX Runtime), onnxruntime, openvino or "
                              "tensorrt.")
        ] = "auto",
        precision: Annotated[
            str | None, typer.Option("--precision", help="fp32, fp16, bf16 (OpenVINO) or int8 "
                                     "(bundles exported with --int8; TensorRT after "
                                     "build-engines -p int8). Default: "
                                     "fp16 on TensorRT, bf16 on OpenVINO where the CPU has it, "
                                     "fp32 on ONNX Runtime.")
        ] = None,
        threads: Annotated[
            int | None, typer.Option("--threads", help="ONNX Runtime intra-op threads.")
        ] = None,
        depth: Annotated[
            int, typer.Option("--depth", help="Frames in flight (overlaps reading and compute).")
        ] = 2,
        track: Annotated[
            bool, typer.Option("--track", help="Videos and frame sequences: crop each frame where "
                               "the last confident mask was and skip the detector, which runs "
                               "every --detect-every frames (a new track's first checks come "
                               "sooner: after 1, 2, 4, ... frames) and whenever confidence "
                               "drops (CPU backends; frames are then processed one at a time).")
        ] = False,
        detect_every: Annotated[
            int | None, typer.Option("--detect-every", min=1, help="With --track: run the "
                                     "detector at least every N frames (default 10).")
        ] = None,
        overlays: Annotated[
            bool, typer.Option("--overlays/--no-overlays", help="Write overlay PNGs.")
        ] = True,
        masks: Annotated[bool, typer.Option("--masks/--no-masks", help="Write mask PNGs.")] = True,
        save_video: Annotated[
            Path | None, typer.Option("--save-video", help="Write the overlays as a video "
                                      "(.mp4 or .avi) at the source's frame rate: a new file, or "
                                      "(with --force) a video an earlier segment wrote; any "
                                      "other file is refused, never overwritten.")
        ] = None,
        video_fps: Annotated[
            float | None, typer.Option("--video-fps", help="Frame rate of --save-video; "
                                       "default: the first frame's source's (10 for stills and "
                                       "sources that declare none).")
        ] = None,
        on_error: Annotated[
            str, typer.Option("--on-error", help="fail: stop at the first unreadable input or "
                              "frame (what was done is kept); skip: report it and go on.")
        ] = "fail",
        force: Annotated[
            bool, typer.Option("--force", help="Replace the results (complete or not) of an "
                               "earlier segment run in --out, and a --save-video video that "
                               "segment wrote.")
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
        """Segment frames with a bundle: one mask, overlay, CSV row and JSON line per frame."""
        from collections.abc import Iterator

        from tqdm import tqdm

        from bpedge._cli import _segment_output as output
        from bpedge._cli._segment_outputs import SegmentOutputs
        from bpedge._display_text import printable
        from bpedge._frames import as_grey_frame
        from bpedge.segmenter import Segmenter
        from bpedge.sources import SourceError, SourceFrame, open_frames

        if depth < 1:
            raise UsageError(f"--depth must be >= 1, got {depth}")
        tracking = track_options(track, detect_every)
        if on_error not in ("fail", "skip"):
            raise UsageError(f"--on-error must be fail or skip, got {on_error!r}")
        if video_fps is not None and not (math.isfinite(video_fps)
                                          and 0 < video_fps <= MAX_VIDEO_FPS):
            # inf sent OpenCV's VideoWriter into a loop that ignored Ctrl-C
            raise UsageError(f"--video-fps must be a number in (0, {MAX_VIDEO_FPS:g}], got "
                             f"{video_fps}")
        skipped: list[str] = []

        def report_skip(name: str, reason: str) -> None:
            skipped.append(name)
            # names come from the file system: shown escaped, never as terminal controls
            typer.echo(f"skipped {printable(name)}: {printable(reason)}", err=True)

        source = open_frames(*inputs, on_error=on_error,  # type: ignore[arg-type]
                             on_skip=report_skip)
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} exists and is not a folder")
        # masks/ and overlays/ are segment's, cleared by --force and written by every run: an
        # input there was deleted by --force before it was read (the earlier run's overlays
        # given as the frames), and a --save-video there made every later --force refuse.
        for file in source.files:
            if (cleared := output.written_into(out, file)) is not None:
                raise UsageError(f"{file} is an input of this run, in {cleared}, which segment "
                                 "clears and writes: copy the files elsewhere first")
        video = None
        if save_video is not None:
            if save_video.suffix.lower() not in (".mp4", ".m4v", ".mov", ".avi"):
                raise UsageError(f"--save-video {save_video}: use a .mp4 or .avi name")
            if (cleared := output.written_into(out, save_video)) is not None:
                raise UsageError(f"--save-video {save_video} is in {cleared}, which segment "
                                 "clears and writes: choose a name outside it")
            from bpedge._cli._segment_outputs import video_signature
            from bpedge._out_file import OutFile

            # A video segment wrote is replaced only with --force; any other file never.
            video = OutFile(save_video, "segment", "--save-video",
                            partial_signature=video_signature(save_video.suffix))
            video.check(replace=force, replace_flag="--force")
            for given in inputs:
                # A video an earlier segment wrote, given as this run's input: the check above
                # lets --force replace it, and the run would write over what it reads.
                if os.path.exists(given) and os.path.exists(save_video) \
                        and os.path.samefile(given, save_video):
                    raise UsageError(f"--save-video {save_video} is an input of this run; "
                                     "choose another name")
        seg = Segmenter.from_bundle(bundle, backend, precision=precision,  # type: ignore[arg-type]
                                    threads=threads)
        note = f" ({seg.fallback_reason})" if seg.fallback_reason else ""
        typer.echo(f"segmenting with {seg.backend} {seg.precision}{note}", err=True)
        # Frames wait here (at most depth + 1 of them) until their result comes back in order.
        from collections import deque

        pending: deque[SourceFrame] = deque()

        def frames() -> Iterator[SourceFrame]:
            # A source that fails mid-way: Segmenter.stream answers the frames in flight first,
            # then raises, so every frame read is written before the error is reported.
            for frame in source:
                if on_error == "skip":
                    try:
                        as_grey_frame(frame.image)
                    except ValueError as exc:
                        report_skip(frame.name, str(exc))
                        continue
                pending.append(frame)
                yield frame

        failure: BaseException | None = None
        tables_failure: Exception | None = None
        finished = False
        with seg, source, contextlib.ExitStack() as run:
            # The first frame is read before --out is made: a source that cannot be opened or
            # read fails (or, with --on-error skip, is skipped) while nothing is written yet, and
            # a rerun with the same --out is not refused for a folder of nothing.
            source.peek()
            bar = tqdm(total=source.length, desc="segmenting", unit="frame",
                       disable=not progress)
            run.enter_context(output.run_in(out, force=force, add_to_existing=add_to_existing,
                                            masks=masks, overlays=overlays))
            outputs = SegmentOutputs(out, masks=masks, overlays=overlays, video=video,
                                     video_fps=video_fps, replace_video=force,
                                     skip_truth=report_skip if on_error == "skip" else None)
            try:
                for result in seg.stream(frames(), depth=depth, track=tracking or False):
                    outputs.add(pending.popleft(), result)
                    bar.update(1)
                finished = True
            except (SourceError, ValueError, OSError, KeyboardInterrupt) as exc:
                failure = exc
            finally:
                bar.close()
                outputs.remove_unrecorded_frame()  # a frame stopped mid-write: no file without row
                # Any other exception passes through here too: its run is not complete either,
                # so its tables take the .partial names (results.csv means a finished run).
                complete = finished and failure is None
                lines: list[str] = []
                try:
                    lines = outputs.finish(complete=complete)
                except Exception as exc:
                    if failure is None:
                        raise
                    # The run's own error came first and says what to fix; the tables' (a name
                    # the user took meanwhile, the disk still full) is reported after it, never
                    # in its place.
                    tables_failure = exc
            done = outputs.recorded_frames
            for line in lines:
                typer.echo(line)
            if failure is not None:
                # INCOMPLETE.txt stays and says why; the message says where the rows are.
                held = ", ".join(map(str, outputs.tables_with_rows()))
                kept = (f" (the {done} frame(s) segmented before it are in {held})"
                        if done and held else "")
                if tables_failure is not None:
                    rows = (f"; the {done} frame(s) segmented before the first error are the "
                            f"first {done} row(s) of {held}" if done and held else "")
                    kept = f"; then writing the tables failed too: {tables_failure}{rows}"
                if isinstance(failure, KeyboardInterrupt):
                    from bpedge._cli._signals import Terminated

                    stopped = ("terminated (SIGTERM)" if isinstance(failure, Terminated)
                               else "interrupted")
                    typer.echo(f"{stopped}{kept}", err=True)
                    raise failure
                error = UsageError if isinstance(failure, (ValueError, FileNotFoundError)) \
                    else CommandFailed
                raise error(f"{failure}{kept}") from failure
            (out / output.INCOMPLETE).unlink()  # results.csv is written: the set is complete
            output.own_entries(out, ())  # and the note, gone, is no longer segment's name
        present = outputs.present_frames
        extra = f"; skipped {len(skipped)} (see above)" if skipped else ""
        typer.echo(f"segmented {done} frame(s) from {len(inputs)} source(s): BP present in "
                   f"{present}{extra}; wrote {out / 'results.csv'} and {out / 'results.jsonl'}")
