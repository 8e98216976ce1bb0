"""--profile of bench_vs_genai.py: ONNX Runtime's per-node profile of decode steps, by op type, both sides.

    profile_genai(model_dir, overlay_fn, prompts, new_tokens)  -> OpShares
    profile_paged(directory, threads, prompts, new_tokens)     -> OpShares

genai turns ORT's profiler on through genai_config's session_options
(`enable_profiling`: a file prefix); the file is written when its session
closes, i.e. when the og.Model is freed. pagedc's SessionOptions has no
profiling switch, so its side builds the runtime's own OrtPagedSession (same
IOBinding, pools in place) while ort.SessionOptions has profiling on.

Only the first generation's decode runs count: the prefill runs (genai's
one; pagedc's one per prompt chunk, as its engine counts them) are dropped;
node kernel times are summed per op type and divided by the number of decode
runs (ms per step).

NOTE: ORT's profiler costs about 8-13 µs of wall time per kernel on the
2-core box (a tiny Add: 0.48 µs unprofiled, 13 µs profiled, of which 7 µs
lands inside its own kernel time). A side with more kernels is slowed more,
and a small op's kernel time is mostly the profiler's. So a second session
of each side, with the profiler off, takes turns with the profiled one, and
the table prints both sides' median decode step with the profiler on and off.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort


@dataclass
class OpShares:
    ms_per_step: dict[str, float]    # op type -> kernel ms per decode step
    run_ms: float                    # mean model_run wall ms per decode step
    num_steps: int
    nodes_per_step: float            # kernels run per decode step
    path: str
    step_ms_profiled: float = 0.0    # median decode step (engine / Generator), profiler on
    step_ms_plain: float = 0.0       # the same, on a second session with the profiler off


def read_profile(path: Path, prefill_runs: int = 1, decode_runs: int | None = None) -> OpShares:
    """Op-type kernel ms per decode run of an ORT profile JSON: model_runs [prefill_runs, prefill_runs +
    decode_runs) (the first generation's decode steps; None: all runs after the prefill's)."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    stop = len(runs) if decode_runs is None else prefill_runs + decode_runs
    if len(runs) < stop or stop <= prefill_runs:
        raise RuntimeError(f"{path}: {len(runs)} model_run event(s); expected {prefill_runs} prefill run(s) "
                           f"and {decode_runs or 'some'} decode steps")
    decode = runs[prefill_runs:stop]
    starts = np.asarray([s for s, _ in decode])
    totals: dict[str, float] = defaultdict(float)
    num_nodes = 0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        k = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if k >= 0 and event["ts"] <= decode[k][1]:
            totals[event["args"]["op_name"]] += event["dur"] / 1000.0
            num_nodes += 1
    n = len(decode)
    return OpShares({op: ms / n for op, ms in totals.items()}, sum(e - s for s, e in decode) / n / 1000.0,
                    n, num_nodes / n, str(path))


def profile_genai(model_dir: Path, overlay_for_prefix, prompts: np.ndarray, new_tokens: int,
                  work: Path, rounds: int = 3) -> OpShares:
    """Profile genai's Generator; `overlay_for_prefix(prefix)` gives the config overlay with profiling on
    (`prefix=None`: off). The profiled and the plain model take turns for `rounds`; the table reads the
    first profiled generation."""
    from bench_genai_sides import GenaiGenerator, load_genai

    prefix = work / "genai_profile"
    before = set(work.glob("genai_profile*.json"))
    profiled = GenaiGenerator("genai", load_genai(model_dir, overlay_for_prefix(str(prefix))))
    plain = GenaiGenerator("genai", load_genai(model_dir, overlay_for_prefix(None)))
    steps = _alternate(profiled, plain, prompts, new_tokens, rounds)
    del profiled, plain                       # the sessions close; the profiled one writes its file
    gc.collect()
    written = sorted(set(work.glob("genai_profile*.json")) - before)
    if not written:
        raise RuntimeError(f"onnxruntime-genai wrote no profile under {work} (enable_profiling={prefix})")
    # one prefill run (append_tokens), then one run per generate_next_token after the first
    return _with_steps(read_profile(written[-1], 1, new_tokens - 1), *steps)


