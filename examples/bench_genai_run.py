"""The run of bench_vs_genai.py: build the models, then the decode cases, the mixed workload, the profile.

    run_benchmark(args, work, progress) -> results (plain dict: what the report prints and --json writes)

Models live under `work`: hf/, genai/ (the builder's output), paged/ (pagedc's
compile of genai/model.onnx) and, with --optimum, optimum/ and paged-optimum/.
A stamp (work/stamp.json: shape, exporters) lets a later run with the same
--work reuse the HF model and its exports; pagedc compiles anew every run.
"""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import numpy as np
import onnxruntime_genai as og
from bench_genai_models import Shape, compile_paged, export_genai, export_optimum, make_hf_llama
from bench_genai_profile import op_share_rows, profile_genai, profile_paged
from bench_genai_sides import GenaiEngine, GenaiGenerator, PagedEngine, genai_overlay, load_genai


def run_benchmark(args, work: Path, progress) -> dict:
    shape = Shape(args.layers, args.hidden, args.heads, args.kv_heads, args.intermediate, args.vocab)
    num_blocks = blocks_needed(args)
    params = build_models(args, shape, num_blocks, work, progress)
    max_length = max(args.prompts) + args.new_tokens
    overlay = genai_overlay(args.threads, max(max_length, 640), engine_batch=args.genai_engine_batch)
    model = load_genai(work / "genai", overlay)
    sides = [GenaiGenerator("genai", model),
             PagedEngine("pagedc", work / "paged", args.threads, prefix_caching=False)]
    if args.optimum:
        sides.append(PagedEngine("pagedc optimum", work / "paged-optimum", args.threads, prefix_caching=False))
    results = {"shape": shape.describe(), "params": params, "threads": args.threads, "num_blocks": num_blocks}
    results["decode"] = run_decode_cases(args, sides, np.random.default_rng(0), progress)
    del sides[1:]                                   # free the pools before the mixed workload's engine
    if args.mixed_requests:
        engine = GenaiEngine("genai Engine", model)
        results["genai_engine_batch"] = og.Engine(model).get_capabilities().configured_max_batch_size
        mixed_sides = [engine, GenaiGenerator("genai Generator", model),
                       PagedEngine("pagedc", work / "paged", args.threads, prefix_caching=True)]
        results["mixed"] = run_mixed(args, mixed_sides, progress)
        del mixed_sides
    if args.profile:
        progress(f"profiling decode steps, batch 1, prompt {args.profile_prompt}, both sides")
        results["profile"] = run_profile(args, work, max(max_length, 640, args.profile_prompt + args.new_tokens))
    return results


def build_models(args, shape: Shape, num_blocks: int, work: Path, progress) -> int:
    """Make (or reuse) the HF model and its exports, then compile them with pagedc; returns the parameter count.

    NOTE: pagedc's compiles are redone on every run (seconds), so a changed pagedc is never measured
    through a stale artifact; the HF model and the exports are reused while the stamp matches.
    """
    stamp_path = work / "stamp.json"
    key = {"shape": shape.describe(), "optimum": args.optimum}
    stamp = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
    if stamp.get("key") == key:
        progress(f"reusing the HF model and its exports under {work}")
        params = stamp["params"]
    else:
        params = export_models(args, shape, work, progress)
        stamp_path.write_text(json.dumps({"key": key, "params": params}) + "\n")
    sources = {"paged": work / "genai" / "model.onnx"}
    if args.optimum:
        sources["paged-optimum"] = work / "optimum" / "model.onnx"
    for name, source in sources.items():
        progress(f"pagedc compile of {source.relative_to(work)} ({num_blocks} blocks of 16)")
        compile_paged(source, work / name, num_blocks, lambda m: progress(f"  pagedc: {m}"))
    return params


