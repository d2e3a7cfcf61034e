"""ONNX frontend: reading model files. Broken, hostile or too-new files each give one QJCError
that names the file and the cause; external data is read only from inside the model's directory."""

from __future__ import annotations

import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qjc.errors import QJCError, UnsupportedOpsError
from qjc.frontends.onnx import from_onnx
from qjc.ir.interpreter import run

F = TensorProto.FLOAT
SEED = 20240612


def vi(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def weighted_model(weight: np.ndarray) -> onnx.ModelProto:
    """y = x * w with w an initializer."""
    graph = helper.make_graph([helper.make_node("Mul", ["x", "w"], ["y"])], "g",
                              [vi("x", F, list(weight.shape))],
                              [vi("y", F, list(weight.shape))],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def save_external(model: onnx.ModelProto, directory, name: str = "m.onnx") -> str:
    """Save with every initializer in ``weights.bin`` beside the model; returns the model path."""
    path = os.path.join(directory, name)
    onnx.save(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="weights.bin",
              size_threshold=0)
    return path


def rewrite_external(path: str, **fields: str) -> None:
    """Overwrite external_data fields (location, offset, length) of the model's first initializer."""
    model = onnx.load(path, load_external_data=False)
    entries = model.graph.initializer[0].external_data
    for key, value in fields.items():
        matching = [e for e in entries if e.key == key]
        if matching:
            matching[0].value = value
        else:
            entries.add(key=key, value=value)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())


@pytest.fixture
def weight() -> np.ndarray:
    return np.random.default_rng(SEED).standard_normal((4, 6)).astype(np.float32)


def expect_error(path, *parts: str) -> QJCError:
    """from_onnx(path) raises a QJCError whose message holds the path and every one of ``parts``."""
    with pytest.raises(QJCError) as info:
        from_onnx(path)
    message = str(info.value)
    assert str(path) in message
    for part in parts:
        assert re.search(part, message), f"{part!r} not in: {message}"
    return info.value


# ---- files that are not (readable) models ------------------------------------------------------------


def test_truncated_file(tmp_path, weight):
    data = weighted_model(weight).SerializeToString()
    path = tmp_path / "truncated.onnx"
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, "does not parse as an ONNX protobuf")


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(SEED).bytes(4096))
    expect_error(path, "not an ONNX model")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    expect_error(path, "no IR version or no graph")


def test_missing_file(tmp_path):
    expect_error(tmp_path / "absent.onnx", "no such file")


def test_ir_version_newer_than_onnx_supports(tmp_path, weight):
    model = weighted_model(weight)
    model.ir_version = onnx.IR_VERSION + 1
    path = tmp_path / "future.onnx"
    path.write_bytes(model.SerializeToString())
    expect_error(path, f"IR version {onnx.IR_VERSION + 1} is newer than the installed onnx")


def test_opset_newer_than_onnx_knows(tmp_path, weight):
    model = weighted_model(weight)
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    path = tmp_path / "future_opset.onnx"
    path.write_bytes(model.SerializeToString())
    expect_error(path, f"opset {onnx.defs.onnx_opset_version() + 5} is newer")


def test_unknown_domain(tmp_path):
    graph = helper.make_graph([helper.make_node("Frobnicate", ["x"], ["y"], domain="com.acme", name="frob")], "g",
                              [vi("x", F, [2])], [vi("y", F, [2])])
    model = helper.make_model(graph, ir_version=8,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    error = expect_error(path, r"Frobnicate \(domain com.acme\) x1 at frob")
    assert isinstance(error, UnsupportedOpsError)


def test_checker_rejection(tmp_path):
    # a node reads a tensor nothing produces
    graph = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "g",
                              [vi("x", F, [2])], [vi("y", F, [2])])
    path = tmp_path / "dangling.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                       ir_version=8).SerializeToString())
    expect_error(path, "onnx's checker rejects the model", "nowhere")


def test_shape_inference_rejection(tmp_path):
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [vi("a", F, [2, 3]), vi("b", F, [4, 5])],
                              [vi("y", F, [2, 3])])
    path = tmp_path / "mismatch.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    expect_error(path, "ONNX shape inference fails")


