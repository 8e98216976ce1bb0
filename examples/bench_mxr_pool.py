"""Decode-step time of a static (MIGraphX) bucket vs pool size: step pools vs the whole pool.

    PYTHONPATH=/path/to/migraphx python examples/bench_mxr_pool.py [--backend migraphx --device ref]
    python examples/bench_mxr_pool.py --backend onnxruntime       # the same graphs under ONNX Runtime

Lowers a reference decoder's paged model (4 layers, hidden 256, GQA 4/2 heads by default) to one
decode bucket [B=1, S=1] with --max-context 512 (MB = 32 blocks of 16), weights as parameters from
weights.bin, in two ways, and times one decode step of each through BucketedPagedSession (pagedc's
runtime) at a pool of 64 and of 4,096 blocks, in alternating rounds (median of --repeats):
- whole pool: the program takes and returns every layer's pool [NB, Hkv, bs, Dh]: MIGraphX's
  ScatterND returns a new buffer, so a step copies every pool (how pagedc compiled before step pools);
- step pools: the program takes the step's blocks [1 + MB, Hkv, bs, Dh] (pagedc.runtime.sessions.mxr_pools);
  the host gathers them and writes back the new token's rows.
A ratio 4096/64 near 1.0 means the step's cost does not grow with the pool.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx

from pagedc.bench.timer import measure
from pagedc.manifest import Artifact, LayerPools, Manifest
from pagedc.model_file import load_model
from pagedc.mxr.compile import write_lowered
from pagedc.mxr.lowering import Bucket, lower_paged
from pagedc.mxr.weights import WEIGHTS_FILE, weight_tensors, weights_to_inputs, write_weights
from pagedc.passes.paged import rewrite_to_paged
from pagedc.runtime import PagedKVCacheManager
from pagedc.runtime.sessions.bucketed import BucketedPagedSession
from pagedc.runtime.sessions.mxr_pools import STEP_POOLS, step_pool_blocks
from pagedc.runtime.sessions.mxr_program import program_runner
from pagedc.runtime.sessions.mxr_weights import ProgramWeights
from pagedc.testing import DecoderConfig, build_decoder

BLOCK_SIZE, BUCKET = 16, Bucket("decode", 1, 1)


def runner(backend: str, device: str, path: Path, outputs: list[str], weights: ProgramWeights):
    """A run function over the lowered .onnx: a MIGraphX program compiled for `device`, or ONNX Runtime."""
    if backend == "migraphx":
        import migraphx
        program = migraphx.parse_onnx(str(path))
        program.compile(migraphx.get_target(device))
        return program_runner(migraphx, program, weights)
    import onnxruntime as ort
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    fixed = {n: a for n, a in weights.arrays.items() if n in names}
    return lambda inputs: session.run(outputs, {**fixed, **inputs})


def session_for(args, dense: Path, work: Path, num_blocks: int, is_step_pools: bool) -> BucketedPagedSession:
    model, report = rewrite_to_paged(load_model(dense), block_size=BLOCK_SIZE)
    max_blocks = math.ceil(args.max_context / BLOCK_SIZE)
    blocks = step_pool_blocks(1, max_blocks, False) if is_step_pools else num_blocks
    static = lower_paged(model, BUCKET, max_blocks=max_blocks, num_blocks=blocks)
    weights = weight_tensors(model)
    names = weights_to_inputs(static, weights)
    out = work / f"{'step' if is_step_pools else 'whole'}-{num_blocks}"
    out.mkdir()
    note = write_weights(weights, names, {}, out / WEIGHTS_FILE)
    shapes = {v.name: [int(d) for d in v.shape] for v in static.graph.inputs if v.name not in names}
    write_lowered(static, out / "decode_b1.onnx", copy_weights=True)
    manifest = Manifest(
        backend="migraphx", target=args.device, source_model=dense.name, source_sha256="",
        num_layers=report.num_layers, num_heads=report.num_heads, num_kv_heads=report.num_kv_heads,
        head_dim=report.head_dim, kv_dtype="float32", block_size=BLOCK_SIZE, num_blocks=num_blocks,
        layout="separate", pools=tuple(LayerPools(p.layer, tuple(p.inputs), tuple(p.outputs)) for p in report.pools),
        artifacts=(_artifact(static, shapes),), max_context=args.max_context,
        backend_options={"weights": note, **({"pools": STEP_POOLS} if is_step_pools else {})})
    outputs = [v.name for v in static.graph.outputs]
    run = runner(args.backend, args.device, out / "decode_b1.onnx", outputs, ProgramWeights.of(manifest, out))
    return BucketedPagedSession(manifest, {"decode_b1.onnx": run})


def _artifact(static, shapes) -> Artifact:
    dtypes = {v.name: v.dtype.numpy().name for v in static.graph.inputs if v.name in shapes}
    return Artifact("decode_b1.onnx", "decode", shapes, dtypes, [v.name for v in static.graph.outputs])


def decode_step(session: BucketedPagedSession, past_len: int):
    """A closure running one decode step of a sequence with `past_len` cached tokens."""
    manager = PagedKVCacheManager.from_manifest(session.manifest)
    manager.add(0)
    manager.append(0, past_len + 1)
    feeds = manager.step_inputs([0])
    feeds["input_ids"] = np.array([[7]], np.int64)
    feeds["position_ids"] = feeds["position_ids"][:, -1:]
    feeds["slot_mapping"] = feeds["slot_mapping"][..., -1:].copy()
    return lambda _: session.run(feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("migraphx", "onnxruntime"), default="migraphx")
    parser.add_argument("--device", default="ref")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--max-context", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    config = DecoderConfig.llama_like(args.layers, args.hidden, max_position_embeddings=4096)
    work = Path(tempfile.mkdtemp(prefix="pagedc-bench-pool-"))
    dense = work / "dense.onnx"
    onnx.save(build_decoder(config, "decomposed"), str(dense))
    past_len = args.max_context // 2 - 1
    steps = {f"{kind} {nb}": decode_step(session_for(args, dense, work, nb, kind == "step"), past_len)
             for kind in ("whole", "step") for nb in (64, 4096)}
    stats = measure(steps, repeats=args.repeats, warmup=2)
    pool_mib = 4096 * config.num_kv_heads * BLOCK_SIZE * config.head_dim * 4 * 2 * config.num_layers / 2**20
    print(f"model: {args.layers} layers, hidden {args.hidden}, heads {config.num_heads}/{config.num_kv_heads}, "
          f"head_dim {config.head_dim}; decode [B=1], context {past_len + 1} of max {args.max_context}; "
          f"{args.backend} {args.device if args.backend == 'migraphx' else 'CPU'}; median of {args.repeats}")
    print(f"{'program takes':14s} {'64 blocks ms':>13s} {'4096 blocks ms':>15s} {'4096/64':>8s}")
    for kind in ("whole", "step"):
        small, large = stats[f"{kind} 64"].median_ms, stats[f"{kind} 4096"].median_ms
        print(f"{kind + ' pool' + ('s' if kind == 'step' else ''):14s} {small:13.2f} {large:15.2f} {large / small:8.2f}")
    print(f"(4096 blocks = {pool_mib:.0f} MiB of pools)")


if __name__ == "__main__":
    main()
