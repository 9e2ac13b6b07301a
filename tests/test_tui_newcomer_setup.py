"""A newcomer's first hour on the setup screens (model, data, training), as pilot tests.

Each test pins one thing a first-time user tripped over: focus that could not be seen, toggles that
said nothing, a dropdown that threw the focus away, Ctrl+T that did nothing from the rows table, a bad
JSON line counted as usable and shown off-screen, masked and trained text told apart by a shade only.
What is checked is what the terminal shows: the screen's rendered cells (text and style).
"""

from __future__ import annotations

import json

import pytest
from rich.style import Style

from sft_tui.app import SftApp
from sft_tui.core.setup.session import Session
from test_tui_setup import settle, setup_env, text_of, type_into, wait_for  # noqa: F401  (fixture re-used)

THEMES = ["sft-dark", "sft-high-contrast", "sft-light"]


# --------------------------------------------------------------------------- what the screen shows


def screen_lines(app) -> list[str]:
    """The terminal's text, one string per row, as the user sees it now."""
    return ["".join(seg.text for seg in strip) for strip in app.screen._compositor.render_strips()]


def luminance(color) -> float:
    """WCAG relative luminance of a rich Color."""
    r, g, b = color.get_truecolor()

    def channel(c: int) -> float:
        c = c / 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def contrast(a, b) -> float:
    la, lb = sorted((luminance(a), luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def field_cells(app, widget) -> list[tuple[str, Style]]:
    """(character, style) of each cell of a one-line field's row, inside the field."""
    region = widget.region
    cells: list[tuple[str, Style]] = []
    x = 0
    for seg in app.screen._compositor.render_strips()[region.y]:
        for ch in seg.text:
            if region.x <= x < region.right:
                cells.append((ch, seg.style or Style.null()))
            x += 1
    return cells


def field_look(app, widget):
    """The field's background (the one most of its cells have) and the (colour, background) of each of
    its characters (a selection or the cursor may sit on another background)."""
    from collections import Counter

    cells = field_cells(app, widget)
    background = Counter(style.bgcolor for _, style in cells).most_common(1)[0][0]
    text = [(style.color, style.bgcolor) for ch, style in cells if ch.strip()]
    return background, text


# --------------------------------------------------------------------------- focus


@pytest.mark.parametrize("theme", THEMES)
async def test_focus_is_unmistakable_in_every_theme(setup_env, theme):
    """The focused field's background differs from the unfocused one at 3:1 or more (WCAG's figure for
    a focus indicator), for a text field, a dropdown and a toggle. Before: a 5% tint (about 1.1:1)."""
    app = SftApp(start="training")
    app.theme = theme
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        for selector in ("#f-training-learning-rate", "#f-method-type", "#f-method-use-dora"):
            widget = screen.query_one(selector)
            widget.scroll_visible(animate=False)
            screen.set_focus(None)
            await pilot.pause()
            before, _ = field_look(app, widget)
            widget.focus()
            await pilot.pause()
            after, text = field_look(app, widget)
            assert before is not None and after is not None, selector
            ratio = contrast(before, after)
            assert ratio >= 3.0, f"{theme} {selector}: focus changes the background by only {ratio:.2f}:1"
            # and the text on the focused field stays readable
            assert text and all(color is not None and bg is not None for color, bg in text), (theme, selector)
            worst = min(contrast(color, bg) for color, bg in text)
            assert worst >= 4.5, f"{theme} {selector}: text on the focused field at {worst:.2f}:1"


# --------------------------------------------------------------------------- toggles


async def test_toggles_say_on_or_off(setup_env):
    app = SftApp(start="training")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        dora = app.screen.query_one("#f-method-use-dora")
        dora.focus()
        dora.scroll_visible(animate=False)
        await pilot.pause()
        row = dora.region.y
        assert "off" in screen_lines(app)[row] and "DoRA" in screen_lines(app)[row]
        await pilot.press("space")
        await pilot.pause()
        line = screen_lines(app)[dora.region.y]
        assert "on" in line and "off" not in line, line
        assert app.session.config.method.use_dora is True


# --------------------------------------------------------------------------- data screen


async def test_choosing_a_mapping_value_keeps_the_focus_on_that_dropdown(setup_env):
    session = Session()
    session.config.data.path = "sample:reviews_qa.csv"  # question/answer: needs a mapping
    app = SftApp(session=session, start="data")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.screen.query_one("#data-tabs").active = "tab-mapping"
        await settle(pilot)
        app.screen.query_one("#map-instruction").focus()
        await pilot.press("enter", "down", "enter")  # (none) -> question
        await settle(pilot)
        assert app.session.config.data.columns == {"instruction": "question"}
        assert app.focused is not None and app.focused.id == "map-instruction", app.focused
        await pilot.press("tab")  # on to the next field (alpaca's required ones come first), as a user would
        await pilot.pause()
        assert app.focused.id == "map-output", app.focused
        await pilot.press("enter", "down", "down", "enter")  # output <- answer
        await settle(pilot)
        assert app.session.config.data.columns == {"instruction": "question", "output": "answer"}
        assert app.focused.id == "map-output", app.focused
        assert app.screen.detection.format == "alpaca"


async def test_ctrl_t_tokenizes_from_the_rows_table(setup_env):
    app = SftApp(start="data")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        app.screen.query_one("#rows").focus()
        await pilot.pause()
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: app.session.data_report is not None, timeout=90)
        await settle(pilot)
        assert app.screen.query_one("#data-tabs").active == "tab-tokenize"
        assert "rows read" in text_of(pilot, "#stats-text")


def _one_bad_line(folder) -> str:
    good = {"instruction": "Say hi.", "output": "Hi."}
    lines = [json.dumps(good)] * 15 + ['{"instruction": "broken'] + [json.dumps(good)] * 14
    (folder / "bad.jsonl").write_text("\n".join(lines) + "\n")
    return "bad.jsonl"


async def test_a_bad_json_line_is_counted_out_and_shown_where_the_eye_is(setup_env):
    session = Session()
    session.config.data.path = _one_bad_line(setup_env)
    app = SftApp(session=session, start="data")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        # on arrival: the skipped line is named at the top, not only after tokenizing
        top = "\n".join(screen_lines(app)[:6])
        assert "line 16" in top, top
        await pilot.press("ctrl+t")
        await wait_for(pilot, lambda: app.session.data_report is not None, timeout=90)
        await settle(pilot)
        shown = "\n".join(screen_lines(app))
        assert "30 rows read, 29 usable, 1 with problems" in shown, shown
        assert "line 16" in shown and "not valid JSON" in shown, shown  # without scrolling, at 80×24


async def test_masked_and_trained_text_differ_by_more_than_colour(setup_env):
    app = SftApp(start="data")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        preview = app.screen.query_one("#preview-text")
        region = preview.region
        masked, trained = set(), set()
        strips = app.screen._compositor.render_strips()
        for y in range(region.y, region.bottom):
            for seg in strips[y]:
                if not seg.text.strip() or seg.style is None:
                    continue
                if "Read the review" in seg.text or "I bought it" in seg.text:
                    masked.add((bool(seg.style.underline), bool(seg.style.bold), seg.style.color, seg.style.bgcolor))
                if "Sentiment: positive" in seg.text:
                    trained.add((bool(seg.style.underline), bool(seg.style.bold), seg.style.color, seg.style.bgcolor))
        assert masked and trained, (masked, trained)
        # a marker a colour-blind eye or a monochrome terminal sees: trained text is bold and underlined,
        # the masked prompt is neither ...
        assert all(underline and bold for underline, bold, _, _ in trained), trained
        assert not any(underline or bold for underline, bold, _, _ in masked), masked
        # ... and it is dim: fainter against the background than the trained text (Textual draws dim
        # text by blending it into the background, so this is what the cells show)
        for _, _, color, bg in masked:
            for _, _, t_color, t_bg in trained:
                assert contrast(color, bg) < 0.8 * contrast(t_color, t_bg), (color, t_color)
        legend = text_of(pilot, "#preview-summary")
        assert "dim" in legend and "underlined" in legend, legend


# --------------------------------------------------------------------------- text that fits


async def test_a_long_path_is_shortened_in_the_side_panel_and_whole_on_focus(setup_env):
    """At 80×24 the pre-flight's 'data file not found: PATH' used to break the path across four lines
    of the side panel; now its middle is '…' (the file name whole), and Tab to it shows it in full."""
    folder = "/home/someone/projects/fine-tuning/customer-support-2024"
    session = Session()
    session.config.data.path = f"{folder}/train_conversations.jsonl"
    app = SftApp(session=session, start="training")
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        box = app.screen.query_one("#preflight")
        shown = text_of(pilot, "#preflight")
        assert "…/train_conversations.jsonl" in shown and folder not in shown, shown
        assert "'data' on the Data screen" in shown, shown  # the fix names the on-screen field
        box.focus()
        await pilot.pause()
        assert folder in "".join(text_of(pilot, "#preflight").split()), text_of(pilot, "#preflight")
        await pilot.press("tab")  # on: shortened again
        assert folder not in "".join(text_of(pilot, "#preflight").split())
