"""What a chat template does, learned once per (tokenizer, template) by rendering small probes.

Masking, the lint, generation and export all need the same few facts about a template: which text
closes an assistant turn (and so which token generation must stop on), whether the system prompt,
tool calls, tool results and reasoning are rendered at all, and whether roles must alternate.
Reading the Jinja source would be guesswork; rendering probe conversations through the real
``apply_chat_template`` is exact, cheap (a dozen renders), and cached on the tokenizer object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Unlikely to occur in data or to be rewritten by any template (plain ASCII letters and digits).
SENTINEL = "Qz7SentinelX"
_PROBE_ARGS = {"city": "Pz9Paris"}


@dataclass
class TemplateProfile:
    """Facts about one template; ``kind`` is 'jinja' (the tokenizer's own) or a named template."""

    kind: str
    end_of_turn: str = ""  # text the template writes right after an assistant answer ('' = none)
    stop_token_ids: list[int] = field(default_factory=list)
    stop_strings: list[str] = field(default_factory=list)
    renders_system: bool = True
    renders_tool_calls: bool = True
    renders_tool_role: bool = True
    renders_reasoning: bool = True
    strict_alternation: bool = False
    call_prefix: str = ""  # what the template writes between an answer's start and a tool call's name
    one_call_per_turn: bool = False  # Llama 3.1 refuses parallel tool calls in one answer
    short_call_ids: bool = False  # Mistral's templates refuse tool call ids that are not 9 letters/digits
    generation_markers: bool = False
    # what the template cannot show and what sft-tui does instead, keyed by the data it concerns
    # ("any", "tool_calls", "reasoning", "turns"), so a report names only what its rows hold
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _render(tokenizer: Any, turns: list[dict[str, Any]], gen: bool, tools: list[dict] | None = None) -> str:
    return tokenizer.apply_chat_template([turns], tools=tools, tokenize=False, add_generation_prompt=gen)[0]


def _try(tokenizer: Any, turns: list[dict[str, Any]], gen: bool = False, tools: list[dict] | None = None) -> str | None:
    try:
        return _render(tokenizer, turns, gen, tools)
    except Exception:  # raise_exception in the template, type errors: the probe just fails
        return None


PROBE_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}


def _stop_ids(tokenizer: Any, end_of_turn: str) -> list[int]:
    """The tokens generation stops on: the end-of-turn marker when it is one token, then the EOS."""
    ids: list[int] = []
    text = end_of_turn.strip()
    if text:
        try:
            encoded = tokenizer(text, add_special_tokens=False)["input_ids"]
        except Exception:  # pragma: no cover - exotic tokenizers
            encoded = []
        if len(encoded) == 1:  # a marker the vocabulary splits (<, |, eot…) is no token to stop on
            ids.append(int(encoded[0]))
    eos = getattr(tokenizer, "eos_token_id", None)
    for value in (eos if isinstance(eos, list) else [eos]):
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


def _stop_strings(tokenizer: Any, end_of_turn: str) -> list[str]:
    return list(dict.fromkeys(s for s in (end_of_turn.strip(), getattr(tokenizer, "eos_token", None) or "") if s))


def _end_of_turn(full: str, sentinel: str) -> str:
    """Text after the answer up to the first whitespace run: ``<|im_end|>`` of ``…X<|im_end|>\\n``."""
    tail = full[full.rindex(sentinel) + len(sentinel):]
    stripped = tail.lstrip(" ")
    end = 0
    while end < len(stripped) and not stripped[end].isspace():
        end += 1
    return stripped[:end]


