"""The code keeps to the oldest Python that pyproject.toml's ``requires-python`` admits (3.10):
its syntax parses as 3.10 and nothing is imported at run time that 3.10's standard library lacks.
CI runs 3.11, where ``from typing import Self`` works; on 3.10 it made every ``segment`` fail
("cannot import name 'Self' from 'typing'") while ``import bpedge`` still succeeded."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("bpedge", "train", "export", "kernels")

#: Standard-library names added after 3.10 (the "New in version 3.11/3.12" notes of typing,
#: enum, datetime and the new modules).
NEWER = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type",
               "Required", "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform",
               "get_overloads", "clear_overloads", "override", "TypeAliasType"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "FlagBoundary", "verify", "member",
             "nonmember", "global_enum", "show_flag_values"},
    "datetime": {"UTC"},
}
NEW_MODULES = {"tomllib", "wsgiref.types"}


def _floor() -> tuple[int, int]:
    # A regex, not tomllib: tomllib is itself 3.11+.
    found = re.search(r'^requires-python\s*=\s*">=\s*(\d+)\.(\d+)"',
                      (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert found, "pyproject.toml has no requires-python = \">=X.Y\""
    return int(found.group(1)), int(found.group(2))


def _sources() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Line numbers inside ``if TYPE_CHECKING:`` blocks (never run)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _newer_uses(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module in NEWER:
            found += [f"{path.relative_to(root)}:{node.lineno}: from {node.module} import "
                      f"{a.name}" for a in node.names if a.name in NEWER[node.module]]
        if isinstance(node, ast.ImportFrom) and node.module in NEW_MODULES:
            found.append(f"{path.relative_to(root)}:{node.lineno}: from {node.module} import")
        if isinstance(node, ast.Import):
            found += [f"{path.relative_to(root)}:{node.lineno}: import {a.name}"
                      for a in node.names if a.name in NEW_MODULES]
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in NEWER and node.attr in NEWER[node.value.id]):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_floor_is_310():
    # The checks below name 3.10's gaps; a new floor needs a new list.
    assert _floor() == (3, 10)


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_parses_as_the_floor(path):
    ast.parse(path.read_text(), str(path), feature_version=_floor())


def test_no_standard_library_name_newer_than_the_floor():
    found = [use for path in _sources() for use in _newer_uses(path)]
    assert not found, "\n".join(found)


def test_the_check_sees_a_runtime_typing_self(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import Any, Self\nimport tomllib\nenum.StrEnum\n"
                     "if TYPE_CHECKING:\n    from typing import override\n")
    assert _newer_uses(probe, tmp_path) == ["probe.py:1: from typing import Self",
                                            "probe.py:2: import tomllib",
                                            "probe.py:3: enum.StrEnum"]
