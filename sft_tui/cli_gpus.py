"""``sft-tui gpus``: every NVIDIA GPU's gauges and who holds it, for shared servers.

Per GPU: memory, utilisation, temperature, power, SM clock and why it is throttled (when it is),
then the processes using it — pid, user, memory, shortened command — with sft-tui's own workers
marked by run name. ``--json`` is an API: the snapshot's ``to_dict()`` with ``holders`` per GPU.
Without a GPU it prints the reason and exits 0 (having no GPU is an answer, not an error).
"""

from __future__ import annotations

import argparse
import json

from sft_tui.core.format import human_bytes
from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.core.system.holders import Holder, holders, snapshot_with_holders


def add_gpus_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``gpus`` (``--json``, ``--runs-dir``) on the main parser's sub-commands."""
    p = subparsers.add_parser(
        "gpus", help="show NVIDIA GPUs and who holds them: memory, utilisation, power, clocks, processes",
        description="Show every NVIDIA GPU: memory, utilisation, temperature, power, SM clock and throttling, "
                    "and the processes holding it (user, memory, command; sft-tui runs marked by name).")
    p.add_argument("--json", action="store_true", help="machine-readable output (the snapshot with holders)")
    p.add_argument("--runs-dir", default=argparse.SUPPRESS,
                   help="runs dir whose workers are marked as sft-tui runs (default: the configured one)")
    p.set_defaults(func=cmd_gpus)
    return p


def cmd_gpus(args: argparse.Namespace) -> int:
    from sft_tui.core.system import gpus

    snap = gpus.sample_gpus()
    table = holders(snap, getattr(args, "runs_dir", None))
    if getattr(args, "json", False):
        print(json.dumps(snapshot_with_holders(snap, table), indent=2, default=str))
        return 0
    print("\n".join(gpus_report(snap, table)), flush=True)
    return 0


def gpus_report(snap: GpuSnapshot, table: dict[int, list[Holder]]) -> list[str]:
    """The plain-text report: one block per GPU, its holders under it."""
    if not snap.available or not snap.gpus:
        return [snap.reason or "no NVIDIA GPU found"]
    lines = [f"{len(snap.gpus)} GPU(s)" + (f", driver {snap.driver_version}" if snap.driver_version else "")]
    for gpu in snap.gpus:
        lines += [""] + _gpu_block(gpu) + _holder_block(table.get(gpu.index, []))
    return lines


def _gpu_block(gpu: GpuStats) -> list[str]:
    mem = "n/a"
    if gpu.mem_used is not None and gpu.mem_total:
        mem = f"{human_bytes(gpu.mem_used)} / {human_bytes(gpu.mem_total)} ({100 * gpu.mem_used / gpu.mem_total:.0f}%)"
    util = "n/a" if gpu.util_percent is None else f"{gpu.util_percent:.0f}%"
    temp = "n/a" if gpu.temperature_c is None else f"{gpu.temperature_c:.0f}°C"
    power = "n/a" if gpu.power_w is None else f"{gpu.power_w:.0f} W"
    if gpu.power_w is not None and gpu.power_limit_w:
        power += f" / {gpu.power_limit_w:.0f} W"
    lines = [f"GPU {gpu.index}  {gpu.name or '?'}",
             f"  memory {mem}   util {util}   temp {temp}   power {power}"]
    clock = ""
    if gpu.clock_sm_mhz is not None:
        clock = f"SM {gpu.clock_sm_mhz}" + (f" / {gpu.clock_sm_max_mhz}" if gpu.clock_sm_max_mhz else "") + " MHz"
    reasons = gpu.throttled_by
    if reasons:
        clock += ("   " if clock else "") + "throttled: " + ", ".join(reasons)
    if clock:
        lines.append(f"  clocks {clock}")
    return lines


def _holder_block(rows: list[Holder]) -> list[str]:
    if not rows:
        return ["  no processes"]
    with_util = any(h.sm_util is not None for h in rows)
    cells = []
    for h in rows:
        command = (h.command or "") if h.visible else "(not visible from here)"
        if h.ours:
            command += f"  ← sft-tui run {h.run_name}"
        util = ("-" if h.sm_util is None else f"{h.sm_util:.0f}%") if with_util else None
        cells.append([str(h.pid), h.user or "?", human_bytes(h.used_bytes, "?"), util, command])
    header = ["PID", "USER", "MEMORY", "SM" if with_util else None, "COMMAND"]
    keep = [i for i, title in enumerate(header) if title is not None]
    widths = {i: max(len(str(row[i])) for row in [header, *cells]) for i in keep}
    out = []
    for row in [header, *cells]:
        parts = [str(row[i]).rjust(widths[i]) if i in (0, 2, 3) else str(row[i]).ljust(widths[i]) for i in keep[:-1]]
        out.append(("  " + "  ".join(parts) + "  " + str(row[keep[-1]])).rstrip())
    return out
