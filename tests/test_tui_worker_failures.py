"""An unexpected exception in a background worker of any screen becomes the app's error dialog.

Each test makes one core function that a screen's worker calls raise (a full disk, an Arrow error,
a CUDA error...), then checks that the error dialog shows the message, that the screen is usable
again once it is dismissed, and that the app is still running and answering keys. Before every
worker was started with ``exit_on_error=False`` and forwarded its failure to the app, such an
exception ended the app with a traceback.
"""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pytest

from sft_tui.app import SftApp
from sft_tui.core.settings import Settings
from sft_tui.core.setup.session import Session
from sft_tui.core.system.gpus import GpuSnapshot
from sft_tui.screens.dialogs import ErrorScreen, HelpScreen
from sft_tui.testing import synthetic
from pilot_support import wait_for
from test_rundir import complete_checkpoint
from test_tui_setup import setup_env  # noqa: F401  (fixture re-used)

NO_GPU = GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)")


class FakeSampler:
    def sample(self) -> GpuSnapshot:
        return NO_GPU


def disk_full() -> OSError:
    return OSError(28, "No space left on device")


def make_app(start: str, session: Session | None = None) -> SftApp:
    return SftApp(session=session or Session(), start=start, settings=Settings(), gpu_sampler=FakeSampler())


def trained_run(root, name: str = "tuned"):
    run = synthetic.write_run(root, name, steps=20)
    run.adapter_dir.mkdir(parents=True)
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "base_model_name_or_path": "demo"}))
    return run


async def expect_error_dialog(pilot, *words: str) -> ErrorScreen:
    app = pilot.app
    assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen), timeout=30), app.screen
    dialog = app.screen
    for word in words:  # the words of the error, however the app's explain() phrases the rest
        assert word.lower() in dialog.message.lower(), dialog.message
    assert "Traceback" not in dialog.message
    return dialog


async def dismiss_and_check_alive(pilot) -> None:
    """Close the dialog, then show that the app still answers keys (F1 opens the help)."""
    app = pilot.app
    await pilot.press("escape")
    await pilot.pause(0.1)
    assert not isinstance(app.screen, ErrorScreen)
    assert app.is_running
    await pilot.press("f1")
    assert await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
    await pilot.press("escape")
    await pilot.pause()
    assert app.is_running


async def test_model_screen_discovery_failure(setup_env, monkeypatch):  # noqa: F811
    import sft_tui.core.models.discovery as discovery

    def broken():
        raise OSError(5, "Input/output error", "/models")

    monkeypatch.setattr(discovery, "discover_models", broken)
    app = make_app("model")
    async with app.run_test(size=(80, 24)) as pilot:
        await expect_error_dialog(pilot, "Input/output error")
        await dismiss_and_check_alive(pilot)
        assert "Could not list the models" in str(app.screen.query_one("#details-text").render())


async def test_data_screen_tokenize_failure(setup_env, monkeypatch):  # noqa: F811
    import sft_tui.core.data as data

    def broken(*args, **kwargs):
        raise pa.ArrowInvalid("Column 2 named input_ids expected length 64 but got length 63")

    monkeypatch.setattr(data, "inspect_data", broken)
    app = make_app("data")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("ctrl+t")
        await expect_error_dialog(pilot, "ArrowInvalid", "expected length 64")
        await dismiss_and_check_alive(pilot)
        assert "tokenizing failed" in str(app.screen.query_one("#stats-text").render())
        assert app.session.data_report is None


async def test_training_screen_start_failure(setup_env, monkeypatch):  # noqa: F811
    import sft_tui.core.run.launch as launch

    def broken(config, runs_dir=None):
        raise disk_full()

    monkeypatch.setattr(launch, "start_run", broken)
    app = make_app("training")
    async with app.run_test(size=(80, 24)) as pilot:
        start = app.screen.query_one("#start")
        assert await wait_for(pilot, lambda: not start.disabled)
        await pilot.press("ctrl+g")
        await expect_error_dialog(pilot, "No space left on device")
        await dismiss_and_check_alive(pilot)
        assert app.current_mode == "training" and app.session.run is None
        assert not start.disabled, "Start must work again after a failed start"
        assert "starting" not in str(app.screen.query_one("#problems").render())


