"""Monitor: follow a training run live — loss chart, metrics, progress with ETA, GPU gauges, log tail.

The screen only reads the run directory (``app.session.run``) and writes commands to it, so it
works the same for a run it started, one started from the CLI, or one re-attached after an SSH
drop. Every half second a thread worker reads only the bytes appended to events.jsonl since the
last read; GPUs are sampled once a second by the screens' shared sampling worker. A tick is skipped
while the previous read is still running, so slow disks or NVML calls never queue up work. After an
unexpected failure (shown in the error dialog) that polling stops until another run is followed.
Damaged lines in events.jsonl (torn, huge, too deep, wrongly typed) are skipped by the reader and
counted; the screen says how many and keeps following.

What it shows follows the run's state: with no run it says how to get one; while the worker
evaluates the ETA is paused; a finished run offers no Stop/Save and shows no worker memory. At
80×24 nothing is cut: long values and log lines wrap, and keys that do not fit the footer are in F1.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Static

from sft_tui.core.format import STATE_STYLES, compact, display_path, human_bytes, human_duration
from sft_tui.core.run.events import FINAL_STATES, EventTail, describe_stall, format_event
from sft_tui.core.run.index import with_liveness
from sft_tui.core.run.metrics import RunMetrics
from sft_tui.core.run.rundir import LIVE_STATES, RunDir
from sft_tui.screens.base import GpusSampled, StepScreen
from sft_tui.screens.dialogs import ConfirmScreen, ErrorScreen, ReportScreen
from sft_tui.screens.work import background
from sft_tui.widgets.chart import PALETTE, ChartSeries, LineChart
from sft_tui.widgets.eventlog import EventLog
from sft_tui.widgets.gauges import GpuPanel, bar, wrapped
from sft_tui.widgets.ranks import RanksPanel, rank_rows

# (key, title, series keys)
CHART_VIEWS = [("loss", "loss", ("loss", "eval_loss")), ("lr", "", ("lr",)),
               ("grad_norm", "", ("grad_norm",)), ("tokens_per_s", "", ("tokens_per_s",))]
SERIES_LABEL = {"loss": "train", "eval_loss": "eval"}

# What a run in a state before its first training step is doing, in words.
BEFORE_TRAINING = {"new": "waiting for the worker to start", "starting": "starting the worker",
                   "queued": "waiting for a free GPU", "loading": "loading the model",
                   "tokenizing": "tokenizing the data", "training": "training: the first step is on its way",
                   "evaluating": "evaluating", "saving": "saving"}
NO_RUN_TEXT = ("No run selected\n"
               "The monitor follows one training run: start one on Training (F4) or open one on Runs (F8). "
               "From any shell: sft-tui attach RUN")
LABEL_W = 11  # the stats panel's label column
# Events the log pane leaves out: drawn elsewhere (stats, the ranks panel), written at every step or minute.
QUIET_EVENTS = ("memory", "ranks", "energy")
MIN_CHART_ROWS = 12  # the per-rank table is shown only when the chart keeps at least this many rows
LAST_LINES = 8  # of a failed rank's output, in the error panel


def log_style(ev: dict[str, Any]) -> str:
    style = {"error": "bold red", "status": "bold", "checkpoint": "green", "eval": "yellow",
             "stall": "bold yellow"}.get(ev.get("type"), "")
    if ev.get("type") == "log" and ev.get("level") in ("warning", "error"):
        style = "yellow" if ev["level"] == "warning" else "red"
    return style


def _log_line(ev: dict[str, Any]) -> tuple[str, str]:
    line = format_event(ev)
    if ev.get("type") == "stall":  # the stacks are one key away here, not only in events.jsonl
        line = line.replace("thread stacks in events.jsonl", "k shows the thread stacks")
    return line, log_style(ev)


def shown_in_log(events) -> list[dict[str, Any]]:
    return [ev for ev in events if ev.get("type") not in QUIET_EVENTS]


class RankErrorScreen(ErrorScreen):
    """The error panel with a failed rank's last lines of output under the message, dimmed (in a box that
    scrolls, ending at the last line, so a short terminal still shows the title and the hint)."""

    DEFAULT_CSS = """
    RankErrorScreen #error-output-box { height: auto; max-height: 30vh; margin-top: 1; scrollbar-size-vertical: 1; }
    RankErrorScreen #error-output { color: $text-muted; }
    """

    def __init__(self, message: str, hint: str, title: str, output_title: str, lines: list[str]) -> None:
        super().__init__(message, hint, title)
        self.output_title, self.output_lines = output_title, lines

    def on_mount(self) -> None:
        body = Text(self.output_title + "\n", style="bold")
        body.append("\n".join(self.output_lines), style="dim")
        hint = self.query("#error-hint")
        box = VerticalScroll(Static(body, id="error-output"), id="error-output-box")
        self.query_one(Vertical).mount(box, before=hint.first() if hint else self.query_one(Button))
        box.call_after_refresh(box.scroll_end, animate=False)
        # (ErrorScreen's own on_mount, which focuses OK, runs too: Textual calls each class's handler.)


def stat_rows(rows: list[tuple[str, list[str], str]], width: int) -> list[Text]:
    """Label/value rows for a panel ``width`` cells wide: a value's pieces stay on the label's line while
    they fit and continue on indented lines below when they do not; nothing is cut."""
    out: list[Text] = []
    room = max(width - LABEL_W, 8)
    for label, pieces, style in rows:
        lines: list[str] = []
        for piece in pieces:
            if lines and len(lines[-1]) + 1 + len(piece) <= room:
                lines[-1] += " " + piece
            elif len(piece) <= room:
                lines.append(piece)
            else:  # a long message: words wrapped
                out_lines = [t.plain for t in wrapped(piece, room)]
                lines += out_lines
        for i, line in enumerate(lines or [""]):
            text = Text(no_wrap=True)
            text.append(f"{label:<{LABEL_W}}" if i == 0 else " " * LABEL_W, style="dim")
            text.append(line, style=style)
            out.append(text)
    return out


class MonitorScreen(StepScreen):
    STEP = "monitor"
    TITLE = "Monitor"
    CSS_PATH = "monitor.tcss"
    HELP = """
