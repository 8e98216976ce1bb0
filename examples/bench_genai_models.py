"""The models of bench_vs_genai.py: one random-weight HF Llama, its exports, their pagedc compiles.

    make_hf_llama(shape, dir)        HF LlamaForCausalLM + a word-level tokenizer, saved (torch, transformers 5)
    export_genai(hf, out)            onnxruntime-genai's model builder (fp32, cpu): GroupQueryAttention graph
    export_optimum(hf, out)          optimum-onnx's export (decomposed attention), in tests/exporters' optimum venv
    compile_paged(onnx, out, blocks) pagedc's compile_model, ONNX Runtime target

Everything runs offline. Weights are drawn with std 1/sqrt(fan_in) (embeddings
std 1), so hidden states stay O(1) through the layers and greedy argmaxes are
not near-ties: both sides must then pick the same tokens. eos (id 2) gets a
zero lm_head row, so no greedy run ever ends early.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Shape:
    num_layers: int = 12
    hidden_size: int = 1024
    num_heads: int = 16
    num_kv_heads: int = 4
    intermediate_size: int = 2816
    vocab_size: int = 32003
    max_positions: int = 4096

    def describe(self) -> str:
        return (f"{self.num_layers} layers, hidden {self.hidden_size}, {self.num_heads} heads / {self.num_kv_heads} KV "
                f"heads, intermediate {self.intermediate_size}, vocab {self.vocab_size}, fp32")


QUICK_SHAPE = Shape(num_layers=4, hidden_size=256, num_heads=4, num_kv_heads=2, intermediate_size=704)


def make_hf_llama(shape: Shape, out: Path, seed: int = 0) -> int:
    """Save a random LlamaForCausalLM of `shape` and a tokenizer to `out`; returns the parameter count."""
    import torch
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads, num_key_value_heads=shape.num_kv_heads,
        intermediate_size=shape.intermediate_size, max_position_embeddings=shape.max_positions,
        rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 2:          # [out, in]: std 1/sqrt(fan_in); embeddings [vocab, hidden]: std 1
                param.normal_(0.0, 1.0 if "embed_tokens" in name else 1.0 / math.sqrt(param.shape[1]))
        # NOTE: eos's logit is then exactly 0 while the largest of ~N(0, 1) logits is ~4: greedy never picks
        # eos, so genai (which stops on it) and pagedc (given no stop tokens) generate exactly what is asked.
        model.lm_head.weight[config.eos_token_id].zero_()
    model.save_pretrained(out)
    _add_legacy_rope_theta(out / "config.json")
    _save_tokenizer(out, shape.vocab_size)
    return sum(p.numel() for p in model.parameters())


def _add_legacy_rope_theta(path: Path) -> None:
    """transformers 4.57 (optimum's) reads top-level rope_theta, transformers 5 writes rope_parameters."""
    config = json.loads(path.read_text())
    config["rope_theta"] = config.get("rope_parameters", {}).get("rope_theta", 10000.0)
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def _save_tokenizer(out: Path, vocab_size: int) -> None:
    """A word-level tokenizer of exactly vocab_size ids; the builders want one, the benchmark feeds ids."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab_size)}}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="<unk>")
    fast.save_pretrained(out)
    config_path = out / "tokenizer_config.json"   # transformers 4.57 lacks transformers 5's "TokenizersBackend"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def export_genai(hf: Path, out: Path, log_path: Path) -> Path:
    """onnxruntime-genai's builder of `hf` into `out` (model.onnx + genai_config.json); returns out/model.onnx."""
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf), "-o", str(out),
           "-p", "fp32", "-e", "cpu", "-c", str(out.parent / "genai-cache")]
    _run(cmd, log_path, "onnxruntime-genai model builder")
    return out / "model.onnx"


def export_optimum(hf: Path, out: Path, log_path: Path) -> Path:
    """optimum-onnx's export of `hf` (decomposed attention), run in tests/exporters' optimum venv.

    NOTE: optimum-onnx pins transformers < 4.58 while the genai builder needs transformers 5, so it cannot
    share this venv; tests/exporters/fixtures.py already builds (and caches) a pinned optimum venv.
    """
    sys.path.insert(0, str(ROOT))
    from tests.exporters import fixtures

    root = fixtures.cache_dir()
    with fixtures.build_lock(root):
        venv = fixtures.ensure_venv(root, "optimum")
    cmd = [str(fixtures.python_of(venv)), "-m", "optimum.commands.optimum_cli", "export", "onnx", "-m", str(hf),
           "--task", "text-generation-with-past", str(out)]
    _run(cmd, log_path, "optimum export", env=fixtures.subprocess_env())
    return out / "model.onnx"


def compile_paged(source: Path, out: Path, num_blocks: int, progress) -> Path:
    """pagedc compile of `source` (ONNX Runtime target, block size 16) into `out`; returns out."""
    from pagedc.build import CompileOptions, compile_model

    compile_model(source, out, CompileOptions(block_size=16, num_blocks=num_blocks, target="onnx", overwrite=True),
                  progress=progress)
    return out


def _run(cmd: list[str], log_path: Path, what: str, env: dict | None = None) -> None:
    env = env or {**os.environ, "HF_HUB_OFFLINE": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in log_path.read_text(errors="replace").splitlines() if "%|" not in ln]
        raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n(log: {log_path})\n"
                           + "\n".join(lines[-15:]))
