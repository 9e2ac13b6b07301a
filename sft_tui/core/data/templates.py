"""Rendering conversations into text pieces that are either trained or not.

Masking is decided here, at the text level, from the structure of the conversation rather than
by searching the rendered text for answers. For the tokenizer's own Jinja template we render the
conversation incrementally (prompt with generation prompt for each assistant turn, then that turn
completed) and require each render to extend the previous one; the assistant part is exactly
the text a turn added after its generation prompt. Named templates are written in Python and
emit their pieces directly. Either way the same pieces give the training text and, cut before
the last answer, the generation prompt (``render_prompt``), so training and inference agree.
"""

from __future__ import annotations

from typing import Any

from sft_tui.core.config import choices
from sft_tui.core.errors import UserError

from .conversation import BadRow, Conversation

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

    def pieces(self, conv: Conversation, add_generation_prompt: bool = False) -> Pieces:
        if conv.raw:
            return self._raw(conv, add_generation_prompt)
        return self._chat(conv.turns, add_generation_prompt)

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
                out += [(head, False), (turn["content"] + end, True), ("\n", False)]
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
                out += [(head, False), (turn["content"] + end, True)]
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
                out += [("### Response:\n", False), (turn["content"] + self.eos, True), ("\n\n", False)]
        if add_generation_prompt:
            out.append(("### Response:\n", False))
        return out


class JinjaRenderer(Renderer):
    """The tokenizer's own chat template, masked by incremental rendering (no markers needed)."""

    name = "tokenizer"

    def _render(self, turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
        # As a batch of one: transformers refuses an empty conversation on its own but renders one in
        # a batch, and that is the prompt of a row that starts with an assistant turn.
        return self.tokenizer.apply_chat_template([turns], tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)[0]

    def _chat(self, turns, add_generation_prompt):
        try:
            return self._incremental(turns, add_generation_prompt)
        except BadRow:
            raise
        except Exception as exc:  # jinja's raise_exception, TemplateError, type errors in templates
            raise BadRow("template_error", f"chat template failed: {str(exc).splitlines()[0] if str(exc) else exc}")

    def _incremental(self, turns, add_generation_prompt):
        out: Pieces = []
        done = ""
        for i, turn in enumerate(turns):
            if turn["role"] != "assistant":
                continue
            prompt = self._render(turns[:i], True)
            full = self._render(turns[: i + 1], False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise BadRow("template_error",
                             "the chat template changes earlier text when a turn is added, so answers cannot be "
                             "masked reliably")
            answer = full[len(prompt):]
            body = answer.rstrip()
            tail = answer[len(body):]
            if self.eos and self.eos not in body:
                body += self.eos
            out += [(prompt[len(done):], False), (body, True), (tail, False)]
            done = full
        if add_generation_prompt or not turns or turns[-1]["role"] != "assistant":
            final = self._render(turns, add_generation_prompt)
            if not final.startswith(done):
                raise BadRow("template_error", "the chat template changes earlier text when the prompt is added")
            out.append((final[len(done):], False))
        return [p for p in out if p[0]]


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
