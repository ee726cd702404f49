"""mypy checks the TensorRT-facing modules against ``tensorrt-stubs`` (the TensorRT 10.13 API), so
a misspelt TensorRT method or a wrong argument fails CI on machines where TensorRT itself cannot
be installed. The second test proves the check bites: copies with a misspelt method, a misspelt
enum member and a missing argument must fail.

Three quirks of tensorrt-stubs 10.13.0.35.1 are handled here, in a temporary copy:
- it ships ``tensorrt/__init__.pyi`` without a ``py.typed`` marker, so mypy ignores it where it is
  installed; the copy is put on ``MYPYPATH`` instead;
- five generated signatures in ``tensorrt_bindings/tensorrt.pyi`` are not valid Python (a
  parameter named ``in``, a required parameter after optional ones; all in plugin APIs we do not
  use); those lines get a ``(self, *args, **kwargs)`` signature;
- the stubs define ``bool: DataType`` at module level, which shadows the builtin in every ``bool``
  annotation; those annotations are rewritten to ``builtins.bool``. Without this, mypy treats
  ``parser.parse(...)`` as always true and silently skips the failure branch (a mutant below
  proves that branch is checked).
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECKED = [
    "export/tensorrt_build.py",
    "export/_trt_steps.py",
    "bpedge/_engine_key.py",
    "bpedge/bundle.py",
    "bpedge/_manifest.py",
    "bpedge/_manifest_fields.py",
]

MYPY_CONFIG = """\
[mypy]
python_version = 3.11
follow_imports = silent
ignore_missing_imports = True
disallow_untyped_defs = True
disallow_incomplete_defs = True
disallow_untyped_calls = True
check_untyped_defs = True
no_implicit_optional = True
warn_unused_ignores = True
warn_return_any = True
warn_redundant_casts = True
strict_equality = True
cache_dir = {cache}

# The generated stubs have errors of their own (e.g. they shadow `bool`); ours are what counts.
[mypy-tensorrt.*]
ignore_errors = True

[mypy-tensorrt_bindings.*]
ignore_errors = True
"""

# (name, source change, what mypy must say) for the copies that must fail.
MUTANTS = [
    ("misspelt_method", "builder.create_network(", "builder.create_netwrk(", "create_netwrk"),
    ("misspelt_enum", "MemoryPoolType.WORKSPACE", "MemoryPoolType.WORKSPAC", "WORKSPAC"),
    ("missing_argument", "config.set_timing_cache(cache, False)", "config.set_timing_cache(cache)",
     "set_timing_cache"),
    # Inside `if not parser.parse(...)`: caught only because `-> bool` is repaired (see _repair).
    ("misspelt_in_failure_branch", "parser.num_errors", "parser.num_error", "num_error"),
]


def _gpu_modules() -> list[str]:
    gpu = ROOT / "bpedge" / "_gpu"
    return [str(p.relative_to(ROOT)) for p in sorted(gpu.glob("*.py")) if p.name != "__init__.py"]


def _stub_dirs() -> tuple[Path, Path]:
    spec = importlib.util.find_spec("tensorrt_stubs")
    if spec is None or spec.origin is None:
        pytest.skip("tensorrt-stubs is not installed: pip install --no-deps "
                    "tensorrt-stubs==10.13.0.35.1")
    site = Path(spec.origin).parent.parent
    return site / "tensorrt", site / "tensorrt_bindings"


def _repair(text: str, name: str) -> str:
    lines = text.splitlines()
    for _ in range(50):
        try:
            tree = ast.parse("\n".join(lines), filename=name)
            break
        except SyntaxError as exc:
            i = (exc.lineno or 1) - 1
            m = re.match(r"^(\s*def \w+)\(.*\)(\s*->.*)?:\s*$", lines[i])
            if m is None:
                raise AssertionError(f"unexpected syntax error in {name}:{i + 1}: {exc}") from None
            args = "self, *args: typing.Any, **kwargs: typing.Any"
            lines[i] = f"{m.group(1)}({args}){m.group(2) or ''}:"
    else:
        raise AssertionError(f"{name}: too many syntax errors to repair")
    _BuiltinBool().visit(tree)
    body = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    tree.body.insert(len(body), ast.Import(names=[ast.alias(name="builtins")]))
    return ast.unparse(ast.fix_missing_locations(tree)) + "\n"


class _BuiltinBool(ast.NodeTransformer):
    # The stubs define `bool: DataType` (TensorRT's tensorrt.bool) at module level, which shadows
    # the builtin in every `-> bool` annotation: mypy then types those results as an always-true
    # object and silently skips `if not parser.parse(...)` branches as unreachable.
    def _fix(self, annotation: ast.expr | None) -> ast.expr | None:
        if annotation is None:
            return None
        for node in ast.walk(annotation):
            for field, value in ast.iter_fields(node):
                if isinstance(value, ast.Name) and value.id == "bool":
                    setattr(node, field, _builtins_bool())
                elif isinstance(value, list):
                    setattr(node, field, [_builtins_bool() if isinstance(v, ast.Name)
                                          and v.id == "bool" else v for v in value])
        if isinstance(annotation, ast.Name) and annotation.id == "bool":
            return _builtins_bool()
        return annotation

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = self._fix(node.annotation)
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = self._fix(node.returns)
        self.generic_visit(node)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.AnnAssign:
        fixed = self._fix(node.annotation)
        assert fixed is not None
        node.annotation = fixed
        return node


def _builtins_bool() -> ast.expr:
    return ast.Attribute(value=ast.Name(id="builtins", ctx=ast.Load()), attr="bool", ctx=ast.Load())


@pytest.fixture(scope="module")
def mypy_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed: pip install mypy")
    tmp = tmp_path_factory.mktemp("typecheck")
    stubs = tmp / "stubs"
    for src in _stub_dirs():
        (stubs / src.name).mkdir(parents=True)
        for pyi in src.glob("*.pyi"):
            (stubs / src.name / pyi.name).write_text(_repair(pyi.read_text(), pyi.name))
    config = tmp / "mypy.ini"
    config.write_text(MYPY_CONFIG.format(cache=tmp / "cache"))
    env = {**os.environ, "MYPYPATH": str(stubs)}
    return config, env


def _mypy(config: Path, env: dict[str, str], files: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(config), "--no-error-summary",
         "--hide-error-context", *files],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )


def test_tensorrt_facing_modules_pass_mypy_against_the_stubs(mypy_env):
    config, env = mypy_env
    result = _mypy(config, env, CHECKED + _gpu_modules())
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_catches_misspelt_methods_and_wrong_arguments(mypy_env, tmp_path):
    config, env = mypy_env
    steps = (ROOT / "export" / "_trt_steps.py").read_text()
    files = []
    for name, old, new, _ in MUTANTS:
        assert old in steps, f"mutant {name}: {old!r} is no longer in _trt_steps.py"
        path = tmp_path / f"mutant_{name}.py"
        path.write_text(steps.replace(old, new, 1))
        files.append(str(path))
    result = _mypy(config, env, files)
    assert result.returncode != 0
    for name, _, _, expected in MUTANTS:
        errors = [line for line in result.stdout.splitlines() if f"mutant_{name}.py" in line]
        assert any(expected in line for line in errors), (name, result.stdout)


def test_the_whole_runtime_package_passes_mypy(tmp_path):
    """The runtime package under the project's own mypy settings (pyproject.toml), not only the
    TensorRT-facing modules: the last two complaints were a float stored under an int name and a
    value read back out of an untyped dict, each a wrong type that a test happened not to meet."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "cache"),
         "--no-error-summary", "--hide-error-context", "bpedge"],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
