"""States that tell the truth, driven by keys and by synthetic event files.

The monitor says ``evaluating`` (ETA paused) while the worker evaluates and ``training`` again after;
a finished run offers no Stop/Save and shows no worker memory; with no run it says how to get one;
F1 opens help on dialogs too (the "Export as…" dialog did nothing); quitting takes well under a
second even while a background task hangs; nothing the monitor shows is cut at 80×24.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from sft_tui.app import SftApp
from sft_tui.core.config import Config
from sft_tui.core.run.metrics import RunMetrics
from sft_tui.core.run.rundir import RunDir, RunStatus, fold_event, with_liveness
from sft_tui.core.settings import Settings
from sft_tui.core.setup.session import Session
from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.screens.dialogs import ConfirmScreen, HelpScreen
from sft_tui.screens.monitor import MonitorScreen
from sft_tui.testing import synthetic
from sft_tui.widgets.chart import LineChart
from sft_tui.widgets.eventlog import EventLog
from sft_tui.widgets.gauges import GpuPanel
from pilot_support import wait_for

T0 = synthetic.T0
GIB = 2**30


class FakeSampler:
    def __init__(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot

    def sample(self) -> GpuSnapshot:
        return self.snapshot


NO_GPU = FakeSampler(GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)"))


def one_gpu(pid: int) -> FakeSampler:
    gpu = GpuStats(index=0, name="NVIDIA H100 80GB HBM3", mem_used=30 * GIB, mem_total=80 * GIB, util_percent=87.0,
                   temperature_c=64.0, power_w=402.0, processes=[(pid, 24 * GIB)], power_limit_w=700.0)
    return FakeSampler(GpuSnapshot(True, "", [gpu], "550.54"))


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_S", 0.1)
    monkeypatch.setattr(MonitorScreen, "GPU_POLL_S", 0.2)


def make_app(run, tmp_path, sampler=NO_GPU, start: str = "monitor") -> SftApp:
    return SftApp(session=Session(run=run, runs_dir=tmp_path), start=start, settings=Settings(), gpu_sampler=sampler)


def monitor(app) -> MonitorScreen:
    assert isinstance(app.screen, MonitorScreen), app.screen
    return app.screen


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


def footer_keys(app) -> dict[str, str]:
    """The keys the footer shows now: key → description."""
    from textual.widgets._footer import FooterKey

    return {k.key: k.description for k in app.screen.query(FooterKey) if "-command-palette" not in k.classes}


def panel_text(screen, width: int = 40) -> str:
    from sft_tui.widgets.gauges import gpu_lines

    panel = screen.query_one(GpuPanel)
    lines = (panel.lines(width) if hasattr(panel, "lines")
             else gpu_lines(panel.snapshot, panel.our_pids, width, panel.worker_rss, panel.worker_alive))
    return "\n".join(line.plain for line in lines)


def stats_text(screen) -> str:
    return "\n".join(t.plain for t in screen._stats().renderables)


# ---------------------------------------------------------------------- evaluating


async def test_evaluation_says_evaluating_pauses_the_eta_then_training_again(tmp_path):
    run = synthetic.write_run(tmp_path, "evals", steps=40, max_steps=100, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded and screen.metrics.step == 40)
        assert "training" in text_of(screen, "#run-header")
        assert re.search(r"ETA \d+:\d\d", text_of(screen, "#run-progress"))
        # What the worker writes when the trainer starts evaluating (see the report: the callback must emit it)
        synthetic.append(run, {"time": T0 + 30, "type": "status", "state": "evaluating", "step": 40})
        assert await wait_for(pilot, lambda: "evaluating" in text_of(screen, "#run-header"))
        progress = text_of(screen, "#run-progress")
        assert "ETA paused" in progress and not re.search(r"ETA \d", progress), progress
        assert "step 40/100" in progress  # the step and the bar stay
        # how far the evaluation is, when the worker reports it
        synthetic.append(run, {"time": T0 + 31, "type": "progress", "stage": "evaluating", "fraction": 0.4})
        assert await wait_for(pilot, lambda: "evaluating 40%" in text_of(screen, "#run-header"))
        # its results end the evaluation: training again, with a running ETA
        synthetic.append(run, {"time": T0 + 72, "type": "eval", "step": 40, "eval_loss": 1.2})
        assert await wait_for(pilot, lambda: "training" in text_of(screen, "#run-header"))
        assert re.search(r"ETA \d+:\d\d", text_of(screen, "#run-progress"))
        assert "evaluating" not in text_of(screen, "#run-header")
        # an evaluation that ends with the next training step (no eval line) ends the same way
        synthetic.append(run, {"time": T0 + 80, "type": "status", "state": "evaluating", "step": 40},
                         synthetic.train_event(41, 100, T0 + 90))
        assert await wait_for(pilot, lambda: screen.metrics.step == 41)
        assert "training" in text_of(screen, "#run-header")


def test_evaluating_folds_like_training_everywhere():
    """The runs list and the CLI fold the same rule; a worker gone mid-evaluation is 'died'."""
    st = RunStatus(name="r", state="new")
    for ev in ({"type": "status", "state": "training"}, {"type": "status", "state": "evaluating"}):
        fold_event(st, ev)
    assert st.state == "evaluating"
    fold_event(st, {"type": "eval", "step": 10, "eval_loss": 1.0})
    assert st.state == "training" and st.best_eval_loss == 1.0
    fold_event(st, {"type": "status", "state": "evaluating"})
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert with_liveness(st, dead.pid).state == "died"
    m = RunMetrics()
    m.feed([{"time": 1, "type": "status", "state": "evaluating"}])
    assert m.evaluating and m.eval_started == 1
    m.feed([synthetic.train_event(2, 10, 5.0)])
    assert not m.evaluating and m.status.state == "training" and m.eval_started is None


# ---------------------------------------------------------------------- finished runs


async def test_a_finished_run_offers_no_stop_or_save_and_shows_no_worker_memory(tmp_path):
    # The worker wrote "done" and is still exiting (its pid lives): nothing about it is offered or measured.
    run = synthetic.write_run(tmp_path, "finished", steps=20, eval_every=10, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = monitor(app)
        panel = screen.query_one(GpuPanel)
        assert await wait_for(pilot, lambda: screen.loaded and panel.snapshot is not None)
        await pilot.pause(0.3)
        keys = footer_keys(app)
        assert "Stop" not in keys.values() and "Save" not in keys.values() and "Save ckpt" not in keys.values()
        assert keys.get("c") == "Chart" and keys.get("f1") == "Help"
        text = panel_text(screen)
        assert "worker RSS" not in text and "run done: no worker" in text
        header = text_of(screen, "#run-header")
        assert "done" in header and "Evaluate (F6)" in header
        assert "ETA" not in text_of(screen, "#run-progress") and "trained 0:10" in text_of(screen, "#run-progress")
        assert "adapter" in stats_text(screen) and "saved" in stats_text(screen)
        await pilot.press("x")  # not offered; pressed anyway it only says why
        await pilot.pause()
        assert not isinstance(app.screen, ConfirmScreen) and not run.control_path.exists()
        assert any("not running" in str(n.message) for n in app._notifications)


async def test_finished_run_on_a_gpu_claims_no_memory_as_ours(tmp_path):
    run = synthetic.write_run(tmp_path, "finished-gpu", steps=5, pid=os.getpid())
    app = make_app(run, tmp_path, one_gpu(os.getpid()))
    async with app.run_test(size=(120, 40)) as pilot:
        screen = monitor(app)
        panel = screen.query_one(GpuPanel)
        assert await wait_for(pilot, lambda: screen.loaded and panel.snapshot is not None)
        await pilot.pause(0.3)
        text = panel_text(screen)
        assert "H100" in text and "ours" not in text and "run done: no worker" in text


async def test_stop_and_save_leave_the_footer_when_the_run_ends(tmp_path):
    run = synthetic.write_run(tmp_path, "ending", steps=10, max_steps=12, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded and footer_keys(app).get("x") == "Stop")
        assert footer_keys(app).get("s") == "Save"
        synthetic.append(run, synthetic.train_event(12, 12, T0 + 20),
                         {"time": T0 + 21, "type": "status", "state": "saving"},
                         {"time": T0 + 22, "type": "saved", "path": "x/adapter", "method": "lora"},
                         {"time": T0 + 22, "type": "status", "state": "done"})
        assert await wait_for(pilot, lambda: "x" not in footer_keys(app) and "s" not in footer_keys(app))
        assert "done" in text_of(screen, "#run-header")


# ---------------------------------------------------------------------- empty and early states


async def test_no_run_says_how_to_get_one_not_waiting_for_a_loss(tmp_path):
    app = make_app(None, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = monitor(app)
        await pilot.pause(0.3)
        chart = screen.query_one(LineChart)
        assert "waiting" not in chart.empty_text.lower()
        assert "No run selected" in chart.empty_text and "Training (F4)" in chart.empty_text
        assert "Runs (F8)" in chart.empty_text and "sft-tui attach RUN" in chart.empty_text
        drawn = chart.render().plain
        assert "No run selected" in drawn and "sft-tui attach RUN" in drawn  # wrapped to fit, not cut
        assert "No run selected" in text_of(screen, "#run-header")
        assert "Training (F4)" in text_of(screen, "#run-progress")
        assert not screen.query_one(EventLog).display  # no empty log box to puzzle over
        assert "loss" not in stats_text(screen)  # no column of dashes
        keys = footer_keys(app)
        assert not {"x", "s", "c"} & set(keys)
        await pilot.press("x")
        await pilot.pause()
        assert any("no run selected" in str(n.message) for n in app._notifications)


async def test_a_run_before_its_first_step_says_what_it_is_doing(tmp_path):
    run = RunDir(tmp_path / "early")
    run.path.mkdir()
    synthetic.write_run(tmp_path, "early", steps=0, final=None, pid=os.getpid())
    run.events_path.write_text("")
    synthetic.append(run, {"time": T0, "type": "status", "state": "starting"},
                     {"time": T0 + 1, "type": "status", "state": "loading", "device": "cpu"})
    app = make_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.pause(0.2)
        chart = screen.query_one(LineChart)
        assert "first training loss" in chart.empty_text and "loading the model" in chart.empty_text
        assert "loading the model" in text_of(screen, "#run-progress")
        synthetic.append(run, {"time": T0 + 2, "type": "status", "state": "tokenizing"},
                         {"time": T0 + 3, "type": "progress", "stage": "tokenizing", "fraction": 0.5})
        assert await wait_for(pilot, lambda: "tokenizing 50%" in text_of(screen, "#run-header"))
        assert "tokenizing the data" in chart.empty_text


# ---------------------------------------------------------------------- help everywhere


async def test_f1_on_the_export_as_dialog_opens_its_help(tmp_path):
    from sft_tui.widgets.peerexport import PeerExportScreen

    app = make_app(None, tmp_path, start="runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.2)
        app.push_screen(PeerExportScreen(Config(), folder=tmp_path))
        await pilot.pause(0.3)
        assert isinstance(app.screen, PeerExportScreen)
        await pilot.press("f1")
        assert await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=3)
        assert "Export as" in app.screen._title and "LLaMA-Factory" in app.screen._body
        await pilot.press("f1")  # F1 again closes the help, back on the dialog
        assert await wait_for(pilot, lambda: isinstance(app.screen, PeerExportScreen), timeout=3)


async def test_first_f1_on_the_export_step_opens_its_help(tmp_path):
    """F1 pressed the moment Export opens (F7 and F1 in one burst, as a fast typist does)."""
    from textual import events

    run = synthetic.write_run(tmp_path, "trained", steps=5)
    run.adapter_dir.mkdir()
    (run.adapter_dir / "adapter_config.json").write_text("{}")
    app = make_app(run, tmp_path, start="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        app.post_message(events.Key("f7", None))
        app.post_message(events.Key("f1", None))
        assert await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=5)
        assert app.current_mode == "export" and app.screen._title == "Export"
        await pilot.press("escape")
        await pilot.pause(0.2)
        await pilot.press("f1")  # and every F1 after it
        assert await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen), timeout=3)


# ---------------------------------------------------------------------- quitting

CHILD = textwrap.dedent('''
    import os, sys, threading, time
    from sft_tui.app import SftApp, run_until_quit
    from sft_tui.core.settings import Settings
    from sft_tui.core.setup.session import Session
    from sft_tui.core.system.gpus import GpuSnapshot
    from sft_tui.testing import synthetic

    class HungSampler:  # NVML stuck on a busy driver: one sample takes many seconds
        def __init__(self):
            self.started = threading.Event()

        def sample(self):
            self.started.set()
            time.sleep(8)
            return GpuSnapshot(False, "no NVIDIA GPU found")

    root = sys.argv[1]
    run = synthetic.write_run(root, "live", steps=300, max_steps=600, final=None, pid=os.getpid(), eval_every=20)
    sampler = HungSampler()
    app = SftApp(session=Session(run=run, runs_dir=root), start="monitor", settings=Settings(), gpu_sampler=sampler)

    async def auto(pilot):
        screen = pilot.app.screen
        while not (screen.loaded and sampler.started.is_set()):
            await pilot.pause(0.05)
        await pilot.pause(0.3)
        os.write(1, f"QUIT {time.time()}\\n".encode())
        await pilot.press("ctrl+q")  # a live run: the dialog says it keeps training; Enter quits
        await pilot.pause(0.1)
        await pilot.press("enter")

    sys.exit(run_until_quit(app, headless=True, auto_pilot=auto))
''')


def test_quit_with_a_monitor_attached_takes_well_under_a_second(tmp_path):
    """From Ctrl+Q to the process gone, while a GPU sample hangs in a background thread: the app stops
    its timers and workers first and does not wait for the hung thread (it used to, ~8 s here)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env)
    try:
        line = proc.stdout.readline().decode()
        assert line.startswith("QUIT "), (line, proc.stderr.read().decode()[-2000:])
        pressed = float(line.split()[1])
        proc.wait(timeout=60)
        gone = time.time()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    quit_s = gone - pressed
    print(f"quit took {quit_s:.2f}s (Ctrl+Q, confirm, exit)")
    assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
    assert quit_s < 2.0, f"quitting took {quit_s:.2f}s"


