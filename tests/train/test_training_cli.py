"""``bpedge train``: bad input exits 2 with a message naming the option; run-folder rules."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

torch = pytest.importorskip("torch")

from bpedge.train.checkpoint import load_checkpoint

from bpedge._cli.app import build_app

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # On a 2-core machine shared with other test processes, two spinning intra-op threads make
    # these tiny models 10x slower than one; restore the setting for the rest of the session.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _train(*args: str | Path) -> tuple[int, str]:
    result = runner.invoke(build_app(), ["train", *[str(a) for a in args]])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--split", "diagonal"], "--split must be one of"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--lr", "inf"], "--lr must be positive and finite"),
        (["--lr", "nan"], "--lr must be positive and finite"),
        (["--gamma", "nan"], "--gamma must be finite and >= 0"),
        (["--on-error", "ignore"], "--on-error must be one of"),
        (["--device", "tpu"], "device must be 'cpu' or 'cuda'"),
        # Each worker a process: 99999999 forked until the machine ran out of memory.
        (["--workers", "99999999"], "--workers must be in [0, 64]"),
        (["--seed", "99999999999999999999"], "--seed must be in [0, 4294967295]"),
    ],
)
def test_bad_common_options_exit_2(
    phantom_dir: Path, tmp_path: Path, args: list[str], message: str
) -> None:
    code, output = _train("detector", "--data", phantom_dir, "--out", tmp_path / "r", *args)
    assert code == 2, output
    assert message in output
    assert not (tmp_path / "r").exists()  # nothing written for refused input


def test_bad_segmenter_options_exit_2(phantom_dir: Path, tmp_path: Path) -> None:
    base = ["segmenter", "--data", phantom_dir, "--out", tmp_path / "r"]
    code, output = _train(*base, "--crop", "detector")
    assert code == 2 and "--crop detector needs --detector" in output
    code, output = _train(*base, "--arch", "vnet")
    assert code == 2 and "--arch must be one of" in output
    code, output = _train(*base, "--crop", "detector", "--detector", tmp_path / "nope")
    assert code == 2 and "nope" in output
    code, output = _train("detector", "--data", tmp_path / "missing", "--out", tmp_path / "r")
    assert code == 2 and "missing" in output


def test_run_folder_is_not_overwritten_and_resume_checks_options(
    phantom_dir: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    common = ["--data", phantom_dir, "--out", out, "--limit", "16", "--batch-size", "8",
              "--no-progress"]
    code, output = _train("segmenter", *common, "--epochs", "1")
    assert code == 0, output
    assert "done: best val_dice" in output

    code, output = _train("segmenter", *common, "--epochs", "1")
    assert code == 2 and "pass --resume" in output and "new --out" in output

    code, output = _train("segmenter", *common, "--epochs", "2", "--lr", "0.5", "--resume")
    assert code == 2 and "model.lr" in output

    code, output = _train("segmenter", *common, "--epochs", "2", "--crop", "none", "--resume")
    assert code == 2 and "crop.mode: 'gt' -> 'none'" in output

    # More epochs is an allowed change: the run continues from epoch 1.
    code, output = _train("segmenter", *common, "--epochs", "2", "--resume")
    assert code == 0, output
    assert "epoch   2/2" in output and "epoch   1/2" not in output
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2]
    assert load_checkpoint(out / "last.pt")["epoch"] == 2

    # last.pt removed (it is as large as best.pt): each command sent the user to the other
    # ("pass --resume" / "no last.pt to resume from; run without --resume").
    (out / "last.pt").unlink()
    for extra in ([], ["--resume"]):
        code, output = _train("segmenter", *common, "--epochs", "2", *extra)
        assert code == 2 and "holds best.pt but not last.pt" in output, output
        assert "new --out" in output


def test_a_second_run_into_a_folder_a_run_is_writing_is_refused(phantom_dir: Path,
                                                                tmp_path: Path) -> None:
    """A --resume started while the first run still writes would write the same checkpoints
    and remove the first run's temporary files."""
    from bpedge._out_dir import claim_out_dir, lock_out_dir

    out = tmp_path / "run"
    claim_out_dir(out, "train")
    with lock_out_dir(out, "train"):  # what the running first run holds
        code, output = _train("detector", "--data", phantom_dir, "--out", out, "--epochs", "1",
                              "--limit", "2", "--no-progress")
    assert code == 2, output
    assert "another `bpedge train` is writing into" in output
    assert not (out / "best.pt").exists() and not (out / "config.json").exists()
