"""Monitor: follow a training run live — loss chart, metrics, progress with ETA, GPU gauges, log tail.

The screen only reads the run directory (``app.session.run``) and writes commands to it, so it
works the same for a run it started, one started from the CLI, or one re-attached after an SSH
drop. Every half second a thread worker reads only the bytes appended to events.jsonl since the
last read; GPUs are sampled once a second by the screens' shared sampling worker. A tick is skipped
while the previous read is still running, so slow disks or NVML calls never queue up work. After an
unexpected failure (shown in the error dialog) that polling stops until another run is followed.
Damaged lines in events.jsonl (torn, huge, too deep, wrongly typed) are skipped by the reader and
counted; the screen says how many and keeps following.
"""

from __future__ import annotations

import copy
from typing import Any

from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.message import Message
from textual.widgets import RichLog, Static

from sft_tui.core.format import STATE_STYLES, compact, display_path, human_bytes, human_duration
from sft_tui.core.run.events import ACTIVE_STATES, EventTail
from sft_tui.core.run.index import with_liveness
from sft_tui.core.run.metrics import RunMetrics
from sft_tui.core.run.rundir import RunDir
from sft_tui.screens.base import GpusSampled, StepScreen
from sft_tui.screens.dialogs import ConfirmScreen, ErrorScreen
from sft_tui.screens.work import background
from sft_tui.widgets.chart import PALETTE, ChartSeries, LineChart
from sft_tui.widgets.gauges import GpuPanel, bar

# (key, title, series keys)
CHART_VIEWS = [("loss", "loss", ("loss", "eval_loss")), ("lr", "", ("lr",)),
               ("grad_norm", "", ("grad_norm",)), ("tokens_per_s", "", ("tokens_per_s",))]
SERIES_LABEL = {"loss": "train", "eval_loss": "eval"}


def format_log(ev: dict[str, Any]) -> Text:
    from sft_tui.core.run.events import format_event

    style = {"error": "bold red", "status": "bold", "checkpoint": "green", "eval": "yellow"}.get(ev.get("type"), "")
    if ev.get("type") == "log" and ev.get("level") in ("warning", "error"):
        style = "yellow" if ev["level"] == "warning" else "red"
    return Text(format_event(ev), style=style, no_wrap=True, overflow="ellipsis")


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
| x | stop the run (asks first); the worker saves a checkpoint and the adapter |
| s | save a checkpoint now |
| o | show the run folder's path (and copy it to the clipboard) |
| c | chart: loss → learning rate → grad norm → tokens/s |
| l | log-scale y axis on/off |
| m | smoothing: off → 0.6 → 0.9 → 0.97 (raw values stay faint underneath) |
| e | show the last error again |

