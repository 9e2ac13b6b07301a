"""The worker process seen from outside: its pids (with children) and resident memory, via psutil.

Used by the monitor for "our share" of each GPU and, without a GPU, the worker's CPU memory.
Every function tolerates a process that vanished between two calls.
"""

from __future__ import annotations


def process_tree(pid: int | None) -> list[int]:
    """The pid and its live descendants; empty when the process is gone."""
    if pid is None:
        return []
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return []
        return [pid, *(child.pid for child in proc.children(recursive=True))]
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def tree_rss(pid: int | None) -> int | None:
    """Resident memory of the process and its children in bytes; None when it is not running."""
    pids = process_tree(pid)
    if not pids:
        return None
    import psutil

    total = 0
    for p in pids:
        try:
            total += psutil.Process(p).memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return total
