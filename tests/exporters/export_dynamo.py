"""Export a saved HF decoder with torch.onnx's dynamo exporter (torch.export + onnxscript).

Run inside an exporter venv (needs torch, transformers, onnx, onnxscript):

    python export_dynamo.py --hf HF_DIR --out OUT_DIR   # writes OUT_DIR/model.onnx

The graph has the same I/O as Optimum's: inputs input_ids, attention_mask,
position_ids and past_key_values.{i}.key|value [B, Hkv, P, Dh]; outputs
logits and present.{i}.key|value [B, Hkv, P + S, Dh].  batch, sequence_length
and past_sequence_length are dynamic (P = 0, an empty cache, included; the
example inputs have P = 5).  The mask's width is Dim.AUTO (torch.export names
it s<N>; renamed "past_sequence_length + sequence_length" afterwards).
Works for llama, qwen2, phi3 and gpt2 (MHA: Hkv = heads; its config has no
num_key_value_heads/head_dim, see kv_dims; position_ids index its learned wpe).
"""

import argparse
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import onnx  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

OPSET = 18
MASK_WIDTH = "past_sequence_length + sequence_length"  # Optimum's name for the mask's width
EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST = 2, 3, 5  # all distinct and > 1: no 0/1 specialisation


class DecoderWithPast(torch.nn.Module):
    """forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present), flat tensors only."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.num_layers = model.config.num_hidden_layers

    def forward(self, input_ids, attention_mask, position_ids, *past):
        pairs = [(past[2 * i], past[2 * i + 1]) for i in range(self.num_layers)]
        cache = transformers.DynamicCache(pairs, config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
        )
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return (out.logits, *present)


def kv_dims(config) -> tuple:
    """(KV heads, head_dim); gpt2 (MHA) and phi3 have no head_dim field, gpt2 no num_key_value_heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def example_inputs(config):
    """Inputs of the traced call: (input_ids, attention_mask, position_ids, *past)."""
    b, s, p = EXAMPLE_BATCH, EXAMPLE_SEQ, EXAMPLE_PAST
    kv_heads, head_dim = kv_dims(config)
    kv_shape = (b, kv_heads, p, head_dim)
    past = []
    for _ in range(config.num_hidden_layers):
        past += [torch.randn(kv_shape), torch.randn(kv_shape)]
    ids = torch.randint(4, config.vocab_size, (b, s))
    mask = torch.ones(b, p + s, dtype=torch.int64)
    positions = torch.arange(p, p + s).expand(b, s)
    return (ids, mask, positions, *past)


def io_names(num_layers):
    kv = [f"{i}.{t}" for i in range(num_layers) for t in ("key", "value")]
    inputs = ["input_ids", "attention_mask", "position_ids", *(f"past_key_values.{n}" for n in kv)]
    return inputs, ["logits", *(f"present.{n}" for n in kv)]


def dynamic_shapes(num_layers):
    """Named dims for batch, sequence and past; the mask width is Dim.AUTO (= past + sequence)."""
    batch = torch.export.Dim("batch", min=1)
    seq = torch.export.Dim("sequence_length", min=1)
    past = torch.export.Dim("past_sequence_length", min=0)
    kv = {0: batch, 2: past}
    return (
        {0: batch, 1: seq},
        {0: batch, 1: torch.export.Dim.AUTO},
        {0: batch, 1: seq},
        tuple([kv] * (2 * num_layers)),  # *past is one argument to torch.export
    )


def name_mask_width(path: pathlib.Path) -> str:
    """Rename the mask width's free symbol (torch.export's "s<N>") to MASK_WIDTH; returns the old name."""
    model = onnx.load(str(path))
    mask = next(v for v in model.graph.input if v.name == "attention_mask")
    old = mask.type.tensor_type.shape.dim[1].dim_param
    assert old, "attention_mask's width is not symbolic"
    for value in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param == old:
                dim.dim_param = MASK_WIDTH
    onnx.save(model, str(path))
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    # sdpa (transformers 5's default, pinned here): torch decomposes it into MatMul/Softmax.
    model = transformers.AutoModelForCausalLM.from_pretrained(
        args.hf, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    config = model.config
    wrapper = DecoderWithPast(model).eval()
    inputs, outputs = io_names(config.num_hidden_layers)
    args.out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example_inputs(config),
            dynamo=True,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=dynamic_shapes(config.num_hidden_layers),
            opset_version=OPSET,
            external_data=False,
        )
    path = args.out / "model.onnx"
    program.save(str(path))
    old = name_mask_width(path)
    print(f"attention_mask width {old!r} renamed {MASK_WIDTH!r}")
    print(f"exported {config.model_type} with torch {torch.__version__} (dynamo, opset {OPSET}) to {args.out}")


if __name__ == "__main__":
    main()
