"""Frames from wherever a cart or a researcher has them, as one iterator for :meth:`Segmenter.stream`.

A source is what people type into other vision tools: an image file, a folder of images (the
Kaggle layout or plain; ``*_mask`` files are skipped), a glob (``"scans/*.png"``), a video file,
an ultrasound DICOM file (``.dcm``, ``.dicom``, or a file without a suffix that has the DICOM
magic; needs ``bpedge[dicom]``), a
capture device index (``0``), a stream URL (``rtsp://...``, ``http://...``), a GStreamer pipeline
(``"v4l2src ! videoconvert ! appsink"``, when OpenCV was built with GStreamer), or in Python any
object with OpenCV's ``read() -> (ok, frame)`` (a frame grabber's wrapper)::

    from bpedge import Segmenter
    from bpedge.sources import open_frames

    with Segmenter.from_bundle("bundle/") as seg, open_frames("probe.mp4") as frames:
        for r in seg.stream(frames):
            print(r.name, r.timestamp, r.present, r.area_mm2)

Every frame comes as a :class:`SourceFrame`: the grey ``uint8`` (H, W) image with its name,
timestamp, frame rate and (for DICOM) pixel spacing, which the Segmenter copies into the Result.
A source that cannot be opened, or that stops delivering frames mid-way (a camera unplugged, a
stream dropped), raises :class:`SourceError` naming it and how many frames it gave; the frames
already yielded stay valid, so a caller keeps what was done.
"""

from __future__ import annotations

import errno
import glob as _glob
import logging
import math
import os
import re
import time
from collections.abc import Callable, Generator, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from bpedge._dicom import DICOM_SUFFIXES, dicom_frame_count, iter_dicom_frames, looks_like_dicom

__all__ = ["Frames", "SourceError", "SourceFrame", "open_frames"]

