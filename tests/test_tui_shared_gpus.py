"""Pilot tests of what a shared, multi-GPU machine adds to the monitor and the runs screen: a queued
run (why it waits, start now, cancel), per-rank rows of a multi-process run, a stall warning with
its thread stacks, a failed rank's last output, the energy line, and who holds each GPU.

No worker runs: events are written into run folders the way the worker writes them, this test
process stands in for a live worker (its pid in worker.pid), and a fake sampler gives GPU snapshots.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
from rich.console import Console

from pilot_support import wait_for
from sft_tui.app import SftApp
from sft_tui.core.settings import Settings
from sft_tui.core.setup.session import Session
from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.screens.dialogs import ConfirmScreen, ReportScreen
from sft_tui.screens.monitor import MonitorScreen, RankErrorScreen
from sft_tui.screens.runs import RunsScreen
from sft_tui.testing import synthetic
from sft_tui.widgets.gauges import GpuPanel
from sft_tui.widgets.ranks import RanksPanel

T0 = synthetic.T0
GIB = 2**30
REASON = ("waiting for 30 GiB on GPU 0; 5.0 GiB free, held by alice: python train.py --config big.yaml; "
          "1 run(s) queued before this one")


class FakeSampler:
    def __init__(self, snapshot: GpuSnapshot) -> None:
        self.snapshot = snapshot

    def sample(self) -> GpuSnapshot:
        return self.snapshot


NO_GPU = GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)")


def gpu(index: int, processes: list[tuple[int, int]], used_gib: float = 30) -> GpuStats:
    return GpuStats(index=index, name="NVIDIA H100 80GB HBM3", mem_used=int(used_gib * GIB), mem_total=80 * GIB,
                    util_percent=90.0, temperature_c=60.0, power_w=400.0, processes=processes, power_limit_w=700.0)


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch):
    monkeypatch.setattr(MonitorScreen, "POLL_S", 0.1)
    monkeypatch.setattr(MonitorScreen, "GPU_POLL_S", 0.2)
    monkeypatch.setattr(RunsScreen, "REFRESH_S", 0.2)


def monitor_app(run, tmp_path, sampler=None, settings: Settings | None = None) -> SftApp:
    return SftApp(session=Session(run=run, runs_dir=tmp_path), start="monitor", settings=settings or Settings(),
                  gpu_sampler=sampler or FakeSampler(NO_GPU))


def screen_text(app) -> list[str]:
    """The screen as the terminal shows it, a string a row (as a snapshot would draw it)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, record=True,
                      legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()


def flat(lines) -> str:
    """Rows joined with spaces, box drawing and runs of spaces removed: a word cut across rows breaks apart."""
    return " ".join(re.sub(r"[\s│╭╮╰╯─]+", " ", line).strip() for line in lines)


def footer_keys(app) -> dict[str, str]:
    from textual.widgets._footer import FooterKey

    return {k.key: k.description for k in app.screen.query(FooterKey) if "-command-palette" not in k.classes}


def assert_footer_fits(app) -> None:
    """Every key the footer offers is wholly left of the palette key (at 80 columns too)."""
    from textual.widgets._footer import FooterKey

    keys = list(app.screen.query(FooterKey))
    palette = [k for k in keys if "-command-palette" in k.classes]
    limit = palette[0].region.x if palette else app.size.width
    for key in keys:
        if key not in palette:
            assert key.region.right <= limit, (key.description, key.region, limit)


def queued_run(tmp_path, name: str = "waiting", pid: int | None = None):
    run = synthetic.write_run(tmp_path, name, steps=0, final=None, pid=pid or os.getpid())
    run.events_path.write_text("")
    synthetic.append(run, {"time": T0, "type": "status", "state": "starting"},
                     {"time": T0 + 1, "type": "status", "state": "queued", "reason": REASON, "need_bytes": 30 * GIB})
    return run


def ranks_event(step: int = 20, stragglers=(1,), host1: str = "node1") -> dict:
    return {"time": T0 + 40, "type": "ranks", "step": step, "world_size": 2, "tokens_per_s": 412.5,
            "stragglers": list(stragglers),
            "ranks": [{"rank": 0, "local_rank": 0, "host": "node1", "pid": 11, "step_time_s": 0.41, "forward_s": 0.10,
                       "data_s": 0.01, "tokens_per_s": 206.0, "memory": 123456789},
                      {"rank": 1, "local_rank": 1, "host": host1, "pid": 12, "step_time_s": 0.41, "forward_s": 0.25,
                       "data_s": 0.02, "tokens_per_s": 206.5, "memory": 133456789}]}


