"""SVG snapshots of the setup screens at 80×24 and 120×40 in the dark theme.

Inputs are made deterministic (empty HF cache, no GPU, CPU-only machine) and every worker is
awaited before the frame is captured. Regenerate with ``pytest --snapshot-update`` and commit.
"""

from __future__ import annotations

import pytest

from sft_tui.app import SftApp
from test_tui_setup import settle, setup_env  # noqa: F401  (fixture re-used)

SIZES = [(80, 24), (120, 40)]


async def _ready(pilot) -> None:
    await settle(pilot)
    pilot.app.screen.set_focus(None)  # no blinking cursor in the capture
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("step", ["model", "data", "training"])
def test_setup_screen_snapshot(step, size, snap_compare, setup_env):  # noqa: F811
    app = SftApp(start=step)
    assert app.theme == "sft-dark"
    assert snap_compare(app, terminal_size=size, run_before=_ready)