#: Largest still-image file read: an uncompressed 8192 x 8192 16-bit RGB TIFF is 400 MB.
MAX_IMAGE_FILE_BYTES = 1 << 30
IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv")
_MASK = re.compile(r"_mask$", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
_log = logging.getLogger("bpedge")

OnError = Literal["fail", "skip"]


class Capture(Protocol):
    """What bpedge needs of a capture: OpenCV's ``VideoCapture`` has it, and so can a wrapper
    around a frame grabber. ``read`` returns ``(ok, frame)`` with frame uint8 (H, W) or
    (H, W, 3) BGR."""

    def read(self) -> tuple[bool, Any]: ...


class SourceError(RuntimeError):
    """A source could not be opened, or stopped delivering frames; ``frames_read`` says how many
    frames it gave before that."""

    def __init__(self, message: str, frames_read: int = 0) -> None:
        super().__init__(message)
        self.frames_read = frames_read


@dataclass(frozen=True)
class SourceFrame:
    """One frame and where it came from.

    Attributes:
        image: ``uint8`` (H, W) grey frame (colour converted with OpenCV's BGR->grey weights).
        name: unique within one :func:`open_frames` call, usable as a file stem: the image's stem,
            ``STEM_fNNNNNN`` for frames of a video or multi-frame DICOM, ``camera0_fNNNNNN`` /
            ``stream_fNNNNNN`` for live sources.
        index: frame number within its input, from 0.
        timestamp: seconds. Video files and DICOM cines: the frame's position (index / frame
            rate); live sources: ``time.time()`` when the frame was read; stills: None.
        source: the input it came from (path, device index, URL with any password hidden).
        fps: the input's frame rate (frames per second) when it declares one, else None.
        spacing_mm: ``(x, y)`` millimetres per pixel when the file is calibrated (DICOM), else None.
        truth_path: a ground-truth mask beside the image in the Kaggle layout
            (``{stem}_mask{suffix}``, the suffix in either case, .tif and .tiff alike), when
            there is one.
        sequence: which frames a track may run through (:func:`sequence_of`), set by
            :func:`open_frames`: one video, DICOM cine or live source (by its place among the
            inputs, so the same file given twice is two), or the stills of one folder (and of
            one subject in a Kaggle-layout folder). None: told from the other fields.

    A timestamp, frame rate or spacing that is not a finite positive number (timestamps: finite)
    is refused with a ``ValueError``: it would reach the results as NaN or Infinity, which JSON
    does not have.
    """

    image: np.ndarray
    name: str
    index: int = 0
    timestamp: float | None = None
    source: str = ""
    fps: float | None = None
    spacing_mm: tuple[float, float] | None = None
    truth_path: Path | None = None
    sequence: Hashable = None

    def __post_init__(self) -> None:
        if self.timestamp is not None and not math.isfinite(self.timestamp):
            raise ValueError(f"{self.name}: timestamp must be a finite number of seconds, got "
                             f"{self.timestamp!r}")
        if self.fps is not None and not (math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"{self.name}: fps must be a finite number > 0, got {self.fps!r}")
        if self.spacing_mm is not None and not (
                len(self.spacing_mm) == 2
                and all(math.isfinite(v) and v > 0 for v in self.spacing_mm)):
            raise ValueError(f"{self.name}: spacing_mm must be two finite numbers > 0 (mm per "
                             f"pixel, x then y), got {self.spacing_mm!r}")

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # So anything that takes an array (cv2, np.asarray) takes a SourceFrame too.
        return self.image if dtype is None else self.image.astype(dtype)


#: A Kaggle-layout frame's stem: subject, then the frame's number in that subject's scan.
_KAGGLE_STEM = re.compile(r"^(?P<subject>\d+)_\d+$")


def sequence_of(frame: SourceFrame) -> Hashable:
    """Which sequence ``frame`` belongs to, for tracking (a track never crosses sequences): its
    ``sequence`` when :func:`open_frames` set it; for a SourceFrame made otherwise, the frames of
    one timed input (video, cine, live: ``timestamp`` set) are one per ``source``, and stills one
    per folder, and one per subject in a Kaggle-layout folder (``SUBJECT_N`` stems)."""
    if frame.sequence is not None:
        return frame.sequence
    if frame.timestamp is not None:
        return ("input", frame.source)
    return _still_sequence(Path(frame.source))


def _still_sequence(path: Path) -> Hashable:
    kaggle = _KAGGLE_STEM.match(path.stem)
    return ("stills", str(path.parent), kaggle["subject"] if kaggle else None)


@dataclass(frozen=True)
class _Input:
    kind: Literal["image", "dicom", "video", "live"]
    label: str  # what messages and SourceFrame.source show
    stem: str  # the name frames get
    target: Any = None  # path, device index, URL / pipeline, or a Capture object
    api: int | None = None  # OpenCV capture API preference


def _natural_key(path: Path) -> list[object]:
    # "2_10" after "2_9": Kaggle names and numbered exports sort the way people expect.
    return [int(t) if t.isdecimal() else t.lower() for t in re.split(r"(\d+)", path.name)]


def _redact(url: str) -> str:
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines (opencv-python wheels cannot)."""
    import cv2

    return bool(re.search(r"GStreamer:\s*YES", cv2.getBuildInformation()))


def _file_input(path: Path) -> _Input | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return _Input("image", str(path), path.stem, path)
    if suffix in VIDEO_SUFFIXES:
        return _Input("video", str(path), path.stem, path)
    if suffix in DICOM_SUFFIXES or (not suffix and looks_like_dicom(path)):
        return _Input("dicom", str(path), path.stem, path)
    return None


def _folder_inputs(paths: list[Path], where: str) -> list[_Input]:
    inputs = []
    for path in sorted(paths, key=_natural_key):
        if _MASK.search(path.stem):
            continue
        if path.is_file():
            found = _file_input(path)
            if found is not None and found.kind != "video":
                inputs.append(found)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            # A FIFO, device or folder named like an image: kept, so that reading it reports
            # it by name (skipped or failed) instead of the scan dropping it without a word.
            inputs.append(_Input("image", str(path), path.stem, path))
    if not inputs:
        # Folders are not searched (a Kaggle download holds train/ and test/, and which one to
        # segment is the user's call), but a user pointing at such a folder is told where to look.
        subfolders = sorted(p.name for p in paths if p.is_dir())
        example = "train" if "train" in subfolders else subfolders[0] if subfolders else ""
        hint = (f"; it has subfolder(s) {', '.join(subfolders[:5])}"
                f"{' ...' if len(subfolders) > 5 else ''}: give the one holding the frames, "
                f"e.g. {paths[0].parent / example}" if subfolders else "")
        raise ValueError(f"{where} holds no images ({', '.join(IMAGE_SUFFIXES)}) or DICOM files "
                         f"(*_mask files are skipped){hint}")
    return inputs


#: Largest capture device index: OpenCV's VideoCapture takes a C int (a larger one raised
#: OpenCV's seven-line overload error).
_MAX_DEVICE_INDEX = 2**31 - 1


def resolve(source: str | os.PathLike[str] | int | Capture) -> list[_Input]:
    """Classify one source argument (see the module docstring) into the inputs it names. Raises
    FileNotFoundError for a path that does not exist and ValueError for anything unusable."""
    if isinstance(source, bool):
        raise TypeError(f"source must be a path, device index, URL or capture, got {source!r}")
    if isinstance(source, int):
        if not 0 <= source <= _MAX_DEVICE_INDEX:
            raise ValueError(f"capture device {source}: an index must be in [0, "
                             f"{_MAX_DEVICE_INDEX}] (OpenCV takes a C int)")
        return [_Input("live", f"capture device {source}", f"camera{source}", source)]
    if hasattr(source, "read") and not isinstance(source, (str, os.PathLike)):
        name = type(source).__name__
        return [_Input("live", f"capture {name}", "capture", source)]
    text = os.fspath(source)
    if not text.strip():
        # Path("") is the current folder: an unset "$SRC" would segment whatever is there.
        raise ValueError("an empty source: give a file, folder, glob, device index, URL or "
                         "GStreamer pipeline")
    path = Path(text)
    if path.exists():
        if path.is_dir():
            return _folder_inputs(list(path.iterdir()), f"folder {path}")
        found = _file_input(path)
        if found is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix or '(none)'}; images: "
                             f"{', '.join(IMAGE_SUFFIXES)}; videos: {', '.join(VIDEO_SUFFIXES)}; "
                             f"DICOM: {', '.join(DICOM_SUFFIXES)}")
        return [found]
    if text.isascii() and text.isdecimal():  # not "²", which isdigit() but int() refuses
        index = int(text)
        if index > _MAX_DEVICE_INDEX:
            raise ValueError(f"capture device {text}: no device has an index past "
                             f"{_MAX_DEVICE_INDEX} (OpenCV takes a C int)")
        return [_Input("live", f"capture device {text}", f"camera{text}", index)]
    if _URL.match(text):
        import cv2

        return [_Input("live", _redact(text), "stream", text, cv2.CAP_FFMPEG)]
    if "!" in text:
        if not gstreamer_available():
            raise ValueError("this looks like a GStreamer pipeline, but this OpenCV was built "
                             "without GStreamer (the opencv-python wheels are): use an OpenCV "
                             "built with GStreamer, or give the device index or stream URL")
        import cv2

        return [_Input("live", "GStreamer pipeline", "gstreamer", text, cv2.CAP_GSTREAMER)]
    if any(c in text for c in "*?["):
        matches = [Path(p) for p in _glob.glob(text, recursive=True)]
        if not matches:
            raise FileNotFoundError(f"no file matches {text}")
        return _folder_inputs(matches, f"glob {text}")
    raise FileNotFoundError(f"input {text} does not exist (nor is it a device index, URL or "
                            "GStreamer pipeline)")


def _open_capture(target: Any, api: int | None) -> Any:
    """cv2.VideoCapture for a file, device, URL or pipeline (tests put a fake capture here)."""
    import cv2

    return cv2.VideoCapture(target) if api is None else cv2.VideoCapture(target, api)


def _read_image(path: Path) -> np.ndarray:
    """A still image file as a checked grey frame (:func:`decode_still_frame`)."""
    return decode_still_frame(path, _read_still_bytes(path, ""))


def read_image_samples(path: Path, what: str = "", *, labels: bool = False) -> np.ndarray:
    """An image file's samples (:func:`decode_image_samples`), read as bytes (non-ASCII paths work
    too) only if it is a regular file of at most ``MAX_IMAGE_FILE_BYTES`` (a FIFO named ``x.png``
    hung the read). ``what`` (e.g. ``"ground-truth mask "``) starts the messages' description."""
    return decode_image_samples(path, _read_still_bytes(path, what), what, labels=labels)


