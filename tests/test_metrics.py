"""Core monitor logic without any UI: series from events, smoothing, down-sampling, ETA, run index."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sft_tui.testing import synthetic
from sft_tui.core.run.metrics import (
    RunMetrics,
    StepRate,
    downsample,
    ema,
    load_metrics,
)
from sft_tui.core.format import compact as fmt_num
from sft_tui.core.format import human_bytes as fmt_bytes
from sft_tui.core.format import human_duration as fmt_duration
from sft_tui.core.run.events import EventTail, parse_bulk
from sft_tui.core.run.processes import process_tree, tree_rss
from sft_tui.core.run.index import RunIndex


def test_ema_debiased_and_identity():
    assert ema([1.0, 2.0, 3.0], 0) == [1.0, 2.0, 3.0]
    smoothed = ema([2.0, 2.0, 2.0], 0.9)
    assert smoothed == pytest.approx([2.0, 2.0, 2.0])  # debiased: starts at the data, not at 0
    noisy = [1.0, 3.0] * 50
    out = ema(noisy, 0.9)
    assert max(out[-10:]) - min(out[-10:]) < 0.5  # much flatter than the ±1 input
    assert ema([], 0.5) == []


def test_downsample_mean_and_minmax():
    xs = list(range(1000))
    ys = [float(x % 10) for x in xs]
    bx, by, by2 = downsample(xs, ys, 10)
    assert len(bx) == 10 and by == by2
    assert all(3.5 < y < 5.5 for y in by)  # the mean of 0..9 per bucket
    bx, lo, hi = downsample(xs, ys, 10, "minmax")
    assert min(lo) == 0 and max(hi) == 9
    # fewer points than buckets: returned unchanged
    assert downsample([1, 2], [3, 4], 100) == ([1, 2], [3, 4], [3, 4])
    # a shared x range lines buckets up across series; points outside are dropped
    bx, by, _ = downsample([0, 50, 100, 200], [1, 2, 3, 4], 11, x_range=(0, 100))
    assert bx == [0, 50, 100] and by == [1, 2, 3]
    assert downsample([], [], 10) == ([], [], [])


def test_step_rate_eta():
    rate = StepRate(window=5)
    assert rate.eta(0, 100) is None
    for i in range(10):
        rate.add(1000.0 + i * 2, i)  # 0.5 steps/s
    assert rate.rate() == pytest.approx(0.5)
    assert rate.eta(9, 109) == pytest.approx(200.0)
    rate.add(2000.0, 3)  # a resume from an earlier checkpoint resets the window
    assert rate.rate() is None


def test_run_metrics_feed_incrementally(tmp_path):
    evs = list(synthetic.events(40, 100, final=None, eval_every=10, save_every=20))
    m = RunMetrics("r")
    m.feed(evs[:30])
    first = len(m.train_loss)
    m.feed(evs[30:])
    assert len(m.train_loss) == 40 > first
    assert m.train_loss.xs[:3] == [1.0, 2.0, 3.0]
    assert len(m.eval_loss) == 4 and m.last_checkpoint["step"] == 40 - 40 % 20
    assert m.status.state == "training" and m.step == 40 and m.max_steps == 100
    assert m.fraction() == pytest.approx(0.4)
    assert m.eta() == pytest.approx(60 * 0.5, rel=0.01)  # 60 steps left at 2 steps/s
    assert m.elapsed() == pytest.approx(20.0)
    assert all(ev["type"] != "memory" for ev in m.logs)
    step, best = m.best_eval()
    assert best == min(m.eval_loss.ys) and step in m.eval_loss.xs
    assert m.feed([]) == set()
    m.feed([{"time": 1, "type": "error", "kind": "oom", "message": "out of memory", "hint": "lower batch"},
            {"time": 2, "type": "status", "state": "failed"}])
    assert m.errors[-1]["hint"] == "lower batch" and m.finished and m.eta() is None


def test_null_values_are_skipped():
    m = RunMetrics()
    m.feed([{"type": "train", "step": 1, "loss": None, "lr": 1e-4}, {"type": "train", "step": 2, "loss": 2.0}])
    assert m.train_loss.xs == [2.0] and m.lr.xs == [1.0]


def test_parse_bulk_falls_back_on_damaged_lines():
    good = b'{"type": "train", "step": 1}\n{"type": "train", "step": 2}\n'
    assert [e["step"] for e in parse_bulk(good)] == [1, 2]
    damaged = b'{"type": "train", "step": 1}\ngarbage\n{"type": "train", "step": 3}\n[1]\n'
    assert [e["step"] for e in parse_bulk(damaged)] == [1, 3]
    assert parse_bulk(b"") == []


def test_fast_tail_torn_line_and_chunks(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"type": "train", "step": 1}\n{"type": "train", "st')
    tail = EventTail(path)
    assert [e["step"] for e in tail.read_new()] == [1]
    assert tail.read_new() == []
    with open(path, "a") as fh:
        fh.write('ep": 2}\n')
    assert [e["step"] for e in tail.read_new()] == [2]
    # reading in small chunks gives the same events as one read
    lines = "".join(json.dumps({"type": "train", "step": i}) + "\n" for i in range(500))
    path.write_text(lines)
    tail, got = EventTail(path), []
    while chunk := tail.read_new(max_bytes=1000):
        got += chunk
    assert [e["step"] for e in got] == list(range(500))
    assert EventTail(tmp_path / "missing").read_new() == []
    # thin: only the newest memory sample of a read is parsed
    run = synthetic.write_run(tmp_path, "thin", steps=30)
    full = EventTail(run.events_path).read_new()
    thin = EventTail(run.events_path, thin=True).read_new()
    assert [e for e in full if e["type"] != "memory"] == [e for e in thin if e["type"] != "memory"]
    assert [e for e in thin if e["type"] == "memory"] == [[e for e in full if e["type"] == "memory"][-1]]
    m_full, m_thin = RunMetrics(), RunMetrics()
    m_full.feed(full)
    m_thin.feed(thin)
    assert m_full.last_memory == m_thin.last_memory and m_full.train_loss == m_thin.train_loss


def test_load_metrics_and_run_index(tmp_path):
    done = synthetic.write_run(tmp_path, "a-done", steps=20, eval_every=5)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    crashed = synthetic.write_run(tmp_path, "b-crashed", steps=10, max_steps=50, final=None, pid=dead.pid)
    live = synthetic.write_run(tmp_path, "c-live", steps=5, max_steps=50, final=None, pid=os.getpid())
    m = load_metrics(done)
    assert len(m.train_loss) == 20 and m.status.state == "done"

    index = RunIndex(tmp_path)
    rows = {run.name: st for run, st in index.refresh()}
    assert rows["a-done"].state == "done" and rows["a-done"].best_eval_loss is not None
    assert rows["b-crashed"].state == "died"  # events say training, but the pid is gone
    assert rows["c-live"].state == "training" and rows["c-live"].alive
    assert rows["a-done"].model == "demo" and rows["a-done"].method == "lora"
    # incremental: appended events are folded, nothing else re-read
    tracked = index._tracked[live.path]
    offset = tracked.tail.offset
    synthetic.append(live, synthetic.train_event(6, 50, synthetic.T0 + 100))
    rows = {run.name: st for run, st in index.refresh()}
    assert rows["c-live"].step == 6 and tracked.tail.offset > offset
    # a deleted run disappears
    crashed_path = crashed.path
    import shutil

    shutil.rmtree(crashed_path)
    assert sorted(run.name for run, _ in index.refresh()) == ["a-done", "c-live"]


def test_process_tree_and_rss():
    assert process_tree(os.getpid())[0] == os.getpid()
    assert tree_rss(os.getpid()) > 10 << 20
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert process_tree(dead.pid) == [] and tree_rss(dead.pid) is None
    assert process_tree(None) == [] and tree_rss(None) is None


def test_series_reducer_is_incremental_and_bounded():
    from sft_tui.core.run.metrics import SeriesReducer

    xs = list(range(1, 10_001))
    ys = [float(x) for x in xs]
    red = SeriesReducer(max_blocks=100)
    red.extend(xs[:5000], ys[:5000])
    red.extend(xs, ys)  # only the new half is folded
    px, py = red.points()
    assert len(px) <= 101 and red.consumed == 10_000
    assert px == pytest.approx(py)  # y = x, so block means agree
    assert px[0] < 100 and px[-1] > 9_800
    log = SeriesReducer(log_y=True)
    log.extend([1, 2, 3], [10.0, 0.0, 100.0])  # non-positive values cannot be drawn on a log axis
    assert log.points() == ([1.0, 3.0], [1.0, 2.0])
    smooth = SeriesReducer(smoothing=0.9)
    smooth.extend([1, 2, 3], [5.0, 5.0, 5.0])
    assert smooth.points()[1] == pytest.approx([5.0, 5.0, 5.0])


def test_formatting():
    assert fmt_duration(None) == "-" and fmt_duration(65) == "1:05" and fmt_duration(3725) == "1:02:05"
    assert fmt_bytes(None) == "n/a" and fmt_bytes(600 << 20) == "600 MiB" and fmt_bytes(3 << 30) == "3.0 GiB"
    assert fmt_num(None) == "-" and fmt_num(1.23456) == "1.235" and fmt_num(2e-4) == "2.0e-04"
    assert fmt_num(7690) == "7.69k" and fmt_num(0) == "0"


def test_chart_draws_downsampled_braille():
    from sft_tui.widgets.chart import ChartSeries, LineChart

    chart = LineChart("loss")
    xs = list(range(1, 100_001))
    ys = [3.0 / (1 + x / 1000) for x in xs]
    chart.series = [ChartSeries("train", xs, ys), ChartSeries("eval", xs[::1000], ys[::1000], smooth=False)]
    text = chart.draw(60, 12)
    lines = text.plain.splitlines()
    assert len(lines) == 12 and all(len(line) <= 60 for line in lines)
    assert "train" in lines[0] and "eval" in lines[0]
    assert any(0x2800 < ord(ch) <= 0x28FF for ch in text.plain)
    # down-sampled to the dot columns of the plot, never more
    assert 0 < chart.last_points["train"] <= 2 * 60
    assert lines[-1].strip().startswith("1") and lines[-1].rstrip().endswith("100000")
    chart.log_y = True
    assert "log" in chart.draw(60, 12).plain.splitlines()[0]
    empty = LineChart("loss", empty_text="waiting")
    assert "waiting" in empty.draw(40, 8).plain
