"""The stall watchdog: a run whose steps stop completing says so, with where every thread is.

A hung run looks exactly like a slow one from outside — the monitor's numbers simply stop moving.
A daemon thread in the worker notices when no step completes for ``max(stall_factor × median step
time, stall_min_s)`` seconds, and writes ONE ``stall`` event naming the phase it is stuck in (running
a training step, loading data, saving a checkpoint, evaluating) and the Python stack of every thread
(``faulthandler``), so "it hangs in NCCL all-reduce" or "it waits on an NFS write" is visible without
attaching a debugger. When steps resume, one ``log`` line says after how long.

Why 10 × the median (``training.stall_factor``) is the default, measured on the demo model (CPU, one
torch thread, ``sft-tui train`` on the quick-test preset with logging_steps 1, save_steps 10, eval_steps
20: 60 steps; the step-to-step intervals of its ``train`` events). Alone on 2 cores: median step
0.036 s, plain steps at most 1.2 × the median, a step followed by a checkpoint save 1.7-2.0 ×, a step
followed by an evaluation and a save 15-16 ×. Two such runs at once on the same 2 cores (other jobs
running too, load ~2): medians 0.038-0.046 s, plain steps up to 2.3 ×, a checkpoint step up to 3.2 ×,
an evaluation + save step 13-22 ×. So the step factor has to cover jitter of 2-3 × (CPU contention, a
GPU clock change, a small save), while evaluation and saving — the only 10 ×+ intervals — get their own
allowances below. 10 keeps a 3 × margin over the worst ordinary step seen and still reports a hang of
5 s steps within a minute; the ``stall_min_s`` floor (120 s by default) keeps fast steps from ever
alarming over a hiccup of seconds. The default stays 10.

What pauses or widens the watch:
- evaluation: every evaluation batch (``on_prediction_step``) counts as progress, so a long evaluation
  is not a stall but one evaluation batch that hangs is;
- a checkpoint save (from the ``on_step_end`` that asks for it until ``on_save``): allowed
  ``SAVE_ALLOWANCE_S`` (30 min; a full fine-tune's optimizer state on a slow disk takes minutes), or
  the step allowance if that is longer;
- before ``MIN_STEPS`` step intervals are known, the floor ``stall_min_s`` alone (the first steps
  include warm-up and compilation).

Input-bound runs: on a CUDA run each check also samples the GPU's utilisation; when recent steps take
more than ``INPUT_BOUND_RATIO`` × the median while the GPU is under ``INPUT_BOUND_UTIL`` % busy, one
``log`` warning (``input_bound=True``) says the GPU is waiting for data and what to do. On CPU it never
fires. Only the worker imports this module (it imports transformers).
"""

from __future__ import annotations

import faulthandler
import os
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from transformers import TrainerCallback

from sft_tui.core.train import faults

# Phases read after "while" (the log line, the notifications): "no step for 5m 12s while saving a checkpoint".
PHASE_STEP = "running a training step"
PHASE_DATA = "loading data"
PHASE_SAVE = "saving a checkpoint"
PHASE_EVAL = "evaluating"

MIN_STEPS = 3  # step intervals needed before the median means anything
WINDOW = 200  # step intervals the median is taken over (a long run's early steps age out)
RECENT = 5  # step intervals that count as "recent" for the input-bound check
SAVE_ALLOWANCE_S = 1800.0
STACK_LIMIT = 8192  # bytes of thread stacks kept in a stall event
INPUT_BOUND_RATIO = 2.0
INPUT_BOUND_UTIL = 30.0
INPUT_BOUND_MIN_STEPS = 10  # a median over fewer steps is too young to call recent steps slow


# --------------------------------------------------------------------------- pure decisions


def median(values: Iterable[float]) -> float | None:
    """The median of ``values``, None when there are fewer than ``MIN_STEPS``."""
    values = list(values)
    return statistics.median(values) if len(values) >= MIN_STEPS else None