def _read_still_bytes(path: Path, what: str) -> bytes:
    from bpedge._regular_file import NotARegularFile, read_regular_file

    try:
        return read_regular_file(path, MAX_IMAGE_FILE_BYTES)
    except NotARegularFile as exc:
        raise ValueError(f"{what}{exc}: only regular image files are read") from None
    except FileNotFoundError:
        raise
    except OSError as exc:
        # A link loop, a file without read permission: the file is named and refused like a
        # damaged one (skipped with --on-error skip), not a crash of the run.
        raise ValueError(f"{what}{path} cannot be read ({exc.strerror or exc})") from None


def decode_still_frame(path: Path, data: bytes) -> np.ndarray:
    """The image file content ``data`` as the grey frame ``bpedge segment`` reads and ``bpedge
    train`` trains on: :func:`decode_image_samples` through the frame rule of
    :func:`bpedge._frames.as_grey_frame` (colour to grey with OpenCV's BGR->grey weights, as for
    a frame passed as an array; 8-bit values in any depth; 12/16-bit data refused, never
    rescaled). Raises ValueError naming ``path``."""
    from bpedge._frames import as_grey_frame

    image = decode_image_samples(path, data)
    try:
        return as_grey_frame(image)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def decode_image_samples(path: Path, data: bytes, what: str = "", *,
                         labels: bool = False) -> np.ndarray:
    """The samples of the image file content ``data`` (``path`` names it in messages), of their
    own depth: ``(H, W)``, or ``(H, W, 3)`` BGR for a colour frame, which the frame rule turns
    to grey with the weights it applies to any BGR frame or video frame (``IMREAD_GRAYSCALE``
    converts with each codec's own arithmetic: one grey level off in half the pixels of a
    colour PNG and 0.3% of a colour TIFF's, up to 17 in a colour JPEG).

    ``labels``: the file is a mask, whose stored values are its labels: one channel, the largest
    of a colour file's colour samples (alpha ignored), and a TIFF's palette indices and
    min-is-white samples as stored (:func:`bpedge._tiff.tiff_samples`). TIFF content is decoded
    by tifffile there, everything else by OpenCV, and only if it is a PNG, JPEG, BMP or TIFF
    whose header declares a size a frame may have (a PNG of a few hundred KB declaring
    20000x20000 pixels decoded into gigabytes)."""
    import cv2

    from bpedge._image_size import declared_hw, refuse_frame_size
    from bpedge._tiff import is_tiff, tiff_samples

    image = None
    if is_tiff(data):
        # Checks the declared size itself, from the one parse of the header it decodes with.
        image = tiff_samples(path, data, what, labels=labels)
    else:
        hw = declared_hw(data)
        if hw is None:
            # OpenCV decodes by content, not name: a WebP or JPEG 2000 file called x.png has a
            # header declared_hw does not read, and a 10 KB one decoded into gigabytes before the
            # size check.
            raise ValueError(f"{path}: {what}not a readable image (its content is not PNG, JPEG, "
                             "BMP or TIFF, or its header is cut short), so it is not decoded")
        refuse_frame_size(path, hw, what)
    if image is None:
        # IMREAD_ANYDEPTH keeps 16-bit and float samples as they are: without it 16-bit ones are
        # shifted right by 8 bits without a word (a 16-bit file holding 8-bit values became an
        # all-black frame, a 16-bit mask of 0/255 an empty one). IMREAD_ANYCOLOR gives one
        # channel or BGR, never alpha.
        flags = cv2.IMREAD_ANYCOLOR | cv2.IMREAD_ANYDEPTH
        try:
            image = cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None
        except cv2.error as exc:  # e.g. OpenCV's own pixel limit, for a format not checked above
            raise ValueError(f"{path}: {what}OpenCV cannot decode it "
                             f"({str(exc).strip()})") from None
        if image is None:
            raise ValueError(f"{path}: {what}not a readable image")
    if labels and image.ndim == 3:
        # A mask's pixel is BP when any colour sample is non-zero: the grey weights made red or
        # blue 1 a 0, so a 0/1 mask in one colour read as empty.
        image = image.max(axis=2)
    return image


