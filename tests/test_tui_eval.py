"""Pilot tests of the Evaluate and Export screens, driven by keys, on a real demo run."""

from __future__ import annotations

import pytest

from sft_tui.core.run.rundir import RunDir
from test_eval_support import cached_trained_run, copy_run, one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def run(demo_model_dir, tmp_path_factory) -> RunDir:
    return RunDir(copy_run(cached_trained_run(demo_model_dir), tmp_path_factory.mktemp("tui-eval-runs")))


def _app(run: RunDir | None, start: str):
    from sft_tui.app import SftApp
    from sft_tui.core.setup.session import Session
    from sft_tui.core.settings import Settings

    session = Session()
    session.run = run
    return SftApp(session=session, start=start, settings=Settings())


async def _wait_workers(pilot, app) -> None:
    await app.workers.wait_for_complete()
    await pilot.pause()
    await pilot.pause()


async def test_evaluate_screen_runs_an_evaluation_and_shows_base_vs_tuned(run):
    from textual.widgets import DataTable, Input, Select

    from sft_tui.screens.evaluate import EvaluateScreen

    app = _app(run, "evaluate")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, EvaluateScreen)
        assert screen.query_one("#eval-run", Select).value == str(run.path)
        assert "not evaluated yet" in str(screen.query_one("#eval-status").render())
        screen.query_one("#play-max-tokens", Input).value = "14"
        limit = screen.query_one("#eval-limit", Input)
        limit.focus()
        await pilot.press("ctrl+a", "backspace", "6")  # ctrl+a: start of line
        limit.value = "6"
        await pilot.press("ctrl+r")
        await _wait_workers(pilot, app)
        table = screen.query_one("#eval-table", DataTable)
        rows = {table.get_row_at(i)[0]: table.get_row_at(i) for i in range(table.row_count)}
        assert {"eval loss", "exact match", "ROUGE-L F1", "BLEU"} <= set(rows)
        base_em, tuned_em = rows["exact match"][1], rows["exact match"][2]
        assert float(tuned_em.rstrip("%")) > float(base_em.rstrip("%"))
        assert "saved" in str(screen.query_one("#eval-status").render())
        assert list((run.path / "eval").glob("eval-*.json"))
        # The verdict: the loss over 200 rows is a clear win, six generated rows are too few to call one.
        verdict = screen.query_one("#eval-verdict")
        assert str(verdict.render()).startswith("Verdict: Tuned is better than base on 1 of 4 metrics: eval loss −")
        assert "too few rows to tell on ROUGE-L" in str(verdict.render()) and verdict.has_class("-better")
        assert "Only 6 rows generated" in str(screen.query_one("#eval-warnings").render())
        assert len(screen.query(".example")) == 6


def _shown(screen, widget):
    """The part of ``widget`` on screen: its region clipped by every scrolling container and the screen."""
    from textual.errors import NoWidget
    from textual.geometry import Region

    try:
        geometry = screen.find_widget(widget)
    except NoWidget:
        return Region()
    return geometry.region.intersection(geometry.clip).intersection(screen.region)


async def test_every_example_is_reachable_by_keyboard_at_80x24(tmp_path):
    """At 80×24 the examples box is reached by Tab and scrolled by End / PageDown / Down until the
    last row's tuned answer is on screen, whole; the verdict sits above the table, warnings under it."""
    from textual.containers import VerticalScroll

    from test_verdict import write_evaluated_run

    run = write_evaluated_run(tmp_path / "runs")
    app = _app(run, "evaluate")
    async with app.run_test(size=(80, 24)) as pilot:
        await _wait_workers(pilot, app)
        screen = app.screen
        verdict = str(screen.query_one("#eval-verdict").render())
        assert verdict.startswith("Verdict: Tuned is better than base on 4 of 4 metrics")
        assert screen.query_one("#eval-verdict").has_class("-better")
        assert "Overfitting" in str(screen.query_one("#eval-warnings").render())
        box = screen.query_one("#eval-examples", VerticalScroll)
        examples = list(box.query(".example"))
        assert len(examples) == 12
        last = examples[-1]
        text = str(last.render())
        assert "tuned: Sentiment: positive. Topic: movie. Sentiment" in text and "did not stop" in text
        assert _shown(screen, last).area == 0  # below the fold at first
        for _ in range(8):
            if app.focused is box:
                break
            await pilot.press("tab")
        assert app.focused is box, app.focused
        await pilot.press("end")
        await pilot.pause()
        assert _shown(screen, last) == last.region and last.region.area > 0  # whole, tuned answer included
        assert _shown(screen, box) == box.region  # and the box itself fits the screen
        await pilot.press("home")
        await pilot.pause()
        assert _shown(screen, examples[0]).area > 0 and _shown(screen, last).area == 0
        await pilot.press("down")
        await pilot.pause()
        assert box.scroll_y == 1
        for _ in range(30):
            await pilot.press("pagedown")
            await pilot.pause()
            if _shown(screen, last) == last.region:
                break
        assert _shown(screen, last) == last.region


