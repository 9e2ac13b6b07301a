"""Per-GPU gauges (memory with our worker's share, utilisation, temperature, power, throttling) and who
holds each GPU, or, without a GPU, the reason and the worker's CPU memory. Fed a ``GpuSnapshot`` from
``sft_tui.core.system.gpus`` and, optionally, its holders from ``sft_tui.core.system.holders``."""

from __future__ import annotations

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.core.system.holders import Holder
from sft_tui.core.format import human_bytes

_EIGHTHS = " ▏▎▍▌▋▊▉█"
MAX_HOLDER_LINES = 3  # per GPU, then "+N more": the monitor's side column is short as well as narrow


def bar(fraction: float | None, width: int, share: float | None = None, color: str = "green") -> Text:
    """A horizontal gauge; ``share`` (≤ fraction) is drawn in a stronger colour at the start."""
    width = max(width, 1)
    text = Text(no_wrap=True)
    if fraction is None:
        text.append("·" * width, style="dim")
        return text
    fraction = min(max(fraction, 0.0), 1.0)
    cells = fraction * width
    full = int(cells)
    part = int((cells - full) * 8)
    ours = int(round(min(share or 0.0, fraction) * width))
    body = "█" * full + (_EIGHTHS[part] if part and full < width else "")
    text.append(body[:ours], style="bold cyan")
    text.append(body[ours:], style=color)
    text.append("░" * (width - len(body)), style="dim")
    return text


def _level(fraction: float | None) -> str:
    if fraction is None:
        return "dim"
    return "red" if fraction >= 0.95 else "yellow" if fraction >= 0.8 else "green"


def wrapped(text: str, width: int, style: str = "", indent: int = 0, first: Text | None = None) -> list[Text]:
    """``text`` word-wrapped to ``width`` cells, continuation lines indented by ``indent``; nothing is
    cut (a word longer than a line is split). ``first`` is put before the first line (a label)."""
    import textwrap

    lead = first.cell_len if first is not None else 0
    room = max(width - max(lead, indent), 4)
    parts = textwrap.wrap(text, room, break_on_hyphens=False) or [""]
    lines = []
    for i, part in enumerate(parts):
        line = (first.copy() if first is not None else Text()) if i == 0 else Text(" " * max(lead, indent))
        line.append(part, style=style)
        line.no_wrap = True
        lines.append(line)
    return lines


def throttle_lines(gpu: GpuStats, width: int) -> list[Text]:
    """A yellow "throttled: power cap (1410/1980 MHz)" when something holds the clocks down (idle does not count)."""
    reasons = gpu.throttled_by
    if not reasons:
        return []
    text = "throttled: " + ", ".join(reasons)
    if gpu.clock_sm_mhz is not None and gpu.clock_sm_max_mhz:
        text += f" ({gpu.clock_sm_mhz}/{gpu.clock_sm_max_mhz} MHz)"
    return wrapped(text, width, "yellow", 2)


def holder_lines(rows: list[Holder], width: int, limit: int = MAX_HOLDER_LINES) -> list[Text]:
    """Who holds a GPU, one line each: our runs first, by name (their processes summed), then the others
    biggest first as "alice 9.0 GiB python train.py"; at most ``limit`` lines, then "+N more"."""
    entries: list[Text] = []
    runs: dict[str, int] = {}
    for h in rows:
        if h.run_name is not None:
            runs[h.run_name] = runs.get(h.run_name, 0) + (h.used_bytes or 0)
    for name, used in runs.items():
        entries.append(Text.assemble(("run ", "cyan"), (name, "bold cyan"), " ", (human_bytes(used), "bold cyan")))
    for h in rows:
        if h.ours:
            continue
        used = human_bytes(h.used_bytes, "?")
        if not h.visible:
            # A container or another user's process: its memory is known, not whose it is.
            entries.append(Text.assemble((f"pid {h.pid}", "bold"), " ", used, (" (owner unknown)", "dim")))
        else:
            entries.append(Text.assemble((h.user or "?", "bold"), " ", used, (" " + (h.command or f"pid {h.pid}"), "dim")))
    shown = entries if len(entries) <= limit else entries[: limit - 1]
    lines = []
    for entry in shown:
        line = Text("  ", no_wrap=True)
        line.append_text(entry)
        line.truncate(max(width, 4), overflow="ellipsis")
        lines.append(line)
    if len(shown) < len(entries):
        lines.append(Text(f"  +{len(entries) - len(shown)} more (sft-tui gpus)", style="dim", no_wrap=True,
                          overflow="ellipsis"))
        lines[-1].truncate(max(width, 4), overflow="ellipsis")
    return lines


