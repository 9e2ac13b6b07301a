"""From rendered pieces to input_ids and labels, token by token.

The whole training text is tokenized once (so tokens are exactly what the model sees, with no
seams where pieces meet) and each token is labelled from the character offsets the fast
tokenizer reports: a token is trained when any of its characters belongs to a trained piece.
The same offsets drive ``segments()``, so the preview shows precisely the trained tokens.
"""

from __future__ import annotations

import re
from itertools import chain, repeat
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from sft_tui.core.errors import UserError

from .conversation import BadRow, Conversation
from .templates import Pieces, Renderer, get_renderer

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
    def attention_mask(self) -> list[int]:
        return [1] * len(self.input_ids)

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


def label_batch(pieces_batch: Sequence[Pieces], tokenizer: Any, max_length: int | None,
                train_on_prompt: bool = False) -> list[TokenizedRow]:
    """Tokenize many rendered rows at once (one Rust call) and label them from offsets."""
    backend = _fast(tokenizer)
    texts = ["".join(t for t, _ in pieces) for pieces in pieces_batch]
    encodings = backend.encode_batch(texts, add_special_tokens=False)
    rows = []
    for pieces, text, enc in zip(pieces_batch, texts, encodings):
        ids = enc.ids
        offsets = enc.offsets
        n = len(ids)
        if train_on_prompt:
            labels = list(ids)
        else:
            lengths = np.fromiter((len(t) for t, _ in pieces), dtype=np.int64, count=len(pieces))
            flags = np.fromiter((f for _, f in pieces), dtype=bool, count=len(pieces))
            char_trained = np.repeat(flags, lengths)
            cum = np.concatenate(([0], np.cumsum(char_trained, dtype=np.int64)))
            offs = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
            starts, ends = offs[:, 0], offs[:, 1]
            trained = (cum[ends] - cum[starts]) > 0
            empty = ends <= starts
            if empty.any():
                pos = np.minimum(starts[empty], max(len(text) - 1, 0))
                trained[empty] = char_trained[pos] if len(char_trained) else False
            labels = np.where(trained, np.asarray(ids, dtype=np.int64), IGNORE_INDEX).tolist()
        truncated = max_length is not None and n > max_length
        if truncated:
            ids, labels, offsets = ids[:max_length], labels[:max_length], offsets[:max_length]
        rows.append(TokenizedRow(list(ids), labels, text, list(offsets), n, truncated))
    return rows


def tokenize_conversation(conv: Conversation, tokenizer: Any, template: str | Renderer = "auto",
                          max_length: int | None = None, train_on_prompt: bool = False,
                          truncation: str = "truncate") -> TokenizedRow:
    """One row, exactly as training sees it; raises BadRow('too_long') when truncation is 'drop'."""
    renderer = template if isinstance(template, Renderer) else get_renderer(tokenizer, template)
    row = label_batch([renderer.pieces(conv)], tokenizer, max_length, train_on_prompt)[0]
    if row.truncated and truncation == "drop":
        raise BadRow("too_long", f"{row.original_length} tokens > max_length {max_length}", conv.line, conv.source)
    return row


@dataclass
class EncodedBatch:
    """Many rows tokenized and labelled at once, as flat numpy arrays (row r owns ``starts[r]:starts[r+1]``)."""

    input_ids: np.ndarray  # int64, all rows' kept tokens one after another
    labels: np.ndarray  # int64
    starts: np.ndarray  # int64, len(rows) + 1
    original_lengths: np.ndarray  # tokens before truncation
    trained: np.ndarray  # trained tokens kept per row

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.starts)


@dataclass
class SpanArrays:
    """Trained char spans of many rows as arrays (row r owns ``counts[r]`` rows of ``flat``, in order),
    so rows built column-wise never need a list of tuples per row."""

    counts: np.ndarray  # int64, spans per row
    flat: np.ndarray  # int64 (total spans, 2): start, end within the row's text

    @classmethod
    def from_lists(cls, spans: Sequence[Sequence[tuple[int, int]]]) -> "SpanArrays":
        counts = np.fromiter(map(len, spans), dtype=np.int64, count=len(spans))
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(spans)), dtype=np.int64,
                           count=2 * int(counts.sum())).reshape(-1, 2)
        return cls(counts, flat)

    @classmethod
    def merge(cls, first: "SpanArrays", second: "SpanArrays", is_first: np.ndarray) -> "SpanArrays":
        """Interleave two sets of rows: row r comes from ``first`` where ``is_first[r]``, else from ``second``."""
        counts = np.zeros(len(is_first), dtype=np.int64)
        counts[is_first], counts[~is_first] = first.counts, second.counts
        span_first = np.repeat(is_first, counts)
        flat = np.empty((int(counts.sum()), 2), dtype=np.int64)
        flat[span_first], flat[~span_first] = first.flat, second.flat
        return cls(counts, flat)


