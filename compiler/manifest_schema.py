"""The one schema manifest.json is checked against when it is read: types, ranges, consistency, safe paths.

A manifest is written by `pagedc compile`, but it is a text file a user can
edit or damage; every field the runtime relies on is checked here, before a
session is built, and the first problem is reported with the field's name:

    model.paged/manifest.json: field 'num_blocks' must be an int >= 2, got -5
    model.paged/manifest.json: field 'artifacts[0].path' must be a relative path inside the directory, got '../x'

What the file cannot say about itself (do the artifacts really take these
inputs, shapes and dtypes?) is checked by the sessions against the loaded
artifacts (pagedc.runtime.sessions.artifact_check, pagedc.runtime.sessions.mxr_program).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from pagedc.errors import ManifestError

BACKENDS = ("onnxruntime", "migraphx")
LAYOUTS = ("separate", "combined")
PHASES = ("any", "prefill", "decode")
KV_DTYPES = ("float32", "float16", "bfloat16", "float64")
LOGITS = ("last", "all")   # what the `logits` output holds: each row's last new token, or every new token
_OPTIONAL_INTS = {"vocab_size": 1, "max_context": 1, "max_position": 1}   # None, or an int >= the value
_INTS = {"num_layers": 1, "num_heads": 1, "num_kv_heads": 1, "head_dim": 1, "block_size": 1, "num_blocks": 2}
_STRINGS = ("target", "source_model", "source_sha256")
_DICTS = ("abi", "backend_options", "standard")


def validate(data, path: Path, known_fields: set[str]) -> None:
    """Raise ManifestError naming the first field of `data` (parsed manifest.json) that is wrong."""
    if not isinstance(data, dict):
        _fail(path, "(top level)", "a JSON object", data)
    unknown = sorted(set(data) - known_fields)
    if unknown:
        raise ManifestError(f"{path}: unknown field(s) {unknown}; this pagedc does not write them. Recompile with "
                            "this pagedc, or restore the manifest `pagedc compile` wrote")
    for name in ("backend", "layout", "kv_dtype", "pools", "artifacts", *_INTS, *_STRINGS):
        if name not in data:
            raise ManifestError(f"{path}: field '{name}' is missing; recompile, or restore the manifest "
                                "`pagedc compile` wrote")
    _check_scalars(data, path)
    _check_pools(data, path)
    for key in ("artifacts", "standard_artifacts"):
        items = data.get(key, [])
        if not isinstance(items, list) or (key == "artifacts" and not items):
            _fail(path, key, "a non-empty list" if key == "artifacts" else "a list", items)
        for i, artifact in enumerate(items):
            _check_artifact(data, artifact, f"{key}[{i}]", path)


def _check_scalars(data: dict, path: Path) -> None:
    _choice(data, "backend", BACKENDS, path)
    _choice(data, "layout", LAYOUTS, path)
    _choice(data, "kv_dtype", KV_DTYPES, path)
    if "logits" in data:
        _choice(data, "logits", LOGITS, path)
    for name, minimum in _INTS.items():
        _int(data[name], name, minimum, path)
    for name, minimum in _OPTIONAL_INTS.items():
        if data.get(name) is not None:
            _int(data[name], name, minimum, path)
    for name in _STRINGS:
        if not isinstance(data[name], str):
            _fail(path, name, "a string", data[name])
    for name in _DICTS:
        if not isinstance(data.get(name, {}), dict):
            _fail(path, name, "a JSON object", data[name])
    if data["num_heads"] % data["num_kv_heads"]:
        _fail(path, "num_heads", f"a multiple of num_kv_heads ({data['num_kv_heads']})", data["num_heads"])
    if data["num_blocks"] * data["block_size"] >= 2**31:
        _fail(path, "num_blocks", "small enough for int32 slots (num_blocks * block_size < 2**31)", data["num_blocks"])


def _check_pools(data: dict, path: Path) -> None:
    pools, width = data["pools"], 2 if data["layout"] == "separate" else 1
    if not isinstance(pools, list) or len(pools) != data["num_layers"]:
        _fail(path, "pools", f"a list of num_layers ({data['num_layers']}) entries", pools)
    for i, pool in enumerate(pools):
        where = f"pools[{i}]"
        if not isinstance(pool, dict) or sorted(pool) != ["inputs", "layer", "outputs"]:
            _fail(path, where, "an object with layer, inputs, outputs", pool)
        if pool["layer"] != i:
            _fail(path, f"{where}.layer", f"{i} (layers in order)", pool["layer"])
        for key in ("inputs", "outputs"):
            names = pool[key]
            if not _is_names(names) or len(names) != width:
                _fail(path, f"{where}.{key}", f"{width} pool name(s) for the {data['layout']} layout", names)


def _check_artifact(data: dict, artifact, where: str, path: Path) -> None:
    fields = ("path", "phase", "inputs", "dtypes")
    if not isinstance(artifact, dict) or not set(fields) <= set(artifact) or set(artifact) - {*fields, "outputs"}:
        _fail(path, where, "an object with path, phase, inputs, dtypes[, outputs]", artifact)
    relative = artifact["path"]
    parts = PurePosixPath(relative).parts if isinstance(relative, str) else ()
    if not parts or PurePosixPath(relative).is_absolute() or ".." in parts or "\\" in relative or ":" in relative:
        _fail(path, f"{where}.path", "a relative path inside the directory", relative)
    directory = path.parent.resolve()
    if not (directory / relative).resolve().is_relative_to(directory):
        _fail(path, f"{where}.path", "a path that stays inside the directory (it is a link out of it)", relative)
    _choice(artifact, "phase", PHASES, path, where)
    inputs, dtypes = artifact["inputs"], artifact["dtypes"]
    if not isinstance(inputs, dict) or not all(_is_shape(s) for s in inputs.values()):
        _fail(path, f"{where}.inputs", "an object of input name -> shape (list of ints or dim names)", inputs)
    if not isinstance(dtypes, dict) or set(dtypes) != set(inputs) or not all(isinstance(t, str) for t in dtypes.values()):
        _fail(path, f"{where}.dtypes", "an object with one dtype name per input", dtypes)
    if not _is_names(artifact.get("outputs", [])):
        _fail(path, f"{where}.outputs", "a list of output names", artifact.get("outputs"))
    if where.startswith("artifacts"):
        for pool in (name for p in data["pools"] for name in p["inputs"]):
            if pool not in inputs:
                _fail(path, f"{where}.inputs", f"to include pool input '{pool}' (listed in pools)", sorted(inputs))
            if dtypes[pool] != data.get("kv_dtype"):
                _fail(path, f"{where}.dtypes.{pool}", f"kv_dtype ({data.get('kv_dtype')})", dtypes[pool])


def _is_names(value) -> bool:
    return isinstance(value, list) and all(isinstance(n, str) and n for n in value)


def _is_shape(value) -> bool:
    return isinstance(value, list) and all(isinstance(d, str) or (type(d) is int and d >= 0) for d in value)


def _int(value, name: str, minimum: int, path: Path) -> None:
    if type(value) is not int or value < minimum:
        _fail(path, name, f"an int >= {minimum}", value)


def _choice(data: dict, name: str, choices: tuple[str, ...], path: Path, where: str = "") -> None:
    if data.get(name) not in choices:
        _fail(path, f"{where}.{name}" if where else name, f"one of {', '.join(choices)}", data.get(name))


def _fail(path: Path, field: str, expected: str, found) -> None:
    shown = repr(found)
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise ManifestError(f"{path}: field '{field}' must be {expected}, got {shown}. Recompile with `pagedc compile`, "
                        "or restore the manifest it wrote")
