"""MIGraphX's steps in a child process: a child that really dies by a signal becomes an error naming the
bucket, the step and the signal, and the compile's staging files are removed.

The workers (tests/compiler/mxr_child_workers.py) stand in for the MIGraphX steps only in *what kills the child* (os.abort, a raise);
the process, pipe, signal and cleanup machinery under test is the one `pagedc compile --target mxr` uses.
"""

from __future__ import annotations

import pytest

from pagedc.build import CompileOptions
from pagedc.model_file import load_model
from pagedc.mxr.child import MxrChildCrash, MxrChildError, run_in_child
from pagedc.mxr.compile import MxrCompileError, plan_mxr, write_mxr
from pagedc.passes.paged import rewrite_to_paged
from tests.compiler.mxr_child_workers import (aborts_while_compiling, dies_by_segfault, exits_quietly, raises,
                                              returns_specs)


def test_a_result_comes_back():
    assert run_in_child(returns_specs, 16, "decode_b1") == {"input_ids": ([1, 16], "int64")}


@pytest.mark.parametrize("worker,message", [
    (aborts_while_compiling, r"MIGraphX crashed \(SIGABRT\) while it was to compile bucket decode_b1"),
    (dies_by_segfault, r"MIGraphX crashed \(SIGSEGV\) while it was to parse bucket decode_b1"),
    (exits_quietly, r"exited with status 3 while it was to start bucket decode_b1, without a result"),
])
def test_a_child_that_dies_is_named_by_bucket_step_and_signal(worker, message):
    with pytest.raises(MxrChildCrash, match=message):
        run_in_child(worker, None, "decode_b1")


def test_an_exception_in_the_child_keeps_its_message():
    with pytest.raises(MxrChildError, match=r"failed to parse bucket prefill_b1_s8: parse_onnx: cannot read x.onnx"):
        run_in_child(raises, "x.onnx", "prefill_b1_s8")


def test_a_crash_while_compiling_a_bucket_leaves_no_lowered_files(dense_model, tmp_path):
    source = dense_model("decomposed")
    options = CompileOptions(target="mxr", device="ref", block_size=4, num_blocks=32, prefill_lens=(8,),
                             batches=(1,), max_context=16, fp16=True)
    model, _ = rewrite_to_paged(load_model(source), block_size=4)
    plan = plan_mxr(source, model, 32, options, progress=lambda _: None)
    staging = tmp_path / "out.tmp-1"
    staging.mkdir()
    with pytest.raises(MxrCompileError, match=r"MIGraphX crashed \(SIGABRT\) while it was to compile bucket "
                                              r"prefill_b1_s8 \(prefill_b1_s8.mxr\).*Nothing was written"):
        write_mxr(plan, staging, options, progress=lambda _: None, worker=aborts_while_compiling)
    assert list(staging.iterdir()) == []
    assert not list(tmp_path.glob("core*"))
