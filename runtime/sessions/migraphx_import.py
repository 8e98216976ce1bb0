"""The one place pagedc imports MIGraphX's Python module, lazily.

MIGraphX ships with ROCm (`/opt/rocm/lib/migraphx*.so`), not on PyPI, so it is
imported only when a MIGraphX artifact is compiled or run, and its absence is
an error that says what to install, never a crash at import time or a silent
fallback to another format (DESIGN.md §6).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pagedc.errors import BackendError

INSTALL_HINT = ("install ROCm's MIGraphX (e.g. `apt install migraphx` from the ROCm repository) and put its "
                "Python module on the path: export PYTHONPATH=/opt/rocm/lib:$PYTHONPATH")


class MigraphxUnavailable(BackendError):
    """`import migraphx` failed; the message names what to install."""


def is_migraphx_available() -> bool:
    try:
        import_migraphx()
    except MigraphxUnavailable:
        return False
    return True


def import_migraphx() -> ModuleType:
    try:
        return importlib.import_module("migraphx")
    except ImportError as err:
        raise MigraphxUnavailable(f"MIGraphX's Python module is not importable ({err}); {INSTALL_HINT}") from None