def _grey(frame: Any, label: str) -> np.ndarray:
    from bpedge._frames import as_grey_frame

    if frame is None:
        raise SourceError(f"{label} returned no frame")
    given = np.asarray(frame)
    grey = as_grey_frame(given)
    # A capture may hand out one buffer it refills (a frame grabber's ring): each SourceFrame
    # must keep the pixels it was read with.
    return grey.copy() if np.may_share_memory(grey, given) else grey


def _capture_frames(item: _Input, sequence: Hashable) -> Iterator[SourceFrame]:
    owned = not hasattr(item.target, "read")
    target = str(item.target) if isinstance(item.target, Path) else item.target
    capture = _open_capture(target, item.api) if owned else item.target
    try:
        if owned and not capture.isOpened():
            hint = ("is a camera attached and free?" if isinstance(item.target, int)
                    else "is the codec supported and the address reachable?")
            raise SourceError(f"{item.label}: cannot be opened ({hint})")
        _check_declared_size(capture, item.label)
        fps = _capture_fps(capture)
        declared = _declared_count(capture)
        index = 0
        # A video file's frame waits until the next one is read: a file cut short ends in a
        # frame decoded from part of its data (a cut MJPEG AVI: 14-15 grey levels off on
        # average), which must not be segmented as if whole.
        waiting: SourceFrame | None = None
        while True:
            ok, frame = capture.read()
            if not ok:
                if item.kind == "live" and not (declared and index >= declared - 1):
                    # A live source has no end: no frame means it is gone.
                    raise SourceError(f"{item.label} stopped delivering frames after {index} "
                                      "frame(s)", index)
                if index == 0:
                    raise SourceError(f"{item.label}: OpenCV opened it but could not read a "
                                      "frame (is the codec supported?)")
                if declared is not None and index < declared - 1:
                    raise SourceError(f"{item.label}: ended after {index} of the {declared} "
                                      f"frames it declares (truncated?); frame {index - 1}, "
                                      "read where the data ends, is not segmented (it may be "
                                      "cut short too)", index - 1)
                if waiting is not None:
                    yield waiting
                return
            stamp = (index / fps if fps else None) if item.kind == "video" else time.time()
            read = SourceFrame(_grey(frame, item.label), f"{item.stem}_f{index:06d}", index, stamp,
                               item.label, fps, sequence=sequence)
            index += 1
            if item.kind != "video":
                yield read
                continue
            if waiting is not None:
                yield waiting
            waiting = read
    finally:
        release = getattr(capture, "release", None)
        if owned and release is not None:
            release()


