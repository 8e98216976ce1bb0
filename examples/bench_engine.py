"""Decode throughput of the paged engine vs a dense-cache loop over the original model.

    python examples/bench_engine.py [--layers 8 --hidden 512 --prompt-len 64 --new-tokens 64]

Same model, same machine, same run, batches of 1 and 8 equal-length prompts,
greedy. The dense loop is what one writes without pagedc: feed past K/V,
take present back, argmax. Both sides use ONNX Runtime CPU with default
optimizations. Decode throughput counts only decode steps (prefill excluded),
median over alternating rounds;
the engine's overhead is its step time outside session.run (building block
tables and slots, binding, sampling), as a share of step time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from pagedc.build import CompileOptions, compile_model
from pagedc.runtime import Engine, StepTimes
from pagedc.testing import DecoderConfig, build_decoder


def dense_loop(session: ort.InferenceSession, config: DecoderConfig, prompts: np.ndarray, new_tokens: int):
    """Greedy dense-cache generation; returns (tokens [B, new_tokens], decode seconds)."""
    batch, prompt_len = prompts.shape
    past = {f"past_key_values.{i}.{kind}": np.zeros((batch, config.num_kv_heads, 0, config.head_dim), np.float32)
            for i in range(config.num_layers) for kind in ("key", "value")}
    names = ["logits"] + [f"present.{i}.{kind}" for i in range(config.num_layers) for kind in ("key", "value")]
    ids, out, decode_s = prompts, [], 0.0
    for step in range(new_tokens):
        start = time.perf_counter()
        length = prompt_len + step
        feed = {"input_ids": ids, "attention_mask": np.ones((batch, length), np.int64),
                "position_ids": np.broadcast_to(np.arange(length - ids.shape[1], length), ids.shape).astype(np.int64),
                **past}
        logits, *presents = session.run(names, feed)
        past = dict(zip(past, presents))
        ids = np.argmax(logits[:, -1], axis=-1).astype(np.int64)[:, None]
        out.append(ids[:, 0])
        if step > 0:
            decode_s += time.perf_counter() - start
    return np.stack(out, axis=1), decode_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7, help="alternating dense/paged rounds; medians are printed")
    args = parser.parse_args()
    config = DecoderConfig.llama_like(args.layers, args.hidden, max_position_embeddings=2048)
    work = Path(tempfile.mkdtemp(prefix="pagedc-bench-"))
    dense_path = work / "dense.onnx"
    onnx.save(build_decoder(config, "decomposed"), str(dense_path))
    compile_model(dense_path, work / "paged", CompileOptions(block_size=16, num_blocks=512), progress=lambda _: None)
    dense = ort.InferenceSession(str(dense_path), providers=["CPUExecutionProvider"])
    print(f"model: {config.num_layers} layers, hidden {config.hidden_size}; prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens, greedy; ORT {ort.__version__} CPU")
    print(f"{'batch':>5} {'dense tok/s':>12} {'paged tok/s':>12} {'paged/dense':>12} {'engine overhead':>16} {'same tokens':>12}")
    rng = np.random.default_rng(0)
    for batch in (1, 8):
        prompts = rng.integers(1, config.vocab_size, (batch, args.prompt_len)).astype(np.int64)
        dense_loop(dense, config, prompts, 4)                                  # warm-up
        engine = Engine.from_manifest(work / "paged")
        engine.generate(prompts.tolist(), max_new_tokens=4)                    # warm-up
        rates, overheads, same = ([], []), [], True
        for _ in range(args.rounds):  # alternate dense and paged so load changes hit both alike
            dense_tokens, dense_s = dense_loop(dense, config, prompts, args.new_tokens)
            engine.times = StepTimes()
            paged_tokens = engine.generate(prompts.tolist(), max_new_tokens=args.new_tokens)
            rates[0].append(batch * (args.new_tokens - 1) / dense_s)
            rates[1].append(engine.times.decode.num_tokens / engine.times.decode.step_s)
            overheads.append(engine.times.decode.overhead_share)
            same &= np.array_equal(np.asarray(paged_tokens), dense_tokens)
        dense_rate, paged_rate = (statistics.median(r) for r in rates)
        print(f"{batch:>5} {dense_rate:>12.1f} {paged_rate:>12.1f} {paged_rate / dense_rate:>12.3f} "
              f"{statistics.median(overheads):>15.1%} {str(same):>12}")


if __name__ == "__main__":
    main()
