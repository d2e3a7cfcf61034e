"""The backend contract and the backend registry.

A backend is a ``Backend`` subclass registered under the ``qjc.backends`` entry-point group, so
a vendor ships one as its own pip package and qjc finds it without being edited. A backend:

- names itself (``name``) and its target options (``options_class``: a frozen ``TargetOptions``
  dataclass whose ``stable_hash()`` keys the compile cache);
- says whether it can run here (``available()``), and what it accepts (``capabilities()``:
  ops, dtypes, fused-group kinds, layouts, shape limits) — passes and `qjc explain` read this,
  they never import backend code;
- writes its files into an artifact directory (``lower()``) and returns manifest entries;
- turns a verified artifact back into a callable ``Engine`` (``load()``).

Discovery never lets one broken plug-in take the others down: it is recorded with its error.
"""

from __future__ import annotations

import abc
import dataclasses
import fnmatch
import hashlib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from qjc.errors import BackendError

if TYPE_CHECKING:  # the runtime and artifact modules import nothing from here at import time
    from qjc.artifact import Artifact
    from qjc.ir.graph import Graph, Node
    from qjc.runtime.engine import Engine

ENTRY_POINT_GROUP = "qjc.backends"

# Backends that ship inside qjc: "module:Class". They are found even when the package metadata
# (and so its entry points) is missing, e.g. when running from a source tree.
BUILTIN_BACKENDS: dict[str, str] = {
    "npu_stub": "qjc.backends.npu_stub:NpuStubBackend",
    "cuda": "qjc.backends.cuda:CudaBackend",
    "cpu": "qjc.backends.cpu:CpuBackend",
}


# ---- capabilities ------------------------------------------------------------------------------

# Shape limits a backend may declare, and what each bounds.
SHAPE_LIMIT_KEYS = {
    "max_rank": "tensor rank",
    "max_dim": "any single dimension (symbolic dims by the top of their range)",
    "max_numel": "elements in one tensor (symbolic dims by the top of their range)",
}


def _pairs(value: Any, what: str, default_key: str | None = None) -> tuple[tuple[str, Any], ...]:
    """Normalize a mapping, a sequence of pairs, a bare value or None to sorted pairs, so
    Capabilities stays hashable whichever form its author wrote."""
    if value is None:
        return ()
    if isinstance(value, Mapping):
        items = list(value.items())
    elif isinstance(value, (str, int)) and default_key is not None:
        items = [(default_key, value)]
    else:
        try:
            items = [(k, v) for k, v in value]
        except (TypeError, ValueError):
            raise TypeError(f"Capabilities.{what}: expected a mapping or (key, value) pairs, "
                            f"got {value!r}") from None
    return tuple(sorted((str(k), v) for k, v in items))


