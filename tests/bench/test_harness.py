"""The timing loop and the accuracy pass, on a fake Segmenter whose answers and times are known."""

from __future__ import annotations

import numpy as np
import pytest

from bpedge._bench.frames import BenchFrames
from bpedge._bench.harness import RunSettings, measure_accuracy, time_row
from bpedge._metrics import box_from_mask
from bpedge._result import Result


def _frames(n: int = 4) -> BenchFrames:
    images, masks = [], []
    for k in range(n):
        img = np.full((40, 60), 10 * k, np.uint8)
        mask = np.zeros((40, 60), np.uint8)
        if k % 2 == 0:  # even frames show the BP
            mask[5 + k : 20 + k, 10:30] = 255
        images.append(img)
        masks.append(mask)
    return BenchFrames(tuple(images), tuple(masks), tuple(map(str, range(n))), "test")


class FakeSegmenter:
    """Answers with the truth mask for frames in ``truth`` (keyed by the frame's first value),
    an empty mask otherwise; counts calls; fixed stage timings."""

    def __init__(self, frames: BenchFrames, right: bool = True) -> None:
        self.truth = {int(img[0, 0]): m for img, m in zip(frames.images, frames.masks)}
        self.right = right
        self.calls = self.batches = self.streamed = 0

    def _result(self, image: np.ndarray) -> Result:
        mask = self.truth[int(image[0, 0])] if self.right else np.zeros_like(image)
        box = box_from_mask(mask) or (0.0, 0.0, 60.0, 40.0)
        return Result(mask, box, 0.9, True, {"preprocess": 1.0, "detector": 2.0, "total": 3.0})

    def __call__(self, image: np.ndarray) -> Result:
        self.calls += 1
        return self._result(image)

    def segment_batch(self, images: list[np.ndarray]) -> list[Result]:
        self.batches += 1
        return [self._result(i) for i in images]

    def stream(self, images, depth):  # type: ignore[no-untyped-def]
        for image in images:
            self.streamed += 1
            yield self._result(image)


def test_accuracy_of_a_perfect_and_an_empty_answer():
    frames = _frames()
    good = measure_accuracy(FakeSegmenter(frames), frames)
    assert good.positives == 2 and good.frames == 4
    assert good.dice_positive == 1.0 and good.box_iou_positive == 1.0 and good.dice_all == 1.0
    assert good.detected == 1.0
    bad = measure_accuracy(FakeSegmenter(frames, right=False), frames)
    assert bad.dice_positive == 0.0
    assert bad.dice_all == pytest.approx(0.5)  # the two empty frames: empty vs empty = 1


def test_iterations_count_calls_after_warm_up():
    frames = _frames()
    fake = FakeSegmenter(frames)
    t = time_row(fake, frames, RunSettings(warmup_seconds=0, iterations=7, seconds=None))
    assert fake.calls == 1 + 7  # one untimed warm-up call
    assert t.frames == 7 and t.end_to_end.n == 7
    assert list(t.stages) == ["preprocess", "detector", "total"]
    assert t.stages["detector"].median == 2.0
    assert t.fps > 0


def test_batches_and_streams():
    frames = _frames()
    fake = FakeSegmenter(frames)
    t = time_row(fake, frames, RunSettings(warmup_seconds=0, iterations=3, seconds=None, batch=4))
    assert fake.batches == 3 and t.frames == 12 and t.end_to_end.n == 3
    fake = FakeSegmenter(frames)
    t = time_row(fake, frames, RunSettings(warmup_seconds=0, iterations=5, seconds=None, depth=3))
    assert fake.streamed == 5 and t.frames == 5 and t.end_to_end.n == 5


def test_seconds_and_warm_up_run_for_about_that_long():
    frames = _frames()
    fake = FakeSegmenter(frames)
    t = time_row(fake, frames, RunSettings(warmup_seconds=0.05, iterations=None, seconds=0.05))
    assert t.wall_seconds >= 0.05
    assert fake.calls > t.frames  # warm-up calls are not in the timings


@pytest.mark.parametrize("kwargs,message", [
    ({"iterations": 3, "seconds": 2.0}, "exactly one"),
    ({"iterations": None, "seconds": None}, "exactly one"),
    ({"iterations": 0, "seconds": None}, "--iterations"),
    ({"batch": 2, "depth": 2}, "not both"),
    ({"warmup_seconds": -1}, "--warmup-seconds"),
])
def test_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunSettings(**kwargs)


@pytest.mark.parametrize("swap", ["segmenter in the detector's place",
                                  "detector in the segmenter's place"])
def test_the_pytorch_row_refuses_a_checkpoint_of_the_other_role(tiny_bundle, tmp_path, swap):
    # Its hash fixed in the manifest, so only the checkpoint's content says what it is: a U-Net
    # in the detector's place ran until its outputs failed to unpack, naming no file.
    import json
    import shutil

    pytest.importorskip("torch")
    from bpedge._bench.backends import RowChoice, RowUnavailable, open_row
    from bpedge._manifest_fields import sha256_file
    from bpedge.bundle import Bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    role, other = ("detector", "segmenter") if swap.startswith("segmenter") else (
        "segmenter", "detector")
    manifest = json.loads((bundle / "manifest.json").read_text())
    target = bundle / manifest["models"][role]["checkpoint"]["file"]
    shutil.copyfile(bundle / manifest["models"][other]["checkpoint"]["file"], target)
    manifest["models"][role]["checkpoint"]["sha256"] = sha256_file(target)
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(RowUnavailable, match=rf"{target.name} holds a {other} checkpoint"):
        open_row(Bundle.open(bundle), RowChoice("torch", "fp32"), threads=1, max_batch=1)
    # The bundle as exported opens its PyTorch row.
    with open_row(Bundle.open(tiny_bundle), RowChoice("torch", "fp32"), threads=1,
                  max_batch=1) as row:
        assert row.backend == "torch"
