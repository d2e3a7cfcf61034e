"""The backend contract: registry discovery (built-ins, plug-ins, broken plug-ins), Capabilities,
and target options with their stable hash."""

from __future__ import annotations

import hashlib
import json
import textwrap
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar

import numpy as np
import pytest

from qjc.backends import base
from qjc.backends.base import Capabilities, TargetOptions, discover_backends, get_backend
from qjc.errors import BackendError
from qjc.ir.dims import SymExpr
from qjc.ir.dtypes import bf16, f16, f32
from qjc.ir.graph import Graph
from qjc.ir.types import TensorType

PLUGIN_SOURCE = textwrap.dedent('''
    from dataclasses import dataclass
    from typing import ClassVar

    from qjc.backends.base import Backend, Capabilities, TargetOptions


    @dataclass(frozen=True)
    class FakeOptions(TargetOptions):
        target: ClassVar[str] = "fakenpu"
        tiles: int = 4


    class FakeNpu(Backend):
        name = "fakenpu"
        options_class = FakeOptions
        description = "a test plug-in"

        def available(self):
            return False, "no fake hardware in this machine"

        def capabilities(self, options):
            return Capabilities(ops=frozenset({"add"}), dtypes=frozenset({"f32"}))

        def lower(self, graph, options, out_dir):
            return {}

        def load(self, artifact):
            raise NotImplementedError


    class NotABackend:
        name = "notabackend"
''')


@pytest.fixture
def fresh_registry():
    """Discovery caches its result; every test here starts and ends with an empty cache."""
    base._cache = None
    yield
    base._cache = None


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch, fresh_registry):
    """A good plug-in, one whose module does not import, one that is not a Backend, and one
    that tries to take the built-in npu_stub's name — all served as entry points."""
    (tmp_path / "fake_qjc_plugin.py").write_text(PLUGIN_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    group = base.ENTRY_POINT_GROUP
    eps = [
        metadata.EntryPoint("fakenpu", "fake_qjc_plugin:FakeNpu", group),
        metadata.EntryPoint("brokennpu", "no_such_module_for_qjc_tests:Backend", group),
        metadata.EntryPoint("notabackend", "fake_qjc_plugin:NotABackend", group),
        metadata.EntryPoint("npu_stub", "fake_qjc_plugin:FakeNpu", group),
    ]
    calls = []

    def fake_entry_points(**kwargs):
        calls.append(kwargs)
        return [ep for ep in eps if ep.group == kwargs.get("group")]

    monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
    return calls


def test_discovery_loads_good_plugin_and_records_broken_ones(fake_plugins):
    infos = discover_backends()
    assert fake_plugins == [{"group": "qjc.backends"}]
    good = infos["fakenpu"]
    assert not good.broken and good.backend_class.__name__ == "FakeNpu"
    assert good.availability() == (False, "no fake hardware in this machine")

    broken = infos["brokennpu"]
    assert broken.broken and "no_such_module_for_qjc_tests" in broken.error
    assert "not a subclass" in infos["notabackend"].error
    # the built-in keeps its name; the impostor is reported, not loaded
    assert infos["npu_stub"].source == "builtin" and not infos["npu_stub"].broken
    clash = [i for i in infos.values() if i.name == "npu_stub" and i.broken]
    assert clash and "already taken" in clash[0].error

    assert get_backend("fakenpu").name == "fakenpu"
    assert get_backend("npu_stub").name == "npu_stub"


def test_get_backend_names_the_broken_plugin_error(fake_plugins):
    with pytest.raises(BackendError) as err:
        get_backend("brokennpu")
    assert "failed to load" in str(err.value) and "no_such_module_for_qjc_tests" in str(err.value)


def test_get_backend_unknown_lists_known_targets(fake_plugins):
    with pytest.raises(BackendError) as err:
        get_backend("fakenpv")
    text = str(err.value)
    assert "unknown target 'fakenpv'" in text
    assert "did you mean fakenpu" in text and "npu_stub" in text and "brokennpu" in text


def test_no_plugins_knob_skips_entry_points(fake_plugins, monkeypatch):
    monkeypatch.setenv("QJC_NO_PLUGINS", "1")
    infos = discover_backends(refresh=True)
    assert fake_plugins == []  # entry points were never read
    assert set(infos) == set(base.BUILTIN_BACKENDS)  # only the built-ins


def test_installed_metadata_declares_npu_stub(fresh_registry):
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="qjc.backends")}
    assert eps.get("npu_stub") == base.BUILTIN_BACKENDS["npu_stub"]
    infos = discover_backends()
    assert [i.name for i in infos.values()].count("npu_stub") == 1  # not listed twice


