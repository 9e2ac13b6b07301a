"""Step 2: choose the training data, check how it is read, and see exactly what is trained on."""

from __future__ import annotations

import time
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static, Switch, TabbedContent, TabPane

from sft_tui.widgets.toggle import Toggle

from sft_tui.core.config import choices
from sft_tui.core.hints import screen_hint
from sft_tui.core.setup import presenters as P
from sft_tui.screens.base import StepScreen
from sft_tui.screens.work import background

TEMPLATES = choices("data.template")
ROW_LIMIT = 500  # rows shown in the table; statistics always cover every row
NONE = "(none)"


class DataScreen(StepScreen):
    STEP = "data"
    TITLE = "Data"
    HELP = """
Choose the **training data** and check that it is read the way you mean.

* **Path**: a .jsonl/.json/.csv/.parquet file, a folder, or `sample:NAME` for the bundled samples
  (pick one from **samples**). **Ctrl+O** browses the disk. Press **Enter** in the path box to load.
* **Format**: `auto` detects it (the confidence says how sure); choose one to override.
* **Mapping** tab: which column feeds each field of the format (e.g. a CSV with `question`/`answer`
  is alpaca with instruction ← question and output ← answer).
* **Rows** tab: ↑/↓ through the rows; below, the **rendered training text** of the highlighted row:
  dim text is the prompt (masked, not trained); **bold underlined** text is what the model learns,
  with counts.
* **Tokenize** tab (**Ctrl+T**): tokenizes every row in the background and shows the length
  histogram, truncated rows, padding waste and problems with their line numbers. A line that
  cannot be read at all (bad JSON) is counted out of the usable rows and named at the top.
"""

    BINDINGS = [
        Binding("ctrl+o", "browse", "Browse", id="data_browse"),
        Binding("ctrl+t", "tokenize", "Tokenize", id="data_tokenize"),
        Binding("ctrl+l", "focus_path", "Path", show=False, id="data_focus_path"),
    ]

    DEFAULT_CSS = """
    DataScreen .data-row { height: 1; margin: 0 1; }
    DataScreen .data-row Label { width: 7; }
    DataScreen #format-row { height: auto; }
    DataScreen #data-path { width: 1fr; }
    DataScreen #data-sample { width: 30; margin-left: 1; }
    DataScreen #data-format { width: 22; }
    /* The detection and the lines that could not be read, wrapped: cut at 80 columns, they were lost. */
    DataScreen #detected { width: 1fr; height: auto; margin-left: 1; }
    DataScreen #detected.bad { color: $error; }
    DataScreen TabbedContent { height: 1fr; }
    DataScreen TabPane { padding: 0 1; }
    DataScreen #rows { height: 1fr; min-height: 4; }
    DataScreen #preview-summary { height: auto; max-height: 2; color: $text-muted; }
    /* Scrollable text areas show focus with a bar on the left (kept blank otherwise: nothing moves). */
    DataScreen #preview { height: 45%; border-top: solid $panel-lighten-2; padding-left: 1; }
    DataScreen #preview:focus { border-top: solid $primary; border-left: thick $primary; padding-left: 0; }
    DataScreen #stats { padding-left: 1; }
    DataScreen #stats:focus { border-left: thick $primary; padding-left: 0; }
    DataScreen #mapping-fields { height: auto; }
    DataScreen .map-row { height: 1; margin-bottom: 1; }
    DataScreen .map-row Label { width: 18; }
    DataScreen .map-row Select, DataScreen .map-row Input { width: 1fr; max-width: 50; }
    DataScreen #tokenize-row { height: 1; }
    DataScreen #tokenize-row Button { margin-right: 2; }
    DataScreen #tokenize-progress { width: 1fr; }
    DataScreen #stats { height: 1fr; }
    """

    class Loaded(Message):
        """The rows of ``path`` (``loaded`` is None and ``message``/``hint`` say why when they could not be read)."""

        def __init__(self, path: Any, loaded: Any = None, rows: list[dict[str, Any]] | None = None,
                     detection: Any = None, message: str = "", hint: str = "") -> None:
            super().__init__()
            self.path, self.loaded, self.rows, self.detection = path, loaded, rows or [], detection
            self.message, self.hint = message, hint

    class Detected(Message):
        def __init__(self, detection: Any) -> None:
            super().__init__()
            self.detection = detection

    class TokenizerReady(Message):
        def __init__(self, model: str, tokenizer: Any, error: str) -> None:
            super().__init__()
            self.model, self.tokenizer, self.error = model, tokenizer, error

    class PreviewNote(Message):
        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class Previewed(Message):
        def __init__(self, row: dict[str, Any], view: Any) -> None:
            super().__init__()
            self.row, self.view = row, view

    class TokenizeProgress(Message):
        def __init__(self, stage: str, fraction: float) -> None:
            super().__init__()
            self.stage, self.fraction = stage, fraction

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, DataScreen.TokenizeProgress)

    class Tokenized(Message):
        """The data report, or the problem (``message``/``hint``) that stopped tokenizing."""

        def __init__(self, report: Any = None, message: str = "", hint: str = "") -> None:
            super().__init__()
            self.report, self.message, self.hint = report, message, hint

    def __init__(self) -> None:
        super().__init__()
        self.loaded: Any = None  # LoadedRows
        self.rows: list[dict[str, Any]] = []
        self.detection: Any = None
        self.tokenizer: Any = None
        self.tokenizer_for: str | None = None
        self.tokenizer_error: str = ""
        self._loaded_path: Any = None
        self._mapping_sig: tuple = ()
        self._status_parts: list[tuple[str, str]] = []
        self._status_width = 0

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        data = self.session.config.data
        samples = P.sample_choices()
        with Horizontal(classes="data-row"):
            yield Label("data")
            yield Input(P.path_text(data.path), placeholder="file, folder or sample:NAME (Enter loads)",
                        id="data-path", compact=True)
            yield Select(samples, prompt="samples…", id="data-sample", compact=True,
                         value=data.path if data.path in {v for _, v in samples} else Select.NULL)
        with Horizontal(classes="data-row", id="format-row"):
            yield Label("format")
            yield Select([(f, f) for f in choices("data.format")], value=data.format, allow_blank=False,
                         id="data-format", compact=True)
            yield Static("loading…", id="detected")
        with TabbedContent(id="data-tabs"):
            with TabPane("Rows", id="tab-rows"):
                yield DataTable(id="rows", cursor_type="row", zebra_stripes=True)
                yield Static("", id="preview-summary")
                yield VerticalScroll(Static("", id="preview-text"), id="preview")
            with TabPane("Mapping", id="tab-mapping"):
                with VerticalScroll(id="mapping-scroll") as mapping:
                    mapping.can_focus = False  # its fields take the focus and scroll it; no blind stop
                    yield Static("Which column feeds each field of the format (* = required):", classes="muted")
                    yield Vertical(id="mapping-fields")
                    with Horizontal(classes="map-row"):
                        yield Label("template")
                        yield Select([(t, t) for t in TEMPLATES], value=data.template, allow_blank=False,
                                     id="data-template", compact=True)
                    with Horizontal(classes="map-row"):
                        yield Label("system prompt")
                        yield Input(data.system_prompt or "", placeholder="added to rows that have none",
                                    id="data-system", compact=True)
                    with Horizontal(classes="map-row"):
                        yield Label("skip bad rows")
                        yield Toggle(data.skip_bad_rows, id="data-skip", animate=False)
            with TabPane("Tokenize", id="tab-tokenize"):
                with Horizontal(id="tokenize-row"):
                    yield Button("Tokenize", id="tokenize", variant="primary", compact=True)
                    yield ProgressBar(total=100, show_eta=False, id="tokenize-progress")
                yield VerticalScroll(Static("Press Ctrl+T to tokenize every row with the model's tokenizer.",
                                            id="stats-text"), id="stats")

    def on_mount(self) -> None:
        self.load_data()
        self.load_tokenizer()

    def on_screen_resume(self) -> None:
        data = self.session.config.data
        path_input = self.query_one("#data-path", Input)
        if P.path_text(data.path) != path_input.value and not path_input.has_focus:
            path_input.value = P.path_text(data.path)
        if data.path != self._loaded_path:
            self.load_data()
        if self.tokenizer_for != self.session.config.model.path:
            self.load_tokenizer()

    # ------------------------------------------------------------------ loading rows (worker)
    def load_data(self) -> None:
        self._status("loading…", False)
        self._load(self.session.config.data.model_copy(deep=True))

    @background(group="data-load", description="read the data file")
    def _load(self, data: Any) -> Loaded:
        from sft_tui.core.imports import preload

        preload("datasets")
        from sft_tui.core.data import load_rows_detailed
        from sft_tui.core.errors import UserError

        try:
            loaded = load_rows_detailed(data.path, skip_bad_rows=True)
        except UserError as exc:
            return self.Loaded(data.path, message=exc.message, hint=exc.hint)
        n = min(len(loaded.dataset), ROW_LIMIT)
        rows = loaded.dataset.select(range(n)).to_list()
        return self.Loaded(data.path, loaded, rows, self._detect(loaded, data))

    @staticmethod
    def _detect(loaded: Any, data: Any) -> Any:
        """The core's detection for the chosen format and mapping; its refusal (the fix included)
        becomes an 'unknown' detection, so the screen says what training would say."""
        from sft_tui.core.data import Detection, detect_for, resolve_columns
        from sft_tui.core.errors import UserError

        try:
            return detect_for(loaded.dataset, data.format, data.columns)
        except UserError as exc:
            try:  # keep what the mapping does resolve, so the Mapping tab shows it
                resolved = resolve_columns(loaded.dataset.column_names, data.columns)
            except UserError:
                resolved = {}
            reason = screen_hint(exc.message)
            if data.format == "auto":  # the fix is on this screen: say where, not "in the config"
                reason += (" — or choose the format above" if "Mapping tab" in reason
                           else " — choose the format above, or map the columns in the Mapping tab")
            elif exc.hint:
                reason += f" — {screen_hint(exc.hint)}"
            return Detection("unknown", 0.0, reason, resolved)

    def work_failed(self, worker: Any) -> None:
        if worker.group == "data-load":
            self._status("could not read the data (see the error)", True)
        elif worker.group == "data-tokenize":
            self.query_one("#stats-text", Static).update(Text("tokenizing failed (see the error)", style="red"))
        elif worker.group == "data-tokenizer":
            self._preview_message("could not load the tokenizer (see the error)")

    def on_data_screen_loaded(self, message: Loaded) -> None:
        self._loaded_path = message.path
        if message.loaded is None:
            self.loaded, self.rows, self.detection = None, [], None
            self.query_one("#rows", DataTable).clear(columns=True)
            self._status(message.message + (f" — {screen_hint(message.hint)}" if message.hint else ""), True)
            self.query_one("#preview-text", Static).update("")
            self.query_one("#preview-summary", Static).update("")
            return
        loaded, rows, detection = message.loaded, message.rows, message.detection
        self.loaded, self.rows = loaded, rows
        table = self.query_one("#rows", DataTable)
        table.clear(columns=True)
        columns = P.visible_columns(loaded.dataset.column_names)
        width = max(12, (max(self.size.width, 60) - 12) // max(1, len(columns)))
        cells = [P.row_cells(row, columns, width) for row in rows]
        # Explicit widths: auto-sized columns were drawn at their header's width inside a tab pane.
        widths = [max([len(c[i]) for c in cells] + [len(name)]) for i, name in enumerate(["line", *columns])]
        table.add_column("line" if loaded.line_kind == "line" else "row", key="__line__", width=widths[0])
        for c, w in zip(columns, widths[1:]):
            table.add_column(c, key=c, width=w)
        for i, row_cells in enumerate(cells):
            table.add_row(*row_cells, key=str(i))
        self._set_detection(detection)

    def _set_detection(self, detection: Any) -> None:
        self.detection = detection
        total = len(self.loaded.dataset) if self.loaded is not None else 0
        if detection.format == "unknown":
            parts = [(detection.reason, "")]
        else:
            how = "→ " if self.session.config.data.format == "auto" else ""
            parts = [(f"{how}{detection.format} ({detection.confidence:.0%} sure) · {total} rows", ""),
                     (f" · {detection.reason}", "dim")]
        skipped = P.skipped_lines_text(self.loaded.problems) if self.loaded is not None else ""
        if skipped:  # where the eye is: under the format, before any tab, named by line
            parts.append((f"\n⚠ {skipped}", f"bold {self.app.current_theme.error or 'red'}"))
        self._status(parts, detection.format == "unknown")
        self.call_after_refresh(self._rebuild_mapping)
        self._preview_highlighted()

    def _status(self, text: str | list[tuple[str, str]], bad: bool) -> None:
        """The line under the path: (words, style) parts, wrapped, long paths shortened to fit."""
        self._status_parts = [(text, "")] if isinstance(text, str) else text
        label = self.query_one("#detected", Static)
        label.set_class(bad, "bad")
        self._draw_status()

    def _draw_status(self) -> None:
        label = self.query_one("#detected", Static)
        width = label.content_region.width or max(20, self.size.width - 32)
        self._status_width = width
        label.update(Text.assemble(*((P.fit_paths(words, width), style) for words, style in self._status_parts)))

    def on_resize(self) -> None:
        if self._status_parts and self.query_one("#detected", Static).content_region.width != self._status_width:
            self._draw_status()

    def redetect(self) -> None:
        if self.loaded is not None:
            self._redetect(self.loaded, self.session.config.data.model_copy(deep=True))

    @background(group="data-detect", description="detect the data format")
    def _redetect(self, loaded: Any, data: Any) -> Detected:
        return self.Detected(self._detect(loaded, data))

    def on_data_screen_detected(self, message: Detected) -> None:
        self._set_detection(message.detection)

    # ------------------------------------------------------------------ mapping
    async def _rebuild_mapping(self) -> None:
        if self.loaded is None or self.detection is None:
            return
        data = self.session.config.data
        fmt = data.format if data.format != "auto" else self.detection.format
        columns = P.visible_columns(self.loaded.dataset.column_names)
        fields = P.mapping_fields(fmt)
        values = {f: P.current_mapping(data.columns, self.detection.columns, f) for f, _ in fields}
        sig = (fmt, tuple(columns), tuple(sorted(values.items())))
        if sig == self._mapping_sig:
            return
        same_fields = sig[:2] == self._mapping_sig[:2]
        self._mapping_sig = sig
        box = self.query_one("#mapping-fields", Vertical)
        selects = {select.name: select for select in box.query(Select)}
        if same_fields and all(name in selects for name, _ in fields):
            # Only the values moved (the user just chose one): update the dropdowns in place, so the one
            # in use keeps the focus. Rebuilding them threw it to the top of the screen.
            for name, _ in fields:
                value = values[name] if values[name] in columns else ""
                if selects[name].value != value:
                    selects[name].value = value
            return
        focused = self.focused
        focused_name = focused.name if isinstance(focused, Select) and box in focused.ancestors else None
        await box.remove_children()
        widgets = []
        options = [(NONE, "")] + [(c, c) for c in columns]
        for name, required in fields:
            value = values[name] if values[name] in columns else ""
            select = Select(options, value=value, allow_blank=False, name=name, classes="map-select",
                            compact=True, id=f"map-{name}")
            widgets.append(Horizontal(Label(f"{name}{' *' if required else ''}"), select, classes="map-row"))
        await box.mount_all(widgets)
        if focused_name is not None:  # the format changed under it: the same field, else the first
            again = box.query(f"#map-{focused_name}")
            (again.first() if again else box.query(Select).first()).focus()

    # ------------------------------------------------------------------ tokenizer and preview (workers)
    def load_tokenizer(self) -> None:
        self._preview_message("loading the tokenizer…")
        self._load_tokenizer(self.session.config.model_copy(deep=True))

    @background(group="data-tokenizer", description="load the model's tokenizer")
    def _load_tokenizer(self, config: Any) -> TokenizerReady:
        from sft_tui.core.imports import preload

        preload("datasets", "transformers")
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.load import tokenizer_for

        try:
            return self.TokenizerReady(config.model.path, tokenizer_for(config), "")
        except UserError as exc:
            return self.TokenizerReady(config.model.path, None, f"no tokenizer: {exc.message}")

    def on_data_screen_tokenizer_ready(self, message: TokenizerReady) -> None:
        self.tokenizer, self.tokenizer_for, self.tokenizer_error = message.tokenizer, message.model, message.error
        self._preview_highlighted()

    def _preview_message(self, text: str) -> None:
        self.query_one("#preview-summary", Static).update(text)

    def _preview_highlighted(self) -> None:
        table = self.query_one("#rows", DataTable)
        if not self.rows or self.detection is None or not table.row_count:
            return
        index = min(max(table.cursor_row, 0), len(self.rows) - 1)
        if self.detection.format == "unknown":
            self._preview_message("set the format or the mapping to see the training text")
            self.query_one("#preview-text", Static).update("")
            return
        if self.tokenizer is None:
            self._preview_message(self.tokenizer_error or "loading the tokenizer…")
            return
        self.preview(self.rows[index], self.detection, self.session.config.data.model_copy(deep=True), self.tokenizer)

    @background(group="data-preview", description="render a row as trained")
    def preview(self, row: dict[str, Any], detection: Any, data: Any, tokenizer: Any) -> Previewed:
        return self.Previewed(row, P.preview_row(row, detection.format, detection.columns, data, tokenizer))

    def on_data_screen_previewed(self, message: Previewed) -> None:
        row, view = message.row, message.view
        where = f"line {row.get('__line__')}: " if row.get("__line__") is not None else ""
        summary = Text(where + view.summary, style="red" if view.error else "")
        if not view.error:  # the legend: a style a colour-blind eye or a monochrome terminal tells apart
            legend = Text.assemble(("dim: prompt, masked", self._masked_style), " · ",
                                   ("bold underlined: trained", self._trained_style))
            width = self.query_one("#preview-summary", Static).content_region.width or self.size.width
            # beside the counts when both fit, else on a line of its own (never split mid-legend)
            summary.append("   " if len(summary) + 3 + len(legend) <= width else "\n")
            summary.append_text(legend)
        self.query_one("#preview-summary", Static).update(summary)
        text = Text()
        for chunk, trained in view.segments:
            text.append(chunk, style=self._trained_style if trained else self._masked_style)
        self.query_one("#preview-text", Static).update(text)

    @property
    def _trained_style(self) -> str:
        """What the model learns: bold, underlined and in the theme's success colour."""
        return f"bold underline {self.app.current_theme.success or 'green'}"

    @property
    def _masked_style(self) -> str:
        """The prompt (masked): dim ordinary text — never a second shade of the trained colour."""
        return "dim"

    # ------------------------------------------------------------------ tokenize (worker)
    def show_tab(self, tab: str) -> None:
        """Show a tab; when the focus is in another tab's pane, it moves into this one. Left in a pane
        that gets hidden, Textual hands the focus to a neighbour there, whose pane then took the tab
        back: Ctrl+T did nothing from the rows table."""
        tabs = self.query_one("#data-tabs", TabbedContent)
        tabs.active = tab
        focused = self.focused
        if focused is None or not any(isinstance(a, TabPane) and a.id != tab for a in focused.ancestors):
            return
        target = {"tab-rows": "#rows", "tab-tokenize": "#tokenize"}.get(tab)
        widget = self.query_one(target) if target else self.query_one(f"#{tab}").query(".map-select, Select").first()
        widget.focus()

    def action_tokenize(self) -> None:
        self.show_tab("tab-tokenize")
        self.query_one("#tokenize-progress", ProgressBar).update(progress=0)
        self.query_one("#stats-text", Static).update("tokenizing…")
        config = self.session.config.model_copy(deep=True)
        self.tokenize(config, self.tokenizer if self.tokenizer_for == config.model.path else None)

    @background(group="data-tokenize", description="tokenize every row")
    def tokenize(self, config: Any, tokenizer: Any) -> Tokenized:
        from sft_tui.core.imports import preload

        preload("datasets", "transformers")
        from sft_tui.core.data import inspect_data
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.load import tokenizer_for

        last = [0.0]

        def progress(stage: str, fraction: float) -> None:
            now = time.monotonic()
            if fraction < 1.0 and now - last[0] < 0.1:
                return
            last[0] = now
            self.post_message(self.TokenizeProgress(stage, fraction))

        try:
            if tokenizer is None:
                progress("loading the tokenizer", 0.0)
                tokenizer = tokenizer_for(config)
            report = inspect_data(config, tokenizer, samples=0, progress=progress)
        except UserError as exc:
            return self.Tokenized(message=exc.message, hint=exc.hint)
        return self.Tokenized(report)

    def on_data_screen_tokenize_progress(self, message: TokenizeProgress) -> None:
        self.query_one("#tokenize-progress", ProgressBar).update(progress=round(message.fraction * 100))
        self.query_one("#stats-text", Static).update(f"{message.stage}…")

    def on_data_screen_tokenized(self, message: Tokenized) -> None:
        if message.report is None:
            hint = f"\n\nWhat to do: {screen_hint(message.hint)}" if message.hint else ""
            self.query_one("#stats-text", Static).update(Text(message.message + hint, style="red"))
            return
        report = message.report
        self.session.data_report = report
        self.query_one("#tokenize-progress", ProgressBar).update(progress=100)
        self.query_one("#stats-text", Static).update(self.report_text(report))

    def report_text(self, report: Any) -> Text:
        """The headline, then the problems (where the eye is, not below the histogram), then the rest."""
        theme = self.app.current_theme
        error, warning, success = theme.error or "red", theme.warning or "yellow", theme.success or "green"
        headline, *details = P.report_lines(report)
        problems = P.problem_lines(report)
        text = Text()
        text.append(headline + "\n", style=f"bold {error}" if P.rows_with_problems(report) else "bold")
        if problems:
            text.append("problems\n", style="bold")
            for line in problems:
                text.append(line + "\n", style=error if not line.startswith(" ") else "")
        for line in details:
            text.append(line + "\n")
        bars = P.histogram_lines(report.stats, width=max(10, self.size.width - 40))
        if bars:
            text.append("\nlength histogram (tokens)\n", style="bold")
            for line in bars:
                text.append(line + "\n")
        if not problems:
            text.append("\nproblems: ", style="bold")
            text.append("none\n", style=success)
        for note in report.warnings:
            text.append(f"note: {note}\n", style=warning)
        return text

    # ------------------------------------------------------------------ edits
    def _data_changed(self, reload: bool = False) -> None:
        self.session.data_report = None
        self.query_one("#tokenize-progress", ProgressBar).update(progress=0)
        self.query_one("#stats-text", Static).update("The data settings changed: press Ctrl+T to tokenize again.")
        if reload:
            self.load_data()
        else:
            self.redetect()

    def _set_path(self, text: str) -> None:
        path = P.parse_path_text(text)
        if not path or path == self.session.config.data.path:
            return
        self.session.config.data.path = path
        self.session.config.data.columns = {}
        samples = {v for _, v in P.sample_choices()}
        sample = self.query_one("#data-sample", Select)
        sample.value = path if path in samples else Select.NULL
        self._data_changed(reload=True)

    @on(Input.Submitted, "#data-path")
    def _path_submitted(self, event: Input.Submitted) -> None:
        self._set_path(event.value)

    @on(Input.Blurred, "#data-path")
    def _path_blurred(self, event: Input.Blurred) -> None:
        self._set_path(event.value)

    @on(Input.Changed, "#data-system")
    def _system_changed(self, event: Input.Changed) -> None:
        value = event.value or None
        if value != self.session.config.data.system_prompt:
            self.session.config.data.system_prompt = value
            self.session.data_report = None
            self._preview_highlighted()

    @on(Switch.Changed, "#data-skip")
    def _skip_changed(self, event: Switch.Changed) -> None:
        self.session.config.data.skip_bad_rows = event.value

    @on(Select.Changed)
    def _select_changed(self, event: Select.Changed) -> None:
        data = self.session.config.data
        select = event.select
        if select.id == "data-sample":
            if event.value is not Select.NULL and event.value != data.path:
                self.query_one("#data-path", Input).value = str(event.value)
                self._set_path(str(event.value))
        elif select.id == "data-format":
            if event.value != data.format:
                data.format = event.value
                self._mapping_sig = ()
                self._data_changed()
        elif select.id == "data-template":
            if event.value != data.template:
                data.template = event.value
                self.session.data_report = None
                self._preview_highlighted()
        elif select.has_class("map-select") and self.detection is not None:
            field = select.name or ""
            column = event.value or ""
            current = P.current_mapping(data.columns, self.detection.columns, field)
            if column != current:
                data.columns = P.set_mapping(data.columns, field, column)
                self._data_changed()

    @on(DataTable.RowHighlighted, "#rows")
    def _row_highlighted(self) -> None:
        self._preview_highlighted()

    @on(Button.Pressed, "#tokenize")
    def _tokenize_pressed(self) -> None:
        self.action_tokenize()

    # ------------------------------------------------------------------ actions
    def action_browse(self) -> None:
        from sft_tui.widgets.filepicker import FilePicker

        current = self.query_one("#data-path", Input).value
        self.app.push_screen(
            FilePicker("Choose a data file (.jsonl .json .csv .parquet) or folder", ".", current,
                       suffixes=(".jsonl", ".json", ".csv", ".parquet", ".pq", ".txt")),
            self._picked)

    def _picked(self, path: str | None) -> None:
        if path:
            self.query_one("#data-path", Input).value = path
            self._set_path(path)

    def action_focus_path(self) -> None:
        self.query_one("#data-path", Input).focus()

    def commands(self) -> list[tuple[str, str, Any]]:
        cmds: list[tuple[str, str, Any]] = [
            ("Tokenize the data", "Tokenize every row and show statistics (Ctrl+T)", self.action_tokenize),
            ("Browse for a data file", "Open a file picker (Ctrl+O)", self.action_browse),
            ("Show the column mapping", "Map the data's columns to the format's fields",
             lambda: self.show_tab("tab-mapping")),
            ("Show the rows", "Browse rows and their rendered training text", lambda: self.show_tab("tab-rows")),
        ]
        for label, value in P.sample_choices():
            cmds.append((f"Use sample {label}", f"Load the bundled sample {label}",
                         lambda v=value: self._picked(v)))
        for fmt in choices("data.format"):
            cmds.append((f"Format: {fmt}", f"Read the data as {fmt}",
                         lambda f=fmt: setattr(self.query_one("#data-format", Select), "value", f)))
        return cmds
