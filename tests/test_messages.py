"""Every message shape becomes one turn shape: tool calls, tool results, content parts, reasoning."""

from __future__ import annotations

import json

import pytest

from sft_tui.core.data.conversation import BadRow
from sft_tui.core.data.formats import to_conversation
from sft_tui.core.data.profile import TemplateProfile
from sft_tui.core.data.templates import adapt_turns

WEATHER = {"name": "get_weather", "description": "weather", "parameters": {"type": "object", "properties": {}}}


def test_openai_tool_calls_with_json_string_arguments_and_tool_results():
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_abc", "content": "sunny"},
        {"role": "assistant", "content": "Sunny."}],
        "tools": [{"type": "function", "function": WEATHER}]}
    conv = to_conversation(row, "messages", {"tools": "tools"})
    call = conv.turns[1]
    assert call["content"] == "" and call["tool_calls"] == [
        {"type": "function", "id": "call_abc", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert "[{'" not in json.dumps(conv.turns)  # never the Python repr of the list
    assert conv.turns[2] == {"role": "tool", "content": "sunny", "tool_call_id": "call_abc", "name": "get_weather"}
    assert conv.turns[0]["content"] == "Weather in Paris?"
    assert conv.tools == [{"type": "function", "function": WEATHER}]


def test_sharegpt_function_call_observation_and_a_tools_column_of_json_text():
    row = {"conversations": [
        {"from": "human", "value": "Weather?"},
        {"from": "function_call", "value": json.dumps({"name": "get_weather", "arguments": {"city": "Oslo"}})},
        {"from": "observation", "value": json.dumps({"temp": 3})},
        {"from": "gpt", "value": "Cold."}], "tools": json.dumps([WEATHER])}
    conv = to_conversation(row, "sharegpt", {"tools": "tools"})
    assert [t["role"] for t in conv.turns] == ["user", "assistant", "tool", "assistant"]
    assert conv.turns[1]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert len(conv.turns[1]["tool_calls"][0]["id"]) == 9  # Mistral's templates need 9-character ids
    assert conv.turns[2]["tool_call_id"] == conv.turns[1]["tool_calls"][0]["id"]
    assert conv.tools == [{"type": "function", "function": WEATHER}]  # wrapped the way templates expect


def test_llamafactory_v1_content_parts_with_reasoning_and_tool_call_parts():
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "value": "2+2?"}]},
        {"role": "assistant", "content": [{"type": "reasoning", "value": "Add them."},
                                          {"type": "text", "value": "4"}]},
        {"role": "user", "content": [{"type": "text", "value": "Weather?"}]},
        {"role": "assistant", "content": [{"type": "tool_call", "value": json.dumps(
            {"name": "get_weather", "arguments": {"city": "Rome"}})}]}]}
    conv = to_conversation(row, "messages")
    assert conv.turns[0]["content"] == "2+2?"
    assert conv.turns[1] == {"role": "assistant", "content": "4", "reasoning": "Add them."}
    assert conv.turns[3]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}


def test_arrow_unified_parts_and_arguments_lose_their_null_keys():
    # datasets gives every struct every key seen in the file, with None where a row had none
    row = {"messages": [
        {"role": "user", "content": [{"type": "text", "text": None, "value": "hi"}], "tool_calls": None},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": None, "type": "function", "function": {"name": "f", "arguments": {"a": 1, "b": None}}}]},
        {"role": "tool", "content": "ok", "tool_calls": None},
        {"role": "assistant", "content": "done", "tool_calls": None}]}
    conv = to_conversation(row, "messages")
    assert conv.turns[0]["content"] == "hi"
    assert conv.turns[1]["tool_calls"][0]["function"]["arguments"] == {"a": 1}


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "thinking"])
def test_reasoning_fields_and_think_tags(field):
    conv = to_conversation({"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "a", field: "because"}]}, "messages")
    assert conv.turns[1] == {"role": "assistant", "content": "a", "reasoning": "because"}
    conv = to_conversation({"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "<think>\nstep 1\n</think>\n\nanswer"}]},
                           "messages")
    assert conv.turns[1] == {"role": "assistant", "content": "answer", "reasoning": "step 1"}


def test_weight_zero_answers_are_not_trained_and_images_are_refused_clearly():
    conv = to_conversation({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x", "weight": 0},
                                         {"role": "user", "content": "q2"}, {"role": "assistant", "content": "y", "weight": 1}]},
                           "messages")
    assert conv.turns[1]["train"] is False and "train" not in conv.turns[3]
    with pytest.raises(BadRow, match="image_url"):
        to_conversation({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
                                      {"role": "assistant", "content": "a"}]}, "messages")
    with pytest.raises(BadRow, match="not valid JSON"):
        to_conversation({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
            {"function": {"name": "f", "arguments": "{broken"}}]}]}, "messages")


def test_strict_alternation_joins_turns_and_tool_results_become_user_turns():
    prof = TemplateProfile("jinja", renders_tool_calls=False, renders_tool_role=False, renders_reasoning=False,
                           strict_alternation=True)
    turns = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
             {"role": "assistant", "content": "", "reasoning": "r",
              "tool_calls": [{"type": "function", "id": "call00001", "function": {"name": "f", "arguments": {"x": 1}}}]},
             {"role": "tool", "content": "res"}, {"role": "assistant", "content": "done"}]
    msgs = adapt_turns(turns, prof)
    assert [m["role"] for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0]["content"] == "a\n\nb"
    assert msgs[1]["content"] == '<think>\nr\n</think>\n\n{"name": "f", "arguments": {"x": 1}}'
    assert msgs[2]["content"] == "res"
