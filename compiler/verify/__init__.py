"""pagedc.verify: paged vs standard (dense-cache) logits, step by step, at the tolerance tiers.

    from pagedc.verify import verify
    report = verify("model.paged", "model.onnx", batch=4, decode_steps=16)

It lives beside the compiler, not in the runtime, because it reads the dense
model with the pass's detection (dense_runner.py).
"""

from pagedc.verify.run import StepComparison, VerifyReport, verify

__all__ = ["StepComparison", "VerifyReport", "verify"]