def encode_spans_batch(texts: Sequence[str], spans: "Sequence[Sequence[tuple[int, int]]] | SpanArrays",
                       tokenizer: Any, max_length: int | None, train_on_prompt: bool = False,
                       cache: "PreTokenCache | None" = None) -> EncodedBatch:
    """Tokenize many texts in one Rust call and label them from trained char spans, with numpy only.

    Gives exactly what ``label_batch`` gives row by row: a token is trained when any of its characters
    is in a trained span (an empty-width token takes the label of the character at its start).
    ``spans`` per row (lists, or SpanArrays) must be sorted, disjoint and non-empty. With a ``cache`` (see PreTokenCache)
    the rows it can do skip the Rust call; some of them are checked against it (all of the first ones).
    """
    backend = _fast(tokenizer)
    n = len(texts)
    cached = cache.encode_rows(texts) if cache is not None else None
    if cached is None:
        slow = list(range(n))
        handled = np.zeros(n, dtype=bool)
    else:
        handled = cached.handled
        slow = np.nonzero(~handled)[0].tolist()
    encodings = backend.encode_batch([texts[i] for i in slow], add_special_tokens=False) if slow else []
    counts = np.zeros(n, dtype=np.int64)
    counts[slow] = np.fromiter(map(len, encodings), dtype=np.int64, count=len(slow))
    if cached is not None:
        counts[handled] = cached.counts
    total = int(counts.sum())
    tok_starts = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=tok_starts[1:])
    n_slow_tok = total - (int(cached.counts.sum()) if cached is not None else 0)
    slow_ids = np.fromiter(chain.from_iterable(e.ids for e in encodings), dtype=np.int64, count=n_slow_tok)
    if cached is None or not slow:
        ids = slow_ids if cached is None else cached.ids
        fast_tok = None
    else:
        fast_tok = np.repeat(handled, counts)
        ids = np.empty(total, dtype=np.int64)
        ids[fast_tok] = cached.ids
        ids[~fast_tok] = slow_ids
    if train_on_prompt:
        trained = np.ones(total, dtype=bool)
    else:
        text_lens = np.fromiter(map(len, texts), dtype=np.int64, count=n)
        char_base = np.zeros(n, dtype=np.int64)
        np.cumsum(text_lens[:-1], out=char_base[1:])
        row_of_tok = np.repeat(np.arange(n), counts)
        base = char_base[row_of_tok]
        slow_offs = np.fromiter(chain.from_iterable(chain.from_iterable(e.offsets for e in encodings)),
                                dtype=np.int64, count=2 * n_slow_tok).reshape(-1, 2)
        if cached is None:
            gs, ge = slow_offs[:, 0] + base, slow_offs[:, 1] + base
        else:
            # cached rows' tokens cover their text end to end: global offsets follow from token lengths,
            # because the rows' texts sit one after another in the same global character space
            fast_ends = np.cumsum(cached.lens) + np.repeat(char_base[handled] - np.concatenate(
                ([0], np.cumsum(text_lens[handled])[:-1])), cached.counts)
            if fast_tok is None:
                ge = fast_ends
                gs = fast_ends - cached.lens
            else:
                gs, ge = np.empty(total, dtype=np.int64), np.empty(total, dtype=np.int64)
                ge[fast_tok], gs[fast_tok] = fast_ends, fast_ends - cached.lens
                ge[~fast_tok] = slow_offs[:, 1] + base[~fast_tok]
                gs[~fast_tok] = slow_offs[:, 0] + base[~fast_tok]
        arrays = spans if isinstance(spans, SpanArrays) else SpanArrays.from_lists(spans)
        span_counts, flat = arrays.counts, arrays.flat
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
        ids, labels, trained = ids[within], labels[within], trained[within]
        kept = np.minimum(counts, max_length)
        starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(kept, out=starts[1:])
    else:
        starts = tok_starts
    cum = np.zeros(len(trained) + 1, dtype=np.int64)
    np.cumsum(trained, out=cum[1:])
    n_trained = cum[starts[1:]] - cum[starts[:-1]]
    return EncodedBatch(ids, labels, starts, counts, n_trained)


