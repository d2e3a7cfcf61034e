"""Every op and every fused kind on the GPU against torch (float64 reference), in fp32, fp16 and
bf16, on fresh random inputs. Cases share one artifact per (group, dtype): see gpu_cases.py."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
from gpu_cases import GROUPS, TOLERANCE, attention_cases, build_group  # noqa: E402

pytestmark = pytest.mark.cuda

DTYPES = ("f32", "f16", "bf16")
_SEEDS = {"basic": 11, "heavy": 23}


def _torch_input(a: np.ndarray):
    import torch

    if a.dtype.kind == "f" or a.dtype.name == "bfloat16":
        return torch.from_numpy(a.astype(np.float64))
    return torch.from_numpy(np.ascontiguousarray(a))


def _as_f64(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64) if np.asarray(x).dtype.kind != "b" else np.asarray(x)


@pytest.fixture(scope="module")
def results(request):
    """(group, dtype) -> (case name -> (inputs, outputs)), built and run once."""
    import torch

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    major, minor = torch.cuda.get_device_capability()
    arch = arch_of_capability(major, minor)
    cache: dict = {}

    def get(group: str, dtype: str):
        key = (group, dtype)
        if key not in cache:
            cases = GROUPS[group]()
            g, feeds, layout = build_group(cases, dtype, _SEEDS[group] + DTYPES.index(dtype))
            engine = qjc.compile(g, target="cuda", optimize=False, archs=(arch,))
            outs = engine(**feeds)
            outs = outs if isinstance(outs, list) else [outs]
            by_name = dict(zip([v.name for v in g.outputs], outs))
            cache[key] = ({c.name: c for c in cases},
                          {name: (ins, [by_name[o] for o in names]) for name, (ins, names) in layout.items()})
        return cache[key]

    return get


def _check(case, dtype, inputs, outputs):
    want = case.ref(*[_torch_input(a) for a in inputs])
    want = want if isinstance(want, list) else [want]
    assert len(want) == len(outputs)
    for got, ref in zip(outputs, want):
        ref = ref.float().numpy() if str(ref.dtype) == "torch.bfloat16" else ref.numpy()
        got_arr = np.asarray(got)
        assert got_arr.shape == ref.shape, (got_arr.shape, ref.shape)
        if case.exact or ref.dtype.kind in "biu":
            np.testing.assert_array_equal(_as_f64(got_arr), _as_f64(ref))
            continue
        got64 = got_arr.astype(np.float64)
        assert np.all(np.isfinite(got64)), "non-finite output"
        ref64 = ref.astype(np.float64)
        err = np.linalg.norm(got64 - ref64) / max(np.linalg.norm(ref64), 1e-30)
        tol = case.tol.get(dtype, TOLERANCE[dtype])
        assert err < tol, f"relative error {err:.3g} >= {tol:g}"


def _runs() -> list:
    """(group, dtype, case name) for every case in each dtype it declares."""
    return [pytest.param(group, dtype, c.name, id=f"{group}-{c.name}-{dtype}")
            for group, make in GROUPS.items() for c in make() for dtype in DTYPES if dtype in c.dtypes]


@pytest.mark.parametrize("group,dtype,name", _runs())
def test_op_matches_torch(results, group, dtype, name):
    cases, runs = results(group, dtype)
    _check(cases[name], dtype, *runs[name])


@pytest.mark.parametrize("dtype", ("f16", "bf16"))
def test_attention_without_the_key_split_matches_torch(dtype, monkeypatch):
    """QJC_ATTN_SPLIT=0 (read by the launcher at each launch): the tensor-core kernel that walks every key tile
    itself, which the key-split kernel replaces on small grids; both stay in the engine."""
    import torch

    import qjc
    from qjc.backends.cuda.options import arch_of_capability

    monkeypatch.setenv("QJC_ATTN_SPLIT", "0")
    cases = attention_cases()
    g, feeds, layout = build_group(cases, dtype, 5)
    arch = arch_of_capability(*torch.cuda.get_device_capability())
    engine = qjc.compile(g, target="cuda", optimize=False, archs=(arch,))
    outs = engine(**feeds)
    by_name = dict(zip([v.name for v in g.outputs], outs if isinstance(outs, list) else [outs]))
    for case in cases:
        if dtype in case.dtypes:
            inputs, names = layout[case.name]
            _check(case, dtype, inputs, [by_name[o] for o in names])