The GPU panel shows each GPU's memory (our worker's share in bold), utilisation, temperature
and power about once a second; without an NVIDIA GPU it says so and shows the worker's memory.
"""

    BINDINGS = [
        Binding("x", "stop_run", "Stop", id="monitor_stop"),
        Binding("s", "save_now", "Save ckpt", id="monitor_save"),
        Binding("o", "open_folder", "Folder", id="monitor_open_folder"),
        Binding("c", "cycle_chart", "Chart", id="monitor_chart"),
        Binding("l", "toggle_log", "Log y", id="monitor_log_scale"),
        Binding("m", "cycle_smoothing", "Smooth", id="monitor_smoothing"),
        Binding("e", "show_error", "Error", show=False, id="monitor_show_error"),
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

    # ------------------------------------------------------------------ layout
    def compose_body(self) -> ComposeResult:
        yield Static("", id="run-header")
        yield Static("", id="run-progress")
        with Horizontal(id="monitor-main"):
            yield LineChart("loss", empty_text="waiting for the first loss…", id="chart")
            with VerticalScroll(id="monitor-side"):
                yield Static("", id="stats")
                yield GpuPanel(id="gpus")
        yield RichLog(id="log", max_lines=300, min_width=20, wrap=False, markup=False)

    def on_mount(self) -> None:
        self.query_one(LineChart).smoothing = LineChart.SMOOTHING_STEPS[1]
        self._follow_run(self.session.run)
        self.set_interval(self.POLL_S, self._poll_tail)
        self.set_interval(self.GPU_POLL_S, self._poll_gpus)
        self._poll_gpus()

    def on_screen_resume(self) -> None:
        self._check_run_changed()
        self._maybe_show_error()

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
        self.query_one(RichLog).clear()
        self._bind_chart()
        self._render_all()
        if run is not None:
            self._poll_tail()

    # ------------------------------------------------------------------ polling (thread workers)
    def _poll_tail(self) -> None:
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
        log = self.query_one(RichLog)
        if message.metrics is not None:
            self.metrics = message.metrics
            self.loaded = True
            self._bind_chart()
            new_logs = list(self.metrics.logs)
        else:
            self.metrics.feed(message.events)
            new_logs = [ev for ev in message.events if ev.get("type") != "memory"][-log.max_lines:]  # type: ignore[index]
        width = log.scrollable_content_region.width
        for ev in new_logs:
            log.write(format_log(ev), width=width if width > 10 else None)
        if message.events or message.metrics is not None:
            self.query_one(LineChart).touch()
        self._render_all()
        self._maybe_show_error()

    def _poll_gpus(self) -> None:
        if self._gpu_busy or self._gpu_stopped or (self.is_mounted and not self.is_current and self.polls):
            return  # nobody is looking at the gauges: no NVML calls
        self._gpu_busy = True
        self.sample_gpus(self.run)

    def gpus_sampled(self, message: GpusSampled) -> None:
        self._gpu_busy = False
        self.query_one(GpuPanel).update_snapshot(message.snapshot, message.pids, message.rss, bool(message.pids))

    # ------------------------------------------------------------------ drawing
    def _bind_chart(self) -> None:
        key, title, series_keys = CHART_VIEWS[self.chart_view]
        series = []
        for i, skey in enumerate(series_keys):
            s = self.metrics.series(skey)
            series.append(ChartSeries(SERIES_LABEL.get(skey, s.name), s.xs, s.ys, PALETTE[i], smooth=skey != "eval_loss"))
        self.query_one(LineChart).set_series(series, title=title)

    def live_status(self):
        st = copy.copy(self.metrics.status)
        if self.run is not None and self.loaded:
            st = with_liveness(st, self.run.pid())
        return st

    def _render_all(self) -> None:
        self.query_one("#run-header", Static).update(self._header())
        self.query_one("#run-progress", Static).update(self._progress())
        self.query_one("#stats", Static).update(self._stats())

    def _header(self) -> Text:
        if self.run is None:
            return Text.assemble(("No run selected. ", "bold"),
                                 "Start one from Training (F4) or open one from Runs (F8).")
        if self._tail_stopped and not self.loaded:
            return Text.assemble((self.run.name, "bold"), ("  could not read the events", "bold red"))
        if not self.loaded:
            return Text.assemble((self.run.name, "bold"), ("  reading history…", "dim"))
        st = self.live_status()
        text = Text(no_wrap=True, overflow="ellipsis")
        text.append(self.run.name, style="bold")
        text.append("  ")
        text.append(st.state, style=STATE_STYLES.get(st.state, ""))
        if self.stop_sent and st.state in ACTIVE_STATES:
            text.append(" · stopping: saving a checkpoint and the adapter…", style="yellow")
        if self._tail_stopped:
            text.append(" · no longer following: reading the events failed", style="bold red")
        if st.state == "tokenizing" and self.metrics.last_progress:
            text.append(f" {100 * self.metrics.last_progress.get('fraction', 0):.0f}%")
        m = self.metrics
        if m.status.model:
            text.append(f"  {m.status.model} · {m.status.method}", style="dim")
        return text

    def _progress(self) -> Text:
        m = self.metrics
        text = Text(no_wrap=True, overflow="ellipsis")
        if self.run is None or m.last_train is None:
            text.append("step -", style="dim")
            return text
        width = max(self.size.width, 40)
        steps = f"step {m.step}/{m.max_steps}" if m.max_steps else f"step {m.step}"
        text.append(steps + " ", style="bold")
        frac = m.fraction()
        if frac is not None:
            text.append_text(bar(frac, max(min(width // 4, 40), 8), None, "cyan"))
            text.append(f" {100 * frac:3.0f}%")
        if m.status.epoch is not None:
            text.append(f"  epoch {m.status.epoch:.2f}")
        eta = m.eta()
        if eta is not None and self.live_status().state in ACTIVE_STATES:
            text.append("  ETA ", style="dim")
            text.append(human_duration(eta), style="bold")
        if m.elapsed() is not None:
            text.append("  elapsed ", style="dim")
            text.append(human_duration(m.elapsed()))
        return text

    def _stats(self) -> Group:
        m = self.metrics
        rows: list[Text] = []

        def row(label: str, value: str, style: str = "") -> None:
            rows.append(Text.assemble((f"{label:<11}", "dim"), (value, style), no_wrap=True, overflow="ellipsis"))

        last = m.last_train or {}
        row("loss", compact(last.get("loss")), "bold")
        row("eval loss", compact(m.last_eval.get("eval_loss")) if m.last_eval else "-")
        best_step, best = m.best_eval()
        if best is not None:
            row("best eval", f"{compact(best)} (step {int(best_step or 0)})", "green")
        row("lr", compact(last.get("lr"), 3))
        row("grad norm", compact(last.get("grad_norm"), 4))
        tps = last.get("tokens_per_s")
        row("tokens/s", (f"{tps:,.0f}" if tps is not None else "-") +
            (f" · {compact(last.get('tokens_seen'), 3)} seen" if last.get("tokens_seen") else ""))
        if last.get("mfu") is not None:
            row("MFU", f"{100 * last['mfu']:.1f}% of the GPU's peak bf16")
        ckpt = m.last_checkpoint
        row("checkpoint", f"step {ckpt.get('step')}" if ckpt else "none yet")
        mem = m.last_memory
        if mem is not None and str(mem.get("device", "")).startswith("cuda"):
            row("torch mem", f"{human_bytes(mem.get('allocated'))} · peak {human_bytes(mem.get('peak'))}")
        if self.unreadable:
            row("skipped", f"{self.unreadable} unreadable line{'s' if self.unreadable != 1 else ''}", "yellow")
        if m.errors:
            row("error", str(m.errors[-1].get("message", "")), "bold red")
        return Group(*rows)

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
        self.app.push_screen(ErrorScreen(str(err.get("message") or "the worker failed"), str(err.get("hint") or ""),
                                         title=f"Training failed: {kind}"))

    def _require_alive(self, what: str) -> RunDir | None:
        if self.run is None:
            self.notify("no run selected; open one from Runs (F8)", severity="warning")
            return None
        if not self.run.is_alive():
            self.notify(f"cannot {what}: {self.run.name} is not running ({self.live_status().state})",
                        severity="warning")
            return None
        return self.run

    def action_stop_run(self) -> None:
        run = self._require_alive("stop")
        if run is None:
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

    def action_save_now(self) -> None:
        run = self._require_alive("save")
        if run is not None:
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

    def action_toggle_log(self) -> None:
        self.query_one(LineChart).toggle_log()

    def action_cycle_smoothing(self) -> None:
        self.query_one(LineChart).cycle_smoothing()

    def commands(self):
        return [
            ("Monitor: stop run", "Checkpoint, save the adapter and end the run", self.action_stop_run),
            ("Monitor: save checkpoint now", "Ask the worker to save a checkpoint", self.action_save_now),
            ("Monitor: show run folder", "Show and copy the run folder path", self.action_open_folder),
            ("Monitor: toggle log scale", "Log-scale y axis on the chart", self.action_toggle_log),
        ]
