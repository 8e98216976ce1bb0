"""`pagedc bench`: time prefill and decode steps of compiled (paged or standard) models side by side.

    paths ─detect─▶ kinds (paged separate / combined / standard; backend; buckets)
          ─check_fits─▶ every step fits positions, pool and buckets (before anything runs)
          ─sides─▶ sessions loaded
    prefill: `repeats` rounds (after `warmup`), each runs one [B, N] step per model, model after model
    decode:  context of C tokens prefilled (untimed); each round runs K single-token steps per model,
             rewound to C between rounds
    report:  avg / min / max / median ms per step, tokens/s, pools; time ratio against the first model

The timing loop is pagedc.bench.timer.measure (also used by examples/).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pagedc.bench.kind import ModelKind, as_pagedc_errors, detect
from pagedc.bench.limits import check_fits, context_chunk
from pagedc.bench.sides import BenchOptions, DenseSide, PagedSide, StaticStandardSide
from pagedc.bench.timer import PhaseStats, measure
from pagedc.verify.dense_runner import DenseRunner
from pagedc.errors import RequestError
from pagedc.runtime.sessions import open_session
from pagedc.runtime.sessions.ort import SessionOptions
from pagedc.verify.run import standard_programs

log = logging.getLogger(__name__)
PHASES = ("prefill", "decode")


@dataclass
class ModelResult:
    kind: ModelKind
    phases: dict[str, PhaseStats]        # "prefill" / "decode" -> stats per step (a phase not run is absent)
    ratios: dict[str, float]             # phase -> median ms / the first model's median ms

    @property
    def pool(self) -> dict | None:
        """Pool size of a paged model: blocks per layer (null block included) and bytes of all pools."""
        manifest = self.kind.manifest
        if not self.kind.is_paged:
            return None
        return {"num_blocks": manifest.num_blocks, "block_size": manifest.block_size,
                "bytes": manifest.bytes_per_block() * manifest.num_blocks}

    def to_dict(self) -> dict:
        phases = {name: {**stats.to_dict(), "ratio_to_first": self.ratios[name]} for name, stats in self.phases.items()}
        return {**self.kind.to_dict(), "pool": self.pool, **phases}


@dataclass
class BenchReport:
    options: BenchOptions
    models: list[ModelResult]

    def to_dict(self) -> dict:
        return {"options": asdict(self.options), "models": [m.to_dict() for m in self.models]}


def bench(paths: Sequence[str | Path], options: BenchOptions,
          progress: Callable[[str], None] = log.info) -> BenchReport:
    if not options.prefill_len and not options.decode_steps:
        raise RequestError("nothing to time: --prefill-len and --decode-steps are both 0")
    kinds = [detect(path) for path in paths]
    for kind in kinds:
        progress(f"{kind.path}: {kind.title}")
        check_fits(kind, options)
    sides = {str(i): load_side(kind, options, progress) for i, kind in enumerate(kinds)}
    phases = {}
    if options.prefill_len:
        progress(f"prefill [B={options.batch}, N={options.prefill_len}]")
        phases["prefill"] = measure({i: s.prefill for i, s in sides.items()}, repeats=options.repeats,
                                    warmup=options.warmup, prepare={i: s.reset for i, s in sides.items()},
                                    tokens_per_step=dict.fromkeys(sides, options.batch * options.prefill_len),
                                    progress=lambda m: progress(f"prefill {m}"))
    if options.decode_steps:
        progress(f"decode: prefilling the context of {options.context} tokens x {options.batch} (untimed)")
        for side in sides.values():
            side.setup_decode()
        phases["decode"] = measure({i: s.decode for i, s in sides.items()}, repeats=options.repeats,
                                   warmup=options.warmup, steps_per_round=options.decode_steps,
                                   prepare={i: s.rewind for i, s in sides.items()},
                                   tokens_per_step=dict.fromkeys(sides, options.batch),
                                   progress=lambda m: progress(f"decode {m}"))
    return BenchReport(options, [_result(kind, str(i), phases) for i, kind in enumerate(kinds)])


def load_side(kind: ModelKind, options: BenchOptions, progress: Callable[[str], None]):
    """The side of one model, its sessions loaded (MIGraphX programs too: this is where MIGraphX is needed)."""
    progress(f"{kind.path}: loading")
    with as_pagedc_errors():
        if kind.is_paged:
            session = open_session(kind.manifest, kind.directory, SessionOptions(intra_op_threads=options.threads))
            return PagedSide(kind.manifest, session, options, context_chunk(kind, options))
        if kind.manifest is not None:
            return StaticStandardSide(kind.manifest, standard_programs(kind.manifest, kind.directory), options)
        runner = DenseRunner(kind.path, optimize=True, intra_op_threads=options.threads)
        vocab = runner.session.get_outputs()[0].shape[-1]
        return DenseSide(runner, options, vocab if isinstance(vocab, int) else None)


def _result(kind: ModelKind, key: str, phases: dict[str, dict[str, PhaseStats]]) -> ModelResult:
    stats = {name: by_side[key] for name, by_side in phases.items()}
    ratios = {name: by_side[key].median_ms / by_side["0"].median_ms for name, by_side in phases.items()}
    return ModelResult(kind, stats, ratios)
