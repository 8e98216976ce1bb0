"""Decode-step time of the paged model vs the dense model it came from, and vs pool size.

    python examples/bench_decode_step.py [--layers 8 --hidden 512 --repeats 30]

Builds a reference decoder (8 layers, hidden 512, GQA 8/2 heads by default),
compiles it with `pagedc compile`'s driver, then times single-token decode
steps side by side in one run (ONNX Runtime CPU, default optimizations, median
of --repeats alternating rounds after warm-up, pagedc.bench.timer.measure):
- dense: past of P tokens fed in, present returned (what a dense-cache loop does);
- paged: the same step on a pool through IOBinding (pools updated in place),
  block table covering P + 1 tokens;
at P = 128, 512, 2048, and the paged step at P = 512 with a pool of 64 vs
4096 blocks (a pool copied per step would show up as a ratio well above 1).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pagedc.bench.timer import measure
from pagedc.build import CompileOptions, compile_model
from pagedc.manifest import Manifest
from pagedc.runtime import OrtPagedSession, PagedKVCacheManager, SessionOptions, step_feeds
from pagedc.testing import DecoderConfig, build_decoder

BLOCK_SIZE = 16


def paired_median_ms(run_a, run_b, repeats: int) -> tuple[float, float]:
    """Median ms of each closure, in alternating rounds a, b, a, b ... (pagedc bench's timing loop)."""
    stats = measure({"a": lambda _: run_a(), "b": lambda _: run_b()}, repeats=repeats, warmup=3)
    return stats["a"].median_ms, stats["b"].median_ms


def dense_step(session: ort.InferenceSession, config: DecoderConfig, past_len: int):
    """A closure running one dense decode step with a past of `past_len` tokens."""
    rng = np.random.default_rng(0)
    past_shape = (1, config.num_kv_heads, past_len, config.head_dim)
    feed = {"input_ids": np.array([[7]], np.int64), "position_ids": np.array([[past_len]], np.int64),
            "attention_mask": np.ones((1, past_len + 1), np.int64)}
    for i in range(config.num_layers):
        for kind in ("key", "value"):
            feed[f"past_key_values.{i}.{kind}"] = rng.standard_normal(past_shape).astype(np.float32)
    return lambda: session.run(["logits"], feed)


def paged_step(out_dir: Path, manifest: Manifest, past_len: int):
    """A closure running one paged decode step for a sequence of `past_len` cached tokens."""
    session = OrtPagedSession(manifest, out_dir, SessionOptions())
    manager = PagedKVCacheManager.from_manifest(manifest)
    manager.add(0)
    manager.append(0, past_len)                                  # the cached context (its values do not matter)
    feeds = step_feeds([manager.append(0, 1, [7])], manifest.block_size, layout=manifest.layout)   # one decode step
    return lambda: session.run(feeds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()
    config = DecoderConfig.llama_like(args.layers, args.hidden, max_position_embeddings=4096)
    work = Path(tempfile.mkdtemp(prefix="pagedc-bench-"))
    dense_path = work / "dense.onnx"
    onnx.save(build_decoder(config, "decomposed"), str(dense_path))
    dense = ort.InferenceSession(str(dense_path), providers=["CPUExecutionProvider"])
    outs = {}
    for num_blocks in (64, 200, 4096):
        outs[num_blocks] = work / f"paged-{num_blocks}"
        compile_model(dense_path, outs[num_blocks], CompileOptions(block_size=BLOCK_SIZE, num_blocks=num_blocks),
                      progress=lambda _: None)
    print(f"model: {config.num_layers} layers, hidden {config.hidden_size}, heads {config.num_heads}/"
          f"{config.num_kv_heads}, head_dim {config.head_dim}; block_size {BLOCK_SIZE}; ORT {ort.__version__}, "
          f"CPU, median of {args.repeats}")
    print(f"{'context':>8} {'dense ms':>9} {'paged ms':>9} {'paged/dense':>12}")
    for past_len in (128, 512, 2048):
        manifest = Manifest.read(outs[200])
        d, p = paired_median_ms(dense_step(dense, config, past_len), paged_step(outs[200], manifest, past_len),
                                args.repeats)
        print(f"{past_len:>8} {d:>9.3f} {p:>9.3f} {p / d:>12.3f}")
    small, large = paired_median_ms(paged_step(outs[64], Manifest.read(outs[64]), 512),
                                    paged_step(outs[4096], Manifest.read(outs[4096]), 512), args.repeats)
    pool_mib = Manifest.read(outs[4096]).bytes_per_block() * 4096 / 2**20
    print(f"pool size at context 512: 64 blocks {small:.3f} ms, 4096 blocks ({pool_mib:.0f} MiB of pools) "
          f"{large:.3f} ms, ratio {large / small:.3f}")


if __name__ == "__main__":
    main()
