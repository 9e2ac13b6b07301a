"""Loading is quiet and exact: no third-party bars or logs on the terminal, file lines (not pyarrow's
block-relative rows) in messages, a single-record JSON file is one row, and Mistral tokenizers load
without transformers' regex warning."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sft_tui.core.errors import UserError

ROWS = 30
BAD_LINE = 21  # pyarrow calls it "row 20"


def _alpaca_lines(n: int = ROWS) -> list[str]:
    return [json.dumps({"instruction": f"Question {i}?", "output": f"Answer {i}."}) for i in range(n)]


def _dup_key_file(path: Path, line: int = BAD_LINE, n: int = ROWS) -> Path:
    """Line ``line`` names "output" twice: Python's json takes the last, pyarrow refuses the file."""
    lines = _alpaca_lines(n)
    lines[line - 1] = '{"instruction": "Question?", "output": "Answer.", "output": 5}'
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """A cache datasets has never seen (so it generates, and would draw its bars), and bars that are
    on as in a fresh process."""
    import datasets

    monkeypatch.setenv("SFT_TUI_CACHE_DIR", str(tmp_path / "cache"))
    datasets.enable_progress_bars()
    datasets.utils.logging.set_verbosity_warning()
    yield tmp_path / "cache"
    datasets.disable_progress_bars()


def _quiet(text: str) -> None:
    assert "%|" not in text and "Generating train split" not in text and "Failed to load JSON" not in text, text


# --------------------------------------------------------------------------- (a) quiet


def test_data_inspect_prints_no_third_party_progress(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(_alpaca_lines()) + "\n")
    env = dict(os.environ, SFT_TUI_CACHE_DIR=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", COLUMNS="100")
    proc = subprocess.run([sys.executable, "-m", "sft_tui", "data", "inspect", str(data)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "format: alpaca" in proc.stdout
    _quiet(proc.stdout + proc.stderr)


def test_loading_rows_prints_nothing_even_when_it_fails(fresh_cache, tmp_path, capfd):
    from sft_tui.core.data.loading import load_rows_detailed

    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(_alpaca_lines()) + "\n")
    assert len(load_rows_detailed(str(good)).dataset) == ROWS
    with pytest.raises(UserError):
        load_rows_detailed(str(_dup_key_file(tmp_path / "bad.jsonl")))
    printed = capfd.readouterr()
    _quiet(printed.out + printed.err)
    assert printed.out == "" and printed.err == ""


def test_loading_a_model_and_tokenizer_prints_no_bars(demo_model_dir, capfd):
    import torch
    from transformers.utils import logging as hf_logging

    from sft_tui.core.config import Config
    from sft_tui.core.models.load import load_causal_lm, load_tokenizer

    hf_logging.enable_progress_bar()
    capfd.readouterr()
    load_tokenizer(demo_model_dir)
    load_causal_lm(demo_model_dir, Config(), torch.float32)
    printed = capfd.readouterr()
    _quiet(printed.out + printed.err)


# --------------------------------------------------------------------------- (b) file lines


def test_a_line_the_fast_reader_refuses_is_named_by_its_file_line(fresh_cache, tmp_path):
    from sft_tui.core.data.loading import load_rows_detailed

    bad = _dup_key_file(tmp_path / "dup.jsonl")
    with pytest.raises(UserError) as err:
        load_rows_detailed(str(bad))
    assert f"{bad}:{BAD_LINE}:" in str(err.value) and "'output' appears twice" in str(err.value)
    assert "in row" not in str(err.value)
    loaded = load_rows_detailed(str(bad), skip_bad_rows=True)
    assert len(loaded.dataset) == ROWS - 1
    assert [e["line"] for e in loaded.problems.examples["bad_json"]] == [BAD_LINE]
    assert sorted(loaded.dataset["__line__"]) == [n for n in range(1, ROWS + 1) if n != BAD_LINE]


def test_pyarrows_row_becomes_the_file_line_when_no_line_scan_explains_it(fresh_cache, tmp_path, monkeypatch):
    """pyarrow's "in row 20" counts from 0 within its block and skips blank lines; the message
    names line 22 of a file with a blank line before it."""
    from sft_tui.core.data import loading

    lines = _alpaca_lines()
    lines[20] = '{"instruction": "Question?", "output": "Answer.", "output": 5}'
    lines.insert(3, "")  # the bad object is now on line 22
    bad = tmp_path / "blank.jsonl"
    bad.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(loading, "scan_jsonl", lambda *a, **k: [])  # leave it to pyarrow's own message
    with pytest.raises(UserError) as err:
        loading.load_rows_detailed(str(bad))
    text = str(err.value)
    assert text.startswith(f"{bad}:22: could not read the file") and "row 20" not in text, text
    assert "specified twice" in text


def test_row_numbers_count_within_a_batch(tmp_path, monkeypatch):
    """A big file is parsed in batches; the row pyarrow names is found in the batch that fails."""
    from sft_tui.core.data import loading

    bad = _dup_key_file(tmp_path / "big.jsonl", line=150, n=200)
    monkeypatch.setattr(loading, "_BATCH", 2048)  # ~40 lines a batch
    assert loading._arrow_failure_line(bad, "Column(/output) was specified twice in row 3") == 150
    assert loading._arrow_failure_line(bad, "something else entirely") is None


def test_lone_surrogates_are_bad_lines_too(tmp_path):
    from sft_tui.core.data.loading import scan_jsonl

    lines = _alpaca_lines(5)
    lines[2] = '{"instruction": "a\\ud800", "output": "b"}'
    lines[3] = '{"instruction": "\\ud83d\\ude00 fine", "output": "b"}'  # a proper pair
    path = tmp_path / "s.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert [line for line, _ in scan_jsonl(path)] == [3]


# --------------------------------------------------------------------------- (c) one record in one object

SHAREGPT = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
MESSAGES = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
ALPACA = {"instruction": "Say hello.", "input": "", "output": "hello"}


@pytest.mark.parametrize("record,fmt", [(SHAREGPT, "sharegpt"), (MESSAGES, "messages"), (ALPACA, "alpaca")])
@pytest.mark.parametrize("indent", [2, None])
def test_a_file_holding_one_record_is_one_row(fresh_cache, tmp_path, record, fmt, indent):
    from sft_tui.core.data import detect_format
    from sft_tui.core.data.loading import load_rows_detailed

    path = tmp_path / "one.json"
    path.write_text(json.dumps(record, indent=indent))
    ds = load_rows_detailed(str(path)).dataset
    assert len(ds) == 1
    assert detect_format(ds).format == fmt


def test_data_inspect_reads_a_pretty_printed_sharegpt_record(tmp_path, capsys, monkeypatch):
    from sft_tui.cli import main

    monkeypatch.setenv("SFT_TUI_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "one.json"
    path.write_text(json.dumps(SHAREGPT, indent=2))
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "format: sharegpt" in out and "rows: 1" in out


def test_tables_in_one_object_are_still_tables(fresh_cache, tmp_path):
    from sft_tui.core.data.loading import load_rows_detailed

    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"instruction": ["a", "b"], "output": ["c", "d"]}, indent=2))
    records = tmp_path / "records.json"
    records.write_text(json.dumps({"data": [ALPACA, ALPACA, ALPACA]}, indent=2))
    assert len(load_rows_detailed(str(columns)).dataset) == 2
    assert len(load_rows_detailed(str(records)).dataset) == 3


