"""A titled, scrolling text pane that grows as streamed text arrives (the playground's answers)."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import VerticalScroll
from textual.widgets import Static


class AnswerPane(VerticalScroll):
    """Plain text (never markup) appended chunk by chunk; keeps the end in view while streaming."""

    DEFAULT_CSS = """
    AnswerPane { border: round $panel-lighten-2; height: 1fr; padding: 0 1; }
    AnswerPane.streaming { border: round $accent; }
    AnswerPane > Static { width: 1fr; }
    """

    def __init__(self, title: str, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.border_title = title
        self.text = ""

    def compose(self) -> ComposeResult:
        yield Static("", markup=False, classes="answer-text")

    def _body(self) -> Static:
        return self.query_one(".answer-text", Static)

    def clear(self, placeholder: str = "") -> None:
        self.text = ""
        self._body().update(placeholder)

    def append(self, chunk: str) -> None:
        self.text += chunk
        self._body().update(self.text)
        self.scroll_end(animate=False)

    def set_text(self, text: str) -> None:
        self.text = text
        self._body().update(text)
