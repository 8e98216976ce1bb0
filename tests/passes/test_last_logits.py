"""rewrite_to_paged(last_logits=True): the lm_head on each row's last new token only.

Tier 1: the rewritten graph's shapes and ops, and find_lm_head's answer (found, or the exact reason) on
small hand-built heads. Tier 2: the last-only model's logits equal the all-positions model's last rows,
step for step on the same shuffled blocks: ragged (padded) prefill, decode, chunked prefill.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from pagedc.model_file import load_model
from pagedc.passes.last_logits import find_lm_head
from pagedc.passes.paged import LAYOUTS, rewrite_to_paged
from pagedc.passes.site import FORMS
from pagedc.runtime.feeds import SequenceStep
from tests.conftest import EXPORTS, LAST_LOGITS_TOLERANCE, paged_copy
from tests.exporters.fixtures import BATCH_ONE
from tests.paged_harness import PagedRunner, blocks_for, shuffled_blocks

BLOCK_SIZE, NUM_BLOCKS = 4, 48


# -- Tier 1 ---------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_logits_become_one_row_per_sequence(dense_model, form, layout):
    model, report = rewrite_to_paged(load_model(dense_model(form)), block_size=BLOCK_SIZE, layout=layout,
                                     last_logits=True)
    assert (report.logits, report.logits_reason) == ("last", "")
    logits = next(v for v in model.graph.outputs if v.name == "logits")
    assert [d if isinstance(d, int) else str(d) for d in logits.shape] == ["batch_size", 1, 97]
    argmax = next(n for n in model.graph if n.op_type == "ArgMax")
    assert argmax.inputs[0].name == "position_ids" and argmax.attributes["keepdims"].as_int() == 1
    gather = next(n for n, _ in argmax.outputs[0].uses())
    assert gather.op_type == "GatherND" and gather.attributes["batch_dims"].as_int() == 1
    onnx.checker.check_model(ir.serde.serialize_model(model))


def test_the_default_keeps_every_token(dense_model):
    model, report = rewrite_to_paged(load_model(dense_model("gqa")), block_size=BLOCK_SIZE)
    assert report.logits == "all"
    assert [str(d) if not isinstance(d, int) else d for d in model.graph.outputs[0].shape][1:] == ["sequence_length", 97]
    assert not any(n.op_type == "ArgMax" for n in model.graph)


def _head(*nodes, x_shape=("B", "S", 8), logits_shape=("B", "S", 5), initializers=(), outputs=()):
    """A graph x [B, S, 8] -> nodes -> logits, W [8, 5] an initializer (bias [5], scalars as needed)."""
    inits = [helper.make_tensor("W", TensorProto.FLOAT, [8, 5], np.ones(40)),
             helper.make_tensor("bias", TensorProto.FLOAT, [5], np.ones(5)),
             helper.make_tensor("cap", TensorProto.FLOAT, [], [30.0]), *initializers]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape) if x_shape else None)
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, list(logits_shape))]
    outs += [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]
    graph = helper.make_graph(list(nodes), "head", [x], outs, inits)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])).graph


def test_lm_head_is_found_through_a_bias_and_a_softcap():
    """Gemma-2's final softcap: tanh(logits / cap) * cap; a bias; a cast."""
    graph = _head(helper.make_node("MatMul", ["x", "W"], ["h"], name="lm_head"),
                  helper.make_node("Add", ["h", "bias"], ["b"], name="bias_add"),
                  helper.make_node("Div", ["b", "cap"], ["d"], name="cap_div"),
                  helper.make_node("Tanh", ["d"], ["t"], name="tanh"),
                  helper.make_node("Mul", ["cap", "t"], ["m"], name="cap_mul"),
                  helper.make_node("Cast", ["m"], ["logits"], name="cast", to=TensorProto.FLOAT))
    head = find_lm_head(graph)
    assert head.matmul.name == "lm_head"
    assert [n.name for n in head.chain] == ["bias_add", "cap_div", "tanh", "cap_mul", "cast"]


def test_lm_head_rank_comes_from_logits_when_activations_have_no_shape():
    """Optimum's exports carry no shapes on the lm_head input; W is 2-D, so x has logits' rank."""
    graph = _head(helper.make_node("MatMul", ["x", "W"], ["logits"], name="lm_head"), x_shape=None)
    assert find_lm_head(graph).matmul.name == "lm_head"


@pytest.mark.parametrize("nodes,kwargs,reason", [
    ([helper.make_node("Gemm", ["x", "W"], ["logits"], name="lm_head")], {"x_shape": ("N", 8)},
     "the lm_head is Gemm 'lm_head', whose activations are 2-D [B*S, hidden]"),
    ([helper.make_node("MatMul", ["x", "W"], ["logits"], name="lm_head")],
     {"x_shape": ("N", 8), "logits_shape": ("N", 5)}, "MatMul 'lm_head''s activations are rank 2, not [B, S, hidden]"),
    ([helper.make_node("MatMul", ["x", "W"], ["h"], name="lm_head"), helper.make_node("Softmax", ["h"], ["logits"],
                                                                                      name="probs")], {},
     "Softmax 'probs' between the lm_head and 'logits' is not an op pagedc knows to act on each token alike"),
    ([helper.make_node("MatMul", ["x", "W"], ["h"], name="lm_head"),
      helper.make_node("Add", ["h", "per_position"], ["logits"], name="bias_add")],
     {"initializers": [helper.make_tensor("per_position", TensorProto.FLOAT, [3, 5], np.ones(15))]},
     "Add 'bias_add' takes a constant of shape [3, 5]; only a scalar or a [vocab] vector"),
    ([helper.make_node("MatMul", ["x", "W"], ["h"], name="lm_head"), helper.make_node("Add", ["h", "h"], ["logits"],
                                                                                      name="double")], {},
     "Add 'double' after the lm_head has no constant operand"),
    ([helper.make_node("MatMul", ["x", "W"], ["h"], name="lm_head"), helper.make_node("Cast", ["h"], ["logits"], to=1)],
     {"outputs": ["h"]}, "'h' (input of Cast"),
    ([helper.make_node("MatMul", ["x", "x"], ["logits"], name="scores")], {},
     "MatMul 'scores' before 'logits' does not take a 2-D weight initializer as its second input"),
], ids=["gemm", "2d-matmul", "softmax", "per-position-constant", "shared-value", "also-an-output", "no-weight"])
def test_an_lm_head_not_found_with_certainty_says_why(nodes, kwargs, reason):
    found = find_lm_head(_head(*nodes, **kwargs))
    assert isinstance(found, str) and found.startswith(reason), found