@dataclass(frozen=True)
class Capabilities:
    """What a backend accepts. Names in ``ops`` and ``dtypes`` may be glob patterns ("*" = any),
    so a fallback backend can say "everything" and a quantized dtype family can be one entry."""

    ops: frozenset[str]
    dtypes: frozenset[str]
    fused_kinds: frozenset[str] = frozenset()
    max_fused_inputs: int = 0
    # Preferred layouts by what they lay out, e.g. {"kv_cache": "paged"}; a bare string means the
    # KV-cache layout.
    layouts: tuple[tuple[str, str], ...] = ()
    # Bounds by SHAPE_LIMIT_KEYS name, e.g. {"max_rank": 6}.
    shape_limits: tuple[tuple[str, int], ...] = ()
    notes: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "ops", frozenset(self.ops))
        object.__setattr__(self, "dtypes", frozenset(self.dtypes))
        object.__setattr__(self, "fused_kinds", frozenset(self.fused_kinds))
        object.__setattr__(self, "layouts", _pairs(self.layouts, "layouts", default_key="kv_cache"))
        object.__setattr__(self, "shape_limits", _pairs(self.shape_limits, "shape_limits"))
        unknown = [k for k, _ in self.shape_limits if k not in SHAPE_LIMIT_KEYS]
        if unknown:
            raise ValueError(f"Capabilities.shape_limits: unknown limit(s) {unknown}; "
                             f"known: {sorted(SHAPE_LIMIT_KEYS)}")

    def layout(self, kind: str) -> str | None:
        return dict(self.layouts).get(kind)

    @property
    def kv_cache_layout(self) -> str | None:
        return self.layout("kv_cache")

    def shape_limit(self, key: str) -> int | None:
        return dict(self.shape_limits).get(key)

    def accepts_op(self, op: str) -> bool:
        return _matches(op, self.ops)

    def accepts_dtype(self, dtype_name: str) -> bool:
        return _matches(dtype_name, self.dtypes)

    def accepts(self, node: Node, symbols: Mapping[str, Any] | None = None) -> tuple[bool, str]:
        """Whether this backend takes ``node``; if not, the first reason why, in words.

        ``symbols`` (a graph's symbol ranges) lets shape limits bound symbolic dims; without it
        symbolic dims are not checked against ``max_dim`` / ``max_numel``.
        """
        if node.op == "fused":
            kind = node.attrs.get("kind", "")
            if kind not in self.fused_kinds:
                return False, f"fused groups of kind {kind!r} are not supported"
            if len(node.inputs) > self.max_fused_inputs:
                return False, (f"fused group has {len(node.inputs)} inputs, more than the "
                               f"{self.max_fused_inputs} allowed")
            if node.subgraph is not None:
                for inner in node.subgraph.nodes:
                    ok, why = self.accepts(inner, symbols)
                    if not ok:
                        return False, f"inside the fused group: {inner.op}: {why}"
        elif not self.accepts_op(node.op):
            return False, f"op {node.op} is not supported"
        for role, values in (("input", node.inputs), ("output", node.outputs)):
            for v in values:
                if not self.accepts_dtype(v.type.dtype.name):
                    return False, (f"{role} %{v.name} has dtype {v.type.dtype}, "
                                   f"not one of {_shown(self.dtypes)}")
                why = self._shape_problem(v.type.shape, symbols)
                if why:
                    return False, f"{role} %{v.name}: {why}"
        return True, ""

    def _shape_problem(self, shape: tuple, symbols: Mapping[str, Any] | None) -> str:
        limits = dict(self.shape_limits)
        if "max_rank" in limits and len(shape) > limits["max_rank"]:
            return f"rank {len(shape)} exceeds the maximum {limits['max_rank']}"
        uppers = [_upper_bound(d, symbols) for d in shape]
        if "max_dim" in limits:
            for d, hi in zip(shape, uppers, strict=True):
                if hi is not None and hi > limits["max_dim"]:
                    return f"dim {d} (up to {hi}) exceeds the maximum {limits['max_dim']}"
        if "max_numel" in limits and all(u is not None for u in uppers):
            numel = 1
            for u in uppers:
                numel *= u
            if numel > limits["max_numel"]:
                return f"{numel} elements exceed the maximum {limits['max_numel']}"
        return ""


def _matches(name: str, patterns: Iterable[str]) -> bool:
    globs = (p for p in patterns if any(c in p for c in "*?["))
    return name in patterns or any(fnmatch.fnmatchcase(name, p) for p in globs)


