"""Dataset pipeline speed, as ratios measured in one run (not a timed test).

1. Tokenizing N alpaca-style rows: sft-tui's ``inspect_data`` (load, render with the chat template,
   tokenize once with offsets, label by overlap with the answers' spans, problems, statistics,
   write the cache) against what a user writes by hand: a batched ``datasets.map`` over the same
   file that calls ``tokenizer.apply_chat_template`` for prompt and prompt+answer and the tokenizer
   on both, per batch, and masks the prompt's tokens.
2. A second ``inspect_data`` of unchanged data against the first (served from the tokenized cache).

The tokenizer, in this order: ``--tokenizer PATH`` (a local model/tokenizer folder, or a Mistral
``tekken.json``); the Mistral-Nemo tokenizer that the ``mistral-common`` package ships
(``mistral_common/data/tekken_240718.json``, converted by transformers); the demo tokenizer, with a
note that the figures are on it. Nothing is downloaded.

Run: python bench/bench_data.py [--rows N] [--tokenizer PATH]. Data and caches go to a temp dir.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

try:  # the installed (or PYTHONPATH) package wins, so another copy of it can be timed
    import sft_tui  # noqa: F401
except ImportError:
    sys.path.append(str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

MAX_LENGTH = 512


def write_alpaca(path: Path, rows: int) -> None:
    rng = random.Random(0)
    words = "the soup screen hotel movie phone was great bad slow bright lovely dull room camera story".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            review = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
            f.write(json.dumps({"instruction": "Read the review and give its sentiment and topic.",
                                "input": f"Review {i}: {review}." if i % 7 else "",
                                "output": f"Sentiment: {rng.choice(['positive', 'negative'])}. Topic: phone."}) + "\n")


def _tekken(path: Path, out_dir: Path):
    """A Mistral tekken.json as a transformers fast tokenizer, saved to and loaded from a plain folder."""
    from transformers import AutoTokenizer
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    convert_tekken_tokenizer(str(path)).save_pretrained(str(out_dir))
    return AutoTokenizer.from_pretrained(str(out_dir), local_files_only=True)


def get_tokenizer(path: str | None, tmp: Path):
    """(tokenizer, description, real): see the module docstring for the order."""
    from transformers import AutoTokenizer

    if path:
        p = Path(path).expanduser()
        if p.is_file() and p.suffix == ".json":
            return _tekken(p, tmp / "tokenizer"), f"{p} (tekken)", True
        return AutoTokenizer.from_pretrained(str(p), local_files_only=True), str(p), True
    try:
        import mistral_common

        tekken = Path(mistral_common.__file__).parent / "data" / "tekken_240718.json"
        if tekken.exists():
            version = getattr(mistral_common, "__version__", "?")
            return _tekken(tekken, tmp / "tokenizer"), f"Mistral-Nemo tekken_240718 (mistral-common {version})", True
    except ImportError:
        pass
    from sft_tui.core.models.demo import ensure_demo_model

    return AutoTokenizer.from_pretrained(str(ensure_demo_model()), local_files_only=True), "demo", False


def hand_written(path: Path, tokenizer, cache: Path) -> int:
    """What a user writes by hand: load with datasets, then one batched map with the chat template."""
    import datasets

    ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))

    def tokenize(batch):
        prompts = [[{"role": "user", "content": f"{q}\n\n{x}" if x else q}]
                   for q, x in zip(batch["instruction"], batch["input"])]
        fulls = [p + [{"role": "assistant", "content": a}] for p, a in zip(prompts, batch["output"])]
        p_text = tokenizer.apply_chat_template(prompts, tokenize=False, add_generation_prompt=True)
        f_text = tokenizer.apply_chat_template(fulls, tokenize=False)
        p_ids = tokenizer(p_text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(f_text, add_special_tokens=False, truncation=True, max_length=MAX_LENGTH)["input_ids"]
        labels = [[-100] * min(len(p), len(f)) + f[len(p):] for p, f in zip(p_ids, ids)]
        return {"input_ids": ids, "labels": labels}

    out = ds.map(tokenize, batched=True, batch_size=1000, remove_columns=ds.column_names)
    return sum(map(len, out["input_ids"]))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--tokenizer", help="a local model/tokenizer folder, or a Mistral tekken.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        tokenizer, which, real = get_tokenizer(args.tokenizer, tmp)  # the demo model from the usual cache
        os.environ["SFT_TUI_CACHE_DIR"] = str(tmp / "cache")
        import datasets

        from sft_tui.core.data import inspect_data

        datasets.disable_progress_bars()
        data = tmp / "alpaca.jsonl"
        write_alpaca(data, args.rows)
        print(f"tokenizer: {which}; rows: {args.rows}; cpus: {os.cpu_count()}")
        if not real:
            print("NOTE: figures are on the demo tokenizer (1k-token toy vocabulary), not a real model's; "
                  "pass --tokenizer PATH or install mistral-common for a real one")
        t = time.perf_counter()
        base_tokens = hand_written(data, tokenizer, tmp / "hf_cache")
        base_s = time.perf_counter() - t
        print(f"hand-written datasets.map (apply_chat_template + tokenizer per batch): {base_s:.2f} s, "
              f"{base_tokens} tokens")
        t = time.perf_counter()
        first = inspect_data(str(data), tokenizer, max_length=MAX_LENGTH)
        first_s = time.perf_counter() - t
        print(f"sft-tui first inspect (load + render + tokenize + mask + stats + cache): {first_s:.2f} s, "
              f"{first.rows_ok} rows, {first.stats['tokens']} tokens")
        if first.stats["tokens"] != base_tokens:
            print(f"  (token totals differ by {first.stats['tokens'] - base_tokens}: sft-tui adds the EOS to "
                  "answers whose template does not end them with it)")
        t = time.perf_counter()
        second = inspect_data(str(data), tokenizer, max_length=MAX_LENGTH)
        second_s = time.perf_counter() - t
        assert second.from_cache and second.stats["tokens"] == first.stats["tokens"]
        print(f"sft-tui second inspect (cache): {second_s:.3f} s")
        print(f"RATIO sft-tui vs hand-written map: {base_s / first_s:.2f}x (above 1 is faster)")
        print(f"RATIO cached inspect speed-up: {first_s / second_s:.1f}x")


if __name__ == "__main__":
    main()
