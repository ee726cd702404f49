"""Bundles made to mislead: manifests that two JSON readers would read differently, numbers no
manifest has, file names and symbolic links that lead out of the bundle, and ONNX models that
keep their weights in other files (ONNX external data). Each is refused when the bundle is
opened or loaded, with a ``BundleError`` naming the file or field, before anything outside the
bundle is read."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from bpedge import Segmenter
from bpedge.bundle import Bundle, BundleError


@pytest.fixture
def copy(tiny_bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, target)
    return target


def manifest_text(bundle: Path) -> str:
    return (bundle / "manifest.json").read_text()


def set_hash(bundle: Path, file: str, data: bytes) -> None:
    """Write ``data`` as ``file`` and give the manifest its sha256 (a tamperer who rewrites both)."""
    (bundle / file).write_bytes(data)
    manifest = json.loads(manifest_text(bundle))
    for entry in manifest["models"].values():
        for ref in entry["onnx"].values():
            if ref and ref["file"] == file:
                ref["sha256"] = hashlib.sha256(data).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


# --- manifest JSON that readers would disagree on ------------------------------------------------


def test_a_manifest_naming_a_field_twice_is_refused_not_read_as_the_last_one(copy: Path):
    # Python's json keeps the last duplicate, many C++ parsers the first: a mask threshold of 0
    # appended after the real one turned every crop pixel into BP, silently.
    text = manifest_text(copy).rstrip().removesuffix("}")
    text += ', "thresholds": {"score": 0.0, "mask": 0.0, "how_chosen": {}}}\n'
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=r"manifest\.json.*'thresholds' twice"):
        Bundle.open(copy)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_and_infinity_anywhere_in_the_manifest_are_refused_as_not_json(copy: Path,
                                                                          constant: str):
    manifest = json.loads(manifest_text(copy))
    manifest["training"]["metrics"]["note"] = "x"
    text = json.dumps(manifest).replace('"x"', constant)
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=rf"manifest\.json holds {constant}, which is not JSON"):
        Bundle.open(copy)


def test_a_number_thousands_of_digits_long_is_a_bundle_error_not_pythons_limit(copy: Path):
    text = manifest_text(copy).replace('"flops": ', '"flops": ' + "9" * 5000 + ', "x": ', 1)
    (copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=r"manifest\.json holds a number thousands of digits"):
        Bundle.open(copy)


# --- file names and links that leave the bundle ----------------------------------------------------


@pytest.mark.parametrize("name", ["detector\x00.onnx", "detector\n.onnx", "a/\tb.onnx"])
def test_control_characters_in_a_file_name_are_a_field_error(copy: Path, name: str):
    manifest = json.loads(manifest_text(copy))
    manifest["models"]["detector"]["onnx"]["fp32"]["file"] = name
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"models\.detector\.onnx\.fp32\.file"):
        Bundle.open(copy)


def test_a_file_name_the_system_cannot_open_is_a_bundle_error_naming_it(copy: Path):
    manifest = json.loads(manifest_text(copy))
    manifest["models"]["detector"]["onnx"]["fp32"]["file"] = "d" * 5000 + ".onnx"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="ddd.*cannot be used"):
        Bundle.open(copy)


def test_a_symbolic_link_loop_is_a_bundle_error(copy: Path):
    (copy / "detector.fp32.onnx").unlink()
    (copy / "detector.fp32.onnx").symlink_to(copy / "detector.fp32.onnx")
    with pytest.raises(BundleError, match=r"detector\.fp32\.onnx"):
        Bundle.open(copy)


@pytest.mark.parametrize("victim", ["detector.fp32.onnx", "manifest.json"])
def test_a_symbolic_link_out_of_the_bundle_is_refused_even_with_the_right_bytes(
        copy: Path, tmp_path: Path, victim: str):
    # The link points at a byte-identical file elsewhere: the hash matches, so only the rule
    # "read nothing outside the bundle" can refuse it.
    outside = tmp_path / "elsewhere" / victim
    outside.parent.mkdir()
    shutil.copyfile(copy / victim, outside)
    (copy / victim).unlink()
    (copy / victim).symlink_to(outside)
    with pytest.raises(BundleError, match=rf"{victim}.*leads out of"):
        Segmenter.from_bundle(copy, backend="onnxruntime")


def test_a_symbolic_link_inside_the_bundle_still_works(copy: Path):
    (copy / "models").mkdir()
    (copy / "detector.fp32.onnx").rename(copy / "models" / "detector.fp32.onnx")
    (copy / "detector.fp32.onnx").symlink_to(Path("models") / "detector.fp32.onnx")
    with Segmenter.from_bundle(copy, backend="onnxruntime") as seg:
        assert seg(np.full((64, 96), 100, np.uint8)).mask.shape == (64, 96)


def test_a_bundle_reached_through_a_link_to_its_folder_still_works(copy: Path, tmp_path: Path):
    link = tmp_path / "current"
    link.symlink_to(copy, target_is_directory=True)
    with Segmenter.from_bundle(link, backend="onnxruntime") as seg:
        assert seg(np.full((64, 96), 100, np.uint8)).mask.shape == (64, 96)


# --- ONNX external data ------------------------------------------------------------------------------


def with_external_weight(model_bytes: bytes, location: str, data_file: Path) -> bytes:
    """``model_bytes`` with its largest initializer moved to ``data_file``, referenced as
    ``location`` (what ``onnx.external_data_helper`` writes: data_location EXTERNAL and
    location/offset/length entries)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data_file.write_bytes(tensor.raw_data)
    length = len(tensor.raw_data)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("where", ["beside the process", "escaping", "absolute"])
