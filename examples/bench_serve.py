"""Benchmark a running `pagedc serve`: streaming clients, open loop (Poisson arrivals) and closed loop.

    python examples/bench_serve.py --base-url http://127.0.0.1:8000 --num-prompts 64 \\
        --request-rate 2 4 --concurrency 1 8 16
    python examples/bench_serve.py --demo-model /tmp/bench.paged     # build a small model, serve it, benchmark

As vLLM's benchmark_serving does: each request streams a /v1/completions
call with a random token-id prompt of --input-len tokens and --output-len
new tokens (ignore_eos, so every request produces exactly that many), greedy.
- open loop, per --request-rate R: requests arrive as a Poisson process of rate
  R/s (exponential gaps, seeded) whatever the server's pace;
- closed loop, per --concurrency C: C clients, each sending its next request
  when the last one finished.
Printed per run: completed requests, duration, request throughput, output
tokens/s, and TTFT, inter-token latency (ITL: gaps between streamed chunks)
and time per output token (TPOT) as mean / p50 / p90 / p99 in ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np


@dataclass
class Result:
    ok: bool = False
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


async def one_request(client: httpx.AsyncClient, url: str, body: dict) -> Result:
    result, start = Result(), time.perf_counter()
    last = start
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                return Result(error=f"HTTP {response.status_code}: {(await response.aread())[:200]!r}")
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk, now = json.loads(line[6:]), time.perf_counter()
                if chunk.get("usage"):
                    result.output_tokens = chunk["usage"]["completion_tokens"]
                if not chunk.get("choices") or not chunk["choices"][0]["text"]:
                    continue
                if result.ttft == 0.0:
                    result.ttft = now - start
                else:
                    result.itl.append(now - last)
                last = now
    except httpx.HTTPError as err:
        return Result(error=f"{type(err).__name__}: {err}")
    result.latency, result.ok = time.perf_counter() - start, True
    return result


def request_bodies(args, model: str) -> list[dict]:
    rng = np.random.default_rng(args.seed)
    return [{"model": model, "prompt": [int(t) for t in rng.integers(10, 250, args.input_len)],
             "max_tokens": args.output_len, "temperature": 0, "ignore_eos": True, "stream": True,
             "stream_options": {"include_usage": True}} for _ in range(args.num_prompts)]


async def open_loop(client, url, bodies, rate: float, seed: int) -> list[Result]:
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, len(bodies))
    tasks = []
    for body, gap in zip(bodies, gaps):
        tasks.append(asyncio.create_task(one_request(client, url, body)))
        await asyncio.sleep(gap)
    return list(await asyncio.gather(*tasks))


async def closed_loop(client, url, bodies, concurrency: int) -> list[Result]:
    queue = list(reversed(bodies))
    results: list[Result] = []

    async def worker():
        while queue:
            results.append(await one_request(client, url, queue.pop()))
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def summary(label: str, results: list[Result], duration: float) -> dict:
    done = [r for r in results if r.ok]
    ms = lambda xs, q: float(np.percentile(xs, q)) * 1e3 if len(xs) else float("nan")   # noqa: E731
    ttft, itl = [r.ttft for r in done], [x for r in done for x in r.itl]
    tpot = [(r.latency - r.ttft) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    tokens = sum(r.output_tokens for r in done)
    return {"run": label, "done": f"{len(done)}/{len(results)}", "duration_s": duration,
            "req_per_s": len(done) / duration, "out_tok_per_s": tokens / duration,
            **{f"ttft_{q}": ms(ttft, q) for q in (50, 90, 99)}, "ttft_mean": float(np.mean(ttft)) * 1e3,
            **{f"itl_{q}": ms(itl, q) for q in (50, 90, 99)}, "tpot_mean": float(np.mean(tpot)) * 1e3 if tpot else 0}


def print_table(rows: list[dict]) -> None:
    columns = list(rows[0])
    print("  ".join(f"{c:>12}" for c in columns))
    for row in rows:
        print("  ".join(f"{v:>12.2f}" if isinstance(v, float) else f"{v:>12}" for v in row.values()))
    print("(latencies in ms; ttft/itl columns are percentiles p50/p90/p99)")


async def run_all(args) -> list[dict]:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=600, limits=limits) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        url, rows = "/v1/completions", []
        await closed_loop(client, url, request_bodies(args, model)[:2], 2)          # warm up
        runs = [(f"rate {r}/s", lambda r=r: open_loop(client, url, request_bodies(args, model), r, args.seed))
                for r in args.request_rate]
        runs += [(f"conc {c}", lambda c=c: closed_loop(client, url, request_bodies(args, model), c))
                 for c in args.concurrency]
        for label, run in runs:
            start = time.perf_counter()
            results = await run()
            rows.append(summary(label, results, time.perf_counter() - start))
            errors = [r.error for r in results if not r.ok]
            if errors:
                print(f"{label}: {len(errors)} failed, first: {errors[0]}", file=sys.stderr)
        return rows


def build_demo_model(out: Path, layers: int, hidden: int) -> None:
    """A llama-like reference decoder with the pagedc.testing tokenizer, compiled into `out`."""
    import tempfile

    import onnx

    from pagedc.build import CompileOptions, compile_model
    from pagedc.testing import DecoderConfig, build_decoder
    from pagedc.testing.tokenizer import write_tokenizer_files

    source = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    vocab = write_tokenizer_files(source)
    config = DecoderConfig.llama_like(layers, hidden, max_position_embeddings=4096, vocab_size=vocab)
    onnx.save(build_decoder(config, "gqa"), str(source / "model.onnx"))
    compile_model(source / "model.onnx", out, CompileOptions(block_size=16, kv_memory=64 * 2**20, overwrite=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--num-prompts", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--request-rate", type=float, nargs="*", default=[4.0], help="open-loop rates, requests/s")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[1, 16], help="closed-loop client counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demo-model", type=Path, default=None,
                        help="build a small model into this directory, serve it on 127.0.0.1:8000, benchmark it")
    parser.add_argument("--demo-layers", type=int, default=4)
    parser.add_argument("--demo-hidden", type=int, default=256)
    args = parser.parse_args()
    server = None
    if args.demo_model is not None:
        build_demo_model(args.demo_model, args.demo_layers, args.demo_hidden)
        port = args.base_url.rsplit(":", 1)[-1].strip("/")
        server = subprocess.Popen([sys.executable, "-m", "pagedc", "serve", str(args.demo_model), "--port", port])
        wait_ready(args.base_url)
    try:
        rows = asyncio.run(run_all(args))
    finally:
        if server is not None:
            server.terminate()
            server.wait(60)
    print(f"{args.num_prompts} requests per run, {args.input_len} prompt + {args.output_len} output tokens each")
    print_table(rows)


def wait_ready(base_url: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"{base_url}: no healthy server after {timeout_s} s")


if __name__ == "__main__":
    main()