def export_models(args, shape: Shape, work: Path, progress) -> int:
    for name in ("hf", "genai", "optimum"):
        shutil.rmtree(work / name, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    progress(f"building a random HF Llama: {shape.describe()}")
    params = make_hf_llama(shape, work / "hf")
    progress("exporting it with onnxruntime-genai's model builder (fp32, cpu)")
    export_genai(work / "hf", work / "genai", work / "genai-builder.log")
    if args.optimum:
        progress("exporting it with optimum-onnx (tests/exporters' optimum venv; built on first use, minutes)")
        export_optimum(work / "hf", work / "optimum", work / "optimum-export.log")
    return params


def mixed_workload(num_requests: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    """Prompts 32..512, outputs 32..128, every other request = one shared 256-token prefix + its own suffix."""
    rng = np.random.default_rng(1000 + seed)
    prefix = rng.integers(3, vocab, 256).tolist()
    requests = []
    for i in range(num_requests):
        shared = i % 2 == 0
        length = int(rng.integers(288 if shared else 32, 513))
        body = rng.integers(3, vocab, length - 256 if shared else length).tolist()
        requests.append(((prefix if shared else []) + body, int(rng.integers(32, 129))))
    return requests


def blocks_needed(args) -> int:
    """Pool blocks for the largest decode case or the whole mixed workload at once (block size 16), +10%."""
    cases = max(b * (-(-(p + args.new_tokens) // 16)) for b in args.batches for p in args.prompts)
    mixed = sum(-(-(len(p) + n) // 16) for p, n in mixed_workload(args.mixed_requests, args.vocab, 0))
    return int(1.1 * max(cases, mixed)) + 16


def run_decode_cases(args, sides, rng, progress) -> list[dict]:
    """Every batch x prompt case, sides alternating per round; medians and token agreement vs genai."""
    results = []
    for prompt_len in args.prompts:
        for batch in args.batches:
            progress(f"decode case batch {batch}, prompt {prompt_len}: warm-up + {args.rounds} round(s)")
            for side in sides:
                side.generate(rng.integers(3, args.vocab, (batch, prompt_len)), 3)
            runs = {side.name: [] for side in sides}
            agree = {side.name: 0 for side in sides}
            for _ in range(args.rounds):
                prompts = rng.integers(3, args.vocab, (batch, prompt_len))
                for side in sides:
                    runs[side.name].append(side.generate(prompts, args.new_tokens))
                reference = runs["genai"][-1].tokens
                for side in sides:
                    agree[side.name] += int((runs[side.name][-1].tokens == reference).all(axis=1).sum())
            results.append({"batch": batch, "prompt": prompt_len, "rows": batch * args.rounds, **{
                name: {"decode_tok_s": statistics.median(t.decode_tok_s() for t in timed),
                       "prefill_ms": 1000 * statistics.median(t.ttft_s for t in timed),
                       "rows_agree": agree[name]} for name, timed in runs.items()}})
    return results


def run_mixed(args, sides, progress) -> dict:
    """Output tok/s of each side on the same workload per round (a new one each round); medians."""
    rates: dict[str, list[float]] = {side.name: [] for side in sides}
    agree, totals = [], []
    for r in range(args.mixed_rounds):
        requests = mixed_workload(args.mixed_requests, args.vocab, r)
        served = {}
        for side in (sides if r % 2 == 0 else sides[::-1]):
            progress(f"mixed workload round {r + 1}: {side.name} ({len(requests)} requests)")
            served[side.name] = side.serve(requests)
            rates[side.name].append(served[side.name].num_tokens / served[side.name].wall_s)
        expected = sum(n for _, n in requests)
        totals.append(expected)
        for name, s in served.items():
            if s.num_tokens != expected:
                raise RuntimeError(f"mixed workload: {name} generated {s.num_tokens} tokens, expected {expected}")
        agree.append(sum(a == b for a, b in zip(served["pagedc"].outputs, served["genai Generator"].outputs)))
    return {"requests": args.mixed_requests, "output_tokens": totals, "rows_agree": agree,
            **{name: statistics.median(v) for name, v in rates.items()}}


def run_profile(args, work: Path, max_length: int) -> dict:
    """Op-type kernel ms per decode step, batch 1 at --profile-prompt, both sides."""
    prompts = np.random.default_rng(7).integers(3, args.vocab, (1, args.profile_prompt))
    steps = min(args.new_tokens, 17)
    genai = profile_genai(work / "genai", lambda prefix: genai_overlay(args.threads, max_length, prefix),
                          prompts, steps, work)
    paged = profile_paged(work / "paged", args.threads, prompts, steps, work)
    return {"prompt": args.profile_prompt, "steps": genai.num_steps, "rows": op_share_rows(genai, paged),
            "genai": genai, "pagedc": paged}
