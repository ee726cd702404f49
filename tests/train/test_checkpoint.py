"""Checkpoints: plain payloads that round-trip under weights_only=True, and refusal of the rest."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from bpedge.train.checkpoint import (
    CheckpointError,
    capture_rng_state,
    load_checkpoint,
    resolve_checkpoint,
    restore_rng_state,
    save_checkpoint,
)


def _payload() -> dict:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 1, 8, 8)).sum().backward()
    opt.step()
    return {
        "kind": "segmenter",
        "arch": "unet",
        "model_config": {"arch": "unet", "crop_hw": [96, 96]},
        "config": {"preset": "tiny", "model": {"lr": 1e-3}},
        "model_state": model.state_dict(),
        "optimizer_state": opt.state_dict(),
        "epoch": 3,
        "rng": capture_rng_state(),
        "crop_mode": "gt",
        "normalization": {"mean": 101.5, "std": 40.25},
        "input_hw": [96, 96],
        "best_metric": float("-inf"),
        "history": [{"epoch": 1, "train_loss": 0.5}],
    }


def test_round_trip_loads_with_weights_only(tmp_path: Path) -> None:
    payload = _payload()
    path = tmp_path / "last.pt"
    save_checkpoint(path, payload)

    raw = torch.load(path, weights_only=True)  # the guarantee export and the runtime rely on
    loaded = load_checkpoint(path)
    assert raw["format"] == "bpedge-checkpoint"
    for key, value in payload["model_state"].items():
        assert torch.equal(loaded["model_state"][key], value)
    assert loaded["optimizer_state"]["param_groups"] == payload["optimizer_state"]["param_groups"]
    assert loaded["normalization"] == payload["normalization"]
    assert loaded["best_metric"] == float("-inf")
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary files left


def test_save_refuses_types_weights_only_cannot_load(tmp_path: Path) -> None:
    payload = _payload()
    payload["normalization"] = {"mean": np.float32(1.0), "std": np.array([2.0])}
    with pytest.raises(TypeError, match="normalization"):
        save_checkpoint(tmp_path / "x.pt", payload)
    assert list(tmp_path.iterdir()) == []


class _RunsCode:
    """Unpickling this would create a marker file: a stand-in for a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_payload_that_runs_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": "bpedge-checkpoint", "hook": _RunsCode(marker)}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)
    assert not marker.exists()
    # Unrestricted unpickling would have run it: the refusal above is what protected us.
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_foreign_files_are_refused_with_the_file_named(tmp_path: Path) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match=r"plain\.pt is not a bpedge checkpoint"):
        load_checkpoint(plain)

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="garbage.pt"):
        load_checkpoint(garbage)

    newer = tmp_path / "newer.pt"
    payload = _payload()
    save_checkpoint(newer, payload)
    body = torch.load(newer, weights_only=True)
    body["format_version"] = 99
    torch.save(body, newer)
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(newer)

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_restores_every_generator(tmp_path: Path) -> None:
    payload = _payload()  # builds a model: draws from torch's generator before the capture
    state = capture_rng_state()
    path = tmp_path / "rng.pt"
    save_checkpoint(path, {**payload, "rng": state})
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(7), random.random()  # move every generator on

    restore_rng_state(load_checkpoint(path)["rng"])
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])
    assert got[2] == expected[2]


def test_resolve_checkpoint_accepts_run_folder_or_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        resolve_checkpoint(tmp_path)
    best = tmp_path / "best.pt"
    best.write_bytes(b"")
    assert resolve_checkpoint(tmp_path) == best
    assert resolve_checkpoint(best) == best
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nope.pt")


def test_every_damaged_copy_is_loaded_or_refused_with_the_file_named(tmp_path: Path) -> None:
    """Bytes flipped anywhere: torch.load failed with KeyError, UnicodeDecodeError and others
    whose text named neither the file nor the problem ("error: 671089708")."""
    path = tmp_path / "good.pt"
    save_checkpoint(path, _payload())
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for k, at in enumerate(rng.integers(0, len(data), 120)):
        damaged = tmp_path / f"flip{k}.pt"
        flipped = bytearray(data)
        flipped[at] ^= 0xFF
        damaged.write_bytes(bytes(flipped))
        try:
            load_checkpoint(damaged)
        except CheckpointError as exc:
            assert damaged.name in str(exc)


def test_fields_of_the_wrong_type_are_refused_with_the_file_named(tmp_path: Path) -> None:
    from bpedge.train.checkpoint import load_model

    path = tmp_path / "odd.pt"
    save_checkpoint(path, {**_payload(), "model_state": "not weights"})
    with pytest.raises(CheckpointError, match=r"odd\.pt: its model_state is a str"):
        load_model(path)


def _flip_inside_tensor_data(path: Path, damaged: Path) -> None:
    """``damaged``: ``path`` with one byte flipped in the middle of a tensor's stored bytes (a
    record under ``data/``), where torch.load itself notices nothing."""
    import zipfile

    with zipfile.ZipFile(path) as archive:
        record = max((i for i in archive.infolist() if "/data/" in i.filename),
                     key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # The record's bytes follow its 30-byte local header, file name and extra field.
    name_len = int.from_bytes(data[record.header_offset + 26:record.header_offset + 28], "little")
    extra_len = int.from_bytes(data[record.header_offset + 28:record.header_offset + 30], "little")
    start = record.header_offset + 30 + name_len + extra_len
    data[start + record.file_size // 2] ^= 0x40
    damaged.write_bytes(bytes(data))


def test_flipped_bytes_inside_tensor_data_are_refused_with_the_file_named(tmp_path: Path) -> None:
    """torch stores a CRC-32 per record but never checks it on load: a flipped bit in the weights
    loaded silently as other weights (training --resume and export used them)."""
    from bpedge.train.checkpoint import load_model

    good = tmp_path / "good.pt"
    save_checkpoint(good, _payload())
    damaged = tmp_path / "last.pt"
    _flip_inside_tensor_data(good, damaged)
    with pytest.raises(CheckpointError, match=r"last\.pt is damaged: its record \S+/data/\d+ "
                                              r"does not match what was stored.*Bad CRC-32"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match=r"last\.pt is damaged"):
        load_model(damaged)
    load_checkpoint(good)


def test_a_checkpoint_saved_without_checksums_still_loads(tmp_path: Path) -> None:
    """CRC 0 (``set_crc32_options(False)``) means none was stored: nothing to check against."""
    serialization = pytest.importorskip("torch.serialization")
    if not hasattr(serialization, "set_crc32_options"):
        pytest.skip("torch.serialization.set_crc32_options is missing (older torch), so no "
                    "checkpoint without checksums can be made")
    path = tmp_path / "old.pt"
    serialization.set_crc32_options(False)
    try:
        save_checkpoint(path, _payload())
    finally:
        serialization.set_crc32_options(True)
    assert load_checkpoint(path)["epoch"] == 3