# --------------------------------------------------------------------------- (d) Mistral regex


@pytest.fixture(scope="module")
def tekken_folder(tmp_path_factory) -> Path:
    """Mistral-Nemo's tekken tokenizer as a transformers folder, beside a config.json as a Mistral
    model folder from the hub has it (model_type mistral, saved by transformers 4)."""
    mistral_common = pytest.importorskip("mistral_common")
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"
    if not tekken.exists():
        pytest.skip("mistral-common ships no tekken_240718.json")
    folder = tmp_path_factory.mktemp("tekken")
    convert_tekken_tokenizer(str(tekken)).save_pretrained(str(folder))
    (folder / "config.json").write_text(json.dumps({"architectures": ["MistralForCausalLM"], "model_type": "mistral",
                                                    "transformers_version": "4.43.0.dev0"}))
    return folder


def test_a_mistral_tokenizer_loads_without_the_regex_warning(tekken_folder, capfd):
    from transformers.utils import logging as hf_logging

    from sft_tui.core.models.load import load_tokenizer, mistral_regex_flag

    assert mistral_regex_flag(tekken_folder) is True
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        capfd.readouterr()
        tok = load_tokenizer(tekken_folder)
        printed = capfd.readouterr()
    finally:
        hf_logging.set_verbosity(previous)
    assert "regex" not in printed.err and "fix_mistral_regex" not in printed.err, printed.err
    assert tok("Hello World!", add_special_tokens=False)["input_ids"] == [22177, 5325, 1033]  # as mistral-common


def test_the_mistral_flag_only_where_transformers_asks(tmp_path):
    from sft_tui.core.models.load import mistral_regex_flag

    def folder(name: str, config: dict | None, pre: dict | None) -> Path:
        f = tmp_path / name
        f.mkdir()
        if config is not None:
            (f / "config.json").write_text(json.dumps(config))
        if pre is not None:
            (f / "tokenizer.json").write_text(json.dumps({"pre_tokenizer": pre}))
        return f

    split = {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "x"}}, {"type": "ByteLevel"}]}
    meta = {"type": "Metaspace", "replacement": "▁"}
    old = {"model_type": "mistral", "transformers_version": "4.42.0"}
    assert mistral_regex_flag(folder("tekken", old, split)) is True
    # sentencepiece Mistral 7B: the fix would replace its pre-tokenizer; False only silences the warning
    assert mistral_regex_flag(folder("spm", old, meta)) is False
    assert mistral_regex_flag(folder("new", {**old, "transformers_version": "5.1.0"}, split)) is None
    assert mistral_regex_flag(folder("llama", {"model_type": "llama"}, split)) is None
    assert mistral_regex_flag(folder("adapter", None, split)) is None
