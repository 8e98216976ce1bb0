"""A mixed serving workload: the continuous-batching engine vs one request at a time on the dense model.

    python examples/bench_serving.py [--requests 64 --layers 8 --hidden 512]

Workload (seeded): prompt lengths 16..512 and output lengths 16..256 drawn
uniformly, every other request starting with the same 256-token system
prompt; requests all arrive at once; greedy. Three runs of the same model on
ONNX Runtime CPU, side by side in one process:
- dense, sequential: each request alone, dense cache fed back (no batching);
- engine, prefix caching off;
- engine, prefix caching on.
Printed: wall time, output tokens/s, prefill tokens computed, mean time to
first token, and KV waste: for the engine, the share of allocated block slots
not holding a token, averaged over steps; for the dense loop, the share of a
per-request cache reserved at max length (prompt + max_new_tokens, what a
static-batching server allocates) that is never filled, averaged over steps.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from pagedc.build import CompileOptions, compile_model
from pagedc.verify.dense_runner import DenseRunner
from pagedc.manifest import Manifest
from pagedc.runtime import Engine, EngineOptions, SessionOptions
from pagedc.testing import DecoderConfig, build_decoder


def workload(num_requests: int, vocab: int, seed: int = 0) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    system = [int(t) for t in rng.integers(1, vocab, 256)]
    requests = []
    for i in range(num_requests):
        length = int(rng.integers(16, 513))
        prompt = [int(t) for t in rng.integers(1, vocab, length)]
        if i % 2 == 0:
            prompt = (system + prompt)[:max(length, 257)]
        requests.append((prompt, int(rng.integers(16, 257))))
    return requests


def run_dense(path: Path, requests) -> dict:
    runner = DenseRunner(path, optimize=True)
    start, ttfts, waste = time.perf_counter(), [], []
    for prompt, new_tokens in requests:
        t0 = time.perf_counter()
        logits, past = runner.step(prompt, 0)
        ttfts.append(time.perf_counter() - t0)
        token = int(np.argmax(logits[-1]))
        reserved = len(prompt) + new_tokens
        for i in range(new_tokens - 1):
            waste.append(1 - (len(prompt) + i + 1) / reserved)
            logits, past = runner.step([token], len(prompt) + i, past)
            token = int(np.argmax(logits[-1]))
    wall = time.perf_counter() - start
    return {"wall_s": wall, "tokens": sum(n for _, n in requests), "prefill_tokens": sum(len(p) for p, _ in requests),
            "mean_ttft_s": float(np.mean(ttfts)), "kv_waste": float(np.mean(waste))}


def run_engine(path: Path, requests, prefix_caching: bool) -> dict:
    options = EngineOptions(max_num_seqs=32, max_num_batched_tokens=1024, enable_prefix_caching=prefix_caching)
    engine = Engine(Manifest.read(path), path, SessionOptions(), options)
    start, waste = time.perf_counter(), []
    for prompt, new_tokens in requests:
        engine.add_request(prompt, new_tokens)
    while engine.has_unfinished():
        engine.step()
        stats = engine.manager.stats()
        if stats["tokens_stored"]:
            waste.append(1 - 1 / stats["fragmentation"])
    wall = time.perf_counter() - start
    metrics = engine.metrics()
    return {"wall_s": wall, "tokens": sum(len(r.output) for r in engine.requests.values()),
            "prefill_tokens": metrics["prefill_tokens_computed"], "mean_ttft_s": metrics["mean_ttft_s"],
            "kv_waste": float(np.mean(waste)), "preemptions": metrics["preemptions"],
            "prefix_hit_rate": metrics["prefix_hit_rate"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--kv-memory-mib", type=int, default=64)
    args = parser.parse_args()
    config = DecoderConfig.llama_like(args.layers, args.hidden, max_position_embeddings=1024)
    work = Path(tempfile.mkdtemp(prefix="pagedc-bench-"))
    onnx.save(build_decoder(config, "decomposed"), str(work / "dense.onnx"))
    compile_model(work / "dense.onnx", work / "paged", CompileOptions(block_size=16, kv_memory=args.kv_memory_mib * 2**20),
                  progress=lambda _: None)
    requests = workload(args.requests, config.vocab_size)
    print(f"model: {config.num_layers} layers, hidden {config.hidden_size}; {len(requests)} requests, prompts "
          f"{min(len(p) for p, _ in requests)}-{max(len(p) for p, _ in requests)}, outputs "
          f"{min(n for _, n in requests)}-{max(n for _, n in requests)} tokens; KV pools {args.kv_memory_mib} MiB")
    rows = {"dense, sequential": run_dense(work / "dense.onnx", requests),
            "engine, prefix cache off": run_engine(work / "paged", requests, False),
            "engine, prefix cache on": run_engine(work / "paged", requests, True)}
    base = rows["dense, sequential"]["tokens"] / rows["dense, sequential"]["wall_s"]
    print(f"{'run':<26} {'wall s':>7} {'out tok/s':>10} {'vs dense':>9} {'prefill tok':>12} {'mean TTFT s':>12} {'KV waste':>9}")
    for name, r in rows.items():
        rate = r["tokens"] / r["wall_s"]
        print(f"{name:<26} {r['wall_s']:>7.1f} {rate:>10.1f} {rate / base:>8.2f}x {r['prefill_tokens']:>12} "
              f"{r['mean_ttft_s']:>12.3f} {r['kv_waste']:>9.1%}")
    on = rows["engine, prefix cache on"]
    print(f"prefix cache: hit rate {on['prefix_hit_rate']:.1%}; preemptions (on/off): {on['preemptions']}/"
          f"{rows['engine, prefix cache off']['preemptions']}")


if __name__ == "__main__":
    main()
