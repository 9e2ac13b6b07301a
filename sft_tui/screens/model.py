"""Step 1: choose the base model and see whether training it will fit in GPU memory.

It is the screen the app opens on, so it also offers the runs left unfinished (stopped, died or
failed, with a complete checkpoint to resume from): one line under the table, Ctrl+L opens the
newest in the Runs screen, selected, where ``r`` resumes it.
"""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import DataTable, Input, Label, Select, Static

from sft_tui.core.format import compact
from sft_tui.core.hints import screen_hint
from sft_tui.core.models.demo import BUILD_ESTIMATE
from sft_tui.core.setup import presenters as P
from sft_tui.screens.base import GpusSampled, StepScreen
from sft_tui.screens.work import background

METHODS = [("lora — small adapters", "lora"), ("qlora — lora on 4/8-bit", "qlora"), ("full — every weight", "full")]
LEVEL_CLASSES = ("fits", "tight", "does-not-fit", "no-gpu", "unknown")
UNFINISHED_STATES = ("stopped", "died", "failed")


def ago(seconds: float | None) -> str:
    """'just now', '12 min ago', '3 h ago', '2 days ago'."""
    if seconds is None or seconds != seconds:
        return "some time ago"
    minutes = max(seconds, 0) / 60
    if minutes < 1:
        return "just now"
    if minutes < 60:
        return f"{minutes:.0f} min ago"
    if minutes < 48 * 60:
        return f"{minutes / 60:.0f} h ago"
    return f"{minutes / 1440:.0f} days ago"


def unfinished_line(st: Any, now: float) -> Text:
    step = f"step {st.step}/{st.max_steps}" if st.max_steps else f"step {st.step}"
    text = Text.assemble((st.name, "bold"), " ", (st.state, {"stopped": "yellow"}.get(st.state, "red")),
                         f" at {step}, loss {compact(st.last_loss)}, {ago(now - (st.ended or st.last_event or now))}")
    return text


