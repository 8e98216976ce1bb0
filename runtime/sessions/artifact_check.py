"""Does the loaded ONNX artifact take and return what manifest.json says? (ONNX Runtime side)

manifest.json can be edited or come from another compile than the model.onnx
beside it; a mismatch would otherwise surface as an ONNX Runtime shape error
in the first step. Checked when the session is built, one line per problem:

    model.onnx does not match manifest.json (2 problem(s)):
      - pool input 'key_cache.0' has dims [?, 2, 4, 16], the manifest's pool shape is [32, 4, 4, 16]
      - output 'logits' has 97 columns, the manifest's vocab_size is 50
      - output 'logits' is ['batch_size', 'sequence_length', 50] (every new token), the manifest's logits
        is 'last' ([B, 1, V])

MIGraphX programs are checked the same way by pagedc.runtime.sessions.mxr_program.
"""

from __future__ import annotations

from pagedc.errors import ManifestError
from pagedc.manifest import Artifact, Manifest

# ONNX Runtime type strings -> numpy dtype names
ORT_DTYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
              "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
              "tensor(bool)": "bool", "tensor(int8)": "int8", "tensor(uint8)": "uint8"}
ABI_INPUTS = {"input_ids", "position_ids", "block_table", "slot_mapping", "context_lens"}


def check_ort_artifact(manifest: Manifest, artifact: Artifact, session, where: str) -> None:
    """Raise ManifestError when the ONNX Runtime session's inputs/outputs disagree with the manifest."""
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    problems = _input_problems(manifest, artifact, inputs) + _output_problems(manifest, outputs)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ManifestError(f"{where} does not match manifest.json ({len(problems)} problem(s)):\n{lines}\n"
                            "The manifest was edited or comes from another compile; recompile the directory")


def _input_problems(manifest: Manifest, artifact: Artifact, inputs: dict) -> list[str]:
    pools = {name for layer in manifest.pools for name in layer.inputs}
    problems = [f"the model has input '{n}' that pagedc does not feed" for n in inputs if n not in ABI_INPUTS | pools]
    problems += [f"the manifest lists pool '{n}', the model has no such input" for n in sorted(pools - inputs.keys())]
    for name in inputs.keys() & artifact.dtypes.keys():
        dtype = ORT_DTYPES.get(inputs[name].type, inputs[name].type)
        if dtype != artifact.dtypes[name]:
            problems.append(f"input '{name}' is {dtype}, the manifest says {artifact.dtypes[name]}")
    for name in sorted(pools & inputs.keys()):
        dims = inputs[name].shape
        expected = list(manifest.pool_shape())
        if len(dims) != len(expected) or any(isinstance(d, int) and d != e for d, e in zip(dims, expected)):
            shown = "[" + ", ".join(str(d) if isinstance(d, int) else "?" for d in dims) + "]"
            problems.append(f"pool input '{name}' has dims {shown}, the manifest's pool shape is {expected} "
                            "(num_blocks, num_kv_heads, block_size, head_dim)")
    table = inputs.get("block_table")
    if table is not None and len(table.shape) != (3 if manifest.layout == "combined" else 2):
        problems.append(f"block_table has rank {len(table.shape)}, which is not the {manifest.layout} layout's")
    return problems


def _output_problems(manifest: Manifest, outputs: dict) -> list[str]:
    problems = [f"the manifest lists pool output '{n}', the model has no such output"
                for layer in manifest.pools for n in layer.outputs if n not in outputs]
    logits = outputs.get("logits")
    if logits is None:
        return problems + ["the model has no 'logits' output"]
    columns = logits.shape[-1] if logits.shape else None
    if manifest.vocab_size and isinstance(columns, int) and columns != manifest.vocab_size:
        problems.append(f"output 'logits' has {columns} columns, the manifest's vocab_size is {manifest.vocab_size}")
    rows = logits.shape[1] if logits.shape and len(logits.shape) == 3 else None
    if rows is not None and (rows == 1) != (manifest.logits == "last"):
        kind = "each row's last new token" if rows == 1 else "every new token"
        expected = "[B, 1, V]" if manifest.logits == "last" else "[B, S, V]"
        problems.append(f"output 'logits' is {list(logits.shape)} ({kind}), the manifest's logits is "
                        f"'{manifest.logits}' ({expected})")
    return problems
