"""Evaluate: base vs tuned metrics on held-out rows, and a playground that streams both answers.

All model work runs in thread workers; they talk back only through messages, so the screen stays
responsive while a model loads, evaluates or generates. Nothing here imports torch: the core
modules import it inside the functions the workers call.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, ProgressBar, Select, Static, TabbedContent, TabPane

from sft_tui.core.errors import UserError
from sft_tui.core.format import display_path
from sft_tui.core.run.rundir import RunDir
from sft_tui.screens.base import StepScreen
from sft_tui.screens.work import background
from sft_tui.widgets.answer import AnswerPane
from sft_tui.widgets.runpicker import RunPicker

HELP = """
Measure what training changed, on rows the model never saw.

**Evaluation tab** — pick a run and press **Ctrl+R**. sft-tui loads the base model and the run's
adapter once, then for both models computes the loss and perplexity over the answer tokens of the
held-out rows (the ones training left out), and generates answers for as many of them as the
**rows** field says (50 unless you change it), scored
with ROUGE-L, BLEU and exact match against the reference answers. The table shows base and tuned
side by side; each evaluation is saved in the run folder as `eval/eval-TIME.json`.

The **verdict** above the table says whether the tuned model is better than the base on these rows,
on which metrics and by how much, each difference with a 95% interval from a paired bootstrap over
the rows: a metric counts only when its interval excludes zero and it rests on at least 10 rows, and
"better" needs one clear win and no clear loss. Warnings under it flag an overfit run (final train
loss far below the eval loss), one answer given to different prompts, and answers that never stop.

**Examples** below the table hold every evaluated row (prompt, reference, base and tuned answer):
**Tab** to the box, then **↓ ↑ PgDn PgUp Home End** scroll it.

**Playground tab** (**Ctrl+T** switches tabs) — type a prompt and press **Enter**: the base model's
and the tuned model's answers stream into the two panes, with the chat template applied exactly as
in training. Max new tokens, temperature (0 = greedy) and top-p are editable; **Escape** stops
generating. Write `\\n` for a line break inside the prompt. Every exchange is kept in
`chat/history.jsonl` in the run folder.

