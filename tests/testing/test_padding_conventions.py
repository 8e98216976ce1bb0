"""How each form treats a padded batch, on ORT and in the reference.

Form A (HF) pads left and masks by column; form B (genai + GroupQueryAttention)
pads right and keeps each sequence compact from cache index 0. Either way a
padded batch must equal running every sequence alone.
"""

from functools import partial

import numpy as np
import pytest

from pagedc.testing import (
    PADDING,
    DecoderConfig,
    build_decoder,
    empty_past,
    generate,
    gqa_position_ids,
    hf_position_ids,
    make_session,
    make_weights,
    prompt_batch,
    real_queries,
    reference_forward,
    run_step,
)

CONFIG = DecoderConfig(sliding_window=None)
WEIGHTS = make_weights(CONFIG)
LENGTHS = [6, 3, 1]
NEXT_IDS = np.random.default_rng(7).integers(1, CONFIG.vocab_size, (3, len(LENGTHS)))  # [num_decode, B]


def forward(backend: str, form: str):
    if backend == "ort":
        return partial(run_step, make_session(build_decoder(CONFIG, form, WEIGHTS)))
    return partial(reference_forward, CONFIG, WEIGHTS, form=form)


def real_logits_per_sequence(steps) -> list[np.ndarray]:
    """Per sequence: logits of its real tokens over all steps, `[num_real_tokens, V]`."""
    return [
        np.concatenate([step.logits[b][real_queries(step)[b]] for step in steps]) for b in range(len(LENGTHS))
    ]


def solo_runs(backend: str, form: str, padding: str) -> list[np.ndarray]:
    """Each sequence alone (batch 1, no padding), same tokens as the batch."""
    input_ids, attention_mask = prompt_batch(CONFIG, LENGTHS, padding=padding)
    fwd = forward(backend, form)
    out = []
    for b in range(len(LENGTHS)):
        ids = input_ids[b : b + 1, attention_mask[b] == 1]  # [1, L_b]
        steps = generate(fwd, form, ids, np.ones_like(ids), NEXT_IDS[:, b : b + 1], empty_past(CONFIG, 1))
        out.append(np.concatenate([s.logits[0] for s in steps]))
    return out


def batched_run(backend: str, form: str, padding: str) -> list[np.ndarray]:
    input_ids, attention_mask = prompt_batch(CONFIG, LENGTHS, padding=padding)
    steps = generate(forward(backend, form), form, input_ids, attention_mask, NEXT_IDS, empty_past(CONFIG, 3))
    return real_logits_per_sequence(steps)


@pytest.mark.parametrize("backend", ["ort", "reference"])
@pytest.mark.parametrize("form", ["decomposed", "gqa"])
def test_padded_batch_equals_each_sequence_alone(form, backend):
    batched = batched_run(backend, form, PADDING[form])
    for b, solo in enumerate(solo_runs(backend, form, PADDING[form])):
        assert batched[b].shape == (LENGTHS[b] + len(NEXT_IDS), CONFIG.vocab_size)
        np.testing.assert_allclose(batched[b], solo, atol=1e-4, err_msg=f"sequence {b}")


def test_both_forms_are_the_same_model():
    decomposed = solo_runs("ort", "decomposed", "left")
    gqa = solo_runs("ort", "gqa", "right")
    for b in range(len(LENGTHS)):
        np.testing.assert_allclose(decomposed[b], gqa[b], atol=1e-4, err_msg=f"sequence {b}")


def test_gqa_with_left_padding_is_wrong():
    """GQA counts sum(mask) tokens from cache index 0, so left pads are read as the sequence."""
    batched = batched_run("ort", "gqa", "left")
    solo = solo_runs("ort", "gqa", "left")
    assert np.abs(batched[0] - solo[0]).max() < 1e-4  # the longest prompt has no padding
    assert np.abs(batched[1] - solo[1]).max() > 1e-1
    assert np.abs(batched[2] - solo[2]).max() > 1e-1


@pytest.mark.parametrize("backend", ["ort", "reference"])
def test_gqa_batched_continuation_is_rejected(backend):
    input_ids, attention_mask = prompt_batch(CONFIG, [4, 4], padding="right")
    fwd = forward(backend, "gqa")
    _, present = fwd(input_ids, attention_mask, None, empty_past(CONFIG, 2))
    with pytest.raises(Exception, match="batch_size must be 1 when sequence_length > 1"):
        fwd(input_ids[:, :2], np.ones((2, 6), np.int64), None, present)


def test_gqa_continuation_of_one_sequence():
    """Batch 1: a 7-token prompt as chunks 4 + 3 equals one 7-token prefill (GQA's 'subsequent prompt')."""
    input_ids, mask = prompt_batch(CONFIG, [7], padding="right")
    full = {b: forward(b, "gqa")(input_ids, mask, None, empty_past(CONFIG, 1)) for b in ("ort", "reference")}
    for backend in ("ort", "reference"):
        fwd = forward(backend, "gqa")
        _, present = fwd(input_ids[:, :4], mask[:, :4], None, empty_past(CONFIG, 1))
        logits, present = fwd(input_ids[:, 4:], mask, None, present)
        np.testing.assert_allclose(logits, full["reference"][0][:, 4:], atol=1e-4)
        np.testing.assert_allclose(present[1][0], full["reference"][1][1][0], atol=1e-4)


def test_decomposed_chunked_prefill_of_a_padded_batch():
    """Form A takes any past length with any number of new tokens, padding included."""
    input_ids, mask = prompt_batch(CONFIG, LENGTHS, padding="left")
    results = {}
    for backend in ("ort", "reference"):
        fwd, past, outs = forward(backend, "decomposed"), empty_past(CONFIG, 3), []
        for cols in (slice(0, 4), slice(4, 6)):
            step_mask = mask[:, : cols.stop]  # [B, P + S]
            logits, past = fwd(input_ids[:, cols], step_mask, hf_position_ids(step_mask, cols.start), past)
            outs.append((logits, past))
        results[backend] = outs
    for (ort_logits, ort_past), (ref_logits, ref_past) in zip(results["ort"], results["reference"]):
        assert np.abs(ort_logits - ref_logits).max() <= 1e-4
        assert max(np.abs(o - r).max() for o_kv, r_kv in zip(ort_past, ref_past) for o, r in zip(o_kv, r_kv)) <= 1e-4
    full, _ = reference_forward(CONFIG, WEIGHTS, input_ids, mask, hf_position_ids(mask, 0), empty_past(CONFIG, 3))
    real = mask[:, 4:] == 1
    np.testing.assert_allclose(results["ort"][1][0][real], full[:, 4:][real], atol=1e-4)


def test_position_helpers_worked_examples():
    left = np.array([[1, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(hf_position_ids(left, 0), [[0, 1, 2], [1, 1, 0]])
    np.testing.assert_array_equal(hf_position_ids(np.c_[left, [1, 1]], 3), [[3], [1]])
    right = np.array([[1, 1, 1], [1, 0, 0]])
    np.testing.assert_array_equal(gqa_position_ids(right, 0), [[0, 1, 2], [0, 1, 2]])
    np.testing.assert_array_equal(gqa_position_ids(np.c_[right, [1, 1]], 3), [[3], [1]])
    np.testing.assert_array_equal(gqa_position_ids(np.ones((1, 7)), 4), [[4, 5, 6]])
