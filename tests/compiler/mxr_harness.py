"""Static (MIGraphX-style) artifacts run by ONNX Runtime: the lowering's numerics without MIGraphX.

`static_paged_session` lowers a paged model to the given buckets exactly as
`pagedc compile --target mxr` does (lower_paged for step pools, weights made
graph inputs and written once to weights.bin, write_lowered), records them in
a MIGraphX-shaped manifest (artifacts = the static .onnx files), and runs them
through BucketedPagedSession with ONNX Runtime in place of MIGraphX programs:
padding, bucket choice, step pools and the weights file are the real runtime code.
"""

from __future__ import annotations

import math
from pathlib import Path

from pagedc.manifest import Artifact, LayerPools, Manifest
from pagedc.model_file import load_model
from pagedc.mxr.check import check_for_migraphx
from pagedc.mxr.compile import write_lowered
from pagedc.mxr.lowering import Bucket, lower_paged
from pagedc.mxr.standard import lower_standard, standard_note, standard_sites
from pagedc.mxr.weights import WEIGHTS_FILE, weight_tensors, weights_to_inputs, write_weights
from pagedc.passes.paged import rewrite_to_paged
from pagedc.runtime.sessions.bucketed import BucketedPagedSession
from pagedc.runtime.sessions.mxr_pools import STEP_POOLS, step_pool_blocks
from pagedc.runtime.sessions.mxr_weights import ProgramWeights
from tests.paged_harness import session


def lowered_artifact(model, bucket: Bucket, path: Path, weight_names=()) -> Artifact:
    """Write a lowered (static) model and describe it as pagedc's mxr compile does (weights are not inputs)."""
    write_lowered(model, path, copy_weights=True)   # ONNX Runtime does not follow symlinks out of the directory
    graph = model.graph
    shapes = {v.name: [int(d) for d in v.shape] for v in graph.inputs
              if not v.is_initializer() and v.name not in weight_names}
    dtypes = {v.name: v.dtype.numpy().name for v in graph.inputs if v.name in shapes}
    return Artifact(path.name, bucket.phase, shapes, dtypes, [v.name for v in graph.outputs])


def ort_runner(path: Path, outputs: list[str], weights: ProgramWeights | None = None):
    ort_session = session(path)
    names = {i.name for i in ort_session.get_inputs()}
    fixed = {n: a for n, a in (weights.arrays.items() if weights else ()) if n in names}
    return lambda inputs: ort_session.run(outputs, {**fixed, **inputs})


def _lower_all(models: dict[str, tuple], weights, out_dir: Path) -> tuple[list[Artifact], dict]:
    """{file name: (static model, bucket)} -> artifacts, with weights made inputs and written once."""
    artifacts, used = [], {}
    for name, (static, bucket) in models.items():
        moved = weights_to_inputs(static, weights)
        assert check_for_migraphx(static) == []
        artifacts.append(lowered_artifact(static, bucket, out_dir / name, moved))
        used.update(dict.fromkeys(moved))
    note = write_weights(weights, list(used), {}, out_dir / WEIGHTS_FILE)
    return artifacts, note


def static_paged_session(dense: Path, out_dir: Path, buckets: list[Bucket], *, layout: str, block_size: int,
                         num_blocks: int, max_context: int, step_pools: bool = True,
                         last_logits: bool = False) -> BucketedPagedSession:
    """step_pools=False: programs over the whole pool, as pagedc compiled them before step pools;
    last_logits: the lm_head on each row's last new token (--logits last)."""
    model, report = rewrite_to_paged(load_model(dense), block_size=block_size, layout=layout, last_logits=last_logits)
    max_blocks = math.ceil(max_context / block_size)
    is_combined = layout == "combined"
    lowered = {f"{b.name}.onnx": (lower_paged(model, b, max_blocks=max_blocks, num_blocks=step_pool_blocks(
        b.batch, max_blocks, is_combined) if step_pools else num_blocks), b) for b in buckets}
    artifacts, note = _lower_all(lowered, weight_tensors(model), out_dir)
    manifest = Manifest(
        backend="migraphx", target="ort-test", source_model=dense.name, source_sha256="", num_layers=report.num_layers,
        num_heads=report.num_heads, num_kv_heads=report.num_kv_heads, head_dim=report.head_dim, kv_dtype="float32",
        block_size=block_size, num_blocks=num_blocks, layout=layout,
        pools=tuple(LayerPools(p.layer, tuple(p.inputs), tuple(p.outputs)) for p in report.pools),
        artifacts=tuple(artifacts), max_context=max_context, logits=report.logits,
        backend_options={"weights": note, **({"pools": STEP_POOLS} if step_pools else {})})
    weights = ProgramWeights.of(manifest, out_dir)
    runners = {a.path: ort_runner(out_dir / a.path, a.outputs, weights) for a in artifacts}
    return BucketedPagedSession(manifest, runners)


def standard_manifest(dense: Path, out_dir: Path, buckets: list[Bucket], max_context: int):
    """--emit-standard's lowering of `dense` (checked for MIGraphX), in a manifest, with ORT runners."""
    model = load_model(dense)
    sites = standard_sites(model)
    lowered = {f"standard_{b.name}.onnx": (lower_standard(model, sites, b, max_context)[0], b) for b in buckets}
    artifacts, note = _lower_all(lowered, weight_tensors(model), out_dir)
    manifest = Manifest(
        backend="migraphx", target="ort-test", source_model=dense.name, source_sha256="", num_layers=len(sites),
        num_heads=sites[0].num_heads, num_kv_heads=sites[0].num_kv_heads, head_dim=sites[0].head_dim,
        kv_dtype="float32", block_size=1, num_blocks=2, layout="separate", pools=(), artifacts=(),
        max_context=max_context, standard_artifacts=tuple(artifacts), standard=standard_note(sites, max_context),
        backend_options={"weights": note})
    weights = ProgramWeights.of(manifest, out_dir)
    runners = {a.path: ort_runner(out_dir / a.path, a.outputs, weights) for a in artifacts}
    return manifest, runners