def _capture_fps(capture: Any) -> float | None:
    import cv2

    from bpedge._frames import plausible_fps

    get = getattr(capture, "get", None)
    fps = float(get(cv2.CAP_PROP_FPS)) if get is not None else 0.0
    return plausible_fps(fps)


def _check_declared_size(capture: Any, label: str) -> None:
    """Refuse a video or stream whose declared frame size no frame may have, before the first
    frame is decoded (the frame check would refuse it only after decoding). Sizes a source does
    not declare (OpenCV answers 0) are left to the frame check."""
    import cv2

    from bpedge._frames import MAX_SIDE

    get = getattr(capture, "get", None)
    if get is None:
        return
    width, height = float(get(cv2.CAP_PROP_FRAME_WIDTH)), float(get(cv2.CAP_PROP_FRAME_HEIGHT))
    if width > MAX_SIDE or height > MAX_SIDE:
        raise SourceError(f"{label}: declares {width:.0f}x{height:.0f} (width x height) frames; "
                          f"frames must be at most {MAX_SIDE} pixels per side, so none is decoded")


def _declared_count(capture: Any) -> int | None:
    """The frame count a file or a finite stream (a video over HTTP) declares; None for cameras
    and live streams (OpenCV answers 0 or -1)."""
    import cv2

    get = getattr(capture, "get", None)
    count = int(get(cv2.CAP_PROP_FRAME_COUNT)) if get is not None else 0
    return count if count > 0 else None


