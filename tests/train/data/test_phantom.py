"""The phantom generator: layout, LZW 8-bit TIFF, 0/255 masks, empty share, determinism."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
from bpedge.train.data.kaggle import read_mask, scan_dataset
from bpedge.train.data.phantom import PhantomConfig, generate_phantom, render_subject

SMALL = PhantomConfig(subjects=2, frames=5, seed=7, height=140, width=200, empty_fraction=0.4)


def test_layout_is_kaggle(phantom_dir: Path) -> None:
    names = sorted(p.name for p in phantom_dir.iterdir())
    expected = sorted(
        name
        for s in range(1, 5)
        for f in range(1, 13)
        for name in (f"{s}_{f}.tif", f"{s}_{f}_mask.tif")
    )
    assert names == expected
    leftovers = [p.name for p in phantom_dir.parent.iterdir() if p.name != phantom_dir.name]
    assert leftovers == []  # no half-written sibling folder


def test_files_are_8bit_grey_lzw_and_cv2_reads_them(phantom_dir: Path) -> None:
    for name in ("1_1.tif", "3_7_mask.tif"):
        with tifffile.TiffFile(phantom_dir / name) as tif:
            page = tif.pages[0]
            assert page.compression == tifffile.COMPRESSION.LZW
            assert page.dtype == np.uint8 and page.shape == (420, 580)
            pixels = page.asarray()
        np.testing.assert_array_equal(
            cv2.imread(str(phantom_dir / name), cv2.IMREAD_GRAYSCALE), pixels
        )


def test_masks_are_0_255_with_the_right_empty_share(phantom_dir: Path) -> None:
    index = scan_dataset(phantom_dir)
    for f in index.frames:
        raw = tifffile.imread(f.mask_path)
        assert set(np.unique(raw)) <= {0, 255}
    for subject in index.subjects():
        flags = [f.present for f in index.frames if f.subject == subject]
        assert flags.count(False) == round(12 * 0.2)
        empties = [i for i, present in enumerate(flags) if not present]
        assert empties == list(range(empties[0], empties[0] + len(empties)))  # one run: a video


def test_bp_is_small_and_inside_the_frame(phantom_dir: Path) -> None:
    for f in scan_dataset(phantom_dir).positive():
        x0, y0, x1, y1 = f.box
        assert 40 <= x1 - x0 <= 200, f.key
        assert x0 > 0 and y0 > 0 and x1 < 580 and y1 < 420
        area = (read_mask(f.mask_path) > 0).mean()
        assert area < 0.08, f.key


def test_bp_looks_like_fascicles_with_bright_rims(phantom_dir: Path) -> None:
    # Inside the mask, hypoechoic fascicle centres and hyperechoic rims both occur: the BP region's
    # spread of grey levels is wider than that of the tissue around it.
    from bpedge.train.data.kaggle import read_image

    index = scan_dataset(phantom_dir)
    wider = 0
    for f in index.positive():
        image, mask = read_image(f.image_path).astype(np.float32), read_mask(f.mask_path) > 0
        smooth = cv2.GaussianBlur(image, (0, 0), 2.0)  # look past the speckle
        ring = cv2.dilate(mask.astype(np.uint8), np.ones((41, 41), np.uint8)).astype(bool) & ~mask
        wider += smooth[mask].std() > 1.2 * smooth[ring].std()
    assert wider >= 0.8 * len(index.positive())


def test_same_seed_same_files_other_seed_other_pixels(tmp_path: Path) -> None:
    a = generate_phantom(tmp_path / "a", SMALL)
    b = generate_phantom(tmp_path / "b", SMALL)
    c = generate_phantom(tmp_path / "c", PhantomConfig(**{**SMALL.__dict__, "seed": 8}))
    for name in ("1_1.tif", "2_5.tif", "2_5_mask.tif"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert not np.array_equal(tifffile.imread(a / "1_1.tif"), tifffile.imread(c / "1_1.tif"))


def test_a_subject_does_not_depend_on_how_many_are_generated() -> None:
    one = list(render_subject(PhantomConfig(**{**SMALL.__dict__, "subjects": 1}), 1))
    two = list(render_subject(SMALL, 1))
    for (fa, ia, ma), (fb, ib, mb) in zip(one, two, strict=True):
        assert fa == fb
        np.testing.assert_array_equal(ia, ib)
        np.testing.assert_array_equal(ma, mb)


def test_frames_of_a_subject_are_a_video(tmp_path: Path) -> None:
    frames = list(render_subject(PhantomConfig(subjects=2, frames=6, empty_fraction=0.0), 1))
    other = next(iter(render_subject(PhantomConfig(subjects=2, frames=6), 2)))[1]

    def corr(a: np.ndarray, b: np.ndarray) -> float:
        small = [cv2.resize(x, (58, 42), interpolation=cv2.INTER_AREA).ravel() for x in (a, b)]
        return float(np.corrcoef(*small)[0, 1])

    # Successive frames resemble each other far more than frames of another subject do.
    within = min(corr(frames[i][1], frames[i + 1][1]) for i in range(5))
    assert within > corr(frames[0][1], other) + 0.2
    assert not np.array_equal(frames[0][1], frames[1][1])  # but the probe moves


def test_empty_fraction_extremes() -> None:
    none_empty = PhantomConfig(subjects=1, frames=4, height=100, width=120, empty_fraction=0.0)
    all_empty = PhantomConfig(subjects=1, frames=4, height=100, width=120, empty_fraction=1.0)
    assert all(m.any() for _, _, m in render_subject(none_empty, 1))
    assert not any(m.any() for _, _, m in render_subject(all_empty, 1))


@pytest.mark.parametrize(
    "bad",
    [{"subjects": 0}, {"frames": 0}, {"empty_fraction": 1.5}, {"height": 50}, {"seed": -1},
     # No upper bound once asked numpy for 37 GiB (exit 1, after the folder was made).
     {"height": 100_000}, {"width": 4097}, {"frames": 100_001}, {"subjects": 10_001}],
)
def test_bad_config_is_refused(bad: dict) -> None:
    sized = bool(set(bad) & {"subjects", "frames", "height", "width"})
    with pytest.raises(ValueError, match="must be within" if sized else None):
        PhantomConfig(**bad)


def test_an_empty_folder_of_the_users_keeps_its_permissions(tmp_path: Path) -> None:
    """It was replaced by a new folder, mode 0755, whatever the user's folder had."""
    out = tmp_path / "private"
    out.mkdir(mode=0o700)
    out.chmod(0o700)
    generate_phantom(out, PhantomConfig(subjects=1, frames=2, height=96, width=96))
    assert oct(out.stat().st_mode & 0o777) == oct(0o700)
    assert len(list(out.iterdir())) == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private"]  # no hidden folder left
    new = generate_phantom(tmp_path / "new", PhantomConfig(subjects=1, frames=1, height=96,
                                                            width=96))
    assert oct(new.stat().st_mode & 0o777) == oct(0o755)


