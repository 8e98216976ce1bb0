"""Static shape buckets: pick the artifact a step fits and pad the step's inputs to it (pure NumPy).

A MIGraphX manifest holds one artifact per bucket (prefill [B, S_prefill],
decode [B, 1], each with max_blocks MB). A step from
`step_feeds` has any B, S, MB no larger than some bucket;
the smallest bucket (fewest token slots B*S) that fits runs it.

Padding is zeros everywhere, which the paged ABI (DESIGN.md §3) makes inert:

    extra batch rows      context_lens 0, block_table 0 (null block), position 0, token 0
    extra token columns   slot 0 (inside null block 0), position 0, token 0
    extra table columns   block 0
    no index is ever -1   (ONNX wraps negative indices onto real KV)

Worked example, block_size 4, bucket decode [B=2, 1] with MB=3, a step of one
sequence at position 5 in blocks [7, 2]:
    block_table [[7, 2]] -> [[7, 2, 0], [0, 0, 0]]    slot_mapping [9] -> [9, 0]
    context_lens [6] -> [6, 0]                         position_ids [[5]] -> [[5], [0]]
and logits [2, 1, V] are sliced back to [1, 1, V]. (A manifest with logits
"last" has [B', 1, V] from every bucket: only the batch rows are cut.)
"""

from __future__ import annotations

import numpy as np

from pagedc.errors import RequestError
from pagedc.manifest import Artifact, Bucket


class BucketError(RequestError):
    """No artifact fits a step; the message lists the buckets and what to recompile with."""


def step_shape(feeds: dict[str, np.ndarray]) -> Bucket:
    """The step's B, S from position_ids (or input_ids) [B, S]; MB from block_table's last dim."""
    tokens = feeds["position_ids"] if "position_ids" in feeds else feeds["input_ids"]
    batch, seq_len = (int(d) for d in tokens.shape)
    return Bucket("prefill" if seq_len > 1 else "decode", batch, seq_len, int(feeds["block_table"].shape[-1]))


def select_artifact(artifacts: tuple[Artifact, ...] | list[Artifact], step: Bucket) -> Artifact:
    """The artifact with the fewest token slots (then batch rows, then table columns) that `step` fits."""
    fitting = [(_cost(a.bucket()), a) for a in artifacts if step.fits(a.bucket())]
    if not fitting:
        have = ", ".join(f"{a.phase} {a.bucket().shape_text()}" for a in artifacts)
        raise BucketError(f"no static bucket fits a step of {step.shape_text()}; the artifacts are: {have}. Split the step "
                          "(fewer sequences or a shorter prefill chunk) or recompile with --batch / --prefill-len / "
                          "--max-context covering it")
    return min(fitting, key=lambda pair: pair[0])[1]


def _cost(shape: Bucket) -> tuple[int, int, int]:
    return (shape.batch * shape.seq_len, shape.batch, shape.max_blocks)


def pad_feeds(feeds: dict[str, np.ndarray], artifact: Artifact) -> dict[str, np.ndarray]:
    """Every feed the artifact takes, zero-padded to its static shape and cast to its dtype."""
    step, bucket = step_shape(feeds), artifact.bucket()
    padded = {}
    for name, array in feeds.items():
        if name not in artifact.inputs:
            continue
        target = [int(d) for d in artifact.inputs[name]]
        if name == "slot_mapping":
            array = _pad_slots(array, step, bucket)          # [B*S] | [2, B*S], row-major over (b, s)
        padded[name] = _pad_zeros(np.asarray(array), target, name).astype(artifact.dtypes[name], copy=False)
    return padded


def _pad_slots(slots: np.ndarray, step: Bucket, bucket: Bucket) -> np.ndarray:
    """Lay the flat (b, s) slots out as [.., B, S], pad to [.., B', S'] with slot 0, flatten back."""
    rows = slots.reshape(*slots.shape[:-1], step.batch, step.seq_len)
    grid = np.zeros((*slots.shape[:-1], bucket.batch, bucket.seq_len), slots.dtype)
    grid[..., : step.batch, : step.seq_len] = rows
    return grid.reshape(*slots.shape[:-1], bucket.batch * bucket.seq_len)


def _pad_zeros(array: np.ndarray, target: list[int], name: str) -> np.ndarray:
    if array.ndim != len(target) or any(n > t for n, t in zip(array.shape, target)):
        raise BucketError(f"input '{name}' of shape {list(array.shape)} does not fit the bucket's {target}")
    if list(array.shape) == target:
        return np.ascontiguousarray(array)
    out = np.zeros(target, array.dtype)
    out[tuple(slice(0, n) for n in array.shape)] = array
    return out


def unpad_logits(logits: np.ndarray, step: Bucket, which: str = "all") -> np.ndarray:
    """[B', S', V] of the bucket -> [B, S, V] of the step (a view); `which` "last" (the manifest's logits):
    [B', 1, V] -> [B, 1, V]."""
    return logits[: step.batch] if which == "last" else logits[: step.batch, : step.seq_len]