def allowance(median_s: float | None, factor: float, min_s: float) -> float:
    """Seconds without a completed step that count as a stall: the floor until the median is known."""
    return min_s if median_s is None else max(factor * median_s, min_s)


def input_bound(recent_s: list[float], median_s: float | None, util_percent: float | None) -> bool:
    """Recent steps more than ``INPUT_BOUND_RATIO`` × the median while the GPU idles below
    ``INPUT_BOUND_UTIL`` %: the GPU waits for data. Unknown utilisation (CPU, no NVML) is never input-bound."""
    if median_s is None or median_s <= 0 or util_percent is None or not recent_s:
        return False
    return statistics.median(recent_s) > INPUT_BOUND_RATIO * median_s and util_percent < INPUT_BOUND_UTIL


def watched_gpu(environ: dict[str, str] | None = None) -> int | None:
    """The NVML index of the GPU this process trains on: ``CUDA_VISIBLE_DEVICES``' entry for this
    process's local rank, or the local rank itself; None when it is named by UUID/MIG id or absent.

    CUDA numbers GPUs fastest first unless ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, NVML by bus: on a machine of
    mixed GPUs the two can differ, so the input-bound hint may read the wrong card's utilisation there."""
    environ = os.environ if environ is None else environ
    try:
        local = int(environ.get("LOCAL_RANK", "0") or 0)
    except ValueError:
        local = 0
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return local
    from sft_tui.core.system.energy import visible_gpu_indices

    indices = visible_gpu_indices(visible)  # the one reading of CUDA_VISIBLE_DEVICES (no snapshot: no UUIDs)
    return indices[local] if local < len(indices) else None


def input_bound_message(recent_s: float, median_s: float, util: float, gpu: int | None) -> str:
    where = f"GPU {gpu}" if gpu is not None else "the GPU"
    return (f"the GPU is waiting for data: recent steps take {recent_s:.2f} s (median {median_s:.2f} s) while "
            f"{where} is only {util:.0f}% busy — keep the data on a local disk, turn on data.packing so each batch "
            "carries more tokens, and, if you feed a custom dataloader, give it more workers and pre-tokenized data")


@dataclass
class Stall:
    """A stall to report: what was running, for how long, against which allowance."""

    phase: str
    silent_s: float
    median_step_s: float | None
    allowance_s: float
    step: int


