"""The README's Python block runs as printed, in a folder laid out as ``bpedge demo --out demo``
leaves it (``demo/bundle``, ``demo/heldout`` with Kaggle-named frames and masks)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_block_runs_as_printed(tiny_bundle, phantom_dir, tmp_path, monkeypatch,
                                              capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert blocks, "README has no python block"
    code = blocks[0]
    demo = tmp_path / "demo"
    shutil.copytree(tiny_bundle, demo / "bundle")
    (demo / "heldout").mkdir()
    for k in (1, 2, 3):  # subject 3 stands in for the demo's test subject
        for suffix in (".tif", "_mask.tif"):
            shutil.copy(phantom_dir / f"3_{k}{suffix}", demo / "heldout" / f"3_{k}{suffix}")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)  # noqa: S102 - the README's own code
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 + 3  # the single frame, then one line per held-out frame
    assert [line.split()[0] for line in printed[1:]] == ["3_1", "3_2", "3_3"]
    assert (tmp_path / "overlay.png").is_file()
    assert namespace["overlay"].shape == (*namespace["frame"].shape, 3)
    assert len(namespace["results"]) == 2
    assert isinstance(namespace["r"].score, float) and namespace["frame"].dtype == np.uint8
