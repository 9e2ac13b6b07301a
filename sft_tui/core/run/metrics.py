"""Training metrics as series: accumulated from run events, smoothed, down-sampled, with an ETA.

The monitor, the runs comparison and any script share this: events go in (in order, in as many
batches as they arrive), series and the latest values come out. Feeding is incremental, so a
monitor that reads only what was appended since its last refresh never re-parses the log, and a
chart asks ``downsample`` for at most as many points as it has columns. UI-free by design.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from sft_tui.core.run.events import FINAL_STATES, EventTail
from sft_tui.core.run.rundir import RunStatus, fold_event



@dataclass
class Series:
    """Points (x, y) in arrival order; ``None`` y values are dropped (NaN is written as null)."""

    name: str
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)

    def add(self, x: Any, y: Any) -> None:
        if x is None or y is None:
            return
        self.xs.append(x)
        self.ys.append(y)

    def __len__(self) -> int:
        return len(self.xs)

    @property
    def last(self) -> float | None:
        return self.ys[-1] if self.ys else None

    def clear(self) -> None:
        self.xs.clear()
        self.ys.clear()


class StepRate:
    """Steps per second over the last ``window`` train events, from their wall-clock times."""

    def __init__(self, window: int = 30) -> None:
        self.points: deque[tuple[float, float]] = deque(maxlen=window)

    def add(self, when: float | None, step: float | None) -> None:
        if when is None or step is None:
            return
        if self.points and step < self.points[-1][1]:
            self.points.clear()  # a resume that went back to an earlier checkpoint
        self.points.append((float(when), float(step)))

    def rate(self) -> float | None:
        if len(self.points) < 2:
            return None
        (t0, s0), (t1, s1) = self.points[0], self.points[-1]
        if t1 <= t0 or s1 <= s0:
            return None
        return (s1 - s0) / (t1 - t0)

    def eta(self, step: float | None, max_steps: float | None) -> float | None:
        """Seconds left at the current rate; None while unknown."""
        rate = self.rate()
        if rate is None or step is None or not max_steps:
            return None
        return max(max_steps - step, 0) / rate


class RunMetrics:
    """Everything the monitor draws, folded from events one batch at a time."""

    def __init__(self, name: str = "", log_lines: int = 300) -> None:
        self.status = RunStatus(name=name, state="new")
        self.train_loss = Series("train loss")
        self.eval_loss = Series("eval loss")
        self.lr = Series("learning rate")
        self.grad_norm = Series("grad norm")
        self.tokens_per_s = Series("tokens/s")
        self.last_train: dict[str, Any] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_memory: dict[str, Any] | None = None
        self.last_checkpoint: dict[str, Any] | None = None
        self.last_progress: dict[str, Any] | None = None
        self.last_ranks: dict[str, Any] | None = None  # the latest per-rank report (several processes)
        self.last_stall: dict[str, Any] | None = None  # the latest stall, with its thread stacks
        self.last_status: dict[str, Any] | None = None
        self.eval_started: float | None = None  # when the evaluation now running began (worker's clock)
        self.last_saved: dict[str, Any] | None = None  # the worker saved the adapter (or the whole model)
        self.errors: list[dict[str, Any]] = []
        self.logs: deque[dict[str, Any]] = deque(maxlen=log_lines)
        self.rate = StepRate()
        self.events_seen = 0
        self.version = 0  # bumps whenever something drawable changed

    def series(self, key: str) -> Series:
        return {"loss": self.train_loss, "eval_loss": self.eval_loss, "lr": self.lr,
                "grad_norm": self.grad_norm, "tokens_per_s": self.tokens_per_s}[key]

    def feed(self, events: Iterable[dict[str, Any]]) -> set[str]:
        """Fold events in order; returns the set of event types seen (empty when nothing new)."""
        kinds: set[str] = set()
        logs = self.logs
        count = 0
        st = self.status
        train_x, train_y = self.train_loss.xs, self.train_loss.ys
        for ev in events:
            count += 1
            kind = ev.get("type")
            if kind == "memory":  # every step on a real run: keep it cheap
                self.last_memory = ev
                continue
            kinds.add(kind)  # type: ignore[arg-type]
            if kind == "train":  # the hot path, inlined (same rules as rundir.fold_event)
                if st.state == "evaluating":
                    st.state, self.eval_started = "training", None
                step = ev.get("step")
                if step is not None:
                    st.step = step
                    loss = ev.get("loss")
                    if loss is not None:
                        train_x.append(step)
                        train_y.append(loss)
                        st.last_loss = loss
                    for key, series in (("lr", self.lr), ("grad_norm", self.grad_norm),
                                        ("tokens_per_s", self.tokens_per_s)):
                        value = ev.get(key)
                        if value is not None:
                            series.xs.append(step)
                            series.ys.append(value)
                if st.extra:
                    st.extra.pop("stall", None)  # a step completed: the stall is over (as fold_event)
                if "epoch" in ev:
                    st.epoch = ev["epoch"]
                if "max_steps" in ev:
                    st.max_steps = ev["max_steps"]
                self.rate.add(ev.get("time"), step)
                self.last_train = ev
                logs.append(ev)
                continue
            if kind == "eval" and st.state == "evaluating":
                self.eval_started = None  # its results: that evaluation is over (fold_event says training)
            fold_event(st, ev)
            if kind == "eval":
                self.eval_loss.add(ev.get("step"), ev.get("eval_loss"))
                self.last_eval = ev
            elif kind == "checkpoint":
                self.last_checkpoint = ev
            elif kind == "progress":
                self.last_progress = ev
            elif kind == "saved":
                self.last_saved = ev
            elif kind == "status":
                self.last_status = ev
                if ev.get("state") == "starting":
                    self.rate.points.clear()  # a resume: the gap while stopped is not training time
                elif ev.get("state") == "evaluating" and self.eval_started is None:
                    self.eval_started = ev.get("time")
            elif kind == "error":
                self.errors.append(ev)
            elif kind == "stall":
                self.last_stall = ev
            elif kind in ("ranks", "energy"):
                if kind == "ranks":
                    self.last_ranks = ev
                continue  # one a log step or minute: folded, not kept as log lines (they would push real ones out)
            logs.append(ev)
        if count:
            if st.state != "evaluating":
                self.eval_started = None
            self.events_seen += count
            self.version += 1
        return kinds

    # ------------------------------------------------------------------ derived values
    @property
    def step(self) -> int:
        return int(self.status.step or 0)

    @property
    def max_steps(self) -> int | None:
        return self.status.max_steps

    @property
    def finished(self) -> bool:
        return self.status.state in FINAL_STATES

    def fraction(self) -> float | None:
        if not self.max_steps:
            return None
        return min(max(self.step / self.max_steps, 0.0), 1.0)

    @property
    def evaluating(self) -> bool:
        """The worker is evaluating between training steps: no steps pass, so the ETA is paused."""
        return self.status.state == "evaluating"

    def eval_fraction(self) -> float | None:
        """How far the evaluation now running is, when the worker reports it (progress, stage evaluating)."""
        p = self.last_progress
        if not self.evaluating or not p or p.get("stage") != "evaluating" or p.get("fraction") is None:
            return None
        if self.eval_started is not None and (p.get("time") or 0) < self.eval_started:
            return None  # an earlier evaluation's progress
        return min(max(float(p["fraction"]), 0.0), 1.0)

    def eta(self) -> float | None:
        """Seconds of training left at the recent rate; None once finished. (While evaluating no step
        passes, so it is the time left after the evaluation: callers show it as paused.)"""
        if self.finished:
            return None
        return self.rate.eta(self.step, self.max_steps)

    def elapsed(self) -> float | None:
        """Training seconds by the worker's own clock (deterministic: no 'now' involved)."""
        if self.last_train is not None and self.last_train.get("elapsed_s") is not None:
            return float(self.last_train["elapsed_s"])
        return None

    def best_eval(self) -> tuple[float | None, float | None]:
        """(step, loss) of the lowest eval loss so far."""
        if not self.eval_loss.ys:
            return None, None
        i = min(range(len(self.eval_loss.ys)), key=self.eval_loss.ys.__getitem__)
        return self.eval_loss.xs[i], self.eval_loss.ys[i]


