"""The `pagedc` console script: Ctrl-C ends it quietly with exit 130, even while Python is still importing.

NOTE: the console script imports this module, not pagedc.cli, so that the
commands' imports (onnx, onnxruntime: about a second) run inside the guard.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130   # 128 + SIGINT, what shells report for Ctrl-C


def run() -> None:
    try:
        from pagedc.cli import main
    except KeyboardInterrupt:
        sys.stderr.write("\n")
        sys.exit(EXIT_INTERRUPTED)
    main(prog_name="pagedc")
