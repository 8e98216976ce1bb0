"""Reading ONNX model files for the CLI and the compile driver.

Weights stay where they are: onnx_ir maps external data lazily, so loading a
multi-GB model reads only its graph.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from pagedc.errors import ModelError


class ModelFileError(ModelError):
    """A model file that cannot be read as ONNX; the message says what to do."""


def load_model(path: str | Path) -> ir.Model:
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except OSError as err:
        raise ModelFileError(f"{path}: cannot read it ({err.strerror or err})") from None
    except (DecodeError, ValueError, RuntimeError, onnx.onnx_cpp2py_export.checker.ValidationError) as err:
        raise ModelFileError(f"{path}: not a readable ONNX model ({type(err).__name__}: {err}). "
                             "Pass the .onnx file written by your exporter.") from None
    if proto.ir_version == 0 or not proto.graph.node:
        raise ModelFileError(f"{path}: not an ONNX model (no IR version or no graph nodes). "
                             "Pass the .onnx file written by your exporter.")
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as err:  # onnx_ir raises several types for malformed graphs
        raise ModelFileError(f"{path}: the ONNX graph is malformed ({type(err).__name__}: {err}).") from None
    ir.external_data.set_base_dir(model.graph, str(path.parent))
    return model


def external_data_files(model: ir.Model, path: str | Path) -> list[Path]:
    """The files holding `model`'s external weights, checked: each exists and is long enough for its tensors.

    Without this check a missing or truncated .data file surfaces as a NumPy
    or protobuf error halfway through writing the output.
    """
    files: dict[Path, int] = {}
    for tensor in _external_tensors(model):
        file = Path(tensor.path)
        files[file] = max(files.get(file, 0), (tensor.offset or 0) + (tensor.length or tensor.nbytes))
    for file, needed in files.items():
        if not file.is_file():
            raise ModelFileError(f"{path}: its weights live in {file}, which is missing; put the exporter's "
                                 f"{file.name} next to {Path(path).name}")
        size = file.stat().st_size
        if size < needed:
            raise ModelFileError(f"{path}: its weights file {file} is truncated ({size} bytes, the model's tensors "
                                 f"need {needed}); copy or export it again")
    return sorted(files)


def _external_tensors(model: ir.Model):
    graphs = [model.graph, *(f for f in model.functions.values())]
    for graph in graphs:
        for value in getattr(graph, "initializers", {}).values():
            if isinstance(value.const_value, ir.ExternalTensor):
                yield value.const_value
    for node in model.graph.all_nodes():
        for attr in node.attributes.values():
            if isinstance(attr.value, ir.ExternalTensor):
                yield attr.value


def file_sha256(path: str | Path) -> str:
    """sha256 of the file (the manifest's source_sha256: graph and inline tensors, not external data)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
