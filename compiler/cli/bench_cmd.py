"""`pagedc bench`: how fast is a compiled model, and is paged faster than standard here?"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pagedc.bench.run import PHASES, BenchReport, bench
from pagedc.bench.kind import TITLES
from pagedc.bench.sides import BenchOptions
from pagedc.errors import PagedcError

_COLUMNS = ("avg ms", "min ms", "max ms", "median ms", "tokens/s", "x first")


@click.command("bench")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--prefill-len", type=click.IntRange(min=0), default=128, show_default=True,
              help="N: tokens per sequence of the timed prefill step (0: skip prefill).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="B: sequences per step.")
@click.option("--decode-steps", type=click.IntRange(min=0), default=32, show_default=True,
              help="K: timed single-token steps per round (0: skip decode).")
@click.option("--context", type=click.IntRange(min=1), default=128, show_default=True,
              help="C: tokens per sequence in the cache before the decode steps (prefilled, untimed).")
@click.option("--repeats", type=click.IntRange(min=1), default=10, show_default=True, help="R: timed rounds.")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="W: untimed rounds first.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="ONNX Runtime intra-op threads (0: one per core).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the tokens and the block shuffle.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def bench_command(paths, prefill_len, batch, decode_steps, context, repeats, warmup, threads, seed, as_json) -> None:
    """Time the prefill and decode steps of each PATH, side by side.

    PATH is a `pagedc compile` output (directory, manifest.json or model.onnx in
    it; either backend), a paged or standard .mxr inside one, or a dense .onnx.
    Its kind (paged separate / combined K/V, or standard), backend and shape
    buckets are detected and printed. Prefill times one [B, N] step on an empty
    cache (blocks shuffled, as after some serving); decode times K single-token
    steps per sequence at a context of C tokens. Static (MIGraphX) buckets run
    a step padded to the smallest bucket it fits; tokens/s counts real tokens
    (B x N per prefill, B per decode step). Several PATHs run in one
    process in alternating rounds; "x first" is each model's median time over
    the first model's (below 1: faster). Progress goes to stderr, results to stdout.

    \b
    Examples:
      pagedc bench model.paged                          # paged, ONNX Runtime
      pagedc bench model.paged model.onnx               # paged vs the dense model it came from
      pagedc bench model.mxr/prefill_b1_s512.mxr model.mxr/standard_prefill_b1_s512.mxr --prefill-len 512
      pagedc bench model.paged --batch 8 --context 1024 --decode-steps 64 --threads 4
      pagedc bench model.paged model.onnx --json | jq '.models[].decode.median_ms'
    """
    options = BenchOptions(prefill_len, batch, decode_steps, context, repeats, warmup, threads, seed)
    try:
        report = bench(paths, options, progress=lambda message: click.echo(f"pagedc: {message}", err=True))
    except PagedcError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(1)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else format_report(report))


def format_report(report: BenchReport) -> str:
    """Models as MIGraphX's paged_attention_prefill prints them, then one table per phase."""
    opts = report.options
    lines = []
    for result in report.models:
        kind, pool = result.kind, result.pool
        lines += [f"Model: {kind.path}", f"Model type: {TITLES[kind.kind]}, {kind.backend}, "
                  + (f"buckets {'; '.join(kind.buckets)}" if kind.buckets else "dynamic shapes") + kind.logits_note]
        if pool:
            lines.append(f"Pool: {pool['num_blocks']} blocks x {pool['block_size']} tokens per layer, "
                         f"{pool['bytes'] / 2**20:.1f} MiB in all")
    titles = {"prefill": f"Prefill [B={opts.batch}, N={opts.prefill_len}] on an empty cache",
              "decode": f"Decode [B={opts.batch}, 1] x {opts.decode_steps} steps at context {opts.context}"}
    width = max(len(str(m.kind.path)) for m in report.models)
    for phase in (p for p in PHASES if p in report.models[0].phases):
        lines += ["", f"=== {titles[phase]}; {opts.repeats} rounds after {opts.warmup} warm-up ===",
                  f"{'model':<{width}} " + " ".join(f"{c:>10}" for c in _COLUMNS)]
        for result in report.models:
            s, ratio = result.phases[phase], result.ratios[phase]
            cells = (s.avg_ms, s.min_ms, s.max_ms, s.median_ms)
            lines.append(f"{str(result.kind.path):<{width}} " + " ".join(f"{c:>10.3f}" for c in cells)
                         + f" {s.tokens_per_s:>10.1f} {ratio:>10.3f}")
    return "\n".join(lines)
