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

import re
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any

import numpy as np

from sft_tui.core.errors import UserError

from .conversation import BadRow, Conversation

Pieces = list[tuple[str, bool]]
NAMED_TEMPLATES = ("alpaca", "chatml", "llama3")
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


# Sentinel contents for skeleton renders: private-use characters around the slot number, and a
# payload that common content transformations (case, JSON escaping, whitespace handling) would alter.
_SENT_OPEN, _SENT_MID, _SENT_CLOSE = "\ue000", "\ue002", "\ue001"
_PROBE_PAYLOADS = ("", 'Ab "q\\ \n\tz\' <x>')


def _sentinel(slot: int, payload: str) -> str:
    return f"{_SENT_OPEN}{slot}{_SENT_MID}{payload}{_SENT_CLOSE}"


@dataclass
class Skeleton:
    """How every conversation of one shape renders: literal text and content slots, each trained or not.

    ``items`` are literal strings or ints (the index of the turn whose content goes there), ``flags``
    says which items are trained. A row of that shape is its items joined, and its trained characters
    are the flagged items: known from the template's structure, never found by searching the text.
    """

    items: list[str | int]
    flags: list[bool]
    guard: bool  # rows must pass ``Renderer.plain`` (no edge whitespace, no EOS text) to use it
    verified: int = 0  # rows checked against the exact per-row render so far
    ok: bool = True  # False once a row disagreed: the shape then always takes the exact path
    # Trained runs as (first item, end item) index pairs, derived from flags.
    runs: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        runs, start = [], None
        for i, flag in enumerate(self.flags + [False]):
            if flag and start is None:
                start = i
            elif not flag and start is not None:
                runs.append((start, i))
                start = None
        self.runs = runs

    def build(self, contents: list[str]) -> tuple[str, list[tuple[int, int]]]:
        """(text, trained char spans) for one row of this shape."""
        parts = [it if it.__class__ is str else contents[it] for it in self.items]
        if not self.runs:
            return "".join(parts), []
        ends = list(accumulate(map(len, parts)))
        spans = []
        for a, b in self.runs:
            s, e = (ends[a - 1] if a else 0), ends[b - 1]
            if e > s:
                spans.append((s, e))
        return "".join(parts), spans


    def build_columns(self, contents: list[list[str]]) -> tuple[list[str], np.ndarray, np.ndarray]:
        """``build`` for many rows at once from content columns: (texts, spans per row, flat spans (k, 2)).

        Texts come from one format string; span borders are cumulative item lengths, with numpy.
        """
        fmt = "".join(it.replace("{", "{{").replace("}", "}}") if it.__class__ is str else "{%d}" % it
                      for it in self.items)
        texts = list(map(fmt.format, *contents)) if contents else []
        n = len(texts)
        if not self.runs or not n:
            return texts, np.zeros(n, dtype=np.int64), np.zeros((0, 2), dtype=np.int64)
        content_lens = [np.fromiter(map(len, col), dtype=np.int64, count=n) for col in contents]
        item_lens = np.empty((n, len(self.items)), dtype=np.int64)
        for j, it in enumerate(self.items):
            item_lens[:, j] = len(it) if it.__class__ is str else content_lens[it]
        ends = np.cumsum(item_lens, axis=1)
        starts = np.column_stack([ends[:, a - 1] if a else np.zeros(n, dtype=np.int64) for a, _ in self.runs])
        stops = np.column_stack([ends[:, b - 1] for _, b in self.runs])
        keep = stops > starts  # empty runs are no spans, as in ``build``
        flat = np.stack((starts[keep], stops[keep]), axis=1)  # row-major: rows stay in order
        return texts, keep.sum(axis=1).astype(np.int64), flat


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


def normalise_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for s, e in spans:
        if e <= s:
            continue
        if out and out[-1][1] == s:
            out[-1] = (out[-1][0], e)
        else:
            out.append((s, e))
    return out


