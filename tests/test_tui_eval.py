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
