"""At launch the Model screen offers the runs left unfinished, and one key opens it in Runs, selected."""

from __future__ import annotations

import os
import subprocess
import sys

from sft_tui.app import SftApp
from sft_tui.core.setup.session import Session
from sft_tui.screens.runs import RunsScreen
from sft_tui.testing import synthetic
from test_rundir import complete_checkpoint
from test_tui_setup import settle, setup_env, text_of, wait_for  # noqa: F401  (fixture re-used)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_unfinished_runs_are_offered_and_one_key_opens_runs_with_it_selected(setup_env, tmp_path):  # noqa: F811
    root = tmp_path / "runs"
    done = synthetic.write_run(root, "finished", steps=20)
    complete_checkpoint(done.checkpoints_dir / "checkpoint-20", 20)
    synthetic.write_run(root, "no-checkpoint", steps=4, max_steps=40, final="stopped")
    died = synthetic.write_run(root, "crashed", steps=12, max_steps=40, final=None, pid=dead_pid(), seed=3)
    complete_checkpoint(died.checkpoints_dir / "checkpoint-10", 10)
    stopped = synthetic.write_run(root, "paused", steps=8, max_steps=40, final="stopped", t0=synthetic.T0 - 3600)
    complete_checkpoint(stopped.checkpoints_dir / "checkpoint-8", 8)
    for i, run in enumerate((done, died, stopped)):
        os.utime(run.config_path, (synthetic.T0 + i, synthetic.T0 + i))
    app = SftApp(session=Session(runs_dir=root))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert [run.name for run, _ in screen.unfinished] == ["crashed", "paused"]  # newest first
        line = text_of(pilot, "#unfinished")
        assert "crashed died at step 12/40, loss" in line and "ago" in line and "+1 more" in line
        assert "Ctrl+L" in line
        titles = [c.title for c in app.get_system_commands(screen)]
        assert "Open unfinished run paused" in titles
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: isinstance(app.screen, RunsScreen) and app.screen.loaded)
        await pilot.pause()
        runs = app.screen
        assert runs.selected()[0].name == "crashed"
        assert app.pending_run_selection is None


async def test_no_unfinished_runs_no_line(setup_env, tmp_path):  # noqa: F811
    root = tmp_path / "runs"
    synthetic.write_run(root, "finished", steps=20)
    app = SftApp(session=Session(runs_dir=root))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        assert app.screen.unfinished == []
        assert not app.screen.query_one("#unfinished").has_class("-show")
        await pilot.press("ctrl+l")  # nothing to open: the key does nothing
        await pilot.pause()
        assert app.current_mode == "model"
