"""pagedc.build: the compile driver (`compile_model`) and its ONNX Runtime target; MIGraphX lowering is pagedc.mxr.

    from pagedc.build import CompileOptions, compile_model
    compile_model(Path("model.onnx"), Path("model.paged"), CompileOptions(block_size=16, num_blocks=1024))
"""

from pagedc.build.compile import CompileError, CompileOptions, compile_model

__all__ = ["CompileError", "CompileOptions", "compile_model"]
