"""An on/off switch that says which it is: ``[x] on`` / ``[ ] off``.

Textual's Switch is a slider whose only state is a shade (a dark block at one end or the other), which
reads as nothing on a dim terminal or in monochrome. This one keeps the Switch's keys (Enter, Space),
click, ``value`` and ``Switch.Changed`` message, and draws the state in words.
"""

from __future__ import annotations

from textual.app import RenderResult
from textual.geometry import Size
from textual.widgets import Switch

ON, OFF = "[x] on", "[ ] off"


class Toggle(Switch):
    DEFAULT_CSS = """
    Toggle {
        border: none;
        padding: 0;
        height: 1;
        width: 7;
        background: transparent;
        color: $text-muted;
        &.-on { color: $success; text-style: bold; }
        &:focus { border: none; background: $primary; color: auto 95%; background-tint: transparent; }
        &:hover { background: $boost; }
    }
    """

    def render(self) -> RenderResult:
        return ON if self.value else OFF

    def watch_value(self, value: bool) -> None:
        self.set_class(value, "-on")
        super().watch_value(value)

    def get_content_width(self, container: Size, viewport: Size) -> int:
        return max(len(ON), len(OFF))
