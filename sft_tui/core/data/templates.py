"""Rendering conversations into text pieces that are either trained or not.

Masking is decided at the text level from the structure of the conversation, never by searching
the rendered text for answers. For the tokenizer's own Jinja template (see ``JinjaRenderer``) the
row is rendered as the model meets it at inference: the prompt of its last answer exactly as
``apply_chat_template(..., add_generation_prompt=True)`` gives it, then that answer as the
template writes it. Earlier answers are located inside that prompt by rendering it once more with
the answer replaced by a sentinel: the text that differs is the answer as the template renders it
in history (reasoning dropped, system moved, whatever the template does), and the template's
end-of-turn marker after it is trained too. Named templates are written in Python and emit their
pieces directly. The same pieces give the training text and, cut before the last answer, the
generation prompt (``render_prompt``), so training and inference agree.
"""

from __future__ import annotations

import json
from typing import Any

from sft_tui.core.config import choices
from sft_tui.core.errors import UserError

from .conversation import BadRow, Conversation
from .profile import SENTINEL, TemplateProfile, template_profile

Pieces = list[tuple[str, bool]]
# The built-in templates the schema offers besides "auto" (the tokenizer's own).
NAMED_TEMPLATES: tuple[str, ...] = choices("data.template", auto=False)
ALPACA_SYSTEM = ("Below is an instruction that describes a task. "
                 "Write a response that appropriately completes the request.")


def _adds_bos(tokenizer: Any) -> bool:
    """Whether the tokenizer puts a BOS in front by itself; named templates copy that habit."""
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    try:
        return tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos_id]
    except Exception:  # pragma: no cover - exotic tokenizers
        return False


