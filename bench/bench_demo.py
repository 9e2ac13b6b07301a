"""Does the demo teach something? Default config, default sample data, a real worker process.

Prints the loss curve, the time until the training loss first fell to half its first value (goal:
within 2 minutes on 2 CPU cores), and base-vs-tuned scores on the held-out split (exact match,
ROUGE-L, eval loss) measured the same way for both.

Run: python bench/bench_demo.py [--steps N] [--limit ROWS]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=None, help="max_steps (default: the config's epochs)")
    parser.add_argument("--limit", type=int, default=100, help="held-out rows to generate answers for")
    args = parser.parse_args()

    from sft_tui.core.config import Config
    from sft_tui.core.models.demo import ensure_demo_model
    from sft_tui.core.eval.evaluate import evaluate_run
    from sft_tui.core.run.launch import start_run

    t0 = time.monotonic()
    ensure_demo_model(progress=lambda m: print("demo:", m))
    print(f"demo model ready in {time.monotonic() - t0:.1f} s")

    config = Config()  # the defaults a newcomer gets: LoRA r16, lr 2e-4, 3 epochs, sample alpaca data
    if args.steps:
        config.training.max_steps = args.steps
    runs = Path(tempfile.mkdtemp(prefix="sft-bench-demo-"))
    run = start_run(config, runs_dir=runs)
    print(f"run: {run.path}")

    first_loss = None
    train_start = None
    half_at = None
    curve: list[tuple[int, float, float]] = []
    for ev in run.follow(poll=0.5):
        if ev["type"] == "status" and ev["state"] == "training":
            train_start = ev["time"]
        elif ev["type"] == "train" and ev.get("loss") is not None:
            elapsed = ev["time"] - (train_start or ev["time"])
            curve.append((ev["step"], ev["loss"], elapsed))
            if first_loss is None:
                first_loss = ev["loss"]
            if half_at is None and ev["loss"] <= first_loss / 2:
                half_at = (ev["step"], elapsed)
        elif ev["type"] == "error":
            print("ERROR:", ev.get("message"), ev.get("hint"))
            return 1
    status = run.status()
    print(f"final status: {status.state} after {status.step} steps")
    print("loss curve (step, loss, seconds since training started):")
    stride = max(len(curve) // 15, 1)
    for step, loss, elapsed in curve[::stride] + ([curve[-1]] if curve and (len(curve) - 1) % stride else []):
        print(f"  {step:5d}  {loss:7.4f}  {elapsed:6.1f} s")
    if first_loss is not None and curve:
        print(f"first loss {first_loss:.3f}, last loss {curve[-1][1]:.3f} "
              f"(ratio {curve[-1][1] / first_loss:.3f}); training took {curve[-1][2]:.1f} s")
    if half_at:
        print(f"RATIO loss halved at step {half_at[0]} after {half_at[1]:.1f} s "
              f"(goal: within 120 s): {half_at[1] / 120:.2f} of the budget")
    else:
        print("loss never fell to half its first value")

    t1 = time.monotonic()
    result = evaluate_run(run, limit=args.limit)
    print(f"held-out evaluation ({result.rows_generated} rows generated, {result.rows_loss} rows for loss, "
          f"{time.monotonic() - t1:.1f} s):")
    cols = result.columns()
    print("  " + " | ".join(f"{c:>14}" for c in cols))
    for label, cells in result.table():
        print("  " + " | ".join(f"{x:>14}" for x in [label, *cells]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