def two_rank_run(tmp_path, **kwargs):
    run = synthetic.write_run(tmp_path, "ddp", steps=20, max_steps=100, final=None, pid=os.getpid())
    synthetic.append(run, {"time": T0 + 30, "type": "log", "level": "info", "world_size": 2,
                           "msg": "starting 2 processes with torchrun (2 on this node, ddp, gloo)"},
                     ranks_event(**kwargs))
    return run


# ---------------------------------------------------------------------- queued


async def test_queued_run_says_why_whole_and_starts_now_or_cancels(tmp_path):
    run = queued_run(tmp_path)
    app = monitor_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded and screen.is_queued())
        await pilot.pause(0.3)
        progress = screen.query_one("#run-progress")
        lines = str(progress.render()).splitlines()
        assert len(lines) >= 2 and all(len(line) <= progress.content_size.width for line in lines), lines
        assert REASON in flat(lines)  # whole, wrapped between words
        assert REASON in flat(screen_text(app))
        keys = footer_keys(app)
        assert keys.get("n") == "Start now" and keys.get("x") == "Stop" and "s" not in keys
        assert_footer_fits(app)
        await pilot.press("s")  # nothing to save yet: says so, sends nothing
        assert not run.control_path.exists()
        await pilot.press("n")
        assert run.read_control()["command"] == "start"
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Cancel the queued run waiting?" in app.screen.question
        await pilot.press("escape")
        assert run.read_control()["command"] == "start"
        await pilot.press("x")
        await pilot.click("#stop")
        await pilot.pause()
        assert run.read_control() == {"seq": 2, "command": "stop"}
        assert "cancelling" in str(screen.query_one("#run-header").render())
        # it leaves the queue: the reason and the key go
        synthetic.append(run, {"time": T0 + 5, "type": "status", "state": "starting", "gpus": [0],
                               "claim_bytes": 30 * GIB})
        assert await wait_for(pilot, lambda: not screen.is_queued())
        await pilot.pause(0.2)
        assert REASON not in flat(str(screen.query_one("#run-progress").render()).splitlines())
        assert "n" not in footer_keys(app)


async def test_runs_screen_shows_the_queue_and_starts_or_cancels_the_selected_run(tmp_path):
    run = queued_run(tmp_path)
    app = SftApp(session=Session(runs_dir=tmp_path), start="runs", settings=Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.pause(0.2)
        detail = screen.query_one("#run-detail")
        assert "queued" in str(screen.query_one("#runs-table").get_row_at(0)[2])
        assert REASON in flat(str(detail.render()).splitlines())
        assert REASON in flat(screen_text(app))  # all of it on screen, nothing below the fold
        assert await wait_for(pilot, lambda: footer_keys(app).get("n") == "Start now")
        assert_footer_fits(app)
        await pilot.press("n")
        assert run.read_control()["command"] == "start"
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen) and "Cancel the queued run" in app.screen.question
        await pilot.click("#stop")
        await pilot.pause()
        assert run.read_control() == {"seq": 2, "command": "stop"}


# ---------------------------------------------------------------------- ranks


