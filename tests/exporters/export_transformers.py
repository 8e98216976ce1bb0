"""Export a saved HF decoder with transformers' own exporter, `transformers.exporters.OnnxExporter`.

Run inside the transformers exporter venv (transformers >= 5.23: torch.export
-> torch.onnx dynamo -> onnxscript optimizer, optionally onnxscript's ORT fusions):

    python export_transformers.py --hf HF_DIR --out OUT_DIR --variant plain|ort|b1

writes OUT_DIR/decode.onnx (+ .data), prefill.onnx, export.json, as
`ExportedModel.save_pretrained` does.  decode.onnx is the multi-token decode
graph (`multi_token_decode=True`): from an empty cache it also serves
prefill, so it is the graph a paged engine compiles.  Variants:
- plain: OnnxConfig(dynamic=True, ort_fusions=None), example batch 2 (padded);
- ort:   OnnxConfig(dynamic=True, ort_fusions="cpu"), example batch 2: dynamic
         batch, so attention stays decomposed with com.microsoft.RotaryEmbedding;
- b1:    OnnxConfig(dynamic=True, ort_fusions="cpu"), example batch 1: torch.export
         specialises the batch to 1 and the fusions emit GroupQueryAttention with
         the causal mask as attention_bias (no attention_mask input).
I/O: input_ids, [attention_mask,] position_ids, input.cache.layers.{i}.keys|values
[B, "2", P, "32"] (static dims written as numeral dim_params) ->
logits, output.cache.layers.{i}.keys|values; sliding-window models also carry
input/output.cache.layers.{i}._sliding_window_tensor (a scalar passed through).
"""

import argparse
import os
import pathlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.exporters import OnnxConfig, OnnxExporter  # noqa: E402

VARIANTS = {"plain": (None, 2), "ort": ("cpu", 2), "b1": ("cpu", 1)}  # variant -> (ort_fusions, example batch)
EXAMPLE_LEN = 5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hf", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--variant", required=True, choices=sorted(VARIANTS))
    args = ap.parse_args()
    fusions, batch = VARIANTS[args.variant]
    model = transformers.AutoModelForCausalLM.from_pretrained(args.hf, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(4, model.config.vocab_size, (batch, EXAMPLE_LEN), generator=gen)
    mask = torch.ones(batch, EXAMPLE_LEN, dtype=torch.int64)
    mask[1:, :2] = 0  # batch 2: the second row left-padded, as generate() pads
    config = OnnxConfig(dynamic=True, ort_fusions=fusions)
    exported = OnnxExporter().export_for_generation(
        model, {"input_ids": ids, "attention_mask": mask}, config, multi_token_decode=True
    )
    exported.save_pretrained(args.out)
    print(f"exported {model.config.model_type} ({args.variant}) with transformers {transformers.__version__} "
          f"to {args.out}")


if __name__ == "__main__":
    main()
