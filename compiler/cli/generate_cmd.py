"""`pagedc generate`: run a compiled paged model on prompts and stream the tokens."""

from __future__ import annotations

import json
from pathlib import Path

import click

from pagedc.runtime import Engine, SamplingParams


def _token_ids(ctx, param, values):
    prompts = []
    for value in values:
        try:
            prompts.append([int(t) for t in value.replace(" ", "").split(",") if t])
        except ValueError:
            raise click.BadParameter(f"{value!r} is not a comma-separated list of token ids (e.g. 1,2,3)") from None
    return prompts


@click.command("generate")
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.option("--prompt-ids", "prompt_ids", multiple=True, callback=_token_ids,
              help="Prompt as comma-separated token ids; repeat for a batch.")
@click.option("--prompt", "prompts_text", multiple=True,
              help="Prompt text (needs tokenizer.json next to the source model or in MODEL); repeat for a batch.")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True, help="0 keeps all tokens.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--stop-id", "stop_ids", type=int, multiple=True, help="Token id that ends a sequence; repeatable.")
@click.option("--stats", "show_stats", is_flag=True,
              help="Print cache and timing figures (KV usage, prefix hits, preemptions, tokens/s, TTFT) to stderr.")
def generate_command(model: Path, prompt_ids, prompts_text, max_new_tokens, temperature, top_k, top_p, seed,
                     stop_ids, show_stats) -> None:
    """Generate tokens with MODEL, a `pagedc compile` output directory (or its manifest.json).

    One prompt streams its tokens on one line; several prompts stream one
    `index: token` line per token. A prompt longer than the model's maximum
    length (positions, pool, buckets) is an error; a sequence that reaches it
    stops early, as vLLM's do at max_model_len, and says so on stderr.

    \b
    Examples:
      pagedc generate model.paged --prompt-ids 1,2,3 --max-new-tokens 32
      pagedc generate model.paged --prompt-ids 1,2 --prompt-ids 7,8,9 --temperature 0.8 --top-p 0.9 --seed 1
      pagedc generate model.paged --prompt "Once upon a time"
    """
    tokenizer = _tokenizer(model) if prompts_text else None
    prompts = list(prompt_ids) + [tokenizer.encode(text).ids for text in prompts_text]
    if not prompts:
        raise click.UsageError("give at least one --prompt-ids or --prompt")
    engine = Engine.from_manifest(model)
    sampling = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    counts = _print_stream(engine.stream(prompts, max_new_tokens, sampling, stop_ids), len(prompts), tokenizer)
    for index, (prompt, count) in enumerate(zip(prompts, counts)):
        if count < max_new_tokens and len(prompt) + count >= engine.max_model_len:
            click.echo(f"pagedc: prompt {index} stopped after {count} new tokens (finish reason length): "
                       f"sequences end at {engine.max_model_len} tokens", err=True)
    if show_stats:
        figures = {**engine.manager.stats(), **engine.metrics()}
        click.echo(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in figures.items()}), err=True)


def _print_stream(stream, num_prompts: int, tokenizer) -> list[int]:
    """Print each token as it comes; returns the number of tokens of each prompt."""
    counts = [0] * num_prompts
    for index, token in stream:
        counts[index] += 1
        text = tokenizer.decode([token]) if tokenizer else str(token)
        if num_prompts == 1:
            click.echo(text if tokenizer else f"{text} ", nl=False)
        else:
            click.echo(f"{index}: {text}")
    if num_prompts == 1:
        click.echo()
    return counts


def _tokenizer(model: Path):
    directory = model if model.is_dir() else model.parent
    path = directory / "tokenizer.json"
    if not path.exists():
        raise click.UsageError(f"--prompt needs a tokenizer: no tokenizer.json in {directory}; "
                               "copy the model's tokenizer.json there or pass --prompt-ids")
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise click.UsageError("--prompt needs the `tokenizers` package: pip install tokenizers") from None
    return Tokenizer.from_file(str(path))