def test_options_from_kwargs_and_strings(fake_plugins):
    backend = get_backend("fakenpu")
    assert backend.make_options(tiles=8).tiles == 8
    with pytest.raises(BackendError) as err:
        backend.make_options(tilez=8)
    assert "tilez" in str(err.value) and "tiles" in str(err.value)
    assert backend.options_class.from_strings({"tiles": "16"}).tiles == 16
    with pytest.raises(BackendError, match="expected an integer"):
        backend.options_class.from_strings({"tiles": "many"})


# ---- target options hash ------------------------------------------------------------------------


@dataclass(frozen=True)
class _OptsA(TargetOptions):
    target: ClassVar[str] = "alpha"
    level: int = 2
    scale: float = 0.5
    arch: tuple[str, ...] = ("sm_90",)
    flags: frozenset[str] = frozenset()
    cache_dir: str | None = None


@dataclass(frozen=True)
class _OptsB(_OptsA):
    target: ClassVar[str] = "beta"


def test_options_hash_is_stable_and_sensitive():
    a = _OptsA()
    assert a.stable_hash() == _OptsA().stable_hash()
    assert a.stable_hash() == _OptsA(level=2, scale=0.5, arch=("sm_90",)).stable_hash()
    # set order never matters
    xyz, zyx = _OptsA(flags=frozenset(["x", "y", "z"])), _OptsA(flags=frozenset(["z", "y", "x"]))
    assert xyz.stable_hash() == zyx.stable_hash()
    others = [_OptsA(level=3), _OptsA(scale=0.25), _OptsA(arch=("sm_80",)), _OptsA(flags=frozenset({"x"})),
              _OptsA(cache_dir="/tmp"), _OptsB()]
    hashes = {a.stable_hash()} | {o.stable_hash() for o in others}
    assert len(hashes) == len(others) + 1


def test_options_hash_is_sha256_of_canonical_json():
    """The hash depends only on the target name and field values (no process state), so it
    matches a digest computed independently here."""
    fields = {"level": 2, "scale": "0.5", "arch": ["sm_90"], "flags": [], "cache_dir": None}
    text = json.dumps({"target": "alpha", "options": fields}, sort_keys=True, separators=(",", ":"))
    assert _OptsA().stable_hash() == hashlib.sha256(text.encode()).hexdigest()


def test_options_with_unhashable_field_value_is_refused():
    @dataclass(frozen=True)
    class Bad(TargetOptions):
        target: ClassVar[str] = "bad"
        thing: object = None

    with pytest.raises(BackendError, match="no stable hash"):
        Bad(thing=object()).stable_hash()


# ---- capabilities ---------------------------------------------------------------------------------


def _graph() -> tuple[Graph, dict]:
    g = Graph("caps")
    g.add_symbol("seq", 1, 4096)
    x = g.add_input("x", TensorType((SymExpr.symbol("seq"), 64), f32))
    h = g.add_input("h", TensorType((2, 64), f16))
    b = g.add_input("b", TensorType((2, 64), bf16))
    nodes = {
        "add": g.op("add", x, x).producer,
        "exp": g.op("exp", x).producer,
        "add16": g.op("add", h, h).producer,
        "addbf": g.op("add", b, b).producer,
        "rank5": g.op("reshape", h, shape=(1, 1, 2, 8, 8)).producer,
    }
    return g, nodes


def test_capabilities_accepts_ops_dtypes_and_says_why_not():
    g, n = _graph()
    caps = Capabilities(ops=frozenset({"add", "reshape"}), dtypes=frozenset({"f32", "f16"}))
    assert caps.accepts(n["add"]) == (True, "")
    assert caps.accepts(n["add16"]) == (True, "")
    ok, why = caps.accepts(n["exp"])
    assert not ok and "op exp is not supported" in why
    ok, why = caps.accepts(n["addbf"])
    assert not ok and "bf16" in why and "f16, f32" in why


