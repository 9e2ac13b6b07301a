"""Data that leaves nothing to train is reported, never a crash inside datasets."""

from __future__ import annotations

import pytest

from sft_tui.core.config import Config
from sft_tui.core.data import inspect_data, prepare_datasets
from sft_tui.core.errors import UserError


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(demo_model_dir)


def test_every_row_too_long_is_a_clear_error(tokenizer):
    config = Config()
    config.data.max_length = 16
    config.data.truncation = "drop"
    for _ in range(2):  # the second time must not be served a broken empty cache entry
        with pytest.raises(UserError) as info:
            prepare_datasets(config, tokenizer)
        assert "longer than data.max_length 16" in info.value.message
        assert "truncation" in info.value.hint


def test_inspect_reports_zero_usable_rows(tokenizer):
    config = Config()
    config.data.max_length = 16
    config.data.truncation = "drop"
    data = inspect_data(config, tokenizer).to_dict()
    assert data["rows"] == 2000 and data["rows_ok"] == 0
    assert data["problems"]["too_long"]["count"] == 2000
