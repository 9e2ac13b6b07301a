"""Every figure this machine can measure, one line each, in under 10 minutes on 2 cores.

    python bench/run_all.py [--quick] [--no-write]

1. overhead: sft-tui's real worker vs a plain TRL SFTTrainer script (bench/bench_overhead.py), same demo
   model, rows, LoRA and steps; medians of interleaved runs with the spread
2. tokenization vs a hand-written ``datasets.map`` on a real tokenizer, and the cache hit (bench/bench_data.py)
3. start-up to the first frame (bench/bench_startup.py)
4. monitor refresh on a long run's events (bench/bench_monitor.py)

The latest figures, with the machine and date, replace the block between the run_all markers in
bench/RESULTS.md (GPU checks append their own sections below it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
START, END = "<!-- run_all:start -->", "<!-- run_all:end -->"


def run(args: list[str], timeout: float) -> str:
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1"))
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr[-1500:]}")
    return proc.stdout


def grab(pattern: str, text: str) -> str:
    m = re.search(pattern, text, re.M)
    return m.group(0).strip() if m else f"(no line matching {pattern!r})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke test, not figures)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md")
    args = parser.parse_args()
    started = time.monotonic()
    lines: list[str] = []

    def show(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    sys.path.insert(0, str(ROOT))
    from bench.bench_overhead import line as overhead_line, measure

    reps, steps = (1, 20) if args.quick else (5, 60)
    result = measure(reps, steps, "demo", 4, 256, say=lambda m: None)
    show(overhead_line(result))
    out = run([str(BENCH / "bench_data.py"), "--rows", "2000" if args.quick else "20000"], 400)
    show("tokenization: " + grab(r"RATIO sft-tui vs hand-written map.*", out).replace("RATIO ", "")
         + " | " + grab(r"^tokenizer: .*", out))
    show("cache hit: " + grab(r"RATIO cached inspect speed-up.*", out).replace("RATIO ", ""))
    out = run([str(BENCH / "bench_startup.py"), "--runs", "3" if args.quick else "5"], 300)
    show("start-up: " + grab(r"^sft-tui first frame.*", out) + " | " + grab(r"^bare Textual app.*", out))
    out = run([str(BENCH / "bench_monitor.py"), "--steps", "5000" if args.quick else "50000"], 300)
    show("monitor: " + grab(r"^2\. refresh after one new event.*", out)[3:] + " | " + grab(r"^1\. open history.*", out)[3:])
    took = time.monotonic() - started
    machine = f"{platform.node() or 'machine'}: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, " \
              f"Python {platform.python_version()}"
    show(f"(all figures in {took:.0f} s on {machine})")
    if not args.no_write and not args.quick:
        write_results(lines, machine)
    return 0


def write_results(lines: list[str], machine: str) -> None:
    path = BENCH / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    block = (f"{START}\n## Latest CPU figures — {dt.date.today().isoformat()}\n\n{machine}; `python bench/run_all.py`\n\n"
             + "\n".join(f"- {line}" for line in lines[:-1]) + f"\n{END}")
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        head, _, rest = text.partition("\n")
        text = head + "\n\n" + block + "\n" + rest
    path.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
