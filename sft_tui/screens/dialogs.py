"""Small modal screens shared by every step: help, confirm, error, a report to read."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Markdown, Static

from sft_tui.core.hints import screen_hint

GLOBAL_KEYS_HELP = """
### Keys that work everywhere
| key | does |
| --- | --- |
| F1 or ? | this help |
| Ctrl+P | command palette: every action, searchable |
| Ctrl+N / Ctrl+B | next / previous step |
| F2 … F7 | go to Model, Data, Training, Monitor, Evaluate, Export |
| F8 | runs: every training run, open / resume / compare |
| Tab / Shift+Tab | move between fields |
| Ctrl+Q | quit (asks first if something would be lost; training keeps running) |
"""


class HelpScreen(ModalScreen[None]):
    """Explains the screen below it in plain words."""

    BINDINGS = [Binding("escape,q,f1,question_mark", "dismiss", "Close", id="close_help")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll { width: 90%; max-width: 100; height: 90%; border: thick $primary; background: $surface; padding: 0 1; }
    """

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self._title, self._body = title, body

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Markdown(f"## {self._title}\n\n{self._body}\n{GLOBAL_KEYS_HELP}")

    def action_dismiss(self) -> None:
        self.dismiss(None)


class ConfirmScreen(ModalScreen[str]):
    """Ask one question; dismisses with the chosen button's id ('cancel' on Escape)."""

    BINDINGS = [Binding("escape", "choose('cancel')", "Cancel", id="confirm_cancel")]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 70; max-width: 95%; height: auto; border: thick $warning; background: $surface; padding: 1 2; }
    ConfirmScreen Horizontal { height: auto; margin-top: 1; }
    ConfirmScreen Button { margin-right: 1; }
    """

    def __init__(self, question: str, choices: list[tuple[str, str]]) -> None:
        """``choices``: (id, label) pairs; the first is focused."""
        super().__init__()
        self.question, self.choices = question, choices

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Static(self.question, id="question", markup=False)
            with Horizontal():
                for i, (cid, label) in enumerate(self.choices):
                    yield Button(label, id=cid, variant="primary" if i == 0 else "default")

    def on_mount(self) -> None:
        self.query(Button).first().focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id or "cancel")

    def action_choose(self, choice: str) -> None:
        self.dismiss(choice)


class ErrorScreen(ModalScreen[None]):
    """A failure in words: what went wrong and what to do, never a traceback."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close_error")]
    DEFAULT_CSS = """
    ErrorScreen { align: center middle; }
    ErrorScreen > Vertical { width: 80; max-width: 95%; height: auto; border: thick $error; background: $surface; padding: 1 2; }
    ErrorScreen #error-title { text-style: bold; color: $error; }
    ErrorScreen #error-hint { margin-top: 1; color: $text-muted; }
    """

    def __init__(self, message: str, hint: str = "", title: str = "Something went wrong") -> None:
        super().__init__()
        self.message, self.hint, self.title_text = message, hint, title

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="error-title")
            yield Static(self.message, id="error-message", markup=False)
            if self.hint:  # in the words of the screens: the on-screen field, not the config key
                yield Static(f"What to do: {screen_hint(self.hint)}", id="error-hint", markup=False)
            yield Button("OK", id="ok", variant="error")

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_dismiss(self) -> None:
        self.dismiss(None)


class ReportScreen(ModalScreen[None]):
    """Something to read, not an error: e.g. the settings an imported config could not carry over."""

    BINDINGS = [Binding("escape,enter", "dismiss", "Close", id="close_report")]
    DEFAULT_CSS = """
    ReportScreen { align: center middle; }
    ReportScreen > Vertical { width: 90; max-width: 95%; height: auto; max-height: 90%; border: thick $primary;
                              background: $surface; padding: 0 1; }
    ReportScreen #report-title { text-style: bold; color: $primary; }
    ReportScreen VerticalScroll { height: auto; max-height: 70vh; }
    ReportScreen Button { margin-top: 1; }
    """

    def __init__(self, title: str, body: str) -> None:
        super().__init__()
        self.title_text, self.body = title, body

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="report-title", markup=False)
            with VerticalScroll():
                yield Static(self.body, id="report-body", markup=False)
            yield Button("OK", id="ok", variant="primary", compact=True)

    def on_mount(self) -> None:
        self.query_one(Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(None)

    def action_dismiss(self) -> None:
        self.dismiss(None)