From the command line: `sft-tui eval RUN` (`--gate` exits 0 only when the tuned model is better),
`sft-tui chat RUN [--base]`.
"""


def evaluable(run: RunDir) -> bool:
    return run.has_model


class EvalProgress(Message):
    def __init__(self, stage: str, fraction: float) -> None:
        super().__init__()
        self.stage, self.fraction = stage, fraction

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EvalProgress)


class VerdictReady(Message):
    """A verdict computed in the background for a result saved without one."""

    def __init__(self, result: Any, verdict: Any) -> None:
        super().__init__()
        self.result, self.verdict = result, verdict


class EvalDone(Message):
    def __init__(self, result: Any = None, error: str | None = None) -> None:
        super().__init__()
        self.result, self.error = result, error


class GenStatus(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class GenChunk(Message):
    def __init__(self, which: str, chunk: str) -> None:
        super().__init__()
        self.which, self.chunk = which, chunk


class GenDone(Message):
    def __init__(self, record: Any, error: str | None = None) -> None:
        super().__init__()
        self.record, self.error = record, error


class EvaluateScreen(StepScreen):
    STEP = "evaluate"
    TITLE = "Evaluate"
    HELP = HELP
    CSS_PATH = "evaluate.tcss"
    BINDINGS = [
        Binding("ctrl+r", "evaluate", "Evaluate", id="eval_run"),
        Binding("ctrl+t", "switch_tab", "Eval/Playground", id="eval_switch_tab"),
        Binding("escape", "stop_generation", "Stop", show=False, id="playground_stop"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._stop = threading.Event()
        self.result: Any = None
        self.generating = False
        self.evaluating = False

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        with Horizontal(id="eval-top"):
            yield Label("Run", classes="field-label")
            yield RunPicker(evaluable, id="eval-run")
        with TabbedContent(id="eval-tabs", initial="tab-eval"):
            with TabPane("Evaluation", id="tab-eval"):
                with Horizontal(id="eval-controls"):
                    yield Label("rows", classes="field-label")
                    yield Input("50", id="eval-limit", type="integer", max_length=6,
                                tooltip="held-out rows to generate answers for (0: loss only)")
                    yield Button("Evaluate (Ctrl+R)", id="eval-start", variant="primary")
                yield ProgressBar(total=1.0, id="eval-progress", show_eta=False)
                yield Static("", id="eval-status", markup=False)
                yield Static("", id="eval-verdict", markup=False)
                yield Static("", id="eval-warnings", markup=False)
                yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
                examples = VerticalScroll(id="eval-examples")
                examples.border_title = "Examples"
                examples.can_focus = True
                with examples:
                    yield Static("", id="eval-sample", markup=False)
            with TabPane("Playground", id="tab-play"):
                with Horizontal(id="play-settings"):
                    yield Label("max new tokens", classes="field-label")
                    yield Input("64", id="play-max-tokens", type="integer", max_length=5)
                    yield Label("temperature", classes="field-label")
                    yield Input("0", id="play-temperature", type="number", max_length=5)
                    yield Label("top-p", classes="field-label")
                    yield Input("1.0", id="play-top-p", type="number", max_length=5)
                yield Input(placeholder="Type a prompt and press Enter; both models answer (\\n for a new line)", id="play-prompt")
                yield Static("", id="play-status", markup=False)
                with Horizontal(id="play-panes"):
                    yield AnswerPane("base model", id="pane-base")
                    yield AnswerPane("tuned model", id="pane-tuned")

    def on_mount(self) -> None:
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        self.refresh_runs()

    def commands(self) -> list[tuple[str, str, Any]]:
        return [("Evaluate run", "Compute base vs tuned metrics on held-out rows (Ctrl+R)", self.action_evaluate),
                ("Open playground", "Compare base and tuned answers to a prompt", lambda: self._show_tab("tab-play"))]

    # ------------------------------------------------------------------ runs
    def refresh_runs(self) -> None:
        """List runs with a trained model; select the session's run when it is new, else keep the choice."""
        wanted, previous = self.query_one("#eval-run", RunPicker).refresh_runs(self.session)
        if wanted is None:
            self._fill_table(None)
            self._set_status("No run has a trained adapter yet. Train one first (F4), or `sft-tui train CONFIG`.")
            return
        if wanted != previous:
            for pane in self.query(AnswerPane):
                pane.clear()
        if not self.evaluating:
            self._show_saved(self.selected_run())

    def selected_run(self) -> RunDir | None:
        return self.query_one("#eval-run", RunPicker).run

    @on(Select.Changed, "#eval-run")
    def _run_changed(self, event: Select.Changed) -> None:
        run = self.selected_run()
        if run is not None:
            self._show_saved(run)
            for pane in self.query(AnswerPane):
                pane.clear()

    def _show_saved(self, run: RunDir | None) -> None:
        from sft_tui.core.eval.evaluate import latest_result

        if run is None:
            return
        result = latest_result(run)
        if result is None:
            self._fill_table(None)
            self._set_status(f"{run.name}: not evaluated yet. Press Ctrl+R to compare base and tuned.")
        else:
            self._fill_table(result)
            self._set_status(f"{run.name}: last evaluation {Path(result.path or '').name} on {result.data}")

    # ------------------------------------------------------------------ evaluation
    def _set_status(self, text: str) -> None:
        self.query_one("#eval-status", Static).update(text)

    def _fill_table(self, result: Any, verdict: Any = None, examples: bool = True) -> None:
        self.result = result
        if result is not None and verdict is None and isinstance(result.verdict, dict):
            verdict = result.get_verdict()
        table = self.query_one("#eval-table", DataTable)
        table.clear(columns=True)
        self._show_verdict(result, verdict)
        if result is None:
            table.add_columns("metric", "base", "tuned", "change")
            self._show_examples(None)
            return
        rows = result.table(verdict)
        # Explicit widths: the table is filled after the columns exist, so size them to the content.
        for i, column in enumerate(result.columns(verdict)):  # a tuned-only evaluation has no base column
            width = max([len(column)] + [len(label if i == 0 else cells[i - 1]) for label, cells in rows if i == 0 or i - 1 < len(cells)])
            table.add_column(column, width=width)
        for label, cells in rows:
            table.add_row(label, *cells)
        if examples:
            self._show_examples(result)
        if verdict is None and {"base", "tuned"} <= set(result.models):
            self._compute_verdict(result, self.selected_run())

    def _show_verdict(self, result: Any, verdict: Any) -> None:
        line = self.query_one("#eval-verdict", Static)
        warnings = self.query_one("#eval-warnings", Static)
        line.remove_class("-better", "-worse", "-unclear")
        if result is None:
            line.update("")
            warnings.update("")
            line.display = warnings.display = False
            return
        line.display = True
        if verdict is None:
            pending = {"base", "tuned"} <= set(result.models)
            line.update("Verdict: weighing the evidence…" if pending else
                        "Verdict: none — only the tuned model was evaluated, so there is nothing to compare.")
            line.add_class("-unclear")
            warnings.display = False
            return
        line.update(f"Verdict: {verdict.line}")
        line.add_class({"better": "-better", "worse": "-worse"}.get(verdict.decision, "-unclear"))
        warnings.update("\n".join(f"⚠ {w['text']}" for w in verdict.warnings))
        warnings.display = bool(verdict.warnings)

    def _show_examples(self, result: Any) -> None:
        """Every evaluated row, whole and wrapped, in a box the keyboard can scroll."""
        from rich.text import Text

        box = self.query_one("#eval-examples", VerticalScroll)
        sample = self.query_one("#eval-sample", Static)
        box.remove_children(".example")
        samples = [x for x in result.samples if isinstance(x, dict)] if result is not None else []
        box.display = bool(samples)
        if not samples:
            sample.update("")
            return
        n = len(samples)
        box.border_title = f"Examples: {n} rows, base vs tuned"
        box.border_subtitle = "Tab here, then ↓ ↑ PgDn End"
        stopped = ((result.per_row or {}).get("tuned") or {}).get("stopped") or []
        cap = (result.settings or {}).get("max_new_tokens")
        sample.update("Every evaluated row: the prompt, the reference answer and each model's answer, whole.")
        widgets = []
        for i, s in enumerate(samples):
            text = Text()
            text.append(f"#{i + 1} of {n}", style="bold")
            if s.get("line"):
                text.append(f"  (line {s['line']} of the data)", style="dim")
            for label, key in (("prompt", "prompt"), ("reference", "reference"), ("base", "base"), ("tuned", "tuned")):
                if key in s:
                    text.append(f"\n{label:>9}: ", style="bold")
                    text.append(str(s[key]).replace("\n", "\n" + " " * 11))  # a prompt's own lines stay indented
            if i < len(stopped) and not stopped[i]:
                text.append(f"\n           (did not stop: ran to the {cap or 'max'}-token cap)", style="italic")
            widgets.append(Static(text, classes="example"))
        box.mount_all(widgets)
        box.scroll_home(animate=False)

    @background(group="verdict", description="weigh an older evaluation's evidence (paired bootstrap)")
    def _compute_verdict(self, result: Any, run: RunDir | None) -> VerdictReady:
        return VerdictReady(result, result.get_verdict(run))

    def on_verdict_ready(self, message: VerdictReady) -> None:
        if message.result is self.result:
            self._fill_table(message.result, message.verdict, examples=False)

    def action_evaluate(self) -> None:
        run = self.selected_run()
        if run is None:
            self.app.show_error("There is no trained run to evaluate.",  # type: ignore[attr-defined]
                                "train one first (F4), or pick a run that finished")
            return
        if self.evaluating:
            self.notify("an evaluation is already running")
            return
        raw = self.query_one("#eval-limit", Input).value.strip() or "50"
        try:
            limit = int(raw)
            if limit < 0:
                raise ValueError
        except ValueError:
            self.app.show_error(f"rows must be a whole number ≥ 0, not {raw!r}",  # type: ignore[attr-defined]
                                "0 computes only loss and perplexity")
            return
        self._show_tab("tab-eval")
        self.evaluating = True
        self.query_one("#eval-start", Button).disabled = True
        self.query_one("#eval-progress", ProgressBar).update(total=1.0, progress=0.0)
        self._set_status(f"evaluating {run.name}…")
        self._evaluate(run, limit, self._settings_or_default())

    @on(Button.Pressed, "#eval-start")
    def _eval_pressed(self) -> None:
        self.action_evaluate()

    @background(group="evaluate", description="evaluate base vs tuned on held-out rows")
    def _evaluate(self, run: RunDir, limit: int, settings: Any) -> EvalDone:
        from sft_tui.core.eval.evaluate import evaluate_run

        try:
            result = evaluate_run(run, limit=limit, settings=settings,
                                  progress=lambda stage, f: self.post_message(EvalProgress(stage, f)))
        except UserError as exc:
            return EvalDone(error=exc.message + (f" — {exc.hint}" if exc.hint else ""))
        return EvalDone(result)

    def work_failed(self, worker: Any) -> None:
        if worker.group == "verdict":
            self._show_verdict(self.result, None)
            self.query_one("#eval-verdict", Static).update("Verdict: could not be computed (see the error)")
        elif worker.group == "evaluate":
            self.on_eval_done(EvalDone(error="see the error"))
        elif worker.group == "playground":
            self.on_gen_done(GenDone(None, "see the error"))

    def on_eval_progress(self, message: EvalProgress) -> None:
        self.query_one("#eval-progress", ProgressBar).update(progress=max(0.0, min(message.fraction, 1.0)))
        self._set_status(f"{message.stage} {message.fraction:.0%}" if message.fraction else message.stage)

    def on_eval_done(self, message: EvalDone) -> None:
        self.evaluating = False
        self.query_one("#eval-start", Button).disabled = False
        if message.result is None:
            self._set_status(f"evaluation failed: {message.error}")
            return
        result = message.result
        self.query_one("#eval-progress", ProgressBar).update(progress=1.0)
        self._fill_table(result)
        self._set_status(f"done in {result.seconds:.1f} s; saved {display_path(result.path or '')}")

    # ------------------------------------------------------------------ playground
    def _show_tab(self, tab: str) -> None:
        self.query_one("#eval-tabs", TabbedContent).active = tab
        if tab == "tab-play":
            self.query_one("#play-prompt", Input).focus()

    def action_switch_tab(self) -> None:
        tabs = self.query_one("#eval-tabs", TabbedContent)
        self._show_tab("tab-play" if tabs.active == "tab-eval" else "tab-eval")

    def _settings(self):
        from sft_tui.core.eval.generate import GenSettings

        def num(widget_id: str, kind: type, label: str):
            raw = self.query_one(widget_id, Input).value.strip()
            try:
                return kind(raw)
            except ValueError:
                raise UserError(f"{label} must be a number, not {raw!r}",
                                "max new tokens is a whole number; temperature 0 means greedy") from None

        return GenSettings(max_new_tokens=num("#play-max-tokens", int, "max new tokens"),
                           temperature=num("#play-temperature", float, "temperature"),
                           top_p=num("#play-top-p", float, "top-p")).validated()

    def _settings_or_default(self):
        from sft_tui.core.eval.generate import GenSettings

        try:
            settings = self._settings()
        except UserError:
            return GenSettings()
        # Evaluation is greedy so results are reproducible; only the length cap carries over.
        return GenSettings(max_new_tokens=settings.max_new_tokens)

    @on(Input.Submitted, "#play-prompt")
    def _prompt_submitted(self, event: Input.Submitted) -> None:
        self.send_prompt(event.value)

    def send_prompt(self, prompt: str) -> None:
        from sft_tui.core.eval.generate import unescape_prompt

        prompt = unescape_prompt(prompt.strip())
        if not prompt:
            return
        run = self.selected_run()
        if run is None:
            self.app.show_error("There is no trained run to talk to.", "train one first (F4)")  # type: ignore[attr-defined]
            return
        if self.generating:
            self.notify("still answering the last prompt; Escape stops it")
            return
        try:
            settings = self._settings()
        except UserError as exc:
            self.app.show_error(exc.message, exc.hint)  # type: ignore[attr-defined]
            return
        for pane in self.query(AnswerPane):
            pane.clear()
            pane.remove_class("streaming")
        self._stop.clear()
        self.generating = True
        self.query_one("#play-status", Static).update("loading models…")
        self._generate(run, prompt, settings)

    @background(group="playground", description="answer a prompt with the base and the tuned model")
    def _generate(self, run: RunDir, prompt: str, settings: Any) -> GenDone:
        from sft_tui.core.eval.generate import compare, load_pair

        try:
            pair = load_pair(run, progress=lambda msg: self.post_message(GenStatus(msg)))
            self.post_message(GenStatus("generating…"))
            record = compare(pair, prompt, settings, stop=self._stop,
                             on_chunk=lambda which, chunk: self.post_message(GenChunk(which, chunk)))
        except UserError as exc:  # shown in place: a bad prompt must not cost a dialog per try
            return GenDone(None, exc.message + (f" — {exc.hint}" if exc.hint else ""))
        return GenDone(record)

    def on_gen_status(self, message: GenStatus) -> None:
        self.query_one("#play-status", Static).update(message.text)

    def on_gen_chunk(self, message: GenChunk) -> None:
        pane = self.query_one(f"#pane-{message.which}", AnswerPane)
        other = "tuned" if message.which == "base" else "base"
        pane.add_class("streaming")
        self.query_one(f"#pane-{other}", AnswerPane).remove_class("streaming")
        pane.append(message.chunk)

    def on_gen_done(self, message: GenDone) -> None:
        self.generating = False
        for pane in self.query(AnswerPane):
            pane.remove_class("streaming")
        status = self.query_one("#play-status", Static)
        if message.error:
            status.update(f"error: {message.error}")
            return
        record = message.record
        times = ", ".join(f"{k} {v:.1f} s" for k, v in record.seconds.items())
        stopped = " (stopped)" if self._stop.is_set() else ""
        status.update(f"done{stopped}: {times}; kept in chat/history.jsonl")

    def action_stop_generation(self) -> None:
        if self.generating:
            self._stop.set()
            self.query_one("#play-status", Static).update("stopping…")
