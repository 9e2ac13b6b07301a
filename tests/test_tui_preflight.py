"""Pilot tests of the Training screen's pre-flight next to Start, and of peer configs in and out.

The pre-flight is ``sft_tui.core.train.preflight``: cheap checks re-run a moment after each change,
the deep ones (data, tokenizer) when the model or data changes, and once more when Start is pressed
— a run that cannot work is refused before its run folder exists; one that only the estimates
object to asks "start anyway?".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_tui.app import SftApp
from sft_tui.core.config import Config, load_config
from sft_tui.core.run.rundir import list_runs
from sft_tui.core.setup.session import Session
from sft_tui.screens.dialogs import ConfirmScreen, ReportScreen
from sft_tui.screens.training import TrainingScreen
from test_tui_setup import settle, setup_env, text_of, type_into, wait_for  # noqa: F401  (fixture re-used)

FIXTURES = Path(__file__).parent / "fixtures" / "peer_configs"


def alpaca_rows(path: Path, n: int) -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            fh.write(json.dumps({"instruction": f"say {i}", "input": "", "output": f"{i}"}) + "\n")
    return path


def training_app(config: Config) -> SftApp:
    return SftApp(session=Session(config=config), start="training")


def preflight_box(pilot) -> str:
    return text_of(pilot, "#preflight")


@pytest.fixture
def record_starts(monkeypatch):
    """launch.start_run, recorded: the run folder is created as the real one does, no worker starts."""
    import sft_tui.core.run.launch as launch
    from sft_tui.core.run.rundir import RunDir

    started = []

    def fake_start_run(config, runs_dir=None):
        run = RunDir.create(config, runs_dir=runs_dir)
        started.append(run)
        return run

    monkeypatch.setattr(launch, "start_run", fake_start_run)
    return started


async def test_valid_config_is_ready_to_start(setup_env, record_starts):  # noqa: F811
    app = training_app(Config())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert isinstance(screen, TrainingScreen)
        assert screen._deep is not None and screen._cheap is not None  # both checks ran on arrival
        assert "✓ ready to start" in text_of(pilot, "#problems")
        assert not screen.query_one("#preflight").has_class("-show")
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: app.session.run is not None)
        assert app.current_mode == "monitor" and len(record_starts) == 1


async def test_missing_data_file_is_shown_and_refused_without_a_run_folder(setup_env, record_starts, tmp_path):  # noqa: F811
    config = Config()
    config.data.path = str(tmp_path / "nope.jsonl")
    app = training_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        assert "✗ 1 problem stops the run" in text_of(pilot, "#problems")
        box = preflight_box(pilot)
        assert "✗ data.path" in box and "not found" in box and "fix:" in box
        assert not screen.query_one("#start").disabled  # Start checks again and says why
        await pilot.press("ctrl+g")
        await settle(pilot)
        assert not record_starts and list_runs() == []  # refused before any run folder exists
        assert app.session.run is None and app.current_mode == "training"
        assert not isinstance(app.screen, ConfirmScreen)  # nothing to force
        assert "✗ data.path" in preflight_box(pilot)

        # fixing the field in the form: the cheap checks run again by themselves
        alpaca_rows(tmp_path / "ok.jsonl", 40)
        app.session.config.data.path = str(tmp_path / "ok.jsonl")
        screen.validate()
        await pilot.pause(0.5)
        await settle(pilot)
        assert "✓ ready to start" in text_of(pilot, "#problems")


async def test_batch_bigger_than_the_data_confirm_starts(setup_env, record_starts, tmp_path):  # noqa: F811
    config = Config()
    config.data.path = str(alpaca_rows(tmp_path / "tiny.jsonl", 3))
    config.training.batch_size = 8
    app = training_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        box = preflight_box(pilot)
        assert "✗ training.batch_size" in box and "3 training row" in box and "anyway" in box
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Start anyway?" in app.screen.question and "training.batch_size" in app.screen.question
        await pilot.press("escape")  # don't start
        await settle(pilot)
        assert not record_starts and list_runs() == []
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        app.screen.query_one("#start").press()
        await wait_for(pilot, lambda: app.session.run is not None)
        assert len(record_starts) == 1 and app.current_mode == "monitor"
        assert load_config(record_starts[0].config_path).training.batch_size == 8


async def test_typing_reruns_the_cheap_checks_debounced(setup_env, tmp_path):  # noqa: F811
    app = training_app(Config())
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        screen = app.screen
        calls = []
        original = TrainingScreen.check_cheap

        def counting(self, config, *args):
            calls.append(config.training.learning_rate)
            return original(self, config, *args)

        screen.check_cheap = counting.__get__(screen)
        await type_into(pilot, "#f-training-learning-rate", "0.0005")  # six keystrokes
        await pilot.pause(0.6)
        await settle(pilot)
        assert calls == [pytest.approx(5e-4)]  # one run for the whole burst, on the final value


async def test_findings_wrap_at_80x24(setup_env, tmp_path):  # noqa: F811
    config = Config()
    config.data.path = str(tmp_path / "a-rather-long-folder-name" / "missing-training-data.jsonl")
    app = training_app(config)
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        box = app.screen.query_one("#preflight")
        side = app.screen.query_one("#side")
        assert box.size.width <= side.size.width and box.size.height > 3  # wrapped inside the side column
        assert "missing-training-data.jsonl" in "".join(str(box.render()).split())


# --------------------------------------------------------------------------- peer configs


async def load_file(pilot, path: Path) -> None:
    await pilot.press("ctrl+o")
    await pilot.pause()
    await type_into(pilot, "#picker-path", str(path))
    await pilot.press("enter")
    await settle(pilot)


@pytest.mark.parametrize("name, source, model, unmapped", [
    ("axolotl_lora.yml", "Axolotl", "NousResearch/Llama-3.2-1B", "output_dir"),
    ("llamafactory_lora_sft.yaml", "LLaMA-Factory", "Qwen/Qwen3-4B-Instruct-2507", "ddp_timeout"),
    ("trl_sft.py", "TRL", "Qwen/Qwen2.5-0.5B-Instruct", "SFTConfig.push_to_hub"),
])
async def test_load_accepts_a_peer_config_and_lists_what_did_not_carry_over(setup_env, name, source, model,  # noqa: F811
                                                                           unmapped):
    from sft_tui.core.interop import import_config

    expected = import_config(FIXTURES / name)
    app = SftApp(start="training")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await load_file(pilot, FIXTURES / name)
        assert isinstance(app.screen, ReportScreen), app.screen
        assert app.screen.title_text == f"Imported from {source}"
        body = app.screen.body
        for u in expected.unmapped:  # every setting that did not carry over, by name, with its reason
            assert u.key in body and u.reason in body
        assert unmapped in body
        await pilot.press("escape")
        await settle(pilot)
        assert app.session.config.model.path == model
        assert app.session.config.to_dict() == expected.config.to_dict()
        from sft_tui.core.setup import forms

        assert app.screen.query_one("#f-training-learning-rate").value == \
            forms.display_value(expected.config, "training.learning_rate")
        assert app.session.config_path is None and app.session.dirty  # saving asks where


async def test_load_of_something_that_is_no_config_still_shows_the_problems(setup_env, tmp_path):  # noqa: F811
    broken = tmp_path / "broken.yaml"
    broken.write_text("training:\n  learning_rate: 7\n")
    app = SftApp(start="training")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        await load_file(pilot, broken)
        from sft_tui.screens.dialogs import ErrorScreen

        assert isinstance(app.screen, ErrorScreen) and "learning_rate" in app.screen.message


async def test_export_as_peer_config_shows_saves_and_copies(setup_env, tmp_path, monkeypatch):  # noqa: F811
    from sft_tui.core.interop import export_config
    from sft_tui.widgets.peerexport import PeerExportScreen

    copied = []
    monkeypatch.setattr(SftApp, "copy_to_clipboard", lambda self, text: copied.append(text))
    app = SftApp(start="training")
    async with app.run_test(size=(100, 30)) as pilot:
        await settle(pilot)
        assert any(c.title.startswith("Export as") for c in app.get_system_commands(app.screen))
        assert "training_export_peer" in {b.id for b in TrainingScreen.BINDINGS}
        await pilot.press("ctrl+t")
        await pilot.pause()
        dialog = app.screen
        assert isinstance(dialog, PeerExportScreen)
        config = app.session.config
        assert dialog.query_one("#export-text").text == export_config(config, "axolotl")
        # switch to the TRL script
        dialog.query_one("#export-target").value = "trl"
        await pilot.pause()
        assert dialog.query_one("#export-text").text == export_config(config, "trl")
        assert dialog.query_one("#export-path").value.endswith("train_trl.py")
        dialog.query_one("#export-copy").press()
        await pilot.pause()
        assert copied == [export_config(config, "trl")]
        target = tmp_path / "out" / "train.py"
        dialog.query_one("#export-path").value = str(target)
        dialog.query_one("#export-save").press()
        await pilot.pause()
        assert target.read_text() == export_config(config, "trl")
        # a second save to the same file asks first (Save again overwrites)
        target.write_text("mine")
        dialog.query_one("#export-save").press()
        await pilot.pause()
        assert target.read_text() == "mine" and "already exists" in str(dialog.query_one("#export-status").render())
        dialog.query_one("#export-save").press()
        await pilot.pause()
        assert target.read_text() == export_config(config, "trl")
        # LLaMA-Factory writes its dataset_info.json beside the YAML
        dialog.query_one("#export-target").value = "llamafactory"
        await pilot.pause()
        lf = tmp_path / "lf" / "sft.yaml"
        dialog.query_one("#export-path").value = str(lf)
        dialog.query_one("#export-save").press()
        await pilot.pause()
        assert lf.exists() and (lf.parent / "dataset_info.json").exists()
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, TrainingScreen)
