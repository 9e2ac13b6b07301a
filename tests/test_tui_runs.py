"""Pilot tests of the runs screen: statuses (died vs running), open, resume, stop, delete, compare."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sft_tui.app import SftApp
from sft_tui.testing import synthetic
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings
from sft_tui.screens.dialogs import ConfirmScreen, ErrorScreen
from sft_tui.screens.monitor import MonitorScreen
from sft_tui.screens.runs import CompareScreen, RunsScreen
from sft_tui.widgets.chart import LineChart
from pilot_support import wait_for
from test_rundir import complete_checkpoint



@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def runs(tmp_path, dead_pid):
    a = synthetic.write_run(tmp_path, "alpha", steps=30, eval_every=10, save_every=10)
    b = synthetic.write_run(tmp_path, "bravo", steps=12, max_steps=40, final=None, pid=dead_pid, seed=3)
    c = synthetic.write_run(tmp_path, "charlie", steps=5, max_steps=40, final=None, pid=os.getpid(), seed=5)
    for i, run in enumerate((a, b, c)):
        os.utime(run.config_path, (synthetic.T0 + i, synthetic.T0 + i))  # list order: alpha, bravo, charlie
    return a, b, c


def runs_app(tmp_path) -> SftApp:
    return SftApp(session=Session(runs_dir=tmp_path), start="runs", settings=Settings())


def table_rows(screen: RunsScreen) -> dict[str, dict[str, str]]:
    from sft_tui.screens.runs import COLUMNS

    table = screen.query_one("#runs-table")
    out = {}
    for row_key in table.rows:
        cells = [str(c) for c in table.get_row(row_key)]
        row = dict(zip([k for k, _ in COLUMNS], cells))
        out[row["run"]] = row
    return out


async def test_lists_runs_with_derived_status(tmp_path, runs):
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        assert await wait_for(pilot, lambda: screen.loaded)
        rows = table_rows(screen)
        assert set(rows) == {"alpha", "bravo", "charlie"}
        assert rows["alpha"]["status"] == "done" and rows["alpha"]["step"] == "30/30"
        assert rows["bravo"]["status"] == "died"  # events say training; the worker is gone
        assert rows["charlie"]["status"] == "training"
        assert rows["alpha"]["model"] == "demo" and rows["alpha"]["method"] == "lora"
        assert rows["alpha"]["best_eval"] != "-" and rows["bravo"]["best_eval"] == "-"
        assert rows["alpha"]["duration"] == "0:20"  # from the events' own times, final runs only
        assert "3 runs" in str(screen.query_one("#runs-summary").render())
        # new events are picked up on the next refresh
        synthetic.append(runs[2], synthetic.train_event(6, 40, synthetic.T0 + 60))
        screen.refresh_runs()
        assert await wait_for(pilot, lambda: table_rows(screen)["charlie"]["step"] == "6/40")


async def test_open_goes_to_monitor_with_that_run(tmp_path, runs):
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("down")  # bravo
        await pilot.press("enter")
        assert await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen))
        assert app.session.run.name == "bravo"
        monitor = app.screen
        assert await wait_for(pilot, lambda: monitor.loaded and len(monitor.metrics.train_loss) == 12)
        assert "died" in str(monitor.query_one("#run-header").render())
        await pilot.press("f8")
        assert isinstance(app.screen, RunsScreen)


async def test_delete_asks_and_refuses_running_runs(tmp_path, runs):
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("down", "down")  # charlie: alive
        await pilot.press("d")
        assert isinstance(app.screen, ErrorScreen)
        await pilot.press("escape")
        await pilot.press("up")  # bravo
        await pilot.press("d")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")  # cancel keeps it
        assert runs[1].path.exists()
        await pilot.press("d")
        await pilot.click("#delete")
        assert await wait_for(pilot, lambda: not runs[1].path.exists())
        assert await wait_for(pilot, lambda: set(table_rows(screen)) == {"alpha", "charlie"})


async def test_compare_overlays_marked_runs(tmp_path, runs):
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 36)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("c")
        assert isinstance(app.screen, RunsScreen)  # needs two marked runs first
        await pilot.press("space", "down", "space")
        assert len(screen.marked) == 2
        assert table_rows(screen)["alpha"]["mark"] == "●"
        await pilot.press("c")
        assert isinstance(app.screen, CompareScreen)
        compare = app.screen
        chart = compare.query_one(LineChart)
        assert await wait_for(pilot, lambda: len(chart.series) == 2)
        assert [s.name for s in chart.series] == ["alpha", "bravo"]
        assert [len(s.xs) for s in chart.series] == [30, 12]
        assert chart.series[0].color != chart.series[1].color
        table = str(compare.query_one("#compare-table").render())
        assert "alpha" in table and "bravo" in table
        await pilot.press("v")
        assert chart.title == "eval loss" and [len(s.xs) for s in chart.series] == [3, 0]
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)


async def test_resume_starts_a_worker_from_the_checkpoint(tmp_path, runs, monkeypatch):
    started = []
    import sft_tui.core.run.launch as launch

    monkeypatch.setattr(launch, "start_worker", lambda run, resume=False: started.append((run.name, resume)))
    bravo = runs[1]
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("down", "r")  # bravo has no checkpoint folder
        assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "no complete checkpoint" in app.screen.message and "sft-tui train" in app.screen.hint
        assert not started
        await pilot.press("escape")
        complete_checkpoint(bravo.checkpoints_dir / "checkpoint-10", 10)
        await pilot.press("r")
        assert await wait_for(pilot, lambda: started == [("bravo", True)])  # started in a worker
        assert bravo.events()[-1] == {**bravo.events()[-1], "type": "status", "state": "starting", "resume": True}
        assert await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen))
        assert app.session.run.name == "bravo"


async def test_empty_runs_dir(tmp_path):
    app = runs_app(tmp_path / "nothing")
    async with app.run_test(size=(100, 24)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        assert "No runs yet" in str(screen.query_one("#runs-summary").render())
        await pilot.press("enter", "r", "d")
        assert isinstance(app.screen, RunsScreen)


def incomplete_checkpoint(folder, step: int) -> None:
    """A checkpoint the trainer never finished writing (no optimizer, scheduler or RNG state)."""
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"x")
    (folder / "trainer_state.json").write_text('{"global_step": %d, "max_steps": 100}' % step)


async def test_resume_goes_through_plan_resume_and_shows_its_notes(tmp_path, runs, monkeypatch):
    started = []
    import sft_tui.core.run.launch as launch

    monkeypatch.setattr(launch, "start_worker", lambda run, resume=False: started.append((run.name, resume)))
    bravo = runs[1]
    complete_checkpoint(bravo.checkpoints_dir / "checkpoint-10", 10)
    incomplete_checkpoint(bravo.checkpoints_dir / "checkpoint-20", 20)
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("down", "r")
        assert await wait_for(pilot, lambda: started == [("bravo", True)])
        assert await wait_for(pilot, lambda: isinstance(app.screen, MonitorScreen))
        messages = [n.message for n in app._notifications]
        assert any("resuming bravo from checkpoint-10" in m and "checkpoint-20 is incomplete" in m
                   for m in messages), messages


async def test_a_finished_run_is_refused_with_the_hint(tmp_path, runs, monkeypatch):
    started = []
    import sft_tui.core.run.launch as launch

    monkeypatch.setattr(launch, "start_worker", lambda run, resume=False: started.append((run.name, resume)))
    alpha = runs[0]
    complete_checkpoint(alpha.checkpoints_dir / "checkpoint-30", 30)
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("r")  # alpha: done
        assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))
        assert "is finished" in app.screen.message and "raise training.max_steps" in app.screen.hint
        assert app.screen.title_text == "Cannot resume alpha"
        assert not started
        assert alpha.events()[-1]["state"] == "done"  # nothing written to a run that was refused


async def test_damaged_and_unreadable_runs_are_shown_as_such(tmp_path, runs, monkeypatch):
    from sft_tui.core.run.index import RunIndex

    alpha, bravo, _ = runs
    with open(bravo.events_path, "a") as fh:
        fh.write('{"time": 1, "type": "train", "step": ' + "9" * 5000 + "}\n")
        fh.write("[" * 100000 + "\n")
        fh.write("not json\n")
    original = RunIndex.refresh

    def refresh(self):  # the index's status for a run whose events cannot be read at all
        rows = original(self)
        for _, st in rows:
            if st.name == "alpha":
                st.state = "unreadable"
        return rows

    monkeypatch.setattr(RunIndex, "refresh", refresh)
    app = runs_app(tmp_path)
    async with app.run_test(size=(120, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        rows = table_rows(screen)
        assert rows["alpha"]["status"] == "unreadable"
        assert rows["bravo"]["status"] == "died !"
        assert rows["charlie"]["status"] == "training"
        assert "2 with unreadable events" in str(screen.query_one("#runs-summary").render())
        assert "cannot be read" in str(screen.query_one("#run-detail").render())
        await pilot.press("down")
        await pilot.pause()
        detail = str(screen.query_one("#run-detail").render())
        assert "3 unreadable lines in events.jsonl were skipped" in detail


def footer_keys(app) -> dict[str, str]:
    from textual.widgets._footer import FooterKey

    return {k.key: k.description for k in app.screen.query(FooterKey) if "-command-palette" not in k.classes}


async def test_the_footer_offers_what_the_highlighted_run_allows(tmp_path, runs):
    """done: neither Stop nor Resume; died: Resume; running: Stop; Compare once two are marked.
    At 80 columns every offered key fits left of the palette key."""
    from textual.widgets._footer import FooterKey

    app = runs_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.pause(0.2)
        keys = footer_keys(app)  # alpha: done
        assert "x" not in keys and "r" not in keys and "c" not in keys and keys.get("d") == "Delete"
        await pilot.press("down")  # bravo: died
        assert await wait_for(pilot, lambda: footer_keys(app).get("r") == "Resume")
        assert "x" not in footer_keys(app)
        await pilot.press("down")  # charlie: training
        assert await wait_for(pilot, lambda: footer_keys(app).get("x") == "Stop")
        assert "r" not in footer_keys(app)
        await pilot.press("space", "up", "space")
        assert await wait_for(pilot, lambda: footer_keys(app).get("c") == "Compare")
        assert "ctrl+n" not in footer_keys(app)  # Runs is not a step: no Next/Back
        footer = [k for k in app.screen.query(FooterKey)]
        palette = [k for k in footer if "-command-palette" in k.classes]
        for key in footer:
            if key not in palette:
                assert key.region.right <= palette[0].region.x, key.description
        # the details line repeats what the 80-column table scrolls out of view
        detail = str(screen.query_one("#run-detail").render())
        assert "started 2023-11-14" in detail and "loss" in detail and "demo · lora" in detail


async def test_r_on_a_finished_run_still_says_why(tmp_path, runs):
    app = runs_app(tmp_path)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        assert "r" not in footer_keys(app)
        await pilot.press("r")  # alpha: done; not offered, but the key explains
        assert await wait_for(pilot, lambda: isinstance(app.screen, ErrorScreen))


async def test_compare_shows_long_run_names_whole(tmp_path):
    long_a = "qwen2.5-0.5b-instruct-qlora-20251201-213455-with-a-note"
    long_b = "qwen2.5-0.5b-instruct-qlora-20251201-220102-with-a-note"
    for name in (long_a, long_b):
        synthetic.write_run(tmp_path, name, steps=10)
    app = runs_app(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = app.screen
        assert await wait_for(pilot, lambda: screen.loaded)
        await pilot.press("space", "down", "space", "c")
        compare = app.screen
        assert isinstance(compare, CompareScreen)
        assert await wait_for(pilot, lambda: len(compare.metrics) == 2)
        await pilot.pause(0.2)
        table = compare._table().plain
        flat = table.replace("\n  ", "")
        assert long_a in flat and long_b in flat
        width = compare.query_one("#compare-table").content_size.width
        assert all(len(line) <= width for line in table.splitlines())
        await pilot.press("f1")
        assert await wait_for(pilot, lambda: app.screen.__class__.__name__ == "HelpScreen")
