"""Start-up time of the TUI: process start to the first frame of the model screen.

Runs ``sft-tui``'s app headless in fresh processes (so imports are paid each time, as a user pays
them), and a bare Textual app the same way as the baseline measured in the same run. Prints the
median time, its ratio to the 1.5 s goal and the overhead over bare Textual.

    python bench/bench_startup.py [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

GOAL_S = 1.5

CHILD_SFT = r"""
import time, sys
from sft_tui.app import SftApp

async def first_frame(pilot):
    await pilot.pause()  # the first screen is composed, mounted and drawn
    print("FIRST_FRAME", time.time(), flush=True)
    pilot.app.exit()

SftApp().run(headless=True, size=(80, 24), auto_pilot=first_frame)
"""

CHILD_BARE = r"""
import time
from textual.app import App
from textual.widgets import Footer, Static

class Bare(App):
    def compose(self):
        yield Static("hello")
        yield Footer()

async def first_frame(pilot):
    await pilot.pause()
    print("FIRST_FRAME", time.time(), flush=True)
    pilot.app.exit()

Bare().run(headless=True, size=(80, 24), auto_pilot=first_frame)
"""


def measure(code: str, env: dict[str, str]) -> float:
    start = time.time()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    for line in out.stdout.splitlines():
        if line.startswith("FIRST_FRAME"):
            return float(line.split()[1]) - start
    raise RuntimeError(f"no first frame:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    home = tempfile.mkdtemp(prefix="sft-bench-")
    env = dict(os.environ, SFT_TUI_HOME=home, SFT_TUI_SETTINGS=os.path.join(home, "settings.yaml"),
               HF_HUB_OFFLINE="1")
    measure(CHILD_SFT, env)  # warm the OS file cache once, like a second launch
    sft = [measure(CHILD_SFT, env) for _ in range(args.runs)]
    bare = [measure(CHILD_BARE, env) for _ in range(args.runs)]
    sft_med, bare_med = statistics.median(sft), statistics.median(bare)
    result = {"first_frame_s": round(sft_med, 3), "goal_s": GOAL_S, "ratio_to_goal": round(sft_med / GOAL_S, 3),
              "bare_textual_s": round(bare_med, 3), "ratio_to_bare_textual": round(sft_med / bare_med, 3),
              "runs": args.runs, "samples_s": [round(x, 3) for x in sft]}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"sft-tui first frame: {sft_med:.3f} s (median of {args.runs}; samples {result['samples_s']})")
        print(f"ratio to the {GOAL_S} s goal: {result['ratio_to_goal']:.2f} "
              f"({'within' if sft_med <= GOAL_S else 'OVER'} the goal)")
        print(f"bare Textual app: {bare_med:.3f} s; sft-tui / bare: {result['ratio_to_bare_textual']:.2f}")
    return 0 if sft_med <= GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
