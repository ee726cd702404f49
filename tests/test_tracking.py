"""Tracking: the detector is skipped while the segmentation is confident and inside its crop, runs
every ``detect_every`` frames (a new track sooner, from ``first_check``), and runs again at once
when the track is lost."""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from bpedge._cascade import HostCascade
from bpedge._cascade_spec import CascadeSpec
from bpedge._metrics import dice
from bpedge._tracking import TrackOptions, confident, mask_overlap, next_box

H, W = 120, 160
SPEC = CascadeSpec((60, 80), 0.0, 255.0, (32, 32), 0.0, 255.0, score_threshold=0.5,
                   mask_threshold=0.5)


def disc_frame(cx: float, cy: float, r: float = 12.0) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W]
    return np.where((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r, 220, 20).astype(np.uint8)


class Models:
    """A detector that boxes the bright pixels of its input, and a segmenter whose probability is
    a steep function of brightness: enough to track a disc."""

    def __init__(self) -> None:
        self.detector_calls = 0

    def detector(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.detector_calls += 1
        ys, xs = np.nonzero(batch[0, 0] > 0.4)
        if xs.size == 0:
            return np.array([0.1], np.float32), np.array([[0, 0, 8, 8]], np.float32)
        box = [xs.min() - 2, ys.min() - 2, xs.max() + 3, ys.max() + 3]
        return np.array([0.9], np.float32), np.array([box], np.float32)

    @staticmethod
    def segmenter(batch: np.ndarray) -> np.ndarray:
        return (1 / (1 + np.exp(-(batch - 0.47) * 40))).astype(np.float32)


def run(frames, track):
    models = Models()
    cascade = HostCascade(models.detector, models.segmenter, SPEC)
    results = list(cascade.stream(iter(frames), depth=1, track=track))
    return results, models.detector_calls


@pytest.mark.parametrize(("first_check", "detected"), [
    (1, [0, 1, 3, 7, 15, 25]),  # a new track is checked after 1, 2, 4, 8 frames, then every 10
    (2, [0, 2, 6, 14, 24]),
    (10, [0, 10, 20]),  # checked like a confirmed track
])
def test_tracking_skips_the_detector_and_keeps_the_masks(first_check, detected):
    frames = [disc_frame(50 + 2 * i, 60 + i) for i in range(30)]
    per_frame, calls_per_frame = run(frames, None)
    tracked, calls_tracked = run(frames, TrackOptions(detect_every=10, first_check=first_check))
    assert calls_per_frame == 30
    assert [i for i, r in enumerate(tracked) if "detector" in r.timings] == detected
    assert calls_tracked == len(detected)
    dices = [dice(a.mask, b.mask) for a, b in zip(tracked, per_frame)]
    assert min(dices) > 0.97, dices
    skipped = [r for r in tracked if "detector" not in r.timings]
    assert len(skipped) == 30 - len(detected)
    assert all(r.present and r.score == pytest.approx(0.9) for r in skipped)


def _two_discs(bp: bool) -> np.ndarray:
    """A look-alike (radius 9) at the top left, and the BP (radius 12) at the bottom right when
    ``bp``."""
    frame = disc_frame(40, 35, r=9.0)
    if bp:
        frame = np.maximum(frame, disc_frame(115, 85))
    return frame


class LargestBlobModels(Models):
    """A detector that boxes the largest bright blob, as a detector scores the BP above a
    look-alike when both are in view and boxes the look-alike when it is alone."""

    def detector(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.detector_calls += 1
        count, _labels, stats, _ = cv2.connectedComponentsWithStats(
            (batch[0, 0] > 0.4).astype(np.uint8))
        if count < 2:
            return np.array([0.1], np.float32), np.array([[0, 0, 8, 8]], np.float32)
        x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
        return np.array([0.9], np.float32), np.array([[x - 2, y - 2, x + w + 2, y + h + 2]],
                                                     np.float32)


@pytest.mark.parametrize("first_check", [1, 2])
def test_a_track_begun_on_a_look_alike_is_checked_before_the_bp_returns_for_long(first_check):
    """A false alarm on a frame without the BP starts a track on the look-alike, whose mask is as
    confident as the BP's and stays put: only the detector can tell that the BP is back. Checked
    once every 10 frames, the track stayed on the look-alike for 7 BP frames; a new track's first
    checks now come after ``first_check`` frames, then twice as late each time they agree."""
    frames = [_two_discs(bp=False)] * 3 + [_two_discs(bp=True)] * 9

    def stream(options):
        models = LargestBlobModels()
        cascade = HostCascade(models.detector, models.segmenter, SPEC)
        return list(cascade.stream(iter(frames), depth=1, track=options))

    per_frame = stream(None)
    assert per_frame[0].box[0] < 40 < per_frame[3].box[0]  # look-alike first, then the BP
    old = stream(TrackOptions(detect_every=10, first_check=10))
    assert [dice(a.mask, b.mask) for a, b in zip(old[3:10], per_frame[3:10])] == [0.0] * 7
    checked = stream(TrackOptions(detect_every=10, first_check=first_check))
    # first_check 1: checks on frames 1 (agrees: next in 2) and 3, where the detector finds
    # the BP; first_check 2: on frame 2 (agrees: next in 4), and 6. Every frame after is the BP.
    back = 3 if first_check == 1 else 6
    assert "detector" in checked[back].timings
    dices = [dice(a.mask, b.mask) for a, b in zip(checked, per_frame)]
    assert min(dices[back:]) > 0.97 and min(dices[:3]) > 0.97, dices


def test_lost_track_runs_the_detector_on_that_frame():
    # The disc jumps across the frame at frame 5: the tracked crop sees no disc there.
    frames = [disc_frame(40, 40)] * 5 + [disc_frame(120, 90)] * 5
    tracked, calls = run(frames, TrackOptions(detect_every=100, first_check=100))
    assert calls == 2  # frame 0, and frame 5 when the track was lost
    assert "detector" in tracked[5].timings
    per_frame, _ = run(frames, None)
    for a, b in zip(tracked, per_frame):
        assert dice(a.mask, b.mask) > 0.97


def test_a_confident_mask_away_from_the_last_one_runs_the_detector():
    # The disc is replaced by a small blob inside the tracked crop: confident and inside its
    # crop, but not where the last mask was (IoU ~0.1), so the detector runs on that frame.
    frames = [disc_frame(60, 60)] * 3 + [disc_frame(64, 60, r=4.0)] * 3
    tracked, calls = run(frames, TrackOptions(detect_every=100, first_check=100))
    assert "detector" in tracked[3].timings and "detector" not in tracked[4].timings
    assert calls == 2
    without_rule, calls_without = run(frames, TrackOptions(detect_every=100, first_check=100,
                                                           min_overlap=0.0))
    assert calls_without == 1 and "detector" not in without_rule[3].timings


def test_mask_overlap_reads_the_box_only():
    a, b = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    a[10:20, 10:20], b[10:20, 15:25] = 255, 255
    assert mask_overlap(a, b, (5.0, 5.0, 30.0, 30.0)) == pytest.approx(50 / 150)
    assert mask_overlap(a, a, (9.5, 9.5, 20.5, 20.5)) == 1.0
    assert mask_overlap(a * 0, b * 0, (0.0, 0.0, 5.0, 5.0)) == 0.0


def test_no_bp_means_detection_every_frame():
    frames = [np.full((H, W), 20, np.uint8)] * 6
    tracked, calls = run(frames, TrackOptions())
    assert calls == 6 and not any(r.present for r in tracked)


def test_confidence_rules():
    options = TrackOptions(min_confidence=0.8, min_pixels=4)
    prob = np.zeros((32, 32), np.float32)
    assert not confident(prob, 0.5, options)  # empty
    prob[10:20, 10:20] = 0.95
    assert confident(prob, 0.5, options)
    prob[10:20, 10:20] = 0.6
    assert not confident(prob, 0.5, options)  # kept pixels, but unsure
    prob[:] = 0
    prob[0:5, 4:28] = 0.95
    assert not confident(prob, 0.5, options)  # cut along the crop's top edge
    prob[:] = 0
    prob[0:5, 14:18] = 0.95
    assert confident(prob, 0.5, options)  # reaches the edge at a few pixels, as tight crops do
    mask = np.zeros((H, W), np.uint8)
    assert next_box(mask, 0.1) is None
    mask[10:20, 30:50] = 255
    assert next_box(mask, 0.5) == (20.0, 5.0, 60.0, 25.0)


@pytest.mark.parametrize("bad", [
    {"detect_every": 0}, {"detect_every": True}, {"detect_every": 2.0}, {"margin": -1.0},
    {"margin": None}, {"margin": float("nan")}, {"min_confidence": 2.0},
    {"min_confidence": "0.5"}, {"min_pixels": 0}, {"min_pixels": 2.5},
    {"min_pixels": float("nan")}, {"min_pixels": float("inf")}, {"max_edge_fraction": 1.5},
    {"min_overlap": -0.1}, {"min_overlap": 1.5}, {"min_overlap": True}, {"first_check": 0},
    {"first_check": True}, {"first_check": 1.0}, {"first_check": 11},
])
def test_options_are_checked(bad):
    field = next(iter(bad))
    with pytest.raises(ValueError, match=field):  # the message names the field
        TrackOptions(**bad)  # type: ignore[arg-type]


def test_numpy_numbers_are_options_too():
    options = TrackOptions(detect_every=np.int64(5), min_pixels=np.int32(8),
                           min_confidence=np.float32(0.5))
    assert options.detect_every == 5 and type(options.detect_every) is int
    assert options.min_pixels == 8 and type(options.min_pixels) is int


def test_editing_a_tracked_result_does_not_change_the_next_ones():
    """The tracker compares each tracked mask with the last one: its own copy, not the result
    the caller owns (and may edit) before asking for the next frame."""
    frames = [disc_frame(50 + 2 * i, 60 + i) for i in range(12)]
    untouched, calls = run(frames, TrackOptions(detect_every=100, first_check=100))
    assert calls == 1
    models = Models()
    cascade = HostCascade(models.detector, models.segmenter, SPEC)
    edited = []
    for result in cascade.stream(iter(frames), depth=1, track=TrackOptions(detect_every=100, first_check=100)):
        edited.append((result.box, result.mask.copy()))
        result.mask[:] = 0  # what the caller does with its result
    assert models.detector_calls == 1  # an edited mask would have looked like a lost track
    for want, (box, mask) in zip(untouched, edited):
        assert box == want.box and np.array_equal(mask, want.mask)


def test_frames_without_bp_are_not_segmented_while_tracking():
    # A frame the detector calls empty gives an empty mask whatever the segmenter says, so the
    # tracked stream runs neither the crop nor the segmenter on it; its result is per-frame's.
    frames = ([disc_frame(50, 60)] * 3 + [np.full((H, W), 20, np.uint8)] * 4
              + [disc_frame(52, 61)] * 3)
    models = Models()
    segmenter_calls = []

    def segmenter(batch: np.ndarray) -> np.ndarray:
        segmenter_calls.append(len(batch))
        return Models.segmenter(batch)

    cascade = HostCascade(models.detector, segmenter, SPEC)
    tracked = list(cascade.stream(iter(frames), depth=1,
                                  track=TrackOptions(detect_every=10, first_check=10)))
    per_frame, _ = run(frames, None)
    # Frames 0-2: detect + 2 tracked; 3: tracked crop lost, then detected (absent, no segmenter);
    # 4-6 detected absent; 7 detected; 8-9 tracked.
    assert models.detector_calls == 6
    assert len(segmenter_calls) == 1 + 2 + 1 + 1 + 2
    for k in range(3, 7):
        r, ref = tracked[k], per_frame[k]
        assert not r.present and not r.mask.any()
        assert r.box == ref.box and r.score == ref.score and r.mask.shape == ref.mask.shape
        assert "segmenter" not in r.timings and "detector" in r.timings
    for a, b in zip(tracked, per_frame):
        assert dice(a.mask, b.mask) > 0.97


@pytest.mark.parametrize("widen", [0, 3])
def test_tracked_crops_keep_the_size_of_the_detections_crop(widen: int):
    # The next crop is centred on a mask the crop itself produced. A segmenter whose masks are
    # a little wider than the disc (``widen`` pixels each side) once widened the next crop with
    # them, frame after frame; the crop's size now comes from the last detection.
    frames = [disc_frame(70, 60)] * 30
    models = Models()

    def segmenter(batch: np.ndarray) -> np.ndarray:
        wider = batch if not widen else np.stack([
            cv2.dilate(b[0], np.ones((2 * widen + 1, 2 * widen + 1), np.uint8))[None]
            for b in batch])
        return Models.segmenter(wider)

    spec = dataclasses.replace(SPEC, crop_margin=0.2)
    cascade = HostCascade(models.detector, segmenter, spec)
    tracked = list(cascade.stream(iter(frames), depth=1, track=TrackOptions(detect_every=100, first_check=100)))
    assert models.detector_calls == 1
    detected = tracked[0].box
    sides = [(r.box[2] - r.box[0], r.box[3] - r.box[1]) for r in tracked]
    assert all(w == pytest.approx(sides[0][0]) and h == pytest.approx(sides[0][1])
               for w, h in sides), sides
    centres = [((r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2) for r in tracked]
    assert all(abs(x - (detected[0] + detected[2]) / 2) <= 1 and
               abs(y - (detected[1] + detected[3]) / 2) <= 1 for x, y in centres), centres


@pytest.mark.parametrize("second", ["another subject", "another folder", "another video"])
def test_no_track_crosses_from_one_sequence_into_the_next(second):
    """`segment --track` ran every source through one stream: the next subject's first frame,
    the same size, was cropped where the last subject's BP had been and reported with that
    subject's score, without the detector ever looking at it (here the disc is where the last
    one was, so the crop stays confident and only the sequence can end the track)."""
    from bpedge._tracking import SequenceFrame
    from bpedge.sources import SourceFrame, sequence_of

    def stills(folder, subject):
        return [SourceFrame(disc_frame(50 + 2 * i, 60), f"{subject}_{i + 1}",
                            source=f"{folder}/{subject}_{i + 1}.tif") for i in range(4)]

    def video(path):
        return [SourceFrame(disc_frame(50 + 2 * i, 60), f"v_f{i:06d}", index=i, timestamp=i / 10,
                            source=path) for i in range(4)]

    first = video("a.avi") if second == "another video" else stills("data", "1")
    later = {"another subject": stills("data", "2"), "another folder": stills("other", "1"),
             "another video": video("b.avi")}[second]
    later = [dataclasses.replace(f, image=disc_frame(56, 60)) for f in later]
    assert len({sequence_of(f) for f in first}) == 1 and len({sequence_of(f) for f in later}) == 1
    assert sequence_of(first[0]) != sequence_of(later[0])
    models = Models()
    cascade = HostCascade(models.detector, models.segmenter, SPEC)
    frames = [SequenceFrame(f.image, sequence_of(f)) for f in [*first, *later]]
    results = list(cascade.stream(iter(frames), depth=1, track=TrackOptions(detect_every=100, first_check=100)))
    assert models.detector_calls == 2  # the first frame of each sequence, and no other
    assert "detector" in results[len(first)].timings
    # Plain arrays are one sequence: the same frames track through (the rule above is what ends it).
    _, calls = run([f.image for f in [*first, *later]], TrackOptions(detect_every=100, first_check=100))
    assert calls == 1
