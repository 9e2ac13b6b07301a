"""The frame every step screen shares: step bar on top, keys in the footer, help on F1/?."""

from __future__ import annotations

from typing import Any

from textual import work
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

    gpus: Any = None  # the latest GpuSnapshot, for screens that compare estimates with free memory

    @work(thread=True, exclusive=True, group="gpus")
    def sample_gpus(self) -> None:
        """NVML calls can block, so sampling runs in a thread; ``gpus_sampled`` runs on the UI thread."""
        from sft_tui.core.system import gpus

        snapshot = gpus.sample_gpus()
        self.app.call_from_thread(self._gpus_ready, snapshot)

    def _gpus_ready(self, snapshot: Any) -> None:
        self.gpus = snapshot
        self.gpus_sampled()

    def gpus_sampled(self) -> None:
        """Override to react to a new GPU snapshot."""

    @property
    def session(self):
        """The app-wide setup in progress (``sft_tui.core.setup.session.Session``)."""
        return self.app.session  # type: ignore[attr-defined]

    def on_step_bar_selected(self, message: StepBar.Selected) -> None:
        self.app.go_step(message.step)  # type: ignore[attr-defined]
