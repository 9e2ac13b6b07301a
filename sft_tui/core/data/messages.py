"""Every message shape people write, made into one turn shape, once.

Datasets spell the same conversation many ways: OpenAI messages with ``tool_calls`` and content
part lists, ShareGPT ``from``/``value`` with ``function_call``/``observation`` turns and a ``tools``
column of JSON text, LLaMA-Factory's v1 content parts (``text``/``reasoning``/``tool_call`` with
``value``), reasoning as ``reasoning_content``/``reasoning``/``thinking`` or as a leading
``<think>…</think>``. Everything downstream (templates, masking, statistics, evaluation) sees only:

``{"role": system|user|assistant|tool, "content": str}`` plus, where present, ``reasoning`` (str),
``tool_calls`` (``[{"type": "function", "id": str, "function": {"name": str, "arguments": dict}}]``),
``tool_call_id``/``name`` (tool results) and ``train`` (False when the data says not to train a turn).
"""

from __future__ import annotations

import json
import re
from typing import Any

from .conversation import BadRow

ROLE_MAP = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant", "function_call": "assistant", "tool_call": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool", "tool_response": "tool",
}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)
_TEXT_PARTS = ("text", "input_text", "output_text")
_REASONING_PARTS = ("reasoning", "thinking", "think")
_CALL_PARTS = ("tool_call", "function_call")


