"""SVG snapshots of the Evaluate and Export screens (80×24 and 120×40, dark and high-contrast themes).

A synthetic finished run with an adapter config and a saved evaluation (``write_evaluated_run``:
verdict, warning and twelve example rows), in a private tmp folder that is the test's home folder,
so the screens show it as "~/runs/…" and the frame does not depend on where the test runs (and
parallel runs do not collide). Regenerate with
``pytest tests/test_snapshots_eval.py --snapshot-update``.
"""

from __future__ import annotations

import pytest

from sft_tui.app import SftApp
from sft_tui.core.setup.session import Session
from sft_tui.core.settings import Settings
from test_verdict import write_evaluated_run


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


@pytest.fixture
def finished_run(home):
    # 12 evaluated review rows saved with their verdict (better, with an overfitting warning); the
    # last tuned answer runs to the token cap, so the examples box shows that note too.
    return write_evaluated_run(home / "runs", "demo-lora-example", run_path="runs/demo-lora-example")


def app_for(run, start: str, theme: str = "sft-dark") -> SftApp:
    session = Session(runs_dir=run.path.parent)
    session.run = run
    return SftApp(session=session, start=start, settings=Settings(theme=theme))


async def settle(pilot) -> None:
    await pilot.pause(0.3)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.3)
    pilot.app.screen.set_focus(None)
    await pilot.pause(0.1)


@pytest.mark.parametrize("theme", ["sft-dark", "sft-high-contrast"])
@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
@pytest.mark.parametrize("screen", ["evaluate", "export"])
def test_eval_and_export_snapshots(snap_compare, finished_run, home, screen, size, theme, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(home / "hf-home"))
    # Drawn with no GGUF converter installed: the Export screen then says how to install one.
    from sft_tui.core.eval import export

    monkeypatch.delenv("SFT_TUI_LLAMA_CPP", raising=False)
    monkeypatch.setattr(export, "_package_converter", lambda: None)
    assert snap_compare(app_for(finished_run, screen, theme), terminal_size=size, run_before=settle)
