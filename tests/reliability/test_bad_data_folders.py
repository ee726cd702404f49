"""A dataset folder with every kind of bad file, through the scanner and through ``bpedge train``
as a user runs it: each bad file is reported by name with its reason; ``--on-error fail`` stops
before anything is trained or written, ``--on-error skip`` trains on the rest.

Unreadable permissions are real here, not simulated: the file is chmod 000 and the scanner runs in
a child process. The test suite runs as root in CI, where the DAC override capabilities would let
it read the file anyway, so the child first drops CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from
its capability bounding set and re-executes itself, after which the kernel refuses the read with
EACCES exactly as it would for any other user. (``nobody`` cannot be used: the interpreter lives
under /root, which is 0700.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytest.importorskip("torch")

#: Runs argv[1:] as a fresh Python whose DAC override capabilities are gone when it runs as root.
WITHOUT_DAC_OVERRIDE = r"""
import ctypes, os, sys
if os.geteuid() == 0:
    libc = ctypes.CDLL(None, use_errno=True)
    PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            sys.exit(f"cannot drop capability {cap}: errno {ctypes.get_errno()}")
# On exec, root's capabilities are recomputed from the (now smaller) bounding set.
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""

SCAN = r"""
import json, sys
from pathlib import Path
from bpedge.train.data import scan_dataset
try:
    index = scan_dataset(Path(sys.argv[1]), on_error=sys.argv[2])
except ValueError as exc:
    print(json.dumps({"error": str(exc), "problems": {p.path.name: p.reason for p in exc.problems}}))
else:
    print(json.dumps({"frames": [f.key for f in index.frames],
                      "problems": {p.path.name: p.reason for p in index.problems}}))
"""

#: file name -> words its reason must hold (the stray files are "ignored", never fatal).
BAD = {
    "1_2.tif": "truncated",
    "1_4_mask.tif": "not a readable image",  # not a TIFF at all
    "2_2.tif": "8-bit",
    "2_3_mask.tif": "mask is 100x100 (HxW) but its image is 420x580",
    "3_2.tif": "image without mask",
    "3_4_mask.tif": "mask without image",
    "4_2.tif": "unreadable: permission denied",
    "4_3_mask.tif": "unreadable: permission denied",
}
BAD_KEYS = {"1_2", "1_4", "2_2", "2_3", "3_2", "3_4", "4_2", "4_3"}
STRAY = ("notes.txt", "1_1 copy.tif", "thumbs", "1_1.png")


def run_python(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-c", WITHOUT_DAC_OVERRIDE, *args], env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def broken(phantom_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session phantom with one file of each bad kind, two unreadable ones and stray files."""
    root = tmp_path_factory.mktemp("broken") / "train"
    shutil.copytree(phantom_dir, root)
    data = (root / "1_2.tif").read_bytes()
    (root / "1_2.tif").write_bytes(data[: len(data) // 3])
    (root / "1_4_mask.tif").write_bytes(b"GIF89a not a tiff")
    tifffile.imwrite(root / "2_2.tif", np.full((420, 580), 4095, np.uint16), compression="lzw")
    tifffile.imwrite(root / "2_3_mask.tif", np.zeros((100, 100), np.uint8), compression="lzw")
    (root / "3_2_mask.tif").unlink()
    (root / "3_4.tif").unlink()
    (root / "notes.txt").write_text("scan notes")
    shutil.copy(root / "1_1.tif", root / "1_1 copy.tif")
    (root / "thumbs").mkdir()
    (root / "1_1.png").write_bytes(b"\x89PNG")
    for name in ("4_2.tif", "4_3_mask.tif"):
        (root / name).chmod(0)

    probe = run_python("-c", f"open({str(root / '4_2.tif')!r}, 'rb').read(1)")
    if probe.returncode == 0:
        pytest.skip("cannot make a file unreadable to a child process here (root with DAC "
                    f"override that cannot be dropped): {probe.stderr.strip()[-200:]}")
    assert "PermissionError" in probe.stderr, probe.stderr
    return root


def scan(root: Path, on_error: str) -> dict:
    out = run_python("-c", SCAN, str(root), on_error)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_the_scan_reports_every_bad_file_by_name_and_fails_when_told_to(broken: Path):
    failed = scan(broken, "fail")
    assert set(failed["problems"]) == set(BAD)  # stray files never fail a scan
    for name, words in BAD.items():
        assert words in failed["problems"][name], (name, failed["problems"][name])
        assert f"{broken / name}: " in failed["error"]
    assert "on_error='skip'" in failed["error"]  # the way out is named


def test_the_scan_skips_bad_frames_when_told_to_and_keeps_the_reports(broken: Path):
    skipped = scan(broken, "skip")
    assert BAD_KEYS.isdisjoint(skipped["frames"])
    assert len(skipped["frames"]) == 48 - len(BAD_KEYS)
    for name, words in BAD.items():
        assert words in skipped["problems"][name]
    for name in STRAY:
        assert skipped["problems"][name].startswith("ignored"), name


def train(root: Path, out: Path, on_error: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "bpedge._cli.app", "train", "segmenter", "--data", str(root),
                      "--out", str(out), "--on-error", on_error, "--epochs", "1", "--limit", "12",
                      "--batch-size", "4", "--no-progress")


def test_bpedge_train_on_error_fail_stops_before_training_naming_every_file(
    broken: Path, tmp_path: Path
):
    out = tmp_path / "run"
    result = train(broken, out, "fail")
    assert result.returncode == 2, result.stderr[-2000:]
    for name, words in BAD.items():
        assert f"{broken / name}: " in result.stderr and words in result.stderr, name
    assert "epoch" not in result.stdout
    assert not out.exists() or not any(out.glob("*.pt"))  # nothing trained, nothing half-written


def test_bpedge_train_on_error_skip_reports_each_file_and_trains_on_the_rest(
    broken: Path, tmp_path: Path
):
    out = tmp_path / "run"
    result = train(broken, out, "skip")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in BAD:
        assert f"skipped {broken / name}: " in result.stderr, name
    for name in STRAY:
        assert f"noted {broken / name}: ignored" in result.stderr, name
    assert "done: best val_dice" in result.stdout
    split = json.loads((out / "split.json").read_text())
    used = {*split["train"], *split["val"], *split["test"]}
    assert used and BAD_KEYS.isdisjoint(used)
    assert (out / "best.pt").is_file() and (out / "last.pt").is_file()