def test_a_model_without_a_certain_lm_head_keeps_every_token(dense_model, tmp_path):
    model = onnx.load(str(dense_model("decomposed")))
    producer = next(n for n in model.graph.node if "logits" in n.output)
    producer.output[list(producer.output).index("logits")] = "raw_logits"
    model.graph.node.append(helper.make_node("LogSoftmax", ["raw_logits"], ["logits"], name="log_probs", axis=-1))
    path = tmp_path / "log_probs.onnx"
    onnx.save(model, str(path))
    paged, report = rewrite_to_paged(load_model(path), block_size=BLOCK_SIZE, last_logits=True)
    assert report.logits == "all"
    assert report.logits_reason.startswith("LogSoftmax 'log_probs' between the lm_head and 'logits' is not an op")
    assert not any(n.op_type == "ArgMax" for n in paged.graph)


# -- Tier 2 ---------------------------------------------------------------------------------
def _both(dense_path, tmp_path, layout, **options):
    """(all-positions runner, last-only runner) of one dense model, each on its own pools."""
    runners = []
    for last in (False, True):
        out = tmp_path / ("last" if last else "all")
        out.mkdir(exist_ok=True)
        path, report = paged_copy(dense_path, out, block_size=BLOCK_SIZE, layout=layout, last_logits=last, **options)
        assert report.logits == ("last" if last else "all")
        runners.append(PagedRunner(path, NUM_BLOCKS, BLOCK_SIZE, layout))
    return runners


def _blocks(free: list[int], num_tokens: int, layout: str) -> dict:
    return {"key_blocks": blocks_for(free, num_tokens, BLOCK_SIZE),
            "value_blocks": blocks_for(free, num_tokens, BLOCK_SIZE) if layout == "combined" else None}


def _assert_last_rows(every, last, counts, what):
    """last [B, 1, V] equals every [B, S, V] at each row's last new token (counts[b] - 1)."""
    assert last.shape == (every.shape[0], 1, every.shape[2]), what
    for b, n in enumerate(counts):
        np.testing.assert_allclose(last[b, 0], every[b, n - 1], **LAST_LOGITS_TOLERANCE, err_msg=f"{what}, row {b}")


def _run_steps(runners, chunks: list[list[list[int]]], blocks: list[dict]) -> None:
    """Each step gives row b the tokens chunks[step][b] (none: the row sits the step out)."""
    done = [0] * len(blocks)
    for step, tokens in enumerate(chunks):
        rows = [b for b, toks in enumerate(tokens) if toks]
        steps = [SequenceStep(positions=list(range(done[b], done[b] + len(tokens[b]))), **blocks[b]) for b in rows]
        every, last = (r.step([tokens[b] for b in rows], steps) for r in runners)
        _assert_last_rows(every, last, [len(tokens[b]) for b in rows], f"step {step}")
        for b in rows:
            done[b] += len(tokens[b])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("form", FORMS)
def test_last_rows_equal_all_positions_prefill_chunks_and_decode(dense_model, tmp_path, form, layout):
    """Ragged prefill (rows padded to 7), a second prompt chunk on some rows, then decode steps."""
    runners = _both(dense_model(form), tmp_path, layout, fuse_rotary=form == "gqa")
    rng = np.random.default_rng(4)
    prompts = [[int(t) for t in rng.integers(1, 97, n)] for n in (7, 1, 4)]
    free = shuffled_blocks(NUM_BLOCKS, seed=2)
    blocks = [_blocks(free, len(p) + 6 + 4, layout) for p in prompts]
    second = [[int(t) for t in rng.integers(1, 97, n)] for n in (6, 3, 0)]      # chunked prefill, row 2 waits
    decode = [[[int(t)] for t in rng.integers(1, 97, 3)] for _ in range(4)]
    _run_steps(runners, [prompts, second] + decode, blocks)


@pytest.mark.parametrize("arch,exporter", EXPORTS)
def test_last_rows_equal_all_positions_on_real_exports(exported_model_factory, tmp_path, arch, exporter):
    runners = _both(exported_model_factory(arch, exporter), tmp_path, "separate", fuse_rotary=True)
    rng = np.random.default_rng(5)
    lens = (6,) if exporter in BATCH_ONE else (9, 2, 5)
    prompts = [[int(t) for t in rng.integers(1, 1000, n)] for n in lens]
    free = shuffled_blocks(NUM_BLOCKS, seed=6)
    blocks = [_blocks(free, n + 2, "separate") for n in lens]
    decode = [[[int(t)] for t in rng.integers(1, 1000, len(lens))] for _ in range(2)]
    _run_steps(runners, [prompts] + decode, blocks)
