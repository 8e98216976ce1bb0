"""What MIGraphX's ONNX parser accepts, as data the checker (pagedc.mxr.check) reads.

Sources (ROCm/AMDMIGraphX, read for this table):
- src/onnx/onnx_parser.cpp: `parse_graph` looks a node up by `node.op_type()`
  alone (the domain is never read) and throws "Unknown operator: X" when no
  parser registered X; `get_type` lists the element types it maps (others
  throw "Prototensor data type N not supported"); graph inputs take their dims
  from `map_input_dims` or the model, unnamed/symbolic dims default.
- src/onnx/parse_*.cpp `operators()`: the op names each parser registers, e.g.
  parse_generic_op.cpp (Abs … Not), parse_binary_op.cpp (Add, And, Div, Mul,
  PRelu, Sub), parse_compare_op.cpp (Equal, Greater, Less), parse_reduce_op.cpp
  (Reduce*), parse_squeeze.cpp (Squeeze, Unsqueeze), parse_scatternd.cpp,
  parse_group_query_attention.cpp, parse_attention.cpp ("Attention", the
  com.microsoft op), parse_matmulnbits.cpp, and the parsers registering
  RotaryEmbedding, SimplifiedLayerNormalization, SkipLayerNormalization and
  SkipSimplifiedLayerNormalization (structs parse_rotary_embedding,
  parse_simplified_layer_normalization, parse_skip_*layer_normalization).
- docs/dev/onnx_operators.rst: the support matrix generated from those parsers
  (names marked supported, and the "Limitations" column used for LITERAL_INPUTS
  where the parser source was not read).
"""

from __future__ import annotations

# ai.onnx ops with a registered parser (docs/dev/onnx_operators.rst ✅ rows, cross-checked
# against the parse_*.cpp files named above).
ONNX_OPS = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike
Ceil Celu Clip Concat Constant ConstantOfShape Conv ConvInteger ConvTranspose Cos Cosh CumSum DepthToSpace
DequantizeLinear Div Dropout DynamicQuantizeLinear Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool Greater GreaterOrEqual
GroupNormalization GRU HardSigmoid HardSwish Hardmax Identity If InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM LpNormalization LpPool MatMul
MatMulInteger Max MaxPool Mean MeanVarianceNormalization Min Mod Mul Multinomial Neg NonMaxSuppression NonZero
Not OneHot Or Pad Pow PRelu QLinearAdd QLinearAveragePool QLinearConcat QLinearConv QLinearGlobalAveragePool
QLinearLeakyRelu QLinearMatMul QLinearMul QLinearSigmoid QuantizeLinear RandomNormal RandomNormalLike
RandomUniform RandomUniformLike Range Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax
ReduceMean ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence RNN RoiAlign
Round Scatter ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax Softplus
Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unique
Unsqueeze Upsample Where Xor
""".split())

# com.microsoft contrib ops with a parser (parse_*.cpp named in the module docstring).
CONTRIB_OPS = frozenset("""
Attention BiasAdd BiasGelu FastGelu FusedMatMul GroupQueryAttention MatMulBnb4 MatMulNBits MultiHeadAttention
RotaryEmbedding SimplifiedLayerNormalization SkipLayerNormalization SkipSimplifiedLayerNormalization
""".split())

SUPPORTED_OPS = ONNX_OPS | CONTRIB_OPS

# Domains whose op names MIGraphX's parsers were written for. The parser ignores
# domains, so a node of any other domain is parsed as the ai.onnx/com.microsoft op of
# the same name (onnx_parser.cpp, parse_graph).
KNOWN_DOMAINS = frozenset({"", "ai.onnx", "com.microsoft"})

# op -> input positions the parser evaluates at parse time (`args[i]->eval()` +
# check_arg_empty: "... dynamic shape is not supported" / "cannot handle variable axes").
LITERAL_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),                 # parse_reshape.cpp
    "Range": (0, 1, 2),              # parse_range.cpp
    "Squeeze": (1,),                 # parse_squeeze.cpp
    "Unsqueeze": (1,),               # parse_squeeze.cpp
    "Expand": (1,),                  # parse_expand.cpp
    **{op: (1,) for op in ("ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceL1",
                           "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")},  # parse_reduce_op.cpp
    "ConstantOfShape": (0,),         # onnx_operators.rst: dynamic shape is not supported
    "Slice": (1, 2, 3, 4),           # onnx_operators.rst: variable inputs are not supported
    "Tile": (1,),                    # onnx_operators.rst: dynamic shape is not supported
    "Split": (1,),                   # onnx_operators.rst: dynamic shape is not supported
    "TopK": (1,),                    # onnx_operators.rst: dynamic k is not supported
    "Trilu": (1,),                   # onnx_operators.rst: dynamic k is not supported
    "Pad": (1, 2, 3),                # onnx_operators.rst: pads must be constant
    "OneHot": (1,),                  # onnx_operators.rst: dynamic shape is not supported
    "CumSum": (1,),                  # onnx_operators.rst: axis dynamic shape is not supported
}

# GroupQueryAttention: inputs counted with empty ones (each becomes an `undefined`
# instruction); parse_group_query_attention.cpp throws "Wrong number of inputs provided"
# outside 7..11, and needs cos_cache/sin_cache (9 inputs) with do_rotary.
GQA_MIN_INPUTS, GQA_MAX_INPUTS, GQA_ROTARY_INPUTS = 7, 11, 9

# ONNX TensorProto element types onnx_parser.cpp's get_type maps to a MIGraphX type.
# Not here: 8 STRING, 14/15 COMPLEX (mapped to bf16 there: wrong numbers), 17 FLOAT8E4M3FN,
# 19 FLOAT8E5M2, 20 FLOAT8E5M2FNUZ, and anything newer than 23 FLOAT4E2M1.
SUPPORTED_ELEM_TYPES = frozenset({1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 13, 16, 18, 21, 22, 23})
