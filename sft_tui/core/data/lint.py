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
    """(kind, message) warnings per row of an encoded batch (see the module docstring)."""
    from .masking import IGNORE_INDEX, _fast

    n = len(texts)
    out: list[list[tuple[str, str]]] = [[] for _ in range(n)]
    starts, kept, orig = enc.starts, enc.lengths, enc.original_lengths
    check = [j for j in range(n) if prompt_ends[j] and not (max_length and orig[j] > kept[j])]
    prompts = _fast(tokenizer).encode_batch([texts[j][: prompt_ends[j]] for j in check], add_special_tokens=False)
    for j, prompt in zip(check, prompts):
        diff = first_difference(enc.input_ids[starts[j]:starts[j + 1]], prompt.ids, tokenizer)
        if diff:
            out[j].append(("render_mismatch", diff))
    stops = np.asarray(stop_ids, dtype=np.int64)
    bos = getattr(tokenizer, "bos_token_id", None)
    for j in range(n):
        a, b = int(starts[j]), int(starts[j + 1])
        labels = enc.labels[a:b]
        trained = np.nonzero(labels != IGNORE_INDEX)[0]
        if prompt_ends[j] is not None and trained.size and stops.size and not (max_length and orig[j] > kept[j]):
            last = int(enc.input_ids[a + trained[-1]])
            if last not in stops:
                out[j].append(("no_stop_token", f"the answer ends with {_tok(tokenizer, last)}, not a token "
                                                f"generation stops on ({', '.join(_tok(tokenizer, s) for s in stops)})"))
        if bos is not None and b - a >= 2 and enc.input_ids[a] == bos and enc.input_ids[a + 1] == bos:
            out[j].append(("double_bos", f"the row starts with two {_tok(tokenizer, bos)} tokens"))
    return out


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
