"""The checks users lose runs to, each counted with examples in the report (and kept or left out)."""

from __future__ import annotations

import json

import pytest

from sft_tui.core.config import DataConfig
from sft_tui.core.data import inspect_data
from sft_tui.core.data.profile import stop_token_ids, template_profile
from sft_tui.testing.toy import build_toy_tokenizer


@pytest.fixture(scope="module")
def chatml():
    return build_toy_tokenizer("chatml")


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def chat(*pairs, system=None):
    msgs = [{"role": "system", "content": system}] if system else []
    for q, a in pairs:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"messages": msgs}


def test_render_mismatch_names_the_first_differing_token(tmp_path, chatml):
    tok = build_toy_tokenizer("none")
    # the generation prompt ends with a space that merges into the answer's first word when trained
    tok.chat_template = ("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
                         "{% if add_generation_prompt %}assistant: {% endif %}")
    report = inspect_data(DataConfig(path=write(tmp_path / "d.jsonl", [chat(("great phone", "positive"))] * 3)), tok)
    info = report.problems.to_dict()["render_mismatch"]
    assert info["count"] == 3
    assert "training has 'Ġpositive', the inference prompt has 'Ġ'" in info["examples"][0]["message"]
    assert report.rows_ok == 3  # a warning: the rows still train


def test_an_answer_that_does_not_end_on_a_stop_token_is_flagged(tmp_path):
    tok = build_toy_tokenizer("none")  # a base vocabulary: <|im_end|> is not one token of it
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}</answer>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tok.add_special_tokens({"eos_token": "<|endoftext|>"})
    assert template_profile(tok).end_of_turn == "</answer>"
    report = inspect_data(DataConfig(path=write(tmp_path / "d.jsonl", [chat(("q", "a"))] * 2)), tok)
    assert report.problems.counts.get("no_stop_token") == 2


def test_double_bos_control_bytes_and_their_line_numbers(tmp_path):
    tok = build_toy_tokenizer("llama3")
    rows = [chat(("<|begin_of_text|>hello", "hi")), chat(("fine \x1b[31mred\x1b[0m", "ok")), chat(("q", "a"))]
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}{{ m.content }}<|eot_id|>{% endfor %}"
                         "{% if add_generation_prompt %}{% endif %}")
    report = inspect_data(DataConfig(path=write(tmp_path / "d.jsonl", rows)), tok)
    problems = report.problems.to_dict()
    assert problems["double_bos"]["examples"][0]["line"] == 1
    assert problems["control_chars"]["examples"][0]["line"] == 2 and "\\x1b" in problems["control_chars"]["examples"][0]["message"]
    assert report.rows_ok == 3


def test_a_base_tokenizer_without_a_chat_template_is_warned(tmp_path):
    tok = build_toy_tokenizer("none")
    tok.add_special_tokens({"eos_token": "<|endoftext|>"})
    report = inspect_data(DataConfig(path=write(tmp_path / "d.jsonl", [chat(("q", "a"))])), tok)
    # the toy vocabulary has <|im_start|> as one token, so no warning; a vocabulary without it warns
    assert not any("no chat template" in w for w in report.warnings)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz<>|_ \n[UNK]")},
                                      unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    bare = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="|")
    report = inspect_data(DataConfig(path=write(tmp_path / "e.jsonl", [chat(("q", "a"))])), bare)
    assert any("no chat template" in w and "<|im_start|>" in w for w in report.warnings)


def test_stop_ids_are_the_templates_end_of_turn_even_when_eos_differs():
    tok = build_toy_tokenizer("none")
    from sft_tui.testing.toy import CHATML_TEMPLATE

    tok.chat_template = CHATML_TEMPLATE
    tok.add_special_tokens({"eos_token": "<|endoftext|>"})
    ids = stop_token_ids(tok)
    assert ids[0] == tok.convert_tokens_to_ids("<|im_end|>") and tok.eos_token_id in ids


def test_expand_makes_one_training_row_per_answer(tmp_path, chatml):
    rows = [chat(("q1", "a1"), ("q2", "a2"), ("q3", "a3")), chat(("q", "a"))]
    path = write(tmp_path / "d.jsonl", rows)
    final = inspect_data(DataConfig(path=path), chatml)
    expand = inspect_data(DataConfig(path=path, multi_turn="expand"), chatml, samples=4)
    assert (final.rows_ok, final.examples) == (2, 2)
    assert (expand.rows_ok, expand.examples, expand.rows_bad) == (2, 4, 0)
    trained = ["".join(t for t, f in s["segments"] if f) for s in expand.samples[:3]]
    assert trained == ["a1<|im_end|>", "a2<|im_end|>", "a3<|im_end|>"]


def test_roles_after_the_column_mapping_are_reported(tmp_path, chatml):
    path = write(tmp_path / "d.jsonl", [{"question": "q", "system": "s", "answer": "a"}])
    report = inspect_data(DataConfig(path=path, columns={"instruction": "question", "output": "answer"}), chatml)
    assert report.roles["user"] == "column question"
    assert report.roles["system"] == "column system"
    assert report.roles["assistant"].startswith("column answer")


def test_template_notes_name_only_what_the_rows_hold(tmp_path, chatml):
    plain = inspect_data(DataConfig(path=write(tmp_path / "a.jsonl", [chat(("q", "a"))])), chatml)
    assert plain.template_notes == []
    rows = [{"messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a", "reasoning_content": "because"}]}]
    thought = inspect_data(DataConfig(path=write(tmp_path / "b.jsonl", rows)), chatml)
    assert any("drops reasoning" in n for n in thought.template_notes)
    assert "<think>\nbecause\n</think>" in "".join(t for t, f in thought.samples[0]["segments"] if f)


def test_render_mismatch_after_a_special_token_is_found_too(tmp_path, chatml):
    # the parity check tokenizes only the prompt's piece after its last special token: it must still
    # see the space of "assistant: " merge into the answer's first word
    tok = build_toy_tokenizer("chatml")
    tok.chat_template = ("{% for m in messages %}<|im_start|>{{ m.role }}: {{ m.content }}<|im_end|>{% endfor %}"
                         "{% if add_generation_prompt %}<|im_start|>assistant: {% endif %}")
    report = inspect_data(DataConfig(path=write(tmp_path / "d.jsonl", [chat(("q", "positive"))] * 2)), tok)
    assert report.problems.counts.get("render_mismatch") == 2
    clean = inspect_data(DataConfig(path=write(tmp_path / "e.jsonl", [chat(("q", "positive"))] * 2)), chatml)
    assert clean.problems.counts.get("render_mismatch") is None
