"""Build a tiny, randomly initialised HF decoder and a matching tokenizer.

Run inside an exporter venv (needs torch, transformers, tokenizers):

    python make_hf_model.py --arch llama|qwen2|gpt2|phi3|qwen3|mistral --out DIR

The saved directory is the single source all exporters read, so the fixtures
of one architecture share the same weights.  Works offline: the tokenizer is
trained here on a generated corpus, nothing is downloaded.

The archs (all 128 wide, 2 layers, 4 heads of 32, vocab 1000, 256 positions):
- llama, qwen2: separate q/k/v/o projections, rotary (theta 5e4), GQA with
  2 KV heads, RMSNorm, SwiGLU; qwen2 adds q/k/v biases;
- gpt2: learned absolute position embeddings (wpe), no rotary, one fused
  c_attn Conv1D producing [q | k | v] with a bias, MHA (4 KV heads), LayerNorm
  with biases, tanh-approximated GELU ("gelu_new") MLP of Conv1Ds;
- phi3: fused qkv_proj (no bias) producing [q | k | v] with GQA (4 query,
  2 KV heads), fused gate_up_proj, rotary (theta 5e4), RMSNorm;
  original_max_position_embeddings == max_position_embeddings, so no LongRoPE
  (and onnxruntime-genai's builder picks its plain Phi3MiniModel);
- qwen3: llama's layout plus per-head RMSNorm of q and k (q_norm, k_norm)
  between the projections and rotary, no q/k/v biases;
- mistral: llama's layout with a sliding window of SLIDING_WINDOW keys on
  every layer (shorter than the fixtures' prompts + decode steps, so the
  window really drops keys).
"""

import argparse
import json
import os
import pathlib
import random

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

VOCAB = 1000  # differs from every hidden width, so exporters find lm_head by shape
ROPE_THETA = 5e4  # non-default, so a lost theta shows up in the logits
# ids 0..3; transformers 5 loads qwen2 dirs as Qwen2Tokenizer, which appends
# "<|endoftext|>" as unk (id 1000, out of range) unless the vocab already has it.
SPECIALS = ["<pad>", "<s>", "</s>", "<|endoftext|>"]

DIMS = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    intermediate_size=256,
    max_position_embeddings=256,
    rms_norm_eps=1e-6,
    # 0.1 instead of 0.02 keeps logits O(1), so an absolute tolerance means something.
    initializer_range=0.1,
    tie_word_embeddings=False,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)


ARCHS = ("llama", "qwen2", "gpt2", "phi3", "qwen3", "mistral")
ROPE_ARCHS = ("llama", "qwen2", "phi3", "qwen3", "mistral")
SLIDING_WINDOW = 5  # mistral: each query sees itself and the 4 keys before it


def make_config(arch: str):
    """The config of one architecture, with rope theta set the transformers-5 way."""
    rope = {"rope_type": "default", "rope_theta": ROPE_THETA}
    if arch == "llama":
        return transformers.LlamaConfig(**DIMS, rope_parameters=rope)
    if arch == "qwen2":
        return transformers.Qwen2Config(**DIMS, rope_parameters=rope, use_sliding_window=False)
    if arch == "qwen3":
        return transformers.Qwen3Config(**DIMS, rope_parameters=rope, use_sliding_window=False, attention_bias=False)
    if arch == "mistral":
        return transformers.MistralConfig(**DIMS, rope_parameters=rope, sliding_window=SLIDING_WINDOW)
    if arch == "phi3":
        # Phi3Config has no head_dim field: head_dim = hidden_size / num_attention_heads = 32.
        dims = {k: v for k, v in DIMS.items() if k != "head_dim"}
        assert dims["hidden_size"] // dims["num_attention_heads"] == DIMS["head_dim"]
        return transformers.Phi3Config(
            **dims,
            original_max_position_embeddings=DIMS["max_position_embeddings"],  # no LongRoPE
            rope_parameters={**rope, "partial_rotary_factor": 1.0},
            sliding_window=None,
        )
    if arch == "gpt2":
        # GPT-2's own field names; MHA: head_dim = n_embd / n_head = 32, no separate KV heads.
        assert DIMS["hidden_size"] // DIMS["num_attention_heads"] == DIMS["head_dim"]
        return transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=DIMS["hidden_size"],
            n_layer=DIMS["num_hidden_layers"],
            n_head=DIMS["num_attention_heads"],
            n_inner=DIMS["intermediate_size"],
            n_positions=DIMS["max_position_embeddings"],
            activation_function="gelu_new",
            layer_norm_epsilon=1e-5,
            **{k: DIMS[k] for k in ("initializer_range", "tie_word_embeddings")},
            **{k: DIMS[k] for k in ("pad_token_id", "bos_token_id", "eos_token_id")},
        )
    raise ValueError(f"unknown arch {arch!r}")


def perturb_defaults(model) -> None:
    """Move norm weights off 1 and biases off 0, so exporters must carry them."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name or ".ln_" in name:  # gpt2: ln_1, ln_2, ln_f
                p.add_(torch.randn(p.shape, generator=gen) * 0.1)


def add_legacy_rope_theta(out: pathlib.Path) -> None:
    """Also write top-level rope_theta: transformers 4.57 ignores rope_parameters."""
    path = out / "config.json"
    cfg = json.loads(path.read_text())
    assert cfg["rope_parameters"]["rope_theta"] == ROPE_THETA, cfg
    cfg["rope_theta"] = ROPE_THETA
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def corpus(n_lines: int = 4000):
    """A deterministic synthetic text with enough distinct words for 1000 merges."""
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghklmnprstvz" for b in ["a", "e", "i", "o", "u", "ai", "ou"]]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(3000)]
    for _ in range(n_lines):
        yield " ".join(rng.choice(words) for _ in range(rng.randint(4, 16))) + "."


def make_tokenizer(out: pathlib.Path) -> None:
    """Train a byte-level BPE tokenizer of exactly VOCAB tokens and save it HF-style."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.get_vocab_size() <= VOCAB, tok.get_vocab_size()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<|endoftext|>"
    )
    fast.save_pretrained(out)
    # transformers 5 writes "TokenizersBackend", a class transformers 4.57 lacks.
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", required=True, choices=ARCHS)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(make_config(args.arch))
    perturb_defaults(model)
    model.save_pretrained(args.out)
    if args.arch in ROPE_ARCHS:
        add_legacy_rope_theta(args.out)
    make_tokenizer(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(f"saved {args.arch} ({n} params, transformers {transformers.__version__}) to {args.out}")


if __name__ == "__main__":
    main()
