"""The cpu engine: the artifact's model.so run by TVM's Relax virtual machine.

Loading needs TVM's runtime and numpy only (torch stays unimported, see tvm_env.import_tvm). The
artifact is verified before the library is loaded; the weights are read from weights.safetensors
and packed for the GEMM kernels once, here (quantized weights into the quantized GEMM's codes /
scales / zeros, see quant_layout.py), and stay resident as TVM tensors between calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from qjc.artifact import WEIGHTS_FILE, Artifact
from qjc.backends.cpu.tvm_env import configure_threads, import_tvm, missing_cpu_features
from qjc.backends.cpu.weights import ParamSpec, load_param
from qjc.errors import ArtifactError, BackendError
from qjc.runtime.engine import Engine
from qjc.runtime.library import path_to_load

LIBRARY_FILE = "model.so"


class CpuEngine(Engine):
    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact)
        entries = artifact.backend_entries
        missing = missing_cpu_features(list(entries.get("cpu_features", [])))
        if missing:
            raise BackendError(
                f"artifact {artifact.path} was compiled for CPU {entries.get('cpu')!r}, which needs "
                f"{', '.join(missing)}; this CPU lacks them",
                "rebuild it here, or with -O cpu=x86-64-v3 for a portable artifact")
        self._tvm = tvm = import_tvm()
        options = artifact.manifest.get("target_options") or {}
        self.threads = configure_threads(int(options.get("threads", 0) or 0))
        relative = entries.get("library", LIBRARY_FILE)
        library = artifact.file(relative)
        try:
            module = tvm.runtime.load_module(str(path_to_load(library, artifact.manifest["files"][relative])))
        except Exception as e:  # TVM raises its own error types for unloadable libraries
            raise ArtifactError(f"{library}: TVM could not load the library: {e}") from None
        self._vm = tvm.runtime.vm.VirtualMachine(module, tvm.cpu())
        self._main = self._vm[entries.get("entry", "main")]
        self.params = [ParamSpec.from_json(p) for p in entries.get("params", [])]
        self._weights = self._load_weights()

    def _load_weights(self) -> list[Any]:
        if not self.params:
            return []
        from qjc.safetensors_io import load_file

        stored = load_file(self.artifact.file(WEIGHTS_FILE))
        out = []
        for spec in self.params:
            needed = [spec.constant] + ([f"{spec.constant}::scales"] if spec.quant else [])
            for name in needed:
                if name not in stored:
                    raise ArtifactError(f"{self.path / WEIGHTS_FILE} has no tensor {name!r}, which the "
                                        "compiled library takes as (part of) a parameter")
            try:
                array = load_param(stored, spec)
            except (ValueError, KeyError) as e:
                raise ArtifactError(f"weight {spec.constant!r} ({spec.quant or spec.dtype}) cannot be laid out "
                                    f"as {spec.layout}: {e}") from None
            if tuple(array.shape) != spec.shape:
                raise ArtifactError(f"weight {spec.constant!r} packs to {list(array.shape)}, the library "
                                    f"expects {list(spec.shape)}")
            out.append(self._tvm.runtime.tensor(array, self._tvm.cpu()))
        return out

    def run(self, inputs: list[Any], symbols: dict[str, int]) -> Sequence[Any]:
        tvm = self._tvm
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), tvm.cpu()) for x in inputs]
        results = self._main(*args, *self._weights)
        return [r.numpy() for r in results]

    def run_tensors(self, *tensors: Any) -> list[Any]:
        """Run on TVM tensors already on the CPU device and return TVM tensors, without the numpy
        copies of ``__call__`` (no shape checks: for loops that feed outputs back, such as decoding
        with a KV cache)."""
        return list(self._main(*tensors, *self._weights))

    def to_tensor(self, array: np.ndarray) -> Any:
        return self._tvm.runtime.tensor(np.ascontiguousarray(array), self._tvm.cpu())
