"""What ``bpedge segment`` reads: image files, folders of images (the Kaggle layout or plain
images; masks are skipped) and video files, as one ordered stream of grey frames with names."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".mpg", ".mpeg", ".wmv")
_MASK = re.compile(r"_mask$", re.IGNORECASE)


@dataclass(frozen=True)
class FrameSource:
    """One input: an image (``video`` False, one frame) or a video (frames numbered from 0)."""

    path: Path
    video: bool

    @property
    def mask_path(self) -> Path | None:
        """The ground-truth mask beside an image in the Kaggle layout (``{stem}_mask{suffix}``),
        when there is one."""
        if self.video:
            return None
        candidate = self.path.with_name(f"{self.path.stem}_mask{self.path.suffix}")
        return candidate if candidate.is_file() else None


def _natural_key(path: Path) -> list[object]:
    # "2_10" after "2_9": Kaggle names and numbered exports sort the way people expect.
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def collect_sources(inputs: Sequence[Path]) -> list[FrameSource]:
    """Expand files and folders into frame sources, in the order given (folder contents in
    natural name order). Raises FileNotFoundError for a missing path and ValueError for an
    unsupported file type or a folder with no images."""
    if not inputs:
        raise ValueError("give at least one INPUT: an image, a folder of images or a video")
    sources: list[FrameSource] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"input {path} does not exist")
        if path.is_dir():
            images = sorted((p for p in path.iterdir() if p.is_file()
                             and p.suffix.lower() in IMAGE_SUFFIXES and not _MASK.search(p.stem)),
                            key=_natural_key)
            if not images:
                raise ValueError(f"folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)}; "
                                 "*_mask files are skipped)")
            sources += [FrameSource(p, video=False) for p in images]
            continue
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            sources.append(FrameSource(path, video=False))
        elif suffix in VIDEO_SUFFIXES:
            sources.append(FrameSource(path, video=True))
        else:
            raise ValueError(f"{path}: unsupported file type {suffix or '(none)'}; images: "
                             f"{', '.join(IMAGE_SUFFIXES)}; videos: {', '.join(VIDEO_SUFFIXES)}")
    return sources


def read_grey(path: Path) -> np.ndarray:
    """An image file as uint8 (H, W) grey (colour converted with OpenCV's weights); ValueError
    naming the file if OpenCV cannot decode it."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)  # np.fromfile + imdecode: non-ASCII paths work too
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise ValueError(f"{path}: not a readable image")
    return image


def video_frame_count(path: Path) -> int | None:
    """The frame count the container declares (may be missing or approximate)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) if capture.isOpened() else 0
    finally:
        capture.release()
    return count if count > 0 else None


def video_frames(path: Path) -> Iterator[np.ndarray]:
    """The frames of a video as uint8 (H, W) grey, in order; ValueError if it cannot be opened."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        capture.release()
        raise ValueError(f"{path}: OpenCV cannot open this video (is the codec supported?)")
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    finally:
        capture.release()


def iter_frames(sources: Sequence[FrameSource]) -> Iterator[tuple[FrameSource, int, np.ndarray]]:
    """``(source, frame number, grey frame)`` for every frame of every source, in order."""
    for source in sources:
        if source.video:
            for number, frame in enumerate(video_frames(source.path)):
                yield source, number, frame
        else:
            yield source, 0, read_grey(source.path)


def count_frames(sources: Sequence[FrameSource]) -> int | None:
    """Total frames, or None when a video does not declare its length."""
    total = 0
    for source in sources:
        n = video_frame_count(source.path) if source.video else 1
        if n is None:
            return None
        total += n
    return total
