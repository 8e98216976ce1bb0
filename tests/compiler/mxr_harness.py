"""Static (MIGraphX-style) artifacts run by ONNX Runtime: the lowering's numerics without MIGraphX.

`static_paged_session` lowers a paged model to the given buckets exactly as
`pagedc compile --target mxr` does (lower_paged + write_lowered), records them
in a MIGraphX-shaped manifest (artifacts = the static .onnx files), and runs
them through BucketedPagedSession with ONNX Runtime in place of MIGraphX
programs: padding, bucket choice and pool carrying are the real runtime code.
"""

from __future__ import annotations

import math
from pathlib import Path

from pagedc.manifest import Artifact, LayerPools, Manifest
from pagedc.model_file import load_model
from pagedc.mxr.compile import write_lowered
from pagedc.mxr.check import check_for_migraphx
from pagedc.mxr.lowering import Bucket, lower_paged
from pagedc.mxr.standard import lower_standard, standard_note, standard_sites
from pagedc.passes.paged import rewrite_to_paged
from pagedc.runtime.sessions.bucketed import BucketedPagedSession
from tests.paged_harness import session


def lowered_artifact(model, bucket: Bucket, path: Path) -> Artifact:
    """Write a lowered (static) model and describe it as pagedc's mxr compile does."""
    write_lowered(model, path, copy_weights=True)   # ONNX Runtime does not follow symlinks out of the directory
    graph = model.graph
    shapes = {v.name: [int(d) for d in v.shape] for v in graph.inputs if not v.is_initializer()}
    dtypes = {v.name: v.dtype.numpy().name for v in graph.inputs if v.name in shapes}
    return Artifact(path.name, bucket.phase, shapes, dtypes, [v.name for v in graph.outputs])


def ort_runner(path: Path, outputs: list[str]):
    ort_session = session(path)
    return lambda inputs: ort_session.run(outputs, inputs)


def static_paged_session(dense: Path, out_dir: Path, buckets: list[Bucket], *, layout: str, block_size: int,
                         num_blocks: int, max_context: int) -> BucketedPagedSession:
    model, report = rewrite_to_paged(load_model(dense), block_size=block_size, layout=layout)
    max_blocks = math.ceil(max_context / block_size)
    artifacts = [lowered_artifact(lower_paged(model, b, max_blocks=max_blocks, num_blocks=num_blocks), b,
                                  out_dir / f"{b.name}.onnx") for b in buckets]
    manifest = Manifest(
        backend="migraphx", target="ort-test", source_model=dense.name, source_sha256="", num_layers=report.num_layers,
        num_heads=report.num_heads, num_kv_heads=report.num_kv_heads, head_dim=report.head_dim, kv_dtype="float32",
        block_size=block_size, num_blocks=num_blocks, layout=layout,
        pools=tuple(LayerPools(p.layer, tuple(p.inputs), tuple(p.outputs)) for p in report.pools),
        artifacts=tuple(artifacts), max_context=max_context)
    runners = {a.path: ort_runner(out_dir / a.path, a.outputs) for a in artifacts}
    return BucketedPagedSession(manifest, runners)


def standard_manifest(dense: Path, out_dir: Path, buckets: list[Bucket], max_context: int):
    """--emit-standard's lowering of `dense` (checked for MIGraphX), in a manifest, with ORT runners."""
    model = load_model(dense)
    sites = standard_sites(model)
    artifacts, runners = [], {}
    for bucket in buckets:
        static, _ = lower_standard(model, sites, bucket, max_context)
        assert check_for_migraphx(static) == []
        artifact = lowered_artifact(static, bucket, out_dir / f"standard_{bucket.name}.onnx")
        artifacts.append(artifact)
        runners[artifact.path] = ort_runner(out_dir / artifact.path, artifact.outputs)
    manifest = Manifest(
        backend="migraphx", target="ort-test", source_model=dense.name, source_sha256="", num_layers=len(sites),
        num_heads=sites[0].num_heads, num_kv_heads=sites[0].num_kv_heads, head_dim=sites[0].head_dim,
        kv_dtype="float32", block_size=1, num_blocks=2, layout="separate", pools=(), artifacts=(),
        max_context=max_context, standard_artifacts=tuple(artifacts), standard=standard_note(sites, max_context))
    return manifest, runners
