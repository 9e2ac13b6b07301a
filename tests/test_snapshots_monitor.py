"""SVG snapshots of the monitor in each state it must tell truthfully, at 80×24 and 120×40, in the
dark and the high-contrast theme: training (a GPU), evaluating (ETA paused), done (no Stop/Save, no
worker memory) and empty (no run: how to get one); plus the log-scale chart.

Deterministic by construction: synthetic runs with fixed event times (shown in UTC), checkpoint
paths without tmp folders, a fake GPU sampler (or a finished run without a worker, so no live RSS).
Regenerate with ``pytest tests/test_snapshots_monitor.py --snapshot-update``, then read every changed
SVG's text (nothing cut, nothing run together) before committing.
"""

from __future__ import annotations

import os

import pytest

from pilot_support import settle_until, utc_clock
from sft_tui.app import SftApp
from sft_tui.core.settings import Settings
from sft_tui.core.setup.session import Session
from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.screens.monitor import MonitorScreen
from sft_tui.testing import synthetic
from sft_tui.widgets.gauges import GpuPanel

GIB = 2**30
SIZES = [(80, 24), (120, 40)]
THEMES = ["sft-dark", "sft-high-contrast"]
STATES = ["training", "evaluating", "done", "empty"]


class FakeSampler:
    def __init__(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot

    def sample(self) -> GpuSnapshot:
        return self.snapshot


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    yield from utc_clock(monkeypatch)


def app_for(session: Session, start: str, sampler, theme: str = "sft-dark") -> SftApp:
    return SftApp(session=session, start=start, settings=Settings(theme=theme), gpu_sampler=sampler)


settle = settle_until


def training_run(tmp_path):
    # Alive (this test process is its "worker"), 120 of 200 steps, evals and checkpoints.
    return synthetic.write_run(tmp_path, "llama-lora-demo", steps=120, max_steps=200, final=None, pid=os.getpid(),
                               eval_every=20, save_every=50, run_path="runs/llama-lora-demo")


def evaluating_run(tmp_path):
    # The worker said it evaluates (after step 120's eval line it started another evaluation) and is 40% in.
    run = training_run(tmp_path)
    synthetic.append(run, {"time": synthetic.T0 + 64, "type": "status", "state": "evaluating", "step": 120},
                     {"time": synthetic.T0 + 70, "type": "progress", "stage": "evaluating", "fraction": 0.4})
    return run


def finished_run(tmp_path):
    return synthetic.write_run(tmp_path, "demo-lora-done", steps=80, eval_every=20, save_every=40,
                               run_path="runs/demo-lora-done")


def gpu_sampler() -> FakeSampler:
    gpu = GpuStats(index=0, name="NVIDIA H100 80GB HBM3", mem_used=31 * GIB, mem_total=80 * GIB, util_percent=93.0,
                   temperature_c=66.0, power_w=512.0, processes=[(os.getpid(), 27 * GIB), (4_194_305, 4 * GIB)],
                   power_limit_w=700.0)
    return FakeSampler(GpuSnapshot(True, "", [gpu], "550.54"))


NO_GPU = FakeSampler(GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)"))


async def monitor_ready(pilot) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, MonitorScreen)
    panel = screen.query_one(GpuPanel)
    stats = screen.query_one("#stats")

    def laid_out() -> bool:  # the panels' heights match what they hold (a loaded machine lags a frame)
        return (stats.size.height == len(screen._stats().renderables)
                and panel.size.height == len(panel.lines()))

    await settle(pilot, lambda: screen.loaded and panel.snapshot is not None and (screen.polls >= 2 or screen.run is None))
    await settle(pilot, laid_out)


def session_for(state: str, tmp_path) -> tuple[Session, FakeSampler]:
    if state == "empty":
        return Session(runs_dir=tmp_path), NO_GPU
    if state == "done":
        return Session(run=finished_run(tmp_path), runs_dir=tmp_path), NO_GPU
    run = training_run(tmp_path) if state == "training" else evaluating_run(tmp_path)
    return Session(run=run, runs_dir=tmp_path), gpu_sampler()


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("state", STATES)
def test_monitor_snapshot(state, size, theme, snap_compare, tmp_path):
    session, sampler = session_for(state, tmp_path)
    assert snap_compare(app_for(session, "monitor", sampler, theme), terminal_size=size, run_before=monitor_ready)


def test_monitor_training_gpu_80x24_log_scale(snap_compare, tmp_path):
    run = training_run(tmp_path)
    app = app_for(Session(run=run, runs_dir=tmp_path), "monitor", gpu_sampler())

    async def before(pilot):
        await monitor_ready(pilot)
        await pilot.press("l")
        await pilot.pause(0.1)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
