"""Pilot tests of the monitor against run directories fed by a fake writer while the app runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from sft_tui.app import SftApp
from sft_tui.testing import synthetic
from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings
from sft_tui.screens.dialogs import ConfirmScreen, ErrorScreen
from sft_tui.screens.monitor import MonitorScreen
from sft_tui.widgets.chart import LineChart
from sft_tui.widgets.gauges import GpuPanel
from pilot_support import wait_for


class FakeSampler:
    def __init__(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot
        self.calls = 0

    def sample(self) -> GpuSnapshot:
        self.calls += 1
        return self.snapshot


def gpu_snapshot(pid: int) -> GpuSnapshot:
    gib = 2**30
    gpu = GpuStats(index=0, name="NVIDIA H100 80GB HBM3", mem_used=30 * gib, mem_total=80 * gib, util_percent=87.0,
                   temperature_c=64.0, power_w=402.0, processes=[(pid, 24 * gib), (1, 6 * gib)], power_limit_w=700.0)
    return GpuSnapshot(True, "", [gpu], "550.54")


NO_GPU = GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)")


def make_app(run, tmp_path, sampler=None) -> SftApp:
    session = Session(run=run, runs_dir=tmp_path)
    return SftApp(session=session, start="monitor", settings=Settings(), gpu_sampler=sampler or FakeSampler(NO_GPU))



@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_S", 0.1)
    monkeypatch.setattr(MonitorScreen, "GPU_POLL_S", 0.2)


def monitor(app) -> MonitorScreen:
    screen = app.screen
    assert isinstance(screen, MonitorScreen), screen
    return screen


async def test_live_events_update_chart_stats_and_log(tmp_path):
    run = synthetic.write_run(tmp_path, "live", steps=3, max_steps=100, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        chart = screen.query_one(LineChart)
        assert await wait_for(pilot, lambda: screen.loaded and chart.total_points == 3)
        header = str(screen.query_one("#run-header").render())
        assert "live" in header and "training" in header
        # the fake writer appends while the app runs
        for step in range(4, 11):
            synthetic.append(run, synthetic.train_event(step, 100, synthetic.T0 + 10 + step))
        synthetic.append(run, {"time": synthetic.T0 + 30, "type": "eval", "step": 10, "eval_loss": 1.25},
                         {"time": synthetic.T0 + 31, "type": "checkpoint", "step": 10, "path": "x/checkpoint-10"},
                         {"time": synthetic.T0 + 32, "type": "log", "level": "warning", "msg": "fake warning"})
        assert await wait_for(pilot, lambda: len(screen.metrics.train_loss) == 10 and screen.metrics.last_checkpoint)
        await pilot.pause(0.1)
        assert chart.total_points == 11  # 10 train + 1 eval point
        progress = str(screen.query_one("#run-progress").render())
        assert "step 10/100" in progress and "10%" in progress and "ETA" in progress
        stats = screen._stats()
        plain = "\n".join(t.plain for t in stats.renderables)
        assert "1.25" in plain and "step 10" in plain
        log_text = "\n".join(line.text for line in screen.query_one("#log").lines)
        assert "fake warning" in log_text and "step 10/100" in log_text
        # chart keys
        await pilot.press("l")
        assert chart.log_y
        before = chart.smoothing
        await pilot.press("m")
        assert chart.smoothing != before
        await pilot.press("c")
        assert chart.title == "" and chart.series[0].name == "learning rate"
        await pilot.press("c", "c", "c")
        assert chart.series[0].name == "train"
        # the reads were incremental: the tail's offset is the file size, never re-read from 0
        assert screen.tail.offset == run.events_path.stat().st_size


async def test_torn_last_line_is_ignored_until_complete(tmp_path):
    run = synthetic.write_run(tmp_path, "torn", steps=2, max_steps=50, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: len(screen.metrics.train_loss) == 2)
        line = json.dumps(synthetic.train_event(3, 50, synthetic.T0 + 50))
        with open(run.events_path, "a") as fh:
            fh.write(line[:25])  # the worker is mid-write
        polls = screen.polls
        assert await wait_for(pilot, lambda: screen.polls >= polls + 3)
        assert len(screen.metrics.train_loss) == 2 and not app.screen_stack[-1].__class__ is ErrorScreen
        with open(run.events_path, "a") as fh:
            fh.write(line[25:] + "\n")
        assert await wait_for(pilot, lambda: len(screen.metrics.train_loss) == 3)
        assert screen.metrics.train_loss.xs[-1] == 3.0


async def test_error_event_opens_panel_with_message_and_hint(tmp_path):
    run = synthetic.write_run(tmp_path, "boom", steps=5, max_steps=50, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded)
        synthetic.append(run, {"time": synthetic.T0 + 99, "type": "error", "kind": "out_of_memory",
                               "message": "CUDA ran out of memory at step 6",
                               "hint": "lower training.batch_size or enable gradient checkpointing"},
                         {"time": synthetic.T0 + 99, "type": "status", "state": "failed"})
        # pushed, then composed: wait for its message, not only for the screen (a busy machine saw the gap)
        assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen) and app.screen.query("#error-message"))
        dialog = app.screen
        assert "CUDA ran out of memory at step 6" in str(dialog.query_one("#error-message").render())
        assert "gradient checkpointing" in str(dialog.query_one("#error-hint").render())
        assert "out of memory" in dialog.title_text
        assert not any("Traceback" in str(w.render()) for w in dialog.query("Static"))
        await pilot.press("escape")
        assert isinstance(app.screen, MonitorScreen)
        await pilot.pause(0.3)
        assert isinstance(app.screen, MonitorScreen)  # shown once, not on every poll
        assert "failed" in str(screen.query_one("#run-header").render())
        await pilot.press("e")  # shows it again on demand
        assert isinstance(app.screen, ErrorScreen)


async def test_attaching_a_failed_run_shows_its_error(tmp_path):
    run = synthetic.write_run(tmp_path, "failed", steps=3, final=None)
    synthetic.append(run, {"time": synthetic.T0 + 9, "type": "error", "kind": "config", "message": "bad data",
                           "hint": "fix data.path"}, {"time": synthetic.T0 + 9, "type": "status", "state": "failed"})
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        hint = str(app.screen.query_one("#error-hint").render())
        assert "fix" in hint and "data" in hint  # the hint, in the dialog's words for this screen


async def test_gauges_with_fake_gpu_show_our_share(tmp_path):
    run = synthetic.write_run(tmp_path, "gpu", steps=3, max_steps=50, final=None, pid=os.getpid())
    sampler = FakeSampler(gpu_snapshot(os.getpid()))
    app = make_app(run, tmp_path, sampler)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = monitor(app)
        panel = screen.query_one(GpuPanel)
        assert await wait_for(pilot, lambda: panel.snapshot is not None and sampler.calls >= 2)
        calls = sampler.calls
        assert await wait_for(pilot, lambda: sampler.calls >= calls + 2)  # refreshed periodically
        await pilot.pause(0.1)
        text = "\n".join(line.plain for line in _panel_lines(panel))
        assert "H100 80GB" in text and "30.0/80G" in text and "ours 24.0G" in text
        assert "87%" in text and "64°C" in text and "402W/700W" in text


async def test_no_gpu_shows_reason_and_worker_rss(tmp_path):
    run = synthetic.write_run(tmp_path, "cpu", steps=3, max_steps=50, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        panel = monitor(app).query_one(GpuPanel)
        assert await wait_for(pilot, lambda: panel.worker_rss is not None)
        text = "\n".join(line.plain for line in _panel_lines(panel))
        assert "no NVIDIA GPU found" in text and "worker RSS" in text and ("MiB" in text or "GiB" in text)


def _panel_lines(panel):
    from sft_tui.widgets.gauges import gpu_lines

    return gpu_lines(panel.snapshot, panel.our_pids, 40, panel.worker_rss, panel.worker_alive)


async def test_stop_asks_then_writes_control_and_save_now(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = synthetic.write_run(tmp_path, "ctl", steps=3, max_steps=50, final=None, pid=sleeper.pid)
        app = make_app(run, tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = monitor(app)
            assert await wait_for(pilot, lambda: screen.loaded)
            await pilot.press("s")
            assert run.read_control()["command"] == "save"
            await pilot.press("x")
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("escape")  # cancel: nothing sent
            assert run.read_control()["command"] == "save"
            await pilot.press("x")
            await pilot.click("#stop")
            await pilot.pause()
            assert run.read_control()["command"] == "stop" and run.read_control()["seq"] == 2
            assert "stopping" in str(screen.query_one("#run-header").render())
            await pilot.press("o")
            await pilot.pause()
            assert any(str(run.path) in str(n.message) for n in app._notifications)
    finally:
        sleeper.kill()
        sleeper.wait()


async def test_stop_on_a_finished_run_only_explains(tmp_path):
    run = synthetic.write_run(tmp_path, "old", steps=3)
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: monitor(app).loaded)
        await pilot.press("x")
        assert isinstance(app.screen, MonitorScreen) and not run.control_path.exists()


async def test_no_run_and_switching_runs(tmp_path):
    app = make_app(None, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        await pilot.pause()
        assert "No run selected" in str(screen.query_one("#run-header").render())
        run = synthetic.write_run(tmp_path, "later", steps=7)
        app.session.run = run  # as the Training and Runs screens do before going to the monitor
        assert await wait_for(pilot, lambda: screen.loaded and len(screen.metrics.train_loss) == 7)
        other = synthetic.write_run(tmp_path, "other", steps=4)
        app.session.run = other
        assert await wait_for(pilot, lambda: screen.run is not None and screen.run.name == "other"
                              and len(screen.metrics.train_loss) == 4)


async def test_100k_event_log_opens_fast_and_stays_responsive(tmp_path):
    run = synthetic.write_run(tmp_path, "big", steps=50_000, max_steps=60_000, final=None, pid=os.getpid(),
                              eval_every=500, save_every=1000)
    lines = sum(1 for _ in open(run.events_path, "rb"))
    assert lines >= 100_000
    app = make_app(run, tmp_path)
    start, cpu_start = time.perf_counter(), time.process_time()
    async with app.run_test(size=(120, 40)) as pilot:
        screen = monitor(app)
        chart = screen.query_one(LineChart)
        assert await wait_for(pilot, lambda: screen.loaded and chart.total_points >= 50_000, timeout=10)
        await pilot.pause()
        opened, opened_cpu = time.perf_counter() - start, time.process_time() - cpu_start
        assert 0 < chart.last_points["train"] <= 2 * chart.content_size.width
        assert "step 50000/60000" in str(screen.query_one("#run-progress").render())
        # new lines after that are read incrementally and cheaply
        synthetic.append(run, synthetic.train_event(50_001, 60_000, synthetic.T0 + 1e5))
        t = time.perf_counter()
        assert await wait_for(pilot, lambda: screen.metrics.step == 50_001)
        refresh = time.perf_counter() - t
        # keys are answered promptly while such a log is loaded
        t = time.perf_counter()
        await pilot.press("l")
        await pilot.pause()
        key_latency = time.perf_counter() - t
        assert chart.log_y
    print(f"100k-line events.jsonl: opened in {opened:.2f}s ({opened_cpu:.2f}s CPU), refresh {refresh:.3f}s, "
          f"key {key_latency:.3f}s")
    # Under 2 s; on a machine shared with other jobs the wall clock also counts their CPU, so the
    # bound holds for this process's own CPU time and the wall clock gets room for contention.
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    assert opened_cpu < 2.0, f"took {opened_cpu:.2f}s of CPU to open {lines} events"
    assert opened < (2.0 if load < 1.0 else 5.0), f"took {opened:.2f}s to open {lines} events (load {load:.1f}/core)"
    assert key_latency < (0.5 if load < 1.0 else 1.5)


async def test_hostile_lines_are_skipped_counted_and_following_goes_on(tmp_path):
    """A 5000-digit integer, 100000-deep nesting, a string where a number belongs, non-JSON: each is one
    counted unreadable line; the notice says how many, the app keeps running, later events arrive."""
    run = synthetic.write_run(tmp_path, "hostile", steps=3, max_steps=100, final=None, pid=os.getpid())
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded and len(screen.metrics.train_loss) == 3)
        assert screen.unreadable == 0
        with open(run.events_path, "a") as fh:
            fh.write('{"time": 1, "type": "train", "step": ' + "9" * 5000 + ', "loss": 1.0}\n')
            fh.write("[" * 100000 + "\n")
            fh.write(json.dumps({"time": synthetic.T0 + 20, "type": "train", "step": "four", "loss": 1.0}) + "\n")
            fh.write("this is not json at all\n")
        synthetic.append(run, synthetic.train_event(4, 100, synthetic.T0 + 21))
        assert await wait_for(pilot, lambda: len(screen.metrics.train_loss) == 4)
        assert await wait_for(pilot, lambda: screen.unreadable == 4)
        assert any("4 unreadable lines were skipped" in n.message for n in app._notifications)
        stats = "\n".join(t.plain for t in screen._stats().renderables)
        assert "4 unreadable lines" in stats
        assert app.is_running and not isinstance(app.screen, ErrorScreen)
        synthetic.append(run, synthetic.train_event(5, 100, synthetic.T0 + 22))
        assert await wait_for(pilot, lambda: len(screen.metrics.train_loss) == 5)
        assert screen.metrics.train_loss.xs[-1] == 5.0 and screen.unreadable == 4