def test_an_onnx_model_with_external_data_is_refused_before_any_runtime_reads_it(
        copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str):
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)  # ONNX Runtime resolves external data of bytes from here
    data = workdir / "weights.bin"
    location = {"beside the process": "weights.bin", "escaping": "../cwd/weights.bin",
                "absolute": str(data)}[where]
    model = with_external_weight((copy / "detector.fp32.onnx").read_bytes(), location, data)
    set_hash(copy, "detector.fp32.onnx", model)
    bundle = Bundle.open(copy)  # the hash matches: nothing is wrong with the bytes as such
    # What the TensorRT builder and OpenVINO take, and the path API: all refuse it.
    for load in (lambda: bundle.read_verified("detector.fp32.onnx"),
                 lambda: bundle.onnx_path("detector")):
        with pytest.raises(BundleError, match=r"detector\.fp32\.onnx.*keeps its values in "
                                              r"another file"):
            load()
    with pytest.raises(BundleError, match=rf"{location.replace('.', '[.]')}.*bpedge export"):
        Segmenter.from_bundle(copy, backend="onnxruntime")


def test_a_truncated_onnx_is_still_left_to_the_runtime_to_refuse(copy: Path):
    # The external-data check reads only well-formed models; a damaged one keeps ONNX Runtime's
    # error (tests/reliability/test_bundle_tampering.py checks its wording).
    data = (copy / "segmenter.fp32.onnx").read_bytes()
    set_hash(copy, "segmenter.fp32.onnx", data[: len(data) // 2])
    assert len(Bundle.open(copy).read_verified("segmenter.fp32.onnx")) == len(data) // 2



# --- manifest values that do not describe the models, or no model could have --------------------


def edit_manifest(bundle: Path, path: tuple, value: object) -> None:
    manifest = json.loads(manifest_text(bundle))
    node = manifest
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.mark.parametrize("path,value,words", [
    (("models", "detector", "inputs", 0, "name"), "pixels",
     r"detector\.fp32\.onnx.*inputs \['pixels'\] in the manifest, \['image'\] in the model"),
    (("models", "segmenter", "outputs", 0, "name"), "mask",
     r"segmenter\.fp32\.onnx.*outputs \['mask'\] in the manifest"),
    (("models", "detector", "inputs", 0, "dtype"), "uint8",
     r"input 'image' is uint8 in the manifest, float32 in the model"),
    (("models", "detector", "outputs", 1, "shape"), ["N", 5],
     r"output 'box' is \['N', 5\] in the manifest"),
    (("models", "segmenter", "inputs", 0, "shape"), ["N", 1, 64, 64],
     r"input 'crop' is \['N', 1, 64, 64\] in the manifest, \['N', 1, 96, 96\] in the model"),
])
def test_a_manifest_whose_tensors_do_not_describe_its_models_is_refused_at_load(
        copy: Path, path: tuple, value: object, words: str):
    edit_manifest(copy, path, value)
    with pytest.raises(BundleError, match=words):
        Segmenter.from_bundle(copy, backend="onnxruntime")


@pytest.mark.parametrize("path,value", [
    (("preprocessing", "detector", "mean"), 1e300),  # every pixel -inf in float32
    (("preprocessing", "detector", "mean"), -1.0),
    (("preprocessing", "detector", "std"), 1e300),
    # A std near 0 scales pixels past FP16's 65,504: an FP16 engine would see inf.
    (("preprocessing", "detector", "std"), 1e-12),
    (("preprocessing", "segmenter", "std"), 0.001),
    (("preprocessing", "segmenter", "crop_margin"), 1.7e308),  # every box infinite
    (("preprocessing", "segmenter", "crop_margin"), 11.0),
    (("preprocessing", "detector", "input_hw"), [100000, 100000]),  # a dynamic model takes it
    (("preprocessing", "segmenter", "crop_hw"), [96, 8193]),
])
def test_normalisation_margin_and_sizes_outside_what_frames_allow_are_field_errors(
        copy: Path, path: tuple, value: float):
    edit_manifest(copy, path, value)
    with pytest.raises(BundleError, match=rf"field '{'.'.join(path)}' must be (a finite "
                                          r"number|\[height, width\])"):
        Bundle.open(copy)


@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_a_bundle_path_that_is_a_file_or_fifo_says_so(tmp_path: Path, kind: str):
    path = tmp_path / "bundle"
    if kind == "file":
        path.write_text("{}")
    else:
        os.mkfifo(path)
    with pytest.raises(BundleError, match=r"bundle is not a directory"):
        Bundle.open(path)


@pytest.mark.parametrize("form", ["int8", "int8_symmetric"])
@pytest.mark.parametrize("other", ["detector.fp32.onnx", "segmenter.fp32.onnx", "detector.pt"])
def test_an_int8_model_file_that_is_another_file_of_the_bundle_is_refused(copy: Path, other: str,
                                                                        form: str):
    # Every file of a bundle has one role; the INT8 entries were left out of that rule (the
    # symmetric one until later), so the detector's INT8 model could be the segmenter's FP32
    # file or a checkpoint, and build-engines -p int8 would build it as the detector.
    data = (copy / other).read_bytes()
    edit_manifest(copy, ("models", "detector", "onnx", form),
                  {"file": other, "sha256": hashlib.sha256(data).hexdigest()})
    with pytest.raises(BundleError, match=rf"models\.detector\.onnx\.{form}\.file.*already names"):
        Bundle.open(copy)


def two_column_detector(input_shape: list, dynamic_score: bool) -> bytes:
    """A detector taking the bundle's image input (``input_shape``) whose score is [N, 2] ([s, 1 - s] per frame,
    s the frame's mean brightness through a sigmoid) and whose box is [N, 4]: the same names and
    types as a bpedge detector, but two scores per frame. ``dynamic_score``: the pairs flattened
    to a score of 2N values whose size the model does not declare (it looks like [N])."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [
        helper.make_node("ReduceMean", ["image", "axes"], ["mean"], keepdims=0),  # [N]
        helper.make_node("Unsqueeze", ["mean", "one"], ["col"]),  # [N, 1]
        helper.make_node("Sub", ["col", "centre"], ["shifted"]),
        helper.make_node("Sigmoid", ["shifted"], ["s"]),
        helper.make_node("Sub", ["unit", "s"], ["rest"]),
        helper.make_node("Concat", ["s", "rest"], ["pair" if dynamic_score else "score"],
                         axis=1),  # [N, 2]
        *([helper.make_node("Reshape", ["pair", "flat"], ["score"])] if dynamic_score else []),
        helper.make_node("Mul", ["col", "zero"], ["nothing"]),
        helper.make_node("Add", ["nothing", "corners"], ["box"]),  # [N, 4]
    ]
    constants = [
        numpy_helper.from_array(np.array([1, 2, 3], np.int64), "axes"),
        numpy_helper.from_array(np.array([1], np.int64), "one"),
        numpy_helper.from_array(np.array([[100.0]], np.float32), "centre"),
        numpy_helper.from_array(np.array([[1.0]], np.float32), "unit"),
        numpy_helper.from_array(np.array([[0.0]], np.float32), "zero"),
        numpy_helper.from_array(np.array([[20.0, 20.0, 120.0, 100.0]], np.float32), "corners"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
    ]
    graph = helper.make_graph(
        nodes, "two_column_detector",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, input_shape)],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT,
                                       ["M"] if dynamic_score else ["N", 2]),
         helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 4])],
        constants)
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("dynamic_score", [False, True])
def test_a_detector_giving_more_than_one_score_per_frame_never_gives_a_frame_another_s_score(
        copy: Path, dynamic_score: bool):
    # With one score per frame read from a flattened [N, 2], frame 1 of a batch got frame 0's
    # second column: a score computed on another frame, silently.
    image = json.loads(manifest_text(copy))["models"]["detector"]["inputs"][0]["shape"]
    set_hash(copy, "detector.fp32.onnx", two_column_detector(image, dynamic_score))
    edit_manifest(copy, ("models", "detector", "outputs", 0, "shape"),
                  ["N"] if dynamic_score else ["N", 2])
    frames = [np.full((64, 96), 30, np.uint8), np.full((64, 96), 220, np.uint8)]
    if not dynamic_score:  # the model says [N, 2]: refused at load
        with pytest.raises(BundleError, match=r"detector\.fp32\.onnx: output 'score' is "
                                              r"\['N', 2\]; the cascade needs \['N'\]"):
            Segmenter.from_bundle(copy, backend="onnxruntime", precision="fp32")
        return
    with Segmenter.from_bundle(copy, backend="onnxruntime", precision="fp32") as seg:
        for call in (lambda: seg.segment_batch(frames), lambda: seg(frames[0])):
            with pytest.raises(BundleError, match=r"gave score \[\d\] and box \[\d, 4\] for "
                                                  r"\d frame\(s\); bpedge needs score \[N\]"):
                call()
