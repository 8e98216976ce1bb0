"""pagedc.passes: ONNX -> ONNX rewrites on onnx_ir."""
