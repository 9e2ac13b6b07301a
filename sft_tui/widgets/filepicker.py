"""A small modal to pick a file: a directory tree to browse, and a path box to type into."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label


class _Tree(DirectoryTree):
    """Hides dot-files and, when asked, files whose suffix the caller does not read."""

    def __init__(self, path: Path, suffixes: tuple[str, ...] | None, **kwargs) -> None:
        super().__init__(path, **kwargs)
        self.suffixes = suffixes

    def filter_paths(self, paths: Iterable[Path]) -> Iterable[Path]:
        out = []
        for p in paths:
            if p.name.startswith("."):
                continue
            try:
                if self.suffixes and p.is_file() and p.suffix.lower() not in self.suffixes:
                    continue
            except OSError:
                continue
            out.append(p)
        return out


class FilePicker(ModalScreen[str | None]):
    """Dismisses with the chosen path (str) or None on Escape."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="picker_cancel")]
    DEFAULT_CSS = """
    FilePicker { align: center middle; }
    FilePicker > Vertical { width: 90%; max-width: 100; height: 90%; border: thick $primary; background: $surface; padding: 0 1; }
    FilePicker #picker-title { text-style: bold; }
    FilePicker DirectoryTree { height: 1fr; }
    FilePicker Horizontal { height: auto; }
    FilePicker #picker-path { width: 1fr; }
    """

    def __init__(self, title: str, start: str | Path = ".", value: str = "",
                 suffixes: tuple[str, ...] | None = None, must_exist: bool = True) -> None:
        super().__init__()
        self.title_text, self.value, self.suffixes, self.must_exist = title, value, suffixes, must_exist
        start = Path(start).expanduser()
        self.start = start if start.is_dir() else Path.cwd()

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text, id="picker-title")
            yield _Tree(self.start, self.suffixes, id="picker-tree")
            with Horizontal():
                yield Input(self.value, placeholder="path (Enter to accept)", id="picker-path", compact=True)
                yield Button("OK", id="picker-ok", variant="primary", compact=True)
            yield Label("", id="picker-error", classes="field-error")

    def on_mount(self) -> None:
        self.query_one("#picker-tree").focus()

    @on(DirectoryTree.FileSelected)
    def _file(self, event: DirectoryTree.FileSelected) -> None:
        self._accept(str(event.path))

    @on(DirectoryTree.DirectorySelected)
    def _dir(self, event: DirectoryTree.DirectorySelected) -> None:
        self.query_one("#picker-path", Input).value = str(event.path)

    @on(Input.Submitted, "#picker-path")
    def _typed(self, event: Input.Submitted) -> None:
        self._accept(event.value)

    @on(Button.Pressed, "#picker-ok")
    def _ok(self) -> None:
        self._accept(self.query_one("#picker-path", Input).value)

    def _accept(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self.must_exist and not text.startswith("sample:") and not Path(text).expanduser().exists():
            self.query_one("#picker-error", Label).update(f"not found: {text}")
            return
        self.dismiss(text)

    def action_cancel(self) -> None:
        self.dismiss(None)
