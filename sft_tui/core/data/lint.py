"""Checks that catch the data problems people lose runs to, per row and per tokenizer.

Row checks run on the tokenized batch (numpy arrays, one pass) inside the pipeline's map, so they
cost little and land in the same problem log as bad rows. The ones here keep the row (they are
warnings: the row trains, but probably not as the user meant); ``FATAL`` problems leave it out.

- render parity: the tokens before the last answer must be exactly the tokens of the prompt
  alone, as ``apply_chat_template(..., add_generation_prompt=True)`` gives it at inference. A
  merge across the boundary (``"Assistant: "`` + ``"Hi"`` → ``" Hi"``) trains a prompt the model
  never sees.
- the trained part must end with a token generation stops on, or the model never learns to stop.
- a duplicated BOS (the template writes one and the data holds another).
- control bytes in the text.
"""

from __future__ import annotations

from itertools import chain
from typing import Any

import numpy as np

# Problems that leave the row in training (counted and shown, never fatal).
WARNING_KINDS = ("too_long", "render_mismatch", "no_stop_token", "double_bos", "control_chars")


def _tok(tokenizer: Any, token_id: int) -> str:
    try:
        return repr(tokenizer.convert_ids_to_tokens(int(token_id)))
    except Exception:  # pragma: no cover - exotic tokenizers
        return str(token_id)


def first_difference(train_ids: np.ndarray, prompt_ids: list[int], tokenizer: Any) -> str | None:
    """None when the training row starts with exactly the prompt's tokens; else where they part."""
    n = len(prompt_ids)
    head = train_ids[:n]
    if len(head) == n and np.array_equal(head, np.asarray(prompt_ids, dtype=head.dtype)):
        return None
    i = 0
    while i < min(len(head), n) and int(head[i]) == prompt_ids[i]:
        i += 1
    got = _tok(tokenizer, head[i]) if i < len(head) else "(end)"
    want = _tok(tokenizer, prompt_ids[i]) if i < n else "(end)"
    return (f"token {i + 1}: training has {got}, the inference prompt has {want} "
            "(the template's prompt and answer merge into one token)")


def row_warnings(enc: Any, prompt_ends: list[int | None], texts: list[str], tokenizer: Any,
                 stop_ids: list[int], max_length: int | None) -> list[list[tuple[str, str]]]:
    """(kind, message) warnings per row of an encoded batch (see the module docstring).

    Vectorised over the batch (flat numpy arrays); only the rows that fail a check are looked at one
    by one, to word the message.
    """
    from .masking import IGNORE_INDEX, _fast

    n = len(texts)
    out: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    if not n:
        return out
    starts, kept, orig = enc.starts, enc.lengths, enc.original_lengths
    ids = enc.input_ids
    cut = (orig > kept) if max_length else np.zeros(n, dtype=bool)
    check = [j for j in range(n) if prompt_ends[j] and not cut[j]]
    if check and ids.size:
        rows = np.asarray(check, dtype=np.int64)
        ends = np.asarray([prompt_ends[j] for j in check], dtype=np.int64)
        seg_char, seg_tok = _last_split(enc, rows, ends, tokenizer)
        segments = _fast(tokenizer).encode_batch([texts[j][c:e] for j, c, e in zip(check, seg_char.tolist(),
                                                                                 ends.tolist())],
                                                 add_special_tokens=False)
        p_len = np.fromiter((len(p.ids) for p in segments), dtype=np.int64, count=len(check))
        p_ids = np.fromiter(chain.from_iterable(p.ids for p in segments), dtype=np.int64, count=int(p_len.sum()))
        row_end = starts[rows + 1]
        # each segment token against the training row's token at the same place, all rows at once
        base = np.repeat(seg_tok, p_len)
        within = np.arange(p_ids.size) - np.repeat(np.cumsum(p_len) - p_len, p_len)
        pos = np.minimum(base + within, ids.size - 1)
        differs = ids[pos] != p_ids
        owner = np.repeat(np.arange(len(check)), p_len)
        bad = np.bincount(owner[differs], minlength=len(check)) > 0
        nxt = seg_tok + p_len  # the training row's next token must start at the answer, not inside the prompt
        bad |= nxt > row_end
        inside = nxt < row_end
        bad[inside] |= enc.offsets[nxt[inside], 0] < ends[inside]
        for k in np.nonzero(bad)[0].tolist():
            j = check[k]
            prompt = _fast(tokenizer).encode(texts[j][: prompt_ends[j]], add_special_tokens=False).ids
            diff = first_difference(ids[starts[j]:starts[j + 1]], prompt, tokenizer)
            if diff:
                out[j].append(("render_mismatch", diff))
    trained = enc.labels != IGNORE_INDEX
    if ids.size and stop_ids:
        # the last trained token of each row: the largest trained position within the row
        marks = np.where(trained, np.arange(ids.size), -1)
        nonempty = kept > 0
        last = np.full(n, -1, dtype=np.int64)
        if nonempty.any():
            last[nonempty] = np.maximum.reduceat(marks, starts[:-1][nonempty])
        in_row = (last >= starts[:-1]) & nonempty
        ends_ok = np.isin(ids[np.maximum(last, 0)], np.asarray(stop_ids, dtype=np.int64))
        flagged = in_row & ~ends_ok & ~cut & np.asarray([e is not None for e in prompt_ends])
        names = ", ".join(_tok(tokenizer, s) for s in stop_ids)
        for j in np.nonzero(flagged)[0].tolist():
            out[j].append(("no_stop_token", f"the answer ends with {_tok(tokenizer, ids[last[j]])}, not a token "
                                            f"generation stops on ({names})"))
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and ids.size:
        two = kept >= 2
        first = starts[:-1]
        doubled = two & (ids[first] == bos) & (ids[np.minimum(first + 1, ids.size - 1)] == bos)
        for j in np.nonzero(doubled)[0].tolist():
            out[j].append(("double_bos", f"the row starts with two {_tok(tokenizer, bos)} tokens"))
    return out


