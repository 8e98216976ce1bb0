"""The weights every bucket's program takes as parameters: one file, mapped once, shared (pure NumPy).

    weights = ProgramWeights.of(manifest, directory)       # None for artifacts that embed their weights
    weights.arrays["model.embed_tokens.weight"]           # a read-only view of one np.memmap of weights.bin

`pagedc compile --target mxr` writes weights.bin and records each tensor as
backend_options["weights"]["tensors"][name] = [offset, dims, dtype] (see
pagedc.mxr.weights). Every program gets the same views, so the weights are
on disk once and in memory once (the page cache's), whatever the buckets.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pagedc.errors import ManifestError
from pagedc.manifest import Manifest


class WeightsError(ManifestError):
    """weights.bin is missing or does not hold what the manifest lists; the message says what to do."""


class ProgramWeights:
    """The weight parameters of a compile output's programs, as views of one memory-mapped file."""

    def __init__(self, path: Path, tensors: dict[str, list]):
        if not path.is_file():
            raise WeightsError(f"{path}: the manifest lists this weights file but it is missing; recompile")
        size = path.stat().st_size
        data = np.memmap(path, np.uint8, mode="r") if size else np.zeros(0, np.uint8)
        self.path = path
        self.arrays: dict[str, np.ndarray] = {}
        for name, (offset, dims, dtype) in tensors.items():
            nbytes = int(np.prod(dims, dtype=np.int64)) * np.dtype(dtype).itemsize
            if offset + nbytes > size:
                raise WeightsError(f"{path}: weight '{name}' [{offset}, {offset + nbytes}) lies beyond the file's "
                                   f"{size} bytes; the file and manifest.json come from different compiles: recompile")
            self.arrays[name] = data[offset: offset + nbytes].view(dtype).reshape(dims)

    @classmethod
    def of(cls, manifest: Manifest, directory: str | Path) -> "ProgramWeights | None":
        note = manifest.backend_options.get("weights")
        return cls(Path(directory) / note["file"], note["tensors"]) if note else None

    def specs(self) -> dict[str, tuple[list[int], str]]:
        """{name: (dims, numpy dtype name)}, as pagedc.runtime.sessions.mxr_program.parameter_specs gives them."""
        return {name: (list(a.shape), a.dtype.name) for name, a in self.arrays.items()}