class ModelScreen(StepScreen):
    STEP = "model"
    TITLE = "Model"
    HELP = """
Pick the **base model** to fine-tune.

The table lists the built-in **demo** model (tiny, trains on a CPU in a minute), the models in your
Hugging Face cache and the folders named in the settings file's `model_dirs`.

* Type in the box at the top to **filter** the table; press **Enter** there to use a model folder
  or a hub id that is not listed (it must be downloaded when the hub is offline).
* **↑/↓** in the table show a model's details; **Enter** uses it.
* Choose the **method** (lora, qlora, full) to see the **memory estimate** against the GPUs found:
  green fits, yellow is tight, red does not fit (with a suggestion that would).

**Ctrl+N** goes on to the data.

When runs were left **unfinished** (stopped, died or failed, with a checkpoint to resume from), a
line under the table names the newest with its step, last loss and age: **Ctrl+L** opens it in the
Runs screen, where **r** resumes it.
"""

    BINDINGS = [
        Binding("slash", "focus_filter", "Filter", id="model_filter"),
        Binding("ctrl+r", "rescan", "Rescan", id="model_rescan"),
        Binding("ctrl+u", "use_highlighted", "Use model", id="model_use"),
        # Named on the unfinished-runs line itself; in the footer it would push Next/Back off at 80 columns.
        Binding("ctrl+l", "open_unfinished", "Unfinished run", show=False, id="model_unfinished"),
    ]

    DEFAULT_CSS = """
    ModelScreen #model-filter { margin: 0 1; }
    /* The table takes the rows it has (up to half the screen); details and memory get the rest, so at
       80×24 the estimate is not cut off under one demo row and eight empty ones. */
    ModelScreen #model-table { height: auto; max-height: 50%; min-height: 3; margin: 0 1; }
    ModelScreen #model-bottom { height: 1fr; min-height: 11; margin: 0 1; }
    ModelScreen #model-details { width: 1fr; border: round $panel-lighten-2; border-title-color: $text-muted; padding: 0 1; }
    ModelScreen #model-details:focus { border: round $primary; border-title-color: $primary; }
    ModelScreen #model-memory { width: 1fr; border: round $panel-lighten-2; border-title-color: $text-muted; padding: 0 1; }
    ModelScreen #method-row { height: 1; }
    ModelScreen #method-row Label { width: 8; }
    ModelScreen #method { width: 1fr; }
    ModelScreen #memory-headline { text-style: bold; }
    ModelScreen #memory-headline.fits { color: $success; }
    ModelScreen #memory-headline.tight { color: $warning; }
    ModelScreen #memory-headline.does-not-fit { color: $error; }
    ModelScreen #memory-headline.no-gpu, ModelScreen #memory-headline.unknown { color: $text-muted; }
    ModelScreen #chosen { height: 1; margin: 0 1; color: $text-muted; }
    ModelScreen #unfinished { height: auto; max-height: 2; margin: 0 1; color: $warning; display: none; }
    ModelScreen #unfinished.-show { display: block; }
    """

    class Discovered(Message):
        def __init__(self, entries: list[Any]) -> None:
            super().__init__()
            self.entries = entries

    class Described(Message):
        """A model's description (``info``), or why it could not be described (``error``)."""

        def __init__(self, key: str, info: Any, error: str | None) -> None:
            super().__init__()
            self.key, self.info, self.error = key, info, error

    class Note(Message):
        """Words for the details pane while something slow happens (building the demo model)."""

        def __init__(self, text: str) -> None:
            super().__init__()
            self.text = text

    class MemoryEstimated(Message):
        def __init__(self, level: str, headline: str, lines: list[str]) -> None:
            super().__init__()
            self.level, self.headline, self.lines = level, headline, lines

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, ModelScreen.MemoryEstimated)

    class UnfinishedFound(Message):
        """Runs a user may want to resume, newest first: [(RunDir, RunStatus)]."""

        def __init__(self, rows: list[Any], now: float) -> None:
            super().__init__()
            self.rows, self.now = rows, now

    class CustomLookedUp(Message):
        """A typed-in folder or hub id: its entry and description, or the problem with the fix."""

        def __init__(self, text: str, entry: Any = None, info: Any = None, message: str = "", hint: str = "") -> None:
            super().__init__()
            self.text, self.entry, self.info, self.message, self.hint = text, entry, info, message, hint

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[Any] = []
        self.infos: dict[str, Any] = {}  # entry key -> ModelInfo
        self.failures: dict[str, str] = {}
        self._shown_key: str | None = None
        self.unfinished: list[Any] = []  # [(RunDir, RunStatus)], newest first

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        yield Input(placeholder="type to filter · Enter: use a model folder or hub id", id="model-filter",
                    compact=True)
        table = DataTable(id="model-table", cursor_type="row", zebra_stripes=True)
        table.add_column(" ", key="mark", width=1)
        table.add_column("name", key="name")
        table.add_column("arch", key="arch")
        table.add_column("params", key="params")
        table.add_column("ctx", key="ctx")
        table.add_column("size", key="size")
        table.add_column("chat", key="chat")
        yield table
        yield Static("", id="chosen")
        yield Static("", id="unfinished")
        with Horizontal(id="model-bottom"):
            details = VerticalScroll(Static("Looking for models…", id="details-text"), id="model-details")
            details.border_title = "details"
            yield details
            with Vertical(id="model-memory") as memory:
                memory.border_title = "memory estimate"
                with Horizontal(id="method-row"):
                    yield Label("method")
                    yield Select(METHODS, value=self.session.config.method.type, allow_blank=False, id="method",
                                 compact=True)
                yield Static("", id="memory-headline")
                yield Static("", id="memory-lines", classes="muted")

    def on_mount(self) -> None:
        self._show_chosen()
        # Draw the first frame before the workers start importing huggingface_hub and NVML.
        self.call_after_refresh(self._start_workers)

    def _start_workers(self) -> None:
        self.discover()
        self.sample_gpus()
        self.find_unfinished(self.session.runs_dir)

    # ------------------------------------------------------------------ unfinished runs
    @background(group="model-unfinished", description="look for runs left unfinished")
    def find_unfinished(self, runs_dir: Any) -> UnfinishedFound:
        import time

        from sft_tui.core.run.index import RunIndex

        rows = [(run, st) for run, st in RunIndex(runs_dir).refresh()
                if st.state in UNFINISHED_STATES and st.last_checkpoint]
        rows.sort(key=lambda row: row[1].last_event or 0, reverse=True)
        return self.UnfinishedFound(rows, time.time())

    def on_model_screen_unfinished_found(self, message: UnfinishedFound) -> None:
        self.unfinished = message.rows
        box = self.query_one("#unfinished", Static)
        box.set_class(bool(self.unfinished), "-show")
        if self.unfinished:
            _, newest = self.unfinished[0]
            text = Text("unfinished: ", style="bold", no_wrap=True, overflow="ellipsis")
            text.append_text(unfinished_line(newest, message.now))
            more = len(self.unfinished) - 1
            text.append(f" (+{more} more)" if more else "", style="dim")
            text.append(" · Ctrl+L: open in Runs to resume", style="dim")
            box.update(text)
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "open_unfinished":
            return bool(self.unfinished)  # the key works only when there is something to open
        return True

    def action_open_unfinished(self, index: int = 0) -> None:
        if not self.unfinished:
            self.notify("no unfinished runs", severity="warning")
            return
        run, _ = self.unfinished[min(index, len(self.unfinished) - 1)]
        self.app.show_run(run.path)  # type: ignore[attr-defined]

    def on_screen_resume(self) -> None:
        # Another screen (or Load YAML) may have changed the model or the method.
        method = self.query_one("#method", Select)
        if method.value != self.session.config.method.type:
            method.value = self.session.config.method.type
        self._show_chosen()
        self._refresh_marks()
        self.update_memory()

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _key(entry: Any) -> str:
        return P.model_choice_name(entry)

    def _entry(self, key: str | None) -> Any | None:
        return next((e for e in self.entries if self._key(e) == key), None)

    def _show_chosen(self) -> None:
        path = self.session.config.model.path
        width = max(20, (self.query_one("#chosen", Static).content_region.width or self.size.width - 2) - 7)
        # one line: a long folder keeps its name and loses its middle ('~/models/…/my-model'), not its end
        shown = "built-in demo model" if path == "demo" else P.shorten_path(path, width)
        self.query_one("#chosen", Static).update(Text.assemble(("using: ", "dim"), (shown, "bold")))

    def on_resize(self) -> None:
        self._show_chosen()

    def on_descendant_focus(self, event: Any) -> None:
        if event.widget.id == "model-details":  # focused: the details in full (paths unshortened)
            self._show_details(self._shown_key)

    def on_descendant_blur(self, event: Any) -> None:
        if event.widget.id == "model-details":
            self._show_details(self._shown_key)

    def _fill_table(self) -> None:
        table = self.query_one("#model-table", DataTable)
        needle = self.query_one("#model-filter", Input).value.strip().lower()
        keep = table.cursor_row
        current = self._highlighted_key()
        table.clear()
        chosen = self.session.config.model.path
        for entry in self.entries:
            key = self._key(entry)
            if needle and needle not in entry.name.lower() and needle not in key.lower():
                continue
            cells = P.model_cells(entry, self.infos.get(key), self.failures.get(key))
            table.add_row("●" if key == chosen else "", *cells, key=key)
        if table.row_count:
            target = current if current is not None else chosen
            try:
                table.move_cursor(row=table.get_row_index(target), animate=False)
            except Exception:
                table.move_cursor(row=min(keep, table.row_count - 1), animate=False)

    def _refresh_marks(self) -> None:
        table = self.query_one("#model-table", DataTable)
        chosen = self.session.config.model.path
        for row_key in list(table.rows):
            table.update_cell(row_key, "mark", "●" if row_key.value == chosen else "")

    def _highlighted_key(self) -> str | None:
        table = self.query_one("#model-table", DataTable)
        if not table.row_count:
            return None
        try:
            row_key, _ = table.coordinate_to_cell_key((table.cursor_row, 0))
        except Exception:
            return None
        return row_key.value

    # ------------------------------------------------------------------ discovery (worker)
    @background(group="model-discovery", description="find the models on this machine and describe them")
    def discover(self) -> None:
        from sft_tui.core.models.discovery import discover_models

        entries = discover_models()
        self.post_message(self.Discovered(entries))
        for entry in entries:
            if (entry.source == "demo" and entry.path is None) or self._key(entry) in self.infos:
                continue  # the demo is built on first use, not just to fill a table cell
            self.post_message(self._describe_entry(entry))

    def _describe_entry(self, entry: Any) -> Described:
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.describe import describe_model

        key = self._key(entry)
        try:
            info = describe_model(entry.path if entry.path is not None else key)
        except UserError as exc:
            return self.Described(key, None, exc.message)
        except Exception as exc:  # a damaged folder is shown in its row and must not stop the listing
            return self.Described(key, None, f"{type(exc).__name__}: {exc}")
        info.name = key
        return self.Described(key, info, None)

    def work_failed(self, worker: Any) -> None:
        if worker.group == "model-discovery" and not self.entries:
            self._say("Could not list the models (see the error). Ctrl+R looks again.")

    def on_model_screen_discovered(self, message: Discovered) -> None:
        chosen = self.session.config.model.path
        self.entries = list(message.entries)
        if chosen not in {self._key(e) for e in self.entries}:
            from sft_tui.core.models.discovery import ModelEntry

            self.entries.append(ModelEntry(chosen, None, "path", detail="from the config"))
        self._fill_table()
        self._show_details(self._highlighted_key())
        self.describe_chosen()

    def on_model_screen_described(self, message: Described) -> None:
        key, info, error = message.key, message.info, message.error
        if info is not None:
            self.infos[key] = info
            self.failures.pop(key, None)
        elif error:
            self.failures[key] = error
        table = self.query_one("#model-table", DataTable)
        entry = self._entry(key)
        if entry is not None:
            try:
                for column, value in zip(("name", "arch", "params", "ctx", "size", "chat"),
                                         P.model_cells(entry, info, error)):
                    table.update_cell(key, column, value, update_width=True)
            except Exception:
                pass  # filtered out right now
        if key == self.session.config.model.path and info is not None:
            self.session.model_info = info
            self.update_memory()
        if key == self._shown_key or self._shown_key is None:
            self._show_details(key)

    @background(group="model-chosen", description="describe the chosen model")
    def describe_chosen(self) -> Described:
        """The chosen model is described even if it is the demo and must be built first."""
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.describe import describe_model
        from sft_tui.core.models.load import resolve_model

        key = self.session.config.model.path
        if key in self.infos:
            return self.Described(key, self.infos[key], None)
        entry = self._entry(key)
        target = entry.path if entry is not None and entry.path is not None else key

        def building(step: str) -> None:  # called only while the demo model is being built
            self.post_message(self.Note(f"Building the demo model (first run only, {BUILD_ESTIMATE})…\n\n{step}"))

        try:
            if key == "demo":
                target = resolve_model(key, progress=building)
            info = describe_model(target, trust_remote_code=self.session.config.model.trust_remote_code)
        except UserError as exc:
            return self.Described(key, None, exc.message)
        info.name = key
        return self.Described(key, info, None)

    def on_model_screen_note(self, message: Note) -> None:
        self._say(message.text)

    def gpus_sampled(self, message: GpusSampled) -> None:
        self.holders = message.holders  # shown under the estimate: on a shared server, who holds what
        self.update_memory()

    # ------------------------------------------------------------------ details and memory
    def _say(self, text: str) -> None:
        self.query_one("#details-text", Static).update(text)

    def _show_details(self, key: str | None) -> None:
        self._shown_key = key
        if key is None:
            self._say("No model matches the filter. Press Enter to use what you typed as a folder or hub id.")
            return
        entry = self._entry(key)
        info = self.infos.get(key)
        if info is None:
            if key in self.failures:
                self._say(Text(f"{key}\n\n{self.failures[key]}", style="red"))
            elif entry is not None and entry.source == "demo" and entry.path is None:
                self._say(f"demo: a tiny Llama built on first use ({BUILD_ESTIMATE}), trains on a CPU in about a "
                          "minute.")
            else:
                self._say(f"{key}\n\nreading config and weight headers…")
            return
        details = self.query_one("#model-details", VerticalScroll)
        width = details.content_region.width - 14
        text = Text()
        for i, (label, value) in enumerate(P.model_details(entry, info)):
            if i:
                text.append("\n")
            text.append(f"{label:<14}", style="dim")
            # a long path fits its line ('~/…/snapshots/abc') until the pane has the focus: then in full
            text.append(value if details.has_focus or width < 12 else P.fit_paths(value, width))
        self._say(text)

    def update_memory(self) -> None:
        info = self.session.model_info
        if info is None or info.name != self.session.config.model.path:
            self._memory("unknown", "waiting for the model's description…", [])
            return
        self.compute_memory(self.session.config.model_copy(deep=True), info, self.gpus)

    @background(group="model-memory", description="estimate the training memory")
    def compute_memory(self, config: Any, info: Any, gpus: Any) -> MemoryEstimated:
        view = P.memory_view(config, info, gpus)
        return self.MemoryEstimated(view.level, view.headline, view.lines)

    def on_model_screen_memory_estimated(self, message: MemoryEstimated) -> None:
        self._memory(message.level, message.headline, message.lines)

    def _memory(self, level: str, headline: str, lines: list[str]) -> None:
        head = self.query_one("#memory-headline", Static)
        head.remove_class(*LEVEL_CLASSES)
        head.add_class(level)
        head.update(headline)
        gpus = P.gpu_holder_lines(self.gpus, getattr(self, "holders", None))
        self.query_one("#memory-lines", Static).update("\n".join([*lines, *([""] if gpus and lines else []), *gpus]))

    # ------------------------------------------------------------------ events
    @on(DataTable.RowHighlighted, "#model-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key is not None else None
        self._show_details(key)

    @on(DataTable.RowSelected, "#model-table")
    def _selected(self, event: DataTable.RowSelected) -> None:
        if event.row_key is not None:
            self.choose(event.row_key.value)

    @on(Input.Changed, "#model-filter")
    def _filter(self) -> None:
        self._fill_table()
        self._show_details(self._highlighted_key())

    @on(Input.Submitted, "#model-filter")
    def _submitted(self, event: Input.Submitted) -> None:
        text = event.value.strip()
        table = self.query_one("#model-table", DataTable)
        if not text:
            self.choose(self._highlighted_key())
            return
        exact = self._entry(text)
        if exact is not None:
            self.choose(text)
        elif table.row_count == 1:
            self.choose(self._highlighted_key())
        else:
            self._say(f"{text}\n\nlooking it up…")
            self.add_custom(text)

    @background(group="model-custom", description="look up a typed-in model")
    def add_custom(self, text: str) -> CustomLookedUp:
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.describe import describe_model
        from sft_tui.core.models.discovery import ModelEntry

        try:
            info = describe_model(text, trust_remote_code=self.session.config.model.trust_remote_code)
        except UserError as exc:
            return self.CustomLookedUp(text, message=exc.message, hint=exc.hint)
        info.name = text
        return self.CustomLookedUp(text, ModelEntry(text, None, "path"), info)

    def on_model_screen_custom_looked_up(self, message: CustomLookedUp) -> None:
        if message.info is None:
            hint = f"\n\nWhat to do: {screen_hint(message.hint)}" if message.hint else ""
            self._say(Text(f"{message.text}\n\n{message.message}{hint}", style="red"))
            return
        entry, info = message.entry, message.info
        if self._entry(entry.name) is None:
            self.entries.append(entry)
        self.infos[entry.name] = info
        self.query_one("#model-filter", Input).value = ""
        self.choose(entry.name)

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "method" and event.value != self.session.config.method.type:
            self.session.config.method.type = event.value
            if event.value != "qlora":
                self.session.config.method.quantization_bits = None
            self.update_memory()

    # ------------------------------------------------------------------ actions
    def choose(self, key: str | None) -> None:
        if not key:
            return
        config = self.session.config
        if config.model.path != key:
            config.model.path = key
            self.session.model_info = self.infos.get(key)
        self._show_chosen()
        self._fill_table()
        self.update_memory()
        if key not in self.infos:
            self.describe_chosen()
        else:
            self.session.model_info = self.infos[key]
            self.update_memory()
        self.notify(f"Model: {'built-in demo' if key == 'demo' else key}", timeout=2)

    def action_focus_filter(self) -> None:
        self.query_one("#model-filter", Input).focus()

    def action_rescan(self) -> None:
        self.infos.clear()
        self.failures.clear()
        self.discover()
        self.sample_gpus()

    def action_use_highlighted(self) -> None:
        self.choose(self._highlighted_key())

    def commands(self) -> list[tuple[str, str, Any]]:
        cmds = [
            ("Use the highlighted model", "Make it the base model (Enter in the table)", self.action_use_highlighted),
            ("Rescan models", "Look again in the HF cache and model folders (Ctrl+R)", self.action_rescan),
            ("Filter models", "Type part of a name (/)", self.action_focus_filter),
        ]
        for label, value in METHODS:
            cmds.append((f"Method: {value}", label, lambda v=value: self._set_method(v)))
        for i, (run, st) in enumerate(self.unfinished):
            cmds.append((f"Open unfinished run {run.name}", f"{st.state} at step {st.step}: show it in Runs to resume"
                         + (" (Ctrl+L)" if i == 0 else ""), lambda i=i: self.action_open_unfinished(i)))
        return cmds

    def _set_method(self, value: str) -> None:
        self.query_one("#method", Select).value = value