def _split_ids(tokenizer: Any) -> np.ndarray | None:
    """Ids of the added tokens (the input is split at them before anything else), or None when the
    text after one cannot be tokenized on its own (Metaspace that prepends only to the first piece)."""
    cached = getattr(tokenizer, "_sft_tui_split_ids", False)
    if cached is not False:
        return cached
    pre = repr(getattr(getattr(tokenizer, "backend_tokenizer", None), "pre_tokenizer", None))
    value = None if "Metaspace" in pre and "first" in pre else np.asarray(
        sorted(int(i) for i in getattr(tokenizer, "added_tokens_decoder", {}) or {}), dtype=np.int64)
    try:
        tokenizer._sft_tui_split_ids = value
    except Exception:  # pragma: no cover
        pass
    return value


def _last_split(enc: Any, rows: np.ndarray, ends: np.ndarray, tokenizer: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per row, where the prompt's last piece starts: just after its last added token (the tokenizer
    splits there first, so everything before is tokenized the same with or without the answer).
    (character offset, token index into the flat batch); the row's start when there is none."""
    starts = enc.starts
    seg_char = np.zeros(len(rows), dtype=np.int64)
    seg_tok = starts[rows].copy()
    split = _split_ids(tokenizer)
    if split is None or not split.size:
        return seg_char, seg_tok
    ids, offs = enc.input_ids, enc.offsets
    counts = starts[rows + 1] - starts[rows]
    flat = np.repeat(starts[rows], counts) + (np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts))
    owner = np.repeat(np.arange(len(rows)), counts)
    hit = np.isin(ids[flat], split) & (offs[flat, 1] <= ends[owner])
    marks = np.where(hit, flat, -1)
    nonempty = counts > 0
    last = np.full(len(rows), -1, dtype=np.int64)
    if nonempty.any():
        first_of_row = np.cumsum(counts) - counts
        last[nonempty] = np.maximum.reduceat(marks, first_of_row[nonempty])
    found = last >= 0
    seg_tok[found] = last[found] + 1
    seg_char[found] = offs[last[found], 1]
    return seg_char, seg_tok


def tokenizer_warnings(tokenizer: Any, template: str | None, stop_ids: list[int]) -> list[str]:
    """Problems of the tokenizer/template pair that affect every row."""
    out: list[str] = []
    if template in ("auto", None) and not getattr(tokenizer, "chat_template", None):
        try:
            pieces = len(tokenizer("<|im_start|>", add_special_tokens=False)["input_ids"])
        except Exception:  # pragma: no cover
            pieces = 0
        if pieces > 1:
            out.append(f"the tokenizer has no chat template (a base model?): rows are written as chatml, whose "
                       f"<|im_start|> is {pieces} tokens in this vocabulary; pick a template this model knows "
                       "(data.template) or use its instruct version")
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is not None and pad in stop_ids:
        out.append(f"the pad token is also the stop token {_tok(tokenizer, pad)}: sft-tui still trains it (labels "
                   "come from the template, not from padding), but trainers that mask padding by id would not")
    return out