def test_capabilities_glob_patterns():
    g, n = _graph()
    everything = Capabilities(ops=frozenset({"*"}), dtypes=frozenset({"*"}))
    assert all(everything.accepts(node)[0] for node in n.values())
    floats16 = Capabilities(ops=frozenset({"a*"}), dtypes=frozenset({"?f16"}))
    assert floats16.accepts(n["addbf"])[0] and not floats16.accepts(n["add16"])[0]


def test_capabilities_shape_limits_use_symbol_ranges():
    g, n = _graph()
    caps = Capabilities(ops=frozenset({"*"}), dtypes=frozenset({"*"}),
                        shape_limits={"max_rank": 4, "max_dim": 1024})
    ok, why = caps.accepts(n["rank5"])
    assert not ok and "rank 5 exceeds the maximum 4" in why
    assert caps.accepts(n["add"]) == (True, "")  # without ranges a symbolic dim is not bounded
    ok, why = caps.accepts(n["add"], g.symbols)
    assert not ok and "up to 4096" in why
    def numel_limit(limit: int) -> Capabilities:
        return Capabilities(ops=frozenset({"*"}), dtypes=frozenset({"*"}), shape_limits={"max_numel": limit})

    assert numel_limit(4096 * 64).accepts(n["add"], g.symbols)[0]
    assert not numel_limit(4096 * 64 - 1).accepts(n["add"], g.symbols)[0]
    with pytest.raises(ValueError, match="unknown limit"):
        Capabilities(ops=frozenset(), dtypes=frozenset(), shape_limits={"max_banana": 1})


def _fused_node(kind: str, n_inputs: int):
    g = Graph("outer")
    xs = [g.add_input(f"x{i}", TensorType((4,), f32)) for i in range(n_inputs)]
    sub = Graph("group")
    ps = [sub.add_input(f"p{i}", TensorType((4,), f32)) for i in range(n_inputs)]
    acc = ps[0]
    for p in ps[1:]:
        acc = sub.op("add", acc, p)
    sub.set_outputs(sub.op("tanh", acc))
    return g.add_node("fused", xs, {"kind": kind}, subgraph=sub)[0].producer


def test_capabilities_fused_groups():
    caps = Capabilities(ops=frozenset({"add", "tanh"}), dtypes=frozenset({"f32"}),
                        fused_kinds=frozenset({"elementwise"}), max_fused_inputs=3)
    assert caps.accepts(_fused_node("elementwise", 3)) == (True, "")
    ok, why = caps.accepts(_fused_node("elementwise", 4))
    assert not ok and "4 inputs" in why
    ok, why = caps.accepts(_fused_node("rms_norm", 2))
    assert not ok and "rms_norm" in why
    no_tanh = Capabilities(ops=frozenset({"add"}), dtypes=frozenset({"f32"}),
                           fused_kinds=frozenset({"elementwise"}), max_fused_inputs=3)
    ok, why = no_tanh.accepts(_fused_node("elementwise", 2))
    assert not ok and "inside the fused group: tanh" in why


def test_capabilities_normalizes_layouts_and_limits_and_is_hashable():
    a = Capabilities(ops={"add"}, dtypes={"f32"}, layouts="paged", shape_limits={"max_rank": 4})
    b = Capabilities(ops=frozenset({"add"}), dtypes=frozenset({"f32"}), layouts={"kv_cache": "paged"},
                     shape_limits=[("max_rank", 4)])
    assert a == b and hash(a) == hash(b)
    assert a.kv_cache_layout == "paged" and a.layout("weights") is None
    assert a.shape_limit("max_rank") == 4 and a.shape_limit("max_dim") is None


def test_capabilities_reject_random_node_dtypes():
    """A fresh random choice of dtype per input: accepts() agrees with a set lookup."""
    rng = np.random.default_rng(7)
    names = ["f32", "f16", "bf16"]
    allowed = {"f32", "f16"}
    caps = Capabilities(ops=frozenset({"mul"}), dtypes=frozenset(allowed))
    dtypes = {"f32": f32, "f16": f16, "bf16": bf16}
    for _ in range(10):
        name = names[rng.integers(len(names))]
        g = Graph("r")
        x = g.add_input("x", TensorType((3,), dtypes[name]))
        node = g.op("mul", x, x).producer
        assert caps.accepts(node)[0] == (name in allowed)
