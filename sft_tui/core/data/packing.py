"""Packing short rows into max_length sequences, and the collator that batches them.

Packing uses TRL's best-fit-decreasing packer (rows are never split), then adds ``position_ids``
that restart at every packed row, and masks the first label of each packed row so no row is
trained to predict from its neighbour's last token. ``position_ids`` alone keep the rows apart:
flash-attention's varlen kernel, and transformers' block-causal mask for sdpa/eager/flex (built from
position ids when there is no attention mask); ``sft_tui.core.train.fastpaths`` decides when that holds.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .masking import IGNORE_INDEX


def _positions(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    position_ids, labels = [], []
    for seq_lengths, lab in zip(batch["seq_lengths"], batch["labels"]):
        pos = np.concatenate([np.arange(n) for n in seq_lengths]) if seq_lengths else np.zeros(0, dtype=int)
        lab = list(lab)
        start = 0
        for n in seq_lengths:
            if start < len(lab):
                lab[start] = IGNORE_INDEX
            start += n
        position_ids.append(pos.tolist())
        labels.append(lab)
    return {"position_ids": position_ids, "labels": labels,
            "attention_mask": [[1] * len(p) for p in position_ids]}


def pack(dataset: Any, max_length: int) -> Any:
    from trl.data_utils import pack_dataset

    packed = pack_dataset(dataset.select_columns(["input_ids", "labels"]), max_length, strategy="bfd")
    packed = packed.map(_positions, batched=True, remove_columns=["seq_lengths"])
    return packed.select_columns(["input_ids", "attention_mask", "labels", "position_ids"])


def make_collator(tokenizer: Any, packing: bool = False, padding_free: bool = False,
                  pad_to_multiple_of: int | None = None) -> Callable[[list[dict[str, Any]]], dict[str, Any]]:
    """A collator for a plain HF Trainer: pads to the longest row of the batch, never to max_length.

    Padded rows: input_ids (pad id), attention_mask (0), labels (-100).
    Packed rows (``packing``): no attention mask; position_ids restart at every packed row and the
    padding is a segment of its own, so transformers' block-causal mask (sdpa/eager/flex, built from
    position ids) or flash-attention's varlen kernel keeps every row apart.
    ``padding_free`` (packed or not): the whole batch becomes one row with no padding at all;
    position_ids restart at every row and each row's first label is masked (it must not be predicted
    from the previous row's last token).
    """
    import torch

    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0

    def collate(features: list[dict[str, Any]]) -> dict[str, Any]:
        has_pos = packing and all("position_ids" in f for f in features)
        if padding_free:
            ids: list[int] = []
            lab: list[int] = []
            pos: list[int] = []
            for f in features:
                n = len(f["input_ids"])
                ids.extend(f["input_ids"])
                row_labels = list(f["labels"])
                if not has_pos and n:
                    row_labels[0] = IGNORE_INDEX
                lab.extend(row_labels)
                pos.extend(f["position_ids"] if has_pos else range(n))
            return {"input_ids": torch.tensor([ids], dtype=torch.long),
                    "labels": torch.tensor([lab], dtype=torch.long),
                    "position_ids": torch.tensor([pos], dtype=torch.long)}
        longest = max(len(f["input_ids"]) for f in features)
        if pad_to_multiple_of:
            longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        out: dict[str, list[list[int]]] = {"input_ids": [], "labels": []}
        if has_pos:
            out["position_ids"] = []
        else:
            out["attention_mask"] = []
        for f in features:
            n = len(f["input_ids"])
            pad = longest - n
            out["input_ids"].append(list(f["input_ids"]) + [pad_id] * pad)
            out["labels"].append(list(f["labels"]) + [IGNORE_INDEX] * pad)
            if has_pos:  # the padding is its own segment: it attends only to itself and is never a target
                out["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
            else:
                out["attention_mask"].append(list(f.get("attention_mask") or [1] * n) + [0] * pad)
        return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}

    return collate
