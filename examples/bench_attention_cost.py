"""Unprofiled cost of the paged attention in a decode step, found by cutting it out of the compiled graph.

    python examples/bench_attention_cost.py --work DIR [--prompt 256] [--threads 1,2] [--rounds 30]

DIR is a --work directory of bench_vs_genai.py: genai/ (onnxruntime-genai's
export) and paged/ (pagedc's compile of it, separate K/V pools). ORT's
profiler adds ~10 µs per kernel (see bench_genai_profile.py), which swamps
small ops, so this times raw session runs instead: IOBinding, no engine, no
profiler, batch 1, one new token at context P + 1, four graphs at each
thread count, all taking turns round by round (medians):

    genai           genai's model.onnx, past and present sharing one buffer (as genai runs it)
    paged           pagedc's compiled model
    read only       each layer's attention output replaced by a slice of its QKV projection;
                    the two GatherND reads of the pool kept alive as extra graph outputs
    no attention    the same without the reads (the pool writes and everything else stay)

and the differences: pagedc's attention = paged - no attention, of which the
context read = read only - no attention; genai's attention by the same
subtraction (genai - no attention), which takes both graphs' other ops as
equal. The cut graphs are written next to the weights (ORT loads external
data only from the model's own directory) and removed afterwards.

NOTE: with more than one thread, each small op between two parallel sections
costs more. ORT's workers spin after a parallel MatMul, and a tiny Add run
meanwhile on the calling thread took 0.8-2.6 µs instead of 0.4 µs on the
2-core box (the minimum and the median over runs; the medians vary from run
to run). With spinning off it took 0.3 µs, but the MatMuls then took twice as
long. pagedc's attention is ~19 small ops per layer where genai's is one op,
so comparing --threads 1,2 in one run shows how much of its cost is that.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from pagedc.manifest import Manifest
from pagedc.runtime import SequenceStep, step_feeds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 2)[2],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", type=Path, required=True, help="bench_vs_genai.py --work directory (genai/, paged/)")
    p.add_argument("--prompt", type=_counts, default=[256], help="context before the new token (default 256)")
    p.add_argument("--threads", type=_counts, default=[1, 2], help="intra-op thread counts, comma list (default 1,2)")
    p.add_argument("--rounds", type=int, default=30, help="rounds of 20 runs per graph, taking turns (default 30)")
    args = p.parse_args(argv)
    if len(args.prompt) != 1:
        p.error("--prompt takes one length")
    args.prompt = args.prompt[0]
    paged_dir, genai_dir = args.work / "paged", args.work / "genai"
    for d in (paged_dir, genai_dir):
        if not (d / "model.onnx").is_file():
            print(f"error: {d}/model.onnx not found: run bench_vs_genai.py --work {args.work} first", file=sys.stderr)
            return 2
    manifest = Manifest.read(paged_dir)
    if manifest.layout != "separate":
        print(f"error: {paged_dir} has {manifest.layout} K/V pools; this cut reads separate ones", file=sys.stderr)
        return 2
    if args.prompt // manifest.block_size + 1 > manifest.num_blocks - 1:
        print(f"error: --prompt {args.prompt} needs {args.prompt // manifest.block_size + 1} blocks; {paged_dir} has "
              f"{manifest.num_blocks - 1} usable: pick a shorter prompt", file=sys.stderr)
        return 2
    threads = args.threads
    cut_paths = {"read only": paged_dir / "_cut_read.onnx", "no attention": paged_dir / "_cut_none.onnx"}
    try:
        write_cuts(paged_dir, manifest, cut_paths)
        graphs = {}
        for t in threads:
            graphs[("genai", t)] = GenaiRun(genai_dir, args.prompt, t)
            graphs[("paged", t)] = PagedRun(paged_dir / "model.onnx", manifest, args.prompt, t)
            for name, path in cut_paths.items():
                graphs[(name, t)] = PagedRun(path, manifest, args.prompt, t)
        ms = take_turns(graphs, args.rounds)
    finally:
        for path in cut_paths.values():
            path.unlink(missing_ok=True)
    report(ms, manifest, threads, args)
    return 0


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


# -- the cut graphs -----------------------------------------------------------------------------------------------
def write_cuts(paged_dir: Path, manifest: Manifest, paths: dict[str, Path]) -> None:
    """The "read only" and "no attention" cuts of paged_dir/model.onnx at `paths` (the weights stay in
    model.onnx.data, shared)."""
    for name, path in paths.items():
        model = onnx.load(paged_dir / "model.onnx", load_external_data=False)
        cut_attention(model.graph, manifest, keep_reads=name == "read only")
        onnx.save(model, path)


def cut_attention(graph: onnx.GraphProto, manifest: Manifest, keep_reads: bool) -> None:
    """Per layer: o_proj reads qkv[..., :width] (a Slice inserted just before it) instead of the attention
    output; dead nodes removed."""
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    weights = {t.name: t for t in graph.initializer}
    for layer in manifest.pools:
        key_out, value_out = layer.outputs
        reads = [next(n for n in consumers[name] if n.op_type == "GatherND") for name in (key_out, value_out)]
        o_proj = _first_projection(reads[1].output[0], consumers, weights)
        write = next(n for n in consumers[layer.inputs[0]] if n.op_type == "ScatterND")
        qkv = _projection_before(write.input[2], producer, weights)
        width = weights[o_proj.input[1]].dims[0]
        names = [f"_cut{layer.layer}_{k}" for k in ("start", "end", "axis", "out")]
        graph.initializer.extend(numpy_helper.from_array(np.array([v], np.int64), n)
                                 for v, n in zip((0, width, -1), names))
        graph.node.insert(list(graph.node).index(o_proj), helper.make_node("Slice", [qkv.output[0], *names[:3]],
                                                                          [names[3]]))
        o_proj.input[0] = names[3]
        if keep_reads:
            kv_type = helper.np_dtype_to_tensor_dtype(np.dtype(manifest.kv_dtype))
            graph.output.extend(helper.make_tensor_value_info(r.output[0], kv_type, None) for r in reads)
    _prune(graph)


def _first_projection(start: str, consumers: dict, weights: dict):
    """The first MatMul with a weight (initializer) input downstream of `start`: the layer's o_proj."""
    frontier, seen = [start], set()
    while frontier:
        name = frontier.pop(0)
        for node in consumers.get(name, []):
            if node.op_type == "MatMul" and node.input[1] in weights:
                return node
            if id(node) not in seen:
                seen.add(id(node))
                frontier += list(node.output)
    raise RuntimeError(f"no projection MatMul after {start}")


