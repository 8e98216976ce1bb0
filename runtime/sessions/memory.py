"""How much memory this machine has, and whether a KV pool fits in it.

`pagedc compile` checks the pools against the machine's total memory (the
output may be run elsewhere, but a pool larger than the whole machine is
never meant); a session checks against the memory available now, before it
allocates, so an oversized pool is a message that says what fits instead of
NumPy's "Unable to allocate" halfway through loading.

Linux: /proc/meminfo (MemTotal, MemAvailable), capped by a cgroup limit
(v2 memory.max, v1 memory.limit_in_bytes) when one is set. Elsewhere:
os.sysconf page counts; None when nothing is known (then nothing is refused).
"""

from __future__ import annotations

import os
from pathlib import Path

from pagedc.errors import BackendError

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
_CGROUP_USAGE = ("/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory/memory.usage_in_bytes")


def format_bytes(num: int | float) -> str:
    """1536 -> '1.5 KiB'; binary units, as --kv-memory takes them."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"


def total_memory() -> int | None:
    """Bytes of physical memory this process may use (machine total, capped by a cgroup limit)."""
    total = _system_bytes("MemTotal", "SC_PHYS_PAGES")
    if total is None:
        return None
    limit = _read_first(_CGROUP_LIMITS)
    return min(total, limit) if limit else total


def available_memory() -> int | None:
    """Bytes that can be allocated now without swapping (MemAvailable, capped by cgroup headroom)."""
    available = _system_bytes("MemAvailable", "SC_AVPHYS_PAGES")
    if available is None:
        return None
    limit, usage = _read_first(_CGROUP_LIMITS), _read_first(_CGROUP_USAGE)
    return min(available, limit - usage) if limit and usage is not None else available


def _system_bytes(meminfo_key: str, sysconf_pages: str) -> int | None:
    """/proc/meminfo's `meminfo_key`, else sysconf pages x page size; None where neither is there."""
    value = _meminfo(meminfo_key)
    if value is not None:
        return value
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf(sysconf_pages)
    except (ValueError, OSError, AttributeError):
        return None


def check_pools_fit(pool_bytes: int, bytes_per_block: int, where: str) -> None:
    """Raise BackendError when the pools of `pool_bytes` exceed the memory available now."""
    available = available_memory()
    if available is None or pool_bytes <= available:
        return
    fits = max(0, available // bytes_per_block)
    raise BackendError(f"{where}: the KV pools need {format_bytes(pool_bytes)}, this machine has "
                       f"{format_bytes(available)} available (of {format_bytes(total_memory() or available)}): "
                       f"about {fits} blocks fit. Recompile with a smaller --kv-memory or --num-blocks, "
                       "or free memory")


def _meminfo(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_first(paths: tuple[str, ...]) -> int | None:
    """The first readable integer among `paths` ("max" or a huge v1 value means no limit: None)."""
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
        return None
    return None