Follows the selected training run live. Everything here is read from the run's folder, so the
run keeps training when you quit or your SSH connection drops; re-open it with
`sft-tui attach RUN` or from the Runs screen (F8).

| key | does |
| --- | --- |
| x | stop the run (asks first); the worker saves a checkpoint and the adapter. A queued run is cancelled |
| n | start a queued run now, ahead of the queue (only while it waits for a GPU) |
| s | save a checkpoint now |
| c | chart: loss → learning rate → grad norm → tokens/s |
| l | log-scale y axis on/off |
| m | smoothing: off → 0.6 → 0.9 → 0.97 (raw values stay faint underneath) |
| o | show the run folder's path (and copy it to the clipboard) |
| e | show the last error again (a failed rank's last output with it) |
| k | show the thread stacks of the latest stall |
| Tab | move to the metrics or the log, then ↑/↓ to scroll them |

Stop and Save are offered only while the run's worker is alive. The header says what the run is
doing: **evaluating** pauses the ETA (no training step passes while the worker evaluates), and a
finished run says how it ended and what to do next.

A **queued** run waits for GPU memory on a shared machine: the line under the header says what it
waits for and who holds the GPU. When a run's steps stop coming, a yellow line says for how long
(the worker's watchdog); k shows where each thread was.

The GPU panel shows each GPU's memory (our worker's share in bold), utilisation, temperature
and power about once a second, and who holds each GPU; the run's own GPUs come first. Without an
NVIDIA GPU it says so and shows the worker's memory. A run of several processes shows a row per
rank (tokens/s, forward and data-wait time, memory) and names the slowest rank; where the screen is
short, one line sums it up.
"""

    BINDINGS = [
        Binding("x", "stop_run", "Stop", id="monitor_stop"),
        Binding("n", "start_now", "Start now", id="monitor_start_now"),  # only while queued
        Binding("s", "save_now", "Save", id="monitor_save"),
        Binding("c", "cycle_chart", "Chart", id="monitor_chart"),
        # At 80 columns the footer holds only the keys above: these are in F1 and Ctrl+P.
        Binding("l", "toggle_log", "Log y", show=False, id="monitor_log_scale"),
        Binding("m", "cycle_smoothing", "Smooth", show=False, id="monitor_smoothing"),
        Binding("o", "open_folder", "Folder", show=False, id="monitor_open_folder"),
        Binding("e", "show_error", "Error", show=False, id="monitor_show_error"),
        Binding("k", "show_stack", "Stacks", show=False, id="show_stack"),
        # x / s without a live worker only say why (the footer does not offer them then).
        Binding("x", "explain('stop')", "Stop", show=False, id="monitor_stop_why"),
        Binding("s", "explain('save')", "Save", show=False, id="monitor_save_why"),
    ]

    POLL_S = 0.5
    GPU_POLL_S = 1.0
    CHUNK_BYTES = 4 << 20

    class EventsRead(Message):
        """Lines appended since the last read; the first read also brings the folded history."""

        def __init__(self, generation: int, events: list[dict[str, Any]], alive: bool,
                     metrics: RunMetrics | None = None, unreadable: int = 0) -> None:
            super().__init__()
            self.generation, self.events, self.alive, self.metrics = generation, events, alive, metrics
            self.unreadable = unreadable  # lines of events.jsonl skipped so far (the tail's count)
            self.error: str | None = None

    def __init__(self) -> None:
        super().__init__()
        self.run: RunDir | None = None
        self.metrics = RunMetrics()
        self.tail: EventTail | None = None
        self.alive = False
        self.generation = 0
        self.chart_view = 0
        self._tail_busy = False
        self._tail_stopped = False  # an unexpected read failure: no more reads of this run
        self._gpu_busy = False
        self._gpu_stopped = False
        self._errors_shown = 0
        self.loaded = False  # the history has been read once
        self.stop_sent = False
        self._last_read_error: str | None = None
        self.polls = 0
        self.unreadable = 0  # lines of this run's events.jsonl the reader skipped
        self._poll_timers: list = []
        self._quitting = False  # the app is quitting: start no more reads or samples
        self._was_live: tuple | None = None  # (live, has a run) when the footer was last refreshed
        self._last_sample: GpusSampled | None = None
        self._model_in_header = True
        self._status_cache: tuple | None = None

    @property
    def last_ranks(self) -> dict[str, Any] | None:
        """The latest ``ranks`` event (multi-process runs), as RunMetrics folded it."""
        return self.metrics.last_ranks

    @property
    def last_stall(self) -> dict[str, Any] | None:
        """The latest ``stall`` event, with its thread stacks."""
        return self.metrics.last_stall

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        yield Static("", id="run-header")
        yield Static("", id="run-progress")
        with Horizontal(id="monitor-main"):
            yield LineChart("loss", empty_text=NO_RUN_TEXT, id="chart")
            with VerticalScroll(id="monitor-side"):
                yield Static("", id="stats")
                yield GpuPanel(id="gpus")
        yield RanksPanel(id="ranks")
        yield EventLog(_log_line, id="log")

    def on_mount(self) -> None:
        self.query_one(LineChart).smoothing = LineChart.SMOOTHING_STEPS[1]
        self._follow_run(self.session.run)
        self._poll_timers = [self.set_interval(self.POLL_S, self._poll_tail),
                             self.set_interval(self.GPU_POLL_S, self._poll_gpus)]
        self._poll_gpus()

    def on_screen_resume(self) -> None:
        self._check_run_changed()
        self._maybe_show_error()

    def on_resize(self) -> None:
        self.call_after_refresh(self._render_all)

    def stop_background(self) -> None:
        """The app is quitting: stop polling now, so nothing new starts while it closes."""
        self._quitting = True
        for timer in self._poll_timers:
            timer.stop()

    # ------------------------------------------------------------------ which run
    def _check_run_changed(self) -> None:
        run = self.session.run
        if (run.path if run else None) != (self.run.path if self.run else None):
            self._follow_run(run)

    def _follow_run(self, run: RunDir | None) -> None:
        self.generation += 1
        self.run = run
        self.metrics = RunMetrics(run.name if run else "")
        self.tail = EventTail(run.events_path, thin=True) if run else None
        self.alive = False
        self.loaded = run is None
        self._errors_shown = 0
        self._tail_busy = False
        self._tail_stopped = False
        self.stop_sent = False
        self._last_read_error = None
        self.unreadable = 0
        self.query_one(EventLog).reset()
        self.query_one(EventLog).display = run is not None
        self._bind_chart()
        self._render_all()
        if run is not None:
            self._poll_tail()

    # ------------------------------------------------------------------ polling (thread workers)
    def _poll_tail(self) -> None:
        if self._quitting:
            return
        self._check_run_changed()
        if self.run is None or self.tail is None or self._tail_busy or self._tail_stopped:
            return
        self._tail_busy = True
        self._read_tail(self.generation, self.run, self.tail, not self.loaded)

    @background(group="monitor-tail", description="read the run's new events", exclusive=False)
    def _read_tail(self, gen: int, run: RunDir, tail: EventTail, first: bool) -> EventsRead:
        try:
            metrics = None
            if first:  # fold a long history here, not on the UI thread, a few MB at a time
                metrics = RunMetrics(run.name)
                try:  # what is trained, for the header (a damaged config only loses this line)
                    config = run.load_config()
                    metrics.status.model = display_path(config.model.path)
                    metrics.status.method = config.method.type
                except Exception:  # noqa: BLE001
                    pass
                while chunk := tail.read_new(max_bytes=self.CHUNK_BYTES):
                    metrics.feed(chunk)
                events = []
            else:
                events = tail.read_new()
            alive = run.is_alive()
        except OSError as exc:  # e.g. the folder was deleted or unmounted: say so once, keep polling
            message = self.EventsRead(gen, [], False)
            message.error = f"cannot read {run.events_path.name}: {exc.strerror or exc}"
            return message
        return self.EventsRead(gen, events, alive, metrics, tail.unreadable)

    def work_failed(self, worker) -> None:
        if worker.group == "monitor-tail":
            self._tail_busy = False
            self._tail_stopped = True
            self._render_all()
        elif worker.group == "gpus":
            self._gpu_busy = False
            self._gpu_stopped = True

    def on_monitor_screen_events_read(self, message: EventsRead) -> None:
        if message.generation != self.generation:
            return  # read for a run we no longer show
        self._tail_busy = False
        self.polls += 1
        if message.error and message.error != self._last_read_error:
            self.notify(message.error, severity="error")
        self._last_read_error = message.error
        if message.unreadable > self.unreadable:
            n = message.unreadable
            lines = "1 unreadable line was" if n == 1 else f"{n} unreadable lines were"
            self.notify(f"{lines} skipped in events.jsonl; still following the run", severity="warning", timeout=6)
        self.unreadable = max(self.unreadable, message.unreadable)
        self.alive = message.alive
        log = self.query_one(EventLog)
        if message.metrics is not None:
            self.metrics = message.metrics
            self.loaded = True
            self._bind_chart()
            log.reset(shown_in_log(self.metrics.logs))
        else:
            self.metrics.feed(message.events)
            log.add(shown_in_log(message.events))
        if message.events or message.metrics is not None:
            self.query_one(LineChart).touch()
        self._render_all()
        self._maybe_show_error()

    def _poll_gpus(self) -> None:
        if self._quitting or self._gpu_busy or self._gpu_stopped or (self.is_mounted and not self.is_current
                                                                    and self.polls):
            return  # nobody is looking at the gauges: no NVML calls
        self._gpu_busy = True
        self.sample_gpus(self.run if self.is_live() or not self.loaded else None)

    def gpus_sampled(self, message: GpusSampled) -> None:
        self._gpu_busy = False
        self._last_sample = message
        self._update_gpus()

    def _update_gpus(self) -> None:
        message = self._last_sample
        if message is None:
            return
        note = self._worker_note()
        pids, rss = (message.pids, message.rss) if note is None else ([], None)
        self.query_one(GpuPanel).update_snapshot(self._run_gpus_first(message.snapshot), pids, rss, bool(pids), note,
                                                 holders=message.holders)

    def _run_gpus_first(self, snapshot: Any) -> Any:
        """The snapshot with the run's own GPUs (physical indices, from its ``starting`` status) first."""
        ours = self.metrics.status.extra.get("gpus") if self.run is not None else None
        gpus = getattr(snapshot, "gpus", None)
        if not ours or not gpus or len(gpus) < 2:
            return snapshot
        order = {index: i for i, index in enumerate(ours)}
        ordered = sorted(gpus, key=lambda g: order.get(g.index, len(order)))
        if [g.index for g in ordered] == [g.index for g in gpus]:
            return snapshot
        return dataclasses.replace(snapshot, gpus=ordered)

    def _update_ranks(self) -> None:
        """The per-rank table of a multi-process run: a table when the chart keeps room enough, else one line."""
        panel = self.query_one(RanksPanel)
        event = self.last_ranks if self.run is not None and self.loaded else None
        world = event.get("world_size") if event is not None else None
        show = event is not None and (type(world) is int and world > 1 or len(rank_rows(event)) > 1)
        was_shown = panel.display
        panel.display = show
        if not show:
            if panel.event is not None:
                panel.update_ranks(None, True)
            return
        main = self.query_one("#monitor-main")
        room = main.outer_size.height + (panel.outer_size.height if was_shown else 0)
        need = panel.table_height(self.size.width)
        compact = not need or room - need < MIN_CHART_ROWS
        if panel.event is not event or panel.compact != compact:
            panel.update_ranks(event, compact)

    def _worker_note(self) -> str | None:
        """What the GPU panel says instead of the worker's memory, when there is no worker to measure."""
        if self.run is None:
            return ""
        state = self.live_status().state if self.loaded else ""
        if state in FINAL_STATES or state == "died":
            return f"run {state}: no worker"
        return None

    # ------------------------------------------------------------------ state
    def live_status(self):
        """The run's status with the worker's liveness (``died``), worked out once per read of the events."""
        key = (self.generation, self.polls, self.metrics.version, self.loaded, id(self.metrics))
        if self._status_cache is None or self._status_cache[0] != key:
            st = copy.copy(self.metrics.status)
            if self.run is not None and self.loaded:
                st = with_liveness(st, self.run.pid())
            self._status_cache = (key, st)
        return self._status_cache[1]

    def is_live(self) -> bool:
        """A worker is running this run now: Stop and Save make sense."""
        return (self.run is not None and self.loaded and self.alive
                and self.metrics.status.state in (*LIVE_STATES, "new"))

    def is_queued(self) -> bool:
        """The run's worker waits for a GPU: it can be started now or cancelled, not saved."""
        return self.is_live() and self.metrics.status.state == "queued"

    def stalled(self) -> dict[str, Any] | None:
        """The watchdog's latest stall while the run is still going and no step has come since."""
        if self.run is None or not self.loaded or self.live_status().state not in LIVE_STATES:
            return None
        return self.metrics.status.extra.get("stall")  # a later train event clears it

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "stop_run":
            return self.is_live()  # hidden from the footer unless a worker runs
        if action == "save_now":
            return self.is_live() and not self.is_queued()  # a queued run has nothing to save yet
        if action == "start_now":
            return self.is_queued()
        if action == "explain":
            if parameters and parameters[0] == "save":
                return not self.is_live() or self.is_queued()
            return not self.is_live()
        if action == "show_stack":
            return self.last_stall is not None
        if action in ("open_folder", "cycle_chart", "toggle_log", "cycle_smoothing"):
            return self.run is not None  # nothing to chart or open without a run
        return True

    # ------------------------------------------------------------------ drawing
    def _bind_chart(self) -> None:
        key, title, series_keys = CHART_VIEWS[self.chart_view]
        series = []
        for i, skey in enumerate(series_keys):
            s = self.metrics.series(skey)
            series.append(ChartSeries(SERIES_LABEL.get(skey, s.name), s.xs, s.ys, PALETTE[i], smooth=skey != "eval_loss"))
        self.query_one(LineChart).set_series(series, title=title if self.run is not None else "")

    def _render_all(self) -> None:
        if not self.is_mounted:
            return
        self.query_one("#run-header", Static).update(self._header())
        self.query_one("#run-progress", Static).update(self._progress())
        self.query_one("#stats", Static).update(self._stats())
        self.query_one(LineChart).set_empty_text(self._empty_text())
        self._update_gpus()
        self._update_ranks()
        offer = (self.is_live(), self.run is not None, self.is_queued(), self.last_stall is not None)
        if offer != self._was_live:
            self._was_live = offer
            self.refresh_bindings()

    def _width(self, widget_id: str, fallback: int) -> int:
        width = self.query_one(widget_id).content_size.width
        return width if width > 0 else fallback

    def _empty_text(self) -> str:
        if self.run is None:
            return NO_RUN_TEXT
        if not self.loaded:
            return "could not read this run's events" if self._tail_stopped else "reading the run's history…"
        state = self.live_status().state
        what = CHART_VIEWS[self.chart_view][0]
        noun = "training loss" if what == "loss" else {"lr": "learning rate", "grad_norm": "grad norm",
                                                       "tokens_per_s": "tokens/s"}[what]
        if state in FINAL_STATES or state == "died":
            return f"This run logged no {noun}\nit ended ({state}) before its first logged step"
        return f"Waiting for the first {noun}\nthe run is {BEFORE_TRAINING.get(state, state)}…"

    def _header(self) -> Text:
        width = self._width("#run-header", 78)
        if self.run is None:
            return Text.assemble(("No run selected", "bold"), no_wrap=True)
        if self._tail_stopped and not self.loaded:
            return Text.assemble((self.run.name, "bold"), ("  could not read the events", "bold red"))
        if not self.loaded:
            return Text.assemble((self.run.name, "bold"), ("  reading history…", "dim"))
        st = self.live_status()
        m = self.metrics
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(self.run.name, style="bold")
        text.append("  ")
        text.append(st.state, style=STATE_STYLES.get(st.state, ""))
        if st.state == "tokenizing" and m.last_progress and m.last_progress.get("stage") != "evaluating":
            text.append(f" {100 * (m.last_progress.get('fraction') or 0):.0f}%")
        elif st.state == "evaluating" and m.eval_fraction() is not None:
            text.append(f" {100 * m.eval_fraction():.0f}%")  # type: ignore[operator]
        if self.stop_sent and st.state == "queued":
            text.append(" · cancelling: it leaves the queue", style="yellow")
        elif self.stop_sent and st.state in LIVE_STATES:
            text.append(" · stopping: saving a checkpoint and the adapter…", style="yellow")
        elif st.state == "done":
            text.append(" · next: Evaluate (F6), Export (F7)", style="green")
        elif st.state in ("stopped", "failed", "died"):
            text.append(" · resume it on Runs (F8) with r", style="dim")
        if self._tail_stopped:
            text.append(" · no longer following: reading the events failed", style="bold red")
        model = f"  {m.status.model} · {m.status.method}" if m.status.model else ""
        self._model_in_header = bool(model) and text.cell_len + len(model) <= width
        if self._model_in_header:
            text.append(model, style="dim")
        return text

    def _progress(self) -> Text:
        """The progress line — or, while queued, what the run waits for, whole — and a stall warning under it."""
        width = self._width("#run-progress", 78)
        queued = self.run is not None and self.loaded and self.live_status().state == "queued"
        lines = self._queued_lines(width) if queued else [self._progress_line(width)]
        stall = self.stalled()
        if stall is not None:
            lines += wrapped(f"⚠ {describe_stall(stall)} · k shows the thread stacks", width, "bold yellow", 2)
        text = lines[0]
        for line in lines[1:]:
            text.append("\n")
            text.append_text(line)
        return text

    def _queued_lines(self, width: int) -> list[Text]:
        reason = self.metrics.status.extra.get("queued_reason") or BEFORE_TRAINING["queued"]
        return wrapped(str(reason), width, "", 2, Text("queued: ", style="magenta"))

    def _progress_line(self, width: int) -> Text:
        m = self.metrics
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.run is None:
            text.append("Start one on Training (F4) or open one on Runs (F8).", style="dim")
            return text
        if not self.loaded:
            return text
        state = self.live_status().state
        if m.last_train is None:
            if state in LIVE_STATES or state == "new":
                text.append(BEFORE_TRAINING.get(state, state) + "…", style="dim")
            else:
                text.append(f"no training step was logged before the run ended ({state})", style="dim")
            return text
        steps = f"step {m.step}/{m.max_steps}" if m.max_steps else f"step {m.step}"
        frac = m.fraction()
        tail: list[tuple[str, str]] = []  # (text, style) after the bar, most important first
        if frac is not None:
            tail.append((f" {100 * frac:3.0f}%", ""))
        eta = m.eta()
        if state == "evaluating":
            tail.append(("  ETA paused: evaluating", "bold cyan"))
        elif state == "saving":
            tail.append(("  saving…", "cyan"))
        elif eta is not None and state in LIVE_STATES:
            tail.append(("  ETA " + human_duration(eta), "bold"))
        if m.status.epoch is not None:
            tail.append((f"  epoch {m.status.epoch:.2f}", ""))
        if m.elapsed() is not None:
            label = "trained" if state in FINAL_STATES or state == "died" else "elapsed"
            tail.append((f"  {label} {human_duration(m.elapsed())}", "dim"))
        # Drop the least important pieces until the line fits with a bar of at least 8 cells.
        while tail and len(steps) + 1 + 8 + sum(len(t) for t, _ in tail) > width:
            tail.pop()
        text.append(steps + " ", style="bold")
        if frac is not None:
            room = width - len(steps) - 1 - sum(len(t) for t, _ in tail)
            text.append_text(bar(frac, max(min(room, 40), 8), None, "cyan"))
        for piece, style in tail:
            text.append(piece, style=style)
        return text

    def _stats(self) -> Group:
        m = self.metrics
        width = self._width("#stats", 26)
        if self.run is None:
            return Group(*wrapped("Metrics appear here once a run is followed.", width, "dim"))
        rows: list[tuple[str, list[str], str]] = []
        last = m.last_train or {}
        rows.append(("loss", [compact(last.get("loss"))], "bold"))
        rows.append(("eval loss", [compact(m.last_eval.get("eval_loss")) if m.last_eval else "-"], ""))
        best_step, best = m.best_eval()
        if best is not None:
            rows.append(("best eval", [compact(best), f"(step {int(best_step or 0)})"], "green"))
        rows.append(("lr", [compact(last.get("lr"), 3)], ""))
        rows.append(("grad norm", [compact(last.get("grad_norm"), 4)], ""))
        tps = last.get("tokens_per_s")
        rows.append(("tokens/s", [f"{tps:,.0f}" if tps is not None else "-"], ""))
        if last.get("tokens_seen"):
            rows.append(("seen", [f"{compact(last.get('tokens_seen'), 3)} tokens"], ""))
        if last.get("mfu") is not None:
            rows.append(("MFU", [f"{100 * last['mfu']:.1f}%", "of the GPU's", "peak bf16"], ""))
        kwh = m.status.extra.get("energy_kwh")
        if kwh is not None:
            from sft_tui.core.system.energy import energy_line

            settings = getattr(self.app, "settings", None)
            price = getattr(settings, "energy_price", None)
            rows.append(("energy", [energy_line(kwh, price, getattr(settings, "energy_currency", "") or "")], ""))
        ckpt = m.last_checkpoint
        rows.append(("checkpoint", [f"step {ckpt.get('step')}" if ckpt else "none yet"], ""))
        if m.last_saved is not None:
            what = "model" if m.last_saved.get("method") == "full" else "adapter"
            rows.append((what, ["saved"], "green"))
        mem = m.last_memory
        if mem is not None and str(mem.get("device", "")).startswith("cuda") and self.is_live():
            rows.append(("torch mem", [human_bytes(mem.get("allocated")), f"· peak {human_bytes(mem.get('peak'))}"], ""))
        if self.unreadable:
            rows.append(("skipped", [f"{self.unreadable} unreadable line{'s' if self.unreadable != 1 else ''}"], "yellow"))
        if m.errors:
            rows.append(("error", [str(m.errors[-1].get("message", ""))], "bold red"))
        if m.status.model and not self._model_in_header:  # too long for the header: here instead
            rows.append(("model", [m.status.model, f"· {m.status.method}"], ""))
        return Group(*stat_rows(rows, width))

    def _maybe_show_error(self) -> None:
        if len(self.metrics.errors) <= self._errors_shown or not self.is_current:
            return
        self._errors_shown = len(self.metrics.errors)
        self.action_show_error()

    # ------------------------------------------------------------------ actions
    def action_show_error(self) -> None:
        if not self.metrics.errors:
            self.notify("this run has reported no error")
            return
        err = self.metrics.errors[-1]
        kind = str(err.get("kind") or "error").replace("_", " ")
        message, hint = str(err.get("message") or "the worker failed"), str(err.get("hint") or "")
        title = f"Training failed: {kind}"
        output = [str(line) for line in err.get("last_lines") or [] if isinstance(line, str)][-LAST_LINES:] \
            if isinstance(err.get("last_lines"), list) else []
        if output:  # a failed rank: what it printed last
            rank, host = err.get("rank"), err.get("host")
            who = f"rank {rank}" if type(rank) is int else "the failed process"
            if isinstance(host, str) and host:
                who += f" on {host}"
            self.app.push_screen(RankErrorScreen(message, hint, title, f"Last output of {who}:", output))
        else:
            self.app.push_screen(ErrorScreen(message, hint, title=title))

    def action_show_stack(self) -> None:
        """The thread stacks the watchdog wrote with the latest stall."""
        stall = self.last_stall
        if stall is None:
            self.notify("this run has reported no stall")
            return
        stack = stall.get("stack") if isinstance(stall.get("stack"), str) else ""
        step = stall.get("step")
        title = "Stall" + (f" at step {step:.0f}" if type(step) in (int, float) else "") + ": where each thread was"
        body = describe_stall(stall) + "\n\n" + (stack.rstrip() or "(the watchdog wrote no thread stacks)")
        self.app.push_screen(ReportScreen(title, body))

    def action_start_now(self) -> None:
        """A queued run starts now, ahead of the queue (it may not find the memory it waited for)."""
        run = self._require_alive("start")
        if run is None:
            return
        if self.live_status().state != "queued":
            self.notify(f"{run.name} is not queued ({self.live_status().state})", severity="warning")
            return
        run.send("start")
        self.notify(f"starting {run.name} now, ahead of the queue; it may run out of GPU memory if the GPU "
                    "is still busy")

    def _require_alive(self, what: str) -> RunDir | None:
        if self.run is None:
            self.notify("no run selected; open one from Runs (F8)", severity="warning")
            return None
        state = self.live_status().state
        if not self.run.is_alive() or state in FINAL_STATES or state == "died":
            # (a worker that wrote its final status may still be exiting: that run is over all the same)
            self.notify(f"cannot {what}: {self.run.name} is not running ({state})", severity="warning")
            return None
        return self.run

    def action_explain(self, what: str) -> None:
        """x / s while the footer does not offer them: say why (no run, not running), or, when the
        worker turns out to be alive after all (the history is still being read), do it."""
        if self._require_alive(what) is not None:
            (self.action_stop_run if what == "stop" else self.action_save_now)()

    def action_stop_run(self) -> None:
        run = self._require_alive("stop")
        if run is None:
            return
        if self.live_status().state == "queued":
            self._cancel_queued(run)
            return

        def answered(choice: str | None) -> None:
            if choice == "stop":
                run.send("stop")
                self.stop_sent = True
                self._render_all()
                self.notify(f"stopping {run.name}: saving a checkpoint and the adapter first")

        self.app.push_screen(
            ConfirmScreen(f"Stop {run.name}?\n\nThe worker saves a checkpoint and the adapter, then ends. "
                          "You can resume it later from the Runs screen.",
                          [("stop", "Stop and save"), ("cancel", "Keep training")]),
            answered,
        )

    def _cancel_queued(self, run: RunDir) -> None:
        def answered(choice: str | None) -> None:
            if choice == "stop":
                run.send("stop")
                self.stop_sent = True
                self._render_all()
                self.notify(f"cancelling the queued run {run.name}")

        self.app.push_screen(
            ConfirmScreen(f"Cancel the queued run {run.name}?\n\nIt is waiting for a GPU, not training, so "
                          "there is nothing new to save; it leaves the queue and ends as stopped.",
                          [("stop", "Cancel the queued run"), ("cancel", "Keep it queued")]),
            answered,
        )

    def action_save_now(self) -> None:
        run = self._require_alive("save")
        if run is not None and self.live_status().state == "queued":
            self.notify(f"nothing to save yet: {run.name} is queued and has not started", severity="warning")
        elif run is not None:
            run.send("save")
            self.notify("asked the worker to save a checkpoint after this step")

    def action_open_folder(self) -> None:
        if self.run is None:
            self.notify("no run selected", severity="warning")
            return
        path = str(self.run.path)
        try:
            self.app.copy_to_clipboard(path)
        except Exception:  # pragma: no cover - a terminal without OSC 52
            pass
        self.notify(display_path(path), title="Run folder (copied to the clipboard)", timeout=10)

    def action_cycle_chart(self) -> None:
        self.chart_view = (self.chart_view + 1) % len(CHART_VIEWS)
        self._bind_chart()
        self.query_one(LineChart).set_empty_text(self._empty_text())

    def action_toggle_log(self) -> None:
        self.query_one(LineChart).toggle_log()

    def action_cycle_smoothing(self) -> None:
        self.query_one(LineChart).cycle_smoothing()

    def commands(self):
        commands = []
        if self.is_queued():
            commands += [
                ("Monitor: start the queued run now", "Skip the queue and start now (n)", self.action_start_now),
                ("Monitor: cancel the queued run", "Leave the queue and end the run (x)", self.action_stop_run),
            ]
        elif self.is_live():
            commands += [
                ("Monitor: stop run", "Checkpoint, save the adapter and end the run (x)", self.action_stop_run),
                ("Monitor: save checkpoint now", "Ask the worker to save a checkpoint (s)", self.action_save_now),
            ]
        if self.last_stall is not None:
            commands.append(("Monitor: show the stall's thread stacks", "Where each thread was (k)",
                             self.action_show_stack))
        if self.run is not None:
            commands += [
                ("Monitor: next chart", "Loss → learning rate → grad norm → tokens/s (c)", self.action_cycle_chart),
                ("Monitor: toggle log scale", "Log-scale y axis on the chart (l)", self.action_toggle_log),
                ("Monitor: cycle smoothing", "Off → 0.6 → 0.9 → 0.97 (m)", self.action_cycle_smoothing),
                ("Monitor: show run folder", "Show and copy the run folder path (o)", self.action_open_folder),
            ]
        return commands
