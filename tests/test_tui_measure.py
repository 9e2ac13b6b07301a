"""The Training screen's measured pre-flight (Ctrl+R) and the monitor's MFU line."""

from __future__ import annotations

from types import SimpleNamespace

from pilot_support import wait_for

from sft_tui.app import SftApp
from sft_tui.core.setup.session import Session


async def test_ctrl_r_measures_memory_and_shows_the_report(monkeypatch, demo_model_dir):
    from sft_tui.core.train import measure
    from sft_tui.screens.dialogs import ReportScreen

    calls = []

    def fake(config, say=None, **kwargs):
        calls.append(config.training.batch_size)
        say("measuring 3 step(s) on the longest batch (cpu)…")
        return SimpleNamespace(fits=False, rows=lambda: [("measured peak resident memory", "590 MiB")],
                               proposals=[SimpleNamespace(fits=True, text="batch 2 × accumulation 2")])

    monkeypatch.setattr(measure, "measured_preflight", fake)
    app = SftApp(session=Session(), start="training")
    async with app.run_test(size=(120, 40)) as pilot:
        assert await wait_for(pilot, lambda: app.screen.result is not None and app.screen.result.valid, 30)
        await pilot.press("ctrl+r")
        assert await wait_for(pilot, lambda: isinstance(app.screen, ReportScreen), 30)
        body = str(app.screen.query_one("#report-body").render())
        assert app.screen.title_text == "Memory: does not fit" and "590 MiB" in body
        assert "✓ try batch 2 × accumulation 2" in body and calls == [4]


async def test_the_monitor_shows_mfu_when_the_worker_reports_it(tmp_path, monkeypatch):
    import os

    from test_tui_monitor import make_app, monitor

    from sft_tui.screens.monitor import MonitorScreen
    from sft_tui.testing import synthetic

    monkeypatch.setattr(MonitorScreen, "POLL_S", 0.1)
    run = synthetic.write_run(tmp_path, "live", steps=2, max_steps=100, final=None, pid=os.getpid())
    synthetic.append(run, {**synthetic.train_event(3, 100, synthetic.T0 + 5), "mfu": 0.4213})
    app = make_app(run, tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = monitor(app)
        assert await wait_for(pilot, lambda: screen.loaded and len(screen.metrics.train_loss) == 3)
        plain = "\n".join(t.plain for t in screen._stats().renderables)
        assert "MFU" in plain and "42.1%" in plain
