"""pagedc: rewrite ONNX LLM decoders with a dense KV cache into paged attention.

Stages (see README): ``pagedc.passes`` (ONNX -> paged ONNX), ``pagedc`` (CLI and
compile driver), ``pagedc.runtime`` (block manager and sessions).
"""

__version__ = "0.1.0"
