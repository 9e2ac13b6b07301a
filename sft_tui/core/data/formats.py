"""Format detection, column mapping and conversion of any supported row into a Conversation.

Detection looks at column names first and then at a sample of rows (message item keys), so a
``conversations`` column with role/content items is read correctly whatever it is called. The
confidence is lowered for every ambiguity so the UI can ask the user to confirm.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Any, Iterable

from sft_tui.core.config import choices
from sft_tui.core.errors import UserError

from .conversation import BadRow, Conversation
from .messages import as_text as _text, chat_turns as _chat_turns, check_turns as _check_turns, tools_list

# The row formats the schema allows (data.format without "auto"); FIELDS must cover each one.
FORMATS: tuple[str, ...] = choices("data.format", auto=False)

# The names each format reads; the first group is required.
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "alpaca": (("instruction", "output"), ("input", "system", "history")),
    "messages": (("messages",), ("system", "tools")),
    "sharegpt": (("conversations",), ("system", "tools")),
    "prompt_completion": (("prompt", "completion"), ()),
    "text": (("text",), ()),
}
CANONICAL = {name for req, opt in FIELDS.values() for name in req + opt}
ITEM_KEYS = ("role", "content", "from", "value")

# Common column pairs that mean alpaca; only suggested, never applied silently.
_ALPACA_GUESSES = [
    ("question", "answer"), ("query", "response"), ("input", "output"), ("instruction", "response"),
    ("prompt", "response"), ("question", "response"), ("context", "response"), ("user", "assistant"),
]


@dataclass
class Detection:
    format: str
    confidence: float
    reason: str
    columns: dict[str, str] = field(default_factory=dict)  # canonical name -> dataset column

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "confidence": round(self.confidence, 3), "reason": self.reason,
                "columns": dict(self.columns)}


def resolve_columns(column_names: Iterable[str], mapping: dict[str, str] | None) -> dict[str, str]:
    """Turn the user's mapping into canonical name -> dataset column (or item key for role/content).

    Both directions are accepted ({instruction: question} and {question: instruction}) because
    people write both; whichever side names an existing column is the column.
    """
    names = [c for c in column_names if not c.startswith("__")]
    out = {c: c for c in names if c in CANONICAL}
    for key, value in (mapping or {}).items():
        if key in CANONICAL and value in names:
            _assign(out, key, value)
        elif value in CANONICAL and key in names:
            _assign(out, value, key)
        elif key in ITEM_KEYS or value in ITEM_KEYS:
            canonical, actual = (key, value) if key in ITEM_KEYS else (value, key)
            out[f"item:{canonical}"] = actual
        else:
            missing = value if key in CANONICAL else key
            close = difflib.get_close_matches(str(missing), names, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise UserError(
                f"data.columns maps '{key}' to '{value}', but the data has no column '{missing}' "
                f"(columns: {', '.join(names) or 'none'})",
                hint + f"map a format field ({', '.join(sorted(CANONICAL))}) to one of the data's columns",
                kind="config",
            )
    return out


def detect_for(dataset: Any, format: str, columns: dict[str, str] | None = None) -> Detection:
    """The detection to train with: auto-detected for ``"auto"``, else the chosen format checked.

    A chosen format must still find its required columns (after the mapping), so the Data screen,
    ``data inspect`` and training refuse the same files with the same words.
    """
    if format == "auto":
        det = detect_format(dataset, columns)
        if det.format == "unknown":
            raise UserError(f"could not tell the data format: {det.reason}",
                            "set data.format and/or data.columns in the config", kind="config")
        return det
    if format not in FIELDS:
        raise UserError(f"unknown data format '{format}'", f"use one of: {', '.join(FORMATS)}", kind="config")
    names = list(dataset.column_names)
    resolved = resolve_columns(names, columns)
    missing = [r for r in FIELDS[format][0] if r not in resolved]
    if missing:
        have = [c for c in names if not c.startswith("__")]
        raise UserError(f"data.format is {format}, which needs column(s) {', '.join(missing)}; "
                        f"the data has {', '.join(have)}",
                        f"map them with data.columns, e.g. {{{missing[0]}: {have[0] if have else 'COLUMN'}}}",
                        kind="config")
    return Detection(format, 1.0, "set in the config", resolved)


def _assign(out: dict[str, str], canonical: str, column: str) -> None:
    # A column taken by a mapping no longer stands for itself ({instruction: input} frees 'input').
    if out.get(column) == column and column != canonical:
        del out[column]
    out[canonical] = column


def _item_style(rows: list[Any]) -> str | None:
    """'role' for role/content items, 'from' for from/value items, None if no list of dicts was seen."""
    for turns in rows:
        if isinstance(turns, list):
            for item in turns:
                if isinstance(item, dict):
                    if "role" in item:
                        return "role"
                    if "from" in item:
                        return "from"
    return None


def detect_format(dataset: Any, columns: dict[str, str] | None = None, sample: int = 50) -> Detection:
    """Guess the format from columns and a sample of rows; format 'unknown' (confidence 0) if nothing fits."""
    names = [c for c in dataset.column_names if not c.startswith("__")]
    resolved = resolve_columns(names, columns)
    n = min(sample, len(dataset))
    head = dataset[:n] if n else {c: [] for c in dataset.column_names}
    extra = [c for c in names if c not in resolved.values()]
    candidates: list[str] = []
    for fmt in ("messages", "sharegpt", "alpaca", "prompt_completion", "text"):
        if all(r in resolved for r in FIELDS[fmt][0]):
            candidates.append(fmt)
    if not candidates:
        guess = next(((a, b) for a, b in _ALPACA_GUESSES if a in names and b in names), None)
        if guess:
            fix = f"set data.columns: {{instruction: {guess[0]}, output: {guess[1]}}}"
        else:
            fix = ("map them with data.columns, e.g. {instruction: COLUMN, output: COLUMN}, "
                   "or give data.format")
        return Detection("unknown", 0.0, f"no known format in columns {names}; {fix}", resolved)
    fmt = candidates[0]
    conf = 1.0
    reasons = [f"columns {', '.join(resolved[r] for r in FIELDS[fmt][0])}"]
    if fmt in ("messages", "sharegpt"):
        col = resolved[FIELDS[fmt][0][0]]
        style = _item_style(head.get(col, []))
        if style == "from":
            fmt, reasons[0] = "sharegpt", f"column {col} holds from/value turns"
        elif style == "role":
            fmt, reasons[0] = "messages", f"column {col} holds role/content turns"
        else:
            conf -= 0.4
            reasons.append("no turns seen in the first rows")
    if len(candidates) > 1:
        conf -= 0.2
        reasons.append(f"also looks like {', '.join(c for c in candidates if c != fmt)}")
    if extra:
        conf -= 0.1
        reasons.append(f"ignoring columns {', '.join(extra)}")
    if n:
        ok = 0
        rows = [{k: head[k][i] for k in head} for i in range(n)]
        for row in rows:
            try:
                to_conversation(row, fmt, resolved)
                ok += 1
            except BadRow:
                pass
        if ok < n:
            conf *= max(ok / n, 0.1)
            reasons.append(f"{n - ok} of the first {n} rows do not convert")
    return Detection(fmt, max(0.0, min(1.0, conf)), "; ".join(reasons), resolved)


def _field(row: dict[str, Any], columns: dict[str, str], name: str, required: bool) -> Any:
    col = columns.get(name, name)
    value = row.get(col)
    if value is None and required:
        raise BadRow("missing_field", f"missing field '{col}'" + (f" (mapped to {name})" if col != name else ""))
    return value


def to_conversation(row: dict[str, Any], format: str, columns: dict[str, str] | None = None,
                    system_prompt: str | None = None, line: int | None = None,
                    source: str | None = None) -> Conversation:
    """Normalise one raw row; raises BadRow (a UserError with ``kind``) when it cannot be trained on.

    ``columns`` is canonical name -> column; an unresolved user mapping also works because names
    that are not columns fall through to themselves.
    """
    if line is None:
        line = row.get("__line__")
    columns = columns or {}
    try:
        conv = _convert(row, format, columns, system_prompt)
    except BadRow as exc:
        raise BadRow(exc.kind, exc.detail, line, source) from None
    conv.line, conv.source = line, source
    return conv


def _convert(row: dict[str, Any], fmt: str, columns: dict[str, str], system_prompt: str | None) -> Conversation:
    if fmt == "alpaca":
        instruction = _text(_field(row, columns, "instruction", True))
        output = _text(_field(row, columns, "output", True))
        extra = _text(_field(row, columns, "input", False))
        system = _text(_field(row, columns, "system", False)) or system_prompt
        history = _field(row, columns, "history", False) or []
        turns: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        if not isinstance(history, list):
            raise BadRow("bad_type", "'history' should be a list of [instruction, answer] pairs")
        for pair in history:
            if not isinstance(pair, (list, tuple)) or len(pair) != 2:
                raise BadRow("bad_type", "'history' should be a list of [instruction, answer] pairs")
            turns += [{"role": "user", "content": _text(pair[0]) or ""},
                      {"role": "assistant", "content": _text(pair[1]) or ""}]
        prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
        if not (prompt or "").strip():
            raise BadRow("missing_field", "the instruction is empty")
        turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        return Conversation(_check_turns(turns))
    if fmt in ("messages", "sharegpt"):
        col = columns.get(FIELDS[fmt][0][0], FIELDS[fmt][0][0])
        turns = _chat_turns(row.get(col), columns, col)
        system = _text(row.get(columns.get("system", "system"))) if columns.get("system") else None
        if turns and turns[0]["role"] == "system":
            pass
        elif system or system_prompt:
            turns.insert(0, {"role": "system", "content": system or system_prompt})
        tools = tools_list(row.get(columns["tools"])) if columns.get("tools") else None
        return Conversation(_check_turns(turns), tools=tools)
    if fmt == "prompt_completion":
        prompt = _field(row, columns, "prompt", True)
        completion = _field(row, columns, "completion", True)
        if isinstance(prompt, list) or isinstance(completion, list):  # conversational prompt/completion (TRL)
            turns = _chat_turns(prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}],
                                columns, "prompt")
            turns += _chat_turns(completion if isinstance(completion, list)
                                 else [{"role": "assistant", "content": completion}], columns, "completion")
            if system_prompt and turns[0]["role"] != "system":
                turns.insert(0, {"role": "system", "content": system_prompt})
            return Conversation(_check_turns(turns))
        turns = [{"role": "user", "content": _text(prompt)}, {"role": "assistant", "content": _text(completion)}]
        return Conversation(_check_turns(turns), raw=True)
    if fmt == "text":
        text = _text(_field(row, columns, "text", True))
        if not text.strip():
            raise BadRow("empty_output", "the text is empty")
        return Conversation([{"role": "assistant", "content": text}], raw=True)
    raise UserError(f"unknown data format '{fmt}'", f"use one of: {', '.join(FORMATS)}", kind="config")


def role_assignment(fmt: str, columns: dict[str, str], samples: list[dict[str, Any]] | None = None) -> dict[str, str]:
    """Which column (or turn kind) each role's text comes from after the mapping.

    Shown next to the rows so a wrong mapping ("question became the system prompt") is seen before
    training, not after.
    """
    col = lambda name: columns.get(name, name)  # noqa: E731
    if fmt == "alpaca":
        out = {"system": f"column {col('system')}" if "system" in columns else "data.system_prompt (if set)",
               "user": f"column {col('instruction')}" + (f" + column {col('input')}" if "input" in columns else ""),
               "assistant": f"column {col('output')} (trained)"}
        if "history" in columns:
            out["user"] += f"; earlier turns from column {col('history')}"
        return out
    if fmt in ("messages", "sharegpt"):
        where = col(FIELDS[fmt][0][0])
        out = {"system": f"a leading system turn in {where}"
                         + (f", else column {col('system')}" if "system" in columns else ""),
               "user": f"user/human turns in {where}",
               "assistant": f"assistant/gpt turns in {where} (trained; tool calls included)",
               "tool": f"tool/observation turns in {where} (never trained)"}
        if "tools" in columns:
            out["tools"] = f"column {col('tools')} (passed to the chat template)"
        seen = {t.get("role") for s in (samples or []) for t in s.get("turns", [])}
        return {k: v for k, v in out.items() if k in seen or k in ("user", "assistant", "tools")}
    if fmt == "prompt_completion":
        return {"user": f"column {col('prompt')}", "assistant": f"column {col('completion')} (trained)"}
    if fmt == "text":
        return {"text": f"column {col('text')} (all trained)"}
    return {}
