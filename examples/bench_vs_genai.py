"""pagedc vs onnxruntime-genai on the same model, side by side in one process.

    pip install torch==2.13.0            # first: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
    pip install -e ".[bench]"            # onnxruntime-genai 0.18, transformers 5.18, onnxruntime >= 1.31
    python examples/bench_vs_genai.py                  # full shape (12 layers, hidden 1024), all cases
    python examples/bench_vs_genai.py --quick          # 4 layers, hidden 256, prompts 64/256: a minute on 2 cores
    python examples/bench_vs_genai.py --prompts 256 --batches 1 --profile --json out.json
    python examples/bench_vs_genai.py --optimum        # also optimum's export (decomposed attention) via pagedc

Steps (offline): a random-weight HF Llama of the given shape (std 1/sqrt(fan_in),
so greedy tokens are not ties); onnxruntime-genai's model builder exports it
(fp32, cpu: GroupQueryAttention); `pagedc compile` of that same model.onnx;
then, with the same intra-op thread count on both sides (--threads):
1. decode tok/s (mean time per decode step after the first token) and prefill
   (time to first token) at each batch x prompt length, greedy, genai's
   Generator vs pagedc's Engine, sides alternating round by round; medians;
   greedy token agreement (rows identical to genai's); pagedc's Engine runs
   with its default options (2048 tokens per step, prompt chunks of at most
   256 per request), genai's Generator prefills the whole prompt at once;
2. a mixed workload (prompts 32-512, outputs 32-128, half sharing a 256-token
   prefix, all arriving at once): output tok/s of pagedc's Engine (prefix
   caching on), genai's Engine (on CPU its static-batching path: dynamic
   batching needs a PagedAttention export, CUDA only) and genai's Generator
   one request at a time;
3. --optimum: the same HF model exported by optimum-onnx (run in
   tests/exporters' optimum venv, built on first use: it pins transformers
   < 4.58) and compiled by pagedc, decode tok/s vs genai on its own export;
4. --profile: ORT's per-node profile of decode steps (batch 1, first prompt
   length), kernel ms per step by op type for both sides, and each side's
   decode step with the profiler on and off: the profiler adds ~10 µs per
   kernel, so a small op's kernel time is mostly the profiler's own.
Ratios are pagedc / genai speeds (> 1: pagedc faster; prefill: genai time /
pagedc time). Results go to stdout, progress to stderr. Exit 0 ok, 1 a step
failed, 2 usage or missing packages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


_START = time.perf_counter()


def progress(message: str) -> None:
    print(f"[bench {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small shape (4 layers, hidden 256), prompts 64/256, 2 rounds")
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=2816)
    p.add_argument("--vocab", type=int, default=32003)
    p.add_argument("--threads", type=int, default=cores, help=f"intra-op threads, both sides (default: {cores})")
    p.add_argument("--batches", type=_ints, default=None, help="comma list (default 1,8)")
    p.add_argument("--prompts", type=_ints, default=None, help="prompt lengths, comma list (default 256,1024,2048)")
    p.add_argument("--new-tokens", type=int, default=33, help="tokens generated per row (decode steps + 1)")
    p.add_argument("--rounds", type=int, default=None, help="alternating rounds per case (default 3; --quick 2)")
    p.add_argument("--mixed-requests", type=int, default=24, help="requests in the mixed workload (0: skip it)")
    p.add_argument("--mixed-rounds", type=int, default=1)
    p.add_argument("--genai-engine-batch", type=int, default=None,
                   help="genai Engine static_batching.max_batch_size (default: genai's own, 4)")
    p.add_argument("--optimum", action="store_true", help="also optimum-onnx's export through pagedc")
    p.add_argument("--profile", action="store_true", help="ORT per-node profile of decode steps, both sides")
    p.add_argument("--profile-prompt", type=int, default=256, help="prompt length of the profiled run (batch 1)")
    p.add_argument("--work", type=Path, default=None, help="keep models here (reused when the shape matches)")
    p.add_argument("--json", type=Path, default=None, help="also write all figures to this file")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.hidden, args.heads, args.kv_heads, args.intermediate = 4, 256, 4, 2, 704
    args.batches = args.batches or [1, 8]
    args.prompts = args.prompts or ([64, 256] if args.quick else [256, 1024, 2048])
    args.rounds = args.rounds or (2 if args.quick else 3)
    if args.new_tokens < 2 or args.threads < 1 or args.rounds < 1 or args.hidden % args.heads:
        p.error("need --new-tokens >= 2, --threads >= 1, --rounds >= 1 and --hidden divisible by --heads")
    if max(args.prompts) + args.new_tokens > 4096:
        p.error(f"--prompts up to {max(args.prompts)} + --new-tokens {args.new_tokens} exceed the model's 4096 positions")
    if args.heads % args.kv_heads:
        p.error(f"--heads {args.heads} must be a multiple of --kv-heads {args.kv_heads}")
    return args


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def print_table(title: str, header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    print(f"\n{title}")
    for line in [header, ["-" * w for w in widths], *rows]:
        print("| " + " | ".join(str(c).rjust(w) for c, w in zip(line, widths)) + " |")


def decode_rows(results: list[dict], paged_names: list[str]) -> list[list[str]]:
    rows = []
    for r in results:
        genai = r["genai"]
        row = [f"b{r['batch']} p{r['prompt']}", f"{genai['decode_tok_s']:.1f}"]
        for name in paged_names:
            row += [f"{r[name]['decode_tok_s']:.1f}", f"{r[name]['decode_tok_s'] / genai['decode_tok_s']:.2f}"]
        row += [f"{genai['prefill_ms']:.1f}", f"{r['pagedc']['prefill_ms']:.1f}",
                f"{genai['prefill_ms'] / r['pagedc']['prefill_ms']:.2f}"]
        row += [f"{r[name]['rows_agree']}/{r['rows']}" for name in paged_names]
        rows.append(row)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import onnxruntime as ort
        import onnxruntime_genai as og
        import torch  # noqa: F401  (the HF model is built with it)
        import transformers
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_genai_run import run_benchmark
    except ImportError as err:
        print(f"error: {err.name or err} is not installed; run `pip install torch==2.13.0` then "
              "`pip install -e \".[bench]\"` in the pagedc checkout", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="pagedc-vs-genai-"))
    versions = (f"onnxruntime {ort.__version__}, onnxruntime-genai {og.__version__}, "
                f"transformers {transformers.__version__}, {args.threads} intra-op threads, {os.cpu_count()} cores")
    try:
        results = run_benchmark(args, work, progress)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    results["versions"] = versions
    report(args, results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=lambda o: asdict(o)) + "\n")
        progress(f"wrote {args.json}")
    return 0


def report(args, results: dict) -> None:
    print(f"model: {results['shape']} ({results['params'] / 1e6:.1f}M params); {results['versions']}")
    print(f"decode: {args.new_tokens - 1} steps after the first token, median of {args.rounds} alternating rounds")
    paged_names = [n for n in ("pagedc", "pagedc optimum") if n in results["decode"][0]]
    header = ["case", "genai tok/s"]
    for name in paged_names:
        header += [f"{name} tok/s", f"{name}/genai"]
    header += ["genai prefill ms", "pagedc prefill ms", "pagedc/genai"] + [f"{n} rows = genai" for n in paged_names]
    print_table("decode and prefill (batch b, prompt p)", header, decode_rows(results["decode"], paged_names))
    mixed = results.get("mixed")
    if mixed:
        agree = "; ".join(f"{n}/{mixed['requests']}" for n in mixed["rows_agree"])
        rows = [[name, f"{mixed[name]:.1f}", f"{mixed['pagedc'] / mixed[name]:.2f}"]
                for name in ("genai Engine", "genai Generator", "pagedc")]
        print_table(f"mixed workload: {mixed['requests']} requests, {'/'.join(map(str, mixed['output_tokens']))} output tokens, "
                    f"all at once (pagedc rows = genai Generator rows: {agree}; "
                    f"genai Engine batch {results['genai_engine_batch']})",
                    ["side", "output tok/s", "pagedc / side"], rows)
    profile = results.get("profile")
    if profile:
        print_table(f"decode step profile, batch 1, prompt {profile['prompt']}: kernel ms per step by op type "
                    f"({profile['steps']} steps)", ["op type", "genai ms/step", "pagedc ms/step"], profile["rows"])


if __name__ == "__main__":
    sys.exit(main())