def gpu_lines(snapshot: GpuSnapshot | None, our_pids: list[int], width: int,
              worker_rss: int | None = None, worker_alive: bool = False,
              worker_note: str | None = None, holders: dict[int, list[Holder]] | None = None) -> list[Text]:
    """The panel's lines for a given width (the monitor's side column is ~26-40 cells).

    ``worker_note`` replaces what is said about the worker: a finished run has none ("" says nothing).
    ``holders`` ({GPU index: holders}, from ``core.system.holders``) lists who uses each GPU under it.
    """
    lines: list[Text] = []
    if snapshot is None:
        return [Text("sampling GPUs…", style="dim")]
    if not snapshot.available or not snapshot.gpus:
        reason = snapshot.reason or "no NVIDIA GPU found"
        head, sep, detail = reason.partition(" (")
        lines += wrapped(head, width, "yellow", 4, Text("GPU ", style="bold"))
        if sep:
            lines += wrapped("(" + detail, width, "dim", 1)
        if worker_note is not None:
            if worker_note:
                lines += wrapped(worker_note, width, "dim", 2)
        elif worker_rss is not None:
            lines.append(Text.assemble(("worker RSS ", "dim"), human_bytes(worker_rss), " (CPU)"))
        else:
            lines.append(Text("worker not running" if not worker_alive else "worker RSS n/a", style="dim"))
        return lines
    bar_w = max(width - 18, 4)
    for gpu in snapshot.gpus:
        name = (gpu.name or "GPU").replace("NVIDIA ", "")
        lines.append(Text.assemble((f"GPU{gpu.index} ", "bold"), (name, "bold"), no_wrap=True, overflow="ellipsis"))
        frac = gpu.mem_used / gpu.mem_total if gpu.mem_used is not None and gpu.mem_total else None
        ours = gpu.memory_of(our_pids) if our_pids else 0
        share = ours / gpu.mem_total if gpu.mem_total else None
        line = Text("mem  ", style="dim", no_wrap=True)
        line.append_text(bar(frac, bar_w, share, _level(frac)))
        gib = 2**30
        if gpu.mem_used is not None and gpu.mem_total:
            line.append(f" {gpu.mem_used / gib:.1f}/{gpu.mem_total / gib:.0f}G")
        lines.append(line)
        if our_pids:
            # "not on this GPU" only where it fits: at 80 columns the panel cut it mid-word.
            idle = "0 (not on this GPU)" if width >= len("     ours 0 (not on this GPU)") else "0"
            lines.append(Text.assemble(("     ours ", "dim"), (f"{ours / gib:.1f}G", "bold cyan") if ours else (idle, "dim"),
                                       no_wrap=True))
        util = gpu.util_percent
        line = Text("util ", style="dim", no_wrap=True)
        line.append_text(bar(None if util is None else util / 100, bar_w, None, "magenta"))
        line.append(f" {util:.0f}%" if util is not None else " n/a")
        lines.append(line)
        temp = f"{gpu.temperature_c:.0f}°C" if gpu.temperature_c is not None else "n/a"
        power = f"{gpu.power_w:.0f}W" if gpu.power_w is not None else "n/a"
        if gpu.power_limit_w:
            power += f"/{gpu.power_limit_w:.0f}W"
        temp_style = "red" if (gpu.temperature_c or 0) >= 85 else ""
        temp_line = Text.assemble(("temp ", "dim"), (temp, temp_style), no_wrap=True)
        power_part = Text.assemble(("power ", "dim"), power)
        if temp_line.cell_len + 2 + power_part.cell_len <= width:
            temp_line.append("  ")
            temp_line.append_text(power_part)
            lines.append(temp_line)
        else:  # narrow: on two lines rather than cut
            lines += [temp_line, power_part]
        lines += throttle_lines(gpu, width)
        if holders is not None:
            lines += holder_lines(holders.get(gpu.index, []), width)
    if worker_note:
        lines += wrapped(worker_note, width, "dim", 2)
    return lines


class GpuPanel(Static):
    """Redrawn by ``update_snapshot`` about once a second."""

    DEFAULT_CSS = """
    GpuPanel { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.snapshot: GpuSnapshot | None = None
        self.our_pids: list[int] = []
        self.worker_rss: int | None = None
        self.worker_alive = False
        self.worker_note: str | None = None
        self.holders: dict[int, list[Holder]] | None = None

    def update_snapshot(self, snapshot: GpuSnapshot | None, our_pids: list[int], worker_rss: int | None,
                        worker_alive: bool, worker_note: str | None = None,
                        holders: dict[int, list[Holder]] | None = None) -> None:
        self.snapshot, self.our_pids, self.worker_rss, self.worker_alive = snapshot, our_pids, worker_rss, worker_alive
        self.worker_note, self.holders = worker_note, holders
        self._redraw()

    def lines(self, width: int | None = None) -> list[Text]:
        return gpu_lines(self.snapshot, self.our_pids, width or max(self.content_size.width, 20), self.worker_rss,
                         self.worker_alive, self.worker_note, self.holders)

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        self.update(Group(*self.lines()))
