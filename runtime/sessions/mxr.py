"""MIGraphX loader: the .mxr of each shape bucket, as the runners of one BucketedPagedSession.

    session = load_mxr_session(Manifest.read("model.paged"), "model.paged")
    logits = session.run(step_feeds(steps, block_size))   # steps: PagedKVCacheManager.append results; [B, S, V]

Loads every artifact with `migraphx.load(path, format="msgpack")`, checks its
parameters against the manifest (names, dims, dtypes), and feeds NumPy arrays
wrapped by `migraphx.argument` (no copy). Each step's returned pools become
the next step's pools (see pagedc.runtime.sessions.bucketed).

NOTE: artifacts must be compiled with offload_copy (the default): the program
then takes and returns host memory. With --no-offload-copy the caller owns
device buffers (migraphx.to_gpu / allocate_gpu), which this session does not do.
"""

from __future__ import annotations

from pathlib import Path

from pagedc.manifest import Manifest
from pagedc.runtime.sessions.bucketed import BucketedPagedSession
from pagedc.runtime.sessions.migraphx_import import import_migraphx
from pagedc.runtime.sessions.mxr_program import MxrProgramError, load_program, program_runner
from pagedc.runtime.sessions.mxr_weights import ProgramWeights


def load_mxr_session(manifest: Manifest, directory: str | Path) -> BucketedPagedSession:
    """The session of a `pagedc compile --target mxr` output; it owns the pools (host NumPy arrays)."""
    if manifest.backend != "migraphx":
        raise MxrProgramError(f"this session runs MIGraphX artifacts; the manifest is for {manifest.backend}")
    if not manifest.backend_options.get("offload_copy", True):
        raise MxrProgramError("the artifacts were compiled with --no-offload-copy (device buffers); this session "
                              "feeds host arrays: recompile with --offload-copy")
    migraphx = import_migraphx()
    weights = ProgramWeights.of(manifest, directory)     # one memory map, shared by every bucket
    runners = {}
    for artifact in manifest.artifacts:
        program = load_program(migraphx, Path(directory) / artifact.path, artifact, weights)
        runners[artifact.path] = program_runner(migraphx, program, weights)
    return BucketedPagedSession(manifest, runners)
