"""The frame every step screen shares: step bar on top, keys in the footer, help on F1/?."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer

from sft_tui.widgets.stepbar import StepBar


class StepScreen(Screen):
    """Subclasses set STEP (a key of the step bar), TITLE and HELP and implement compose_body."""

    STEP = ""
    TITLE = ""
    HELP = "No help for this screen yet."

    BINDINGS = [
        Binding("f1", "app.help", "Help", id="help"),
        Binding("question_mark", "app.help", "Help", show=False, id="help_question"),
    ]

    def compose(self) -> ComposeResult:
        yield StepBar(self.STEP, id="stepbar")
        yield from self.compose_body()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    @property
    def session(self):
        """The app-wide setup in progress (``sft_tui.core.session.Session``)."""
        return self.app.session  # type: ignore[attr-defined]

    def on_step_bar_selected(self, message: StepBar.Selected) -> None:
        self.app.go_step(message.step)  # type: ignore[attr-defined]
