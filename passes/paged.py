"""`rewrite_to_paged`: turn every dense-KV attention layer into paged attention (DESIGN.md §3).

Steps: detect sites -> refuse anything not pageable (naming each layer) ->
add the paged inputs -> rewrite each layer onto its pool(s) -> [last_logits:
the lm_head over each row's last new token only (last_logits.py)] -> drop the
dense KV inputs/outputs and attention_mask -> remove dead nodes -> check the
postcondition (no dense KV left, every pool written in place).

Pool names, per layer i: separate `key_cache.{i}` / `value_cache.{i}` (outputs
`key_cache_out.{i}` / `value_cache_out.{i}`); combined `kv_cache.{i}` (output
`kv_cache_out.{i}`). Pools are [num_blocks, Hkv, block_size, Dh].
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir
import onnx_ir.passes.common as common_passes

from pagedc.errors import ModelError
from pagedc.passes.detect import find_attention_sites
from pagedc.passes.last_logits import keep_last_logits
from pagedc.passes.paged_builder import PagedBuilder
from pagedc.passes.rewrite_attention import check_attention, rewrite_attention
from pagedc.passes.rewrite_decomposed import check_decomposed, rewrite_decomposed
from pagedc.passes.rewrite_gqa import check_gqa, rewrite_gqa
from pagedc.passes.rewrite_mha import check_mha, rewrite_mha
from pagedc.passes.site import AttentionSite, FusedNodes

LAYOUTS = ("separate", "combined")
_REWRITERS = {
    "decomposed": (check_decomposed, rewrite_decomposed),
    "gqa": (check_gqa, rewrite_gqa),
    "attention": (check_attention, rewrite_attention),
    "mha": (check_mha, rewrite_mha),
}


class PagedRewriteError(ModelError):
    """The model cannot be paged; `problems` holds one line per layer or input, with the reason."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"cannot rewrite to paged attention ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class PoolNames:
    """One layer's pool inputs and outputs, field for field pagedc.manifest.LayerPools (which passes cannot
    import: pagedc.build.compile turns these into LayerPools)."""

    layer: int
    inputs: tuple[str, ...]    # ("key_cache.i", "value_cache.i") or ("kv_cache.i",)
    outputs: tuple[str, ...]   # ("key_cache_out.i", "value_cache_out.i") or ("kv_cache_out.i",)


def pool_names(layer: int, layout: str) -> PoolNames:
    if layout == "combined":
        return PoolNames(layer, (f"kv_cache.{layer}",), (f"kv_cache_out.{layer}",))
    return PoolNames(layer, (f"key_cache.{layer}", f"value_cache.{layer}"),
                     (f"key_cache_out.{layer}", f"value_cache_out.{layer}"))


@dataclass
class RewriteReport:
    """What the rewrite did: layers per source form, layers per optional rule, and the ABI it produced."""

    num_layers: int = 0
    forms: dict[str, int] = field(default_factory=dict)        # source form -> layers rewritten
    rules: dict[str, int] = field(default_factory=dict)        # optional rule (e.g. grouped attention) -> layers
    removed_inputs: list[str] = field(default_factory=list)
    removed_outputs: list[str] = field(default_factory=list)
    added_inputs: list[str] = field(default_factory=list)
    pools: list[PoolNames] = field(default_factory=list)
    num_heads: int = 0
    num_kv_heads: int = 0
    head_dim: int = 0
    kv_dtype: str = ""
    block_size: int = 0
    layout: str = "separate"
    added_position_ids: bool = False
    logits: str = "all"          # "last": logits [B, 1, V] of each row's last new token; "all": [B, S, V]
    logits_reason: str = ""      # with last_logits asked for: why logits stay "all"


