"""MIGraphX's compile steps run in a child process, so a native crash is an error and not a dead compile.

    parent                                   child (`python -m pagedc.mxr.child`, core dumps off)
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
module-level function (pickled by name), so tests can pass one that really
dies by a signal. A fresh interpreter (not multiprocessing's spawn, which
re-runs the caller's unguarded `__main__` code, nor fork, which copies
ONNX Runtime's threads) runs it, with the parent's sys.path.
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

Report = Callable[[str], None]
Worker = Callable[[Any, Report], Any]


class MxrChildError(Exception):
    """A MIGraphX step raised in the child; the message names the bucket, the step and MIGraphX's message."""


class MxrChildCrash(MxrChildError):
    """The child died (a signal or an exit without a result); the message names the bucket, the step, the signal."""


def run_in_child(worker: Worker, job: Any, bucket: str) -> Any:
    """worker(job, report) in a child process; its result, or MxrChildError / MxrChildCrash naming `bucket`."""
    receive, send = os.pipe()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}   # what the parent imports
    child = subprocess.Popen([sys.executable, "-m", "pagedc.mxr.child", str(send)], stdin=subprocess.PIPE,
                             pass_fds=(send,), env=env)
    os.close(send)     # the parent keeps only the reading end: EOF when the child is gone
    step, outcome = "start", None
    try:
        child.stdin.write(pickle.dumps((worker, job)))
        child.stdin.close()
        with os.fdopen(receive, "rb") as messages:
            while outcome is None:
                try:
                    kind, *payload = pickle.load(messages)
                except EOFError:
                    break
                if kind == "step":
                    step = payload[0]
                else:
                    outcome = (kind, payload)
        child.wait()
    finally:
        if child.poll() is None:     # interrupted (Ctrl-C) while the child worked
            child.kill()
            child.wait()
    return _result(outcome, child.returncode, step, bucket)


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


def _child_main(send_fd: int) -> None:
    """In the child: no core file; read (worker, job) from stdin, report steps, send the result or the error."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    worker, job = pickle.load(sys.stdin.buffer)
    with os.fdopen(send_fd, "wb") as messages:
        def send(message: tuple) -> None:
            pickle.dump(message, messages)
            messages.flush()
        try:
            result = worker(job, lambda step: send(("step", step)))
        except Exception as err:   # MIGraphX raises RuntimeError subclasses from C++
            send(("error", str(err)))
        else:
            send(("done", result))


if __name__ == "__main__":
    _child_main(int(sys.argv[1]))
