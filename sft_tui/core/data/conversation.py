"""The normalised row every format becomes, and the problems a row can have.

One shape for all formats means templating, masking, statistics and the evaluation code only
ever deal with chat turns; where a row came from (file and line) travels with it so every
problem can point the user at the exact place to fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sft_tui.core.errors import UserError

# Problem kinds, in the order reports list them; the text says what the user should look at.
PROBLEM_KINDS: dict[str, str] = {
    "bad_json": "line is not valid JSON",
    "missing_field": "a required field is missing",
    "empty_output": "the answer is empty",
    "bad_role": "a turn has a role that is not system/user/assistant/tool, or a system turn mid-conversation",
    "no_assistant": "no assistant turn to train on",
    "bad_type": "a field has the wrong type",
    "template_error": "the chat template could not render the row",
    "nothing_trained": "no answer token is left to train",
    "too_long": "longer than max_length",
    # Warnings: the row is kept (see lint.py).
    "render_mismatch": "kept: the trained prompt tokenizes differently from the inference prompt",
    "no_stop_token": "kept: the answer does not end with a token generation stops on",
    "double_bos": "kept: two BOS tokens at the start",
    "control_chars": "kept: control bytes in the text",
}


@dataclass
class Conversation:
    """A row as chat turns; ``raw`` rows (plain text, prompt/completion) are rendered without a template."""

    turns: list[dict[str, Any]]
    line: int | None = None
    source: str | None = None
    raw: bool = False
    tools: list[dict[str, Any]] | None = None  # function descriptions, passed to the chat template

    def without_last_assistant(self) -> "Conversation":
        """The prompt side of the conversation: what a model is given to generate the final answer."""
        turns = list(self.turns)
        while turns and turns[-1]["role"] == "assistant":
            turns.pop()
        return Conversation(turns, self.line, self.source, self.raw, self.tools)

    @property
    def last_assistant(self) -> str | None:
        for turn in reversed(self.turns):
            if turn["role"] == "assistant":
                return turn["content"]
        return None

    def to_dict(self) -> dict[str, Any]:
        out = {"turns": self.turns, "line": self.line, "source": self.source, "raw": self.raw}
        if self.tools:
            out["tools"] = self.tools
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Conversation":
        return cls([dict(t) for t in data["turns"]], data.get("line"), data.get("source"), bool(data.get("raw")),
                   data.get("tools"))


class BadRow(UserError):
    """One row that cannot be trained on; ``kind`` is a key of PROBLEM_KINDS."""

    def __init__(self, kind: str, message: str, line: int | None = None, source: str | None = None) -> None:
        where = f"{source or 'row'}:{line}: " if line is not None else ""
        super().__init__(f"{where}{message}", hint=_HINTS.get(kind, ""), kind=kind)
        self.detail = message
        self.line = line
        self.source = source


_HINTS = {
    "bad_json": "fix the line, or set data.skip_bad_rows: true to leave bad lines out",
    "missing_field": "check data.format and data.columns, or set data.skip_bad_rows: true",
    "empty_output": "give the row an answer, or set data.skip_bad_rows: true",
    "bad_role": "roles must be system/user/assistant/tool (sharegpt: system/human/gpt/function_call/observation)",
    "no_assistant": "every row needs at least one assistant answer",
    "template_error": "the model's own template refuses the row for the reason given; fix those rows, leave them "
                      "out with data.skip_bad_rows: true, or train a format the model does not know "
                      "(data.template: chatml)",
    "nothing_trained": "check data.train_on_prompt and any weight: 0 on answers",
    "render_mismatch": "the template's generation prompt ends where the answer's first token begins; "
                       "usually harmless for a few rows, a template problem for all",
    "no_stop_token": "the model may not learn to stop: check the chat template's end of turn",
    "too_long": "raise data.max_length so the whole row fits; data.truncation says whether a longer row is cut "
                "(truncate) or left out (drop)",
}


@dataclass
class ProblemLog:
    """Counts problems by kind and keeps the first few locations of each, so reports stay small."""

    keep: int = 5
    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def add(self, kind: str, message: str, line: int | None = None, source: str | None = None, n: int = 1) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + n
        shown = self.examples.setdefault(kind, [])
        if len(shown) < self.keep:
            shown.append({"source": source, "line": line, "message": message})

    def merge(self, other: "ProblemLog") -> None:
        for kind, count in other.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
            shown = self.examples.setdefault(kind, [])
            shown.extend(other.examples.get(kind, [])[: max(0, self.keep - len(shown))])

    def to_dict(self) -> dict[str, Any]:
        order = list(PROBLEM_KINDS) + sorted(set(self.counts) - set(PROBLEM_KINDS))
        return {
            kind: {"count": self.counts[kind], "about": PROBLEM_KINDS.get(kind, kind),
                   "examples": self.examples.get(kind, [])}
            for kind in order if self.counts.get(kind)
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ProblemLog":
        log = cls()
        for kind, info in data.items():
            log.counts[kind] = info["count"]
            log.examples[kind] = list(info.get("examples", []))
        return log
