"""pagedc end to end on a built-in reference decoder: inspect, compile, generate, check.

    python examples/quickstart.py [--out quickstart-out]

1. builds a small Llama-style decoder with a dense KV cache (as HF exporters
   write it) into OUT/decoder.onnx;
2. `pagedc inspect` lists its attention layers;
3. `pagedc compile` rewrites them to paged attention into OUT/decoder.paged,
   `pagedc generate` runs it and `pagedc verify` compares its logits with the
   dense model's;
4. the runtime generates greedy tokens for a ragged batch of prompts;
5. the same prompts go through a dense-cache loop over the original model,
   and the tokens are compared.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import onnx

from pagedc.runtime import Engine
from pagedc.testing import DecoderConfig, build_decoder
from pagedc.verify.dense_runner import DenseRunner

PROMPTS = [[11, 12, 13, 14, 15, 16, 17], [42, 7], [5, 5, 6, 6, 7, 7, 8, 8, 9], [90, 3, 27]]


def pagedc(*args: str) -> str:
    """Run the pagedc CLI as a user would; progress goes to this terminal's stderr."""
    print(f"$ pagedc {' '.join(args)}", flush=True)
    result = subprocess.run([sys.executable, "-m", "pagedc", *args], check=True, stdout=subprocess.PIPE, text=True)
    print(result.stdout, end="", flush=True)
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("quickstart-out"))
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config = DecoderConfig(num_layers=4, hidden_size=128, num_heads=8, num_kv_heads=2, head_dim=16,
                           intermediate_size=256, vocab_size=257)
    source = args.out / "decoder.onnx"
    onnx.save(build_decoder(config, "decomposed"), str(source))
    print(f"built {source}: {config.num_layers} layers, {config.num_heads} heads / {config.num_kv_heads} KV heads")

    pagedc("inspect", str(source))
    paged_dir = Path(pagedc("compile", str(source), "-o", str(args.out / "decoder.paged"), "--force",
                            "--block-size", "16", "--kv-memory", "8MiB").strip())
    pagedc("generate", str(paged_dir), "--prompt-ids", ",".join(map(str, PROMPTS[0])), "--max-new-tokens", "8")
    pagedc("verify", str(paged_dir), str(source), "--batch", "3", "--decode-steps", "4")

    engine = Engine.from_manifest(paged_dir)
    tokens = engine.generate(PROMPTS, max_new_tokens=args.new_tokens)
    dense_loop = DenseRunner(source, optimize=True)   # what generation looks like without pagedc: past in, present out
    dense = [dense_loop.greedy(prompt, args.new_tokens) for prompt in PROMPTS]
    for i, (prompt, toks) in enumerate(zip(PROMPTS, tokens)):
        print(f"prompt {i} ({len(prompt)} tokens) -> {toks[:10]} ...")
    print("engine stats:", json.dumps({"steps": engine.times.num_steps, "overhead_share":
                                       round(engine.times.overhead_share, 3), **engine.manager.stats()}))
    if tokens != dense:
        sys.exit("MISMATCH: paged tokens differ from the dense-cache loop")
    print(f"OK: {len(PROMPTS)} prompts x {args.new_tokens} tokens identical to the dense-cache loop")


if __name__ == "__main__":
    main()
