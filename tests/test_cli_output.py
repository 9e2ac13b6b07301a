"""What a newcomer reads: `data inspect` shows trained text without colour and puts problems where the
eye is; hints in the app name the on-screen field instead of the config key."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from sft_tui.cli import main
from sft_tui.core.hints import SCREEN_FIELDS, field_place, screen_hint


@pytest.fixture(scope="module")
def broken_file(tmp_path_factory):
    """31 alpaca lines, the 7th cut off mid-object."""
    path = tmp_path_factory.mktemp("data") / "broken.jsonl"
    lines = [json.dumps({"instruction": f"Say {i}", "input": "", "output": f"Answer {i}"}) for i in range(31)]
    lines[6] = '{"instruction": "Say 6", "output": '
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def inspected(broken_file):
    """(piped text output, JSON report) of `sft-tui data inspect FILE --model demo --rows 2`."""
    from contextlib import redirect_stdout

    out = {}
    for mode in ("json", "text"):
        buf = io.StringIO()
        with redirect_stdout(buf):
            code = main(["data", "inspect", str(broken_file), "--model", "demo", "--rows", "2"]
                        + (["--json"] if mode == "json" else []))
        assert code == 0
        out[mode] = buf.getvalue()
    return out["text"], json.loads(out["json"])


# --------------------------------------------------------------------------- counts and problems


def test_a_broken_json_line_is_counted_out_where_the_eye_is(inspected):
    text, report = inspected
    assert report["rows"] == 30 and report["problems"]["bad_json"]["count"] == 1  # the core's shape is unchanged
    lines = text.splitlines()
    counts = next(i for i, line in enumerate(lines) if line.startswith("rows:"))
    assert lines[counts].startswith("rows: 31 lines, usable 30, left out 1 (1 bad JSON line: line 7)")
    assert "details under 'problems' below" in lines[counts + 1]
    assert counts < lines.index("problems") and counts <= 4  # right after the format, before the statistics


def test_problem_summary_lists_places_and_counts_the_rest():
    from sft_tui.cli_data import honest_counts, problem_summary

    r = {"paths": ["a.jsonl"], "line_kind": "line", "rows": 40, "rows_ok": 37, "problems": {
        "bad_json": {"count": 2, "about": "", "examples": [{"source": "a.jsonl", "line": 3, "message": "x"},
                                                           {"source": "a.jsonl", "line": 9, "message": "x"}]},
        "missing_field": {"count": 7, "about": "", "examples": [
            {"source": "a.jsonl", "line": n, "message": "x"} for n in (4, 5, 6, 8, 10)]},
    }}
    from sft_tui.core.data.conversation import ProblemLog
    from sft_tui.core.data.report import DataReport

    report = DataReport(paths=r["paths"], rows=40, rows_ok=37, problems=ProblemLog.from_dict(r["problems"]))
    assert honest_counts(report.to_dict()) == (42, 37, 5)
    assert problem_summary(r, ["bad_json", "missing_field"]) == [
        "2 bad JSON lines: lines 3, 9", "7 rows missing a required field: lines 4, 5, 6, 8, 10 and 2 more"]


# --------------------------------------------------------------------------- trained text is marked


def test_piped_rows_mark_exactly_the_trained_text(inspected):
    text, report = inspected
    assert "⟦…⟧ marks the trained text" in text  # the legend
    for sample in report["samples"]:
        rendered = "".join(chunk for chunk, _ in sample["segments"])
        trained = [chunk for chunk, flag in sample["segments"] if flag]
        assert trained
        start = text.index(f"row {sample['line']} — ")
        body = text[text.index("\n", start) + 1:]
        shown = body[:len(rendered) + 2 * len(trained)]
        assert re.findall(r"⟦(.*?)⟧", shown, flags=re.S) == trained
        assert shown.replace("⟦", "").replace("⟧", "") == rendered


def test_terminal_rows_dim_the_prompt_and_reverse_the_trained_text():
    from rich.console import Console

    from sft_tui.cli_data import marked_text

    segments = [["<|user|>Say 0\n<|assistant|>", False], ["Answer ", True], ["0<|end|>", True], ["\n", False]]
    buf = io.StringIO()
    Console(file=buf, force_terminal=True, color_system="standard", width=80).print(marked_text(segments))
    out = buf.getvalue()
    assert "\x1b[2m<|user|>" in out  # dim prompt
    assert re.search(r"⟦\x1b\[0m\x1b\[1;7;32mAnswer 0<\|end\|>\x1b\[0m\x1b\[1;32m⟧", out)  # one pair, reversed
    plain = marked_text(segments, "[[", "]]").plain
    assert plain == "<|user|>Say 0\n<|assistant|>[[Answer 0<|end|>]]\n"


def test_marks_fall_back_to_ascii_where_the_output_cannot_encode_them():
    from rich.console import Console

    from sft_tui.cli_data import trained_marks

    class AsciiOut(io.StringIO):
        encoding = "ascii"

    assert trained_marks(Console(file=AsciiOut())) == ("[[", "]]")
    assert trained_marks(Console(file=io.StringIO())) == ("⟦", "⟧")


# --------------------------------------------------------------------------- hints in the app's words


@pytest.mark.parametrize("hint,expected", [
    ("fix the line, or set data.skip_bad_rows: true to leave bad lines out",
     "fix the line, or turn on 'skip bad rows' on the Data screen's Mapping tab to leave bad lines out"),
    ("lower training.batch_size or data.max_length, turn on training.gradient_checkpointing, or use "
     "method.type: qlora",
     "lower 'batch size' or 'max length', turn on 'grad checkpointing', or set 'method' to qlora on the "
     "Training screen"),
    ("lower training.learning_rate (try 10× smaller) or set training.precision: fp32",
     "lower 'learning rate' (try 10× smaller) or set 'precision' to fp32 on the Training screen"),
    ("this model ships its own Python code; set model.trust_remote_code: true only if you trust its authors",
     "this model ships its own Python code; turn on 'trust remote code' on the Training screen only if you "
     "trust its authors"),
    ("leave them out with data.skip_bad_rows: true, or train a format the model does not know "
     "(data.template: chatml)",
     "leave them out with 'skip bad rows' turned on, or train a format the model does not know "
     "('template' set to chatml on the Data screen's Mapping tab)"),
    ("check data.format and data.columns", "check 'format' on the Data screen and 'column mapping' on the Data "
                                           "screen's Mapping tab"),
    ("set data.packing: false.", "turn off 'packing' on the Training screen."),
    ("set data.max_length: 2048", "set 'max length' to 2048 on the Training screen"),
    ("no config words here", "no config words here"),
    ("set data.not_a_field: 3 (unknown keys stay)", "set data.not_a_field: 3 (unknown keys stay)"),
    ("", ""),
])
def test_screen_hint_names_the_field_on_screen(hint, expected):
    assert screen_hint(hint) == expected


def test_every_hint_the_core_gives_reads_without_config_keys():
    """The hints written for rows and for explained errors: every key they name has a field in the app."""
    from sft_tui.core.data.conversation import _HINTS
    from sft_tui.core.errors import explain

    errors = [RuntimeError("CUDA out of memory"), RuntimeError("loss is nan"), OSError(28, "No space left"),
              OSError("requires you to execute the configuration file; set trust_remote_code")]
    hints = list(_HINTS.values()) + [explain(exc).hint for exc in errors]
    key = re.compile(r"\b(?:model|data|method|training|output)\.[a-z_]+")
    for hint in hints:
        assert not key.search(screen_hint(hint)), (hint, screen_hint(hint))


def test_data_screen_labels_are_the_ones_the_screen_draws():
    source = (Path(__file__).resolve().parent.parent / "sft_tui" / "screens" / "data.py").read_text()
    for key, (label, where) in SCREEN_FIELDS.items():
        if key.startswith("data.") and key != "data.columns":
            assert f'Label("{label}")' in source, key
    assert 'TabPane("Mapping"' in source
    assert field_place("training.save_total_limit") == ("keep checkpoints", "the Training screen")
    assert field_place("data.nope") is None
