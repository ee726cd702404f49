"""No command deletes, replaces or writes over a folder it did not make.

Every command that writes ``--out`` is pointed at folders a careless user would give it: the
training data folder, a training run folder holding ``best.pt``, a folder of their own notes, a
folder holding their ground-truth ``masks/``. Each is refused with exit 2 and one ``error:`` line
naming the folder, before anything is written, and every file in it is left byte for byte.
A folder the command made itself is still reused (re-run, resume, ``--force``)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from bpedge.train._run_files import RECORD_NAME
from bpedge.train.data import read_image
from typer.testing import CliRunner

from bpedge._cli.app import build_app
from bpedge._out_dir import MARKER_NAME, lock_out_dir, made_by
from bpedge.bundle import Bundle

runner = CliRunner()


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` and its sha256."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_refused_in_one_line(result, folder: Path) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(folder) in errors[0], result.output
    assert "Traceback" not in result.output


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    return folder


@pytest.fixture
def data_copy(phantom_dir: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(phantom_dir, target)
    return target


# --- export --------------------------------------------------------------------------------------


def export_args(tiny_checkpoints: tuple[Path, Path], out: Path, data: Path) -> list[str]:
    return ["export", "--detector", str(tiny_checkpoints[0]), "--segmenter",
            str(tiny_checkpoints[1]), "--out", str(out), "--data", str(data), "--max-val", "2"]


@pytest.mark.parametrize("kind", ["the data folder", "a run folder", "a user folder"])
def test_export_force_never_replaces_a_folder_export_did_not_make(
    tiny_checkpoints: tuple[Path, Path], data_copy: Path, user_folder: Path, tmp_path: Path,
    kind: str,
) -> None:
    if kind == "the data folder":
        target = data_copy
    elif kind == "a run folder":
        target = tmp_path / "run"
        shutil.copytree(tiny_checkpoints[0].parent, target)
    else:
        target = user_folder
    before = snapshot(target)
    result = runner.invoke(build_app(), [*export_args(tiny_checkpoints, target, data_copy),
                                         "--force"])
    assert_refused_in_one_line(result, target)
    assert "did not make" in result.output
    assert snapshot(target) == before


def test_export_force_replaces_a_bundle_export_made(
    tiny_checkpoints: tuple[Path, Path], phantom_dir: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "bundle"
    args = export_args(tiny_checkpoints, out, phantom_dir)
    assert runner.invoke(build_app(), args).exit_code == 0
    assert made_by(out, "export")
    first = Bundle.open(out).manifest.created
    again = runner.invoke(build_app(), args)
    assert again.exit_code == 2 and "--force" in again.output
    replaced = runner.invoke(build_app(), [*args, "--force"])
    assert replaced.exit_code == 0, replaced.output
    assert Bundle.open(out).manifest.created >= first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_bundle_with_a_file_of_the_users_is_not_replaced(tiny_bundle: Path,
                                                           tiny_checkpoints: tuple[Path, Path],
                                                           phantom_dir: Path,
                                                           tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    (out / MARKER_NAME).unlink()  # a bundle from before markers: recognised by its manifest
    (out / "my-notes.txt").write_text("keep")
    before = snapshot(out)
    result = runner.invoke(build_app(), [*export_args(tiny_checkpoints, out, phantom_dir),
                                         "--force"])
    assert_refused_in_one_line(result, out)
    assert snapshot(out) == before


def test_a_bundle_export_made_with_the_users_files_in_it_is_not_replaced(
    tiny_bundle: Path, tiny_checkpoints: tuple[Path, Path], phantom_dir: Path, tmp_path: Path,
) -> None:
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, out)
    assert made_by(out, "export")  # the marker stays: it must not vouch for the user's files
    (out / "NOTES.txt").write_text("keep")
    (out / "my_results").mkdir()
    (out / "my_results" / "r.txt").write_text("keep too")
    before = snapshot(out)
    result = runner.invoke(build_app(), [*export_args(tiny_checkpoints, out, phantom_dir),
                                         "--force"])
    assert_refused_in_one_line(result, out)
    assert str(out / "NOTES.txt") in result.output
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_the_data_fingerprint_override_is_its_own_flag(
    tiny_checkpoints: tuple[Path, Path], tmp_path: Path,
) -> None:
    from bpedge.train.data import PhantomConfig, generate_phantom

    other = generate_phantom(tmp_path / "other", PhantomConfig(subjects=3, frames=2, seed=5,
                                                               height=96, width=128))
    args = export_args(tiny_checkpoints, tmp_path / "b", other)
    forced = runner.invoke(build_app(), [*args, "--force"])
    assert forced.exit_code == 2 and "--accept-other-data" in forced.output
    assert not (tmp_path / "b").exists()


# --- segment -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("seg_in") / "images"
    folder.mkdir()
    for stem in ("1_1", "1_2"):
        cv2.imwrite(str(folder / f"{stem}.png"), read_image(phantom_dir / f"{stem}.tif"))
    return folder


def segment_args(bundle: Path, inputs: list[Path], out: Path, *extra: str) -> list[str]:
    return ["segment", str(bundle), *map(str, inputs), "--out", str(out), "--no-progress",
            "--backend", "onnxruntime", *extra]


def test_segment_never_writes_over_the_users_masks(tiny_bundle: Path, images: Path,
                                                   tmp_path: Path) -> None:
    out = tmp_path / "study"
    (out / "masks").mkdir(parents=True)
    truth = np.zeros((420, 580), np.uint8)
    truth[100:200, 100:300] = 255
    cv2.imwrite(str(out / "masks" / "1_1.png"), truth)  # the user's ground truth, same name
    before = snapshot(out)
    refused = runner.invoke(build_app(), segment_args(tiny_bundle, [images], out))
    assert_refused_in_one_line(refused, out)
    assert "--add-to-existing" in refused.output
    added = runner.invoke(build_app(), segment_args(tiny_bundle, [images], out,
                                                    "--add-to-existing"))
    assert added.exit_code == 2 and "never overwritten" in added.output
    forced = runner.invoke(build_app(), segment_args(tiny_bundle, [images], out,
                                                     "--add-to-existing", "--force"))
    assert forced.exit_code == 2
    assert snapshot(out) == before
    assert not (out / MARKER_NAME).exists() or not made_by(out, "segment")


def test_segment_adds_to_a_users_folder_only_when_told_and_replaces_only_its_own(
    tiny_bundle: Path, images: Path, user_folder: Path,
) -> None:
    before = snapshot(user_folder)
    args = segment_args(tiny_bundle, [images], user_folder, "--add-to-existing")
    assert runner.invoke(build_app(), args).exit_code == 0
    assert (user_folder / "results.csv").is_file()
    assert sorted(p.name for p in (user_folder / "masks").iterdir()) == ["1_1.png", "1_2.png"]
    assert not made_by(user_folder, "segment")  # only the entries it added are segment's
    again = runner.invoke(build_app(), [*args, "--force"])
    assert again.exit_code == 0, again.output
    after = snapshot(user_folder)
    assert {k: after[k] for k in before} == before


def test_segment_output_is_complete_or_marked_incomplete(tiny_bundle: Path, images: Path,
                                                         tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(images, broken)
    (broken / "1_3.png").write_bytes(b"not a png")  # fails after the first two frames
    out = tmp_path / "out"
    failed = runner.invoke(build_app(), segment_args(tiny_bundle, [broken], out))
    assert failed.exit_code == 2 and "not a readable image" in failed.output
    assert not (out / "results.csv").exists()
    note = (out / "INCOMPLETE.txt").read_text()
    assert "has not finished" in note and "not a readable image" in note
    rerun = runner.invoke(build_app(), segment_args(tiny_bundle, [images], out))
    assert rerun.exit_code == 2 and "did not finish" in rerun.output
    forced = runner.invoke(build_app(), segment_args(tiny_bundle, [images], out, "--force"))
    assert forced.exit_code == 0, forced.output
    assert not (out / "INCOMPLETE.txt").exists()
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["1_1.png", "1_2.png"]
    assert len((out / "results.csv").read_text().splitlines()) == 3


def test_two_segment_runs_never_share_one_out(tiny_bundle: Path, images: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with lock_out_dir(out, "segment"):  # another run holds the folder
        busy = runner.invoke(build_app(), segment_args(tiny_bundle, [images], out))
    assert busy.exit_code == 2 and "another `bpedge segment`" in busy.output
    assert not (out / "results.csv").exists() and not (out / "masks").exists()


def test_a_video_frame_never_takes_an_images_name(tiny_bundle: Path, phantom_dir: Path,
                                                  tmp_path: Path) -> None:
    frames = [read_image(phantom_dir / f"3_{k}.tif") for k in (1, 2)]
    video = tmp_path / "probe.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10,
                             (frames[0].shape[1], frames[0].shape[0]))
    for f in frames:
        writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    writer.release()
    image = tmp_path / "probe_f000001.png"
    cv2.imwrite(str(image), read_image(phantom_dir / "1_1.tif"))
    upper = tmp_path / "upper"
    upper.mkdir()
    cv2.imwrite(str(upper / "PROBE_F000000.png"), read_image(phantom_dir / "1_2.tif"))
    out = tmp_path / "out"
    result = runner.invoke(build_app(), segment_args(tiny_bundle, [image, upper / "PROBE_F000000.png",
                                                                   video], out, "--no-overlays"))
    assert result.exit_code == 0, result.output
    names = [p.name.casefold() for p in (out / "masks").iterdir()]
    assert len(names) == len(set(names)) == 4  # one mask per frame, none overwritten
    assert "probe_f000001.png" in names


# --- train, experiment, demo, phantom ------------------------------------------------------------


def test_train_never_writes_into_a_folder_it_did_not_make(phantom_dir: Path,
                                                          user_folder: Path) -> None:
    (user_folder / "config.json").write_text('{"mine": true}')
    before = snapshot(user_folder)
    result = runner.invoke(build_app(), ["train", "detector", "--data", str(phantom_dir), "--out",
                                         str(user_folder), "--epochs", "1", "--limit", "2",
                                         "--no-progress"])
    assert_refused_in_one_line(result, user_folder)
    assert snapshot(user_folder) == before


def test_experiment_never_writes_into_a_folder_it_did_not_make(phantom_dir: Path,
                                                               user_folder: Path) -> None:
    before = snapshot(user_folder)
    result = runner.invoke(build_app(), ["experiment", "--data", str(phantom_dir), "--out",
                                         str(user_folder), "--limit", "4", "--no-progress"])
    assert_refused_in_one_line(result, user_folder)
    assert snapshot(user_folder) == before


@pytest.mark.parametrize("command", [["demo", "--fast"], ["phantom", "--frames", "1"]])
def test_demo_and_phantom_never_write_into_a_folder_they_did_not_make(user_folder: Path,
                                                                      command: list[str]) -> None:
    before = snapshot(user_folder)
    result = runner.invoke(build_app(), [*command, "--out", str(user_folder), "--no-progress"])
    assert_refused_in_one_line(result, user_folder)
    assert snapshot(user_folder) == before


def test_a_command_refuses_another_commands_folder(tmp_path: Path, phantom_dir: Path) -> None:
    from bpedge._out_dir import claim_out_dir

    run = claim_out_dir(tmp_path / "run", "train")
    (run / "best.pt").write_bytes(b"weights")
    result = runner.invoke(build_app(), ["experiment", "--data", str(phantom_dir), "--out",
                                         str(run), "--no-progress"])
    assert_refused_in_one_line(result, run)
    assert "`bpedge train`" in result.output
    assert (run / "best.pt").read_bytes() == b"weights"


@pytest.mark.parametrize("left", ["empty", "marker"])
def test_a_folder_whose_claim_was_killed_before_its_marker_is_claimed_again(
        tmp_path: Path, left: str) -> None:
    """A kill inside the marker's atomic write (after mkstemp, before the rename) left the new
    folder holding only the marker's temporary, and every later run into it was refused as a
    folder bpedge did not make (seen in the killed-experiment test)."""
    from bpedge._out_dir import claim_out_dir

    made = claim_out_dir(tmp_path / "made", "train")
    folder = tmp_path / "run"
    folder.mkdir()
    leftover = folder / f".{MARKER_NAME}.k1ll3d00.tmp"
    leftover.write_bytes(b"" if left == "empty" else (made / MARKER_NAME).read_bytes())
    assert claim_out_dir(folder, "train") == folder
    assert made_by(folder, "train") and not leftover.exists()


@pytest.mark.parametrize("bytes_there", [b"my notes", b'{"format": "mine"}'])
def test_a_file_of_the_users_named_like_a_marker_temporary_is_not_a_killed_claim(
        tmp_path: Path, bytes_there: bytes) -> None:
    from bpedge._out_dir import OutDirRefused, claim_out_dir

    folder = tmp_path / "run"
    folder.mkdir()
    mine = folder / f".{MARKER_NAME}.mynotes0.tmp"
    mine.write_bytes(bytes_there)
    with pytest.raises(OutDirRefused, match="not an empty folder"):
        claim_out_dir(folder, "train")
    assert mine.read_bytes() == bytes_there


def test_a_run_folder_made_before_markers_still_resumes_but_not_with_a_users_file(
        phantom_dir: Path, tmp_path: Path) -> None:
    def train(out: Path, epochs: int, *extra: str):
        return runner.invoke(build_app(), [
            "train", "detector", "--data", str(phantom_dir), "--split", "random", "--epochs",
            str(epochs), "--limit", "4", "--no-progress", "--out", str(out), *extra])

    run = tmp_path / "run"
    first = train(run, 1)
    assert first.exit_code == 0, first.output
    (run / MARKER_NAME).unlink()  # as a run made before bpedge wrote markers
    (run / RECORD_NAME).unlink()  # (which was before runs recorded their files, too)
    old = tmp_path / "old_run_with_notes"
    shutil.copytree(run, old)
    (old / "notes.txt").write_text("mine")

    resumed = train(run, 2, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert made_by(run, "train")
    before = snapshot(old)
    assert_refused_in_one_line(train(old, 2, "--resume"), old)
    assert snapshot(old) == before


@pytest.mark.parametrize("edited", ["metrics added", "split edited"])
def test_train_never_overwrites_files_of_the_users_in_its_own_run_folder(
    phantom_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, edited: str,
) -> None:
    # A run killed before its first checkpoint wrote split.json and config.json; the user then
    # put their own metrics files into the folder train made.
    import bpedge.train._loop as loop

    out = tmp_path / "run2"
    args = ["train", "detector", "--data", str(phantom_dir), "--out", str(out), "--epochs", "1",
            "--limit", "4", "--no-progress"]

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "run_epochs", killed)
    runner.invoke(build_app(), args)
    monkeypatch.undo()
    assert made_by(out, "train") and (out / "split.json").is_file()
    (out / "metrics.csv").write_text("epoch,my_score\n1,0.9\n")
    (out / "metrics.json").write_text('{"mine": true}\n')
    if edited == "split edited":
        (out / "split.json").write_text('{"my": "split"}\n')
        (out / "metrics.csv").unlink()
        (out / "metrics.json").unlink()
    before = snapshot(out)
    result = runner.invoke(build_app(), args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert str(out / ("split.json" if edited == "split edited" else "metrics.csv")) in errors[0]
    assert snapshot(out) == before


def test_export_force_keeps_a_bundle_holding_the_users_bytes_or_temporary_files(
        tiny_bundle: Path, tiny_checkpoints: tuple[Path, Path], phantom_dir: Path,
        tmp_path: Path) -> None:
    # A listed name or a dot-name ending in .tmp is not evidence enough: --force deleted the
    # user's own file under either (the whole bundle folder goes when it is replaced).
    bundle = Bundle.open(tiny_bundle)
    listed = bundle.manifest.model_files()[0].file
    for name, content in ((listed, b"my retrained model"), (".notes.tmp", b"mine"),
                          (f".{listed}.notrandom.tmp", b"mine"), (".bpedge.lock", b"my notes"),
                          (".bpedge-out.lock", b"my notes")):
        out = tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"
        shutil.copytree(tiny_bundle, out)
        (out / name).write_bytes(content)
        before = snapshot(out)
        result = runner.invoke(build_app(), [*export_args(tiny_checkpoints, out, phantom_dir),
                                             "--force"])
        assert_refused_in_one_line(result, out)
        assert name in result.output
        assert snapshot(out) == before
    # What a killed atomic write of a listed file leaves is bpedge's: still replaced.
    out = tmp_path / "bundle-killed"
    shutil.copytree(tiny_bundle, out)
    (out / f".{listed}.ab3_x9yz.tmp").write_bytes(b"half a model")
    result = runner.invoke(build_app(), [*export_args(tiny_checkpoints, out, phantom_dir),
                                         "--force"])
    assert result.exit_code == 0, result.output
    assert not (out / f".{listed}.ab3_x9yz.tmp").exists()
