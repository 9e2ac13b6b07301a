"""Step 3: the run's settings as a form, checked as you type, with presets, memory and Start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static, Switch

from sft_tui.core.setup import forms
from sft_tui.core.setup import presenters as P
from sft_tui.screens.base import StepScreen

LEVEL_CLASSES = ("fits", "tight", "does-not-fit", "no-gpu", "unknown")


class TrainingScreen(StepScreen):
    STEP = "training"
    TITLE = "Training"
    HELP = """
The **run settings**, grouped like the config file: method, LoRA, quantization, optimisation,
schedule, sequences, evaluation, saving. Each field says in one line what it does.

* Values are **checked as you type**: a problem is shown in red under its field, and **Start** stays
  disabled until every problem is fixed.
* **Presets** fill groups of values (quick-test, balanced, low-memory).
* The **memory estimate** on the right follows your changes.
* **Ctrl+S** saves the config as YAML (the same file `sft-tui config validate` and
  `sft-tui train` read), **Ctrl+O** loads one.
* **Ctrl+G** (or the Start button) writes the run folder, starts training in a background worker
  that survives closing the app, and opens the monitor.
"""

    BINDINGS = [
        Binding("ctrl+g", "start", "Start", id="training_start"),
        Binding("ctrl+s", "save", "Save", id="training_save"),
        Binding("ctrl+o", "load", "Load", id="training_load"),
        Binding("ctrl+e", "next_problem", "Next problem", show=False, id="training_next_problem"),
    ]

    DEFAULT_CSS = """
    TrainingScreen #train-main { height: 1fr; }
    TrainingScreen #form { width: 1fr; padding: 0 1; }
    TrainingScreen #side { width: 30; padding: 0 1; border-left: solid $panel-lighten-2; }
    TrainingScreen .group-title { text-style: bold; color: $primary; margin-top: 1; }
    TrainingScreen .group-title.first { margin-top: 0; }
    TrainingScreen .field-row { height: 1; }
    TrainingScreen .field-row Label { width: 19; }
    TrainingScreen .field-row Input, TrainingScreen .field-row Select { width: 1fr; max-width: 40; }
    TrainingScreen .field-row Switch { height: 1; border: none; padding: 0; }
    TrainingScreen .field-help { color: $text-muted; padding-left: 2; height: auto; }
    TrainingScreen .field-error { color: $error; padding-left: 2; height: auto; display: none; }
    TrainingScreen .field-error.-show { display: block; }
    TrainingScreen #side Button { width: 100%; margin-top: 1; }
    TrainingScreen #side #start { margin-top: 0; }
    TrainingScreen #side .side-title { text-style: bold; color: $primary; margin-top: 1; }
    TrainingScreen #memory.fits { color: $success; }
    TrainingScreen #memory.tight { color: $warning; }
    TrainingScreen #memory.does-not-fit { color: $error; }
    TrainingScreen #memory.no-gpu, TrainingScreen #memory.unknown { color: $text-muted; }
    TrainingScreen #problems { color: $error; height: auto; }
    TrainingScreen #problems.ok { color: $success; }
    TrainingScreen #saved { color: $text-muted; height: auto; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.env: Any = None
        self.result: forms.FormResult | None = None
        self._starting = False
        self._shown_errors: dict[str, str] = {}
        self._shown_summary = ""
        self._memory_for: Any = None  # the config the memory text was computed for
        self._memory_text: tuple[str, str] | None = None

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        config = self.session.config
        with Horizontal(id="train-main"):
            with VerticalScroll(id="form"):
                for i, (gid, title, fields) in enumerate(forms.groups()):
                    yield Static(title, classes="group-title" + (" first" if i == 0 else ""), id=f"group-{gid}")
                    for f in fields:
                        yield from self._field(f, forms.display_value(config, f.key))
            with Vertical(id="side"):
                yield Button("Start training", id="start", variant="success", compact=True)
                yield Static("", id="problems")
                yield Static("memory", classes="side-title")
                yield Static("waiting for the model…", id="memory", classes="unknown")
                yield Static("presets", classes="side-title")
                yield Select([(name, name) for name, _ in forms.preset_choices()], prompt="fill from a preset…",
                             id="preset", compact=True)
                yield Button("Save YAML", id="save", compact=True)
                yield Button("Load YAML", id="load", compact=True)
                yield Static("", id="saved")

    def _field(self, f: forms.FormField, value: Any) -> ComposeResult:
        widget: Widget
        if f.kind == "bool":
            widget = Switch(bool(value), id=f.widget_id, name=f.key, animate=False)
        elif f.kind == "choice":
            options = ([("(default)", "")] if f.optional else []) + [(c, c) for c in f.choices]
            widget = Select(options, value=value, allow_blank=False, id=f.widget_id, name=f.key, compact=True)
        else:
            widget = Input(str(value), id=f.widget_id, name=f.key, compact=True,
                           placeholder="(empty: not set)" if f.optional else "")
        yield Horizontal(Label(f.label), widget, classes="field-row")
        yield Static(f.help, classes="field-help", markup=False)
        yield Static("", classes="field-error", id=f"{f.widget_id}-error", markup=False)

    def on_mount(self) -> None:
        self.validate()
        self.detect_environment()
        self.sample_gpus()
        self._show_saved()

    def on_screen_resume(self) -> None:
        self.sync_from_config()
        self._show_saved()

    # ------------------------------------------------------------------ form <-> config
    def _widget(self, key: str) -> Any:
        return self.query_one(f"#{forms.FIELDS[key].widget_id}")

    def form_values(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key in forms.FIELDS:
            widget = self._widget(key)
            value = widget.value
            values[key] = "" if value is Select.NULL else value
        return values

    def sync_from_config(self, keep_invalid: bool = True) -> None:
        """Show session.config in the form; fields the user left invalid keep their text."""
        config = self.session.config
        bad = set(self.result.problems) if (self.result and keep_invalid) else set()
        for key in forms.FIELDS:
            if key in bad:
                continue
            widget = self._widget(key)
            value = forms.display_value(config, key)
            if widget.value != value:
                widget.value = value
        self.validate()

    def validate(self) -> None:
        result = forms.build_config(self.session.config, self.form_values(), env=self.env)
        self.result = result
        # Only touch what changed: every update re-lays out a long form, and this runs per keystroke.
        for key, f in forms.FIELDS.items():
            text = "\n".join(forms.problem_text(p) for p in result.problems.get(key, []))
            if self._shown_errors.get(key, "") != text:
                self._shown_errors[key] = text
                label = self.query_one(f"#{f.widget_id}-error", Static)
                label.update(text)
                label.set_class(bool(text), "-show")
                self._widget(key).set_class(bool(text), "-invalid")
        changed = False
        if result.valid:
            changed = forms.dump_changed(self.session.config, result.config)
            if changed:
                self.session.config = result.config
            summary_text = "✓ ready to start"
        else:
            lines = [f"✗ {result.count} problem(s) to fix" + (" (Ctrl+E: next)" if result.problems else "")]
            lines += [f"{p.field}: {forms.problem_text(p)}" for p in result.other]
            summary_text = "\n".join(lines)
        if summary_text != self._shown_summary:
            self._shown_summary = summary_text
            summary = self.query_one("#problems", Static)
            summary.update(summary_text)
            summary.set_class(result.valid, "ok")
        start = self.query_one("#start", Button)
        disabled = not result.valid or self._starting
        if start.disabled != disabled:
            start.disabled = disabled
        if changed or self._memory_for is None:
            self.update_memory()

    @on(Input.Changed, ".field-row Input")
    @on(Select.Changed, ".field-row Select")
    @on(Switch.Changed, ".field-row Switch")
    def _field_changed(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ machine facts (workers)
    @work(thread=True, exclusive=True, group="training-env")
    def detect_environment(self) -> None:
        from sft_tui.core.config import Environment

        probe = Environment.detect()
        env = Environment(cuda_available=probe.cuda_available, bf16_supported=probe.bf16_supported)
        self.app.call_from_thread(self._env_ready, env)

    def _env_ready(self, env: Any) -> None:
        self.env = env
        self.validate()

    def gpus_sampled(self) -> None:
        self.update_memory()

    # ------------------------------------------------------------------ memory
    def update_memory(self) -> None:
        if self.gpus is None:
            return
        config = self.session.config
        info = self.session.model_info
        if info is None or info.name != config.model.path:
            self.describe_model(config.model.path, config.model.trust_remote_code)
            return
        self._memory_for = config.to_dict()
        self.compute_memory(config.model_copy(deep=True), info, self.gpus)

    @work(thread=True, exclusive=True, group="training-describe")
    def describe_model(self, path: str, trust_remote_code: bool) -> None:
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.describe import describe_model

        try:
            info = describe_model(path, trust_remote_code=trust_remote_code)
        except UserError as exc:
            self.app.call_from_thread(self._memory, "unknown", f"cannot describe the model: {exc.message}")
            return
        info.name = path
        self.app.call_from_thread(self._described, info)

    def _described(self, info: Any) -> None:
        if info.name == self.session.config.model.path:
            self.session.model_info = info
            self.update_memory()

    @work(thread=True, exclusive=True, group="training-memory")
    def compute_memory(self, config: Any, info: Any, gpus: Any) -> None:
        view = P.memory_view(config, info, gpus)
        self.app.call_from_thread(self._memory, view.level, "\n".join([view.headline, *view.lines[:1], *view.lines[3:]]))

    def _memory(self, level: str, text: str) -> None:
        if self._memory_text == (level, text):
            return
        self._memory_text = (level, text)
        memory = self.query_one("#memory", Static)
        memory.remove_class(*LEVEL_CLASSES)
        memory.add_class(level)
        memory.update(text)

    # ------------------------------------------------------------------ presets, save, load
    @on(Select.Changed, "#preset")
    def _preset(self, event: Select.Changed) -> None:
        if event.value is Select.NULL:
            return
        self.apply_preset(str(event.value))
        event.select.clear()

    def apply_preset(self, name: str) -> None:
        from sft_tui.core.config import apply_preset

        if self.result is not None and not self.result.valid:
            self.notify("Fix the fields in red first; the preset fills values on top of them.", severity="warning")
            return
        self.session.config = apply_preset(self.session.config, name)
        self.sync_from_config(keep_invalid=False)
        self.notify(f"Preset {name}: {forms.preset_about(name)}", timeout=4)

    def _show_saved(self) -> None:
        path = self.session.config_path
        text = f"file: {path.name}" if path else "not saved yet"
        if self.session.dirty:
            text += " (changed)"
        self.query_one("#saved", Static).update(text)

    def action_save(self) -> None:
        if self.result is None or not self.result.valid:
            self.notify("Fix the problems first: only a valid config is saved.", severity="error")
            return
        if self.session.config_path is not None:
            self._save_to(str(self.session.config_path))
            return
        from sft_tui.widgets.filepicker import FilePicker

        self.app.push_screen(FilePicker("Save the config as (YAML)", ".", "sft-run.yaml", suffixes=(".yaml", ".yml"),
                                        must_exist=False), self._save_to)

    def _save_to(self, path: str | None) -> None:
        if not path:
            return
        try:
            target = self.session.save(Path(path).expanduser())
        except OSError as exc:
            self.app.show_error(f"Could not save {path}: {exc.strerror or exc}", "choose another folder")
            return
        self._show_saved()
        self.notify(f"Saved {target}", timeout=3)

    def action_load(self) -> None:
        from sft_tui.widgets.filepicker import FilePicker

        current = str(self.session.config_path) if self.session.config_path else ""
        self.app.push_screen(FilePicker("Load a config (YAML)", ".", current, suffixes=(".yaml", ".yml")),
                             self.load_from)

    def load_from(self, path: str | None) -> None:
        if not path:
            return
        from sft_tui.core.config import ConfigError

        try:
            self.session.load(Path(path).expanduser())
        except ConfigError as exc:
            self.app.show_error("\n".join(str(p) for p in exc.problems),
                                "fix the file, or check it with `sft-tui config validate FILE`",
                                title=f"{path} has {len(exc.problems)} problem(s)")
            return
        self.session.model_info = None
        self.session.data_report = None
        self.sync_from_config(keep_invalid=False)
        self._show_saved()
        self.notify(f"Loaded {path}", timeout=3)

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#load")
    def _load_pressed(self) -> None:
        self.action_load()

    # ------------------------------------------------------------------ start
    @on(Button.Pressed, "#start")
    def _start_pressed(self) -> None:
        self.action_start()

    def action_start(self) -> None:
        if self._starting:
            return
        if self.result is None or not self.result.valid:
            self.notify("Fix the problems in red before starting.", severity="error")
            return
        self._starting = True
        self.query_one("#start", Button).disabled = True
        self.query_one("#problems", Static).update("starting…")
        self.start_run(self.session.config.model_copy(deep=True), self.env)

    @work(thread=True, exclusive=True, group="training-start")
    def start_run(self, config: Any, env: Any) -> None:
        from sft_tui.core.config import ConfigError, Environment, parse_config
        from sft_tui.core.run.launch import start_run

        try:
            if env is None:
                probe = Environment.detect()
                env = Environment(probe.cuda_available, probe.bf16_supported)
            config = parse_config(config.to_dict(), source="the form", env=env)
        except ConfigError as exc:
            self.app.call_from_thread(self._start_failed, env, exc)
            return
        try:
            run = start_run(config, runs_dir=self.session.runs_dir)
        finally:
            self.app.call_from_thread(setattr, self, "_starting", False)
        self.app.call_from_thread(self._started, run)

    def _start_failed(self, env: Any, exc: Exception) -> None:
        self._starting = False
        self.env = env
        self.validate()
        self.notify("The config does not suit this machine: see the fields in red.", severity="error")

    def _started(self, run: Any) -> None:
        self._starting = False
        self.session.run = run
        self.validate()
        self.notify(f"Started run {run.name}", timeout=3)
        self.app.go_step("monitor")

    # ------------------------------------------------------------------ navigation
    def action_next_problem(self) -> None:
        if self.result is None or not self.result.problems:
            return
        keys = list(forms.FIELDS)
        focused = self.focused.name if self.focused is not None else None
        bad = [k for k in keys if k in self.result.problems]
        after = [k for k in bad if focused in keys and keys.index(k) > keys.index(focused)]
        target = (after or bad)[0]
        widget = self._widget(target)
        widget.focus()
        widget.scroll_visible()

    def commands(self) -> list[tuple[str, str, Any]]:
        cmds = [
            ("Start training", "Write the run folder and start the worker (Ctrl+G)", self.action_start),
            ("Save config as YAML", "Write the config file (Ctrl+S)", self.action_save),
            ("Load config from YAML", "Read a config file (Ctrl+O)", self.action_load),
            ("Go to the next problem", "Focus the next field in red (Ctrl+E)", self.action_next_problem),
        ]
        for name, about in forms.preset_choices():
            cmds.append((f"Preset: {name}", about, lambda n=name: self.apply_preset(n)))
        for gid, title, fields in forms.groups():
            cmds.append((f"Jump to {title}", f"Scroll the form to the {title.lower()} settings",
                         lambda g=gid, f=fields: self._jump(g, f)))
        return cmds

    def _jump(self, gid: str, fields: list[forms.FormField]) -> None:
        self.query_one(f"#group-{gid}").scroll_visible(top=True)
        self._widget(fields[0].key).focus()
