"""ONNX Runtime session for a paged artifact, with the KV pools updated in place.

Each pool is allocated once (NumPy, zeros) and bound with IOBinding as both
the pool input `key_cache.{i}` and the pool output `key_cache_out.{i}`: the
graph's ScatterND writes into that same buffer, so a step copies no pool
(DESIGN.md §3). Only the step's small inputs and the logits move per step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from pagedc.errors import ModelError, RequestError
from pagedc.manifest import Manifest
from pagedc.runtime.sessions.artifact_check import check_ort_artifact
from pagedc.runtime.checks import require_int
from pagedc.runtime.sessions.memory import check_pools_fit


@dataclass(frozen=True)
class SessionOptions:
    intra_op_threads: int = 0            # 0: ONNX Runtime's default (one per core)
    optimization: str = "all"            # "all" | "extended" | "basic" | "disable"

    def __post_init__(self) -> None:
        require_int("SessionOptions.intra_op_threads", self.intra_op_threads, minimum=0)
        if self.optimization not in _LEVELS:
            raise RequestError(f"SessionOptions.optimization must be one of {sorted(_LEVELS)}, "
                               f"got {self.optimization!r}")


# What InferenceSession raises for a bad file (pybind11 classes deriving from Exception only).
_ORT_LOAD_ERRORS = tuple(getattr(ort.capi.onnxruntime_pybind11_state, name) for name in (
    "Fail", "InvalidProtobuf", "NoSuchFile", "InvalidArgument", "InvalidGraph", "RuntimeException",
    "NotImplemented") if hasattr(ort.capi.onnxruntime_pybind11_state, name)) + (RuntimeError, OSError)

_LEVELS = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}


class OrtPagedSession:
    """Runs steps of a paged ONNX artifact; owns the pools."""

    def __init__(self, manifest: Manifest, directory: str | Path, options: SessionOptions = SessionOptions()):
        artifact = manifest.artifacts[0]
        path = Path(directory) / artifact.path
        self.session = _load(path, options)
        check_ort_artifact(manifest, artifact, self.session, str(path))
        self.input_names = {i.name for i in self.session.get_inputs()}
        check_pools_fit(manifest.num_blocks * manifest.bytes_per_block(), manifest.bytes_per_block(), str(directory))
        dtype = np.dtype(manifest.kv_dtype)
        self.pools = {name: np.zeros(manifest.pool_shape(), dtype) for p in manifest.pools for name in p.inputs}
        self._binding = self.session.io_binding()
        for layer in manifest.pools:
            for name, out_name in zip(layer.inputs, layer.outputs):
                value = ort.OrtValue.ortvalue_from_numpy(self.pools[name])   # shares the NumPy buffer
                self._binding.bind_ortvalue_input(name, value)
                self._binding.bind_ortvalue_output(out_name, value)
        self._num_pool_outputs = sum(len(p.outputs) for p in manifest.pools)

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One step: feeds hold input_ids and the paged ABI inputs; returns logits [B, S, V]
        (manifest logits "last": [B, 1, V], each row's last new token)."""
        for name, array in feeds.items():
            if name in self.input_names:
                self._binding.bind_cpu_input(name, array)
        self._binding.bind_output("logits")  # unallocated: ORT sizes it for this step's [B, S]
        self.session.run_with_iobinding(self._binding)
        return self._binding.get_outputs()[self._num_pool_outputs].numpy()

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (src -> dst) in every pool (copy-on-write)."""
        if not pairs:
            return
        src, dst = (np.asarray(x) for x in zip(*pairs))
        for pool in self.pools.values():
            pool[dst] = pool[src]


def _load(path: Path, options: SessionOptions) -> ort.InferenceSession:
    """The ONNX Runtime session of `path`; a missing, truncated or damaged artifact is a ModelError."""
    if not path.is_file():
        raise ModelError(f"{path}: the manifest lists this artifact but the file is missing; recompile the directory")
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[options.optimization]
    so.intra_op_num_threads = options.intra_op_threads
    try:
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except _ORT_LOAD_ERRORS as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"{path}: ONNX Runtime cannot load it ({first}); the file or its weights "
                         f"({path.name}.data) are damaged or missing: recompile the directory") from None