def test_unsupported_dtype_names_the_input(tmp_path):
    graph = helper.make_graph([helper.make_node("Neg", ["x"], ["y"])], "g",
                              [vi("x", TensorProto.INT16, [2])],
                              [vi("y", TensorProto.INT16, [2])])
    path = tmp_path / "int16.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    expect_error(path, "graph input 'x' has ONNX dtype int16, which has no qjc equivalent")


# ---- external data -----------------------------------------------------------------------------------


def test_external_data_is_read_from_beside_the_model(tmp_path, weight):
    path = save_external(weighted_model(weight), tmp_path)
    assert onnx.load(path, load_external_data=False).graph.initializer[0].data_location == TensorProto.EXTERNAL
    graph = from_onnx(path)
    x = np.random.default_rng(SEED + 1).standard_normal(weight.shape).astype(np.float32)
    np.testing.assert_array_equal(run(graph, [x])[0], x * weight)


def test_external_data_in_a_subdirectory(tmp_path, weight):
    path = save_external(weighted_model(weight), tmp_path)
    (tmp_path / "data").mkdir()
    os.replace(tmp_path / "weights.bin", tmp_path / "data" / "weights.bin")
    rewrite_external(path, location="data/weights.bin")
    np.testing.assert_array_equal(from_onnx(path).constants["w"].data, weight)


def test_external_data_through_an_inner_symlink(tmp_path, weight):
    # qjc's own reader allows a symlink that stays inside the directory; onnx's checker, which
    # runs next, refuses every symlinked data file, and says so
    path = save_external(weighted_model(weight), tmp_path)
    os.replace(tmp_path / "weights.bin", tmp_path / "real.bin")
    os.symlink(tmp_path / "real.bin", tmp_path / "weights.bin")
    expect_error(path, "onnx's checker rejects the model", "tensor name: w", "symbolic link")


def test_external_data_with_a_parent_component(tmp_path, weight):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = save_external(weighted_model(weight), model_dir)
    os.replace(model_dir / "weights.bin", tmp_path / "weights.bin")  # the file exists, one level up
    rewrite_external(path, location="../weights.bin")
    expect_error(path, "tensor 'w'", r"location '\.\./weights\.bin' has a '\.\.' component")


def test_external_data_with_an_absolute_path(tmp_path, weight):
    path = save_external(weighted_model(weight), tmp_path)
    rewrite_external(path, location=str(tmp_path / "weights.bin"))
    expect_error(path, "tensor 'w'", "is an absolute path")


def test_external_data_through_a_symlink_leaving_the_directory(tmp_path, weight):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = save_external(weighted_model(weight), model_dir)
    os.replace(model_dir / "weights.bin", tmp_path / "secret.bin")
    os.symlink(tmp_path / "secret.bin", model_dir / "weights.bin")
    expect_error(path, "tensor 'w'", "outside the model's directory", "symlink")


def test_external_data_past_the_end_of_its_file(tmp_path, weight):
    path = save_external(weighted_model(weight), tmp_path)
    size = (tmp_path / "weights.bin").stat().st_size
    rewrite_external(path, offset="16", length=str(weight.nbytes))
    expect_error(path, "tensor 'w'", f"offset 16 \\+ length {weight.nbytes} = {16 + weight.nbytes} is past the end "
                                     f"of 'weights.bin' \\({size} bytes\\)")


def test_external_data_of_the_wrong_length(tmp_path, weight):
    path = save_external(weighted_model(weight), tmp_path)
    rewrite_external(path, length="8")
    expect_error(path, "tensor 'w'", rf"8 bytes at offset 0, but a f32\[4, 6\] tensor takes {weight.nbytes}")


def test_external_data_of_a_model_given_in_memory_needs_the_path(tmp_path, weight):
    path = save_external(weighted_model(weight), tmp_path)
    model = onnx.load(path, load_external_data=False)
    with pytest.raises(QJCError, match="tensor 'w' keeps its data in an external file"):
        from_onnx(model, name="in-memory")