async def test_two_ranks_show_a_row_each_and_name_the_straggler_at_120x40(tmp_path):
    run = two_rank_run(tmp_path)
    app = monitor_app(run, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        panel = screen.query_one(RanksPanel)
        assert await wait_for(pilot, lambda: panel.display and not panel.compact)
        await pilot.pause(0.2)
        lines = [t.plain for t in panel.lines()]
        rows = [line.split() for line in lines]
        assert ["rank", "host", "tok/s", "fwd", "ms", "data", "ms", "memory"] == rows[0]
        assert rows[1][:5] == ["0", "node1", "206", "100", "10"] and rows[2][:5] == ["1", "node1", "206", "250", "20"]
        assert lines[2].endswith("◀") and not lines[1].endswith("◀")
        summary = flat(lines[3:])
        assert "2 ranks" in summary and "412 tokens/s in all" in summary
        assert "slowest: rank 1, 1.4× the median" in summary  # (0.27) / median of (0.11, 0.27)
        text = flat(screen_text(app))
        assert "slowest: rank 1, 1.4× the median" in text and "127 MiB" in text
        assert screen.query_one("#chart").size.height >= 12
        # per-rank reports stay out of the log; the launch line is in it
        log = " ".join(screen.query_one("#log").plain_lines())
        assert "starting 2 processes with torchrun" in log and '"ranks"' not in log
        # a newer report replaces the rows
        synthetic.append(run, {**ranks_event(step=30, stragglers=()), "time": T0 + 50})
        assert await wait_for(pilot, lambda: "at step 30" in flat(t.plain for t in panel.lines()))
        assert "◀" not in "".join(t.plain for t in panel.lines())


async def test_two_ranks_fit_80x24_as_one_line(tmp_path):
    run = two_rank_run(tmp_path, host1="gpu-node-17.cluster.example.org")
    app = monitor_app(run, tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        panel = screen.query_one(RanksPanel)
        assert await wait_for(pilot, lambda: panel.display and panel.event is not None)
        await pilot.pause(0.3)
        assert panel.compact and panel.outer_size.height == 1
        rows = screen_text(app)
        assert all(len(row) <= 80 for row in rows)
        line = next(row for row in rows if "2 ranks" in row)
        assert "slowest: rank 1, 1.4× the median" in line and "…" not in line
        assert screen.query_one("#chart").size.height >= 8


async def test_single_process_run_shows_no_rank_rows(tmp_path):
    run = synthetic.write_run(tmp_path, "single", steps=5, max_steps=50, final=None, pid=os.getpid())
    app = monitor_app(run, tmp_path)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded and screen.polls >= 2)
        assert not screen.query_one(RanksPanel).display
        assert screen.query_one("#run-progress").size.height == 1


def test_table_drops_domains_then_the_host_column_rather_than_cutting():
    from sft_tui.widgets.ranks import table_lines

    event = ranks_event(host1="gpu-node-17.cluster.example.org")
    wide = [t.plain for t in table_lines(event, 120)]
    assert "gpu-node-17.cluster.example.org" in wide[2]
    narrow = [t.plain for t in table_lines(event, 70)]
    assert "gpu-node-17 " in narrow[2] and all(len(line) <= 70 for line in narrow)
    tight = [t.plain for t in table_lines(event, 50)]
    assert "host" not in tight[0] and all(len(line) <= 50 for line in tight)
    assert table_lines(event, 30) is None


# ---------------------------------------------------------------------- stall, failed rank, energy


async def test_stall_warns_shows_the_stacks_and_clears_on_the_next_step(tmp_path):
    run = synthetic.write_run(tmp_path, "stuck", steps=10, max_steps=100, final=None, pid=os.getpid())
    app = monitor_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("k")  # no stall yet: nothing opens
        assert isinstance(app.screen, MonitorScreen)
        synthetic.append(run, {"time": T0 + 400, "type": "stall", "phase": "running a training step",
                               "silent_s": 312.0, "median_step_s": 0.8, "allowance_s": 60.0, "step": 10,
                               "stack": 'Thread 0x7f01 (most recent call first):\n  File "loop.py", line 12 in '
                                        'wait_for_batch'},
                         {"time": T0 + 401, "type": "log", "level": "warning", "input_bound": True,
                          "msg": "the GPU waits for data: the data loader is the bottleneck"})
        warning = "no step for 5m 12s (median step 0.8 s) while running a training step"
        assert await wait_for(pilot, lambda: warning in flat(str(screen.query_one("#run-progress").render())
                                                              .splitlines()))
        log = " ".join(screen.query_one("#log").plain_lines())
        assert "stall" in log and "the data loader is the bottleneck" in log
        await pilot.press("k")
        assert isinstance(app.screen, ReportScreen)
        body = str(app.screen.query_one("#report-body").render())
        assert "wait_for_batch" in body and warning in body
        await pilot.press("escape")
        synthetic.append(run, synthetic.train_event(11, 100, T0 + 402))
        assert await wait_for(pilot, lambda: screen.metrics.step == 11)
        await pilot.pause(0.1)
        assert "no step for" not in str(screen.query_one("#run-progress").render())
        await pilot.press("k")  # the last stall's stacks can still be read
        assert isinstance(app.screen, ReportScreen)


async def test_a_failed_rank_shows_its_last_output(tmp_path):
    run = two_rank_run(tmp_path)
    output = [f"line {i} of rank 1's output" for i in range(1, 13)]
    app = monitor_app(run, tmp_path)
    async with app.run_test(size=(100, 40)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        synthetic.append(run, {"time": T0 + 60, "type": "error", "kind": "rank_failed",
                               "message": "rank 1 on node1 killed by signal 9 (SIGKILL); torchrun stopped the other ranks",
                               "hint": "a killed rank is most often the kernel's out-of-memory killer (check `dmesg`)",
                               "rank": 1, "host": "node1", "exitcode": -9, "last_lines": output},
                         {"time": T0 + 61, "type": "status", "state": "failed"})
        assert await wait_for(pilot, lambda: isinstance(app.screen, RankErrorScreen))
        await pilot.pause(0.1)
        dialog = app.screen
        assert "killed by signal 9" in str(dialog.query_one("#error-message").render())
        assert "dmesg" in str(dialog.query_one("#error-hint").render())
        shown = str(dialog.query_one("#error-output").render())
        assert "Last output of rank 1 on node1" in shown
        assert "line 12 of rank 1's output" in shown and "line 5 of" in shown and "line 4 of" not in shown
        assert dialog.title_text == "Training failed: rank failed"


async def test_energy_shows_in_the_stats_with_its_price(tmp_path):
    run = synthetic.write_run(tmp_path, "watts", steps=10, max_steps=100, final=None, pid=os.getpid())
    synthetic.append(run, {"time": T0 + 20, "type": "energy", "joules": 4_428_000.0, "kwh": 1.23, "gpus": [0]})
    settings = Settings(energy_price=0.30, energy_currency="€")
    app = monitor_app(run, tmp_path, settings=settings)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.pause(0.2)
        stats = flat(t.plain for t in screen._stats().renderables)
        assert "energy 1.23 kWh (€0.37 at 0.30/kWh)" in stats
        assert "energy" not in " ".join(screen.query_one("#log").plain_lines())  # no raw event lines


# ---------------------------------------------------------------------- GPUs


async def test_gauges_list_holders_and_put_the_runs_gpus_first(tmp_path):
    """The run's worker (a sleeping child) holds GPU 1; this test process, someone else's for the run,
    holds GPU 0 and is listed by user and command."""
    worker = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = synthetic.write_run(tmp_path, "mine", steps=5, max_steps=50, final=None, pid=worker.pid)
        synthetic.append(run, {"time": T0 + 20, "type": "status", "state": "training", "gpus": [1]})
        snapshot = GpuSnapshot(True, "", [gpu(0, [(os.getpid(), 6 * GIB)], 6), gpu(1, [(worker.pid, 24 * GIB)], 24)],
                               "550.54")
        app = monitor_app(run, tmp_path, FakeSampler(snapshot))
        async with app.run_test(size=(120, 40)) as pilot:
            panel = app.screen.query_one(GpuPanel)
            assert await wait_for(pilot, lambda: panel.holders is not None and app.screen.loaded
                                  and panel.snapshot.gpus[0].index == 1)
            await pilot.pause(0.3)
            text = [line.plain for line in panel.lines()]
            assert text[0].startswith("GPU1 ")  # the run's own GPU first
            joined = "\n".join(text)
            assert "run mine 24 GiB" in joined
            holder = next(line for line in text if "6.0 GiB" in line)
            import psutil

            assert holder.split()[0] == psutil.Process().username()  # another process: who and what
            assert "python" in holder and "run mine" not in holder and "not visible" not in holder
    finally:
        worker.kill()
        worker.wait()


async def test_runs_screen_details_name_processes_gpus_energy_and_a_stall(tmp_path):
    run = two_rank_run(tmp_path)
    synthetic.append(run, {"time": T0 + 41, "type": "status", "state": "training", "gpus": [0, 1]},
                     {"time": T0 + 42, "type": "energy", "joules": 4_428_000.0, "kwh": 1.23, "gpus": [0, 1]},
                     {"time": T0 + 400, "type": "stall", "phase": "saving a checkpoint", "silent_s": 75.0,
                      "median_step_s": 0.8, "step": 20, "stack": "Thread 0x1"})
    app = SftApp(session=Session(runs_dir=tmp_path), start="runs", settings=Settings())
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.pause(0.2)
        detail = flat(str(screen.query_one("#run-detail").render()).splitlines())
        assert "2 processes" in detail and "GPUs 0, 1" in detail and "1.23 kWh" in detail
        assert "no step for 1m 15s (median step 0.8 s) while saving a checkpoint" in detail
        assert "n" not in footer_keys(app)  # not queued: no start-now
