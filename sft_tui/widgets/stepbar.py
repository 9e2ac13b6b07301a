"""The header's step bar: where you are in Model › Data › Training › Monitor › Evaluate › Export."""

from __future__ import annotations

from rich.text import Text
from textual.message import Message
from textual.widget import Widget

STEPS: list[tuple[str, str]] = [
    ("model", "Model"),
    ("data", "Data"),
    ("training", "Training"),
    ("monitor", "Monitor"),
    ("evaluate", "Evaluate"),
    ("export", "Export"),
]


class StepBar(Widget):
    """One line; the current step is highlighted. Clicking a step goes there (mouse is optional)."""

    DEFAULT_CSS = """
    StepBar { height: 1; background: $panel; color: $text-muted; padding: 0 1; }
    """

    class Selected(Message):
        def __init__(self, step: str) -> None:
            super().__init__()
            self.step = step

    def __init__(self, current: str, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.current = current
        self._spans: list[tuple[int, int, str]] = []

    def render(self) -> Text:
        text = Text()
        text.append("sft-tui ", style="bold")
        self._spans = []
        for i, (key, label) in enumerate(STEPS):
            if i:
                text.append(" › ", style="dim")
            start = len(text) + 1  # +1: the widget's left padding
            style = "bold reverse" if key == self.current else ""
            text.append(f" {label} ", style=style)
            self._spans.append((start, len(text) + 1, key))
        if self.current == "runs":
            text.append("   [Runs]", style="bold")
        return text

    def on_click(self, event) -> None:
        for start, end, key in self._spans:
            if start <= event.x < end:
                self.post_message(self.Selected(key))
                return
