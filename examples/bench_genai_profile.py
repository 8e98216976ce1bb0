"""--profile of bench_vs_genai.py: ONNX Runtime's per-node profile of decode steps, by op type, both sides.

    profile_genai(model_dir, overlay_fn, prompts, new_tokens)  -> OpShares
    profile_paged(directory, threads, prompts, new_tokens)     -> OpShares

genai turns ORT's profiler on through genai_config's session_options
(`enable_profiling`: a file prefix); the file is written when its session
closes, i.e. when the og.Model is freed. pagedc's SessionOptions has no
profiling switch, so its side builds the runtime's own OrtPagedSession (same
IOBinding, pools in place) while ort.SessionOptions has profiling on.

Only decode runs count: the prefill runs (genai's one; pagedc's one per
prompt chunk, as its engine counts them) are dropped; node kernel times are
summed per op type and divided by the number of decode runs (ms per step).
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


def read_profile(path: Path, prefill_runs: int = 1) -> OpShares:
    """Op-type kernel ms per decode run of an ORT profile JSON (the first `prefill_runs` model_runs, the
    prompt's chunks, dropped)."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                  if e.get("cat") == "Session" and e.get("name") == "model_run")
    if len(runs) <= prefill_runs:
        raise RuntimeError(f"{path}: {len(runs)} model_run event(s); expected {prefill_runs} prefill run(s) "
                           "and decode steps")
    decode_runs = runs[prefill_runs:]
    starts = np.asarray([s for s, _ in decode_runs])
    totals: dict[str, float] = defaultdict(float)
    num_nodes = 0
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        k = int(np.searchsorted(starts, event["ts"], side="right")) - 1
        if k >= 0 and event["ts"] <= decode_runs[k][1]:
            totals[event["args"]["op_name"]] += event["dur"] / 1000.0
            num_nodes += 1
    n = len(decode_runs)
    return OpShares({op: ms / n for op, ms in totals.items()}, sum(e - s for s, e in decode_runs) / n / 1000.0,
                    n, num_nodes / n, str(path))


def profile_genai(model_dir: Path, overlay_for_prefix, prompts: np.ndarray, new_tokens: int,
                  work: Path) -> OpShares:
    """Profile genai's Generator; `overlay_for_prefix(prefix)` gives the config overlay with profiling on."""
    from bench_genai_sides import GenaiGenerator, load_genai

    prefix = work / "genai_profile"
    before = set(work.glob("genai_profile*.json"))
    model = load_genai(model_dir, overlay_for_prefix(str(prefix)))
    GenaiGenerator("genai", model).generate(prompts, new_tokens)
    del model                                   # the session closes and writes the profile
    gc.collect()
    written = sorted(set(work.glob("genai_profile*.json")) - before)
    if not written:
        raise RuntimeError(f"onnxruntime-genai wrote no profile under {work} (enable_profiling={prefix})")
    return read_profile(written[-1])


def profile_paged(directory: Path, threads: int, prompts: np.ndarray, new_tokens: int, work: Path) -> OpShares:
    """Profile pagedc's Engine on its own OrtPagedSession, built with ORT's profiler on."""
    from bench_genai_sides import PagedEngine

    from pagedc.manifest import Manifest
    from pagedc.runtime import OrtPagedSession, SessionOptions

    with _profiling_session_options(str(work / "pagedc_profile")):
        session = OrtPagedSession(Manifest.read(directory), directory, SessionOptions(intra_op_threads=threads))
    side = PagedEngine("pagedc", directory, threads, prefix_caching=False, session=session)
    side.generate(prompts, new_tokens)
    prefill_runs = side.engine.times.prefill.num_steps     # the prompt runs in chunks (max_prefill_chunk)
    path = session.session.end_profiling()
    if not path:
        raise RuntimeError("pagedc's OrtPagedSession did not profile: it no longer builds its options with "
                           "ort.SessionOptions(); give pagedc.runtime.SessionOptions a profiling switch")
    return read_profile(Path(path), prefill_runs)


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
    return rows
