"""Runs: every run in the runs dir with its live status; open, resume, stop, delete, compare.

Statuses come from ``sft_tui.core.run.index`` (events folded incrementally + whether the worker pid
lives, so a crashed worker shows ``died``), refreshed every two seconds in a thread worker. After an
unexpected failure (shown in the error dialog) the refresh stops, and the summary line says so.
Resuming goes through ``sft_tui.core.train.resume.plan_resume`` (the CLI's rule: a finished run or one
without a complete checkpoint is refused with the reason) and the quick pre-flight, in a worker.

The footer offers what the highlighted run allows (Stop only while its worker runs, Resume only for a
run that ended early, Compare once two runs are marked); columns that do not fit at 80 columns
scroll, and the details line under the table repeats every one of them for the highlighted run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Footer, Static

from sft_tui.core.format import STATE_STYLES, compact, human_duration, human_time, human_time_short, shorten
from sft_tui.core.run.metrics import load_metrics
from sft_tui.core.run.rundir import RunDir, RunStatus
from sft_tui.core.run.index import RunIndex
from sft_tui.screens.base import StepScreen
from sft_tui.screens.dialogs import ConfirmScreen
from sft_tui.screens.work import Background, background
from sft_tui.widgets.chart import PALETTE, ChartSeries, LineChart

RESUMABLE = ("stopped", "failed", "died")
RUN_W, MODEL_W = 28, 20  # table cells; the details line under the table has them whole  # states a resume continues (plan_resume has the final word)

# The columns that matter most come first: at 80 columns the rest scroll (and the detail line repeats them).
COLUMNS = [("mark", " "), ("run", "run"), ("status", "status"), ("step", "step"), ("best_eval", "best eval"),
           ("duration", "duration"), ("model", "model"), ("method", "method"), ("loss", "loss"),
           ("started", "started")]


def row_cells(st: RunStatus, marked: bool, now: float | None = None) -> dict[str, Any]:
    """The table's cells; long names are shortened with '…' here and shown whole in the details line."""
    step = f"{st.step}/{st.max_steps}" if st.max_steps else str(st.step or "-")
    return {
        "mark": Text("●", style="bold magenta") if marked else Text(" "),
        "run": Text(shorten(st.name, RUN_W), style="bold"),
        "status": Text.assemble((st.state, STATE_STYLES.get(st.state, "")),
                                (" !" if st.unreadable else "", "bold yellow")),
        "model": shorten(st.model, MODEL_W, keep="end"),
        "method": st.method,
        "step": step,
        "loss": compact(st.last_loss),
        "best_eval": compact(st.best_eval_loss),
        "started": human_time_short(st.started),
        "duration": human_duration(st.elapsed(now)),
    }


