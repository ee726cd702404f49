"""Shared fixtures for the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest

#: The session phantom: 4 subjects x 12 frames of 420x580 (2 empty frames per subject, 40 with BP).
PHANTOM_SUBJECTS, PHANTOM_FRAMES, PHANTOM_SEED = 4, 12, 0


@pytest.fixture(scope="session")
def phantom_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small phantom dataset in the Kaggle layout, generated once per test session.

    Shared by every test: treat it as read-only; copy it (``shutil.copytree``) before changing files.
    """
    from bpedge.train.data.phantom import PhantomConfig, generate_phantom

    out = tmp_path_factory.mktemp("phantom") / "train"
    config = PhantomConfig(subjects=PHANTOM_SUBJECTS, frames=PHANTOM_FRAMES, seed=PHANTOM_SEED)
    return generate_phantom(out, config)