def test_memory_holds_a_few_frames_whatever_the_frame_count(tmp_path: Path, monkeypatch) -> None:
    """Frames waited for their writer until the subject ended: a long subject's frames all sat
    in memory at once when rendering outran the TIFF writers."""
    import threading

    from bpedge.train.data import phantom

    gate, waiting, written = threading.Event(), [], []
    real_write = phantom._write_tiff

    def slow_write(path: Path, array) -> None:
        waiting.append(path)
        gate.wait(5)
        real_write(path, array)
        written.append(path)

    rendered = []
    real_render = phantom.render_subject

    def counting_render(config, subject):
        for item in real_render(config, subject):
            rendered.append((len(rendered), len(written)))
            yield item

    monkeypatch.setattr(phantom, "_write_tiff", slow_write)
    monkeypatch.setattr(phantom, "render_subject", counting_render)
    timer = threading.Timer(1.0, gate.set)
    timer.start()
    try:
        generate_phantom(tmp_path / "out", PhantomConfig(subjects=1, frames=40, height=96,
                                                         width=96))
    finally:
        timer.cancel()
    # While the writers were held, rendering stopped a few frames ahead of them.
    ahead = max(n - w / 2 for n, w in rendered)
    assert ahead <= phantom._WRITES_AHEAD + 2, ahead
    assert len(written) == 80


def test_refuses_a_non_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not an empty folder"):
        generate_phantom(tmp_path, SMALL)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert len(list(generate_phantom(empty, SMALL).iterdir())) == 2 * 5 * 2
    with pytest.raises(ValueError, match="subject must be"):
        next(render_subject(SMALL, 3))


