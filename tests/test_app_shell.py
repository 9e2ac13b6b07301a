"""The app shell: themes as data and remembered, remappable keys, help, navigation, quitting."""

from __future__ import annotations

import os

import yaml

from sft_tui.app import SftApp
from sft_tui.testing import synthetic
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings, load_settings
from sft_tui.screens.dialogs import ConfirmScreen, HelpScreen


def make_app(**kwargs) -> SftApp:
    return SftApp(session=kwargs.pop("session", None) or Session(), start=kwargs.pop("start", "runs"), **kwargs)


async def test_bundled_themes_registered_and_choice_remembered():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        assert {"sft-dark", "sft-light", "sft-high-contrast"} <= set(app.available_themes)
        assert app.theme == "sft-dark"
        app.theme = "sft-high-contrast"
        await pilot.pause()
    assert load_settings().theme == "sft-high-contrast"
    again = make_app()
    async with again.run_test(size=(100, 30)):
        assert again.theme == "sft-high-contrast"


async def test_broken_theme_setting_falls_back_and_says_so(tmp_path):
    settings_file = os.environ["SFT_TUI_SETTINGS"]
    with open(settings_file, "w") as fh:
        fh.write("theme: [not, a, name]\n")
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        assert app.theme == "sft-dark"
        assert any("theme" in n.message for n in app._notifications)


async def test_keymap_from_settings_remaps_a_binding():
    app = make_app(settings=Settings(keymap={"go_model": "f9"}))
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f9")
        await pilot.pause(0.5)
        assert app.current_mode == "model"


async def test_help_explains_the_current_screen():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f1")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "Runs" in app.screen._title
        await pilot.press("escape")
        assert not isinstance(app.screen, HelpScreen)


async def test_function_keys_and_next_back_move_between_steps():
    app = make_app()
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("f7")
        await pilot.pause(0.3)
        assert app.current_mode == "export"
        await pilot.press("ctrl+b")
        await pilot.pause(0.3)
        assert app.current_mode == "evaluate"
        await pilot.press("ctrl+n")
        await pilot.pause(0.3)
        assert app.current_mode == "export"


async def test_clicking_a_step_in_the_bar_goes_there():
    app = make_app()
    async with app.run_test(size=(120, 30)) as pilot:
        bar = app.screen.query_one("#stepbar")
        start, _end, key = next(span for span in bar._spans if span[2] == "export")
        await pilot.click("#stepbar", offset=(start + 1, 0))
        await pilot.pause(0.3)
        assert app.current_mode == key


async def test_quit_with_a_live_run_says_training_continues(tmp_path):
    run = synthetic.write_run(tmp_path, "live", steps=5, final=None, pid=os.getpid())
    session = Session(runs_dir=tmp_path)
    session.run = run
    app = make_app(session=session)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        assert "keeps training" in app.screen.question
        await pilot.press("escape")  # cancel: stay
        await pilot.pause()
        assert app.is_running


async def test_quit_with_unsaved_config_asks_first():
    session = Session()
    session.config.training.learning_rate = 1e-3
    assert session.dirty
    app = make_app(session=session)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen) and "unsaved" in app.screen.question
        await pilot.click("#quit")
        await pilot.pause()
    assert not app.is_running


def test_session_dirty_tracks_saves(tmp_path):
    session = Session()
    assert not session.dirty
    session.config.data.max_length = 1024
    assert session.dirty
    path = session.save(tmp_path / "c.yaml")
    assert not session.dirty and yaml.safe_load(path.read_text())["data"]["max_length"] == 1024
    other = Session.from_file(path)
    assert other.config == session.config and not other.dirty


async def test_an_unexpected_ui_error_says_it_is_a_bug_not_worker_log(monkeypatch, tmp_path):
    """A failure inside the UI has no worker.log to read: the hint says bug, app keeps running, report it."""
    from sft_tui.core.run.index import RunIndex
    from sft_tui.core.setup.session import Session
    from sft_tui.screens.dialogs import ErrorScreen
    from pilot_support import wait_for

    def broken(self):
        raise RuntimeError("index exploded")

    monkeypatch.setattr(RunIndex, "refresh", broken)
    app = SftApp(session=Session(runs_dir=tmp_path), start="runs", settings=Settings())
    async with app.run_test(size=(80, 24)) as pilot:
        assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        dialog = app.screen
        assert "index exploded" in dialog.message
        assert "worker.log" not in dialog.hint
        assert "bug in sft-tui" in dialog.hint and "keeps running" in dialog.hint and "report" in dialog.hint
        await pilot.press("escape")
        assert app.is_running


def _headless(monkeypatch):
    from textual.app import App

    monkeypatch.setattr(SftApp, "run", lambda self, **kwargs: App.run(self, headless=True))


def test_run_app_exits_non_zero_when_the_app_crashed(monkeypatch, capsys):
    from sft_tui.app import run_app

    _headless(monkeypatch)

    def crash(self):
        raise RuntimeError("crashed while starting")

    monkeypatch.setattr(SftApp, "on_mount", crash)
    assert run_app() == 1
    out = capsys.readouterr()
    assert "crashed while starting" in out.err + out.out  # Textual's traceback, for the report


def test_run_app_exits_zero_after_a_normal_quit(monkeypatch):
    from sft_tui.app import run_app

    _headless(monkeypatch)
    monkeypatch.setattr(SftApp, "on_mount", lambda self: self.exit(0))
    assert run_app() == 0


def _footer_keys(app) -> set[str]:
    from textual.widgets._footer import FooterKey

    return {k.key for k in app.screen.query(FooterKey)}


async def test_next_and_back_are_offered_only_where_they_lead(tmp_path):
    """At 80 columns the footer has no room for keys that do nothing: no Back on the first step, no
    Next on the last, neither on Runs (not a step)."""
    from pilot_support import wait_for

    app = make_app(session=Session(runs_dir=tmp_path), start="runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause(0.3)
        assert not {"ctrl+n", "ctrl+b"} & _footer_keys(app)
        await pilot.press("f7")  # Export: the last step
        assert await wait_for(pilot, lambda: app.current_mode == "export" and "ctrl+b" in _footer_keys(app))
        assert "ctrl+n" not in _footer_keys(app)
        await pilot.press("ctrl+n")  # does nothing, says nothing
        await pilot.pause(0.2)
        assert app.current_mode == "export"
        await pilot.press("ctrl+b")
        assert await wait_for(pilot, lambda: app.current_mode == "evaluate")
        assert {"ctrl+n", "ctrl+b"} <= _footer_keys(app)


async def test_quit_while_an_export_runs_asks_first(tmp_path):
    app = make_app(session=Session(runs_dir=tmp_path), start="export")
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause(0.3)
        app.screen.busy = "merging"  # as while the merge worker writes the merged model
        await pilot.press("ctrl+q")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen) and "The export (merging)" in app.screen.question
        await pilot.press("escape")
        await pilot.pause()
        assert app.is_running
