"""GraphBuilder: a thin wrapper over `onnx.helper` for the test decoders.

It only names things: every `op()` call appends one NodeProto and returns its
output name(s), so a builder reads like the model's forward function:

    g = GraphBuilder("decoder", opset=17, constants="Constant")
    x = g.input("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"])
    h = g.op("Gather", g.initializer("model.embed_tokens.weight", table), x)

`constants` picks how small constants appear: "Constant" nodes (TorchScript /
Optimum exports) or initializers (onnxruntime-genai's model builder), so the
two forms look like their exporters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MS_DOMAIN = "com.microsoft"
IR_VERSION = 10  # ONNX 1.16+; read by onnxruntime >= 1.20 and MIGraphX


class GraphBuilder:
    def __init__(self, name: str, *, opset: int, constants: str) -> None:
        if constants not in ("Constant", "initializer"):
            raise ValueError(f"constants must be 'Constant' or 'initializer', got {constants!r}")
        self.name = name
        self.opset = opset
        self.constants = constants
        self.scope = ""  # node-name prefix, e.g. "/model/layers.0/attn"
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.uses_ms_domain = False
        self._count = 0

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        """Declare graph output `name`; the node producing it passes `outputs=[name]` to op()."""
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def const(self, value, dtype=np.int64) -> str:
        """A small constant (shape, axis, scalar) as a Constant node or an initializer."""
        array = np.asarray(value, dtype=dtype)
        self._count += 1
        name = f"{self.scope}/Constant_{self._count}_output_0"
        if self.constants == "initializer":
            return self.initializer(name, array)
        tensor = numpy_helper.from_array(array, name)
        self.nodes.append(helper.make_node("Constant", [], [name], name=name[: -len("_output_0")], value=tensor))
        return name

    def op(self, op_type: str, *inputs: str, outputs: Sequence[str] | None = None, num_outputs: int = 1,
           domain: str = "", **attrs):
        """Append one node; return its output name, or a list when it has several.

        `outputs` names the outputs (graph outputs such as `present.0.key`);
        otherwise they are named after the node.
        """
        self._count += 1
        node_name = f"{self.scope}/{op_type}_{self._count}"
        if outputs is None:
            outputs = [f"{node_name}_output_{k}" for k in range(num_outputs)]
        outputs = list(outputs)
        self.nodes.append(
            helper.make_node(op_type, list(inputs), outputs, name=node_name, domain=domain or None, **attrs)
        )
        if domain == MS_DOMAIN:
            self.uses_ms_domain = True
        return outputs[0] if len(outputs) == 1 else outputs

    def model(self, producer: str) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        if self.uses_ms_domain:
            opsets.append(helper.make_opsetid(MS_DOMAIN, 1))
        model = helper.make_model(graph, opset_imports=opsets, producer_name=producer)
        model.ir_version = IR_VERSION
        return model


def onnx_dtype(np_dtype: np.dtype) -> int:
    return helper.np_dtype_to_tensor_dtype(np.dtype(np_dtype))


INT64 = TensorProto.INT64
INT32 = TensorProto.INT32
BOOL = TensorProto.BOOL
FLOAT = TensorProto.FLOAT
