"""Backend sessions: one per compiled directory, the one place the two backends differ.

    open_session(manifest, directory, options) -> OrtPagedSession | BucketedPagedSession (MIGraphX: load_mxr_session)

Both take a step's feeds (`run(feeds) -> logits [B, S, V]`, or [B, 1, V] where
the manifest's logits is "last"), own the pools, and apply block copies
(`copy_blocks`). ONNX Runtime: one dynamic artifact,
pools bound in place with IOBinding (ort.py). MIGraphX: one static program
per shape bucket, inputs padded up to the smallest bucket that fits
(bucketed.py, mxr.py, mxr_program.py); the host keeps the pools and feeds each
step's blocks (mxr_pools.py), the weights come from one mapped weights.bin
(mxr_weights.py).
"""

from __future__ import annotations

from pathlib import Path

from pagedc.errors import ManifestError, RequestError
from pagedc.manifest import Manifest
from pagedc.runtime.sessions.bucketed import BucketedPagedSession
from pagedc.runtime.sessions.mxr import load_mxr_session
from pagedc.runtime.sessions.ort import OrtPagedSession, SessionOptions

__all__ = ["BucketedPagedSession", "OrtPagedSession", "SessionOptions", "load_mxr_session", "open_session"]


def open_session(manifest: Manifest, directory: str | Path, options: SessionOptions = SessionOptions()):
    """The session for the manifest's backend. `options` are ONNX Runtime's: MIGraphX artifacts refuse
    non-default ones rather than ignore them (their threading and target are fixed at compile time)."""
    if manifest.backend == "onnxruntime":
        return OrtPagedSession(manifest, directory, options)
    if manifest.backend == "migraphx":
        if options != SessionOptions():
            raise RequestError(f"{directory}: SessionOptions {options} apply to ONNX Runtime artifacts; this "
                               "directory holds MIGraphX programs (compiled for their target), which take none")
        return load_mxr_session(manifest, directory)
    raise ManifestError(f"{directory}: backend {manifest.backend!r} is not one this pagedc runs "
                        "(onnxruntime, migraphx); recompile with this pagedc")