def load_metrics(run, name: str | None = None) -> RunMetrics:
    """A run's whole history as metrics (for comparisons and scripts)."""
    metrics = RunMetrics(name or run.name)
    metrics.feed(EventTail(run.events_path, thin=True).read_new())
    return metrics


# ---------------------------------------------------------------------- smoothing and down-sampling


def ema(values: Sequence[float], weight: float) -> list[float]:
    """TensorBoard-style smoothing: exponential moving average, debiased so it starts at the data.

    ``weight`` 0 returns the values unchanged; 0.9 is heavy smoothing.
    """
    if weight <= 0 or not values:
        return list(values)
    weight = min(weight, 0.999)
    out = []
    last = 0.0
    n = 0
    for v in values:
        n += 1
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight**n))
    return out


def downsample(xs: Sequence[float], ys: Sequence[float], buckets: int, how: str = "mean",
               x_range: tuple[float, float] | None = None) -> tuple[list[float], list[float], list[float]]:
    """Reduce points to at most ``buckets`` by x position.

    Returns (x, y, y2) per non-empty bucket: for ``how='mean'`` y is the mean and y2 the same mean;
    for ``how='minmax'`` y is the minimum and y2 the maximum (draw a span). x is the bucket's mean x.
    Buckets split ``x_range`` (default: the data's own range) evenly, so several series down-sampled
    with the same range line up column by column.
    """
    n = len(xs)
    if n == 0 or buckets <= 0:
        return [], [], []
    lo, hi = x_range if x_range is not None else (min(xs), max(xs))
    if n <= buckets and how == "mean" and x_range is None:
        return list(xs), list(ys), list(ys)
    span = hi - lo
    scale = (buckets - 1) / span if span > 0 else 0.0
    sx = [0.0] * buckets
    sy = [0.0] * buckets
    cnt = [0] * buckets
    mn = [math.inf] * buckets
    mx = [-math.inf] * buckets
    last = buckets - 1
    minmax = how == "minmax"
    for x, y in zip(xs, ys):
        b = int((x - lo) * scale + 0.5)
        if b < 0 or b > last:
            continue
        sx[b] += x
        sy[b] += y
        cnt[b] += 1
        if minmax:
            if y < mn[b]:
                mn[b] = y
            if y > mx[b]:
                mx[b] = y
    out_x, out_y, out_y2 = [], [], []
    for b in range(buckets):
        c = cnt[b]
        if not c:
            continue
        out_x.append(sx[b] / c)
        if minmax:
            out_y.append(mn[b])
            out_y2.append(mx[b])
        else:
            m = sy[b] / c
            out_y.append(m)
            out_y2.append(m)
    return out_x, out_y, out_y2


