"""Step 3: the run's settings as a form, checked as you type, with presets, memory and Start.

Next to Start sits the pre-flight (``sft_tui.core.train.preflight``): its cheap checks (files,
folders, runs dir, estimates) re-run in a worker a moment after each change of the config; the
expensive ones (reading the data, loading the tokenizer) run when the screen is first shown and
again when the model or the data changes. Start runs the whole pre-flight once more before it
creates anything: errors that cannot be wrong refuse the run; estimates ask "start anyway?".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.timer import Timer
from textual.widget import Widget
from textual.widgets import Button, Input, Label, Select, Static, Switch

from rich.text import Text

from sft_tui.core.hints import screen_hint
from sft_tui.core.setup import forms
from sft_tui.core.setup import presenters as P
from sft_tui.screens.base import GpusSampled, StepScreen
from sft_tui.screens.dialogs import ConfirmScreen, ReportScreen
from sft_tui.screens.work import background
from sft_tui.widgets.toggle import Toggle

LEVEL_CLASSES = ("fits", "tight", "does-not-fit", "no-gpu", "unknown")
PREFLIGHT_DEBOUNCE_S = 0.3
# What the expensive pre-flight depends on: the model, the data, and what rows-vs-batch needs.
DEEP_KEYS = (("model", "path"), ("model", "revision"), ("model", "trust_remote_code"), ("data", "path"),
             ("data", "validation_path"), ("data", "format"), ("data", "columns"), ("data", "skip_bad_rows"),
             ("data", "template"), ("data", "validation_split"), ("training", "batch_size"))
CONFIG_SUFFIXES = (".yaml", ".yml", ".py")  # sft-tui YAML, or a peer's: Axolotl/LLaMA-Factory YAML, TRL script


def deep_key(config: Any) -> str:
    import json

    raw = config.to_dict()
    return json.dumps([raw.get(section, {}).get(name) for section, name in DEEP_KEYS], default=str, sort_keys=True)


def config_key(config: Any) -> str:
    import json

    return json.dumps(config.to_dict(), default=str, sort_keys=True)


def preflight_text(findings: list[Any], pending: bool = False, width: int | None = None) -> Text:
    """Each finding on its own lines: ✗ for an error, ! for a warning, then the field, then the fix (in
    the words of the screens: the on-screen field, not the config key). With ``width``, paths longer
    than that are shortened ('~/…/train.jsonl') instead of broken across lines."""

    def fit(words: str) -> str:
        return P.fit_paths(words, width) if width else words

    text = Text()
    for f in sorted(findings, key=lambda f: f.level != "error"):
        if text:
            text.append("\n")
        error = f.level == "error"
        text.append("✗ " if error else "! ", style="bold red" if error else "bold yellow")
        text.append(f.field, style="bold")
        text.append(f": {fit(f.message)}", style="red" if error else "yellow")
        if f.fix:
            text.append(f"\n  fix: {fit(screen_hint(f.fix))}", style="dim")
        if error and f.forceable:
            text.append("\n  (an estimate: Start asks whether to start anyway)", style="dim")
    if pending:
        text.append(("\n" if text else "") + "… checking the data and the tokenizer", style="dim")
    return text


class Expandable(Static):
    """Text a narrow panel shows shortened (long paths as '…'), in full while it has the focus: Tab
    reaches it, and the side panel scrolls with it."""

    can_focus = True
    DEFAULT_CSS = """
    Expandable { border-left: blank; }
    Expandable:focus { border-left: thick $primary; background: $boost; }
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._make: Any = None  # width (None: in full) -> the text
        self._width = 0

    def show(self, make: Any) -> None:
        self._make = make
        self._redraw()

    def _redraw(self, full: bool | None = None) -> None:
        if self._make is not None:
            self._width = self.content_region.width
            full = self.has_focus if full is None else full
            self.update(self._make(None if full or not self._width else self._width))

    # (these run before Widget's own handlers have set has_focus, hence the explicit state)
    def on_focus(self) -> None:
        self._redraw(full=True)

    def on_blur(self) -> None:
        self._redraw(full=False)

    def on_resize(self) -> None:
        if self.content_region.width != self._width:
            self._redraw()


