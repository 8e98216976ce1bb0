"""pagedc.runtime: runs compiled paged models.

    from pagedc.runtime import Engine, SamplingParams
    engine = Engine.from_manifest("model.paged")
    engine.generate([[1, 2, 3]], max_new_tokens=16)

The engine runs ONNX Runtime artifacts (OrtPagedSession, pools updated in
place) or MIGraphX ones (a BucketedPagedSession of one program per shape bucket), as
the manifest says. `PagedKVCacheManager` (block tables, slots, prefix cache,
forks) is usable alone; it knows nothing of devices.
"""

from pagedc.runtime.block_manager import PagedKVCacheManager
from pagedc.runtime.engine import Engine, EngineOptions, PhaseTimes, StepTimes
from pagedc.runtime.feeds import NULL_BLOCK, SequenceStep, step_feeds
from pagedc.runtime.sessions.ort import OrtPagedSession, SessionOptions
from pagedc.runtime.sampling import SamplingParams, sample

__all__ = [
    "Engine", "EngineOptions", "NULL_BLOCK", "OrtPagedSession", "PagedKVCacheManager", "PhaseTimes", "SamplingParams", "SequenceStep",
    "SessionOptions", "StepTimes", "sample", "step_feeds",
]