def as_text(value: Any, what: str = "content") -> str | None:
    """Plain text of a field; part lists keep only their text parts (see ``split_parts`` for the rest)."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return split_parts(value, what)[0]
    if isinstance(value, bool) or isinstance(value, (int, float)):
        return str(value)
    raise BadRow("bad_type", f"{what}: expected text, got {type(value).__name__}")


def split_parts(parts: list[Any], what: str = "content") -> tuple[str, str | None, list[Any]]:
    """(text, reasoning, raw tool calls) of a content-part list, OpenAI's or LLaMA-Factory's."""
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[Any] = []
    for part in parts:
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise BadRow("bad_type", f"{what}: a content part is a {type(part).__name__}, not an object")
        kind = str(part.get("type") or "text").lower()
        # Arrow gives every part every key (None where absent): take the first one that is set.
        value = next((part[k] for k in ("text", "value", kind) if part.get(k) is not None), None)
        if kind in _TEXT_PARTS or (kind not in _REASONING_PARTS + _CALL_PARTS and kind.endswith("text")):
            texts.append(as_text(value, what) or "")
        elif kind in _REASONING_PARTS:
            thoughts.append(as_text(value, what) or "")
        elif kind in _CALL_PARTS:
            calls.append(value)
        elif kind in ("image", "image_url", "input_image", "audio", "input_audio", "video", "file"):
            raise BadRow("bad_type", f"{what}: a '{kind}' part; sft-tui trains text-only models")
        else:
            raise BadRow("bad_type", f"{what}: unknown content part type '{kind}'")
    return "\n".join(texts), ("\n".join(thoughts) if thoughts else None), calls


def drop_none(value: Any) -> Any:
    """Remove the None-valued keys Arrow adds when it unifies differently shaped objects across rows."""
    if isinstance(value, dict):
        return {k: drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [drop_none(v) for v in value]
    return value


def _json(value: Any, what: str) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise BadRow("bad_type", f"{what} is not valid JSON: {value[:60]!r}") from None
    return value


def tool_call(raw: Any, index: int) -> dict[str, Any]:
    """One call as ``{"type": "function", "id", "function": {"name", "arguments": dict}}``.

    Arguments are parsed from JSON text because templates write them with ``tojson``: text would be
    quoted twice. Missing ids get 9 letters and digits, the length Mistral's templates insist on.
    """
    call = _json(raw, "a tool call")
    if not isinstance(call, dict):
        raise BadRow("bad_type", f"a tool call should be an object, got {type(call).__name__}")
    fn = call.get("function") if isinstance(call.get("function"), dict) else call
    name = fn.get("name")
    if not isinstance(name, str) or not name:
        raise BadRow("missing_field", "a tool call has no function name")
    args = fn.get("arguments", fn.get("parameters", {}))
    args = _json(args, f"the arguments of tool call '{name}'") if args not in ("", None) else {}
    if isinstance(args, str):  # JSON encoded twice (glaive-style data): one more decode
        args = _json(args, f"the arguments of tool call '{name}'")
    if not isinstance(args, dict):
        raise BadRow("bad_type", f"the arguments of tool call '{name}' should be a JSON object, "
                                 f"got {type(args).__name__}")
    call_id = call.get("id")
    return {"type": "function", "id": str(call_id) if call_id else f"call{index:05d}",
            "function": {"name": name, "arguments": drop_none(args)}}


def tools_list(value: Any) -> list[dict[str, Any]] | None:
    """A ``tools`` column (JSON text or a list) as OpenAI-style ``{"type": "function", "function": …}``."""
    if value in (None, "", []):
        return None
    value = _json(value, "the tools column")
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise BadRow("bad_type", "the tools column should be a list of function descriptions")
    out = []
    for tool in value:
        tool = _json(tool, "a tool description")
        if not isinstance(tool, dict):
            raise BadRow("bad_type", "a tool description should be an object")
        tool = drop_none(tool)
        out.append(tool if tool.get("type") == "function" and "function" in tool else {"type": "function", "function": tool})
    return out


def _reasoning(item: dict[str, Any]) -> str | None:
    for key in REASONING_KEYS:
        value = item.get(key)
        if isinstance(value, str) and value.strip():
            return value
    return None


def normalise_turn(item: Any, index: int, col: str, role_key: str | None = None,
                   content_key: str | None = None, calls_seen: list[int] | None = None) -> dict[str, Any]:
    """One message of any supported shape as a turn (see the module docstring)."""
    if not isinstance(item, dict):
        raise BadRow("bad_type", f"turn {index + 1} of '{col}' is not an object")
    rk = role_key or ("role" if "role" in item else "from")
    ck = content_key or ("content" if "content" in item or rk == "role" else "value")
    raw_role = item.get(rk)
    if raw_role is None:
        raise BadRow("missing_field", f"turn {index + 1} has no '{rk}'")
    source_role = str(raw_role).strip().lower()
    role = ROLE_MAP.get(source_role)
    if role is None:
        raise BadRow("bad_role", f"turn {index + 1} has role '{raw_role}'")
    value = item.get(ck)
    reasoning = _reasoning(item)
    calls: list[Any] = []
    if source_role in ("function_call", "tool_call"):  # ShareGPT: the value is the call itself
        parsed = _json(value, f"turn {index + 1} (function_call)")
        calls = parsed if isinstance(parsed, list) else [parsed]
        content = ""
    elif isinstance(value, list):
        content, part_reasoning, calls = split_parts(value, f"turn {index + 1}")
        reasoning = reasoning or part_reasoning
    else:
        content = as_text(value, f"turn {index + 1}")
    if item.get("tool_calls"):
        if not isinstance(item["tool_calls"], list):
            raise BadRow("bad_type", f"turn {index + 1}: tool_calls should be a list")
        calls = calls + list(item["tool_calls"])
    elif isinstance(item.get("function_call"), (dict, str)) and role == "assistant":  # OpenAI's older field
        calls = calls + [item["function_call"]]
    if content is None:
        if not (role == "assistant" and (calls or reasoning)):
            raise BadRow("missing_field", f"turn {index + 1} ({raw_role}) has no '{ck}'")
        content = ""
    turn: dict[str, Any] = {"role": role, "content": content}
    if role == "assistant":
        if reasoning is None and "<think>" in content[:64]:
            match = _THINK.match(content)
            if match:
                reasoning, content = match.group(1).strip("\n"), content[match.end():]
                turn["content"] = content
            elif content.lstrip().startswith("<think>"):
                raise BadRow("bad_type", f"turn {index + 1}: the answer opens <think> but never closes it")
        if reasoning:
            turn["reasoning"] = reasoning
        if calls:
            counter = calls_seen if calls_seen is not None else [0]
            out = []
            for call in calls:
                counter[0] += 1
                out.append(tool_call(call, counter[0]))
            turn["tool_calls"] = out
        weight = item.get("weight")
        if weight is not None and not weight:  # OpenAI fine-tuning: weight 0 = do not train this answer
            turn["train"] = False
    elif role == "tool":
        for key in ("tool_call_id", "name"):
            if isinstance(item.get(key), str) and item[key]:
                turn[key] = item[key]
    elif calls:
        raise BadRow("bad_role", f"turn {index + 1} is a {role} turn with tool calls")
    return turn


def chat_turns(items: Any, columns: dict[str, str], col: str) -> list[dict[str, Any]]:
    if not isinstance(items, list):
        raise BadRow("bad_type" if items is not None else "missing_field",
                     f"'{col}' should be a list of turns" if items is not None else f"missing field '{col}'")
    seen = [0]
    turns = [normalise_turn(item, i, col, columns.get("item:role"), columns.get("item:content"), seen)
             for i, item in enumerate(items)]
    _link_results(turns)
    return turns


def _link_results(turns: list[dict[str, Any]]) -> None:
    """Tool results without an id answer the calls before them in order (ShareGPT has no ids)."""
    pending: list[dict[str, Any]] = []
    for turn in turns:
        if turn["role"] == "assistant":
            pending = list(turn.get("tool_calls", []))
        elif turn["role"] == "tool":
            if pending:
                call = pending.pop(0)
                turn.setdefault("tool_call_id", call["id"])
                turn.setdefault("name", call["function"]["name"])
        else:
            pending = []


def check_turns(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rules every format shares: one leading system turn, an answer to train, no empty answer."""
    while len(turns) > 1 and turns[0]["role"] == "system" and turns[1]["role"] == "system":
        turns = [{"role": "system", "content": turns[0]["content"] + "\n\n" + turns[1]["content"]}] + turns[2:]
    for i, turn in enumerate(turns):
        if turn["role"] == "system" and i != 0:
            raise BadRow("bad_role", f"turn {i + 1} is a system message after the start of the conversation")
    while turns and turns[-1]["role"] != "assistant":
        turns = turns[:-1]  # trailing prompts teach nothing
    if not any(t["role"] == "assistant" for t in turns):
        raise BadRow("no_assistant", "no assistant turn")
    for i, turn in enumerate(turns):
        if turn["role"] == "assistant" and not (turn["content"].strip() or turn.get("tool_calls")):
            raise BadRow("empty_output", f"assistant turn {i + 1} is empty")
    if not any(t["role"] == "assistant" and t.get("train", True) for t in turns):
        raise BadRow("no_assistant", "every assistant turn has weight 0: nothing to train")
    return turns


CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def has_control_chars(turns: list[dict[str, Any]]) -> str | None:
    """The first turn whose text holds control bytes (NUL, escape codes…), as 'turn N'."""
    for i, turn in enumerate(turns):
        text = turn["content"] + (turn.get("reasoning") or "")
        match = CONTROL.search(text)
        if match:
            return f"turn {i + 1} ({turn['role']}) has control byte {match.group()!r}"
    return None


# What a row holds that a template may not be able to show (see profile.TemplateProfile.notes).
CONTENT_FLAGS = {"tool_calls": 1, "reasoning": 2, "tool_results": 4, "turns": 8}


def content_flags(turns: list[dict[str, Any]]) -> int:
    """CONTENT_FLAGS bits of one conversation."""
    flags = 0
    for i, turn in enumerate(turns):
        if turn.get("tool_calls"):
            flags |= 1
        if turn.get("reasoning"):
            flags |= 2
        if turn["role"] == "tool":
            flags |= 4
        if i and turns[i - 1]["role"] == turn["role"]:
            flags |= 8
    return flags