class TrainingScreen(StepScreen):
    STEP = "training"
    TITLE = "Training"
    HELP = """
The **run settings**, grouped like the config file: method, LoRA, quantization, optimisation,
schedule, sequences, evaluation, saving, GPUs and processes, several machines, watching the run.
Each field says in one line what it does.

* Values are **checked as you type**: a problem is shown in red under its field, and **Start** stays
  disabled until every problem is fixed.
* On/off settings read **[x] on** or **[ ] off**: **Space** or **Enter** flips the focused one.
* **Presets** fill groups of values (quick-test, balanced, low-memory).
* The **memory estimate** on the right follows your changes.
* Under **Start**, the **pre-flight** checks the run against this machine: the data file exists and
  parses, the model folder and its tokenizer, the runs folder's space, the batch against the rows,
  the memory estimate. **✗** is a problem that would stop the run, **!** a warning; each says its fix.
  "✓ ready to start" means nothing is in the way.
* **Ctrl+S** saves the config as YAML (the same file `sft-tui config validate` and
  `sft-tui train` read), **Ctrl+O** loads one — an Axolotl or LLaMA-Factory YAML or a TRL script
  works too: it is converted, and the settings that did not carry over are listed.
* **Ctrl+T** shows the form as an Axolotl YAML, a LLaMA-Factory YAML or a TRL script, to save or copy.
* **Ctrl+R** measures memory: a few real training steps on the longest batch, in a throwaway process
  (estimate vs measured vs free), with settings that fit proposed when it does not.
* **GPUs**: `devices` is auto (the GPU with the most free memory), a count, or indices such as 0, 2;
  more than one starts that many processes (`strategy`: ddp, fsdp or deepspeed). **wait for GPUs**
  queues the run until its GPUs have the memory it needs, even with the app closed.
* **Ctrl+L** shows the launch plan: one process, torchrun on this machine, or the command to run on
  each node of a multi-node run.
* **Ctrl+G** (or the Start button) checks once more, writes the run folder, starts training in a
  background worker that survives closing the app, and opens the monitor. A run the checks say
  cannot work is not started; when only estimates object, you are asked whether to start anyway.
"""

    BINDINGS = [
        Binding("ctrl+g", "start", "Start", id="training_start"),
        Binding("ctrl+s", "save", "Save", id="training_save"),
        Binding("ctrl+o", "load", "Load", id="training_load"),
        # Shown on the side panel's "Export as…" button: in the footer it would push Back off at 80 columns.
        Binding("ctrl+t", "export_peer", "Export as", show=False, id="training_export_peer"),
        Binding("ctrl+r", "measure", "Measure memory", show=False, id="training_measure"),
        Binding("ctrl+e", "next_problem", "Next problem", show=False, id="training_next_problem"),
        Binding("ctrl+l", "launch_plan", "Launch plan", show=False, id="training_launch_plan"),
    ]

    DEFAULT_CSS = """
    TrainingScreen #train-main { height: 1fr; }
    TrainingScreen #form { width: 1fr; padding: 0 1; }
    TrainingScreen #side { width: 32; padding: 0 1; border-left: solid $panel-lighten-2; scrollbar-size-vertical: 1; }
    TrainingScreen #side:focus { border-left: thick $primary; }
    TrainingScreen .group-title { text-style: bold; color: $primary; margin-top: 1; }
    TrainingScreen .group-title.first { margin-top: 0; }
    TrainingScreen .field-row { height: 1; }
    /* 19 is the longest label ("early stop patience"); 2 more keep it off the value. */
    TrainingScreen .field-row Label { width: 21; }
    TrainingScreen .field-row Input, TrainingScreen .field-row Select { width: 1fr; max-width: 40; }
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
    TrainingScreen #problems.checking { color: $text-muted; }
    TrainingScreen #preflight { height: auto; display: none; }
    TrainingScreen #preflight.-show { display: block; }
    TrainingScreen #saved { color: $text-muted; height: auto; }
    """

    class EnvironmentDetected(Message):
        def __init__(self, env: Any) -> None:
            super().__init__()
            self.env = env

    class Described(Message):
        """The model's description, or (``info`` None) why it could not be described."""

        def __init__(self, info: Any, error: str = "") -> None:
            super().__init__()
            self.info, self.error = info, error

    class MemoryEstimated(Message):
        def __init__(self, level: str, text: str) -> None:
            super().__init__()
            self.level, self.text = level, text

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, TrainingScreen.MemoryEstimated)

    class Started(Message):
        """The run started (``run``), or the config does not suit this machine (``problem``), or the
        pre-flight refused it (``report`` with blocking errors; all forceable means "ask")."""

        def __init__(self, env: Any, run: Any = None, problem: Exception | None = None, report: Any = None,
                     key: str = "", force: bool = False) -> None:
            super().__init__()
            self.env, self.run, self.problem, self.report, self.key, self.force = env, run, problem, report, key, force

    class Measured(Message):
        """A measured pre-flight's report (``text``) for the form as it was."""

        def __init__(self, title: str, text: str) -> None:
            super().__init__()
            self.title, self.text = title, text

    class Preflighted(Message):
        """A pre-flight's findings for the config with ``key`` (cheap) or ``deep_key`` (deep only)."""

        def __init__(self, key: str, findings: list[Any], deep: bool) -> None:
            super().__init__()
            self.key, self.findings, self.deep = key, findings, deep

    def __init__(self) -> None:
        super().__init__()
        self.env: Any = None
        self.result: forms.FormResult | None = None
        self._starting = False
        self._shown_errors: dict[str, str] = {}
        self._shown_summary = ""
        self._memory_for: Any = None  # the config the memory text was computed for
        self._memory_text: tuple[str, str] | None = None
        # pre-flight: the config each result was computed for, the results, and the debounce timers
        self._cheap_key = ""  # the config the latest cheap run was asked for
        self._cheap: list[Any] | None = None  # its findings, once they are in
        self._deep_key = ""
        self._deep: list[Any] | None = None  # findings only the deep checks make (data, tokenizer, rows)
        self._cheap_timer: Timer | None = None
        self._deep_timer: Timer | None = None
        self._shown_preflight: Any = None

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        config = self.session.config
        with Horizontal(id="train-main"):
            with VerticalScroll(id="form") as form:
                form.can_focus = False  # every field takes the focus and scrolls it into view
                for i, (gid, title, fields) in enumerate(forms.groups()):
                    yield Static(title, classes="group-title" + (" first" if i == 0 else ""), id=f"group-{gid}")
                    for f in fields:
                        yield from self._field(f, forms.display_value(config, f.key))
            with VerticalScroll(id="side"):
                yield Button("Start training", id="start", variant="success", compact=True)
                yield Static("", id="problems")
                yield Expandable("", id="preflight")
                yield Static("memory", classes="side-title")
                yield Static("waiting for the model…", id="memory", classes="unknown")
                yield Static("presets", classes="side-title")
                yield Select([(name, name) for name, _ in forms.preset_choices()], prompt="fill from a preset…",
                             id="preset", compact=True)
                yield Button("Save YAML", id="save", compact=True)
                yield Button("Load YAML", id="load", compact=True)
                yield Button("Export as… ^t", id="export-peer", compact=True, tooltip="Axolotl, LLaMA-Factory or TRL")
                yield Button("Measure memory ^r", id="measure", compact=True,
                             tooltip="a few real steps on the longest batch, in a throwaway process")
                yield Static("", id="saved")

    def _field(self, f: forms.FormField, value: Any) -> ComposeResult:
        widget: Widget
        if f.kind == "bool":
            widget = Toggle(bool(value), id=f.widget_id, name=f.key, animate=False)
        elif f.kind == "choice":
            options = ([("(default)", "")] if f.optional else []) + [(c, c) for c in f.choices]
            widget = Select(options, value=value, allow_blank=False, id=f.widget_id, name=f.key, compact=True)
        else:
            widget = Input(str(value), id=f.widget_id, name=f.key, compact=True,
                           placeholder="(empty: not set)" if f.optional else "")
        yield Horizontal(Label(f.label), widget, classes="field-row")
        yield Static(f.help, classes="field-help", markup=False)
        yield Static("", classes="field-error", id=f"{f.widget_id}-error", markup=False)

    def on_descendant_focus(self, event: Any) -> None:
        """A field that takes the focus shows its help line (and its problem) too, not only itself:
        tabbing down the form at 80×24 left each field's explanation just under the bottom edge."""
        row = event.widget.parent
        if row is None or not row.has_class("field-row") or row.parent is None:
            return
        siblings = list(row.parent.children)
        below = [w for w in siblings[siblings.index(row) + 1:][:2] if w.display]
        if below:
            form = self.query_one("#form", VerticalScroll)
            self.call_after_refresh(form.scroll_to_widget, below[-1], animate=False)

    def on_mount(self) -> None:
        self.validate()
        self._flush_preflight()  # the first checks at once: nothing to debounce yet
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
            self._schedule_preflight()
        self._show_summary()
        start = self.query_one("#start", Button)
        disabled = not result.valid or self._starting
        if start.disabled != disabled:
            start.disabled = disabled
        if changed or self._memory_for is None:
            self.update_memory()

    # ------------------------------------------------------------------ pre-flight
    def _schedule_preflight(self, now: bool = False) -> None:
        """Re-run the cheap checks when the config changed, the deep ones when the model/data did."""
        config = self.session.config
        key, dkey = config_key(config), deep_key(config)
        if key != self._cheap_key:  # the last findings stay shown until the new ones are in (no flicker)
            self._cheap_key = key
            if self._cheap_timer is not None:
                self._cheap_timer.stop()
            self._cheap_timer = self.set_timer(0 if now else PREFLIGHT_DEBOUNCE_S, self._run_cheap)
        if dkey != self._deep_key:
            self._deep_key, self._deep = dkey, None
            if self._deep_timer is not None:
                self._deep_timer.stop()
            self._deep_timer = self.set_timer(0 if now else PREFLIGHT_DEBOUNCE_S, self._run_deep)

    def _flush_preflight(self) -> None:
        """Run the pending pre-flight checks now instead of after the debounce."""
        for timer, run in ((self._cheap_timer, self._run_cheap), (self._deep_timer, self._run_deep)):
            if timer is not None:
                timer.stop()
                run()

    def _run_cheap(self) -> None:
        self._cheap_timer = None
        if self.result is not None and self.result.valid:
            self.check_cheap(self.session.config.model_copy(deep=True), self._cheap_key, self.env,
                             self.session.runs_dir, self.gpus)

    def _run_deep(self) -> None:
        self._deep_timer = None
        if self.result is not None and self.result.valid:
            self.check_deep(self.session.config.model_copy(deep=True), self._deep_key, self.env,
                            self.session.runs_dir, self.gpus)

    @background(group="training-preflight", description="check the config against this machine (quick)")
    def check_cheap(self, config: Any, key: str, env: Any, runs_dir: Any, gpus: Any) -> Preflighted:
        from sft_tui.core.train.preflight import preflight

        return self.Preflighted(key, preflight(config, env, deep=False, runs_dir=runs_dir, gpus=gpus).findings, False)

    @background(group="training-preflight-deep", description="read the data and load the tokenizer (pre-flight)")
    def check_deep(self, config: Any, key: str, env: Any, runs_dir: Any, gpus: Any) -> Preflighted:
        from sft_tui.core.train.preflight import preflight

        cheap = {str(f) for f in preflight(config, env, deep=False, runs_dir=runs_dir, gpus=gpus).findings}
        deep = preflight(config, env, deep=True, runs_dir=runs_dir, gpus=gpus).findings
        return self.Preflighted(key, [f for f in deep if str(f) not in cheap], True)

    def on_training_screen_preflighted(self, message: Preflighted) -> None:
        if message.deep and message.key == self._deep_key:
            self._deep = message.findings
        elif not message.deep and message.key == self._cheap_key:
            self._cheap = message.findings
        else:
            return  # for a config the form has moved on from
        self._show_summary()

    def preflight_findings(self) -> list[Any]:
        """What the pre-flight says about the config now (the parts that are in)."""
        return [*(self._cheap or []), *(self._deep or [])]

    def _show_summary(self) -> None:
        """The line under Start and the pre-flight's findings (both only when they change)."""
        result = self.result
        findings: list[Any] = []
        pending = False
        state = "bad"
        if result is None or not result.valid:
            count = result.count if result else 0
            lines = [f"✗ {count} problem(s) to fix" + (" (Ctrl+E: next)" if result and result.problems else "")]
            lines += [f"{p.field}: {forms.problem_text(p)}" for p in (result.other if result else [])]
            summary_text = "\n".join(lines)
        elif self._starting:
            summary_text, state = "checking and starting…", "checking"
        else:
            findings = self.preflight_findings()
            pending = self._cheap is None or self._deep is None
            errors = [f for f in findings if f.level == "error"]
            if errors:
                n = len(errors)
                summary_text = "✗ 1 problem stops the run" if n == 1 else f"✗ {n} problems stop the run"
            elif pending:
                summary_text, state = "… checking", "checking"
            else:
                summary_text, state = "✓ ready to start", "ok"
        shown = (summary_text, state, [str(f) + f.level for f in findings], pending and bool(findings))
        if shown == self._shown_preflight:
            return
        self._shown_preflight = shown
        self._shown_summary = summary_text
        summary = self.query_one("#problems", Static)
        summary.update(summary_text)
        summary.set_class(state == "ok", "ok")
        summary.set_class(state == "checking", "checking")
        box = self.query_one("#preflight", Expandable)
        box.show(lambda width: preflight_text(findings, pending and bool(findings), width))
        box.set_class(bool(findings), "-show")

    @on(Input.Changed, ".field-row Input")
    @on(Select.Changed, ".field-row Select")
    @on(Switch.Changed, ".field-row Switch")
    def _field_changed(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ machine facts (workers)
    @background(group="training-env", description="check CUDA and bf16 on this machine")
    def detect_environment(self) -> EnvironmentDetected:
        from sft_tui.core.config import Environment

        probe = Environment.detect()
        return self.EnvironmentDetected(Environment(cuda_available=probe.cuda_available,
                                                    bf16_supported=probe.bf16_supported))

    def on_training_screen_environment_detected(self, message: EnvironmentDetected) -> None:
        self.env = message.env
        self.validate()

    def gpus_sampled(self, message: GpusSampled) -> None:
        self.update_memory()
        if self.result is not None and self.result.valid:  # the memory check needs the GPUs
            self._cheap_key = ""
            self._schedule_preflight()

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

    @background(group="training-describe", description="describe the model for the memory estimate")
    def describe_model(self, path: str, trust_remote_code: bool) -> Described:
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.describe import describe_model

        try:
            info = describe_model(path, trust_remote_code=trust_remote_code)
        except UserError as exc:
            return self.Described(None, f"cannot describe the model: {exc.message}")
        info.name = path
        return self.Described(info)

    def on_training_screen_described(self, message: Described) -> None:
        info = message.info
        if info is None:
            self._memory("unknown", message.error)
        elif info.name == self.session.config.model.path:
            self.session.model_info = info
            self.update_memory()

    @background(group="training-memory", description="estimate the training memory")
    def compute_memory(self, config: Any, info: Any, gpus: Any) -> MemoryEstimated:
        view = P.memory_view(config, info, gpus)
        return self.MemoryEstimated(view.level, "\n".join([view.headline, *view.brief]))

    def on_training_screen_memory_estimated(self, message: MemoryEstimated) -> None:
        self._memory(message.level, message.text)

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
        self.app.push_screen(FilePicker("Load a config (sft-tui, Axolotl or LLaMA-Factory YAML, or a TRL script)",
                                        ".", current, suffixes=CONFIG_SUFFIXES), self.load_from)

    def load_from(self, path: str | None) -> None:
        if not path:
            return
        from sft_tui.core.config import ConfigError

        try:
            self.session.load(Path(path).expanduser())
        except ConfigError as exc:
            if not self._import_peer(path):
                self.app.show_error("\n".join(str(p) for p in exc.problems),
                                    "fix the file, or check it with `sft-tui config validate FILE`",
                                    title=f"{path} has {len(exc.problems)} problem(s)")
            return
        self._loaded()
        self.notify(f"Loaded {path}", timeout=3)

    def _loaded(self) -> None:
        self.session.model_info = None
        self.session.data_report = None
        self.sync_from_config(keep_invalid=False)
        self._show_saved()

    def _import_peer(self, path: str) -> bool:
        """Not an sft-tui config: try it as an Axolotl/LLaMA-Factory YAML or a TRL script."""
        from sft_tui.core.errors import UserError
        from sft_tui.core.interop import import_config

        try:
            imported = import_config(Path(path).expanduser())
        except UserError:
            return False  # not a peer's config either: the sft-tui problems are the ones to show
        self.session.config = imported.config
        self.session.config_path = None  # Ctrl+S asks where to write it as sft-tui YAML
        self._loaded()
        name = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory", "trl": "TRL"}.get(imported.source,
                                                                                       imported.source)
        lines = [f"{path} was read as a {name} config and converted; the form now holds it (not saved yet)."]
        if imported.unmapped:
            lines += ["", f"{len(imported.unmapped)} setting(s) did not carry over:"]
            lines += [f"  • {u.key} = {u.value!r}: {u.reason}" for u in imported.unmapped]
        else:
            lines += ["", "Every setting carried over."]
        if imported.notes:
            lines += ["", "Notes:", *[f"  • {n}" for n in imported.notes]]
        self.app.push_screen(ReportScreen(f"Imported from {name}", "\n".join(lines)))
        return True

    # ------------------------------------------------------------------ export as a peer's config
    def action_export_peer(self) -> None:
        if self.result is None or not self.result.valid:
            self.notify("Fix the problems first: only a valid config is exported.", severity="error")
            return
        from sft_tui.widgets.peerexport import PeerExportScreen

        folder = self.session.config_path.parent if self.session.config_path else Path(".")
        self.app.push_screen(PeerExportScreen(self.session.config.model_copy(deep=True), folder=folder))

    def action_launch_plan(self) -> None:
        """How this config starts: one process, torchrun on this machine, or the command for each node."""
        if self.result is None or not self.result.valid:
            self.notify("Fix the problems first: the launch plan is made from a valid config.", severity="error")
            return
        from sft_tui.core.errors import UserError
        from sft_tui.core.models.memory import gpu_count
        from sft_tui.core.train.launcher import print_launch

        config = self.session.config
        per_node = gpu_count(self.gpus) if config.training.nodes == 1 else None
        try:
            body = print_launch(config, per_node, str(self.session.config_path or "CONFIG.yaml"),
                                runs_dir=self.session.runs_dir)
        except UserError as exc:
            body = f"{exc.message}\n\n{exc.hint}" if exc.hint else exc.message
        from sft_tui.screens.dialogs import ReportScreen

        self.app.push_screen(ReportScreen("Launch plan", body))

    @on(Button.Pressed, "#save")
    def _save_pressed(self) -> None:
        self.action_save()

    @on(Button.Pressed, "#load")
    def _load_pressed(self) -> None:
        self.action_load()

    # ------------------------------------------------------------------ measured pre-flight
    def action_measure(self) -> None:
        if self.result is None or not self.result.valid:
            self.notify("Fix the problems first: only a valid config can be measured.", severity="error")
            return
        self.notify("Measuring a few real steps on the longest batch (seconds on a small model)…")
        self.measure(self.session.config.model_copy(deep=True))

    @background(group="training-measure", description="measure memory with a few real steps (pre-flight)")
    def measure(self, config: Any) -> "TrainingScreen.Measured":
        from sft_tui.core.train.measure import measured_preflight

        report = measured_preflight(config, say=lambda msg: self.post_message(self.Measured("", msg)))
        lines = [f"{label}: {value}" for label, value in report.rows()]
        for p in report.proposals:
            lines.append(f"{'✓' if p.fits else '✗'} try {p.text}")
        title = "Memory: fits" if report.fits else "Memory: does not fit"
        return self.Measured(title, "\n".join(lines))

    def on_training_screen_measured(self, message: "TrainingScreen.Measured") -> None:
        if not message.title:  # progress
            self.query_one("#saved", Static).update(Text(message.text, style="dim"))
            return
        self.query_one("#saved", Static).update("")
        self.app.push_screen(ReportScreen(message.title, message.text))

    @on(Button.Pressed, "#measure")
    def _measure_pressed(self) -> None:
        self.action_measure()

    @on(Button.Pressed, "#export-peer")
    def _export_pressed(self) -> None:
        self.action_export_peer()

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
        self._begin(force=False)

    def _begin(self, force: bool) -> None:
        self._starting = True
        self.query_one("#start", Button).disabled = True
        self._show_summary()
        config = self.session.config
        self.start_run(config.model_copy(deep=True), self.env, self.session.runs_dir, self.gpus,
                       config_key(config), force)

    @background(group="training-start", description="check the config, write the run folder and start the worker")
    def start_run(self, config: Any, env: Any, runs_dir: Any, gpus: Any = None, key: str = "",
                  force: bool = False) -> Started:
        from sft_tui.core.config import ConfigError, Environment, parse_config
        from sft_tui.core.run.launch import start_run
        from sft_tui.core.train.preflight import preflight

        try:
            if env is None:
                probe = Environment.detect()
                env = Environment(probe.cuda_available, probe.bf16_supported)
            config = parse_config(config.to_dict(), source="the form", env=env)
        except ConfigError as exc:
            return self.Started(env, problem=exc)
        report = preflight(config, env, deep=True, runs_dir=runs_dir, gpus=gpus)
        if report.blocking(force):  # refused before any run folder exists
            return self.Started(env, report=report, key=key, force=force)
        return self.Started(env, start_run(config, runs_dir=runs_dir), report=report, key=key, force=force)

    def on_training_screen_started(self, message: Started) -> None:
        self._starting = False
        self.env = message.env
        report = message.report
        if report is not None and message.key == config_key(self.session.config):
            # The start's pre-flight is the newest word on this config: show all of it.
            for timer in (self._cheap_timer, self._deep_timer):
                if timer is not None:
                    timer.stop()
            self._cheap_timer = self._deep_timer = None
            self._cheap_key, self._deep_key = message.key, deep_key(self.session.config)
            self._cheap, self._deep = list(report.findings), []
        self.validate()
        if message.run is None:
            if message.problem is not None:
                self.notify("The config does not suit this machine: see the fields in red.", severity="error")
            elif report is not None:
                self._refused(report, message.force)
            return
        self.session.run = message.run
        nodes = self.session.config.training.nodes
        if nodes > 1:
            self.notify(f"Started node 0 of run {message.run.name}: start the other {nodes - 1} node(s) with the "
                        "commands of the launch plan (Ctrl+L)", timeout=10)
        else:
            self.notify(f"Started run {message.run.name}", timeout=3)
        self.app.go_step("monitor")

    def _refused(self, report: Any, forced: bool) -> None:
        """Not started: say why; when only estimates object, ask whether to start anyway."""
        blocking = report.blocking(forced)
        if forced or not all(f.forceable for f in blocking):
            hard = [f for f in blocking if not f.forceable]
            self.notify(f"Not started: {len(hard)} problem(s) would stop the run — see them under Start.",
                        severity="error", timeout=6)
            return
        lines = "\n".join(f"✗ {f}" for f in blocking)
        question = (f"The pre-flight expects this run to fail:\n\n{lines}\n\nThese checks are estimates and "
                    "can be wrong. Start anyway?")

        def answered(choice: str | None) -> None:
            if choice == "start" and not self._starting:
                self._begin(force=True)

        self.app.push_screen(ConfirmScreen(question, [("cancel", "Don't start"), ("start", "Start anyway")]),
                             answered)

    def work_failed(self, worker: Any) -> None:
        if worker.group == "training-start":
            self._starting = False
            self.validate()

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
            ("Load config from YAML", "Read a config file: sft-tui, Axolotl, LLaMA-Factory or TRL (Ctrl+O)",
             self.action_load),
            ("Export as Axolotl / LLaMA-Factory / TRL", "Show the form as a peer tool's config, to save or copy "
             "(Ctrl+T)", self.action_export_peer),
            ("Go to the next problem", "Focus the next field in red (Ctrl+E)", self.action_next_problem),
            ("Measure memory (pre-flight)", "Run a few real steps on the longest batch in a throwaway process: "
             "estimate vs measured vs free memory (Ctrl+R)", self.action_measure),
            ("Show the launch plan", "How the run starts: one process, torchrun, or the command to run on each "
             "node of a multi-node run (Ctrl+L)", self.action_launch_plan),
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