@pytest.mark.parametrize("target", ["empty folder", "nothing"])
def test_an_out_that_is_a_symbolic_link_is_refused_before_any_frame(tmp_path: Path,
                                                                    target: str) -> None:
    # It used to render every frame, then fail publishing with a raw "Not a directory".
    from bpedge._out_dir import OutDirRefused

    real = tmp_path / "real"
    if target == "empty folder":
        real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(OutDirRefused, match="symbolic link"):
        generate_phantom(link, PhantomConfig(subjects=1, frames=1, height=96, width=96))
    assert link.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["link", *(["real"] if target == "empty folder" else [])])


def test_a_folder_holding_only_a_lock_file_is_refused_before_any_frame(tmp_path: Path) -> None:
    # It used to render every frame, then fail publishing with "[Errno 39] Directory not empty".
    from bpedge._out_dir import LOCK_NAME, OutDirRefused

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text("mine")
    config = PhantomConfig(subjects=1, frames=1, height=96, width=96)
    with pytest.raises(OutDirRefused, match=LOCK_NAME.replace(".", r"\.")) as info:
        generate_phantom(out, config)
    assert str(out) in str(info.value)
    assert [p.name for p in out.iterdir()] == [LOCK_NAME]
    assert (out / LOCK_NAME).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left


TINY = PhantomConfig(subjects=1, frames=1, height=96, width=96)


def _left_beside(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a folder to another user needs root")
def test_an_empty_folder_of_another_user_keeps_its_owner_and_group(tmp_path: Path) -> None:
    """Run by root for someone's empty 0700 folder, the dataset folder that replaced it was
    root's: its owner could no longer list it."""
    out = tmp_path / "theirs"
    out.mkdir()
    os.chown(out, 65534, 65534)
    out.chmod(0o2750)
    generate_phantom(out, TINY)
    made = out.stat()
    assert (made.st_uid, made.st_gid) == (65534, 65534)
    assert oct(made.st_mode & 0o7777) == oct(0o2750)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="making a folder another user's needs root")
def test_an_owner_the_dataset_folder_cannot_take_is_refused_before_any_frame(
        tmp_path: Path, monkeypatch) -> None:
    from bpedge.train.data import phantom

    from bpedge._out_dir import OutDirRefused

    out = tmp_path / "theirs"
    out.mkdir()
    os.chown(out, 65534, 65534)  # someone else's; chown below fails as it does for non-root

    def chown(*args) -> None:
        raise PermissionError(1, "Operation not permitted")

    rendered = []
    monkeypatch.setattr(phantom.os, "chown", chown)
    monkeypatch.setattr(phantom, "render_subject", lambda *a: rendered.append(1) or iter(()))
    with pytest.raises(OutDirRefused, match="owner or group"):
        generate_phantom(out, TINY)
    assert not rendered and _left_beside(tmp_path) == ["theirs"] and not list(out.iterdir())


@pytest.mark.parametrize("appears", ["a file", "another run's dataset"])
def test_what_takes_out_while_phantom_runs_is_left_where_it_is(tmp_path: Path, monkeypatch,
                                                                appears: str) -> None:
    """A file put at a new --out mid-run was swapped to the hidden name (and the run failed
    with 'Not a directory'); another run's dataset published between the last check and the
    swap was swapped away and this run's put in its place."""
    from bpedge.train.data import phantom

    from bpedge._out_dir import OutDirRefused

    out = tmp_path / "ds"
    if appears == "a file":
        real_render = phantom.render_subject

        def render(config, subject):
            yield from real_render(config, subject)
            out.write_text("mine")

        monkeypatch.setattr(phantom, "render_subject", render)
    else:
        out.mkdir()
        real_exchange = phantom.exchange

        def exchange(a, b) -> bool:  # the other run publishes just before this one's swap
            (out / "1_1.tif").write_text("the other run's")
            return real_exchange(a, b)

        monkeypatch.setattr(phantom, "exchange", exchange)
    with pytest.raises(OutDirRefused, match="while phantom ran"):
        generate_phantom(out, TINY)
    if appears == "a file":
        assert out.read_text() == "mine"
    else:
        assert [p.name for p in out.iterdir()] == ["1_1.tif"]
        assert (out / "1_1.tif").read_text() == "the other run's"
    assert _left_beside(tmp_path) == ["ds"]  # this run's frames are gone, nothing hidden left


