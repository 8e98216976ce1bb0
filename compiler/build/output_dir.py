"""The compile output directory: refused when writing it could destroy data, staged, and committed whole.

    check_output(out, source, weight_files, force)   # before anything is read or written
    staging = make_staging(out)                        # OUT.tmp-* next to OUT
    ... write into staging ...
    commit(staging, out)                               # rename; an old OUT is moved aside, then removed

Refused, --force or not (replacing OUT deletes everything in it):
- OUT is, or contains, the source model, its directory, or a file of its
  external weights (`-o .`, `-o src` for src/model.onnx);
- OUT is an existing directory that is not a compile output (no
  manifest.json) and is not empty: --force replaces compile outputs only.
OUT inside the source's directory (the default, src/model.paged) is fine.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

from pagedc.errors import RequestError
from pagedc.manifest import FILENAME as MANIFEST_FILE


class OutputError(RequestError):
    """The output directory cannot be written or would destroy data; the message says what to do instead."""


def check_output(out_dir: Path, source: Path, weight_files: list[Path], overwrite: bool) -> None:
    out = out_dir.resolve()
    for precious in [source, source.parent, *weight_files]:
        precious = precious.resolve()
        if precious == out or out in precious.parents:
            raise OutputError(f"{out_dir} would replace {_what(precious, source)}: the output must not be or contain "
                              "the source model, its directory or its weights (--force or not); choose another -o, "
                              f"e.g. -o {source.with_name(source.stem + '.paged')}")
    if not out_dir.parent.is_dir():
        raise OutputError(f"{out_dir.parent}: output's parent directory does not exist; create it or choose another -o")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"{out_dir} exists and is not a directory; choose another -o")
    if out_dir.exists() and not overwrite:
        raise OutputError(f"{out_dir} already exists; pass --force to replace it or -o to choose another directory")
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).is_file():
        raise OutputError(f"{out_dir} is not a `pagedc compile` output (no {MANIFEST_FILE}) and is not empty; "
                          "--force replaces compile outputs only. Remove it yourself or choose another -o")
    if not os.access(out_dir.parent, os.W_OK | os.X_OK):
        raise OutputError(f"{out_dir.parent} is not writable; choose another -o")


def make_staging(out_dir: Path) -> Path:
    """An empty OUT.tmp-* beside OUT, made by one mkdir (so with the permissions any new directory gets).

    NOTE: a plain mkdir of a unique name rather than mkdtemp + chmod: mkdtemp makes 0700, and reading
    the umask to undo that means setting it, process-wide, which races with other threads.
    """
    for _ in range(100):
        staging = out_dir.parent / f"{out_dir.name}.tmp-{secrets.token_hex(4)}"
        try:
            staging.mkdir()
            return staging
        except FileExistsError:
            continue
        except OSError as err:
            raise OutputError(f"{out_dir.parent}: cannot create the output there ({err.strerror}); "
                              "choose another -o") from None
    raise OutputError(f"{out_dir.parent}: could not find a free {out_dir.name}.tmp-* name; remove old ones")


def commit(staging: Path, out_dir: Path) -> None:
    """Rename staging to out_dir; an existing out_dir is moved aside first and removed after."""
    backup = None
    if out_dir.exists():
        backup = out_dir.with_name(f"{out_dir.name}.old-{staging.name.rsplit('-', 1)[-1]}")
        out_dir.rename(backup)
    staging.rename(out_dir)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def _what(precious: Path, source: Path) -> str:
    if precious == source.resolve():
        return f"the source model {source}"
    if precious == source.parent.resolve():
        return f"the source model's directory {source.parent}"
    return f"the source model's weights {precious}"


