"""Numbers that tell a user whether the data fits the model: lengths, trained share, padding waste.

Everything is computed from per-row length arrays (numpy), never from the token lists, so it
costs milliseconds even for a million rows and can be recomputed from the cache.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PERCENTILES = (50, 90, 95, 99)


def length_stats(lengths: np.ndarray, trained: np.ndarray | None, max_length: int | None,
                 batch_size: int = 4, original: np.ndarray | None = None, seed: int = 0,
                 bins: int = 20) -> dict[str, Any]:
    """Token statistics; ``original`` are pre-truncation lengths (rows over max_length are counted there)."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.size)
    out: dict[str, Any] = {"rows": n}
    if n == 0:
        return out
    total = int(lengths.sum())
    out["tokens"] = total
    if trained is not None:
        t = int(np.asarray(trained, dtype=np.int64).sum())
        out["trained_tokens"] = t
        out["trained_share"] = round(t / total, 4) if total else 0.0
    src = np.asarray(original if original is not None else lengths, dtype=np.int64)
    out["length"] = {
        "min": int(src.min()), "mean": round(float(src.mean()), 1), "max": int(src.max()),
        **{f"p{p}": int(np.percentile(src, p)) for p in PERCENTILES},
    }
    counts, edges = np.histogram(src, bins=min(bins, max(1, int(src.max() - src.min()) + 1)))
    out["histogram"] = {"edges": [int(round(e)) for e in edges], "counts": counts.astype(int).tolist()}
    if max_length:
        out["max_length"] = int(max_length)
        out["over_max_length"] = int((src > max_length).sum())
    out["padding"] = padding_waste(lengths, batch_size, max_length, seed)
    return out


def padding_waste(lengths: np.ndarray, batch_size: int, max_length: int | None, seed: int = 0) -> dict[str, Any]:
    """Share of computed tokens that are padding, for shuffled batches without packing and with it.

    Without packing each batch is padded to its longest row (what the collator does). With
    packing rows are filled greedily (best fit, like TRL's BFD) into max_length bins; plain packing
    pads every bin to max_length, padding-free packing only wastes nothing.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.size == 0:
        return {}
    order = np.random.default_rng(seed).permutation(lengths.size)
    shuffled = lengths[order]
    pad = (-shuffled.size) % batch_size
    padded = np.concatenate([shuffled, np.zeros(pad, dtype=np.int64)]).reshape(-1, batch_size)
    computed = int((padded.max(axis=1) * (padded > 0).sum(axis=1)).sum())
    real = int(lengths.sum())
    out: dict[str, Any] = {"batch_size": batch_size,
                           "without_packing": round(1 - real / computed, 4) if computed else 0.0}
    if max_length:
        clipped = np.minimum(lengths, max_length)
        # Bin packing is a Python loop; a 20k-row sample gives the same ratio to a fraction of a percent.
        sample = clipped if clipped.size <= 20000 else shuffled[:20000].clip(max=max_length)
        bins_used = _count_bins(sample, max_length)
        out["packed_rows"] = int(round(bins_used * clipped.size / sample.size))
        out["with_packing"] = round(1 - int(sample.sum()) / (bins_used * max_length), 4) if bins_used else 0.0
    return out


def _count_bins(lengths: np.ndarray, capacity: int) -> int:
    """First-fit-decreasing bin count, bucketed by remaining space so it stays fast for big data."""
    space_count = np.zeros(capacity + 1, dtype=np.int64)  # bins by free space
    bins = 0
    values, counts = np.unique(lengths, return_counts=True)
    for length, count in zip(values[::-1].tolist(), counts[::-1].tolist()):
        while count:
            fits = np.nonzero(space_count[length:])[0]
            if fits.size:
                space = int(fits[0]) + length
                space_count[space] -= 1
                space_count[space - length] += 1
            else:
                bins += 1
                space_count[capacity - length] += 1
            count -= 1
    return bins