def _dicom_frames(item: _Input, sequence: Hashable) -> Iterator[SourceFrame]:
    info, frames = iter_dicom_frames(item.target)
    if info.frames == 1:  # a still, in a sequence with the other stills of its folder
        sequence = _still_sequence(item.target)
    for index, image in enumerate(frames):
        name = item.stem if info.frames == 1 else f"{item.stem}_f{index:06d}"
        stamp = index / info.fps if info.fps else None
        yield SourceFrame(image, name, index, stamp, item.label, info.fps, info.spacing_mm,
                          sequence=sequence)


def _truth_beside(path: Path) -> Path | None:
    # The mask's suffix may differ from its frame's in case or as .tif/.tiff (1_1.TIF beside
    # 1_1_mask.tif): training pairs those (bpedge.train.data), so segment must score them too.
    suffix = path.suffix
    family = (".tif", ".tiff") if suffix.lower() in (".tif", ".tiff") else (suffix.lower(),)
    suffixes = dict.fromkeys([suffix, *(s for f in family for s in (f, f.upper()))])
    for tag in ("_mask", "_MASK"):
        for other in suffixes:
            candidate = path.with_name(f"{path.stem}{tag}{other}")
            try:
                if candidate.is_file():
                    return candidate
            except OSError as exc:
                # A frame named near the 255-byte limit has no mask name that fits beside it
                # (is_file raised, and a whole run failed over a good frame).
                if exc.errno != errno.ENAMETOOLONG:
                    raise
    return None


_FRAME_NAME = re.compile(r"^(?P<stem>.*)_f\d{6}$")


#: Longest stem (UTF-8 bytes) that leaves a frame's output file name within the 255 bytes most
#: file systems allow: a still's ``STEM.png``, a video's ``STEM_fNNNNNNN.png`` (up to 7 digits).
_MAX_STILL_STEM = 255 - len(".png")
_MAX_FRAMES_STEM = 255 - len("_f0000000.png")


def _cut(stem: str, limit: int) -> str:
    """``stem`` cut to ``limit`` UTF-8 bytes (whole characters)."""
    data = stem.encode("utf-8", "surrogateescape")
    return stem if len(data) <= limit else data[:limit].decode("utf-8", "ignore")


def _unique_stems(inputs: list[_Input]) -> list[_Input]:
    """Two inputs may share a stem (a/scan.png and b/scan.png): later ones get -2, -3... Names
    compare case-insensitively (a case-insensitive filesystem would merge A.png and a.png), and a
    video's frames (STEM_fNNNNNN) never take the name of an image called like one."""
    # A DICOM file may hold one frame (named by its stem, as an image) or many: both counts.
    framed = {m["stem"] for i in inputs if i.kind in ("image", "dicom")
              if (m := _FRAME_NAME.match(i.stem.casefold()))}
    used: set[str] = set()
    out = []
    for item in inputs:
        limit = _MAX_STILL_STEM if item.kind == "image" else _MAX_FRAMES_STEM
        stem, k = _cut(item.stem, limit), 2
        while stem.casefold() in used or (item.kind != "image" and stem.casefold() in framed):
            stem, k = _cut(item.stem, limit - len(f"-{k}")) + f"-{k}", k + 1
        used.add(stem.casefold())
        out.append(item if stem == item.stem else _Input(item.kind, item.label, stem,
                                                         item.target, item.api))
    return out