async def test_an_evaluation_saved_before_verdicts_gets_one(tmp_path):
    """An older eval file (no per-row scores, no verdict): weighed in the background from its answers."""
    import json

    from test_verdict import write_evaluated_run

    run = write_evaluated_run(tmp_path / "runs")
    path = run.path / "eval" / "eval-example.json"
    data = json.loads(path.read_text())
    del data["per_row"], data["verdict"]
    path.write_text(json.dumps(data))
    app = _app(run, "evaluate")
    async with app.run_test(size=(120, 40)) as pilot:
        await _wait_workers(pilot, app)
        verdict = str(app.screen.query_one("#eval-verdict").render())
        assert verdict.startswith("Verdict: Tuned is better than base on 3 of 4 metrics: ROUGE-L +0.92 [")
        assert "not weighed: eval loss −0.88 (no interval: per-row losses not saved)" in verdict
        assert len(app.screen.query(".example")) == 12


async def test_playground_streams_base_and_tuned_answers(run, monkeypatch):
    from textual.widgets import Input, TabbedContent

    from sft_tui.screens.evaluate import EvaluateScreen
    from sft_tui.widgets.answer import AnswerPane

    appended: list[tuple[str, str]] = []
    original = AnswerPane.append

    def spy(self, chunk):
        appended.append((self.id, chunk))
        original(self, chunk)

    monkeypatch.setattr(AnswerPane, "append", spy)
    app = _app(run, "evaluate")
    async with app.run_test(size=(100, 30)) as pilot:
        screen = app.screen
        assert isinstance(screen, EvaluateScreen)
        await pilot.press("ctrl+t")
        assert screen.query_one("#eval-tabs", TabbedContent).active == "tab-play"
        assert app.focused is screen.query_one("#play-prompt", Input)
        screen.query_one("#play-max-tokens", Input).value = "12"
        await pilot.press(*"The soup was cold and the waiter was rude.")
        # The sample task's instruction comes first in training prompts; put it in front.
        prompt = screen.query_one("#play-prompt", Input)
        prompt.value = "Read the review and give its sentiment and topic.\\n\\n" + prompt.value  # \\n: a newline
        await pilot.press("enter")
        await _wait_workers(pilot, app)
        base = screen.query_one("#pane-base", AnswerPane).text
        tuned = screen.query_one("#pane-tuned", AnswerPane).text
        assert tuned.startswith("Sentiment:") and "Topic:" in tuned, tuned
        assert base and base != tuned
        # Streamed: several pieces per pane, base first, then tuned.
        assert sum(1 for pane, _ in appended if pane == "pane-tuned") >= 3
        assert appended[0][0] == "pane-base" and appended[-1][0] == "pane-tuned"
        assert "kept in chat/history.jsonl" in str(screen.query_one("#play-status").render())
        assert (run.path / "chat" / "history.jsonl").exists()
        # A bad setting is reported, not crashed on.
        screen.query_one("#play-top-p", Input).value = "2"
        screen.query_one("#play-prompt", Input).focus()
        await pilot.press("enter")
        await pilot.pause()
        from sft_tui.screens.dialogs import ErrorScreen

        assert isinstance(app.screen, ErrorScreen) and "top-p" in app.screen.message


async def test_evaluate_screen_without_runs_says_what_to_do():
    from sft_tui.screens.dialogs import ErrorScreen

    app = _app(None, "evaluate")
    async with app.run_test(size=(80, 24)) as pilot:
        assert "No run has a trained adapter yet" in str(app.screen.query_one("#eval-status").render())
        await pilot.press("ctrl+r")
        await pilot.pause()
        assert isinstance(app.screen, ErrorScreen)