def _projection_before(start: str, producer: dict, weights: dict):
    """The MatMul with a weight input that `start` comes from through its first non-constant inputs."""
    node = producer[start]
    while not (node.op_type == "MatMul" and node.input[1] in weights):
        node = producer[next(i for i in node.input if i in producer)]
    return node


def _prune(graph: onnx.GraphProto) -> None:
    """Drop the nodes no graph output depends on (the graph stays in topological order)."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed |= {i for i in node.input if i}
    del graph.node[:]
    graph.node.extend(reversed(keep))


# -- raw runs ------------------------------------------------------------------------------------------------------
def _session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class PagedRun:
    """One decode step of a paged graph: pools bound in place, a shuffled block table over P + 1 tokens."""

    def __init__(self, path: Path, manifest: Manifest, prompt: int, threads: int):
        self.session = _session(path, threads)
        self.binding = self.session.io_binding()
        self.pools = []                        # the NumPy buffers the bound OrtValues share: kept alive here
        for layer in manifest.pools:
            for name, out in zip(layer.inputs, layer.outputs):
                self.pools.append(np.zeros(manifest.pool_shape(), manifest.kv_dtype))
                pool = ort.OrtValue.ortvalue_from_numpy(self.pools[-1])
                self.binding.bind_ortvalue_input(name, pool)
                self.binding.bind_ortvalue_output(out, pool)
        num_blocks = prompt // manifest.block_size + 1
        blocks = np.random.default_rng(0).permutation(np.arange(1, manifest.num_blocks))[:num_blocks].tolist()
        feeds = step_feeds([SequenceStep(blocks, [prompt], token_ids=(5,))], manifest.block_size)
        names = {i.name for i in self.session.get_inputs()}
        for name, value in feeds.items():
            if name in names:
                self.binding.bind_cpu_input(name, value)
        pools = {o for layer in manifest.pools for o in layer.outputs}
        for out in self.session.get_outputs():
            if out.name not in pools:
                self.binding.bind_output(out.name)

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)


class GenaiRun:
    """One decode step of genai's export as genai runs it: each past bound as its present (one buffer)."""

    def __init__(self, directory: Path, prompt: int, threads: int):
        decoder = json.loads((directory / "genai_config.json").read_text())["model"]["decoder"]
        self.session = _session(directory / "model.onnx", threads)
        self.binding = self.session.io_binding()
        shape = [1, decoder["num_key_value_heads"], prompt + 64, decoder["head_size"]]
        self.buffers = []                      # as in PagedRun: the bound OrtValues share these
        for i in self.session.get_inputs():
            if i.name.startswith("past_key_values"):
                self.buffers.append(np.zeros(shape, np.float32))
                buffer = ort.OrtValue.ortvalue_from_numpy(self.buffers[-1])
                self.binding.bind_ortvalue_input(i.name, buffer)
                self.binding.bind_ortvalue_output(i.name.replace("past_key_values", "present"), buffer)
        self.binding.bind_cpu_input("input_ids", np.array([[5]], np.int64))
        self.binding.bind_cpu_input("attention_mask", np.ones((1, prompt + 1), np.int64))
        self.binding.bind_output("logits")

    def run(self) -> None:
        self.session.run_with_iobinding(self.binding)


def take_turns(graphs: dict, rounds: int, runs: int = 20) -> dict:
    """Median ms per run of each graph: after a warm-up, `rounds` rounds of `runs` runs each, taking turns."""
    for graph in graphs.values():
        for _ in range(runs):
            graph.run()
    medians: dict = {name: [] for name in graphs}
    for _ in range(rounds):
        for name, graph in graphs.items():
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                graph.run()
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    return {name: statistics.median(v) * 1e3 for name, v in medians.items()}


def report(ms: dict, manifest: Manifest, threads: list[int], args) -> None:
    print(f"{manifest.num_layers} layers, {manifest.num_heads}/{manifest.num_kv_heads} heads, head_dim "
          f"{manifest.head_dim}; batch 1, context {args.prompt + 1}; onnxruntime {ort.__version__}; median of "
          f"{args.rounds} alternating rounds; ms per step")
    names = ["genai", "paged", "read only", "no attention"]
    print("| threads | " + " | ".join(names) + " | pagedc attention | its read | the rest | genai attention |")
    print("|" + " --- |" * (len(names) + 5))
    for t in threads:
        step = {name: ms[(name, t)] for name in names}
        attention, read = step["paged"] - step["no attention"], step["read only"] - step["no attention"]
        figures = [*step.values(), attention, read, attention - read, step["genai"] - step["no attention"]]
        print(f"| {t} | " + " | ".join(f"{v:.2f}" for v in figures) + " |")
    print("pagedc attention = paged - no attention; its read = read only - no attention; genai attention = "
          "genai - no attention (taking both graphs' other ops as equal)")


if __name__ == "__main__":
    sys.exit(main())