class StallWatch:
    """The stall decision with the clock passed in: no thread and no trainer, so tests drive it with numbers.

    The callback feeds it trainer events from the main thread; the watch thread calls ``check``.
    A lock keeps the two consistent.
    """

    def __init__(self, factor: float, min_s: float, now: float) -> None:
        self.factor, self.min_s = float(factor), float(min_s)
        self.intervals: deque[float] = deque(maxlen=WINDOW)
        self.phase = PHASE_DATA  # from train begin to the first step: the first batch is being fetched
        self.step = 0
        self.last_progress = now  # the last completed step (or evaluation batch, or the end of a save)
        self.last_step_end: float | None = None
        self.interrupted = False  # a save or an evaluation since the last step end: that interval is not a step's
        self.reported = False  # a stall has been reported and no step completed since
        self._lock = threading.Lock()

    # ---- what the trainer tells us
    def step_begin(self, now: float, step: int) -> None:
        with self._lock:
            if self.phase in (PHASE_SAVE, PHASE_EVAL):
                self.last_progress = now  # a pause nobody closed (a custom loop): the step starts afresh
            self.phase, self.step = PHASE_STEP, step

    def step_end(self, now: float, step: int) -> float | None:
        """Record a completed step; returns the silence it ended when a stall had been reported."""
        with self._lock:
            ended = self._ended(now)
            if self.last_step_end is not None and not self.interrupted:
                self.intervals.append(now - self.last_step_end)
            self.last_step_end = self.last_progress = now
            self.interrupted = False
            self.phase, self.step = PHASE_DATA, step
            return ended

    def enter(self, phase: str, now: float) -> None:
        """A save or an evaluation starts: its own allowance, and the next step interval is not a step's."""
        with self._lock:
            if self.phase != phase:
                self.phase, self.last_progress = phase, now
            self.interrupted = True

    def tick(self, now: float) -> float | None:
        """Progress inside a phase (an evaluation batch done); returns the silence it ended after a stall."""
        with self._lock:
            ended = self._ended(now)
            self.last_progress = now
            return ended

    def leave(self, now: float, next_phase: str = PHASE_DATA) -> float | None:
        """A save or an evaluation ended: back to fetching the next batch (or the next pause); returns
        the silence it ended after a stall."""
        with self._lock:
            ended = self._ended(now)
            self.phase, self.last_progress = next_phase, now
            return ended

    def _ended(self, now: float) -> float | None:
        ended = now - self.last_progress if self.reported else None
        self.reported = False
        return ended

    # ---- what the watch thread asks
    @property
    def median_s(self) -> float | None:
        return median(self.intervals)

    def recent(self) -> list[float]:
        return list(self.intervals)[-RECENT:]

    def allowance_s(self) -> float:
        step_allowance = allowance(self.median_s, self.factor, self.min_s)
        if self.phase == PHASE_SAVE:
            return max(SAVE_ALLOWANCE_S, step_allowance)
        return step_allowance

    def check(self, now: float) -> Stall | None:
        """The stall to report now, once per stall (the next one needs a step, batch or save to end first)."""
        with self._lock:
            if self.reported:
                return None
            silent = now - self.last_progress
            limit = self.allowance_s()
            if silent < limit:
                return None
            self.reported = True
            return Stall(self.phase, round(silent, 1), self.median_s, round(limit, 1), self.step)


# --------------------------------------------------------------------------- thread stacks


def thread_stacks(limit: int = STACK_LIMIT) -> str:
    """Every thread's Python stack as text, the main thread first and this (the watch) thread left out.

    ``faulthandler`` writes to a real file descriptor and works even when other threads hold locks,
    which is what a hang usually is; the text is trimmed to ``limit`` bytes.
    """
    with tempfile.TemporaryFile() as fh:
        faulthandler.dump_traceback(fh, all_threads=True)
        fh.seek(0)
        text = fh.read().decode("utf-8", errors="replace")
    own = f"{threading.get_ident():#018x}"
    main = f"{threading.main_thread().ident:#018x}"
    kept = []
    for section in (s.strip("\n") for s in text.split("\n\n") if s.strip()):
        head, _, rest = section.partition("\n")
        if main in head:  # the training loop: where to look first
            kept.insert(0, f"Main thread {main} (most recent call first):\n{rest}")
        elif own not in head:  # the watch thread's own stack says nothing about the run
            kept.append(section)
    text = "\n\n".join(kept) + "\n"
    if len(text.encode()) > limit:
        text = text.encode()[: limit - 20].decode("utf-8", errors="ignore") + "\n… (trimmed)\n"
    return text


# --------------------------------------------------------------------------- the callback


