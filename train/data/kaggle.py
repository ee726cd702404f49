"""The Kaggle "Ultrasound Nerve Segmentation" layout: reading frames and indexing a folder of them.

A dataset folder holds ``{subject}_{frame}.tif`` (the image) and ``{subject}_{frame}_mask.tif``
(its mask), 8-bit single-channel LZW TIFF, 580 wide x 420 high in the real data. :func:`scan_dataset`
decodes every pair once, so truncated files, masks of the wrong size and orphans are found before
training starts, and each one is reported by name: it is either skipped (logged and kept in
``DatasetIndex.problems``) or the scan fails with :class:`DatasetError` listing all of them.

Files are decoded by the reader ``bpedge segment`` reads its stills with
(:func:`bpedge.sources.decode_still_frame` and :func:`bpedge.sources.decode_image_samples`), so a
model trains on the pixels it is scored on: a frame goes through the frame rule of
:func:`bpedge._frames.as_grey_frame` (colour to grey with OpenCV's BGR->grey weights; any depth
holding 8-bit values; 12/16-bit data and normalised floats are refused, never clipped or
rescaled), and a mask pixel is BP when its stored value is non-zero, at any depth (0/255, 0/1,
bool, 0/65535, palette indices). TIFF content is decoded with tifffile there, not
``cv2.imread``: plain ``cv2.imread`` silently returns three channels, and on a truncated TIFF
OpenCV prints to stderr and returns ``None`` with no reason, while tifffile raises an error that
says what is wrong.

That reader has the guards ``bpedge segment`` uses for its stills: nothing whose header declares
sides over ``MAX_SIDE`` is decoded (a 435 KB TIFF declaring 20000x20000 took 1.6 GB and half a
minute to decode), and files are read only if they are regular files of at most
``MAX_IMAGE_FILE_BYTES`` (a FIFO named like a mask hung the scan, and a link to /dev/zero was
read until memory ran out).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from bpedge._metrics import box_from_mask
from bpedge._regular_file import NotARegularFile, read_regular_file
from bpedge.sources import MAX_IMAGE_FILE_BYTES, decode_image_samples, decode_still_frame

__all__ = [
    "DatasetError",
    "DatasetIndex",
    "Frame",
    "Problem",
    "read_image",
    "read_mask",
    "scan_dataset",
]

log = logging.getLogger(__name__)

#: ``{subject}_{frame}.tif`` or ``{subject}_{frame}_mask.tif`` (``.tiff`` accepted too).
_NAME = re.compile(r"^(?P<subject>\d+)_(?P<frame>\d+)(?P<mask>_mask)?\.tiff?$", re.IGNORECASE)

#: Reason prefix of problems that never fail a scan: files that are not part of the layout.
IGNORED = "ignored"

class DatasetError(ValueError):
    """The dataset folder has bad files (``scan_dataset(on_error="fail")``); the message names each."""

    def __init__(self, root: Path, problems: Iterable[Problem], headline: str | None = None) -> None:
        self.root = root
        self.problems = tuple(problems)
        lines = "".join(f"\n  {p.path}: {p.reason}" for p in self.problems)
        if headline is None:
            # Not every command that scans a folder takes --on-error (bench and export do not).
            headline = (
                f"{len(self.problems)} bad file(s) in {root} (fix or remove them; "
                "`bpedge train` and `bpedge experiment` can skip them with --on-error skip, "
                "Python callers with on_error='skip'):"
            )
        super().__init__(headline + lines)


@dataclass(frozen=True)
class Frame:
    """One labelled frame. ``box`` is the tight ``(x0, y0, x1, y1)`` box of the mask in pixel-edge
    coordinates (:func:`bpedge._metrics.box_from_mask`), ``None`` when the mask is empty."""

    subject: int
    frame: int
    image_path: Path
    mask_path: Path
    box: tuple[float, float, float, float] | None

    @property
    def key(self) -> str:
        """``"{subject}_{frame}"``: the name split files and reports use for this frame."""
        return f"{self.subject}_{self.frame}"

    @property
    def present(self) -> bool:
        """Whether the frame contains the brachial plexus (its mask is not empty)."""
        return self.box is not None


@dataclass(frozen=True)
class Problem:
    """A file the scan could not use, and why. Reasons starting with ``"ignored"`` are files outside
    the layout (stray names, folders); they are reported but never fail a scan."""

    path: Path
    reason: str


@dataclass(frozen=True)
class DatasetIndex:
    """Every readable frame of a dataset folder, sorted by ``(subject, frame)``.

    ``fingerprint`` is the sha256 of the sorted lines ``"{file name}\\t{sha256 of its bytes}"`` over
    the image and mask of every frame in ``frames``: it changes when any pixel, label or the set of
    frames changes, and not when files are merely copied or touched. Hashing every file's content is
    affordable because the scan reads every byte to decode it anyway (the hash costs a few percent
    of the decode). Skipped files are not part of it: it identifies the data actually indexed.
    """

    root: Path
    frames: tuple[Frame, ...]
    problems: tuple[Problem, ...]
    fingerprint: str

    def positive(self) -> tuple[Frame, ...]:
        """The frames that contain the brachial plexus: what the method trains and tests on."""
        return tuple(f for f in self.frames if f.present)

    def subjects(self) -> tuple[int, ...]:
        """Sorted subject ids present in the index."""
        return tuple(sorted({f.subject for f in self.frames}))

    def select(self, keys: Iterable[str]) -> tuple[Frame, ...]:
        """The frames named by ``keys`` (e.g. one side of a split), in the order given.

        Raises ValueError naming the keys that are not in this index (a split made on other data).
        """
        by_key = {f.key: f for f in self.frames}
        keys = list(keys)
        missing = [k for k in keys if k not in by_key]
        if missing:
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise ValueError(
                f"{len(missing)} frame key(s) are not in the dataset at {self.root}: {shown}; "
                "was the split made on another dataset?"
            )
        return tuple(by_key[k] for k in keys)


def read_image(path: Path) -> np.ndarray:
    """Read a frame as uint8 ``(H, W)`` grey levels, as ``bpedge segment`` reads it
    (:func:`bpedge.sources.decode_still_frame`: colour converted with OpenCV's BGR->grey
    weights, other depths by the frame rule, 8-bit values only); raises ValueError naming the file
    if it is not a regular file, is too large, cannot be decoded or does not hold 8-bit values."""
    path = Path(path)
    return decode_still_frame(path, _read_file(path))


def read_mask(path: Path) -> np.ndarray:
    """Read a mask as uint8 ``(H, W)`` holding only 0 and 255 (any non-zero stored value, at any
    depth, in any colour channel and as a palette index, becomes 255); raises ValueError naming
    the file if it is not a regular file, is too large or cannot be decoded."""
    path = Path(path)
    return _decode_mask(path, _read_file(path))


def _read_file(path: Path) -> bytes:
    try:
        return read_regular_file(path, MAX_IMAGE_FILE_BYTES)
    except NotARegularFile as exc:
        raise ValueError(f"{path}: {_not_regular_reason(exc, path)}") from None


def _not_regular_reason(exc: NotARegularFile, path: Path) -> str:
    # read_regular_file's messages read "{path} is ..."; the Problem or caller names the path.
    return "not read: it " + str(exc).removeprefix(f"{path} ")


def _decode_mask(path: Path, data: bytes) -> np.ndarray:
    labels = decode_image_samples(path, data, labels=True)
    return np.where(labels != 0, np.uint8(255), np.uint8(0))


@dataclass(frozen=True)
class _PairResult:
    frame: Frame | None
    problems: tuple[Problem, ...]
    hashes: tuple[tuple[str, str], ...]  # (file name, sha256) of the pair when it is usable


def _read_bytes(path: Path) -> tuple[bytes | None, Problem | None]:
    try:
        return read_regular_file(path, MAX_IMAGE_FILE_BYTES), None
    except NotARegularFile as exc:
        return None, Problem(path, _not_regular_reason(exc, path))
    except PermissionError:
        return None, Problem(path, "unreadable: permission denied")
    except OSError as exc:
        return None, Problem(path, f"unreadable: {exc.strerror or exc}")


def _load_pair(
    subject: int, frame: int, image_path: Path, mask_path: Path, expected_hw: tuple[int, int] | None
) -> _PairResult:
    """Decode one image/mask pair; every failure becomes a Problem naming the file at fault."""
    problems: list[Problem] = []
    image_bytes, problem = _read_bytes(image_path)
    if problem:
        problems.append(problem)
    mask_bytes, problem = _read_bytes(mask_path)
    if problem:
        problems.append(problem)
    image = mask = None
    if image_bytes is not None:
        try:
            image = decode_still_frame(image_path, image_bytes)
        except ValueError as exc:
            problems.append(Problem(image_path, _reason(exc, image_path)))
    if mask_bytes is not None:
        try:
            mask = _decode_mask(mask_path, mask_bytes)
        except ValueError as exc:
            problems.append(Problem(mask_path, _reason(exc, mask_path)))
    if image is not None and expected_hw is not None and image.shape != tuple(expected_hw):
        problems.append(
            Problem(image_path, f"image is {_hw(image.shape)}, expected {_hw(expected_hw)}")
        )
    if image is not None and mask is not None and mask.shape != image.shape:
        problems.append(
            Problem(mask_path, f"mask is {_hw(mask.shape)} but its image is {_hw(image.shape)}")
        )
    if problems or image_bytes is None or mask_bytes is None or mask is None:
        return _PairResult(None, tuple(problems), ())
    hashes = (
        (image_path.name, hashlib.sha256(image_bytes).hexdigest()),
        (mask_path.name, hashlib.sha256(mask_bytes).hexdigest()),
    )
    return _PairResult(
        Frame(subject, frame, image_path, mask_path, box_from_mask(mask)), (), hashes
    )


def _reason(exc: ValueError, path: Path) -> str:
    # The decode errors start with the path; the Problem already carries it.
    text = str(exc)
    prefix = f"{path}: "
    return text.removeprefix(prefix)


def _hw(shape: tuple[int, ...]) -> str:
    return f"{shape[0]}x{shape[1]} (HxW)"


def _resolve_root(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    if not root.is_dir():
        raise NotADirectoryError(f"dataset path {root} is not a folder")
    has_tifs = any(_NAME.match(p.name) for p in root.iterdir())
    # Users often point at the Kaggle download rather than its train/ folder; accept both.
    if not has_tifs and (root / "train").is_dir():
        return root / "train"
    return root


def _pair_files(root: Path) -> tuple[dict[tuple[int, int], tuple[Path, Path]], list[Problem]]:
    """Match images with masks by name; everything that does not pair up becomes a Problem."""
    images: dict[tuple[int, int], Path] = {}
    masks: dict[tuple[int, int], Path] = {}
    problems: list[Problem] = []
    for path in sorted(root.iterdir()):
        match = _NAME.match(path.name)
        if path.is_dir():
            problems.append(Problem(path, f"{IGNORED}: a folder (only files in {root} are read)"))
            continue
        if match is None:
            problems.append(
                Problem(
                    path,
                    f"{IGNORED}: name does not match {{subject}}_{{frame}}.tif or "
                    "{subject}_{frame}_mask.tif",
                )
            )
            continue
        key = (int(match["subject"]), int(match["frame"]))
        table = masks if match["mask"] else images
        if key in table:
            problems.append(
                Problem(path, f"duplicate of {table[key].name} (both name frame {key[0]}_{key[1]})")
            )
            continue
        table[key] = path
    pairs: dict[tuple[int, int], tuple[Path, Path]] = {}
    for key, image_path in images.items():
        if key in masks:
            pairs[key] = (image_path, masks[key])
        else:
            problems.append(
                Problem(image_path, f"image without mask (expected {key[0]}_{key[1]}_mask.tif)")
            )
    for key, mask_path in masks.items():
        if key not in images:
            problems.append(
                Problem(mask_path, f"mask without image (expected {key[0]}_{key[1]}.tif)")
            )
    return pairs, problems


def _progress(results: Iterator[_PairResult], total: int, enabled: bool) -> Iterator[_PairResult]:
    if not enabled:
        return results
    from tqdm import tqdm

    return iter(tqdm(results, total=total, desc="scanning frames", unit="frame"))


def scan_dataset(
    root: Path,
    *,
    on_error: Literal["skip", "fail"] = "fail",
    expected_hw: tuple[int, int] | None = None,
    progress: bool = False,
) -> DatasetIndex:
    """Index a Kaggle-layout folder, decoding every image and mask once.

    ``root`` is the folder holding the ``.tif`` files, or a folder whose ``train/`` subfolder holds
    them (the Kaggle download). ``expected_hw`` = ``(H, W)``, e.g. ``(420, 580)``, also rejects
    images of another size. Bad files (truncated or undecodable TIFF, frame values not 8-bit, mask
    of another size than its image, image without mask, mask without image, duplicate names, no read
    permission) are each reported with the file's path and reason: ``on_error="fail"`` raises
    :class:`DatasetError` listing all of them; ``"skip"`` logs a warning per file, leaves the frame
    out and keeps the reports in ``problems``. Files outside the layout (stray names, folders) are
    reported as ``"ignored: ..."`` problems and logged, but never fail the scan.

    Raises FileNotFoundError / NotADirectoryError for a missing root, DatasetError when no frame at
    all could be indexed (whatever ``on_error``), ValueError for bad arguments.
    """
    if on_error not in ("skip", "fail"):
        raise ValueError(f"on_error must be 'skip' or 'fail', got {on_error!r}")
    if expected_hw is not None:
        if len(expected_hw) != 2 or min(expected_hw) < 1:
            raise ValueError(f"expected_hw must be (height, width) >= 1, got {expected_hw!r}")
        expected_hw = (int(expected_hw[0]), int(expected_hw[1]))
    root = _resolve_root(root)
    pairs, problems = _pair_files(root)

    keys = sorted(pairs)
    workers = min(8, 2 * (os.cpu_count() or 1))  # decoding and hashing release the GIL
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda k: _load_pair(*k, *pairs[k], expected_hw), keys)
        loaded = list(_progress(results, len(keys), progress))

    frames = [r.frame for r in loaded if r.frame is not None]
    problems.extend(p for r in loaded for p in r.problems)
    problems.sort(key=lambda p: (p.path.name, p.reason))

    failing = [p for p in problems if not p.reason.startswith(IGNORED)]
    if failing and on_error == "fail":
        raise DatasetError(root, failing)
    for p in problems:
        verdict = "noted" if p.reason.startswith(IGNORED) else "skipped"
        log.warning("%s %s: %s", verdict, p.path, p.reason)
    if not frames:
        raise DatasetError(
            root,
            problems,
            f"no usable frame in {root}: expected pairs of {{subject}}_{{frame}}.tif and "
            "{subject}_{frame}_mask.tif" + (f"; {len(problems)} file(s) reported:" if problems else ""),
        )

    digest = hashlib.sha256()
    for name, sha in sorted(h for r in loaded for h in r.hashes):
        digest.update(f"{name}\t{sha}\n".encode())
    return DatasetIndex(
        root=root, frames=tuple(frames), problems=tuple(problems), fingerprint=digest.hexdigest()
    )