class Frames(Iterator[SourceFrame]):
    """The iterator :func:`open_frames` returns. ``length`` is the number of frames the inputs
    declare (None when a live source or a video without a frame count is among them);
    ``skipped`` lists ``(input, reason)`` for inputs passed over with ``on_error="skip"``.
    Use it as a context manager (or call :meth:`close`) to release an open capture early."""

    def __init__(self, inputs: list[_Input], on_error: OnError,
                 on_skip: Callable[[str, str], None] | None) -> None:
        self._inputs = inputs
        #: The files among the inputs (images, videos, DICOM), as given.
        self.files: list[Path] = [i.target for i in inputs if isinstance(i.target, Path)]
        self.skipped: list[tuple[str, str]] = []
        self._on_error = on_error
        self._on_skip = on_skip
        self._generator = self._generate()
        self._peeked: list[SourceFrame] = []  # the frame peek() read, until the iteration takes it

    @property
    def length(self) -> int | None:
        total = 0
        for item in self._inputs:
            if item.kind == "live":
                return None
            if item.kind == "video":
                capture = _open_capture(str(item.target), None)
                try:
                    count = _declared_count(capture) if capture.isOpened() else 0
                finally:
                    capture.release()
                if not count:
                    return None
                total += count
            elif item.kind == "dicom":
                try:
                    total += dicom_frame_count(item.target)
                except (ValueError, OSError):
                    # A file that cannot be counted is not an error of the count: reading its
                    # frames reports it by name (and skips it with on_error="skip").
                    return None
            else:
                total += 1
        return total

    def _generate(self) -> Generator[SourceFrame, None, None]:
        for position, item in enumerate(self._inputs):
            try:
                if item.kind == "image":
                    yield SourceFrame(_read_image(item.target), item.stem, 0, None, item.label,
                                      None, None, _truth_beside(item.target),
                                      _still_sequence(item.target))
                elif item.kind == "dicom":
                    yield from _dicom_frames(item, ("input", position))
                else:
                    yield from _capture_frames(item, ("input", position))
            except (ValueError, OSError, SourceError) as exc:
                if self._on_error == "fail":
                    raise
                reason = str(exc)
                done = getattr(exc, "frames_read", 0)
                if done:  # its first frames went through: what is skipped is the rest
                    reason = f"{reason}; its first {done} frame(s) were read and are kept"
                self.skipped.append((item.label, reason))
                _log.warning("bpedge: skipped %s: %s", item.label, reason)
                if self._on_skip is not None:
                    self._on_skip(item.label, reason)

    def peek(self) -> SourceFrame | None:
        """The next frame, read now but not taken: the iteration still yields it first. None
        when the sources hold no (more) frames.

        Reading the first frame this way opens the first input, so a source that cannot be
        opened or read raises here (``on_error="fail"``), or is skipped here (``"skip"``),
        before a caller makes anything for its frames: ``bpedge segment`` peeks before it
        creates its output folder, so a file that fails leaves no folder behind to refuse the
        rerun. A live source's frame waits here until it is taken: peek just before iterating.
        """
        if not self._peeked:
            try:
                self._peeked.append(next(self._generator))
            except StopIteration:
                return None
        return self._peeked[0]

    def __iter__(self) -> Frames:
        return self

    def __next__(self) -> SourceFrame:
        if self._peeked:
            return self._peeked.pop()
        return next(self._generator)

    def close(self) -> None:
        """Stop reading and release any open capture. Idempotent."""
        self._peeked.clear()
        self._generator.close()

    def __enter__(self) -> Frames:  # noqa: PYI034 - Segmenter's style; Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_frames(*sources: str | os.PathLike[str] | int | Capture, on_error: OnError = "fail",
                on_skip: Callable[[str, str], None] | None = None) -> Frames:
    """Frames from one or more sources, in the order given, as :class:`SourceFrame` objects.

    Args:
        sources: paths, folders, globs, videos, DICOM files, device indices (``0`` or ``"0"``),
            stream URLs, GStreamer pipelines, or objects with ``read() -> (ok, frame)``.
        on_error: ``"fail"`` raises on the first input that cannot be read; ``"skip"`` logs it,
            records it in :attr:`Frames.skipped`, calls ``on_skip(input, reason)`` and goes on.

    Paths are checked now (FileNotFoundError / ValueError naming the argument); files, devices and
    streams are opened as the iterator reaches them, or when :meth:`Frames.peek` reads ahead.
    """
    if on_error not in ("fail", "skip"):
        raise ValueError(f"on_error must be 'fail' or 'skip', got {on_error!r}")
    if not sources:
        raise ValueError("give at least one source: an image, folder, glob, video, DICOM file, "
                         "device index, URL or GStreamer pipeline")
    inputs: list[_Input] = []
    for source in sources:
        inputs += resolve(source)
    return Frames(_unique_stems(inputs), on_error, on_skip)