async def test_export_screen_card_merge_and_offline_push(run, monkeypatch):
    from textual.widgets import Input, Log

    from sft_tui.screens.export import ExportScreen

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SFT_TUI_LLAMA_CPP", "/nonexistent/llama.cpp")
    app = _app(run, "export")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, ExportScreen)
        assert screen.query_one("#export-merge-dir", Input).value == str(run.merged_dir)
        assert "offline" in str(screen.query_one("#export-hub-status").render())
        gguf_status = str(screen.query_one("#export-gguf-status").render())
        assert "SFT_TUI_LLAMA_CPP names /nonexistent/llama.cpp" in gguf_status
        assert 'pip install "sft-tui[gguf]"' in gguf_status and "merge first" in gguf_status
        await pilot.press("ctrl+o")
        await pilot.pause()
        assert (run.adapter_dir / "README.md").exists()
        await pilot.press("ctrl+s")
        await _wait_workers(pilot, app)
        assert (run.merged_dir / "config.json").exists()
        assert list(run.merged_dir.glob("*.safetensors"))
        log = "\n".join(screen.query_one("#export-log", Log).lines)
        assert "merged model (float32) saved" in log
        assert "merged model present" in str(screen.query_one("#export-merge-note").render())
        # After the merge the GGUF section no longer asks for one; it still says a converter is missing.
        gguf_status = str(screen.query_one("#export-gguf-status").render())
        assert "merge first" not in gguf_status and "merge" not in gguf_status.split("\n")[0]
        assert "is ready; install a converter" in gguf_status
        screen.query_one("#export-repo", Input).value = "me/demo"
        await pilot.press("ctrl+y")
        await _wait_workers(pilot, app)
        log = "\n".join(screen.query_one("#export-log", Log).lines)
        assert "offline" in log and "nothing" not in log.split("offline")[0][-5:]
        await pilot.press("ctrl+g")
        await pilot.pause()
        log = "\n".join(screen.query_one("#export-log", Log).lines)
        assert 'pip install "sft-tui[gguf]"' in log


async def test_export_screen_gguf_section_follows_converter_and_merge(run, monkeypatch, tmp_path):
    """With a converter found the GGUF section says which, and 'ready' only once a merge exists;
    a converter whose output is not GGUF ends in an error, never in 'written'."""
    import shutil

    from textual.widgets import Button, Log

    root = tmp_path / "llama.cpp"
    root.mkdir()
    (root / "convert_hf_to_gguf.py").write_text(
        "import sys, pathlib\nout = sys.argv[sys.argv.index('--outfile') + 1]\npathlib.Path(out).write_bytes(b'nope')\n")
    monkeypatch.setenv("SFT_TUI_LLAMA_CPP", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    merged_backup = None
    if run.merged_dir.exists():  # the other Export test may have merged already: start without a merge
        merged_backup = tmp_path / "merged-backup"
        shutil.move(str(run.merged_dir), merged_backup)
    try:
        app = _app(run, "export")
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            status = str(screen.query_one("#export-gguf-status").render())
            assert "converter: llama.cpp's converter from the checkout" in status and "(SFT_TUI_LLAMA_CPP)" in status
            assert "merge first (Ctrl+S)" in status
            assert not screen.query_one("#export-gguf-btn", Button).disabled
            await pilot.press("ctrl+g")
            await pilot.pause()
            assert "merge first" in "\n".join(screen.query_one("#export-log", Log).lines)
            if merged_backup is not None:
                shutil.move(str(merged_backup), run.merged_dir)
            else:
                await pilot.press("ctrl+s")
                await _wait_workers(pilot, app)
            screen._describe()
            await pilot.pause()
            status = str(screen.query_one("#export-gguf-status").render())
            assert "merge first" not in status and "ready: converts the merged model" in status
            await pilot.press("ctrl+g")
            await _wait_workers(pilot, app)
            log = "\n".join(screen.query_one("#export-log", Log).lines)
            assert "✗" in log and ("not a readable GGUF file" in log or "gguf package is not installed" in log)
            assert "written" not in log and screen.busy is None
    finally:
        if merged_backup is not None and merged_backup.exists():
            shutil.move(str(merged_backup), run.merged_dir)
