"""SVG snapshots of the Runs screen (with its comparison overlay) and the Export screen at 80×24 and
120×40, in the dark and the high-contrast theme.

Runs: a finished run, a crashed one (its worker gone: "died") and a live one, the clock pinned so
durations do not move. Export: a finished run with an adapter in a private home folder (shown as
"~/runs/…"), offline, no GGUF converter installed. Regenerate with
``pytest tests/test_snapshots_runs_export.py --snapshot-update``, then read every changed SVG's text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pilot_support import settle_until, utc_clock
from sft_tui.app import SftApp
from sft_tui.core.settings import Settings
from sft_tui.core.setup.session import Session
from sft_tui.core.system.gpus import GpuSnapshot
from sft_tui.screens.runs import RunsScreen
from sft_tui.testing import synthetic

SIZES = [(80, 24), (120, 40)]
THEMES = ["sft-dark", "sft-high-contrast"]


class FakeSampler:
    def sample(self) -> GpuSnapshot:
        return GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)")


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    yield from utc_clock(monkeypatch)


settle = settle_until


def make_runs(root):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    runs = [
        synthetic.write_run(root, "demo-lora-done", steps=80, eval_every=20, save_every=40,
                            run_path="runs/demo-lora-done"),
        synthetic.write_run(root, "qwen-qlora-crashed", steps=35, max_steps=300, final=None, pid=dead.pid,
                            model="Qwen/Qwen2.5-0.5B-Instruct", method="qlora", seed=2,
                            run_path="runs/qwen-qlora-crashed"),
        synthetic.write_run(root, "llama-lora-demo", steps=120, max_steps=200, final=None, pid=os.getpid(),
                            eval_every=20, save_every=50, run_path="runs/llama-lora-demo"),
    ]
    for i, run in enumerate(runs):
        os.utime(run.config_path, (synthetic.T0 + i, synthetic.T0 + i))
    return runs


async def runs_ready(pilot) -> None:
    screen = pilot.app.screen
    assert isinstance(screen, RunsScreen)
    screen.now = synthetic.T0 + 600  # the live run's duration runs to "now": pin it
    await settle(pilot, lambda: screen.loaded)
    screen.refresh_runs()
    await pilot.pause(0.3)


def runs_app(root, theme: str) -> SftApp:
    return SftApp(session=Session(runs_dir=root), start="runs", settings=Settings(theme=theme),
                  gpu_sampler=FakeSampler())


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_snapshot(size, theme, snap_compare, tmp_path):
    make_runs(tmp_path)
    assert snap_compare(runs_app(tmp_path, theme), terminal_size=size, run_before=runs_ready)


def test_runs_crashed_run_highlighted_80x24(snap_compare, tmp_path):
    """The highlighted run decides the footer (Resume, not Stop) and the details line repeats every column."""
    make_runs(tmp_path)

    async def before(pilot):
        await runs_ready(pilot)
        await pilot.press("down")
        await pilot.pause(0.2)

    assert snap_compare(runs_app(tmp_path, "sft-dark"), terminal_size=(80, 24), run_before=before)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_runs_compare_snapshot(size, snap_compare, tmp_path):
    make_runs(tmp_path)

    async def before(pilot):
        await runs_ready(pilot)
        await pilot.press("space", "down", "space", "down", "space", "c")
        compare = pilot.app.screen
        await settle(pilot, lambda: len(compare.metrics) == 3)

    assert snap_compare(runs_app(tmp_path, "sft-dark"), terminal_size=size, run_before=before)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("SFT_TUI_LLAMA_CPP", raising=False)
    from sft_tui.core.eval import export

    monkeypatch.setattr(export, "_package_converter", lambda: None)  # drawn with no GGUF converter installed
    return tmp_path


def trained_run(home):
    run = synthetic.write_run(home / "runs", "demo-lora-example", steps=40, run_path="runs/demo-lora-example")
    run.adapter_dir.mkdir(parents=True)
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "base_model_name_or_path": "demo"}))
    return run


async def export_ready(pilot) -> None:
    await pilot.pause(0.3)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause(0.3)
    pilot.app.screen.set_focus(None)
    await pilot.pause(0.1)


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_export_snapshot(size, theme, snap_compare, home):
    run = trained_run(home)
    session = Session(runs_dir=run.path.parent)
    session.run = run
    app = SftApp(session=session, start="export", settings=Settings(theme=theme), gpu_sampler=FakeSampler())
    assert snap_compare(app, terminal_size=size, run_before=export_ready)


def test_export_scrolled_to_the_end_80x24(snap_compare, home):
    """What is below the fold at 80×24 (GGUF and the log) is reachable: End scrolls there."""
    run = trained_run(home)
    session = Session(runs_dir=run.path.parent)
    session.run = run
    app = SftApp(session=session, start="export", settings=Settings(theme="sft-dark"), gpu_sampler=FakeSampler())

    async def before(pilot):
        await export_ready(pilot)
        body = pilot.app.screen.query_one("#export-body")
        body.scroll_end(animate=False)
        await pilot.pause(0.3)

    assert snap_compare(app, terminal_size=(80, 24), run_before=before)