class SeriesReducer:
    """A growing series kept as at most ``max_blocks`` block means, extended incrementally.

    Points pass through an optional log10 and an optional EMA, then go into blocks of ``size``
    points; when there are too many blocks, neighbours merge and the size doubles. Drawing a 100k-point
    series then costs ``downsample`` over ~``max_blocks`` points, and each refresh only folds the
    points appended since the last one.
    """

    def __init__(self, log_y: bool = False, smoothing: float = 0.0, max_blocks: int = 2048) -> None:
        self.log_y, self.smoothing, self.max_blocks = log_y, min(max(smoothing, 0.0), 0.999), max_blocks
        self.size = 1
        self.blocks: list[list[float]] = []  # [sum_x, sum_y, count]
        self.partial = [0.0, 0.0, 0]
        self.consumed = 0
        self._ema = 0.0
        self._ema_n = 0

    def extend(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        log_y, weight = self.log_y, self.smoothing
        partial, blocks, size = self.partial, self.blocks, self.size
        for i in range(self.consumed, len(xs)):
            y = ys[i]
            if log_y:
                if y is None or y <= 0:
                    continue
                y = math.log10(y)
            if weight:
                self._ema_n += 1
                self._ema = self._ema * weight + (1 - weight) * y
                y = self._ema / (1 - weight**self._ema_n)
            partial[0] += xs[i]
            partial[1] += y
            partial[2] += 1
            if partial[2] >= size:
                blocks.append(partial)
                partial = [0.0, 0.0, 0]
                if len(blocks) > self.max_blocks:
                    merged = [[a[0] + b[0], a[1] + b[1], a[2] + b[2]] for a, b in zip(blocks[0::2], blocks[1::2])]
                    if len(blocks) % 2:
                        merged.append(blocks[-1])
                    blocks[:] = merged
                    size *= 2
        self.partial, self.size, self.consumed = partial, size, len(xs)

    def points(self) -> tuple[list[float], list[float]]:
        xs = [b[0] / b[2] for b in self.blocks]
        ys = [b[1] / b[2] for b in self.blocks]
        if self.partial[2]:
            xs.append(self.partial[0] / self.partial[2])
            ys.append(self.partial[1] / self.partial[2])
        return xs, ys
