"""manifest.json: what `pagedc compile` wrote and everything the runtime needs to drive it.

The compiler writes it next to the artifacts; the runtime reads nothing else
besides them. Unknown `format_version`s are refused rather than guessed at.

Slot semantics (DESIGN.md §3), recorded in `abi` so a reader need not guess:
slot = block_id * block_size + position % block_size; block 0 is the null
block (padding only); separate layout: block_table [B, max_blocks] and
slot_mapping [B*S]; combined layout: block_table [B, 2, max_blocks] and
slot_mapping [2, B*S] (row 0 K, row 1 V; K and V blocks of one token may differ).

MIGraphX manifests (backend "migraphx") hold one artifact per static shape
bucket (phase "prefill" or "decode", every input's shape an int list) and the
outputs of each in the order the program returns them; `max_context` bounds
the tokens one sequence may span (max_blocks = ceil(max_context / block_size)).
`--emit-standard` adds `standard_artifacts` (the dense model at static shapes)
and, in `standard`, how to feed their KV inputs (see pagedc.mxr.standard).
`logits` says what the `logits` output holds: "all" ([B, S, V], every new
token) or "last" ([B, 1, V], each row's last new token only: `pagedc compile
--logits last`, what generation samples from).
NOTE: these fields are optional with empty defaults, so version-1 manifests
written before them still load ("logits" then reads as "all", what every
compile wrote before it); format_version stays 1.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np

from pagedc.errors import ManifestError
from pagedc.manifest_schema import validate

FORMAT_VERSION = 1
FILENAME = "manifest.json"


@dataclass(frozen=True)
class LayerPools:
    layer: int
    inputs: tuple[str, ...]    # ("key_cache.i", "value_cache.i") or ("kv_cache.i",)
    outputs: tuple[str, ...]   # ("key_cache_out.i", "value_cache_out.i") or ("kv_cache_out.i",)


@dataclass(frozen=True)
class Bucket:
    """One static step shape: `batch` sequences of `seq_len` new tokens, a block table of `max_blocks` columns.

    The compiler lowers one artifact per bucket (max_blocks from --max-context); the runtime picks the
    smallest bucket a step's shape fits. max_blocks 0: not fixed yet (before lowering).
    """

    phase: str          # "prefill" | "decode"
    batch: int
    seq_len: int        # 1 for decode
    max_blocks: int = 0

    @property
    def name(self) -> str:
        return f"{self.phase}_b{self.batch}" + (f"_s{self.seq_len}" if self.phase == "prefill" else "")

    def fits(self, other: "Bucket") -> bool:
        """This step shape fits inside `other`'s (padding makes up the rest)."""
        return self.batch <= other.batch and self.seq_len <= other.seq_len and self.max_blocks <= other.max_blocks

    def shape_text(self) -> str:
        return f"[B={self.batch}, S={self.seq_len}, max_blocks={self.max_blocks}]"


@dataclass(frozen=True)
class Artifact:
    path: str                    # relative to the manifest's directory
    phase: str                   # "any" (dynamic shapes), "prefill" or "decode"
    inputs: dict[str, list]      # input name -> shape (ints, or dim names when dynamic)
    dtypes: dict[str, str]       # input name -> numpy dtype name
    outputs: list[str] = field(default_factory=list)   # output names, in the order the artifact returns them

    def bucket(self) -> Bucket:
        """The static shape of a prefill/decode artifact, read off its input shapes (the one place that does)."""
        batch, seq_len = (int(d) for d in self.inputs["input_ids"][:2])
        table = self.inputs.get("block_table")
        return Bucket(self.phase, batch, seq_len, int(table[-1]) if table else 0)


