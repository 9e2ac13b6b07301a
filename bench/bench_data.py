"""Dataset pipeline speed, as ratios measured in one run (not a timed test).

1. Tokenizing a 100k-row alpaca-style file: sft-tui's pipeline (batched ``datasets.map``, one Rust
   call per 1000 rows, labels from offsets, ``num_proc``) against the per-row Python loop people
   write first: for each row, render prompt and prompt+answer with ``apply_chat_template`` and call
   the tokenizer on both to find where the answer starts. Both produce the same labels.
2. A second ``inspect_data`` of unchanged data against the first (served from the tokenized cache).

Run: python bench/bench_data.py [--rows N]. The data file goes to a temp dir and is deleted.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def write_alpaca(path: Path, rows: int) -> None:
    rng = random.Random(0)
    words = "the soup screen hotel movie phone was great bad slow bright lovely dull room camera story".split()
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            review = " ".join(rng.choice(words) for _ in range(rng.randint(8, 40)))
            f.write(json.dumps({"instruction": "Read the review and give its sentiment and topic.",
                                "input": f"Review {i}: {review}.",
                                "output": f"Sentiment: {rng.choice(['positive', 'negative'])}. Topic: phone."}) + "\n")


def get_tokenizer():
    try:
        from transformers import AutoTokenizer

        from sft_tui.core.models.demo import ensure_demo_model

        return AutoTokenizer.from_pretrained(str(ensure_demo_model()), local_files_only=True), "demo"
    except Exception as exc:  # demo model missing or failing: an equivalent toy tokenizer
        from sft_tui.testing.toy import build_toy_tokenizer

        return build_toy_tokenizer("chatml"), f"toy chatml ({type(exc).__name__})"


def per_row_loop(path: Path, tokenizer) -> int:
    total = 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            prompt = [{"role": "user", "content": f"{row['instruction']}\n\n{row['input']}"}]
            full = prompt + [{"role": "assistant", "content": row["output"]}]
            p_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            f_text = tokenizer.apply_chat_template(full, tokenize=False)
            ids = tokenizer(f_text.rstrip(), add_special_tokens=False)["input_ids"]
            n_prompt = len(tokenizer(p_text, add_special_tokens=False)["input_ids"])
            labels = [-100] * n_prompt + ids[n_prompt:]
            total += len(labels)
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--baseline-rows", type=int, default=20_000,
                        help="rows the slow loop runs on; its time is scaled to --rows")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SFT_TUI_CACHE_DIR"] = str(Path(tmp) / "cache")
        from sft_tui.core.data import inspect_data

        tokenizer, which = get_tokenizer()
        data = Path(tmp) / "alpaca.jsonl"
        write_alpaca(data, args.rows)
        small = Path(tmp) / "alpaca_small.jsonl"
        with open(data, encoding="utf-8") as src, open(small, "w", encoding="utf-8") as dst:
            for i, line in enumerate(src):
                if i >= args.baseline_rows:
                    break
                dst.write(line)
        print(f"tokenizer: {which}; rows: {args.rows}; cpus: {os.cpu_count()}")
        t = time.perf_counter()
        per_row_loop(small, tokenizer)
        loop_s = (time.perf_counter() - t) * args.rows / args.baseline_rows
        print(f"per-row loop (apply_chat_template + tokenizer per row): {loop_s:.2f} s "
              f"(measured on {args.baseline_rows} rows, scaled)")
        t = time.perf_counter()
        first = inspect_data(str(data), tokenizer, max_length=512)
        first_s = time.perf_counter() - t
        print(f"sft-tui first inspect (load + tokenize + mask + stats + cache): {first_s:.2f} s, "
              f"{first.rows_ok} rows, {first.stats['tokens']} tokens")
        t = time.perf_counter()
        second = inspect_data(str(data), tokenizer, max_length=512)
        second_s = time.perf_counter() - t
        assert second.from_cache and second.stats["tokens"] == first.stats["tokens"]
        print(f"sft-tui second inspect (cache): {second_s:.3f} s")
        print(f"RATIO tokenize speed-up vs per-row loop: {loop_s / first_s:.1f}x (target >= 5x)")
        print(f"RATIO cached inspect speed-up: {first_s / second_s:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
