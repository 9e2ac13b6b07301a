"""Per-rank rows of a multi-process run, from its latest ``ranks`` event: each rank's host, tokens/s,
forward and data-wait time and memory, the run's tokens/s in all, and which rank is slowest.

Two sizes: a small table (a row a rank) where there is room, one summary line where there is not
("2 ranks · 412 tokens/s in all · slowest: rank 1, 1.6× the median"). Nothing is cut: a long host
name loses its domain, then the host column goes, and the summary wraps.
"""

from __future__ import annotations

from typing import Any

from rich.console import Group
from rich.text import Text
from textual.widgets import Static

from sft_tui.core.format import human_bytes
from sft_tui.core.train.ranks import rank_work
from sft_tui.core.train.ranks import slowest as slowest_rank
from sft_tui.widgets.gauges import wrapped

# (title, width) of the numeric columns after rank and host; each value is right-aligned.
NUMBER_COLUMNS = (("tok/s", 8), ("fwd ms", 7), ("data ms", 8), ("memory", 9))


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) and value == value else None


def rank_rows(event: dict[str, Any]) -> list[dict[str, Any]]:
    """The event's rank rows that name a rank, by rank."""
    rows = [r for r in event.get("ranks") or [] if isinstance(r, dict) and type(r.get("rank")) is int]
    return sorted(rows, key=lambda r: r["rank"])


def slowest(event: dict[str, Any]) -> tuple[int, float] | None:
    """(rank, its work as a multiple of the median) for the slowest rank; None under two measured ranks."""
    return slowest_rank(rank_rows(event))


def stragglers(event: dict[str, Any]) -> set[int]:
    return {r for r in event.get("stragglers") or [] if type(r) is int}


def summary_pieces(event: dict[str, Any]) -> list[tuple[str, str]]:
    """(text, style) pieces of the one-line summary, most important first."""
    n = event.get("world_size") if type(event.get("world_size")) is int else len(rank_rows(event))
    pieces = [(f"{n} ranks", "bold")]
    tps = _number(event.get("tokens_per_s"))
    if tps is not None:
        pieces.append((f"{tps:,.0f} tokens/s in all", ""))
    slow = slowest(event)
    if slow is not None:
        rank, ratio = slow
        if rank in stragglers(event):
            pieces.append((f"slowest: rank {rank}, {ratio:.1f}× the median", "bold yellow"))
        else:
            pieces.append((f"even: the slowest, rank {rank}, is {ratio:.1f}× the median", "dim"))
    step = event.get("step")
    if type(step) in (int, float):
        pieces.append((f"at step {step:.0f}", "dim"))
    return pieces


def summary_lines(event: dict[str, Any], width: int) -> list[Text]:
    """The summary, its pieces joined with " · " and moved whole to the next line when they do not fit."""
    lines: list[Text] = []
    for text, style in summary_pieces(event):
        if lines and lines[-1].cell_len + 3 + len(text) <= width:
            lines[-1].append(" · ", style="dim")
            lines[-1].append(text, style=style)
        elif len(text) <= width:
            line = Text(no_wrap=True)
            line.append(text, style=style)
            lines.append(line)
        else:
            lines += wrapped(text, width, style, 2)
    return lines


def _host(row: dict[str, Any]) -> str:
    host = row.get("host")
    return host if isinstance(host, str) else "?"


