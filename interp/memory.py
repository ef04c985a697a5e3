"""How much memory this process can still take, for stages that size their buffers to it."""

from __future__ import annotations


def available_memory() -> int | None:
    """Bytes this process can still allocate: Linux ``MemAvailable``, lowered to the cgroup's room when it sets a
    limit; None where neither is readable."""
    free = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        limit = open("/sys/fs/cgroup/memory.max").read().strip()
        if limit != "max":
            room = int(limit) - int(open("/sys/fs/cgroup/memory.current").read())
            free = room if free is None else min(free, room)
    except (OSError, ValueError):
        pass
    return free
