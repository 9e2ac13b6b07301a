"""End to end with a real worker on the demo model: start from the TUI, watch, stop, re-attach;
and a dropped terminal (the TUI's process group killed) must not kill training."""

from __future__ import annotations

import importlib.util
import os
import pty
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sft_tui.app import SftApp
from sft_tui.core.config import Config, save_config
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings
from sft_tui.screens.dialogs import ConfirmScreen
from sft_tui.screens.monitor import MonitorScreen
from sft_tui.widgets.chart import LineChart
from pilot_support import wait_for

pytestmark = pytest.mark.slow


def demo_config(runs_dir: Path, name: str) -> Config:
    config = Config()
    config.model.path = "demo"
    config.training.max_steps = 200  # long enough to still be running when we stop it
    config.training.logging_steps = 1
    config.training.save_steps = 5
    config.training.eval_steps = None
    config.output.runs_dir = str(runs_dir)
    config.output.run_name = name
    return config



def wait_until(cond, timeout: float, poll: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    return cond()


def train_events(run: RunDir) -> list[dict]:
    return [e for e in run.events() if e["type"] == "train"]


@pytest.fixture
def stop_leftovers():
    """Whatever happens, no worker outlives the test."""
    runs: list[RunDir] = []
    yield runs
    for run in runs:
        pid = run.pid()
        if pid and run.is_alive():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


async def test_start_from_tui_watch_stop_and_reattach(tmp_path, demo_model_dir, stop_leftovers):
    runs_dir = tmp_path / "runs"
    session = Session(config=demo_config(runs_dir, "e2e-tui"), runs_dir=runs_dir)
    has_training_screen = importlib.util.find_spec("sft_tui.screens.training") is not None
    app = SftApp(session=session, start="training" if has_training_screen else "monitor", settings=Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        if has_training_screen:
            # Start from the Training screen exactly as a user does (Ctrl+G): it calls
            # core.run.launch.start_run, sets session.run and opens the monitor.
            await pilot.pause(0.5)
            await pilot.press("ctrl+g")
        else:  # pragma: no cover - only while the Training screen is being written
            from sft_tui.core.run.launch import start_run

            session.run = start_run(session.config, runs_dir)
            app.go_step("monitor")
        assert await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen) and session.run is not None, 30)
        run = session.run
        stop_leftovers.append(run)
        screen = app.screen
        chart = screen.query_one(LineChart)
        assert await wait_for(pilot, lambda: len(screen.metrics.train_loss) >= 3, 90), run.log_path.read_text()[-2000:]
        assert chart.total_points >= 3 and chart.last_points.get("train", 0) >= 1
        assert "training" in str(screen.query_one("#run-header").render())
        await pilot.press("x")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.click("#stop")
        assert await wait_for(pilot, lambda: screen.metrics.status.state == "stopped", 60), run.log_path.read_text()[-2000:]
        assert (run.adapter_dir / "adapter_config.json").exists()
        assert wait_until(lambda: not run.is_alive(), 20)
        steps_seen = len(train_events(run))
        assert 3 <= steps_seen < 200

    # Re-attach, as `sft-tui attach RUN` does: a new app whose session points at the run.
    app2 = SftApp(session=Session(run=RunDir(run.path), runs_dir=runs_dir), start="monitor", settings=Settings())
    async with app2.run_test(size=(120, 40)) as pilot:
        screen = app2.screen
        assert isinstance(screen, MonitorScreen)
        assert await wait_for(pilot, lambda: screen.loaded, 10)
        await pilot.pause()
        assert len(screen.metrics.train_loss) == steps_seen  # the whole history, from events.jsonl
        chart = screen.query_one(LineChart)
        assert len(chart.series[0].xs) == steps_seen and chart.last_points.get("train", 0) >= 1
        assert "stopped" in str(screen.query_one("#run-header").render())
        assert screen.metrics.last_checkpoint is not None


TUI_SCRIPT = textwrap.dedent(
    """
    import sys
    from sft_tui.core.config import load_config
    from sft_tui.core.run.launch import start_run
    from sft_tui.app import run_app

    config = load_config(sys.argv[1])
    run = start_run(config, sys.argv[2])   # the TUI process spawns the worker, as the Training screen does
    open(sys.argv[3], "w").write(str(run.path))
    sys.exit(run_app(attach=str(run.path), runs_dir=sys.argv[2]))
    """
)


def test_ssh_drop_kills_the_tui_but_not_the_worker(tmp_path, demo_model_dir, stop_leftovers):
    runs_dir = tmp_path / "runs"
    cfg = tmp_path / "cfg.yaml"
    save_config(demo_config(runs_dir, "survivor"), cfg)
    script = tmp_path / "tui.py"
    script.write_text(TUI_SCRIPT)
    path_file = tmp_path / "run-path"

    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm-256color", COLUMNS="100", LINES="30")
    # The TUI gets a terminal of its own and its own session / process group, like a login shell's job.
    tui = subprocess.Popen([sys.executable, str(script), str(cfg), str(runs_dir), str(path_file)],
                           stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True, close_fds=True)
    os.close(slave)
    output = bytearray()
    try:
        def drain() -> None:
            import select

            while select.select([master], [], [], 0)[0]:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                output.extend(chunk)

        assert wait_until(lambda: (drain(), path_file.exists() and path_file.read_text())[1], 30), output[-2000:]
        run = RunDir(path_file.read_text())
        stop_leftovers.append(run)
        worker_pid = run.pid()
        assert worker_pid and worker_pid != tui.pid
        assert os.getpgid(worker_pid) != os.getpgid(tui.pid)  # the worker is not in the TUI's group
        # the TUI is up and drawing the monitor
        assert wait_until(lambda: (drain(), b"Monitor" in output)[1], 30), output[-2000:]
        assert wait_until(lambda: len(train_events(run)) >= 1, 90), run.log_path.read_text()[-2000:]

        # The SSH link drops: the terminal hangs up and the TUI's whole process group dies.
        os.killpg(tui.pid, signal.SIGHUP)
        os.close(master)
        master = -1
        try:
            os.killpg(tui.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        tui.wait(timeout=10)

        assert run.is_alive(), "the worker died with the TUI"
        before = len(train_events(run))
        assert wait_until(lambda: len(train_events(run)) >= before + 2, 60), "the worker stopped appending events"
        assert run.status().state == "training"

        # A later session stops it through the run directory and the worker ends cleanly.
        run.send("stop")
        assert wait_until(lambda: not run.is_alive(), 90), run.log_path.read_text()[-2000:]
        states = [e["state"] for e in run.events() if e["type"] == "status"]
        assert states[-1] == "stopped"
        assert (run.adapter_dir / "adapter_config.json").exists()
    finally:
        if master >= 0:
            os.close(master)
        if tui.poll() is None:
            try:
                os.killpg(tui.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            tui.wait()