def test_out_paths_that_used_to_fail_after_rendering(tmp_path: Path, monkeypatch) -> None:
    from bpedge.train.data import phantom

    from bpedge._out_dir import OutDirRefused

    # "." in an empty folder: the hidden folder was made inside it, which then was not empty;
    # made to work, it left the shell in a deleted folder (the dataset replaces the folder).
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    for current in (Path("."), Path(""), here):
        with pytest.raises(OutDirRefused, match="current folder"):
            generate_phantom(current, TINY)
    assert here.is_dir() and _left_beside(here) == []
    monkeypatch.chdir(tmp_path.parent)
    # A 250-byte name: the hidden name beside it was over the 255-byte limit.
    long = tmp_path / ("a" * 250)
    generate_phantom(long, TINY)
    assert len(list(long.iterdir())) == 2
    # A path through a file: a raw "[Errno 17] File exists" and exit 1.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(NotADirectoryError, match="a part of its path is a file"):
        generate_phantom(tmp_path / "afile" / "sub", TINY)
    # A mount point cannot be swapped out (EBUSY, after every frame was rendered).
    mount = tmp_path / "mnt"
    mount.mkdir()
    monkeypatch.setattr(phantom.os.path, "ismount", lambda p: Path(p) == mount)
    with pytest.raises(OutDirRefused, match="mount point"):
        generate_phantom(mount, TINY)
    assert (tmp_path / "afile").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["here", "a" * 250, "afile",
                                                                 "mnt"])


def test_a_bind_mount_is_a_mount_point(tmp_path: Path, monkeypatch) -> None:
    """os.path.ismount does not see a bind mount of the same filesystem: the swap failed with
    EBUSY after every frame had been rendered."""
    from bpedge.train.data import phantom

    bound = tmp_path / "with space"
    bound.mkdir()
    escaped = str(bound).replace(" ", "\\040")
    line = f"36 35 98:0 /src {escaped} rw,noatime master:1 - ext4 /dev/root rw"
    real_read = phantom.Path.read_text

    def read_text(self, *args, **kwargs):
        if str(self) == "/proc/self/mountinfo":
            return f"{line}\n"
        return real_read(self, *args, **kwargs)

    monkeypatch.setattr(phantom.os.path, "ismount", lambda p: False)
    monkeypatch.setattr(phantom.Path, "read_text", read_text)
    assert phantom._is_mount_point(bound)
    assert not phantom._is_mount_point(tmp_path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="giving a folder another group needs root")
def test_in_a_set_group_id_parent_the_group_and_the_bit_are_kept(tmp_path: Path) -> None:
    """A new --out lost the set-group-ID bit a plain mkdir gives it there; an empty --out of
    group root in such a parent became the parent's group."""
    parent = tmp_path / "lab"
    parent.mkdir()
    os.chown(parent, 0, 100)
    parent.chmod(0o2775)
    new = generate_phantom(parent / "new", TINY)
    assert new.stat().st_gid == 100 and new.stat().st_mode & 0o2000
    mine = parent / "mine"
    mine.mkdir()
    os.chown(mine, 0, 0)
    mine.chmod(0o750)
    generate_phantom(mine, TINY)
    assert (mine.stat().st_gid, oct(mine.stat().st_mode & 0o7777)) == (0, oct(0o750))


def test_an_empty_read_only_out_of_the_users_gets_its_frames(tmp_path: Path) -> None:
    """The folder's mode was given to the hidden folder before the frames: 0555 failed the
    first write."""
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        generate_phantom(out, TINY)
        assert oct(out.stat().st_mode & 0o777) == oct(0o555)
        assert len(list(out.iterdir())) == 2
    finally:
        out.chmod(0o755)


def test_where_the_out_path_leads(tmp_path: Path, monkeypatch) -> None:
    from bpedge.train.data import phantom

    from bpedge._out_dir import OutDirRefused

    # lnk/../ds is ds beside the link's target, as mkdir puts it (it was put beside lnk).
    (tmp_path / "real" / "inner").mkdir(parents=True)
    (tmp_path / "lnk").symlink_to(tmp_path / "real" / "inner")
    generate_phantom(tmp_path / "lnk" / ".." / "ds", TINY)
    assert (tmp_path / "real" / "ds" / "1_1.tif").is_file() and not (tmp_path / "ds").exists()
    # A parent this user may not write: the error named the hidden folder, exit 1.

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(phantom.tempfile, "mkdtemp", refused)
    with pytest.raises(OutDirRefused, match=r"cannot make a folder in .* \(Permission denied\)"):
        generate_phantom(tmp_path / "ds2", TINY)


def test_a_new_folder_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        made = generate_phantom(tmp_path / "new", TINY)
    finally:
        os.umask(old)
    assert oct(made.stat().st_mode & 0o777) == oct(0o700)  # was 0755 whatever the umask
