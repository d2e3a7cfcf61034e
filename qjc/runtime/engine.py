"""The Engine base class: a loaded artifact you call with numpy arrays.

Every backend's engine checks its inputs the same way here, against the manifest's signature,
so a wrong shape or dtype is reported by input name before any device code runs.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qjc.artifact import Artifact, Signature, TensorSpec
from qjc.errors import BackendError, QJCError


class Engine(abc.ABC):
    """Call it with inputs in signature order (or by name as keywords); it returns one array for
    a single-output engine, else a list in signature order."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self._signature = artifact.signature
        self._input_dims = [[_parse_dim(d, spec) for d in spec.shape] for spec in self._signature.inputs]

    @property
    def path(self) -> Path:
        return self.artifact.path

    @property
    def manifest(self) -> dict[str, Any]:
        return self.artifact.manifest

    @property
    def signature(self) -> Signature:
        return self._signature

    @property
    def target(self) -> str:
        return self.artifact.target

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s}" for s in self._signature.inputs)
        outs = ", ".join(f"{s.name}: {s}" for s in self._signature.outputs)
        return f"<{type(self).__name__} {self.target} {self.path} ({ins}) -> ({outs})>"

    def __call__(self, *inputs: Any, **named: Any) -> np.ndarray | list[Any]:
        arrays, symbols = self.check_inputs(inputs, named)
        outputs = list(self.run(arrays, symbols))
        if len(outputs) != len(self._signature.outputs):
            raise BackendError(f"{type(self).__name__} returned {len(outputs)} outputs; the artifact's "
                               f"signature has {len(self._signature.outputs)} (a backend bug)")
        return outputs[0] if len(outputs) == 1 else outputs

    def generate(self, prompt: Any, max_new_tokens: int = 64, **options: Any) -> Any:
        """Generate from a language-model artifact: text or token ids, one prompt or a list.
        Options: temperature, top_k, top_p, seed, stop_ids, on_token."""
        from qjc.runtime.generation import Generator
        from qjc.runtime.past_present import PastPresentGenerator, match_signature

        if getattr(self, "_generator", None) is None:
            roles = None if self.manifest.get("llm") else match_signature(self)
            self._generator = Generator(self) if roles is None else PastPresentGenerator(self, roles)
        return self._generator.generate(prompt, max_new_tokens, **options)

    @abc.abstractmethod
    def run(self, inputs: list[Any], symbols: dict[str, int]) -> Sequence[Any]:
        """Run on checked inputs (signature order); ``symbols`` holds the symbolic dims' values."""

    # ---- input checking ------------------------------------------------------------------------

    def check_inputs(self, inputs: Sequence[Any],
                     named: Mapping[str, Any]) -> tuple[list[Any], dict[str, int]]:
        specs = self._signature.inputs
        names = [s.name for s in specs]
        if named:
            if inputs:
                raise QJCError("pass the engine's inputs either all by position or all by name")
            unknown = sorted(set(named) - set(names))
            missing = [n for n in names if n not in named]
            if unknown or missing:
                parts = ([f"unknown input(s) {unknown}"] if unknown else []) + \
                        ([f"missing input(s) {missing}"] if missing else [])
                raise QJCError(f"{'; '.join(parts)}; the engine takes {', '.join(names) or 'no inputs'}")
            inputs = [named[n] for n in names]
        if len(inputs) != len(specs):
            shown = ", ".join(f"{s.name}: {s}" for s in specs) or "nothing"
            raise QJCError(f"the engine takes {len(specs)} input(s) ({shown}), got {len(inputs)}")
        arrays = [self._check_dtype(spec, x) for spec, x in zip(specs, inputs, strict=True)]
        return arrays, self._bind_shapes(arrays)

    def _check_dtype(self, spec: TensorSpec, x: Any) -> Any:
        from qjc.ir.dtypes import parse_dtype

        want = parse_dtype(spec.dtype)
        if want.is_quant:
            got = getattr(getattr(x, "dtype", None), "name", None)
            if got != want.name:
                raise QJCError(f"input {spec.name!r}: expected a quantized array of {want.name}, "
                               f"got {type(x).__name__}")
            return x
        arr = np.asarray(x)
        if arr.dtype != want.np_dtype:
            raise QJCError(f"input {spec.name!r}: expected dtype {spec.dtype} ({spec}), got {arr.dtype}",
                           f"convert it, e.g. x.astype(np.{want.np_dtype.name})")
        return arr

    def _bind_shapes(self, arrays: list[Any]) -> dict[str, int]:
        ranges = self._signature.symbol_ranges
        env: dict[str, int] = {}
        where: dict[str, str] = {}
        specs = self._signature.inputs
        for spec, dims, arr in zip(specs, self._input_dims, arrays, strict=True):
            shape = tuple(int(d) for d in arr.shape)
            if len(shape) != len(dims):
                raise QJCError(f"input {spec.name!r}: expected rank {len(dims)} ({spec}), "
                               f"got shape {list(shape)}")
            for axis, (d, n) in enumerate(zip(dims, shape, strict=True)):
                if isinstance(d, int):
                    if d != n:
                        raise QJCError(f"input {spec.name!r}: expected shape {spec}, got {list(shape)} "
                                       f"(axis {axis} must be {d})")
                    continue
                sym = _single_symbol(d)
                if sym is None:
                    continue
                if sym in env and env[sym] != n:
                    raise QJCError(f"input {spec.name!r}: axis {axis} is {sym}={n}, but {where[sym]} gives "
                                   f"{sym}={env[sym]}")
                env[sym], where[sym] = n, f"input {spec.name!r}"
                if sym in ranges and not ranges[sym][0] <= n <= ranges[sym][1]:
                    lo, hi = ranges[sym]
                    raise QJCError(f"input {spec.name!r}: {sym}={n} is outside the range {lo}..{hi} "
                                   "the engine was compiled for")
        # compound dims such as seq+1, once every single-symbol dim is bound
        for spec, dims, arr in zip(specs, self._input_dims, arrays, strict=True):
            for axis, (d, n) in enumerate(zip(dims, arr.shape, strict=True)):
                if isinstance(d, int) or _single_symbol(d) is not None:
                    continue
                try:
                    want = d.evaluate(env)
                except KeyError:
                    continue  # a symbol seen only inside expressions: nothing to compare with
                if want != n:
                    raise QJCError(f"input {spec.name!r}: axis {axis} is {d} = {want}, got {n}")
        return env


def _parse_dim(d: int | str, spec: TensorSpec):
    from qjc.errors import ArtifactError
    from qjc.ir.dims import parse_dim

    if isinstance(d, int):
        return d
    try:
        return parse_dim(d)
    except ValueError as e:
        raise ArtifactError(f"manifest signature of {spec.name!r}: {e}") from None


def _single_symbol(d) -> str | None:
    """The symbol name if ``d`` is exactly one symbol (``seq``), else None (``seq+1``)."""
    if len(d.terms) == 1 and d.terms[0][1] == 1 and len(d.terms[0][0]) == 1:
        return d.terms[0][0][0]
    return None
