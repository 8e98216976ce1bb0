"""`pagedc verify`: the same prompts through a paged model and its standard (dense-cache) model, logits compared.

    prompts (seeded, ragged) ─▶ standard: each sequence alone, dense cache fed back (.onnx on ONNX Runtime,
                                 or --emit-standard .mxr on MIGraphX with static KV buffers); greedy tokens
                              ─▶ paged: one ragged batch driven by PagedKVCacheManager with shuffled blocks,
                                 decode steps fed the standard model's greedy tokens (teacher forcing)
    per step: max/mean |paged - standard|, max relative difference, mismatches per tolerance tier,
              greedy-token agreement

What is compared is what the artifact produces: every new token's logits, or,
for an artifact compiled with `--logits last` (manifest logits "last"), the
last new token of each sequence at every step (prefill and decode) against the
same rows of the standard model. The report says which (`logits`).

Tolerance tiers (atol, rtol), as in MIGraphX's paged-attention examples:
tight (1e-5, 1e-4), medium (1e-4, 1e-3), loose (1e-3, 1e-2). A value
mismatches a tier when |paged - standard| > atol + rtol * |standard|.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from pagedc.verify.dense_runner import DenseRunner
from pagedc.errors import ModelError
from pagedc.manifest import Manifest, ManifestError
from pagedc.model_file import file_sha256, load_model
from pagedc.passes.detect import find_attention_sites
from pagedc.runtime import PagedKVCacheManager, step_feeds
from pagedc.runtime.sessions import open_session
from pagedc.runtime.sessions.migraphx_import import import_migraphx
from pagedc.runtime.sessions.mxr_program import load_program, program_runner
from pagedc.runtime.sessions.standard_cache import StandardKVCache
from pagedc.runtime.sessions.mxr_weights import ProgramWeights

TIERS = {"tight": (1e-5, 1e-4), "medium": (1e-4, 1e-3), "loose": (1e-3, 1e-2)}


@dataclass
class StepComparison:
    step: int                      # 0 = prefill, then decode steps
    num_values: int
    max_abs: float
    mean_abs: float
    max_rel: float
    mismatches: dict[str, int]     # tier -> values outside it
    greedy_agree: int              # sequences whose argmax token is the same on both sides
    num_sequences: int


@dataclass
class VerifyReport:
    paged: str
    standard: str
    tier: str
    prompt_lens: list[int]
    steps: list[StepComparison] = field(default_factory=list)
    source_matches: bool | None = None   # STANDARD's sha256 is the manifest's source_sha256 (None: not a .onnx)
    logits: str = "all"                  # rows compared: "all" new tokens, or each sequence's "last" new token

    @property
    def passed(self) -> bool:
        return all(step.mismatches[self.tier] == 0 for step in self.steps)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def verify(paged: str | Path, standard: str | Path, *, batch: int = 2, prompt_len: int = 16,
           decode_steps: int = 8, seed: int = 0, tier: str = "medium") -> VerifyReport:
    manifest, directory = resolve_manifest(paged)
    source_matches = check_same_model(manifest, standard)
    reference = standard_stepper(standard)
    prompts = seeded_prompts(batch, prompt_len, manifest.vocab_size or _vocab(standard), seed)
    expected, tokens = _run_standard(reference, prompts, decode_steps)
    got = _run_paged(manifest, directory, prompts, tokens, seed)
    if manifest.logits == "last":     # the artifact computes each sequence's last new token only
        expected = [[rows[-1:] for rows in step] for step in expected]
    report = VerifyReport(str(paged), str(standard), tier, [len(p) for p in prompts], source_matches=source_matches,
                          logits=manifest.logits)
    for step, (want, have) in enumerate(zip(expected, got)):
        report.steps.append(compare(step, have, want))
    return report


def resolve_manifest(path: str | Path) -> tuple[Manifest, Path]:
    """A compile output directory, its manifest.json, or an artifact inside it -> (manifest, directory)."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not (directory / "manifest.json").exists():
        raise ManifestError(f"{path}: no manifest.json in {directory}; verify needs the paged side as a "
                            "`pagedc compile` output (directory, manifest.json or an artifact inside it)")
    return Manifest.read(directory), directory


def check_same_model(manifest: Manifest, standard: str | Path) -> bool | None:
    """Is a .onnx STANDARD the model the manifest was compiled from? ModelError when it cannot be compared at all.

    A different file (source_sha256) may still be the same model re-saved, so that
    is reported, not refused; another vocabulary or layer count cannot be compared.
    """
    path = Path(standard)
    if path.suffix != ".onnx":
        return None
    model = load_model(path)
    logits = next((v for v in model.graph.outputs if v.name == "logits"), None)
    vocab = logits.shape[-1] if logits is not None and logits.shape is not None else None
    if manifest.vocab_size and isinstance(vocab, int) and vocab != manifest.vocab_size:
        raise ModelError(f"{path} has a vocabulary of {vocab} tokens, the paged model {manifest.vocab_size}: it is "
                         f"not the model the paged side was compiled from ({manifest.source_model})")
    sites = find_attention_sites(model).sites
    if sites and len(sites) != manifest.num_layers:
        raise ModelError(f"{path} has {len(sites)} attention layers, the paged model {manifest.num_layers}: it is "
                         f"not the model the paged side was compiled from ({manifest.source_model})")
    return file_sha256(path) == manifest.source_sha256


