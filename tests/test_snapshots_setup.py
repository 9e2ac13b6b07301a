"""SVG snapshots of the setup screens at 80×24 and 120×40, in the dark and the high-contrast theme.

Views: the model screen; the data screen's Rows tab (the rendered training text, masked vs trained),
its Mapping tab (a CSV whose columns need mapping: the long "could not tell the format" line) and its
Tokenize tab (a file with one bad JSON line: the problem under the headline); the training form with
a field focused (the focus bar) and its on/off toggles.

Inputs are made deterministic (empty HF cache, no GPU, CPU-only machine, relative paths) and every
worker is awaited before the frame is captured. Regenerate with ``pytest --snapshot-update``, then
read every changed SVG's text as a newcomer would (nothing cut, nothing run together) before committing.
"""

from __future__ import annotations

import json

import pytest

from sft_tui.app import SftApp
from sft_tui.core.setup.session import Session
from test_tui_setup import settle, setup_env, wait_for  # noqa: F401  (fixture re-used)

SIZES = [(80, 24), (120, 40)]
THEMES = ["sft-dark", "sft-high-contrast"]
VIEWS = ["model", "data", "data-mapping", "data-tokenize", "training"]


def _bad_line_file(folder) -> str:
    good = {"instruction": "Say hi.", "output": "Hi."}
    lines = [json.dumps(good)] * 15 + ['{"instruction": "broken'] + [json.dumps(good)] * 14
    (folder / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return "bad.jsonl"  # relative: the test runs in its tmp folder, so the frame holds no machine path


def _app(view: str, folder) -> SftApp:
    session = Session()
    if view == "data-mapping":
        session.config.data.path = "sample:reviews_qa.csv"
    elif view == "data-tokenize":
        session.config.data.path = _bad_line_file(folder)
    return SftApp(session=session, start=view.split("-")[0])


async def _ready(pilot, view: str) -> None:
    app = pilot.app
    await settle(pilot)
    screen = app.screen
    if view == "data-mapping":
        screen.query_one("#data-tabs").active = "tab-mapping"
        await settle(pilot)
    elif view == "data-tokenize":
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: app.session.data_report is not None, timeout=90)
        await settle(pilot)
    screen.set_focus(None)  # no cursor in the capture ...
    if view == "training":
        screen.query_one("#f-method-type").focus()  # ... except the training form's: the focus bar
    await pilot.pause()


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("view", VIEWS)
def test_setup_screen_snapshot(view, size, theme, snap_compare, setup_env):  # noqa: F811
    app = _app(view, setup_env)
    app.theme = theme

    async def ready(pilot) -> None:
        await _ready(pilot, view)

    assert snap_compare(app, terminal_size=size, run_before=ready)