def pieces_to_spans(pieces: Pieces) -> tuple[str, list[tuple[int, int]]]:
    """(text, trained char spans) of rendered pieces: maximal runs of trained, non-empty pieces."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for text, flag in pieces:
        n = len(text)
        if flag and n:
            if spans and spans[-1][1] == pos:
                spans[-1] = (spans[-1][0], pos + n)
            else:
                spans.append((pos, pos + n))
        pos += n
    return "".join(t for t, _ in pieces), spans


class Renderer:
    """Turns a Conversation into pieces; one per (tokenizer, template), reused across rows."""

    name = "base"

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = getattr(tokenizer, "eos_token", None) or ""
        self.bos = (getattr(tokenizer, "bos_token", None) or "") if _adds_bos(tokenizer) else ""

    profile: TemplateProfile | None = None

    def pieces(self, conv: Conversation, add_generation_prompt: bool = False) -> Pieces:
        if conv.raw:
            return self._raw(conv, add_generation_prompt)
        return self._chat(adapt_turns(conv.turns, self.profile or TEXT_ONLY), add_generation_prompt)

    def _raw(self, conv: Conversation, add_generation_prompt: bool) -> Pieces:
        # Plain text and prompt/completion: the text itself, answers and the EOS trained.
        out: Pieces = [(self.bos, False)] if self.bos else []
        for turn in conv.turns:
            if turn["role"] == "assistant":
                out.append((turn["content"] + self.eos, True))
            else:
                out.append((turn["content"], False))
        return out

    def _chat(self, turns: list[dict[str, str]], add_generation_prompt: bool) -> Pieces:  # pragma: no cover
        raise NotImplementedError

    def _end(self, marker: str) -> str:
        # The EOS closes every answer so generation stops, unless the turn marker already is it.
        return marker if (not self.eos or marker.endswith(self.eos)) else marker + self.eos


class ChatmlRenderer(Renderer):
    name = "chatml"

    def _chat(self, turns, add_generation_prompt):
        out: Pieces = [(self.bos, False)] if self.bos else []
        end = self._end("<|im_end|>")
        for turn in turns:
            head = f"<|im_start|>{turn['role']}\n"
            if turn["role"] == "assistant":
                out += [(head, False), (turn["content"] + end, turn.get("train", True)), ("\n", False)]
            else:
                out.append((head + turn["content"] + "<|im_end|>\n", False))
        if add_generation_prompt:
            out.append(("<|im_start|>assistant\n", False))
        return out


class Llama3Renderer(Renderer):
    name = "llama3"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.bos = getattr(tokenizer, "bos_token", None) or ""  # llama-3 always starts with its BOS

    def _chat(self, turns, add_generation_prompt):
        out: Pieces = [(self.bos, False)] if self.bos else []
        end = self._end("<|eot_id|>")
        for turn in turns:
            role = "ipython" if turn["role"] == "tool" else turn["role"]
            head = f"<|start_header_id|>{role}<|end_header_id|>\n\n"
            if turn["role"] == "assistant":
                out += [(head, False), (turn["content"] + end, turn.get("train", True))]
            else:
                out.append((head + turn["content"] + "<|eot_id|>", False))
        if add_generation_prompt:
            out.append(("<|start_header_id|>assistant<|end_header_id|>\n\n", False))
        return out


class AlpacaRenderer(Renderer):
    name = "alpaca"

    def _chat(self, turns, add_generation_prompt):
        out: Pieces = [(self.bos, False)] if self.bos else []
        system = turns[0]["content"] if turns and turns[0]["role"] == "system" else ALPACA_SYSTEM
        out.append((system + "\n\n", False))
        for turn in turns:
            if turn["role"] == "user":
                out.append((f"### Instruction:\n{turn['content']}\n\n", False))
            elif turn["role"] == "tool":
                out.append((f"### Input:\n{turn['content']}\n\n", False))
            elif turn["role"] == "assistant":
                out += [("### Response:\n", False), (turn["content"] + self.eos, turn.get("train", True)),
                        ("\n\n", False)]
        if add_generation_prompt:
            out.append(("### Response:\n", False))
        return out


# A profile for templates that render everything as plain text (the named ones): tool calls and
# reasoning become text of the answer, tool results stay tool turns.
TEXT_ONLY = TemplateProfile("text", renders_tool_calls=False, renders_reasoning=False)


def _call_text(turn: dict[str, Any]) -> str:
    return "\n".join(json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
                                ensure_ascii=False) for c in turn.get("tool_calls", []))


def adapt_turns(turns: list[dict[str, Any]], profile: TemplateProfile) -> list[dict[str, Any]]:
    """Turns as this template can render them, decided by its profile (see ``profile.py``).

    Reasoning a template would drop is kept as ``<think>…</think>`` at the start of the answer;
    tool calls it cannot write become JSON lines of the answer; tool results it cannot show become
    user turns; where roles must alternate, consecutive turns of one role are joined with a blank
    line (Gemma and Mistral expect that). Messages get ``reasoning_content``, the name templates read.
    """
    out: list[dict[str, Any]] = []
    turns = _fit_calls(turns, profile)
    if not profile.renders_system and turns and turns[0]["role"] == "system" and len(turns) > 1:
        # A template with no system role (Gemma 2 refuses one): its text leads the first user turn.
        first = dict(turns[1], content=f"{turns[0]['content']}\n\n{turns[1]['content']}")
        turns = [first] + list(turns[2:])
    for turn in turns:
        msg: dict[str, Any] = {"role": turn["role"], "content": turn["content"]}
        if turn["role"] == "assistant":
            think = calls = ""
            if turn.get("reasoning"):
                if profile.renders_reasoning:
                    msg["reasoning_content"] = turn["reasoning"]
                else:
                    think = f"<think>\n{turn['reasoning']}\n</think>"
            if turn.get("tool_calls"):
                if profile.renders_tool_calls:
                    msg["tool_calls"] = turn["tool_calls"]
                else:
                    calls = _call_text(turn)
            if think or calls:
                msg["content"] = "\n\n".join(x for x in (think, msg["content"], calls) if x)
            msg["train"] = turn.get("train", True)
        elif turn["role"] == "tool":
            if profile.renders_tool_role:
                msg.update({k: turn[k] for k in ("tool_call_id", "name") if k in turn})
            else:
                msg["role"] = "user"
        if profile.strict_alternation and out and out[-1]["role"] == msg["role"] and msg["role"] != "system":
            prev = out[-1]
            prev["content"] = "\n\n".join(x for x in (prev["content"], msg["content"]) if x)
            if msg.get("tool_calls"):
                prev["tool_calls"] = prev.get("tool_calls", []) + msg["tool_calls"]
            if msg["role"] == "assistant":
                prev["train"] = prev.get("train", True) or msg["train"]
            continue
        out.append(msg)
    return out


def _fit_calls(turns: list[dict[str, Any]], profile: TemplateProfile) -> list[dict[str, Any]]:
    """Tool calls as the template accepts them: one call per answer (Llama 3.1), 9-character ids (Mistral)."""
    if not profile.renders_tool_calls or not any(t.get("tool_calls") for t in turns):
        return turns
    ids: dict[str, str] = {}
    out: list[dict[str, Any]] = []
    for turn in turns:
        if profile.short_call_ids:
            if turn.get("tool_calls"):
                calls = []
                for call in turn["tool_calls"]:
                    ids.setdefault(call["id"], f"call{len(ids) + 1:05d}")
                    calls.append(dict(call, id=ids[call["id"]]))
                turn = dict(turn, tool_calls=calls)
            elif turn["role"] == "tool" and turn.get("tool_call_id") in ids:
                turn = dict(turn, tool_call_id=ids[turn["tool_call_id"]])
        calls = turn.get("tool_calls") or []
        if profile.one_call_per_turn and len(calls) > 1:
            out.append(dict(turn, tool_calls=calls[:1]))
            out += [{"role": "assistant", "content": "", "tool_calls": [c], "train": turn.get("train", True)}
                    for c in calls[1:]]
            continue
        out.append(turn)
    return out


def _common_prefix(a: str, b: str, cap: int) -> int:
    n = min(cap, len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _common_suffix(a: str, b: str, cap: int) -> int:
    n = min(cap, len(a), len(b))
    i = 0
    while i < n and a[-1 - i] == b[-1 - i]:
        i += 1
    return i


def _first_line(exc: Exception) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


class JinjaRenderer(Renderer):
    """The tokenizer's own chat template, masked exactly whatever it does to history.

    The prompt of the last answer is rendered with ``add_generation_prompt=True`` (what inference
    sees), the last answer is what the full render adds after it, and each earlier answer is the
    part of that prompt that changes when the answer is replaced by a sentinel (plus the template's
    end-of-turn marker). Cost: two renders a row plus one per earlier answer.
    """

    name = "tokenizer"

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        self.profile = template_profile(tokenizer, "auto")

    def _render(self, messages: list[dict[str, Any]], gen: bool, tools: list[dict[str, Any]] | None) -> str:
        # As a batch of one: transformers refuses an empty conversation on its own but renders one in
        # a batch, and that is the prompt of a row that starts with an assistant turn.
        clean = [{k: v for k, v in m.items() if k != "train"} for m in messages]
        try:
            return self.tokenizer.apply_chat_template([clean], tools=tools, tokenize=False,
                                                      add_generation_prompt=gen)[0]
        except Exception as exc:  # jinja's raise_exception, TemplateError, type errors in templates
            raise BadRow("template_error", f"the chat template refused the row: {_first_line(exc)}") from None

    def pieces(self, conv: Conversation, add_generation_prompt: bool = False) -> Pieces:
        if conv.raw:
            return self._raw(conv, add_generation_prompt)
        msgs = adapt_turns(conv.turns, self.profile)
        if add_generation_prompt or not msgs or msgs[-1]["role"] != "assistant":
            if msgs and msgs[-1]["role"] == "assistant":
                msgs = msgs[:-1]
            return [(self._render(msgs, True, conv.tools), False)]
        text, spans = self.render_row(msgs, conv.tools)
        out: Pieces = []
        pos = 0
        for start, end in spans:
            out += [(text[pos:start], False), (text[start:end], True)]
            pos = end
        out.append((text[pos:], False))
        return [p for p in out if p[0]]

    def render_row(self, msgs: list[dict[str, Any]], tools: list[dict[str, Any]] | None
                   ) -> tuple[str, list[tuple[int, int]]]:
        """(training text, trained char spans) of template-ready messages that end with an answer."""
        last = len(msgs) - 1
        prompt = self._render(msgs[:last], True, tools)
        full = self._render(msgs, False, tools)
        if full.startswith(prompt):
            answer = full[len(prompt):]
        else:  # the template renders history differently once the answer is there (Mistral's system)
            answer = full[self._answer_start(msgs, full, tools):]
        body = answer.rstrip()
        tail = answer[len(body):]
        if not self.profile.end_of_turn and self.eos and not body.endswith(self.eos):
            body += self.eos  # a template with no end-of-turn marker: the EOS is what stops generation
        text = prompt + body + tail
        spans = [self._locate(msgs[:last], j, prompt, tools) for j in range(last)
                 if msgs[j]["role"] == "assistant" and msgs[j].get("train", True)]
        if msgs[last].get("train", True):
            spans.append((len(prompt), len(prompt) + len(body)))
        return text, [s for s in spans if s[1] > s[0]]

    def _sentinel_render(self, msgs: list[dict[str, Any]], j: int, gen: bool,
                         tools: list[dict[str, Any]] | None) -> tuple[str, int, int]:
        """Render with answer ``j``'s text, reasoning and call names replaced by sentinels.

        The message keeps its shape (same fields, same number of calls): templates treat a message
        with tool calls differently (Mistral leaves it out of the role alternation check).
        Returns the render and where its first and last sentinel lie (-1, -1 when none shows).
        """
        msg = msgs[j]
        alt_msg = dict(msg)
        marks = []
        if msg.get("content"):
            alt_msg["content"] = SENTINEL + "C"
            marks.append(alt_msg["content"])
        if msg.get("reasoning_content"):
            alt_msg["reasoning_content"] = SENTINEL + "R"
            marks.append(alt_msg["reasoning_content"])
        if msg.get("tool_calls"):
            alt_msg["tool_calls"] = [dict(c, function={"name": f"{SENTINEL}F{k}", "arguments": {}})
                                     for k, c in enumerate(msg["tool_calls"])]
            marks += [c["function"]["name"] for c in alt_msg["tool_calls"]]
        alt = list(msgs)
        alt[j] = alt_msg
        rendered = self._render(alt, gen, tools)
        if any(rendered.count(m) > 1 for m in marks):
            raise BadRow("template_error", "the chat template writes an answer more than once, so it cannot be "
                                           "masked exactly; pick data.template: chatml")
        found = [(rendered.index(m), rendered.index(m) + len(m)) for m in marks if m in rendered]
        if not found:
            return rendered, -1, -1
        return rendered, min(a for a, _ in found), max(b for _, b in found)

    def _answer_start(self, msgs: list[dict[str, Any]], full: str, tools: list[dict[str, Any]] | None) -> int:
        rendered, s, _ = self._sentinel_render(msgs, len(msgs) - 1, False, tools)
        if s < 0:
            raise BadRow("template_error", "the chat template leaves the last answer out of the conversation, "
                                           "so there is nothing to train")
        return _common_prefix(full, rendered, s)

    def _locate(self, msgs: list[dict[str, Any]], j: int, prompt: str,
                tools: list[dict[str, Any]] | None) -> tuple[int, int]:
        """Span of answer ``j`` inside ``prompt`` (the rendered history), its end-of-turn marker included."""
        rendered, s, e = self._sentinel_render(msgs, j, True, tools)
        if s < 0:
            return (0, 0)  # the template leaves this answer out of the history: nothing to train
        start = _common_prefix(prompt, rendered, s)
        end = len(prompt) - _common_suffix(prompt, rendered, len(rendered) - e)
        if end <= start:
            return (start, start)
        # The sentinels mark what the answer's own text changes; the answer starts where the template's
        # generation prompt for it ends (exact where history renders as it did then), else before the
        # tool-call opening the probe saw (Mistral: [TOOL_CALLS][{"name": "), and ends with its end-of-turn.
        before = self._render(msgs[:j], True, tools)
        prof = self.profile
        if prompt.startswith(before) and len(before) <= start:
            start = len(before)
        elif msgs[j].get("tool_calls") and not msgs[j].get("content") and prof.call_prefix \
                and prompt[max(0, start - len(prof.call_prefix)):start] == prof.call_prefix:
            start -= len(prof.call_prefix)
        eot = prof.end_of_turn
        if eot:
            found = prompt.find(eot, end)
            nxt = [prompt.find(m["content"], end) for m in msgs[j + 1:] if len(m.get("content") or "") > 3]
            if found >= 0 and not any(0 <= n < found for n in nxt):
                end = found + len(eot)
        return (start, end)


def get_renderer(tokenizer: Any, template: str = "auto") -> Renderer:
    """'auto' uses the tokenizer's chat template when it has one, else chatml; a named one always wins."""
    if template in ("auto", None, "tokenizer"):
        if getattr(tokenizer, "chat_template", None):
            return JinjaRenderer(tokenizer)
        return ChatmlRenderer(tokenizer)
    classes = {"chatml": ChatmlRenderer, "llama3": Llama3Renderer, "alpaca": AlpacaRenderer}
    if template not in classes:
        raise UserError(f"unknown template '{template}'", f"use one of: auto, {', '.join(NAMED_TEMPLATES)}",
                        kind="config")
    return classes[template](tokenizer)


def render_prompt(conv_without_last_assistant: Conversation, tokenizer: Any,
                  template: str | Renderer = "auto") -> str:
    """The text a model gets to generate the next answer, identical to the training text up to that answer.

    A conversation that still ends with an assistant turn has that turn removed first.
    """
    conv = conv_without_last_assistant
    if conv.turns and conv.turns[-1]["role"] == "assistant":
        conv = conv.without_last_assistant()
    renderer = template if isinstance(template, Renderer) else get_renderer(tokenizer, template)
    if conv.raw:
        return "".join(text for text, _ in renderer.pieces(conv))
    return "".join(text for text, _ in renderer.pieces(conv, add_generation_prompt=True))