def rewrite_to_paged(model: ir.Model, *, block_size: int = 16, layout: str = "separate",
                     num_blocks: int | None = None, fuse_rotary: bool = False,
                     last_logits: bool = False) -> tuple[ir.Model, RewriteReport]:
    """Rewrite `model` in place; `num_blocks` fixes the pools' first dim (None keeps it symbolic).

    fuse_rotary: rotary that pagedc builds itself (form B) uses com.microsoft.RotaryEmbedding, one op
    per Q and K; for ONNX Runtime targets. Off, it is built from plain ops (MIGraphX lowering).
    last_logits: the lm_head runs on each row's last new token only, logits [B, 1, V] (report.logits
    "last"); where the lm_head is not found with certainty logits stay [B, S, V] and
    report.logits_reason says why. Off, logits are [B, S, V].
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    graph = model.graph
    sites = _pageable_sites(model)
    kv_inputs = [name for s in sites for name in (s.past_key, s.past_value)]
    attention_mask = _graph_input(graph, "attention_mask")
    builder = PagedBuilder(graph, block_size, layout, _graph_input(graph, "position_ids"), fuse_rotary)
    report = _start_report(sites, block_size, layout, builder)
    for site in sites:
        _bypass_row_guard(site)
        names = pool_names(site.layer, layout)
        pools = _add_pools(builder, site, names, num_blocks)
        outs = _REWRITERS[site.form][1](site, builder, pools)
        for name in (site.past_key, site.past_value):
            builder.replace_past_shapes(_graph_input(graph, name), site.num_kv_heads, site.head_dim)
        _name_pool_outputs(graph, outs, names, pools[0])
        report.pools.append(names)
        report.forms[site.form] = report.forms.get(site.form, 0) + 1
    if last_logits:
        result = keep_last_logits(builder)
        report.logits, report.logits_reason = result.logits, result.reason
    report.rules.update(builder.rule_counts)
    passed_through = _remove_cache_passthroughs(graph)
    _cleanup(model)
    report.removed_inputs = _remove_inputs(graph, kv_inputs)
    report.removed_outputs = [n for s in sites for n in (s.present_key, s.present_value)]
    report.removed_inputs += [name for name, _ in passed_through]
    report.removed_outputs += [name for _, name in passed_through]
    if attention_mask is not None:
        report.removed_inputs += _remove_attention_mask(graph, attention_mask)
    _check_postcondition(model, report, kv_inputs)
    return model, report


def _pageable_sites(model: ir.Model) -> list[AttentionSite]:
    detection = find_attention_sites(model)
    problems = [f"{miss}" for miss in detection.misses]
    for site in detection.sites:
        reason = _why_not_pageable(site)
        if reason:
            problems.append(f"layer {site.layer} ({site.form}, {site.past_key}): {reason}")
    if not detection.sites and not problems and detection.prefill_only:
        problems.append(f"no attention layer with a dense KV cache found: {detection.prefill_only}")
    elif not detection.sites and not problems:
        problems.append("no attention layer with a dense KV cache found (run `pagedc inspect` to see what the model has)")
    shapes = {(s.num_kv_heads, s.head_dim) for s in detection.sites}
    if len(shapes) > 1:
        problems.append(f"layers differ in (KV heads, head dim): {sorted(shapes)}; the paged ABI gives every "
                        "layer's pool one shape")
    if problems:
        raise PagedRewriteError(problems)
    return detection.sites


def _why_not_pageable(site: AttentionSite) -> str | None:
    if site.form not in _REWRITERS:
        return f"source form '{site.form}' is detected but not rewritten yet"
    if not site.mask.is_pageable:
        return (f"mask is {str(site.mask)!r}; the paged mask is causal (optionally windowed): "
                "a custom or bias mask would silently change results")
    if not (site.num_kv_heads and site.head_dim):
        return "past_key needs static KV-head and head dims ([B, Hkv, P, Dh])"
    if not site.num_heads and isinstance(site.nodes, FusedNodes):
        return (f"{site.nodes.op.op_type}'s number of query heads is unknown (no num_heads / q_num_heads "
                "attribute, and the query is not [B, H, S, Dh])")
    return _REWRITERS[site.form][0](site)


def _bypass_row_guard(site: AttentionSite) -> None:
    """Where(no key visible, 0, out) -> out: under the paged mask every real query sees its own key
    (mask_facts.row_guard); the guard would keep the dense mask, attention_mask and past shapes alive."""
    guard = site.nodes.row_guard
    if guard is not None:
        guard.outputs[0].replace_all_uses_with(guard.inputs[2])


def _remove_cache_passthroughs(graph: ir.Graph) -> list[tuple[str, str]]:
    """Drop cache state the graph only copies from input to output; returns (input, output) name pairs.

    transformers' exports of sliding-window models carry each layer's scalar
    `input.cache.layers.{i}._sliding_window_tensor` through an Identity to
    `output.cache.layers.{i}._sliding_window_tensor`; the window itself is a
    constant in the mask (mask_facts), and the paged model has no dense cache
    state to carry.
    """
    removed = []
    for value in list(graph.inputs):
        users = [node for node, _ in value.uses()]
        if "cache" not in (value.name or "") or not users:
            continue
        outs = [node.outputs[0] for node in users if node.op_type == "Identity"]
        if len(outs) != len(users) or not all(o.is_graph_output() and not list(o.uses()) for o in outs):
            continue
        for out in outs:
            graph.outputs.remove(out)
            removed.append((value.name, out.name))
        for node in users:
            graph.remove(node, safe=True)
        graph.inputs.remove(value)
    return removed


def _graph_input(graph: ir.Graph, name: str) -> ir.Value | None:
    return next((v for v in graph.inputs if v.name == name), None)


def _start_report(sites: list[AttentionSite], block_size: int, layout: str, builder: PagedBuilder) -> RewriteReport:
    first = sites[0]
    past = _graph_input(builder.graph, first.past_key)
    return RewriteReport(
        num_layers=len(sites), num_heads=first.num_heads or 0, num_kv_heads=first.num_kv_heads,
        head_dim=first.head_dim, kv_dtype=past.dtype.name.lower(), block_size=block_size, layout=layout,
        added_inputs=["block_table", "slot_mapping", "context_lens"] + (["position_ids"] if builder.added_position_ids else []),
        added_position_ids=builder.added_position_ids,
    )


def _add_pools(builder: PagedBuilder, site: AttentionSite, names: PoolNames, num_blocks: int | None) -> list[ir.Value]:
    past = _graph_input(builder.graph, site.past_key)
    dims = (num_blocks or "num_blocks", site.num_kv_heads, site.head_dim, past.dtype)
    return [builder.pool_input(name, *dims) for name in names.inputs]


def _name_pool_outputs(graph: ir.Graph, outs: list[ir.Value], names: PoolNames, pool: ir.Value) -> None:
    for out, name in zip(outs, names.outputs):
        out.name = name
        out.dtype, out.shape = pool.dtype, pool.shape
        graph.outputs.append(out)


def _remove_inputs(graph: ir.Graph, names: list[str]) -> list[str]:
    removed = []
    for name in names:
        value = _graph_input(graph, name)
        if value is not None and not list(value.uses()):
            graph.inputs.remove(value)
            removed.append(name)
    return removed


def _remove_attention_mask(graph: ir.Graph, mask: ir.Value) -> list[str]:
    users = [n for n, _ in mask.uses()]
    if users:
        names = ", ".join(f"{n.op_type} '{n.name}'" for n in users[:5])
        raise PagedRewriteError([f"attention_mask is still used after paging by {names} "
                                 "(e.g. positions derived from it); pass position_ids explicitly in the export"])
    graph.inputs.remove(mask)
    return ["attention_mask"]


def _cleanup(model: ir.Model) -> None:
    common_passes.RemoveUnusedNodesPass()(model)
    common_passes.TopologicalSortPass()(model)
    common_passes.NameFixPass()(model)
    common_passes.RemoveUnusedOpsetsPass()(model)


def _check_postcondition(model: ir.Model, report: RewriteReport, dense_kv_inputs: list[str]) -> None:
    """No dense KV input or present output is left; each pool feeds exactly one ScatterND."""
    graph = model.graph
    problems = [f"dense KV input '{n}' is still in the graph" for n in dense_kv_inputs if _graph_input(graph, n)]
    problems += [f"present output '{v.name}' is still in the graph" for v in graph.outputs if v.name in report.removed_outputs]
    for pools in report.pools:
        for name in pools.inputs:
            users = [n.op_type for n, _ in _graph_input(graph, name).uses()]
            if users != ["ScatterND"]:
                problems.append(f"pool '{name}' must feed exactly one ScatterND (in-place update), feeds {users}")
    if problems:
        raise PagedRewriteError(problems)