def table_lines(event: dict[str, Any], width: int, max_rows: int | None = None) -> list[Text] | None:
    """A header, a row a rank (stragglers in yellow, marked ◀) and the summary; None when even the
    table without its host column is wider than ``width``. With ``max_rows``, the stragglers and the
    slowest ranks are kept and "+N more" says what was left out."""
    rows = rank_rows(event)
    if not rows:
        return None
    slow = stragglers(event)
    rank_w = max(4, *(len(str(r["rank"])) for r in rows))
    numbers_w = sum(w + 1 for _, w in NUMBER_COLUMNS) + 2  # a space before each, and the "◀" mark
    hosts = [_host(r) for r in rows]
    host_w: int | None = max(4, *(len(h) for h in hosts))
    room = width - rank_w - 2 - numbers_w
    if host_w > room:  # node1.cluster.example.org → node1
        hosts = [h.split(".")[0] for h in hosts]
        host_w = max(4, *(len(h) for h in hosts))
    if host_w > room:
        host_w = None  # no host column rather than cut names
        if rank_w + numbers_w > width:
            return None
    shown = rows
    if max_rows is not None and len(rows) > max_rows:
        keep_n = max(max_rows - 1, 1)
        by_work = sorted(rows, key=lambda r: (r["rank"] not in slow, -(rank_work(r) or 0.0), r["rank"]))
        keep = {r["rank"] for r in by_work[:keep_n]}
        shown = [r for r in rows if r["rank"] in keep]
    header = Text(no_wrap=True, style="dim")
    header.append(f"{'rank':>{rank_w}}")
    if host_w is not None:
        header.append(f"  {'host':<{host_w}}")
    for title, w in NUMBER_COLUMNS:
        header.append(f" {title:>{w}}")
    lines = [header]
    host_of = dict(zip((r["rank"] for r in rows), hosts))
    for r in shown:
        straggler = r["rank"] in slow
        line = Text(no_wrap=True)
        line.append(f"{r['rank']:>{rank_w}}", style="bold yellow" if straggler else "bold")
        if host_w is not None:
            line.append(f"  {host_of[r['rank']]:<{host_w}}", style="yellow" if straggler else "")
        tps, fwd, data = _number(r.get("tokens_per_s")), _number(r.get("forward_s")), _number(r.get("data_s"))
        values = [f"{tps:,.0f}" if tps is not None else "-", f"{1000 * fwd:.0f}" if fwd is not None else "-",
                  f"{1000 * data:.0f}" if data is not None else "-", human_bytes(r.get("memory"), "-")]
        for value, (_, w) in zip(values, NUMBER_COLUMNS):
            line.append(f" {value:>{w}}", style="yellow" if straggler else "")
        if straggler:
            line.append(" ◀", style="bold yellow")
        lines.append(line)
    if len(shown) < len(rows):
        lines.append(Text(f"+{len(rows) - len(shown)} more ranks", style="dim", no_wrap=True))
    return lines + summary_lines(event, width)


class RanksPanel(Static):
    """Redrawn by ``update_ranks``; the screen says whether there is room for the table (``compact``)."""

    DEFAULT_CSS = """
    RanksPanel { height: auto; padding: 0 1; }
    RanksPanel.-table { border: round $panel-lighten-2; border-title-color: $text-muted; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id)
        self.event: dict[str, Any] | None = None
        self.compact = True

    def update_ranks(self, event: dict[str, Any] | None, compact: bool) -> None:
        self.event, self.compact = event, compact
        self.set_class(not compact, "-table")
        self.border_title = None if compact else "ranks"
        self._redraw()

    def table_height(self, width: int) -> int:
        """Rows the table form would take, borders included (0 when it would not fit ``width``)."""
        lines = table_lines(self.event, width - 4) if self.event else None
        return len(lines) + 2 if lines else 0

    def lines(self, width: int | None = None) -> list[Text]:
        if not self.event:
            return []
        width = width or max(self.content_size.width, 20)
        table = None if self.compact else table_lines(self.event, width)
        if table is not None:
            return table
        lines = summary_lines(self.event, width)
        if lines:  # the one line says what it is about
            first = Text("ranks  ", style="dim", no_wrap=True)
            if first.cell_len + lines[0].cell_len <= width:
                first.append_text(lines[0])
                lines[0] = first
        return lines

    def on_resize(self) -> None:
        self._redraw()

    def _redraw(self) -> None:
        self.update(Group(*self.lines()))
