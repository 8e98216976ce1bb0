"""Workers for tests/compiler/test_mxr_child.py, in a module of their own: the spawned child imports
only this (and pagedc.mxr.child), not the test module's imports."""

from __future__ import annotations

import ctypes
import os


def aborts_while_compiling(job, report):
    report("parse")
    report("compile")
    os.abort()          # what glibc does on `free(): invalid next size`


def dies_by_segfault(job, report):
    report("parse")
    ctypes.string_at(0)     # reads address 0: SIGSEGV


def raises(job, report):
    report("parse")
    raise RuntimeError(f"parse_onnx: cannot read {job}")


def exits_quietly(job, report):
    os._exit(3)


def returns_specs(job, report):
    report("parse")
    return {"input_ids": ([1, job], "int64")}
