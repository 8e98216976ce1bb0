"""A paged session over static-shape artifacts: pick the bucket, pad, run, carry the pools.

Same interface as OrtPagedSession: `run(feeds) -> logits [B, S, V]` ([B, 1, V] with
manifest logits "last"), `pools`, `copy_blocks`. One step:

    step = shape of feeds (B, S, MB)   ->  smallest artifact that fits (runtime.buckets)
    pad feeds to the artifact          ->  step pools: the step's blocks of every pool (runtime.mxr_pools)
    run(inputs + step pools)           ->  outputs in artifact.outputs order
    new K/V rows -> the host pools     ->  logits sliced back to [B, S, V] | [B, 1, V] (copied, as ORT's are)

NOTE: MIGraphX's ScatterND returns a new buffer instead of updating the pool
input (DESIGN.md §7); a program over the whole pool would copy all of it every
step. Artifacts compiled for step pools (manifest backend_options "pools":
"step_blocks") see only the step's blocks, so a step costs what its bucket's
context costs, whatever the pool size. Artifacts compiled for the whole pool
(older compiles) get it and return the next step's pools, nothing copied back.
The run functions come from the backend: MIGraphX programs
(pagedc.runtime.sessions.mxr), or anything with the same contract, e.g. ONNX
Runtime over the lowered static ONNX in tests.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pagedc.errors import ManifestError
from pagedc.manifest import Artifact, Manifest
from pagedc.runtime.sessions.buckets import pad_feeds, select_artifact, step_shape, unpad_logits
from pagedc.runtime.sessions.memory import check_pools_fit
from pagedc.runtime.sessions.mxr_pools import STEP_POOLS, StepBlocks
from pagedc.runtime.sessions.mxr_program import RunFn

LOGITS = "logits"


class BucketedPagedSession:
    """Runs steps of a paged model compiled to one static artifact per shape bucket; owns the pools."""

    def __init__(self, manifest: Manifest, runners: Mapping[str, RunFn]):
        """`runners` maps each artifact's path to a function returning its outputs in `artifact.outputs` order."""
        self.manifest = manifest
        self.runners = dict(runners)
        self._pool_of_output = {out: name for layer in manifest.pools for name, out in zip(layer.inputs, layer.outputs)}
        for artifact in manifest.artifacts:
            _check_artifact(artifact, self.runners, self._pool_of_output)
        first = manifest.artifacts[0]
        check_pools_fit(manifest.num_blocks * manifest.bytes_per_block(), manifest.bytes_per_block(), first.path)
        self.pools = {name: np.zeros(manifest.pool_shape(), first.dtypes.get(name, manifest.kv_dtype))
                      for layer in manifest.pools for name in layer.inputs}     # [NB, Hkv, bs, Dh] each
        self.is_step_pools = manifest.backend_options.get("pools") == STEP_POOLS
        self.last_artifact: Artifact | None = None

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One step: input_ids and the paged ABI inputs, any B, S, MB a bucket fits; returns logits [B, S, V]
        (manifest logits "last": [B, 1, V])."""
        step = step_shape(feeds)
        artifact = select_artifact(self.manifest.artifacts, step)
        inputs = pad_feeds(feeds, artifact)
        blocks = None
        if self.is_step_pools:
            blocks = StepBlocks.of(inputs["block_table"], inputs["slot_mapping"], self.manifest.block_size)
            inputs.update(block_table=blocks.local_table, slot_mapping=blocks.local_slots)
            inputs.update({name: blocks.gather(pool) for name, pool in self.pools.items()})
        else:
            inputs.update(self.pools)
        missing = sorted(artifact.inputs.keys() - inputs.keys())
        if missing:
            raise ManifestError(f"artifact {artifact.path} needs inputs {missing} that the step's feeds do not have")
        outputs = dict(zip(artifact.outputs, self.runners[artifact.path](inputs)))
        for out, name in self._pool_of_output.items():
            if blocks is not None:
                blocks.write_back(self.pools[name], outputs[out])   # only the step's new rows
            else:
                self.pools[name] = outputs[out]          # the next step reads the pools this one returned
        self.last_artifact = artifact
        # a copy: result buffers may be reused by the backend
        return np.array(unpad_logits(outputs[LOGITS], step, self.manifest.logits))

    def copy_blocks(self, pairs: list[tuple[int, int]]) -> None:
        """Copy whole blocks (src -> dst) in every pool (copy-on-write)."""
        if not pairs:
            return
        src, dst = (np.asarray(x) for x in zip(*pairs))
        for name, pool in self.pools.items():
            if not pool.flags.writeable:
                self.pools[name] = pool = pool.copy()
            pool[dst] = pool[src]


def _check_artifact(artifact: Artifact, runners: Mapping[str, RunFn], pool_of_output: dict[str, str]) -> None:
    if artifact.path not in runners:
        raise ManifestError(f"no program loaded for artifact {artifact.path}")
    missing = [name for name in (LOGITS, *pool_of_output) if name not in artifact.outputs]
    if missing:
        raise ManifestError(f"artifact {artifact.path}: the manifest lists outputs {artifact.outputs}, without {missing}; "
                         "recompile with this pagedc (static artifacts record their outputs)")