def seeded_prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    """`batch` prompts of ragged lengths prompt_len, prompt_len - d, prompt_len - 2d, ... (d = prompt_len // 2batch)."""
    rng = np.random.default_rng(seed)
    step = max(1, prompt_len // (2 * batch))
    lengths = [max(1, prompt_len - b * step) for b in range(batch)]
    return [[int(t) for t in rng.integers(1, vocab, n)] for n in lengths]


def standard_stepper(path: str | Path) -> Callable[[], Callable[[list[int]], np.ndarray]]:
    """new_sequence() -> step(tokens) -> logits [S, V]: the standard model, one sequence at a time.

    A .onnx runs on ONNX Runtime with its dense cache fed back; a compile output
    with `--emit-standard` artifacts (.mxr) runs on MIGraphX with static KV buffers.
    """
    path = Path(path)
    if path.suffix == ".onnx":
        runner = DenseRunner(path)

        def new_dense_sequence():
            state = {"start": 0, "past": None}

            def step(tokens: list[int]) -> np.ndarray:
                logits, state["past"] = runner.step(tokens, state["start"], state["past"])
                state["start"] += len(tokens)
                return logits
            return step
        return new_dense_sequence
    manifest, directory = resolve_manifest(path)
    return static_standard_stepper(manifest, standard_programs(manifest, directory))


def static_standard_stepper(manifest: Manifest, runners: dict) -> Callable[[], Callable[[list[int]], np.ndarray]]:
    """new_sequence() for the static standard artifacts, given a run function per artifact path."""

    def new_static_sequence():
        cache = StandardKVCache(manifest, batch=1)

        def step(tokens: list[int]) -> np.ndarray:
            artifact, feeds = cache.feeds([tokens])
            outputs = dict(zip(artifact.outputs, runners[artifact.path](feeds)))
            cache.update(artifact, outputs)
            return np.array(outputs["logits"][0, : len(tokens)])
        return step
    return new_static_sequence


def standard_programs(manifest: Manifest, directory: Path) -> dict:
    """{artifact path: run function} of the MIGraphX standard artifacts (needs MIGraphX)."""
    if not manifest.standard_artifacts:
        raise ManifestError(f"{directory}: no standard artifacts; compile with --emit-standard, or pass the dense .onnx")
    migraphx = import_migraphx()
    weights = ProgramWeights.of(manifest, directory)
    return {a.path: program_runner(migraphx, load_program(migraphx, directory / a.path, a, weights), weights)
            for a in manifest.standard_artifacts}


def _vocab(standard: str | Path) -> int:
    path = Path(standard)
    if path.suffix == ".onnx":
        return int(load_model(path).graph.outputs[0].shape[-1])
    manifest, _ = resolve_manifest(path)
    return int(manifest.vocab_size)


def _run_standard(new_sequence, prompts: list[list[int]], decode_steps: int):
    """Per step, each sequence's logits ([S, V] rows); and the greedy tokens fed at each decode step."""
    logits: list[list[np.ndarray]] = [[] for _ in range(decode_steps + 1)]
    tokens: list[list[int]] = [[] for _ in range(decode_steps)]
    for prompt in prompts:
        step = new_sequence()
        rows = step(prompt)
        logits[0].append(rows)
        for t in range(decode_steps):
            token = int(np.argmax(rows[-1]))
            tokens[t].append(token)
            rows = step([token])
            logits[t + 1].append(rows)
    return logits, tokens


def _run_paged(manifest: Manifest, directory: Path, prompts: list[list[int]], tokens: list[list[int]], seed: int):
    session = open_session(manifest, directory)
    manager = PagedKVCacheManager.from_manifest(manifest)
    manager.shuffle_free_blocks(seed)
    for i, prompt in enumerate(prompts):
        manager.add(i)
    logits = []
    for new in [prompts] + tokens:
        new = [n if isinstance(n, list) else [n] for n in new]
        steps = [manager.append(i, len(toks), toks) for i, toks in enumerate(new)]
        step_logits = session.run(step_feeds(steps, manifest.block_size, layout=manifest.layout))   # [B, S | 1, V]
        rows = [1 if manifest.logits == "last" else len(toks) for toks in new]
        logits.append([step_logits[i, :n] for i, n in enumerate(rows)])
    return logits


def compare(step: int, paged: list[np.ndarray], standard: list[np.ndarray]) -> StepComparison:
    have = np.concatenate([p.reshape(-1) for p in paged]).astype(np.float64)
    want = np.concatenate([s.reshape(-1) for s in standard]).astype(np.float64)
    diff = np.abs(have - want)
    rel = diff / np.maximum(np.abs(want), np.finfo(np.float32).tiny)
    mismatches = {tier: int(np.sum(diff > atol + rtol * np.abs(want))) for tier, (atol, rtol) in TIERS.items()}
    agree = sum(int(np.argmax(p[-1]) == np.argmax(s[-1])) for p, s in zip(paged, standard))
    return StepComparison(step, int(diff.size), float(diff.max()), float(diff.mean()), float(rel.max()),
                          mismatches, agree, len(paged))
