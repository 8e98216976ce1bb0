"""`pagedc verify`: compare a paged model with its standard model, step by step."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from pagedc.verify.run import TIERS, VerifyReport, verify


@click.command("verify")
@click.argument("paged", type=click.Path(exists=True, path_type=Path))
@click.argument("standard", type=click.Path(exists=True, path_type=Path))
@click.option("--batch", type=click.IntRange(min=1), default=2, show_default=True, help="Prompts (of ragged lengths).")
@click.option("--prompt-len", type=click.IntRange(min=1), default=16, show_default=True, help="Longest prompt.")
@click.option("--decode-steps", type=click.IntRange(min=0), default=8, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the prompts and the block shuffle.")
@click.option("--tier", type=click.Choice(list(TIERS)), default="medium", show_default=True,
              help="Tolerance tier that decides the exit code.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def verify_command(paged: Path, standard: Path, batch, prompt_len, decode_steps, seed, tier, as_json) -> None:
    """Check that PAGED computes what STANDARD computes.

    PAGED is a `pagedc compile` output (directory, manifest.json, or an artifact
    in it, .onnx or .mxr); STANDARD is the dense-cache model it came from: the
    .onnx, or the standard_*.mxr of `pagedc compile --emit-standard` (its
    directory, manifest.json or one of the .mxr files). Seeded prompts run
    through both, the paged side on shuffled, non-contiguous blocks; the logits
    of every step are compared at three tolerance tiers (atol, rtol):
    tight (1e-5, 1e-4), medium (1e-4, 1e-3), loose (1e-3, 1e-2).
    Those of every new token, or, where PAGED was compiled with `--logits last`
    (what it computes), of each sequence's last new token at every step.
    Exit 0 when the chosen tier passes, 1 otherwise.

    \b
    Examples:
      pagedc verify model.paged model.onnx
      pagedc verify model.mxr/prefill_b1_s512.mxr model.mxr/standard_prefill_b1_s512.mxr   # MIGraphX both sides
      pagedc verify model.paged/manifest.json model.onnx --batch 4 --prompt-len 64 --decode-steps 16 --tier tight
      pagedc verify model.paged model.onnx --json | jq .passed
    """
    report = verify(paged, standard, batch=batch, prompt_len=prompt_len, decode_steps=decode_steps,
                    seed=seed, tier=tier)
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else _table(report))
    sys.exit(0 if report.passed else 1)


def _table(report: VerifyReport) -> str:
    compared = ("logits of each sequence's last new token (the paged model computes only those: --logits last)"
                if report.logits == "last" else "logits of every new token")
    lines = [f"paged {report.paged} vs standard {report.standard}; prompts of {report.prompt_lens} tokens",
             f"compared per step: {compared}",
             f"{'step':>5} {'values':>8} {'max abs':>10} {'mean abs':>10} {'max rel':>10} "
             + " ".join(f"{t + ' miss':>11}" for t in TIERS) + f" {'greedy':>7}"]
    for s in report.steps:
        lines.append(f"{s.step:>5} {s.num_values:>8} {s.max_abs:>10.3g} {s.mean_abs:>10.3g} {s.max_rel:>10.3g} "
                     + " ".join(f"{s.mismatches[t]:>11}" for t in TIERS) + f" {s.greedy_agree:>3}/{s.num_sequences:<3}")
    agree = sum(s.greedy_agree for s in report.steps)
    total = sum(s.num_sequences for s in report.steps)
    verdict = "PASS" if report.passed else "FAIL"
    lines.append(f"{verdict} at tier {report.tier}; greedy tokens agree {agree}/{total}")
    if report.source_matches is False:
        lines.append(f"note: the manifest's source hash does not match {report.standard}: the paged model was "
                     "compiled from another file" + ("; a FAIL is expected if it is another model" if not report.passed
                                                     else ""))
    return "\n".join(lines)