class RunsScreen(StepScreen):
    STEP = "runs"
    TITLE = "Runs"
    CSS_PATH = "runs.tcss"
    HELP = """
Every training run in the runs folder. The status comes from the run's events and whether its
worker process is alive: a worker that crashed or was killed shows **died**, not running. A **!**
after the status means some lines of the run's events.jsonl were damaged and skipped (the details
line says how many); **unreadable** means its events cannot be read at all.

| key | does |
| --- | --- |
| Enter / o | open the run in the monitor (F5) |
| r | resume a stopped, failed or died run from its newest complete checkpoint (a finished run is not retrained) |
| x | stop a running run (asks first; it saves a checkpoint); a queued run is cancelled |
| n | start a queued run now, ahead of the queue |
| d | delete a run folder (asks first; a running run must be stopped first) |
| Space | mark / unmark a run for comparison |
| c | compare: the loss curves of the marked runs on one chart (two or more marked) |
| ← / → | scroll the table's columns; the line under the table shows them all for the highlighted run |

The footer shows only what the highlighted run allows: **x Stop** while its worker runs, **r Resume**
for a run that ended before finishing, **n Start now** for a run **queued** for a GPU (the line under
the table says what it waits for).
"""

    BINDINGS = [
        Binding("enter", "open_run", "Open", id="runs_open"),
        Binding("o", "open_run", "Open", show=False, id="runs_open_o"),
        Binding("r", "resume_run", "Resume", id="runs_resume"),
        # r on a run that cannot resume (finished, running) still says why; only the footer omits it.
        Binding("r", "explain_resume", "Resume", show=False, id="runs_resume_why"),
        Binding("x", "stop_run", "Stop", id="runs_stop"),
        Binding("n", "start_now", "Start now", id="runs_start_now"),  # only for a queued run
        Binding("d", "delete_run", "Delete", id="runs_delete"),
        Binding("space", "toggle_mark", "Mark", id="runs_mark"),
        Binding("c", "compare", "Compare", id="runs_compare"),
    ]

    REFRESH_S = 2.0

    class Refreshed(Message):
        def __init__(self, rows: list[tuple[RunDir, RunStatus]]) -> None:
            super().__init__()
            self.rows = rows

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, RunsScreen.Refreshed)

    class Resumed(Message):
        """The run resumes (``plan``), or why not: ``refused`` (plan_resume's UserError) or the
        pre-flight's ``report`` with blocking errors (all forceable means "ask")."""

        def __init__(self, run: RunDir, plan: Any = None, refused: Any = None, report: Any = None,
                     force: bool = False) -> None:
            super().__init__()
            self.run, self.plan, self.refused, self.report, self.force = run, plan, refused, report, force

    def __init__(self) -> None:
        super().__init__()
        self.index: RunIndex | None = None
        self.rows: list[tuple[RunDir, RunStatus]] = []
        self.marked: set[str] = set()
        self._busy = False
        self._stopped = False  # the refresh failed unexpectedly: no more refreshes
        self.loaded = False
        self.now: float | None = None  # pinned by snapshot tests; None means the clock
        self._refresh_timer = None

    def compose_body(self) -> ComposeResult:
        yield Static("", id="runs-summary")
        table: DataTable = DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        yield table
        yield Static("", id="run-detail")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        self.index = RunIndex(self.session.runs_dir)
        self.refresh_runs()
        self._refresh_timer = self.set_interval(self.REFRESH_S, self.refresh_runs)

    def stop_background(self) -> None:
        """The app is quitting: no more refreshes."""
        self._stopped = True
        if self._refresh_timer is not None:
            self._refresh_timer.stop()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer what the highlighted run allows; the rest is hidden from the footer (and inert)."""
        if action in ("stop_run", "resume_run", "explain_resume", "start_now"):
            sel = self.selected()
            if sel is None:
                return False
            st = sel[1]
            resumable = not st.alive and st.state in RESUMABLE
            return {"stop_run": st.alive, "resume_run": resumable, "explain_resume": not resumable,
                    "start_now": st.alive and st.state == "queued"}[action]
        if action == "compare":
            return len(self.marked) >= 2
        if action in ("open_run", "delete_run", "toggle_mark"):
            return self.selected() is not None
        return True

    def on_screen_resume(self) -> None:
        self.refresh_runs()
        self.query_one(DataTable).focus()
        self.apply_pending_selection()

    # ------------------------------------------------------------------ refresh
    def refresh_runs(self) -> None:
        if self._busy or self._stopped or self.index is None or (self.loaded and not self.is_current):
            return  # another screen is showing: refreshed again on return
        self._busy = True
        self._scan(self.index)

    @background(group="runs-refresh", description="read the runs' statuses")
    def _scan(self, index: RunIndex) -> Refreshed:
        return self.Refreshed(index.refresh())

    def work_failed(self, worker) -> None:
        if worker.group == "runs-refresh":
            self._busy = False
            self._stopped = True
            self._update_summary()

    def on_runs_screen_refreshed(self, message: Refreshed) -> None:
        self._busy = False
        self.rows = message.rows
        self.loaded = True
        self._fill_table()
        self.apply_pending_selection()

    def apply_pending_selection(self) -> None:
        """Select the run the app asked for (e.g. an unfinished run offered at launch), once listed."""
        wanted = getattr(self.app, "pending_run_selection", None)
        if wanted is None or not self.loaded:
            return
        keys = [str(run.path) for run, _ in self.rows]
        if wanted in keys:
            self.query_one(DataTable).move_cursor(row=keys.index(wanted))
            self._update_detail()
        self.app.pending_run_selection = None  # type: ignore[attr-defined]

    def _fill_table(self) -> None:
        table = self.query_one(DataTable)
        keys = [str(run.path) for run, _ in self.rows]
        existing = [str(k.value) for k in table.rows]
        self.marked &= set(keys)
        if keys == existing:
            for run, st in self.rows:
                cells = row_cells(st, str(run.path) in self.marked, self.now)
                for col, value in cells.items():
                    table.update_cell(str(run.path), col, value)
        else:
            current = self.selected_key()
            table.clear()
            for run, st in self.rows:
                cells = row_cells(st, str(run.path) in self.marked, self.now)
                table.add_row(*[cells[k] for k, _ in COLUMNS], key=str(run.path))
            if current in keys:
                table.move_cursor(row=keys.index(current))
        self._update_summary()

    def _update_summary(self) -> None:
        n = len(self.rows)
        running = sum(1 for _, st in self.rows if st.alive)
        text = Text(no_wrap=True, overflow="ellipsis")
        if self._stopped:
            text.append("Reading the runs failed (see the error); this list is no longer refreshed.", style="bold red")
        elif not n:
            text.append("No runs yet. ", style="bold")
            text.append("Set one up in Model → Data → Training, or run `sft-tui train CONFIG`.")
        else:
            text.append(f"{n} run{'s' if n != 1 else ''}", style="bold")
            text.append(f" · {running} running" if running else " · none running", style="dim")
            damaged = sum(1 for _, st in self.rows if st.unreadable or st.state == "unreadable")
            if damaged:
                text.append(f" · {damaged} with unreadable events (!)", style="yellow")
            if len(self.marked) >= 2:
                text.append(f" · {len(self.marked)} marked: c compares them", style="magenta")
            elif self.marked:
                text.append(" · 1 marked: mark another to compare", style="magenta")
            else:
                text.append(" · Enter opens a run in the monitor", style="dim")
        self.query_one("#runs-summary", Static).update(text)
        self._update_detail()
        self.refresh_bindings()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        self.action_open_run()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._update_detail()
        self.refresh_bindings()

    def _update_detail(self) -> None:
        """Everything the table's columns say about the highlighted run (some scroll out of view at
        80 columns), and more, wrapped: nothing is cut."""
        sel = self.selected()
        text = Text(no_wrap=False)
        if sel is not None:
            run, st = sel
            cells = row_cells(st, False, self.now)
            text.append(run.name, style="bold")
            text.append(f"  {st.state}", style=STATE_STYLES.get(st.state, ""))
            facts = [f"step {cells['step']}", f"loss {cells['loss']}", f"best eval {cells['best_eval']}",
                     f"{cells['duration']} long", f"started {human_time(st.started)}", st.model or "?",
                     st.method or "?"]
            text.append(" · " + " · ".join(facts), style="dim")
            if st.last_checkpoint:
                text.append(f" · last checkpoint {Path(st.last_checkpoint).name}")
            if run.has_adapter:
                text.append(" · adapter saved", style="green")
            text.append_text(self._extra_facts(st))
            if st.state == "unreadable":
                text.append(f"\n{run.events_path.name} cannot be read, so its status is unknown", style="red")
                text.append(f"\nWhat to do: check the file's permissions (ls -l {run.events_path})", style="dim")
            elif st.unreadable:
                n = st.unreadable
                text.append(f"\n{n} unreadable line{'s' if n != 1 else ''} in {run.events_path.name} "
                            f"{'was' if n == 1 else 'were'} skipped (damaged or not written by sft-tui)",
                            style="yellow")
            if st.error:
                text.append(f"\n{st.error.get('message')}", style="red")
                if st.error.get("hint"):
                    text.append(f"\nWhat to do: {st.error['hint']}", style="dim")
        self.query_one("#run-detail", Static).update(text)

    @staticmethod
    def _extra_facts(st: RunStatus) -> Text:
        """What the core folds besides the columns: why a queued run waits, a stall, ranks, GPUs, energy."""
        text = Text()
        extra = st.extra
        world = extra.get("world_size")
        if type(world) is int and world > 1:
            text.append(f" · {world} processes", style="dim")
        gpus = extra.get("gpus")
        if gpus and st.state not in ("queued", "new"):
            text.append(f" · GPU{'s' if len(gpus) > 1 else ''} {', '.join(str(g) for g in gpus)}", style="dim")
        kwh = extra.get("energy_kwh")
        if kwh is not None:
            from sft_tui.core.system.energy import format_kwh

            text.append(f" · {format_kwh(kwh)}", style="dim")
        if st.state == "queued":
            reason = extra.get("queued_reason") or "waiting for a free GPU"
            text.append(f"\nqueued: {reason}", style="magenta")
        stall = extra.get("stall")
        if stall and st.alive:
            from sft_tui.core.run.events import describe_stall

            text.append(f"\n⚠ {describe_stall(stall)}", style="bold yellow")
        return text

    # ------------------------------------------------------------------ selection
    def selected_key(self) -> str | None:
        table = self.query_one(DataTable)
        if not table.row_count:
            return None
        try:
            return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        except Exception:
            return None

    def selected(self) -> tuple[RunDir, RunStatus] | None:
        key = self.selected_key()
        for run, st in self.rows:
            if str(run.path) == key:
                return run, st
        return None

    def _need_selection(self) -> tuple[RunDir, RunStatus] | None:
        sel = self.selected()
        if sel is None:
            self.notify("no run selected", severity="warning")
        return sel

    # ------------------------------------------------------------------ actions
    def action_open_run(self) -> None:
        sel = self._need_selection()
        if sel is None:
            return
        self.session.run = sel[0]
        self.app.go_step("monitor")  # type: ignore[attr-defined]

    def action_resume_run(self) -> None:
        sel = self._need_selection()
        if sel is None:
            return
        run, st = sel
        if run.is_alive():
            self.notify(f"{run.name} is already running", severity="warning")
            return
        self._resume(run)

    def action_explain_resume(self) -> None:
        self.action_resume_run()  # refused with the reason (already running, finished, no checkpoint)

    @background(group="runs-resume", description="resume a run from its newest complete checkpoint")
    def _resume(self, run: RunDir, force: bool = False) -> Resumed:
        from sft_tui.core.errors import UserError
        from sft_tui.core.run.launch import start_worker
        from sft_tui.core.train.preflight import preflight
        from sft_tui.core.train.resume import plan_resume

        try:
            plan = plan_resume(run)  # refuses a finished run, one without a complete checkpoint, a breaking change
        except UserError as exc:
            return self.Resumed(run, refused=exc)
        report = preflight(run.load_config(), None, deep=False, runs_dir=run.path.parent, gpus=self.gpus)
        if report.blocking(force):
            return self.Resumed(run, plan=plan, report=report, force=force)
        run.writer().status("starting", resume=True)
        start_worker(run, resume=True)
        return self.Resumed(run, plan=plan)

    def on_runs_screen_resumed(self, message: Resumed) -> None:
        run = message.run
        if message.refused is not None:
            self.app.show_error(message.refused.message, message.refused.hint,  # type: ignore[attr-defined]
                                title=f"Cannot resume {run.name}")
            return
        if message.report is not None:
            blocking = message.report.blocking(message.force)
            lines = "\n".join(f"✗ {f}" for f in blocking)
            if message.force or not all(f.forceable for f in blocking):
                self.app.show_error(f"The pre-flight says {run.name} would fail:\n{lines}",  # type: ignore[attr-defined]
                                    f"fix {run.config_path}, then resume again", title=f"Cannot resume {run.name}")
                return

            def answered(choice: str | None) -> None:
                if choice == "resume":
                    self._resume(run, force=True)

            self.app.push_screen(ConfirmScreen(f"The pre-flight expects {run.name} to fail:\n\n{lines}\n\nThese "
                                               "checks are estimates and can be wrong. Resume anyway?",
                                               [("cancel", "Don't resume"), ("resume", "Resume anyway")]), answered)
            return
        plan = message.plan
        notes = plan.notes()
        self.notify("\n".join([f"resuming {run.name} from {plan.checkpoint.name} (step {plan.step})", *notes]),
                    title="Resuming", severity="warning" if notes else "information", timeout=8 if notes else 4,
                    markup=False)
        self.session.run = run
        self.app.go_step("monitor")  # type: ignore[attr-defined]

    def action_start_now(self) -> None:
        """A queued run starts now, ahead of the queue."""
        sel = self._need_selection()
        if sel is None:
            return
        run, st = sel
        if not run.is_alive() or st.state != "queued":
            self.notify(f"{run.name} is not queued ({st.state})", severity="warning")
            return
        run.send("start")
        self.notify(f"starting {run.name} now, ahead of the queue; it may run out of GPU memory if the GPU "
                    "is still busy")

    def action_stop_run(self) -> None:
        sel = self._need_selection()
        if sel is None:
            return
        run, st = sel
        if not run.is_alive():
            self.notify(f"{run.name} is not running", severity="warning")
            return
        if st.state == "queued":
            def cancel(choice: str | None) -> None:
                if choice == "stop":
                    run.send("stop")
                    self.notify(f"cancelling the queued run {run.name}")

            self.app.push_screen(ConfirmScreen(f"Cancel the queued run {run.name}? It is waiting for a GPU, not "
                                               "training, so there is nothing new to save; it leaves the queue.",
                                               [("stop", "Cancel the queued run"), ("cancel", "Keep it queued")]),
                                 cancel)
            return

        def answered(choice: str | None) -> None:
            if choice == "stop":
                run.send("stop")
                self.notify(f"stopping {run.name}: it saves a checkpoint and the adapter first")

        self.app.push_screen(ConfirmScreen(f"Stop {run.name}? It saves a checkpoint and the adapter, then ends.",
                                           [("stop", "Stop and save"), ("cancel", "Keep training")]), answered)

    def action_delete_run(self) -> None:
        sel = self._need_selection()
        if sel is None:
            return
        run, _ = sel
        if run.is_alive():
            self.app.show_error(f"Run {run.name} is still running.",  # type: ignore[attr-defined]
                                "Stop it first (x), then delete it.", title="Cannot delete")
            return

        def answered(choice: str | None) -> None:
            if choice != "delete":
                return
            try:
                run.delete()
            except Exception as exc:  # noqa: BLE001 - shown as words, not a traceback
                from sft_tui.core.errors import explain

                info = explain(exc)
                self.app.show_error(info.message, info.hint, title="Cannot delete")  # type: ignore[attr-defined]
                return
            if self.session.run is not None and self.session.run.path == run.path:
                self.session.run = None
            self.marked.discard(str(run.path))
            self.notify(f"deleted {run.name}")
            self.refresh_runs()

        self.app.push_screen(
            ConfirmScreen(f"Delete run {run.name}?\n\nIts folder — checkpoints, adapter and logs — is removed "
                          "for good.", [("cancel", "Keep it"), ("delete", "Delete")]),
            answered,
        )

    def action_toggle_mark(self) -> None:
        key = self.selected_key()
        if key is None:
            return
        if key in self.marked:
            self.marked.discard(key)
        else:
            self.marked.add(key)
        self._fill_table()
        self.refresh_bindings()

    def action_compare(self) -> None:
        runs = [run for run, _ in self.rows if str(run.path) in self.marked]
        if len(runs) < 2:
            self.notify("mark two or more runs with Space, then press c", severity="warning")
            return
        self.app.push_screen(CompareScreen(runs))

    def commands(self):
        commands = [("Runs: compare marked runs", "Overlay the loss curves of the marked runs (c)", self.action_compare),
                    ("Runs: open in the monitor", "Follow the highlighted run (Enter)", self.action_open_run),
                    ("Runs: delete run", "Remove the highlighted run's folder (d)", self.action_delete_run)]
        sel = self.selected()
        if sel is not None and sel[1].alive and sel[1].state == "queued":
            commands.append(("Runs: start the queued run now", "Skip the queue and start now (n)",
                             self.action_start_now))
        return commands


class CompareScreen(Background, ModalScreen[None]):
    """Loss curves of several runs on one chart, with each run's final and best values."""

    CSS_PATH = "runs.tcss"
    TITLE = "Compare runs"
    HELP = """
The loss curves of the runs you marked on the Runs screen, on one chart, with each run's steps,
final training loss and best evaluation loss below.

| key | does |
| --- | --- |
| v | train loss ↔ eval loss |
| l | log-scale y axis on/off |
| m | smoothing: off → 0.6 → 0.9 → 0.97 |
| Esc / q | back to the runs |
"""
    BINDINGS = [
        Binding("escape,q", "dismiss", "Close", id="compare_close"),
        Binding("f1", "app.help", "Help", id="compare_help"),
        Binding("v", "toggle_series", "Train/eval", id="compare_series"),
        Binding("l", "toggle_log", "Log y", id="compare_log_scale"),
        Binding("m", "cycle_smoothing", "Smooth", id="compare_smoothing"),
    ]

    class Loaded(Message):
        def __init__(self, metrics: list) -> None:
            super().__init__()
            self.metrics = metrics

    def __init__(self, runs: list[RunDir]) -> None:
        super().__init__()
        self.runs = runs
        self.metrics: list = []
        self.series_key = "loss"

    def compose(self) -> ComposeResult:
        with Vertical(id="compare-box"):
            yield LineChart("train loss", empty_text="reading runs…", id="compare-chart")
            yield Static("", id="compare-table")
        yield Footer()

    def on_mount(self) -> None:
        self._load(self.runs)

    @background(group="compare-load", description="read the compared runs' metrics")
    def _load(self, runs: list[RunDir]) -> Loaded:
        return self.Loaded([load_metrics(r) for r in runs])

    def work_failed(self, worker) -> None:
        self.query_one(LineChart).set_empty_text("could not read these runs (see the error)")

    def on_compare_screen_loaded(self, message: Loaded) -> None:
        self.metrics = message.metrics
        self._draw()

    def _draw(self) -> None:
        chart = self.query_one(LineChart)
        series = []
        for i, m in enumerate(self.metrics):
            s = m.series(self.series_key)
            series.append(ChartSeries(m.status.name, s.xs, s.ys, PALETTE[i % len(PALETTE)],
                                      smooth=self.series_key == "loss"))
        chart.set_series(series, title="train loss" if self.series_key == "loss" else "eval loss")
        if all(not s.xs for s in series):
            chart.set_empty_text(f"no {'eval' if self.series_key == 'eval_loss' else 'train'} loss recorded in these runs")
        self.query_one("#compare-table", Static).update(self._table())

    def _table(self) -> Text:
        """One row a run; the name column is as wide as the longest name that fits, and a longer name
        wraps onto its own line rather than being cut."""
        width = self.query_one("#compare-table", Static).content_size.width or 76
        numbers = f" {'steps':>9} {'final loss':>11} {'best eval':>10}"
        longest = max((len(m.status.name) for m in self.metrics), default=3)
        name_w = max(min(longest, width - len(numbers) - 2), 8)
        table = Text(no_wrap=True)
        table.append(f"  {'run':<{name_w}}{numbers}\n", style="bold")
        for i, m in enumerate(self.metrics):
            _, best = m.best_eval()
            name = m.status.name
            table.append("━ ", style=PALETTE[i % len(PALETTE)])
            while len(name) > name_w:  # the rest of a long name on the next line, under its start
                table.append(name[:name_w] + "\n  ")
                name = name[name_w:]
            table.append(f"{name:<{name_w}} {m.step:>9} {compact(m.train_loss.last):>11} {compact(best):>10}\n")
        return table

    def action_toggle_series(self) -> None:
        self.series_key = "eval_loss" if self.series_key == "loss" else "loss"
        self._draw()

    def action_toggle_log(self) -> None:
        self.query_one(LineChart).toggle_log()

    def action_cycle_smoothing(self) -> None:
        self.query_one(LineChart).cycle_smoothing()

    def action_dismiss(self) -> None:
        self.dismiss(None)
