"""From rendered pieces to input_ids and labels, token by token.

The whole training text is tokenized once (so tokens are exactly what the model sees, with no
seams where pieces meet) and each token is labelled from the character offsets the fast
tokenizer reports: a token is trained when any of its characters belongs to a trained piece.
The same offsets drive ``segments()``, so the preview shows precisely the trained tokens.
"""

from __future__ import annotations

from itertools import chain
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from sft_tui.core.errors import UserError

from .conversation import BadRow, Conversation
from .templates import Renderer, get_renderer, pieces_to_spans

IGNORE_INDEX = -100


@dataclass
class TokenizedRow:
    input_ids: list[int]
    labels: list[int]
    text: str
    offsets: list[tuple[int, int]] = field(repr=False)
    original_length: int = 0  # tokens before truncation
    truncated: bool = False

    @property
    def trained_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)

    def segments(self) -> list[tuple[str, bool]]:
        """(text, trained) chunks covering the kept tokens; chunk borders fall on token borders."""
        if not self.input_ids:
            return []
        flags = [x != IGNORE_INDEX for x in self.labels]
        out: list[tuple[str, bool]] = []
        start_char, start_tok = 0, 0
        for i in range(1, len(flags) + 1):
            if i == len(flags) or flags[i] != flags[start_tok]:
                end_char = self.offsets[i][0] if i < len(flags) else max(self.offsets[-1][1], start_char)
                end_char = max(end_char, start_char)
                out.append((self.text[start_char:end_char], flags[start_tok]))
                start_char, start_tok = end_char, i
        return out


def _fast(tokenizer: Any) -> Any:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(
            f"the tokenizer {type(tokenizer).__name__} is not a fast (Rust) tokenizer",
            "sft-tui needs a fast tokenizer for exact label masking; most models ship tokenizer.json",
            kind="config",
        )
    return backend


def tokenize_conversation(conv: Conversation, tokenizer: Any, template: str | Renderer = "auto",
                          max_length: int | None = None, train_on_prompt: bool = False,
                          truncation: str = "truncate") -> TokenizedRow:
    """One row, exactly as training sees it; raises BadRow('too_long') when truncation is 'drop'."""
    renderer = template if isinstance(template, Renderer) else get_renderer(tokenizer, template)
    text, spans = pieces_to_spans(renderer.pieces(conv))
    enc = encode_spans_batch([text], [spans], tokenizer, max_length, train_on_prompt)
    n = int(enc.original_lengths[0])
    row = TokenizedRow(enc.input_ids.tolist(), enc.labels.tolist(), text, [tuple(o) for o in enc.offsets.tolist()],
                       n, max_length is not None and n > max_length)
    if row.truncated and truncation == "drop":
        raise BadRow("too_long", f"{row.original_length} tokens > max_length {max_length}", conv.line, conv.source)
    return row


@dataclass
class EncodedBatch:
    """Many rows tokenized and labelled at once, as flat numpy arrays (row r owns ``starts[r]:starts[r+1]``)."""

    input_ids: np.ndarray  # int64, all rows' kept tokens one after another
    labels: np.ndarray  # int64
    offsets: np.ndarray  # int64 (kept tokens, 2): each token's start and end in its row's text
    starts: np.ndarray  # int64, len(rows) + 1
    original_lengths: np.ndarray  # tokens before truncation
    trained: np.ndarray  # trained tokens kept per row

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


def encode_spans_batch(texts: Sequence[str], spans: Sequence[Sequence[tuple[int, int]]], tokenizer: Any,
                       max_length: int | None, train_on_prompt: bool = False) -> EncodedBatch:
    """Tokenize many texts in one Rust call and label them from trained char spans, with numpy only.

    A token is trained when any of its characters is in a trained span (an empty-width token takes
    the label of the character at its start). ``spans`` per row must be sorted, disjoint and non-empty.
    """
    backend = _fast(tokenizer)
    n = len(texts)
    encodings = backend.encode_batch(list(texts), add_special_tokens=False)
    counts = np.fromiter(map(len, encodings), dtype=np.int64, count=n)
    total = int(counts.sum())
    tok_starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=tok_starts[1:])
    ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=total)
    offs = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
                       dtype=np.int64, count=2 * total).reshape(-1, 2)
    if train_on_prompt:
        trained = np.ones(total, dtype=bool)
    else:
        # All rows' texts one after another in one character space: global offsets and spans.
        text_lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        char_base = np.zeros(n, dtype=np.int64)
        np.cumsum(text_lens[:-1], out=char_base[1:])
        row_of_tok = np.repeat(np.arange(n), counts)
        base = char_base[row_of_tok]
        gs, ge = offs[:, 0] + base, offs[:, 1] + base
        span_counts = np.fromiter(map(len, spans), dtype=np.int64, count=n)
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(spans)), dtype=np.int64,
                           count=2 * int(span_counts.sum())).reshape(-1, 2)
        span_base = np.repeat(char_base, span_counts)
        span_s, span_e = flat[:, 0] + span_base, flat[:, 1] + span_base
        # token [s, e) meets a span iff some span starts before e and ends after s; spans are sorted
        # and disjoint, so that is: (#spans starting before e) > (#spans ending at or before s)
        trained = np.searchsorted(span_s, ge, "left") > np.searchsorted(span_e, gs, "right")
        empty = ge <= gs
        if empty.any():
            rows = row_of_tok[empty]
            lens = text_lens[rows]
            pos = np.minimum(gs[empty] - char_base[rows], np.maximum(lens - 1, 0)) + char_base[rows]
            j = np.searchsorted(span_s, pos, "right") - 1
            hit = (j >= 0) & (lens > 0)
            hit[hit] = span_e[j[hit]] > pos[hit]
            trained[empty] = hit
    labels = np.where(trained, ids, IGNORE_INDEX)
    if max_length is not None and total and counts.max() > max_length:
        within = np.arange(total) - np.repeat(tok_starts[:-1], counts) < max_length
        ids, labels, offs, trained = ids[within], labels[within], offs[within], trained[within]
        kept = np.minimum(counts, max_length)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(kept, out=starts[1:])
    else:
        starts = tok_starts
    cum = np.zeros(len(trained) + 1, dtype=np.int64)
    np.cumsum(trained, out=cum[1:])
    n_trained = cum[starts[1:]] - cum[starts[:-1]]
    return EncodedBatch(ids, labels, offs, starts, counts, n_trained)
