"""A line chart drawn with braille dots: several coloured series, a legend, log-scale y.

Each cell holds 2×4 dots, so a chart W columns wide shows 2·W points per series: every series is
down-sampled (mean per bucket, ``sft_tui.core.run.metrics.downsample``) to exactly that many buckets
over the shared x range before drawing, so a 100k-step run costs the same to draw as a 500-step one.
The rendered text is cached until the data, the options or the size change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from rich.style import Style
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from sft_tui.core.format import compact
from sft_tui.core.run.metrics import SeriesReducer, downsample

# Braille dot bits, indexed [row 0..3][column 0..1] inside one cell.
_DOTS = ((0x01, 0x08), (0x02, 0x10), (0x04, 0x20), (0x40, 0x80))
PALETTE = ["#4EBF71", "#F5A623", "#5AA9E6", "#E05D5D", "#B48EDB", "#E6D35A", "#4DD0C8", "#EE82C5"]


@dataclass
class ChartSeries:
    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    color: str = PALETTE[0]
    smooth: bool = True  # apply the chart's smoothing (eval points usually not)
    extra: dict = field(default_factory=dict)


class LineChart(Widget):
    """``set_series([...])`` then it draws itself; ``log_y`` and ``smoothing`` redraw on change."""

    DEFAULT_CSS = """
    LineChart { height: 1fr; min-height: 5; }
    """

    log_y: reactive[bool] = reactive(False)
    smoothing: reactive[float] = reactive(0.0)

    def __init__(self, title: str = "", *, empty_text: str = "no data yet", id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.title = title
        self.empty_text = empty_text
        self.series: list[ChartSeries] = []
        self._data_version = 0
        self._cache_key: tuple | None = None
        self._cache: Text | None = None
        self.last_points: dict[str, int] = {}  # points drawn per series after down-sampling
        self._reducers: dict[tuple, SeriesReducer] = {}

    # ------------------------------------------------------------------ data
    def set_series(self, series: list[ChartSeries], title: str | None = None) -> None:
        self.series = series
        self._reducers.clear()
        if title is not None:
            self.title = title
        self._data_version += 1
        self.refresh()

    def touch(self) -> None:
        """The series' lists grew in place: redraw."""
        self._data_version += 1
        self.refresh()

    def set_empty_text(self, text: str) -> None:
        """What the chart says while it has nothing to draw (several lines allowed: the first is bold)."""
        if text != self.empty_text:
            self.empty_text = text
            self._data_version += 1
            self.refresh()

    SMOOTHING_STEPS = (0.0, 0.6, 0.9, 0.97)

    def toggle_log(self) -> None:
        self.log_y = not self.log_y

    def cycle_smoothing(self) -> None:
        """off → 0.6 → 0.9 → 0.97 → off; the key every chart screen binds to 'm'."""
        steps = self.SMOOTHING_STEPS
        i = steps.index(self.smoothing) if self.smoothing in steps else 0
        self.smoothing = steps[(i + 1) % len(steps)]

    def watch_log_y(self) -> None:
        self.refresh()

    def watch_smoothing(self) -> None:
        self.refresh()

    @property
    def total_points(self) -> int:
        return sum(len(s.xs) for s in self.series)

    # ------------------------------------------------------------------ drawing
    def render(self) -> Text:
        width, height = self.content_size.width, self.content_size.height
        key = (width, height, self._data_version, self.log_y, self.smoothing, self.title,
               tuple(len(s.xs) for s in self.series))
        if key != self._cache_key or self._cache is None:
            self._cache = self.draw(width, height)
            self._cache_key = key
        return self._cache

    def _legend(self, width: int) -> Text:
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.title:
            text.append(self.title, style="bold")
            text.append("  ")
        if not any(len(s.xs) for s in self.series):
            return text  # nothing drawn: no keys to lines that are not there
        for s in self.series:
            text.append("━ ", style=Style(color=s.color, bold=True))
            text.append(s.name + "  ")
        opts = []
        if self.log_y:
            opts.append("log")
        if self.smoothing > 0:
            opts.append(f"smooth {self.smoothing:g}")
        if opts:
            text.append("(" + ", ".join(opts) + ")", style="dim")
        text.truncate(width)
        return text

    def draw(self, width: int, height: int) -> Text:
        out = Text(no_wrap=True, overflow="crop")
        if width < 12 or height < 3:
            return out
        out.append_text(self._legend(width))
        rows = height - 2  # legend on top, x axis labels at the bottom
        prepared = self._prepare()
        if not prepared:
            lines = self._empty_lines(width)
            top = max((rows + 1 - len(lines)) // 2, 0)
            for r in range(rows + 1):
                out.append("\n")
                if top <= r < top + len(lines):
                    line = lines[r - top]
                    out.append(" " * max((width - len(line)) // 2, 0) + line,
                               style="dim" if r > top or len(lines) == 1 else "bold")
            return out

        ys_all = [y for _, ys, _ in prepared for y in ys]
        lo, hi = min(ys_all), max(ys_all)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5 if not self.log_y else lo - 0.1, hi + 0.5 if not self.log_y else hi + 0.1
        else:
            margin = (hi - lo) * 0.04
            lo, hi = lo - margin, hi + margin
        labels = [self._label(hi - (hi - lo) * r / max(rows - 1, 1)) for r in range(rows)]
        label_w = min(max(len(lab) for lab in labels), 9)
        cols = width - label_w - 1
        if cols < 4:
            return out
        xs_all = [x for s in self.series if len(s.xs) for x in (min(s.xs), max(s.xs))]
        x_lo, x_hi = min(xs_all), max(xs_all)
        dots_w, dots_h = cols * 2, rows * 4

        grid = [[0] * cols for _ in range(rows)]
        colour: list[list[str | None]] = [[None] * cols for _ in range(rows)]
        self.last_points = {}
        x_span = x_hi - x_lo
        y_span = hi - lo
        for xs, ys, s in prepared:
            if not xs:
                continue
            bx, by, _ = downsample(xs, ys, dots_w, "mean", (x_lo, x_hi))
            self.last_points[s.name] = len(bx)
            prev = None
            for x, y in zip(bx, by):
                px = int(round((x - x_lo) / x_span * (dots_w - 1))) if x_span > 0 else dots_w // 2
                py = int(round((hi - y) / y_span * (dots_h - 1)))
                if prev is None:
                    self._plot(grid, colour, px, py, s.color)
                else:
                    self._line(grid, colour, prev[0], prev[1], px, py, s.color)
                prev = (px, py)

        tick_rows = {0, rows - 1, (rows - 1) // 2} if rows >= 5 else {0, rows - 1}
        for r in range(rows):
            out.append("\n")
            label = labels[r] if r in tick_rows else ""
            out.append(label.rjust(label_w)[:label_w], style="dim")
            out.append("┤" if r in tick_rows else "│", style="dim")
            row, crow = grid[r], colour[r]
            run_style, run_chars = None, []
            for c in range(cols):
                bits = row[c]
                ch = chr(0x2800 + bits) if bits else " "
                style = crow[c] if bits else None
                if style != run_style and run_chars:
                    out.append("".join(run_chars), style=run_style)
                    run_chars = []
                run_style = style
                run_chars.append(ch)
            if run_chars:
                out.append("".join(run_chars), style=run_style)
        # x axis: first, middle and last step
        out.append("\n")
        axis = [" "] * width
        mid = label_w + 1 + cols // 2
        for value, align in ((x_lo, "left"), (x_hi, "right"), ((x_lo + x_hi) / 2, "centre")):
            if x_lo == int(x_lo) and x_hi == int(x_hi):
                value = round(value)  # steps are whole numbers
            s = str(int(value)) if value == int(value) else compact(value, 4)
            start = {"left": label_w + 1, "right": width - len(s), "centre": mid - len(s) // 2}[align]
            start = min(max(start, 0), width - len(s))
            if all(ch == " " for ch in axis[max(start - 1, 0):start + len(s) + 1]):
                axis[start:start + len(s)] = list(s)
        out.append("".join(axis), style="dim")
        return out

    def _empty_lines(self, width: int) -> list[str]:
        """The empty text (one or more lines), each wrapped to the chart's width, never cut."""
        import textwrap

        lines: list[str] = []
        for para in self.empty_text.splitlines() or [""]:
            lines += textwrap.wrap(para, max(width - 2, 8)) or [""]
        return lines

    def _label(self, value: float) -> str:
        return compact(10**value if self.log_y else value, 3)

    def _prepare(self) -> list[tuple[list[float], list[float], ChartSeries]]:
        """Each series as (xs, ys) after log/smoothing, reduced to block means incrementally."""
        prepared = []
        live: set[tuple] = set()
        for i, s in enumerate(self.series):
            if not len(s.xs):
                continue
            layers = [(s, 0.0)]
            if s.smooth and self.smoothing > 0:
                # raw values faintly underneath, the smoothed curve on top (as TensorBoard does)
                layers = [(ChartSeries(s.name + " (raw)", s.xs, s.ys, f"dim {s.color}"), 0.0), (s, self.smoothing)]
            for layer, weight in layers:
                key = (i, id(s.xs), weight, self.log_y)
                live.add(key)
                reducer = self._reducers.get(key)
                if reducer is None or reducer.consumed > len(s.xs):
                    reducer = self._reducers[key] = SeriesReducer(self.log_y, weight)
                reducer.extend(s.xs, s.ys)
                xs, ys = reducer.points()
                if xs:
                    prepared.append((xs, ys, layer))
        for key in list(self._reducers):
            if key not in live:
                del self._reducers[key]
        return prepared

    @staticmethod
    def _plot(grid, colour, px: int, py: int, color: str) -> None:
        c, r = px >> 1, py >> 2
        if 0 <= r < len(grid) and 0 <= c < len(grid[0]):
            grid[r][c] |= _DOTS[py & 3][px & 1]
            colour[r][c] = color

    @classmethod
    def _line(cls, grid, colour, x0: int, y0: int, x1: int, y1: int, color: str) -> None:
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            cls._plot(grid, colour, x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy
