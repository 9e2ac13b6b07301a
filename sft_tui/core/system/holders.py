"""Who holds each GPU: NVML's process list turned into people, commands and our runs.

On a shared server the first question when memory is short is "whose is it?". NVML gives only pids
and bytes; this module adds the user and a shortened command line (psutil), and marks the processes
of sft-tui workers — any run in the runs dir, any rank: the pid in its ``worker.pid`` and every
descendant — with the run's name. In a container NVML reports host pids that may not exist here (or
belong to someone we may not inspect): such a process keeps its memory and is shown as "not visible
from here", never as an error. ``gpus.py`` stays the NVML reader; this is the attribution on top.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sft_tui.core.format import without_controls
from sft_tui.core.system.gpus import GpuSnapshot

COMMAND_MAX = 60


@dataclass
class Holder:
    """One process using one GPU."""

    pid: int
    used_bytes: int | None
    user: str | None = None
    command: str | None = None  # shortened: program and script names without their folders
    run_name: str | None = None  # the sft-tui run whose worker (or its child) this is
    visible: bool = True  # False: the pid is not a process we can see (another pid namespace)
    sm_util: float | None = None  # this process's recent share of the GPU's SMs, % (when NVML knows)

    @property
    def ours(self) -> bool:
        return self.run_name is not None

    def label(self) -> str:
        """Who and what, in a few words: "alice python train.py", "pid 1234 (not visible from here)"."""
        if not self.visible:
            return f"pid {self.pid} (not visible from here)"
        who = self.user or "?"
        return f"{who} {self.command}" if self.command else f"{who} pid {self.pid}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ours"] = self.ours
        return data


def short_command(cmdline: list[str], limit: int = COMMAND_MAX) -> str:
    """A command line people recognise at a glance: folders dropped from the program and from path
    arguments ("/usr/bin/python3 /home/a/train.py" → "python3 train.py"), cut with "…" past ``limit``."""
    if not cmdline:
        return ""
    parts = []
    for i, arg in enumerate(cmdline):
        if (i == 0 or arg.startswith("/")) and "/" in arg.rstrip("/"):
            arg = os.path.basename(arg.rstrip("/"))
        parts.append(arg)
    # Another user's process names its own command line: control characters in it (an escape
    # sequence that would rewrite your terminal or clipboard) are shown as spaces, never sent.
    text = " ".join(without_controls(part) for part in parts if part)
    return text if len(text) <= limit else text[: max(limit - 1, 1)] + "…"


def worker_pids(runs_dir: str | Path | None = None) -> dict[int, str]:
    """{pid: run name} for every live sft-tui worker in the runs dir and all its descendants.

    A pid file older than its process is stale (the worker died and the pid was reused): the process
    started after the file was written, so it is not ours.
    """
    import psutil

    from sft_tui.core.run.processes import process_tree
    from sft_tui.core.run.rundir import list_runs

    out: dict[int, str] = {}
    for run in list_runs(runs_dir):
        pid = run.pid()
        if pid is None:
            continue
        try:
            if psutil.Process(pid).create_time() > run.pid_path.stat().st_mtime + 1.0:
                continue
        except (psutil.Error, OSError):
            continue
        for member in process_tree(pid):
            out.setdefault(member, run.name)
    return out


def _describe(pid: int) -> tuple[bool, str | None, str | None]:
    """(visible, user, command) of a pid; every psutil failure is an unknown field, never an error."""
    import psutil

    try:
        proc = psutil.Process(pid)
    except (psutil.Error, ValueError, OSError):
        return False, None, None
    user = command = None
    try:
        user = proc.username()
    except psutil.NoSuchProcess:
        return False, None, None
    except (psutil.Error, KeyError, OSError):  # AccessDenied, or a uid without a name in this container
        try:
            user = str(proc.uids().real)
        except (psutil.Error, OSError):
            user = None
    try:
        command = short_command(proc.cmdline()) or proc.name()
    except psutil.NoSuchProcess:
        return False, None, None
    except (psutil.Error, OSError):
        try:
            command = proc.name()
        except (psutil.Error, OSError):
            command = None
    if user is None and command is None:
        return False, None, None  # nothing of it can be read from here: say so, as for a foreign pid
    return True, user, command


def holders(snapshot: GpuSnapshot, runs_dir: str | Path | None = None,
            ours: dict[int, str] | None = None) -> dict[int, list[Holder]]:
    """{GPU index: its holders, biggest first} for a snapshot; empty without GPUs.

    ``ours`` ({pid: run name}) defaults to the live workers of ``runs_dir`` (the configured runs dir
    when None); the runs dir is only looked at when some GPU has processes at all.
    """
    if not snapshot.available or not snapshot.gpus:
        return {}
    if ours is None:
        ours = worker_pids(runs_dir) if any(gpu.processes for gpu in snapshot.gpus) else {}
    seen: dict[int, tuple[bool, str | None, str | None]] = {}
    table: dict[int, list[Holder]] = {}
    for gpu in snapshot.gpus:
        rows = []
        for pid, used in gpu.processes:
            if pid not in seen:
                seen[pid] = _describe(pid)
            visible, user, command = seen[pid]
            rows.append(Holder(pid, used, user, command, ours.get(pid), visible, gpu.process_util.get(pid)))
        rows.sort(key=lambda h: (-(h.used_bytes or 0), h.pid))
        table[gpu.index] = rows
    return table


def snapshot_with_holders(snapshot: GpuSnapshot, table: dict[int, list[Holder]]) -> dict[str, Any]:
    """The snapshot's ``to_dict()`` with each GPU's ``holders`` added (the ``--json`` form)."""
    data = snapshot.to_dict()
    for gpu in data["gpus"]:
        gpu["holders"] = [h.to_dict() for h in table.get(gpu["index"], [])]
    return data
