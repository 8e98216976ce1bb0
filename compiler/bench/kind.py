"""What a `pagedc bench` PATH is: paged (separate or combined K/V) or standard, which backend, which buckets.

    compile output directory, its manifest.json, or model.onnx inside it  -> the manifest says (paged)
    a .mxr (MIGraphX)        -> its parameters say (block_table: paged; [B, 2, MB]: combined; else standard),
                                run through the manifest beside it (paged or standard_artifacts)
    any other .onnx          -> its graph inputs say; a dense model runs on ONNX Runtime

Detection by inputs is the rule of MIGraphX's paged_attention_prefill example
(a `block_table` or `slot_mapping` parameter means paged), extended with the
paged ABI's combined layout: block_table [B, 2, max_blocks] (DESIGN.md §3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import onnx_ir as ir

from pagedc import errors
from pagedc.manifest import FILENAME, Artifact, Manifest
from pagedc.manifest import ManifestError as ManifestReadError
from pagedc.model_file import ModelFileError, load_model
from pagedc.passes.detect import find_attention_sites
from pagedc.runtime.sessions.buckets import BucketError
from pagedc.runtime.sessions.migraphx_import import MigraphxUnavailable, import_migraphx
from pagedc.runtime.sessions.mxr_program import MxrProgramError, load_program, parameter_specs
from pagedc.runtime.sessions.mxr_weights import ProgramWeights

PAGED_SEPARATE, PAGED_COMBINED, STANDARD = "paged-separate", "paged-combined", "standard"
TITLES = {PAGED_SEPARATE: "Paged (separate K/V)", PAGED_COMBINED: "Paged (combined K/V)",
          STANDARD: "Standard (dense KV cache)"}
BACKENDS = ("onnxruntime", "migraphx")


@dataclass(frozen=True)
class ModelKind:
    path: Path
    kind: str                         # PAGED_SEPARATE | PAGED_COMBINED | STANDARD
    backend: str                      # "onnxruntime" | "migraphx"
    manifest: Manifest | None = None  # compile outputs (paged, or --emit-standard .mxr); None for a dense .onnx
    directory: Path | None = None     # where the manifest's artifacts are
    buckets: tuple[str, ...] = ()     # static shapes ("prefill [B=1, S=512, max_blocks=128]"); () when dynamic
    max_positions: int | None = None  # positions the model can encode (rotary / position tables), None: no limit
    artifacts: tuple[Artifact, ...] = field(default=(), repr=False)   # the static artifacts this side runs

    @property
    def is_paged(self) -> bool:
        return self.kind != STANDARD

    @property
    def logits(self) -> str:
        """"last": a paged model compiled with --logits last (its prefill runs the lm_head on one token per
        sequence, a dense model on every token); else "all"."""
        return self.manifest.logits if self.is_paged and self.manifest is not None else "all"

    @property
    def logits_note(self) -> str:
        return ", logits of the last new token only" if self.logits == "last" else ""

    @property
    def title(self) -> str:
        shapes = f"{len(self.buckets)} static bucket(s)" if self.buckets else "dynamic shapes"
        return f"{TITLES[self.kind]}, {self.backend}, {shapes}{self.logits_note}"

    def to_dict(self) -> dict:
        return {"path": str(self.path), "kind": self.kind, "backend": self.backend, "buckets": list(self.buckets),
                "max_positions": self.max_positions, "logits": self.logits}


def kind_from_inputs(shapes: dict[str, list]) -> str:
    """PAGED_* or STANDARD from input (or MIGraphX parameter) names and shapes."""
    if "block_table" in shapes:
        return PAGED_COMBINED if len(shapes["block_table"]) == 3 else PAGED_SEPARATE
    if "slot_mapping" in shapes:
        return PAGED_COMBINED if len(shapes["slot_mapping"]) == 2 else PAGED_SEPARATE
    return STANDARD


def detect(path: str | Path) -> ModelKind:
    """The kind of one PATH; raises pagedc.errors with what was found and what to pass instead."""
    path = Path(path)
    with as_pagedc_errors():
        if not path.exists():
            raise errors.RequestError(f"{path}: no such file or directory; pass a `pagedc compile` output "
                                      "directory, a .mxr inside one, or a dense .onnx")
        if path.is_dir() or path.name == FILENAME or _manifest_lists(path):
            return _from_manifest(path)
        if path.suffix == ".mxr":
            return _from_mxr(path)
        if path.suffix == ".onnx":
            return _from_onnx(path)
        raise errors.RequestError(f"{path}: not a compile output directory, manifest.json, .mxr or .onnx")


def _from_manifest(path: Path) -> ModelKind:
    directory = path if path.is_dir() else path.parent
    manifest = Manifest.read(directory)          # checked against the schema: backend, layout, shapes
    kind = PAGED_COMBINED if manifest.layout == "combined" else PAGED_SEPARATE
    static = tuple(a for a in manifest.artifacts if a.phase in ("prefill", "decode"))
    positions = _max_positions(load_model(directory / manifest.artifacts[0].path)) \
        if manifest.backend == "onnxruntime" else None
    return ModelKind(path, kind, manifest.backend, manifest, directory, _bucket_names(static), positions, static)


def _from_mxr(path: Path) -> ModelKind:
    manifest = Manifest.read(path.parent) if (path.parent / FILENAME).exists() else None
    if manifest is None:
        raise errors.ManifestError(f"{path}: no {FILENAME} beside it; bench runs .mxr files of a `pagedc compile "
                                   "--target mxr` output (its pools and buckets are read from the manifest)")
    listed = {a.path: a for a in (*manifest.artifacts, *manifest.standard_artifacts)}
    if path.name not in listed:
        raise errors.ManifestError(f"{path}: {path.parent / FILENAME} does not list this file; recompile")
    migraphx = import_migraphx()
    weights = ProgramWeights.of(manifest, path.parent)
    program = load_program(migraphx, path, listed[path.name], weights)   # checks its parameters against the manifest
    kind = kind_from_inputs({name: dims for name, (dims, _) in parameter_specs(program).items()})
    static = manifest.artifacts if kind != STANDARD else manifest.standard_artifacts
    return ModelKind(path, kind, "migraphx", manifest, path.parent, _bucket_names(static), None, tuple(static))


def _from_onnx(path: Path) -> ModelKind:
    model = load_model(path)
    kind = kind_from_inputs({v.name: list(v.shape or ()) for v in model.graph.inputs})
    if kind != STANDARD:
        raise errors.ManifestError(f"{path}: a paged model without {FILENAME} beside it; bench needs the whole "
                                   "`pagedc compile` output directory (the manifest sizes the pools)")
    if not find_attention_sites(model).sites:
        raise errors.ModelError(f"{path}: no attention layer with a dense KV cache (see `pagedc inspect {path}`); "
                                "bench takes a decoder with past key/value inputs, or a compile output")
    return ModelKind(path, STANDARD, "onnxruntime", max_positions=_max_positions(model))


def _manifest_lists(path: Path) -> bool:
    """Whether `path` is the paged artifact of the compile output it sits in (model.onnx beside manifest.json)."""
    if path.suffix != ".onnx" or not (path.parent / FILENAME).exists():
        return False
    return any(a.path == path.name for a in Manifest.read(path.parent).artifacts)


def _bucket_names(artifacts) -> tuple[str, ...]:
    names = []
    for artifact in artifacts:
        bucket = artifact.bucket()
        names.append(f"{artifact.phase} {bucket.shape_text() if bucket.max_blocks else f'[B={bucket.batch}, S={bucket.seq_len}]'}")
    return tuple(names)


def _max_positions(model: ir.Model) -> int | None:
    """Rows of the position tables (rotary cos/sin, learned embeddings) the model indexes by position.

    GroupQueryAttention's cos_cache (input 7) in genai exports; a Gather of an
    initializer by `position_ids` in HF-style and paged graphs. None when
    positions are computed (Optimum's MatMul of inv_freq): no limit.
    """
    rows = []
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        tables = []
        if node.op_type == "GroupQueryAttention" and len(node.inputs) > 7:
            tables = [node.inputs[7]]
        elif node.op_type == "Gather" and len(node.inputs) == 2 and _is_position_ids(node.inputs[1]):
            tables = [node.inputs[0]]
        rows += [int(t.shape[0]) for t in tables if t is not None and t.is_initializer() and t.shape
                 and isinstance(t.shape[0], int)]
    return min(rows) if rows else None


def _is_position_ids(value: ir.Value | None) -> bool:
    return value is not None and value.name == "position_ids" and value.is_graph_input()


@contextlib.contextmanager
def as_pagedc_errors() -> Iterator[None]:
    """The errors of the stages bench calls, as pagedc.errors (what the CLI reports without a traceback).

    NOTE: manifest, model-file, MIGraphX and bucket errors predate pagedc.errors;
    this maps them until those modules raise pagedc.errors themselves.
    """
    try:
        yield
    except ManifestReadError as err:
        raise errors.ManifestError(str(err)) from None
    except (ModelFileError, MxrProgramError) as err:
        raise errors.ModelError(str(err)) from None
    except MigraphxUnavailable as err:
        raise errors.BackendError(str(err)) from None
    except BucketError as err:
        raise errors.RequestError(str(err)) from None
