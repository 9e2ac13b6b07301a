"""Monitor cost on a long run, as ratios measured in one run (not a timed test).

1. Opening a 100k-line events.jsonl: sft-tui's history load (bulk JSON parse in 4 MB chunks, series
   folded in one pass) against ``RunDir.status()`` + per-line parsing (what reading the log the plain
   way costs).
2. One refresh tick after a single appended event: the incremental tail (read only new bytes, fold,
   redraw the chart from its block means) against re-reading the whole log (what a naive monitor
   would do every half second).
3. Drawing the loss chart: first draw (all points reduced) and a redraw after one new point.

Run: python bench/bench_monitor.py [--steps N]. The run folder goes to a temp dir and is deleted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sft_tui.testing import synthetic  # noqa: E402
from sft_tui.core.run.events import EventTail  # noqa: E402
from sft_tui.core.run.metrics import RunMetrics  # noqa: E402
from sft_tui.core.run.rundir import RunDir  # noqa: E402


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=50_000, help="train steps (each also writes a memory line)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-monitor-"))
    try:
        run = synthetic.write_run(root, "big", steps=args.steps, max_steps=args.steps * 2, final=None,
                                  eval_every=500, save_every=1000)
        lines = sum(1 for _ in open(run.events_path, "rb"))
        size = run.events_path.stat().st_size / 2**20
        print(f"events.jsonl: {lines:,} lines, {size:.1f} MiB")

        def ours() -> RunMetrics:
            m = RunMetrics()
            tail = EventTail(run.events_path, thin=True)  # as the monitor reads
            while chunk := tail.read_new(max_bytes=4 << 20):
                m.feed(chunk)
            return m

        t_ours = best_of(ours)
        t_base = best_of(lambda: RunDir(run.path).status())
        print(f"1. open history: {t_ours:.3f}s  (baseline RunDir.status(): {t_base:.3f}s, ratio {t_base / t_ours:.2f}x)")

        from sft_tui.widgets.chart import ChartSeries, LineChart

        metrics = ours()
        tail = EventTail(run.events_path, offset=run.events_path.stat().st_size)
        chart = LineChart("loss")
        chart.smoothing = 0.6
        chart.series = [ChartSeries("train", metrics.train_loss.xs, metrics.train_loss.ys),
                        ChartSeries("eval", metrics.eval_loss.xs, metrics.eval_loss.ys, smooth=False)]
        t_first = best_of(lambda: chart.draw(100, 24), repeat=1)
        step = [args.steps]

        def tick() -> None:
            step[0] += 1
            synthetic.append(run, synthetic.train_event(step[0], args.steps * 2, synthetic.T0 + step[0]))
            metrics.feed(tail.read_new())
            chart.draw(100, 24)

        def naive_tick() -> None:
            step[0] += 1
            synthetic.append(run, synthetic.train_event(step[0], args.steps * 2, synthetic.T0 + step[0]))
            m = RunMetrics()
            m.feed(RunDir(run.path).events())

        t_tick = best_of(tick, repeat=5)
        t_naive = best_of(naive_tick, repeat=2)
        print(f"2. refresh after one new event: {1000 * t_tick:.2f} ms  (baseline full re-read: "
              f"{1000 * t_naive:.0f} ms, ratio {t_naive / t_tick:.0f}x)")
        t_redraw = best_of(lambda: (metrics.train_loss.xs.append(step[0] + 1), metrics.train_loss.ys.append(1.0),
                                    chart.draw(100, 24)), repeat=5)
        print(f"3. chart draw: first {1000 * t_first:.0f} ms, redraw after one point {1000 * t_redraw:.2f} ms "
              f"(ratio {t_first / t_redraw:.0f}x); points drawn per series <= {2 * 100}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