def probe_jinja(tokenizer: Any) -> TemplateProfile:
    """Render probe conversations with the tokenizer's own template; never raises."""
    import re

    template = getattr(tokenizer, "chat_template", None) or ""
    prof = TemplateProfile("jinja", generation_markers=bool(re.search(r"\{%-?\s*generation\s*-?%\}", template)))
    user = {"role": "user", "content": "Pz9Hello"}
    answer = {"role": "assistant", "content": SENTINEL}
    full = _try(tokenizer, [user, answer])
    if full is None or SENTINEL not in full:
        prof.notes["any"] = "the template did not render a plain user/assistant exchange"
    else:
        prof.end_of_turn = _end_of_turn(full, SENTINEL)
    # Roles that must alternate: two user turns in a row are refused by e.g. Gemma and Mistral.
    pair = _try(tokenizer, [user, {"role": "user", "content": "Pz9Again"}, answer])
    prof.strict_alternation = pair is None
    # At inference (generation prompt): Mistral's templates write the system text into the last user turn.
    system = _try(tokenizer, [{"role": "system", "content": "Pz9System"}, user], gen=True)
    prof.renders_system = system is not None and "Pz9System" in system
    call = {"role": "assistant", "content": "",
            "tool_calls": [{"type": "function", "id": "call00001",
                            "function": {"name": "get_weather", "arguments": dict(_PROBE_ARGS)}}]}
    with_call = _try(tokenizer, [user, call], tools=[PROBE_TOOL])
    prof.renders_tool_calls = with_call is not None and "Pz9Paris" in with_call
    call_prompt = _try(tokenizer, [user], gen=True, tools=[PROBE_TOOL])
    if prof.renders_tool_calls and call_prompt and with_call.startswith(call_prompt) and "get_weather" in with_call[len(call_prompt):]:
        after = with_call[len(call_prompt):]
        prof.call_prefix = after[: after.index("get_weather")]
    result = {"role": "tool", "content": "Pz9Sunny", "tool_call_id": "call00001", "name": "get_weather"}
    with_result = _try(tokenizer, [user, call, result, {"role": "assistant", "content": SENTINEL}],
                       tools=[PROBE_TOOL])
    prof.renders_tool_role = with_result is not None and "Pz9Sunny" in with_result
    if prof.renders_tool_calls:
        two = dict(call, tool_calls=call["tool_calls"] + [
            {"type": "function", "id": "call00002", "function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}])
        prof.one_call_per_turn = _try(tokenizer, [user, two], tools=[PROBE_TOOL]) is None
        long_id = {"role": "assistant", "content": "", "tool_calls": [dict(call["tool_calls"][0], id="call_abc_0001")]}
        prof.short_call_ids = _try(tokenizer, [user, long_id], tools=[PROBE_TOOL]) is None
    thought = _try(tokenizer, [user, {"role": "assistant", "content": SENTINEL, "reasoning_content": "Pz9Thought"}])
    prof.renders_reasoning = thought is not None and "Pz9Thought" in thought
    prof.stop_token_ids = _stop_ids(tokenizer, prof.end_of_turn)
    prof.stop_strings = _stop_strings(tokenizer, prof.end_of_turn)
    if not prof.renders_tool_calls:
        prof.notes["tool_calls"] = "the template has no tool-call format: tool calls are written into the answer as JSON"
    if not prof.renders_reasoning:
        prof.notes["reasoning"] = "the template drops reasoning: it is kept in the answer as <think>…</think>"
    if prof.strict_alternation:
        prof.notes["turns"] = "the template needs user/assistant turns to alternate: turns of one role in a row are joined"
    if not prof.renders_tool_role:
        prof.notes["tool_results"] = "the template has no tool role: tool results become user turns (never trained)"
    return prof


def named_profile(tokenizer: Any, name: str) -> TemplateProfile:
    """The built-in templates write their own markers; they render everything as text."""
    eot = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>"}.get(name, "")
    prof = TemplateProfile(name, end_of_turn=eot)
    prof.stop_token_ids = _stop_ids(tokenizer, eot)
    prof.stop_strings = _stop_strings(tokenizer, eot)
    return prof


def template_profile(tokenizer: Any, template: str | None = "auto") -> TemplateProfile:
    """The profile for ``data.template`` on this tokenizer, cached on the tokenizer object."""
    use_jinja = template in ("auto", None, "tokenizer") and bool(getattr(tokenizer, "chat_template", None))
    name = "jinja" if use_jinja else ("chatml" if template in ("auto", None, "tokenizer") else template)
    key = (name, json.dumps(getattr(tokenizer, "chat_template", None)) if use_jinja else "")
    cache = getattr(tokenizer, "_sft_tui_profiles", None)
    if cache is None:
        cache = {}
        try:
            tokenizer._sft_tui_profiles = cache
        except Exception:  # pragma: no cover - frozen objects
            pass
    if key not in cache:
        cache[key] = probe_jinja(tokenizer) if use_jinja else named_profile(tokenizer, str(name))
    return cache[key]


def stop_token_ids(tokenizer: Any, template: str | None = "auto") -> list[int]:
    """Token ids generation must stop on for this template: its end-of-turn token, then the EOS."""
    return list(template_profile(tokenizer, template).stop_token_ids)


def stop_strings(tokenizer: Any, template: str | None = "auto") -> list[str]:
    """Texts an answer is cut at before scoring (end-of-turn marker, EOS)."""
    return list(template_profile(tokenizer, template).stop_strings)