# --------------------------------------------------------------------------- pre-token cache

# The GPT-2 byte-level pre-tokenizer's pattern, written for the characters the cache accepts
# (tab, newline, carriage return and printable ASCII), where every regex engine agrees on it.
_GPT2_ASCII = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")
_CACHE_CHARS = re.compile(r"[\t\n\r -~]*")
_NOT_CACHE_CHAR = re.compile(r"[^\t\n\r -~]")
# The same pattern for a whole batch at once, where added tokens and row ends were replaced by
# private-use marker characters: a marker is a word of its own, no other alternative can take one,
# and whitespace before a marker behaves as at the end of a text. So one ``findall`` over the batch
# gives exactly the words of splitting each row at its added tokens and running ``_GPT2_ASCII`` on
# every part (the cached rows never contain a non-ASCII character themselves).
_MARKS = "\ue000-\uf8ff"
_GPT2_MARKED = re.compile(rf"""[{_MARKS}]|'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9{_MARKS}]+"""
                          rf"""|\s+(?![^\s{_MARKS}])|\s+""")
_ROW_END = "\uf8ff"
_MAX_ADDED = 0xF8FF - 0xE000  # added tokens that can get a marker of their own


def _overlap_free(tokens: list[str]) -> bool:
    """Whether no token occurs inside another or overlaps one (itself included) in any text: then
    replacing them one by one finds exactly the occurrences a leftmost regex split finds."""
    for a in tokens:
        for b in tokens:
            if a != b and b in a:
                return False
            if any(a[-k:] == b[:k] for k in range(1, min(len(a), len(b)) + (0 if a == b else 1))):
                return False
    return True


