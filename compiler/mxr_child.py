"""MIGraphX's compile steps run in a child process, so a native crash is an error and not a dead compile.

    parent                                   child (multiprocessing "spawn", core dumps off)
    ------                                   -----
    run_in_child(job, bucket)   ─job──▶       worker(job, report):
                                ◀─"step"──      report("parse")    migraphx.parse_onnx(...)
                                ◀─"step"──      report("compile")  program.compile(...)
                                ◀─"done"──      result (picklable: parameter specs)
    child died by a signal       ─▶  MxrChildCrash: "MIGraphX crashed (SIGABRT) while it was to <step> bucket <b>"
    child raised                 ─▶  MxrChildError: "MIGraphX failed to <step> bucket <b>: <message>"

NOTE: MIGraphX is C++; a bad graph can abort or segfault inside it (e.g. on
MIGraphX f729a52 `quantize_fp16` of an Optimum Llama dies in glibc with
`free(): invalid next size (fast)`). In-process that kills pagedc before it can
remove its staging directory; in a child the parent sees the exit signal,
names the step the child last reported, and cleans up. The worker is a
module-level function (spawn pickles it by name), so tests can pass one that
really dies by a signal.
"""

from __future__ import annotations

import multiprocessing
import resource
import signal
from collections.abc import Callable
from typing import Any

Report = Callable[[str], None]
Worker = Callable[[Any, Report], Any]


class MxrChildError(Exception):
    """A MIGraphX step raised in the child; the message names the bucket, the step and MIGraphX's message."""


class MxrChildCrash(MxrChildError):
    """The child died (a signal or an exit without a result); the message names the bucket, the step, the signal."""


def run_in_child(worker: Worker, job: Any, bucket: str) -> Any:
    """worker(job, report) in a spawned child; its result, or MxrChildError / MxrChildCrash naming `bucket`."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_child_main, args=(worker, job, send), name=f"pagedc-migraphx-{bucket}",
                            daemon=True)
    child.start()
    send.close()     # the parent keeps only the reading end: EOF when the child is gone
    step, outcome = "start", None
    try:
        while outcome is None:
            try:
                kind, *payload = receive.recv()
            except EOFError:
                break
            if kind == "step":
                step = payload[0]
            else:
                outcome = (kind, payload)
        child.join()
    finally:
        receive.close()
        if child.is_alive():     # interrupted (Ctrl-C) while the child worked
            child.kill()
            child.join()
    return _result(outcome, child.exitcode, step, bucket)


def _result(outcome: tuple[str, list] | None, exitcode: int | None, step: str, bucket: str) -> Any:
    if outcome is not None and outcome[0] == "done":
        return outcome[1][0]
    if outcome is not None:                                   # ("error", [message])
        raise MxrChildError(f"MIGraphX failed to {step} bucket {bucket}: {outcome[1][0]}")
    if exitcode is not None and exitcode < 0:
        name = _signal_name(-exitcode)
        raise MxrChildCrash(f"MIGraphX crashed ({name}) while it was to {step} bucket {bucket}: a native error "
                            "inside MIGraphX (its message, if any, is printed above). Nothing was written; try "
                            "without --fp16, or another MIGraphX version, and report the model to MIGraphX")
    raise MxrChildCrash(f"MIGraphX's compile process exited with status {exitcode} while it was to {step} bucket "
                        f"{bucket}, without a result. Nothing was written")


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _child_main(worker: Worker, job: Any, send) -> None:
    """In the child: no core file, report steps, send the result or the error message."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        result = worker(job, lambda step: send.send(("step", step)))
    except Exception as err:   # MIGraphX raises RuntimeError subclasses from C++
        send.send(("error", str(err)))
    else:
        send.send(("done", result))
    finally:
        send.close()