def profile_paged(directory: Path, threads: int, prompts: np.ndarray, new_tokens: int, work: Path,
                  rounds: int = 3) -> OpShares:
    """Profile pagedc's Engine on its own OrtPagedSession, built with ORT's profiler on; a plain engine
    takes turns with it as in profile_genai."""
    from bench_genai_sides import PagedEngine

    from pagedc.manifest import Manifest
    from pagedc.runtime import OrtPagedSession, SessionOptions

    with _profiling_session_options(str(work / "pagedc_profile")):
        session = OrtPagedSession(Manifest.read(directory), directory, SessionOptions(intra_op_threads=threads))
    profiled = PagedEngine("pagedc", directory, threads, prefix_caching=False, session=session)
    plain = PagedEngine("pagedc", directory, threads, prefix_caching=False)
    steps = _alternate(profiled, plain, prompts, new_tokens, rounds)
    prefill_runs = profiled.engine.times.prefill.num_steps // rounds   # the prompt's chunks (max_prefill_chunk)
    path = session.session.end_profiling()
    if not path:
        raise RuntimeError("pagedc's OrtPagedSession did not profile: it no longer builds its options with "
                           "ort.SessionOptions(); give pagedc.runtime.SessionOptions a profiling switch")
    return _with_steps(read_profile(Path(path), prefill_runs, new_tokens - 1), *steps)


def _alternate(profiled, plain, prompts: np.ndarray, new_tokens: int, rounds: int) -> tuple[list, list]:
    """Decode step seconds of each side over `rounds` generations, taking turns (profiled first)."""
    profiled_steps, plain_steps = [], []
    for _ in range(rounds):
        profiled_steps += profiled.generate(prompts, new_tokens).step_s
        plain_steps += plain.generate(prompts, new_tokens).step_s
    return profiled_steps, plain_steps


def _with_steps(shares: OpShares, profiled: list[float], plain: list[float]) -> OpShares:
    shares.step_ms_profiled = float(np.median(profiled)) * 1e3
    shares.step_ms_plain = float(np.median(plain)) * 1e3
    return shares


@contextlib.contextmanager
def _profiling_session_options(prefix: str):
    """ort.SessionOptions() returns options with the profiler on while inside (for OrtPagedSession's __init__).

    NOTE: replacing the class for the duration of one constructor keeps the session exactly the runtime's
    (same optimization level, threads, IOBinding of the pools) without copying its code here.
    """
    original = ort.SessionOptions

    class ProfilingOptions(original):
        def __init__(self):
            super().__init__()
            self.enable_profiling = True
            self.profile_file_prefix = prefix

    ort.SessionOptions = ProfilingOptions
    try:
        yield
    finally:
        ort.SessionOptions = original


def op_share_rows(genai: OpShares, paged: OpShares, top: int = 14) -> list[list[str]]:
    """Table rows: op type, genai ms/step, pagedc ms/step, sorted by the larger; the rest summed."""
    ops = sorted(set(genai.ms_per_step) | set(paged.ms_per_step),
                 key=lambda op: -max(genai.ms_per_step.get(op, 0.0), paged.ms_per_step.get(op, 0.0)))
    rows = [[op, f"{genai.ms_per_step.get(op, 0.0):.3f}", f"{paged.ms_per_step.get(op, 0.0):.3f}"] for op in ops[:top]]
    rest = ops[top:]
    if rest:
        rows.append([f"({len(rest)} other op types)", f"{sum(genai.ms_per_step.get(op, 0.0) for op in rest):.3f}",
                     f"{sum(paged.ms_per_step.get(op, 0.0) for op in rest):.3f}"])
    rows.append(["sum of kernels", f"{sum(genai.ms_per_step.values()):.3f}", f"{sum(paged.ms_per_step.values()):.3f}"])
    rows.append(["model_run wall", f"{genai.run_ms:.3f}", f"{paged.run_ms:.3f}"])
    rows.append(["kernels per step", f"{genai.nodes_per_step:.0f}", f"{paged.nodes_per_step:.0f}"])
    rows.append(["decode step, profiler on", f"{genai.step_ms_profiled:.3f}", f"{paged.step_ms_profiled:.3f}"])
    rows.append(["decode step, profiler off", f"{genai.step_ms_plain:.3f}", f"{paged.step_ms_plain:.3f}"])
    return rows