@dataclass(frozen=True)
class Manifest:
    backend: str                 # "onnxruntime" | "migraphx"
    target: str                  # "cpu" for ONNX Runtime; MIGraphX: "gpu" | "ref" | "cpu"
    source_model: str
    source_sha256: str           # of the source .onnx file (graph and inline tensors)
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    kv_dtype: str                # numpy dtype name of the pools
    block_size: int
    num_blocks: int              # pool blocks per layer, null block 0 included
    layout: str                  # "separate" | "combined"
    pools: tuple[LayerPools, ...]
    artifacts: tuple[Artifact, ...]
    vocab_size: int | None = None
    abi: dict = field(default_factory=dict)
    max_context: int | None = None          # static buckets: tokens one sequence may span
    max_position: int | None = None         # positions the model has (rotary/position-embedding rows); None: unknown
    backend_options: dict = field(default_factory=dict)   # e.g. MIGraphX {"offload_copy": true, "fp16": false}
    standard_artifacts: tuple[Artifact, ...] = ()         # the dense model at static shapes (--emit-standard)
    standard: dict = field(default_factory=dict)          # how standard_artifacts take their KV inputs
    logits: str = "all"          # "all": logits [B, S, V] of every new token; "last": [B, 1, V], each row's last
    format_version: int = FORMAT_VERSION

    def write(self, directory: Path) -> Path:
        path = Path(directory) / FILENAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def read(cls, path: str | Path) -> "Manifest":
        """Read and validate manifest.json (`path`: it, or the directory holding it); ManifestError names the field."""
        path = _manifest_path(Path(path))
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ManifestError(f"{path}: no manifest here; point at a `pagedc compile` output directory") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ManifestError(f"{path}: not valid JSON ({err}); point at a `pagedc compile` output directory, "
                                "or recompile it") from None
        except OSError as err:
            raise ManifestError(f"{path}: cannot read it ({err.strerror})") from None
        version = data.get("format_version") if isinstance(data, dict) else None
        if isinstance(data, dict) and version != FORMAT_VERSION:
            raise ManifestError(f"{path}: manifest format_version {version!r} is not supported "
                                f"(this pagedc reads version {FORMAT_VERSION}); recompile with this pagedc")
        validate(data, path, {f.name for f in fields(cls)})
        data["pools"] = tuple(LayerPools(p["layer"], tuple(p["inputs"]), tuple(p["outputs"])) for p in data["pools"])
        data["artifacts"] = tuple(Artifact(**a) for a in data["artifacts"])
        data["standard_artifacts"] = tuple(Artifact(**a) for a in data.get("standard_artifacts", ()))
        return cls(**data)

    def max_model_len(self) -> int | None:
        """Tokens one sequence may span as the artifacts allow (positions, static buckets); None: no such limit."""
        limits = [n for n in (self.max_position, self.max_context) if n]
        return min(limits) if limits else None

    def pool_shape(self) -> tuple[int, int, int, int]:
        """[num_blocks, Hkv, block_size, Dh] of every pool."""
        return (self.num_blocks, self.num_kv_heads, self.block_size, self.head_dim)

    def bytes_per_block(self) -> int:
        return bytes_per_block(self.num_layers, self.num_kv_heads, self.block_size, self.head_dim, self.kv_dtype,
                               self.layout)


def bytes_per_block(num_layers: int, num_kv_heads: int, block_size: int, head_dim: int, kv_dtype: str,
                    layout: str) -> int:
    """Bytes one block id costs across all layers (K and V pools together in the separate layout)."""
    per_pool = num_kv_heads * block_size * head_dim * np.dtype(kv_dtype).itemsize
    return per_pool * num_layers * (2 if layout == "separate" else 1)


def _manifest_path(path: Path) -> Path:
    """manifest.json itself, or inside a directory; a model file given instead is a clear error."""
    if path.is_dir():
        return path / FILENAME
    if path.name != FILENAME and path.suffix in (".onnx", ".mxr", ".data"):
        beside = path.parent / FILENAME
        hint = (f"pass its directory {path.parent}" if beside.is_file()
                else f"compile it first (`pagedc compile {path}`) and pass the output directory")
        raise ManifestError(f"{path} is a model file, not a `pagedc compile` output; {hint}")
    return path
