"""SVG snapshots of the monitor and runs screens (80×24 and 120×40, dark theme).

Deterministic by construction: synthetic runs with fixed event times (shown in UTC), checkpoint
paths without tmp folders, a fake GPU sampler (or a finished run without a worker, so no live RSS),
and the runs screen's clock pinned. Regenerate with ``pytest tests/test_snapshots_monitor.py --snapshot-update``.
"""

from __future__ import annotations

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
from sft_tui.screens.monitor import MonitorScreen
from sft_tui.screens.runs import RunsScreen
from sft_tui.widgets.gauges import GpuPanel

GIB = 2**30


class FakeSampler:
    def __init__(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot

    def sample(self) -> GpuSnapshot:
        return self.snapshot


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def app_for(session: Session, start: str, sampler) -> SftApp:
    return SftApp(session=session, start=start, settings=Settings(theme="sft-dark"), gpu_sampler=sampler)


async def settle(pilot, cond, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not cond():
        await pilot.pause(0.05)
    assert cond()
    await pilot.pause(0.2)


def training_run(tmp_path):
    # Alive (this test process is its "worker"), 120 of 200 steps, evals and checkpoints.
    return synthetic.write_run(tmp_path, "llama-lora-demo", steps=120, max_steps=200, final=None, pid=os.getpid(),
                               eval_every=20, save_every=50, run_path="runs/llama-lora-demo")


def finished_run(tmp_path):
    return synthetic.write_run(tmp_path, "demo-lora-done", steps=80, eval_every=20, save_every=40,
                               run_path="runs/demo-lora-done")


def gpu_sampler() -> FakeSampler:
    gpu = GpuStats(index=0, name="NVIDIA H100 80GB HBM3", mem_used=31 * GIB, mem_total=80 * GIB, util_percent=93.0,
                   temperature_c=66.0, power_w=512.0, processes=[(os.getpid(), 27 * GIB), (99999, 4 * GIB)],
                   power_limit_w=700.0)
    return FakeSampler(GpuSnapshot(True, "", [gpu], "550.54"))


NO_GPU = FakeSampler(GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)"))


async def monitor_ready(pilot) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, MonitorScreen)
    panel = screen.query_one(GpuPanel)
    await settle(pilot, lambda: screen.loaded and panel.snapshot is not None)


def test_monitor_finished_no_gpu_80x24(snap_compare, tmp_path):
    run = finished_run(tmp_path)
    app = app_for(Session(run=run, runs_dir=tmp_path), "monitor", NO_GPU)
    assert snap_compare(app, terminal_size=(80, 24), run_before=monitor_ready)


def test_monitor_training_gpu_120x40(snap_compare, tmp_path):
    run = training_run(tmp_path)
    app = app_for(Session(run=run, runs_dir=tmp_path), "monitor", gpu_sampler())
    assert snap_compare(app, terminal_size=(120, 40), run_before=monitor_ready)


def test_monitor_training_gpu_80x24_log_scale(snap_compare, tmp_path):
    run = training_run(tmp_path)
    app = app_for(Session(run=run, runs_dir=tmp_path), "monitor", gpu_sampler())

    async def before(pilot):
        await monitor_ready(pilot)
        await pilot.press("l")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)


def make_runs(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs = [
        finished_run(tmp_path),
        synthetic.write_run(tmp_path, "qwen-qlora-crashed", steps=35, max_steps=300, final=None, pid=dead.pid,
                            model="Qwen/Qwen2.5-0.5B", method="qlora", seed=2, run_path="runs/qwen-qlora-crashed"),
        training_run(tmp_path),
    ]
    for i, run in enumerate(runs):
        os.utime(run.config_path, (synthetic.T0 + i, synthetic.T0 + i))
    return runs


async def runs_ready(pilot) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, RunsScreen)
    screen.now = synthetic.T0 + 600  # the live run's duration runs to "now": pin it
    await settle(pilot, lambda: screen.loaded)
    screen.refresh_runs()
    await pilot.pause(0.3)


def test_runs_80x24(snap_compare, tmp_path):
    make_runs(tmp_path)
    app = app_for(Session(runs_dir=tmp_path), "runs", NO_GPU)
    assert snap_compare(app, terminal_size=(80, 24), run_before=runs_ready)


def test_runs_120x40(snap_compare, tmp_path):
    make_runs(tmp_path)
    app = app_for(Session(runs_dir=tmp_path), "runs", NO_GPU)
    assert snap_compare(app, terminal_size=(120, 40), run_before=runs_ready)


def test_runs_compare_120x40(snap_compare, tmp_path):
    make_runs(tmp_path)
    app = app_for(Session(runs_dir=tmp_path), "runs", NO_GPU)

    async def before(pilot):
        await runs_ready(pilot)
        await pilot.press("space", "down", "space", "down", "space", "c")
        compare = pilot.app.screen
        await settle(pilot, lambda: len(compare.metrics) == 3)

    assert snap_compare(app, terminal_size=(120, 40), run_before=before)