class Renderer:
    """Turns a Conversation into pieces; one per (tokenizer, template), reused across rows."""

    name = "base"
    # Whether contents go into the text unchanged (then a shape's skeleton is exact for all its rows).
    verbatim = True
    # Whether rows must be 'plain' to use a skeleton (see ``plain``).
    needs_plain = False

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.eos = getattr(tokenizer, "eos_token", None) or ""
        self.bos = (getattr(tokenizer, "bos_token", None) or "") if _adds_bos(tokenizer) else ""
        self._skeletons: dict[tuple[Any, ...], Skeleton | None] = {}

    # ------------------------------------------------------------------ skeletons (the fast path)

    def plain(self, contents: list[str]) -> bool:
        """Contents a skeleton renders exactly even if the template trims, or answers are rstripped/EOS-checked."""
        eos = self.eos
        for c in contents:
            if c.strip() != c or (eos and eos in c) or _SENT_OPEN in c:
                return False
        return True

    def skeleton(self, raw: bool, roles: tuple[str, ...]) -> Skeleton | None:
        """The cached skeleton of a shape, or None when the shape must be rendered row by row."""
        key = (raw, roles)
        try:
            return self._skeletons[key]
        except KeyError:
            pass
        skel = self._make_skeleton(raw, roles) if self.verbatim else None
        self._skeletons[key] = skel
        return skel

    def _make_skeleton(self, raw: bool, roles: tuple[str, ...]) -> Skeleton | None:
        found = []
        for payload in _PROBE_PAYLOADS:
            turns = [{"role": r, "content": _sentinel(i, payload)} for i, r in enumerate(roles)]
            try:
                pieces = self.pieces(Conversation(turns, raw=raw))
            except Exception:  # template errors: every row of the shape takes (and reports through) the exact path
                return None
            pattern = re.compile(re.escape(_SENT_OPEN) + r"(\d+)" + re.escape(_SENT_MID + payload + _SENT_CLOSE))
            items: list[str | int] = []
            flags: list[bool] = []
            for text, flag in pieces:
                pos = 0
                for m in pattern.finditer(text):
                    if m.start() > pos:
                        items.append(text[pos:m.start()])
                        flags.append(flag)
                    items.append(int(m.group(1)))
                    flags.append(flag)
                    pos = m.end()
                if pos < len(text):
                    items.append(text[pos:])
                    flags.append(flag)
            if any(isinstance(it, str) and (_SENT_OPEN in it or _SENT_CLOSE in it) for it in items):
                return None  # a content was changed on its way into the text
            if any(isinstance(it, int) and it >= len(roles) for it in items):
                return None
            found.append((items, flags))
        if any(f != found[0] for f in found[1:]):
            return None  # the text around contents depends on the contents
        return Skeleton(found[0][0], found[0][1], guard=self.needs_plain)

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

    def __init__(self, tokenizer: Any) -> None:
        super().__init__(tokenizer)
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.template_text = tokenizer.chat_template
        self._compiled = _compile_jinja_template(self.template_text)
        self._kwargs = dict(getattr(tokenizer, "special_tokens_map", {}) or {})
        self._direct = True
        probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
        try:
            # The compiled template is much faster than apply_chat_template; use it only if identical.
            self._direct = self._render(probe, False) == tokenizer.apply_chat_template(probe, tokenize=False)
        except Exception:
            self._direct = False
        self.needs_plain = True
        try:
            self.verbatim = content_is_verbatim(self._compiled.environment, self.template_text)
        except Exception:  # unparsable by our analysis: stay on the exact path
            self.verbatim = False

    def __getstate__(self) -> dict[str, Any]:
        # Compiled Jinja templates hold context variables that cannot be pickled (num_proc workers).
        state = dict(self.__dict__)
        state.pop("_compiled", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        from transformers.utils.chat_template_utils import _compile_jinja_template

        self.__dict__.update(state)
        self._compiled = _compile_jinja_template(self.template_text)

    def _render(self, turns: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if not self._direct:
            return self.tokenizer.apply_chat_template(turns, tokenize=False,
                                                      add_generation_prompt=add_generation_prompt)
        return self._compiled.render(messages=turns, add_generation_prompt=add_generation_prompt, **self._kwargs)

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


_TYPE_TESTS = {"string", "defined", "undefined", "none"}


def content_is_verbatim(env: Any, source: str) -> bool:
    """Whether a chat template only ever copies message contents into the output (optionally trimmed).

    Walks the template's syntax tree: every read of ``message['content']``/``message.content`` (and of
    variables set from it) must flow into the output through string concatenation and ``trim`` only,
    or be a type test (``is string``; branches on it are followed for strings). Anything else (a
    comparison, a method call, a filter, a truthiness test, a loop over it) means the text around a
    content can depend on the content, so skeletons are not used for that template.
    """
    from jinja2 import nodes

    tree = env.parse(source)
    tainted: set[str] = set()

    def is_content(node: Any) -> bool:
        if isinstance(node, nodes.Getitem):
            return isinstance(node.arg, nodes.Const) and node.arg.value == "content"
        if isinstance(node, nodes.Getattr):
            return node.attr == "content"
        return isinstance(node, nodes.Name) and node.ctx == "load" and node.name in tainted

    def string_test(test: Any) -> bool | None:
        if isinstance(test, nodes.Test) and test.name == "string" and is_content(test.node):
            return True
        if isinstance(test, nodes.Not):
            inner = string_test(test.node)
            return None if inner is None else not inner
        return None

    def output_context_ok(stack: list[Any]) -> bool:
        for anc in stack:
            if isinstance(anc, (nodes.FilterBlock, nodes.Macro, nodes.AssignBlock)):
                return False
            if isinstance(anc, nodes.CallBlock):
                call = anc.call.node if isinstance(anc.call, nodes.Call) and not anc.call.args else anc.call
                if not (isinstance(call, nodes.ExtensionAttribute) and call.name == "_generation_support"):
                    return False
        return True

    def use_ok(node: Any, stack: list[Any], new_taint: set[str]) -> bool:
        child = node
        for i in range(len(stack) - 1, -1, -1):
            parent = stack[i]
            if isinstance(parent, nodes.Output):
                return output_context_ok(stack[:i])
            if isinstance(parent, (nodes.Add, nodes.Concat)):
                child = parent
                continue
            if (isinstance(parent, nodes.Filter) and parent.name == "trim" and parent.node is child
                    and not (parent.args or parent.kwargs or parent.dyn_args or parent.dyn_kwargs)):
                child = parent
                continue
            if isinstance(parent, nodes.Test) and parent.name in _TYPE_TESTS and child is node and parent.node is node:
                return True
            if (isinstance(parent, nodes.Assign) and parent.node is child and isinstance(parent.target, nodes.Name)
                    and output_context_ok(stack[:i])):
                new_taint.add(parent.target.name)
                return True
            return False
        return False

    while True:
        new_taint: set[str] = set()
        ok = True

        def walk(node: Any, stack: list[Any]) -> None:
            nonlocal ok
            if not ok:
                return
            if is_content(node):
                if not use_ok(node, stack, new_taint):
                    ok = False
                return
            if isinstance(node, nodes.If):
                branch = string_test(node.test)
                if branch is not None:  # contents are always strings: follow only the branch taken
                    children = list(node.body) if branch else list(node.elif_) + list(node.else_)
                    for child in children:
                        walk(child, stack + [node])
                    return
            for child in node.iter_child_nodes():
                walk(child, stack + [node])

        walk(tree, [])
        if not ok:
            return False
        if new_taint <= tainted:
            return True
        tainted |= new_taint


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


def render_pieces(conv: Conversation, tokenizer: Any, template: str | Renderer = "auto",
                  add_generation_prompt: bool = False) -> Pieces:
    renderer = template if isinstance(template, Renderer) else get_renderer(tokenizer, template)
    return renderer.pieces(conv, add_generation_prompt)


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
