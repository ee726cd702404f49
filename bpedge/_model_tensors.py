"""What a loaded ONNX model declares about its tensors, and the load-time checks of it against the
bundle's manifest: shared by every host runtime (ONNX Runtime, OpenVINO), so a bundle whose
manifest misdescribes its models is refused at load whichever runtime opens it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bpedge._manifest import TensorSpec
from bpedge._manifest_fields import BundleError


@dataclass(frozen=True)
class DeclaredTensor:
    """One model input or output as the runtime read it: ``dtype`` in the manifest's vocabulary
    (``float32``, ``float16``, ...; the runtime's own name when it has no such word) and ``shape``
    with a string for a dynamic dimension (its symbolic name, or ``"?"``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def shape_text(self) -> str:
        return str(list(self.shape))


def _dynamic(dim: int | str) -> bool:
    return not isinstance(dim, int)


def check_input_hw(model: str, inputs: Sequence[DeclaredTensor], expected_hw: tuple[int, int],
                   source: str) -> None:
    """ValueError unless the model takes (N, 1, H, W) with (H, W) == ``expected_hw`` (what
    ``source``, a manifest field, declares): caught at load instead of on every frame."""
    shape = inputs[0].shape
    hw = shape[-2:] if len(shape) == 4 else None
    fixed = hw is not None and not any(_dynamic(d) for d in hw)
    if len(shape) != 4 or (fixed and hw != tuple(expected_hw)):
        raise ValueError(
            f"{model}: the model's input is {inputs[0].shape_text()}, but the manifest's {source} "
            f"is {list(expected_hw)}; the manifest does not describe this model: re-export the "
            "bundle with `bpedge export`")


def check_tensors(model: str, inputs: Sequence[DeclaredTensor],
                  outputs: Sequence[DeclaredTensor], manifest_inputs: Sequence[TensorSpec],
                  manifest_outputs: Sequence[TensorSpec], source: str) -> None:
    """:class:`BundleError` unless the model's inputs and outputs are exactly the manifest's
    (``source``: where the manifest lists them): the same names, element types and ranks, a fixed
    size wherever the manifest gives one, and a dynamic batch wherever it says ``"N"``. A manifest
    that misdescribes its model misleads every other reader of the bundle (C++ firmware,
    TensorRT builds) even where this runtime would still run it."""
    problems: list[str] = []
    for kind, declared, actual in (("input", manifest_inputs, inputs),
                                   ("output", manifest_outputs, outputs)):
        found = {a.name: a for a in actual}
        names = [spec.name for spec in declared]
        if sorted(names) != sorted(found):
            problems.append(f"{kind}s {sorted(names)} in the manifest, {sorted(found)} in the "
                            "model")
            continue
        for spec in declared:
            problems += _tensor_problems(kind, spec, found[spec.name])
    if problems:
        raise BundleError(
            f"{model}: the model does not match {source} in the manifest ("
            f"{'; '.join(problems)}); the manifest does not describe this model: re-export "
            "the bundle with `bpedge export`")


def check_outputs(model: str, outputs: Sequence[DeclaredTensor],
                  allowed: dict[str, tuple[tuple[int, ...], ...]]) -> None:
    """:class:`BundleError` unless each named output's declared shape is one of its ``allowed``
    shapes (``-1``: any size; a dynamic dimension of the model fits any size): the cascade reads
    one score, one box and one crop-sized probability map per frame."""
    declared = {o.name: o for o in outputs}
    for name, shapes in allowed.items():
        shape = declared[name].shape
        if not any(len(shape) == len(want) and all(
                w == -1 or _dynamic(d) or d == w for d, w in zip(shape, want)) for want in shapes):
            wanted = " or ".join(str(["N" if w == -1 else w for w in want]) for want in shapes)
            raise BundleError(f"{model}: output {name!r} is {declared[name].shape_text()}; the "
                              f"cascade needs {wanted}: this is not a bpedge model, re-export "
                              "the bundle with `bpedge export`")


def _tensor_problems(kind: str, spec: TensorSpec, actual: DeclaredTensor) -> list[str]:
    problems = []
    if spec.dtype != actual.dtype:
        problems.append(f"{kind} {spec.name!r} is {spec.dtype} in the manifest, {actual.dtype} "
                        "in the model")
    shape = actual.shape
    dims_match = len(shape) == len(spec.shape) and all(
        _dynamic(have) if want == "N" else (_dynamic(have) or have == want)
        for want, have in zip(spec.shape, shape))
    if not dims_match:
        problems.append(f"{kind} {spec.name!r} is {list(spec.shape)} in the manifest, "
                        f"{actual.shape_text()} in the model")
    return problems
