"""SVG snapshots of the Evaluate and Export screens (80×24 and 120×40, dark theme).

A synthetic finished run with an adapter config and a saved evaluation, in a private tmp folder
that is the test's home folder, so the screens show it as "~/runs/…" and the frame does not depend
on where the test runs (and parallel runs do not collide). Regenerate with
``pytest tests/test_snapshots_eval.py --snapshot-update``.
"""

from __future__ import annotations

import json

import pytest

from sft_tui.app import SftApp
from sft_tui.testing import synthetic
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings

RESULT = {
    "run": "demo-lora-example", "source": "adapter", "data": "validation split (200 rows)",
    "rows_loss": 200, "rows_generated": 3, "settings": {"max_new_tokens": 16, "temperature": 0.0},
    "models": {
        "base": {"eval_loss": 2.83, "perplexity": 16.95, "exact_match": 0.0, "rouge_l": 0.0, "bleu": 0.0,
                 "answer_words": 21.0, "trained_tokens": 1800},
        "tuned": {"eval_loss": 0.11, "perplexity": 1.12, "exact_match": 0.74, "rouge_l": 0.93, "bleu": 88.2,
                  "answer_words": 4.0, "trained_tokens": 1800},
    },
    "samples": [
        {"prompt": "Classify the sentiment and topic of this review.\nThe room was clean.",
         "reference": "Sentiment: positive. Topic: hotel.", "line": 1801,
         "base": "user user user", "tuned": "Sentiment: positive. Topic: hotel."},
    ],
    "time": 1795600000.0, "seconds": 12.5, "path": None,
}


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def finished_run(home):
    run = synthetic.write_run(home / "runs", "demo-lora-example", steps=40, run_path="runs/demo-lora-example")
    run.adapter_dir.mkdir(parents=True)
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "base_model_name_or_path": "demo"}))
    (run.path / "eval").mkdir()
    (run.path / "eval" / "eval-example.json").write_text(json.dumps(RESULT))
    return run


def app_for(run, start: str) -> SftApp:
    session = Session(runs_dir=run.path.parent)
    session.run = run
    return SftApp(session=session, start=start, settings=Settings(theme="sft-dark"))


async def settle(pilot) -> None:
    await pilot.pause(0.3)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.3)
    pilot.app.screen.set_focus(None)
    await pilot.pause(0.1)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("screen", ["evaluate", "export"])
def test_eval_and_export_snapshots(snap_compare, finished_run, home, screen, size, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(home / "hf-home"))
    # Drawn with no GGUF converter installed: the Export screen then says how to install one.
    from sft_tui.core.eval import export

    monkeypatch.delenv("SFT_TUI_LLAMA_CPP", raising=False)
    monkeypatch.setattr(export, "_package_converter", lambda: None)
    assert snap_compare(app_for(finished_run, screen), terminal_size=size, run_before=settle)