class WatchdogCallback(TrainerCallback):
    """Feeds a ``StallWatch`` from trainer events and runs the thread that checks it about once a second."""

    def __init__(self, writer: Any, training: Any, device: str = "cpu", sampler: Any = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.writer, self.device, self.clock = writer, device, clock
        self.factor, self.min_s = float(training.stall_factor), float(training.stall_min_s)
        # About once a second; more often when the floor is seconds (tests), so a stall is seen promptly.
        self.interval = interval if interval is not None else min(1.0, max(0.1, self.min_s / 4))
        self.sampler = sampler
        self.gpu = watched_gpu() if device == "cuda" else None
        self.watch: StallWatch | None = None
        self.utils: deque[float] = deque(maxlen=RECENT)
        self.input_bound_warned = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- the thread
    def start(self) -> None:
        self.watch = StallWatch(self.factor, self.min_s, self.clock())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="sft-tui-stall-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check_once()
            except Exception as exc:  # noqa: BLE001 - the watch must never take training down with it
                self.writer.write("log", level="warning", msg=f"the stall watch stopped: {exc}")
                return

    def check_once(self) -> None:
        """One look: report a stall (with the stacks), and on a GPU look for a data-starved run."""
        watch = self.watch
        if watch is None:
            return
        stall = watch.check(self.clock())
        if stall is not None:
            self.writer.write("stall", phase=stall.phase, silent_s=stall.silent_s,
                              median_step_s=round(stall.median_step_s, 3) if stall.median_step_s else None,
                              allowance_s=stall.allowance_s, step=stall.step, stack=thread_stacks())
        if self.device == "cuda" and self.gpu is not None and not self.input_bound_warned:
            self._check_input_bound(watch)

    def _check_input_bound(self, watch: StallWatch) -> None:
        if watch.phase in (PHASE_SAVE, PHASE_EVAL):
            return  # an idle GPU during a save says nothing about the data
        util = self._utilisation()
        if util is None:
            return
        self.utils.append(util)
        if len(watch.intervals) < INPUT_BOUND_MIN_STEPS:
            return
        recent, med = watch.recent(), watch.median_s
        mean_util = sum(self.utils) / len(self.utils)
        if med is not None and input_bound(recent, med, mean_util):
            self.input_bound_warned = True
            self.writer.write("log", level="warning", input_bound=True,
                              msg=input_bound_message(statistics.median(recent), med, mean_util, self.gpu))

    def _utilisation(self) -> float | None:
        if self.sampler is None:
            from sft_tui.core.system.gpus import default_sampler

            self.sampler = default_sampler()
        snapshot = self.sampler.sample()
        gpus = getattr(snapshot, "gpus", None) or []
        if self.gpu is None or not 0 <= self.gpu < len(gpus):
            return None
        value = gpus[self.gpu].util_percent
        return float(value) if value is not None else None

    # ---- trainer events
    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:  # one watch per run: rank 0 sees a hung rank as its own stall
            self.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.stop()

    def on_step_begin(self, args, state, control, **kwargs):
        if self.watch is not None:
            self.watch.step_begin(self.clock(), state.global_step + 1)

    def on_step_end(self, args, state, control, **kwargs):
        faults.slow_step(state.global_step)
        if self.watch is None:
            return
        ended = self.watch.step_end(self.clock(), state.global_step)
        self._resumed(ended, "steps resumed", step=state.global_step)
        self._pause_for(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.watch is not None:
            self._pause_for(control)

    def _pause_for(self, control) -> None:
        """The trainer evaluates, then saves, right after this event when the flags say so."""
        if control.should_evaluate:
            self.watch.enter(PHASE_EVAL, self.clock())
        elif control.should_save:
            self.watch.enter(PHASE_SAVE, self.clock())

    def on_prediction_step(self, args, state, control, **kwargs):
        if self.watch is not None:
            if self.watch.phase != PHASE_EVAL:
                self.watch.enter(PHASE_EVAL, self.clock())
            self._resumed(self.watch.tick(self.clock()), "evaluation goes on")

    def on_evaluate(self, args, state, control, **kwargs):
        if self.watch is not None:
            ended = self.watch.leave(self.clock(), PHASE_SAVE if control.should_save else PHASE_DATA)
            self._resumed(ended, "the evaluation ended")

    def on_save(self, args, state, control, **kwargs):
        if self.watch is not None:
            self._resumed(self.watch.leave(self.clock()), "the checkpoint save ended")

    def _resumed(self, silence: float | None, what: str, **fields: Any) -> None:
        """After a reported stall, one line that it is over (the monitor's warning can go)."""
        if silence is not None:
            self.writer.write("log", level="info", msg=f"{what} after {silence:.0f} s", stall_ended=True,
                              silent_s=round(silence, 1), **fields)
