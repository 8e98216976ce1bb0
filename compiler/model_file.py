"""Reading ONNX model files for the CLI and the compile driver.

Weights stay where they are: onnx_ir maps external data lazily, so loading a
multi-GB model reads only its graph.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError


class ModelFileError(Exception):
    """A model file that cannot be read as ONNX; the message says what to do."""


def load_model(path: str | Path) -> ir.Model:
    path = Path(path)
    try:
        proto = onnx.load(str(path), load_external_data=False)
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
