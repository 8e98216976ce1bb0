"""pagedc.testing: small reference decoders with a dense KV cache, for tests and examples.

    config = DecoderConfig(num_kv_heads=1)                    # MQA; defaults: 2 layers, GQA 4/2 heads
    weights = make_weights(config)                             # seeded, logits O(1)
    model = build_decoder(config, "decomposed", weights)       # form A (HF export) | "gqa" (form B, genai)
    logits, present = reference_forward(config, weights, input_ids, attention_mask, position_ids, past)

The padding convention of each form and how ORT's GroupQueryAttention places
KV and picks rotary positions are documented in `pagedc.testing.reference`.
"""

from pagedc.testing.build import FORMS, build_decoder
from pagedc.testing.config import DecoderConfig
from pagedc.testing.generation import (
    PAD_TOKEN_ID,
    PADDING,
    Step,
    generate,
    prompt_batch,
    real_cache_entries,
    real_queries,
    steps_max_diff,
)
from pagedc.testing.positions import gqa_position_ids, hf_position_ids
from pagedc.testing.reference import reference_forward
from pagedc.testing.session import empty_past, make_session, run_step
from pagedc.testing.weights import make_weights

__all__ = [
    "FORMS",
    "PADDING",
    "PAD_TOKEN_ID",
    "DecoderConfig",
    "Step",
    "build_decoder",
    "empty_past",
    "generate",
    "gqa_position_ids",
    "hf_position_ids",
    "make_session",
    "make_weights",
    "prompt_batch",
    "real_cache_entries",
    "real_queries",
    "reference_forward",
    "run_step",
    "steps_max_diff",
]