async def test_quitting_stops_the_monitors_polling_first(tmp_path):
    run = synthetic.write_run(tmp_path, "polled", steps=5, max_steps=50, final=None)
    app = make_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded)
        timers = list(screen._poll_timers)
        started = time.perf_counter()
        await pilot.press("ctrl+q")
        assert await wait_for(pilot, lambda: not app.is_running, timeout=3)
        assert time.perf_counter() - started < 2.0
        assert screen._quitting and all(t._task is None for t in timers)


# ---------------------------------------------------------------------- nothing cut at 80×24


async def test_nothing_the_monitor_shows_is_cut_at_80x24(tmp_path):
    """The texts an 80-column monitor used to cut: 'tokens/s 106 · 1.54k se…', 'best eval 0.5862
    (step 6…', log lines ending in '…', the footer's 'l Log y' half hidden by the palette key."""
    run = synthetic.write_run(tmp_path, "a-rather-long-run-name-for-80-columns", steps=0, final=None,
                              pid=os.getpid())
    events = []
    for step in range(1, 61):
        ev = synthetic.train_event(step, 200, T0 + 3 + step)
        ev["tokens_per_s"], ev["tokens_seen"] = 106.0, 1540 + step * 0  # "106 · 1.54k seen"
        events.append(ev)
    events += [{"time": T0 + 70, "type": "eval", "step": 60, "epoch": 0.9, "eval_loss": 0.5862},
               {"time": T0 + 71, "type": "checkpoint", "step": 60,
                "path": "/home/someone/.local/share/sft-tui/runs/a-rather-long-run-name-for-80-columns/"
                        "checkpoints/checkpoint-60"},
               {"time": T0 + 72, "type": "log", "level": "warning",
                "msg": "gradient checkpointing is on: steps are about 30% slower, memory is about half"}]
    synthetic.append(run, *events)
    app = make_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded and screen.metrics.step == 60)
        await pilot.pause(0.5)
        stats = screen.query_one("#stats")
        width = stats.content_size.width
        lines = [t.plain for t in screen._stats().renderables]
        assert all(len(line) <= width for line in lines), lines
        joined = " ".join(" ".join(line.split()) for line in lines)
        assert "tokens/s 106" in joined and "1.54k tokens" in joined
        assert "best eval 0.5862" in joined and "(step 60)" in joined
        assert "…" not in joined
        # the log: every event whole, wrapped under its timestamp
        log = screen.query_one(EventLog)
        shown = log.plain_lines()
        log_width = log.scrollable_content_region.width
        assert all(len(line.rstrip()) <= log_width for line in shown)
        flat = " ".join(line.strip() for line in shown)
        assert "checkpoints/checkpoint-60" in flat.replace(" ", "") or "checkpoint-60" in flat
        assert "memory is about half" in flat and "…" not in flat
        # the header and the progress line fit
        for selector in ("#run-header", "#run-progress"):
            widget = screen.query_one(selector)
            assert len(str(widget.render())) <= widget.content_size.width, selector
        # the footer: every key it shows is wholly left of the palette key
        from textual.widgets._footer import FooterKey

        keys = list(app.screen.query(FooterKey))
        palette = [k for k in keys if "-command-palette" in k.classes]
        limit = palette[0].region.x if palette else 80
        for key in keys:
            if key not in palette:
                assert key.region.right <= limit, (key.description, key.region, limit)