def _shown(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def _upper_bound(dim: Any, symbols: Mapping[str, Any] | None) -> int | None:
    """The largest value ``dim`` can take: itself if static, else its expression evaluated at the
    top of every symbol's range (dims are non-negative polynomials in practice); None if unknown."""
    if isinstance(dim, int):
        return dim
    if not symbols:
        return None
    env = {}
    for s in dim.symbols:
        rng = symbols.get(s)
        if rng is None:
            return None
        env[s] = rng.hi
    return dim.evaluate(env)


# ---- target options ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetOptions:
    """Base of every backend's options. Subclasses are frozen dataclasses and set ``target``.

    ``stable_hash()`` depends only on the target name and the field values, never on the Python
    process (no id(), no hash randomization), so it can key an on-disk cache.
    """

    target: ClassVar[str] = ""

    def to_json(self) -> dict[str, Any]:
        return {f.name: _canonical(getattr(self, f.name), f"{type(self).__name__}.{f.name}")
                for f in dataclasses.fields(self)}

    def stable_hash(self) -> str:
        text = json.dumps({"target": self.target, "options": self.to_json()},
                          sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(text.encode("ascii")).hexdigest()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TargetOptions:
        """Build options, naming unknown keys and the known ones (a typo gets a useful error)."""
        known = cls.field_names()
        unknown = sorted(set(kwargs) - set(known))
        if unknown:
            raise BackendError(
                f"unknown option(s) {unknown} for target {cls.target or cls.__name__}",
                f"known options: {', '.join(known) or 'none'}",
            )
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            raise BackendError(f"bad options for target {cls.target}: {e}") from None

    @classmethod
    def from_strings(cls, values: Mapping[str, str]) -> TargetOptions:
        """Build options from ``key=value`` text (the CLI's ``-O``), converting each value to its
        field's declared type."""
        hints = typing.get_type_hints(cls)
        converted: dict[str, Any] = {}
        for key, text in values.items():
            if key not in hints or key == "target":
                converted[key] = text  # from_kwargs names it as unknown
                continue
            try:
                converted[key] = _from_text(text, hints[key])
            except ValueError as e:
                raise BackendError(f"option {key}={text!r} for target {cls.target}: {e}") from None
        return cls.from_kwargs(**converted)


def _canonical(value: Any, where: str) -> Any:
    """A JSON value that is the same for equal option values in every process."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # exact and locale-free; JSON floats may round-trip differently
    if isinstance(value, Enum):
        return _canonical(value.value, where)
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, (list, tuple)):
        return [_canonical(v, where) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_canonical(v, where) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, where) for k, v in value.items()}
    from qjc.ir.dtypes import DType

    if isinstance(value, DType):
        return value.name
    raise BackendError(f"{where}: a value of type {type(value).__name__} has no stable hash",
                       "target options may hold None, bool, int, float, str, enums, paths, and "
                       "lists / tuples / sets / dicts of those")


def _from_text(text: str, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        last: ValueError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _from_text(text, arg)
            except ValueError as e:
                last = e
        raise last or ValueError("no type fits")
    if hint is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    if origin in (tuple, list, frozenset):
        item = args[0] if args else str
        parts = [p.strip() for p in text.split(",") if p.strip()]
        return origin(_from_text(p, item) for p in parts)
    if isinstance(hint, type) and issubclass(hint, Enum):
        try:
            return hint(text)
        except ValueError:
            raise ValueError(f"expected one of {[m.value for m in hint]}") from None
    return text


# ---- the backend contract -------------------------------------------------------------------------


class Backend(abc.ABC):
    """Subclass this, set ``name`` and ``options_class``, implement the four methods, and
    register the class under the ``qjc.backends`` entry-point group."""

    name: ClassVar[str] = ""
    options_class: ClassVar[type[TargetOptions]] = TargetOptions
    description: ClassVar[str] = ""

    def available(self) -> tuple[bool, str]:
        """Whether artifacts built by this backend can run on this machine, and why not.
        Building (lower) must work everywhere; only loading may need hardware."""
        return True, ""

    def default_options(self) -> TargetOptions:
        return self.options_class()

    def make_options(self, **kwargs: Any) -> TargetOptions:
        return self.options_class.from_kwargs(**kwargs)

    @abc.abstractmethod
    def capabilities(self, options: TargetOptions) -> Capabilities:
        """What this backend accepts under ``options``."""

    @abc.abstractmethod
    def lower(self, graph: Graph, options: TargetOptions, out_dir: Path) -> dict[str, Any]:
        """Write this target's files into ``out_dir`` (the artifact's directory while it is being
        built; graph.qir and weights.safetensors are already written by qjc) and return manifest
        entries: JSON values. The keys ``arch``, ``kv_cache`` and ``memory_plan_bytes`` fill those
        manifest fields; every other key lands under the manifest's ``backend`` section."""

    @abc.abstractmethod
    def load(self, artifact: Artifact) -> Engine:
        """Return an Engine for a verified artifact of this target."""


# ---- registry --------------------------------------------------------------------------------------


@dataclass
class BackendInfo:
    """One discovered backend, or a plug-in that failed to load (``error`` says why)."""

    name: str
    source: str  # "builtin" or the distribution that declared the entry point
    target: str  # "module:Class" it was loaded from
    backend_class: type[Backend] | None = None
    error: str | None = None
    _instance: Backend | None = field(default=None, repr=False)

    @property
    def broken(self) -> bool:
        return self.error is not None

    def instance(self) -> Backend:
        if self.backend_class is None:
            raise BackendError(f"backend {self.name} failed to load: {self.error}")
        if self._instance is None:
            try:
                self._instance = self.backend_class()
            except Exception as e:
                raise BackendError(f"backend {self.name} ({self.target}) could not be created: "
                                   f"{type(e).__name__}: {e}") from e
        return self._instance

    def availability(self) -> tuple[bool, str]:
        if self.broken:
            return False, f"broken plug-in: {self.error}"
        try:
            return self.instance().available()
        except Exception as e:  # a plug-in's availability probe must not break `qjc targets`
            return False, f"availability check failed: {type(e).__name__}: {e}"


_cache: dict[str, BackendInfo] | None = None


def _load_class(name: str, target: str, load: Any) -> tuple[type[Backend] | None, str | None]:
    try:
        obj = load()
    except Exception as e:
        return None, f"import of {target} failed: {type(e).__name__}: {e}"
    if not (isinstance(obj, type) and issubclass(obj, Backend)):
        return None, f"{target} is {obj!r}, not a subclass of qjc.backends.base.Backend"
    if getattr(obj, "__abstractmethods__", None):
        missing = ", ".join(sorted(obj.__abstractmethods__))
        return None, f"{target} does not implement {missing}"
    if obj.name != name:
        return None, f"{target} calls itself {obj.name!r} but is registered as {name!r}"
    return obj, None


def _import_target(target: str) -> Any:
    import importlib

    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split(".") if attr else []:
        obj = getattr(obj, part)
    return obj


def _entry_points() -> list[Any]:
    from importlib import metadata

    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def discover_backends(refresh: bool = False) -> dict[str, BackendInfo]:
    """Every backend qjc can find: built-ins, then ``qjc.backends`` entry points (unless
    QJC_NO_PLUGINS is set). Broken plug-ins are included with their error."""
    global _cache
    if _cache is not None and not refresh:
        return _cache
    from qjc import knobs

    found: dict[str, BackendInfo] = {}
    for name, target in BUILTIN_BACKENDS.items():
        cls, error = _load_class(name, target, lambda t=target: _import_target(t))
        found[name] = BackendInfo(name, "builtin", target, cls, error)
    if not knobs.NO_PLUGINS.get():
        try:
            eps = _entry_points()
        except Exception as e:  # broken package metadata elsewhere in the environment
            eps = []
            found["<entry points>"] = BackendInfo("<entry points>", "metadata", "", None,
                                                  f"reading entry points failed: {type(e).__name__}: {e}")
        for ep in sorted(eps, key=lambda ep: (ep.name, ep.value)):
            if ep.name in found and found[ep.name].target == ep.value:
                continue  # a built-in also declared in qjc's own metadata
            dist = getattr(getattr(ep, "dist", None), "name", None) or "entry point"
            if ep.name in found:
                # keep the first one found; a second backend under a taken name is a conflict
                found[f"{ep.name} ({ep.value})"] = BackendInfo(
                    ep.name, dist, ep.value, None,
                    f"name {ep.name!r} is already taken by {found[ep.name].target}")
                continue
            cls, error = _load_class(ep.name, ep.value, ep.load)
            found[ep.name] = BackendInfo(ep.name, dist, ep.value, cls, error)
    _cache = dict(sorted(found.items()))
    return _cache


def get_backend(name: str) -> Backend:
    """The backend instance registered as ``name``, or a BackendError naming the known ones."""
    infos = discover_backends()
    info = infos.get(name)
    if info is not None and not info.broken:
        return info.instance()
    usable = sorted(n for n, i in infos.items() if not i.broken)
    if info is not None:
        raise BackendError(f"backend {name!r} ({info.source}: {info.target}) failed to load: {info.error}",
                           f"working targets: {', '.join(usable) or 'none'}")
    from difflib import get_close_matches

    near = get_close_matches(name, usable, n=1)
    hint = (f"did you mean {near[0]}? " if near else "") + f"known targets: {', '.join(usable) or 'none'}"
    broken = sorted(i.name for i in infos.values() if i.broken)
    if broken:
        hint += f" (broken plug-ins: {', '.join(broken)}; `qjc targets` shows why)"
    raise BackendError(f"unknown target {name!r}", hint)
