"""A log pane of run events that never cuts a line: each event is wrapped to the pane's width with a
hanging indent under its timestamp, and re-wrapped when the pane's width changes."""

from __future__ import annotations

import textwrap
from collections import deque
from typing import Any, Callable, Iterable

from rich.text import Text
from textual.events import Resize
from textual.widgets import RichLog

# One event → (its line as plain text, a Rich style for the whole line).
Formatter = Callable[[dict[str, Any]], tuple[str, str]]


NBSP = "\u00a0"


def wrap_line(plain: str, width: int, indent: int = 9) -> list[str]:
    """``plain`` in lines of at most ``width`` cells; continuation lines start under the text after
    the timestamp (``indent``); long words (paths) are split rather than cut.

    Event lines separate their fields with two spaces ("loss 1.0056  lr 8.03e-05"): a short field is
    kept whole, so a line breaks between fields, never between a name and its value.
    """
    if width <= indent + 8 or len(plain) <= width:
        return [plain]
    fields = plain.split("  ")
    glued = "  ".join(f.replace(" ", NBSP) if len(f) <= 24 else f for f in fields)
    lines = textwrap.wrap(glued, width, subsequent_indent=" " * indent, break_on_hyphens=False,
                          drop_whitespace=True) or [glued]
    return [line.replace(NBSP, " ") for line in lines]


class EventLog(RichLog):
    """``add(events)`` appends; ``reset(events)`` starts over. Keeps the last ``max_events`` events."""

    def __init__(self, formatter: Formatter, *, max_events: int = 300, id: str | None = None) -> None:
        super().__init__(id=id, max_lines=max_events * 3, min_width=20, wrap=False, markup=False)
        self.formatter = formatter
        self.events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._wrapped_at = 0

    @property
    def width_now(self) -> int:
        return self.scrollable_content_region.width

    def add(self, events: Iterable[dict[str, Any]]) -> None:
        events = list(events)[-(self.events.maxlen or 300):]
        self.events.extend(events)
        width = self.width_now
        for ev in events:
            self._write(ev, width)

    def reset(self, events: Iterable[dict[str, Any]] = ()) -> None:
        self.events.clear()
        self.clear()
        self.add(events)

    def plain_lines(self) -> list[str]:
        """What the pane shows, one string a screen line (for tests)."""
        return [strip.text for strip in self.lines]

    def _write(self, ev: dict[str, Any], width: int) -> None:
        plain, style = self.formatter(ev)
        if width < 20:  # not laid out yet: RichLog defers the write; re-wrapped once the width is known
            self._wrapped_at = 0
            self.write(Text(plain, style=style, no_wrap=True))
            return
        self._wrapped_at = width
        for line in wrap_line(plain, width):
            self.write(Text(line, style=style, no_wrap=True), width=width)

    def on_resize(self, event: Resize) -> None:
        # RichLog's own handler (called after this one) flushes deferred writes: re-wrap after it.
        self.call_after_refresh(self._rewrap)

    def _rewrap(self) -> None:
        width = self.width_now
        if width >= 20 and width != self._wrapped_at and self.events:
            self.clear()
            for ev in self.events:
                self._write(ev, width)
