"""`pagedc inspect`: list every attention layer that has a dense KV cache."""

from __future__ import annotations

import json
import sys

import click

from pagedc.model_file import load_model
from pagedc.passes.detect import Detection, find_attention_sites

_COLUMNS = ("layer", "form", "heads", "kv_heads", "head_dim", "rotary", "mask", "past (key, value)", "present (key, value)")


@click.command("inspect")
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the layers as JSON.")
def inspect_command(model: str, as_json: bool) -> None:
    """Find every attention layer of MODEL that has a dense KV cache.

    Prints one row per layer: form (decomposed, gqa, attention, mha), heads,
    KV heads, head dim, where rotary is applied, the mask kind, and the names
    of the past inputs and present outputs. Weights are not loaded.

    Exits 1 when MODEL has no KV-cache attention, or when some KV input
    belongs to no recognised attention layer.

    \b
    Examples:
      pagedc inspect model.onnx
      pagedc inspect model.onnx --json | jq '.layers[].mask'
    """
    detection = find_attention_sites(load_model(model))
    if as_json:
        click.echo(json.dumps(_as_dict(model, detection), indent=2))
    elif detection.sites:
        click.echo(_table(detection))
    for miss in detection.misses:
        click.echo(f"pagedc: not recognised: {miss}", err=True)
    if not detection.sites:
        click.echo(f"pagedc: {model}: {_nothing_found(detection)}", err=True)
        sys.exit(1)
    if detection.misses:
        click.echo(f"pagedc: {len(detection.misses)} KV input(s) belong to no recognised attention layer; "
                   "pagedc cannot rewrite this model as is.", err=True)
        sys.exit(1)


def _as_dict(model: str, detection: Detection) -> dict:
    return {
        "model": model,
        "num_layers": len(detection.sites),
        "layers": [site.to_dict() for site in detection.sites],
        "not_recognised": [{"value": m.value, "reason": m.reason} for m in detection.misses],
    }


def _table(detection: Detection) -> str:
    rows = [_COLUMNS] + [
        (str(s.layer), s.form, _num(s.num_heads), _num(s.num_kv_heads), _num(s.head_dim), s.rotary, str(s.mask),
         f"{s.past_key}, {s.past_value}", f"{s.present_key}, {s.present_value}")
        for s in detection.sites
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _num(value: int | None) -> str:
    return "?" if value is None else str(value)


def _nothing_found(detection: Detection) -> str:
    if detection.prefill_only:
        return f"no attention layer with a KV cache found: {detection.prefill_only}."
    counts = detection.found_instead
    attention_ops = {op: n for op, n in counts.items() if "Attention" in op or op in ("Softmax", "MatMul")}
    found = ", ".join(f"{n} {op}" for op, n in sorted(attention_ops.items())) or "no Softmax, MatMul or attention op"
    return (f"no attention layer with a KV cache found (found {found} among {sum(counts.values())} nodes). "
            "pagedc needs a decoder exported with past key/value inputs, e.g. "
            "`optimum-cli export onnx --task text-generation-with-past`.")
