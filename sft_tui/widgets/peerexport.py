"""The form as a peer tool's config: Axolotl YAML, LLaMA-Factory YAML or a TRL script — to save or copy.

The text comes from ``sft_tui.core.interop.export_config`` (its header names what does not carry
over). "Copy" goes through ``App.copy_to_clipboard`` (OSC 52: works over SSH in terminals that
allow it); "Save" writes the file — for LLaMA-Factory with the ``dataset_info.json`` it reads beside
it — and asks before overwriting (a second Save on the same path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static, TextArea

TARGETS = [("Axolotl YAML", "axolotl"), ("LLaMA-Factory YAML", "llamafactory"), ("TRL script", "trl")]
FILE_NAMES = {"axolotl": "axolotl.yaml", "llamafactory": "llamafactory.yaml", "trl": "train_trl.py"}


class PeerExportScreen(ModalScreen[None]):
    """Dismisses with None; ``text`` is what is shown (and what Copy/Save use)."""

    TITLE = "Export as a peer tool's config"
    HELP = """
The training form as another tool's config, to run the same training there or to share it.

| field | does |
| --- | --- |
| **as** | Axolotl YAML, LLaMA-Factory YAML or a TRL script (a runnable Python file) |
| **file** | where Save writes it; Enter saves. Saving over a file asks first (Save again) |
| **Copy** | puts the text on the clipboard (over SSH too, where the terminal allows it) |
| **Esc** | closes this dialog |

The text's header names every setting that does not carry over. For LLaMA-Factory, Save also writes
`dataset_info.json` beside the YAML (LLaMA-Factory reads the data through it). From the command line:
`sft-tui config export run.yaml --to axolotl|llamafactory|trl`.
"""

    # A dialog cuts off the screen's keys below it, F1 included: it brings its own (F1 did nothing here).
    BINDINGS = [Binding("escape", "close", "Close", id="peer_export_close"),
                Binding("f1", "app.help", "Help", show=False, id="peer_export_help")]
    DEFAULT_CSS = """
    PeerExportScreen { align: center middle; }
    PeerExportScreen > Vertical { width: 95%; max-width: 110; height: 90%; border: thick $primary;
                                  background: $surface; padding: 0 1; }
    PeerExportScreen #export-title { text-style: bold; color: $primary; }
    PeerExportScreen .export-row { height: 1; margin-top: 1; }
    PeerExportScreen .export-row Label { width: 6; }
    PeerExportScreen #export-target { width: 26; }
    PeerExportScreen #export-text { height: 1fr; margin-top: 1; }
    PeerExportScreen #export-path { width: 1fr; }
    PeerExportScreen .export-row Button { margin-left: 1; }
    PeerExportScreen #export-status { height: auto; color: $text-muted; }
    PeerExportScreen #export-status.error { color: $error; }
    """

    def __init__(self, config: Any, target: str = "axolotl", folder: str | Path = ".") -> None:
        super().__init__()
        self.config, self.target, self.folder = config, target, Path(folder)
        self.text = ""
        self._path_edited = False
        self._overwrite: Path | None = None  # the path a second Save may overwrite

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Export the form as a peer tool's config", id="export-title")
            with Horizontal(classes="export-row"):
                yield Label("as")
                yield Select(TARGETS, value=self.target, allow_blank=False, id="export-target", compact=True)
            yield TextArea("", id="export-text", read_only=True, show_line_numbers=False, soft_wrap=True)
            with Horizontal(classes="export-row"):
                yield Label("file")
                yield Input(self._default_path(), id="export-path", compact=True,
                            placeholder="where to save it (Enter saves)")
                yield Button("Save", id="export-save", variant="primary", compact=True)
                yield Button("Copy", id="export-copy", compact=True)
                yield Button("Close", id="export-close", compact=True)
            yield Static("Copy puts the text on the clipboard (over SSH too, where the terminal allows it).",
                         id="export-status", markup=False)

    def on_mount(self) -> None:
        self._render_text()
        self.query_one("#export-target", Select).focus()

    def _default_path(self) -> str:
        return str(self.folder / FILE_NAMES[self.target])

    def _render_text(self) -> None:
        from sft_tui.core.errors import UserError
        from sft_tui.core.interop import export_config

        try:
            self.text = export_config(self.config, self.target)  # type: ignore[arg-type]
        except UserError as exc:
            self.text = ""
            self._status(f"{exc.message} — {exc.hint}" if exc.hint else exc.message, error=True)
        self.query_one("#export-text", TextArea).load_text(self.text)

    def _status(self, text: str, error: bool = False) -> None:
        status = self.query_one("#export-status", Static)
        status.update(text)
        status.set_class(error, "error")

    @on(Select.Changed, "#export-target")
    def _target_changed(self, event: Select.Changed) -> None:
        if event.value is Select.NULL or event.value == self.target:
            return
        self.target = str(event.value)
        if not self._path_edited:
            self.query_one("#export-path", Input).value = self._default_path()
            self._path_edited = False
        self._overwrite = None
        self._render_text()
        if self.target == "llamafactory":
            self._status("Saving also writes dataset_info.json beside the YAML (LLaMA-Factory reads data through it).")

    @on(Input.Changed, "#export-path")
    def _path_changed(self, event: Input.Changed) -> None:
        self._path_edited = event.value != self._default_path()

    @on(Input.Submitted, "#export-path")
    @on(Button.Pressed, "#export-save")
    def action_save(self) -> None:
        from sft_tui.core.errors import UserError, explain
        from sft_tui.core.interop import export_files

        raw = self.query_one("#export-path", Input).value.strip()
        if not raw:
            self._status("type a path to save to", error=True)
            return
        path = Path(raw).expanduser()
        try:
            files = export_files(self.config, self.target, path)  # type: ignore[arg-type]
        except UserError as exc:
            self._status(f"{exc.message} — {exc.hint}" if exc.hint else exc.message, error=True)
            return
        if path.exists() and self._overwrite != path:
            self._overwrite = path
            self._status(f"{path} already exists: Save again to overwrite it.", error=True)
            return
        try:
            for target, text in files.items():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(text, encoding="utf-8")
        except OSError as exc:
            info = explain(exc)
            self._status(f"could not save: {info.message}", error=True)
            return
        self._overwrite = None
        self._status("saved " + ", ".join(str(p) for p in files))
        self.notify(f"Saved {path}", timeout=3)

    @on(Button.Pressed, "#export-copy")
    def action_copy(self) -> None:
        if not self.text:
            return
        self.app.copy_to_clipboard(self.text)
        self._status(f"copied {len(self.text.splitlines())} lines to the clipboard")

    @on(Button.Pressed, "#export-close")
    def action_close(self) -> None:
        self.dismiss(None)