async def test_monitor_screen_read_failure(tmp_path, monkeypatch):
    from sft_tui.core.run.events import EventTail
    from sft_tui.screens.monitor import MonitorScreen

    monkeypatch.setattr(MonitorScreen, "POLL_S", 0.1)
    run = synthetic.write_run(tmp_path, "live", steps=3, max_steps=100, final=None, pid=os.getpid())

    def broken(self, *args, **kwargs):
        raise RuntimeError("events exploded")

    monkeypatch.setattr(EventTail, "read_new", broken)
    app = make_app("monitor", Session(run=run, runs_dir=tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await expect_error_dialog(pilot, "RuntimeError", "events exploded")
        await dismiss_and_check_alive(pilot)
        await pilot.pause(0.4)  # several polls later: no new dialog, the screen says what happened
        assert isinstance(app.screen, MonitorScreen)
        assert "could not read the events" in str(app.screen.query_one("#run-header").render())


async def test_evaluate_screen_evaluation_failure(tmp_path, monkeypatch):
    import sft_tui.core.eval.evaluate as evaluate

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: device-side assert triggered")

    monkeypatch.setattr(evaluate, "evaluate_run", broken)
    run = trained_run(tmp_path)
    app = make_app("evaluate", Session(run=run, runs_dir=tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("ctrl+r")
        await expect_error_dialog(pilot, "device-side assert")
        screen = app.screen_stack[-2]  # the Evaluate screen, under the dialog
        assert "evaluation failed" in str(screen.query_one("#eval-status").render())
        await dismiss_and_check_alive(pilot)
        assert not screen.evaluating and not screen.query_one("#eval-start").disabled


async def test_export_screen_merge_failure(tmp_path, monkeypatch):
    import sft_tui.core.eval.export as export

    def broken(*args, **kwargs):
        raise disk_full()

    monkeypatch.setattr(export, "merge", broken)
    run = trained_run(tmp_path)
    app = make_app("export", Session(run=run, runs_dir=tmp_path))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause(0.2)
        await pilot.press("ctrl+s")
        await expect_error_dialog(pilot, "No space left on device")
        await dismiss_and_check_alive(pilot)
        assert app.screen.busy is None, "a failed merge must not leave the screen busy"
        assert any("failed" in line for line in app.screen.query_one("#export-log").lines)


async def test_runs_screen_refresh_failure(tmp_path, monkeypatch):
    from sft_tui.core.run.index import RunIndex
    from sft_tui.screens.runs import RunsScreen

    monkeypatch.setattr(RunsScreen, "REFRESH_S", 0.1)
    synthetic.write_run(tmp_path, "alpha", steps=5)

    def broken(self):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(RunIndex, "refresh", broken)
    app = make_app("runs", Session(runs_dir=tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        await expect_error_dialog(pilot, "Input/output error")
        await dismiss_and_check_alive(pilot)
        await pilot.pause(0.4)  # refreshes stopped: no dialog after dialog
        assert isinstance(app.screen, RunsScreen)
        assert "Reading the runs failed" in str(app.screen.query_one("#runs-summary").render())


async def test_runs_screen_resume_failure(tmp_path, monkeypatch):
    import sft_tui.core.run.launch as launch
    from sft_tui.screens.runs import RunsScreen

    run = synthetic.write_run(tmp_path, "stopped-run", steps=20, final="stopped")
    complete_checkpoint(run.checkpoints_dir / "checkpoint-10", 10)

    def broken(run, resume=False, **kwargs):
        raise PermissionError(13, "Permission denied", "worker.log")

    monkeypatch.setattr(launch, "start_worker", broken)
    app = make_app("runs", Session(runs_dir=tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded and screen.rows)
        await pilot.press("r")
        await expect_error_dialog(pilot, "Permission denied")
        await dismiss_and_check_alive(pilot)
        assert isinstance(app.screen, RunsScreen) and app.session.run is None


_ = pytest