class PreTokenCache:
    """Exact token ids for byte-level BPE tokenizers, memoised per pre-token (word).

    A byte-level BPE tokenizer (GPT-2 style: no normaliser, the ``ByteLevel`` pre-tokenizer with its
    regex, no prefix space, BPE without dropout, no truncation) tokenizes a text as: split at added
    tokens, split each part with the pre-tokenizer's regex, run BPE on each piece on its own. For
    text made only of printable ASCII, tabs and newlines that regex means the same in every engine,
    so those steps can be done here with the pieces' tokens looked up in a dict; only new pieces go
    to the Rust model. Rows with any other character go to the Rust tokenizer. ``from_tokenizer``
    returns None for every other kind of tokenizer, and callers check a sample of rows against the
    Rust tokenizer anyway.
    """

    MAX_ENTRIES = 1_000_000
    VERIFY_FIRST = 64  # rows checked against the Rust tokenizer before trusting the cache
    VERIFY_EVERY = 256  # and then one row in this many
    LEARN_CHUNKS = 8  # new words go to Rust in this many texts, encoded in parallel

    def __init__(self, backend: Any, added: dict[str, int]) -> None:
        self.backend = backend
        self.model = backend.model
        self.added = added
        ordered = sorted(added, key=len, reverse=True)
        self.added_re = re.compile("|".join(re.escape(t) for t in ordered)) if added else None
        self.marker = {t: chr(0xE000 + k) for k, t in enumerate(ordered)}
        self.replace_one_by_one = len(added) <= 300 and _overlap_free(ordered)
        self.tok_len = self._token_lengths(backend, added)
        self._reset()
        self.disabled = False
        self.checked = 0

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "PreTokenCache | None":
        import json

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            return None
        try:
            spec = json.loads(backend.to_str())
        except Exception:
            return None
        pre, model, post = spec.get("pre_tokenizer") or {}, spec.get("model") or {}, spec.get("post_processor")
        if spec.get("normalizer") is not None or spec.get("truncation") is not None or spec.get("padding") is not None:
            return None
        if pre != {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": pre.get("trim_offsets"),
                   "use_regex": True}:
            return None
        if model.get("type") != "BPE" or model.get("dropout") is not None or model.get("byte_fallback") \
                or model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("unk_token"):
            return None
        if post is not None and post.get("type") != "TemplateProcessing":  # others may move offsets
            return None
        added: dict[str, int] = {}
        for tok in spec.get("added_tokens", []):
            if tok.get("lstrip") or tok.get("rstrip") or tok.get("single_word") or tok.get("normalized"):
                return None
            if not _CACHE_CHARS.fullmatch(tok["content"]) or not tok["content"]:
                return None
            added[tok["content"]] = tok["id"]
        if len(added) > _MAX_ADDED:
            return None
        return cls(backend, added)

    @staticmethod
    def _token_lengths(backend: Any, added: dict[str, int]) -> np.ndarray:
        """Character length of every token id, from the vocabulary. Byte-level BPE writes each byte as
        one character, and the cached texts are ASCII (one byte per character), so a token's length in
        the text is the length of its vocabulary string: no need to ask Rust for offsets."""
        vocab = backend.get_vocab(with_added_tokens=True)
        lens = np.zeros(max(vocab.values(), default=0) + 1, dtype=np.int64)
        lens[np.fromiter(vocab.values(), dtype=np.int64, count=len(vocab))] = \
            np.fromiter(map(len, vocab), dtype=np.int64, count=len(vocab))
        for text, tid in added.items():
            lens[tid] = len(text)
        return lens

    def encode(self, text: str) -> tuple[list[int], list[int]] | None:
        """(ids, character length of each token) of one text, or None if the text has other characters."""
        got = self.encode_rows([text], verify=False)
        if got is None or not got.handled[0]:
            return None
        return got.ids.tolist(), got.lens.tolist()

    def _batch_words(self, texts: list[str]) -> list[str]:
        """Words of all texts in one regex pass: added tokens become their marker, and every row ends
        with ``_ROW_END`` (a word with no tokens) so rows can be told apart afterwards."""
        joined = _ROW_END.join(texts) + _ROW_END
        if self.added_re is not None:
            marker = self.marker
            if self.replace_one_by_one:
                for token, mark in marker.items():
                    joined = joined.replace(token, mark)
            else:
                joined = self.added_re.sub(lambda m: marker[m.group(0)], joined)
        return _GPT2_MARKED.findall(joined)

    def _learn(self, words: list[str]) -> None:
        """Tokenize new words in one Rust call: joined by an added token, each is a separate part of the
        text, so it is pre-tokenized (to itself) and run through BPE exactly as when it stood alone."""
        if not words:
            return
        if len(self.word_id) + len(words) > self.MAX_ENTRIES:
            self._reset()
        if not self.added:
            encs = self.backend.encode_batch(words, add_special_tokens=False)
            ids = np.fromiter(chain.from_iterable(e.ids for e in encs), dtype=np.int64)
            counts = np.fromiter(map(len, encs), dtype=np.int64, count=len(words))
        else:
            sep = min(self.added, key=len)
            # The text sep.join(words) + sep, cut after separators into a few chunks that Rust encodes
            # in parallel; added tokens are hard borders, so the chunks' tokens are the whole text's.
            step = max(1, -(-len(words) // self.LEARN_CHUNKS))
            chunks = [sep.join(words[a:a + step]) + sep for a in range(0, len(words), step)]
            encs = self.backend.encode_batch(chunks, add_special_tokens=False)
            lens = np.fromiter(map(len, words), dtype=np.int64, count=len(words))
            word_start = np.zeros(len(words), dtype=np.int64)
            np.cumsum(lens[:-1] + len(sep), out=word_start[1:])
            ids = np.fromiter(chain.from_iterable(e.ids for e in encs), dtype=np.int64)
            tok_end = np.cumsum(self.tok_len[ids])  # tokens cover the joined text end to end
            tok_start = tok_end - self.tok_len[ids]
            owner = np.searchsorted(word_start, tok_start, "right") - 1
            inside = tok_end <= word_start[owner] + lens[owner]  # not a separator token
            owner, ids = owner[inside], ids[inside]
            counts = np.bincount(owner, minlength=len(words)).astype(np.int64)
        self._append(words, ids, self.tok_len[ids], counts)

    def _append(self, words: list[str], ids: np.ndarray, lens: np.ndarray, counts: np.ndarray) -> None:
        first = len(self.word_id)
        self.word_id.update(zip(words, range(first, first + len(words))))
        starts = len(self.tok_ids) + np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        self.tok_ids = np.concatenate((self.tok_ids, ids))
        self.tok_lens = np.concatenate((self.tok_lens, lens))
        self.word_start = np.concatenate((self.word_start, starts))
        self.word_count = np.concatenate((self.word_count, counts))

    def _reset(self) -> None:
        self.word_id: dict[str, int] = {}
        self.tok_ids = np.zeros(0, dtype=np.int64)
        self.tok_lens = np.zeros(0, dtype=np.int64)
        self.word_start = np.zeros(0, dtype=np.int64)
        self.word_count = np.zeros(0, dtype=np.int64)
        # Added tokens are in the word table under their markers, and a row end is a word of no tokens.
        words = list(self.added)
        self._append([self.marker[w] for w in words] + [_ROW_END],
                     np.asarray([self.added[w] for w in words], dtype=np.int64),
                     np.asarray([len(w) for w in words], dtype=np.int64),
                     np.asarray([1] * len(words) + [0], dtype=np.int64))

    def encode_rows(self, texts: Sequence[str], verify: bool = True) -> "CachedRows | None":
        """Tokens of the rows it can do, as flat arrays; the first rows and a sample are checked against Rust.

        On any disagreement the cache turns itself off for good (None: every row goes to Rust).
        """
        if self.disabled:
            return None
        if _NOT_CACHE_CHAR.search("".join(texts)) is None:  # the usual case: one scan for the batch
            handled = np.ones(len(texts), dtype=bool)
        else:
            ok = _CACHE_CHARS.fullmatch
            handled = np.fromiter((ok(t) is not None for t in texts), dtype=bool, count=len(texts))
        n_rows = int(handled.sum())
        if n_rows == len(texts):
            flat_words = self._batch_words(list(texts))
        else:
            flat_words = self._batch_words([t for t, h in zip(texts, handled) if h]) if n_rows else []
        get = self.word_id.get
        wid = np.fromiter(map(get, flat_words, repeat(-1)), dtype=np.int64, count=len(flat_words))
        unknown = np.nonzero(wid < 0)[0]
        if unknown.size:
            unknown_words = [flat_words[i] for i in unknown.tolist()]
            new = list(dict.fromkeys(unknown_words))
            if len(self.word_id) + len(new) > self.MAX_ENTRIES:  # start over: everything is looked up again
                self._reset()
                self._learn([w for w in dict.fromkeys(flat_words) if w not in self.word_id])
                wid = np.fromiter(map(self.word_id.__getitem__, flat_words), dtype=np.int64, count=len(flat_words))
            else:
                self._learn(new)
                wid[unknown] = np.fromiter(map(self.word_id.__getitem__, unknown_words), dtype=np.int64,
                                           count=unknown.size)
        word_counts = self.word_count[wid]
        cw = np.zeros(len(flat_words) + 1, dtype=np.int64)
        np.cumsum(word_counts, out=cw[1:])
        n_tok = int(cw[-1])
        # token k of the batch is token (k - first token of its word) of its word's entry
        gather = np.arange(n_tok, dtype=np.int64) + np.repeat(self.word_start[wid] - cw[:-1], word_counts)
        row_ends = np.nonzero(wid == self.word_id[_ROW_END])[0]  # one per row, the last word of each
        if len(row_ends) != n_rows:  # cannot happen for ASCII rows; if it did, Rust does them all
            self.disabled = True
            return None
        tok_at_end = cw[row_ends]
        counts = np.diff(tok_at_end, prepend=0)
        got = CachedRows(handled, self.tok_ids[gather], self.tok_lens[gather], counts)
        if verify:
            self._check(texts, got)
        return None if self.disabled else got

    def _check(self, texts: Sequence[str], got: "CachedRows") -> None:
        done = np.nonzero(got.handled)[0]
        picks = list(range(min(len(done), max(0, self.VERIFY_FIRST - self.checked))))
        picks += list(range(0, len(done), self.VERIFY_EVERY))
        picks = sorted(set(picks))
        if not picks:
            return
        self.checked += len(picks)
        starts = np.concatenate(([0], np.cumsum(got.counts)))
        encs = self.backend.encode_batch([texts[int(done[k])] for k in picks], add_special_tokens=False)
        for k, enc in zip(picks, encs):
            a, b = int(starts[k]), int(starts[k + 1])
            lens = got.lens[a:b]
            ends = np.cumsum(lens)
            if enc.ids != got.ids[a:b].tolist() or enc.offsets != list(zip((ends - lens).tolist(), ends.tolist())):
                self.disabled = True
                return


@dataclass
class CachedRows:
    handled: np.ndarray  # bool per row: done by the cache
    ids: np.ndarray  # the handled rows' tokens, one row after another
    lens: np.ndarray  # each token's length in characters
    counts: np.ndarray  # tokens per handled row
