"""The stall watchdog: the decision with numbers (a fake clock), then one real worker that stalls.

The decision (``StallWatch``, ``allowance``, ``input_bound``) is pure, so most of this file drives it
with made-up times; one real worker on the demo model proves the whole path: a step made to sleep
(``SFT_TUI_FAULTS=slow_step:3:4``) yields one ``stall`` event with the training thread's stack, a
"steps resumed" line, and a run that still ends ``done``.

Measured for the default factor: see the module docstring of ``sft_tui/core/train/watchdog.py``
(demo model, quick-test preset: plain steps ≤ 2.3 × the median under CPU contention, evaluation and
save steps 13-22 ×, which have their own allowances).
"""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest

from sft_tui.core.config import Config
from sft_tui.core.run.events import format_event
from sft_tui.core.run.rundir import RunDir, RunStatus, fold_event
from sft_tui.core.train import faults
from sft_tui.core.train.watchdog import (
    PHASE_DATA,
    PHASE_EVAL,
    PHASE_SAVE,
    PHASE_STEP,
    SAVE_ALLOWANCE_S,
    StallWatch,
    WatchdogCallback,
    allowance,
    input_bound,
    median,
    thread_stacks,
    watched_gpu,
)


class FakeWriter:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def write(self, type: str, **fields):
        self.events.append({"type": type, **fields})
        return self.events[-1]

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["type"] == kind]


def run_steps(watch: StallWatch, start: float, count: int, seconds: float, first_step: int = 1) -> float:
    """``count`` steps of ``seconds`` each from ``start``; returns the time the last one ended."""
    now = start
    for i in range(count):
        watch.step_begin(now, first_step + i)
        now += seconds
        watch.step_end(now, first_step + i)
    return now


# --------------------------------------------------------------------------- the decision


def test_the_floor_alone_until_the_median_is_known_then_factor_times_median():
    assert median([1.0, 2.0]) is None  # two intervals: too few to trust
    assert median([1.0, 2.0, 9.0]) == 2.0
    assert allowance(None, 10, 120) == 120
    assert allowance(0.5, 10, 120) == 120  # fast steps: the floor wins
    assert allowance(30.0, 10, 120) == 300  # slow steps: 10 x the median


def test_a_stall_is_reported_once_with_its_phase_and_steps_resuming_ends_it():
    watch = StallWatch(factor=10, min_s=5, now=0.0)
    now = run_steps(watch, 0.0, 6, 1.0)  # median step 1 s: allowance max(10 x 1, 5) = 10 s
    watch.step_begin(now, 7)
    assert watch.check(now + 9.5) is None
    stall = watch.check(now + 10.5)
    assert stall is not None and stall.phase == PHASE_STEP and stall.step == 7
    assert stall.silent_s == 10.5 and stall.median_step_s == 1.0 and stall.allowance_s == 10
    assert watch.check(now + 60) is None  # one event per stall, however long it lasts
    assert watch.step_end(now + 61, 7) == 61  # steps resumed: the silence it ended
    assert watch.step_end(now + 62, 8) is None  # nothing to announce any more
    watch.step_begin(now + 62, 9)
    assert watch.check(now + 73) is not None  # a new stall is reported again


def test_before_three_steps_only_the_floor_counts():
    watch = StallWatch(factor=10, min_s=5, now=0.0)
    run_steps(watch, 0.0, 2, 0.01)  # one interval known: no median yet
    assert watch.median_s is None
    assert watch.check(0.02 + 4.9) is None
    stall = watch.check(0.02 + 5.1)
    assert stall is not None and stall.phase == PHASE_DATA and stall.median_step_s is None


def test_a_long_checkpoint_save_is_not_a_stall_but_a_hung_one_is():
    watch = StallWatch(factor=2, min_s=1, now=0.0)
    now = run_steps(watch, 0.0, 5, 0.1)
    watch.enter(PHASE_SAVE, now)
    assert watch.check(now + 600) is None  # ten minutes of saving: a big checkpoint, not a hang
    stall = watch.check(now + SAVE_ALLOWANCE_S + 1)
    assert stall is not None and stall.phase == PHASE_SAVE
    assert watch.leave(now + SAVE_ALLOWANCE_S + 5) == pytest.approx(SAVE_ALLOWANCE_S + 5)  # "save ended after"


def test_evaluation_batches_count_as_progress_and_a_hung_batch_is_a_stall():
    watch = StallWatch(factor=2, min_s=1, now=0.0)
    now = run_steps(watch, 0.0, 5, 0.1)
    watch.enter(PHASE_EVAL, now)
    for _ in range(100):  # a 50 s evaluation, one batch every 0.5 s
        now += 0.5
        watch.tick(now)
        assert watch.check(now) is None
    stall = watch.check(now + 1.5)
    assert stall is not None and stall.phase == PHASE_EVAL
    assert watch.leave(now + 2.0) == pytest.approx(2.0)


def test_the_step_after_a_save_or_evaluation_does_not_skew_the_median():
    watch = StallWatch(factor=10, min_s=1, now=0.0)
    now = run_steps(watch, 0.0, 5, 1.0)
    watch.enter(PHASE_SAVE, now)
    watch.leave(now + 300)
    run_steps(watch, now + 300, 1, 1.0, first_step=6)
    assert max(watch.intervals) == 1.0 and watch.median_s == 1.0


def test_input_bound_needs_slow_recent_steps_and_an_idle_gpu():
    assert input_bound([2.5] * 5, 1.0, 10.0)
    assert not input_bound([2.5] * 5, 1.0, 50.0)  # the GPU is busy: the steps are just heavier
    assert not input_bound([1.5] * 5, 1.0, 10.0)  # not slow enough
    assert not input_bound([2.5] * 5, 1.0, None)  # no utilisation (CPU, no NVML): never
    assert not input_bound([2.5] * 5, None, 10.0)  # no median yet
    assert not input_bound([], 1.0, 10.0)


def test_the_watched_gpu_follows_cuda_visible_devices_and_the_local_rank():
    assert watched_gpu({}) == 0
    assert watched_gpu({"LOCAL_RANK": "1"}) == 1
    assert watched_gpu({"CUDA_VISIBLE_DEVICES": "2,5"}) == 2
    assert watched_gpu({"CUDA_VISIBLE_DEVICES": "2,5", "LOCAL_RANK": "1"}) == 5
    assert watched_gpu({"CUDA_VISIBLE_DEVICES": "GPU-1234abcd"}) is None  # by UUID: not an NVML index
    assert watched_gpu({"CUDA_VISIBLE_DEVICES": ""}) is None


# --------------------------------------------------------------------------- the callback, with a fake clock


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_callback(device: str = "cpu", sampler=None, **training):
    writer, clock = FakeWriter(), Clock()
    settings = SimpleNamespace(stall_factor=training.get("factor", 2.0), stall_min_s=training.get("min_s", 1.0))
    cb = WatchdogCallback(writer, settings, device=device, sampler=sampler, clock=clock)
    cb.watch = StallWatch(cb.factor, cb.min_s, clock())
    return cb, writer, clock


def trainer_step(cb: WatchdogCallback, clock: Clock, step: int, seconds: float, **flags) -> None:
    state = SimpleNamespace(global_step=step - 1, is_world_process_zero=True)
    control = SimpleNamespace(**{"should_evaluate": False, "should_save": False, **flags})
    cb.on_step_begin(None, state, control)
    clock.now += seconds
    state.global_step = step
    cb.on_step_end(None, state, control)


def test_the_callback_writes_one_stall_with_stacks_and_a_resumed_line():
    cb, writer, clock = make_callback()
    for step in range(1, 6):
        trainer_step(cb, clock, step, 0.1)
    clock.now += 2.0
    cb.check_once()
    cb.check_once()
    stalls = writer.of("stall")
    assert len(stalls) == 1
    stall = stalls[0]
    assert stall["phase"] == PHASE_DATA and stall["silent_s"] == 2.0 and stall["median_step_s"] == 0.1
    assert stall["step"] == 5 and 'File "' in stall["stack"] and "Main thread" in stall["stack"]
    trainer_step(cb, clock, 6, 0.1)
    resumed = [e for e in writer.of("log") if e.get("stall_ended")]
    assert len(resumed) == 1 and resumed[0]["msg"] == "steps resumed after 2 s" and resumed[0]["step"] == 6


def test_the_callback_pauses_for_a_save_the_trainer_asked_for():
    cb, writer, clock = make_callback()
    for step in range(1, 5):
        trainer_step(cb, clock, step, 0.1)
    trainer_step(cb, clock, 5, 0.1, should_save=True)
    assert cb.watch.phase == PHASE_SAVE
    clock.now += 60  # a minute-long save
    cb.check_once()
    cb.on_save(None, SimpleNamespace(global_step=5), SimpleNamespace(should_save=False))
    assert cb.watch.phase == PHASE_DATA and not writer.of("stall")


def test_input_bound_is_flagged_once_on_a_gpu_and_never_sampled_on_cpu():
    class Sampler:
        def __init__(self, util):
            self.util, self.calls = util, 0

        def sample(self):
            self.calls += 1
            return SimpleNamespace(gpus=[SimpleNamespace(util_percent=self.util)])

    sampler = Sampler(8.0)
    cb, writer, clock = make_callback("cuda", sampler, min_s=100.0)
    cb.gpu = 0
    for step in range(1, 21):
        trainer_step(cb, clock, step, 0.5)
    cb.check_once()
    assert not [e for e in writer.of("log") if e.get("input_bound")]  # steps as usual: nothing to say
    for step in range(21, 27):
        trainer_step(cb, clock, step, 2.0)  # 4x the median, the GPU 8% busy
    cb.check_once()
    cb.check_once()
    flagged = [e for e in writer.of("log") if e.get("input_bound")]
    assert len(flagged) == 1 and flagged[0]["level"] == "warning"
    assert "waiting for data" in flagged[0]["msg"] and "packing" in flagged[0]["msg"]

    class Refuses:
        def sample(self):
            raise AssertionError("a CPU run must not sample GPUs")

    cb, writer, clock = make_callback("cpu", Refuses(), min_s=100.0)
    for step in range(1, 21):
        trainer_step(cb, clock, step, 0.5 if step < 15 else 3.0)
    cb.check_once()
    assert not writer.events


def test_the_watch_thread_starts_on_train_begin_and_stops_on_train_end():
    writer = FakeWriter()
    cb = WatchdogCallback(writer, SimpleNamespace(stall_factor=2.0, stall_min_s=1.0), interval=0.05)
    state = SimpleNamespace(global_step=0, is_world_process_zero=True)
    cb.on_train_begin(None, state, None)
    thread = cb._thread
    assert thread is not None and thread.is_alive() and thread.daemon
    time.sleep(1.3)  # no step at all for longer than the floor
    cb.on_train_end(None, state, None)
    assert not thread.is_alive()
    assert len(writer.of("stall")) == 1 and writer.of("stall")[0]["phase"] == PHASE_DATA
    # other ranks do not watch: rank 0 writes the run's events
    other = WatchdogCallback(writer, SimpleNamespace(stall_factor=2.0, stall_min_s=1.0))
    other.on_train_begin(None, SimpleNamespace(is_world_process_zero=False), None)
    assert other._thread is None


def test_thread_stacks_show_every_other_thread_and_stay_small():
    stop = threading.Event()

    def parked_in_a_known_place() -> None:
        stop.wait(10)

    worker = threading.Thread(target=parked_in_a_known_place, daemon=True)
    worker.start()
    try:
        out: dict[str, str] = {}
        dumper = threading.Thread(target=lambda: out.update(text=thread_stacks(limit=100_000)))
        dumper.start()
        dumper.join()
        assert out["text"].startswith("Main thread") and "parked_in_a_known_place" in out["text"]
        assert os.path.join("train", "watchdog.py") not in out["text"]  # the watch thread's own stack is left out
        small = thread_stacks(limit=300)
        assert len(small.encode()) <= 300 and small.endswith("(trimmed)\n")
    finally:
        stop.set()


def test_slow_step_fault_sleeps_in_the_named_step_only(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(faults.time, "sleep", slept.append)
    monkeypatch.setenv(faults.ENV, "slow_step:3:4")
    for step in range(1, 6):
        faults.slow_step(step)
    assert slept == [4.0]
    monkeypatch.setenv(faults.ENV, "nan_loss:9")
    faults.slow_step(3)
    assert slept == [4.0]


# --------------------------------------------------------------------------- what readers show


def test_a_stall_reads_as_one_line_and_sits_in_the_status_until_steps_resume():
    stall = {"time": 0.0, "type": "stall", "phase": PHASE_SAVE, "silent_s": 312.4, "median_step_s": 0.8,
             "allowance_s": 120.0, "step": 40, "stack": "Main thread 0x1 (most recent call first):\n  File ..."}
    line = format_event(stall)
    assert "stall: no step for 5m 12s (median step 0.8 s) while saving a checkpoint" in line
    assert "\n" not in line
    st = RunStatus(name="r", state="training")
    fold_event(st, stall)
    assert st.extra["stall"] == {"time": 0.0, "phase": PHASE_SAVE, "silent_s": 312.4, "median_step_s": 0.8,
                                 "step": 40}
    fold_event(st, {"time": 1.0, "type": "train", "step": 41, "loss": 1.0})
    assert "stall" not in st.extra


# --------------------------------------------------------------------------- a real worker


@pytest.mark.slow
def test_a_real_worker_reports_a_stalled_step_with_its_stack_and_still_finishes(demo_model_dir, monkeypatch):
    from sft_tui.core.run.launch import start_worker

    config = Config.model_validate({
        "model": "demo",
        "data": {"path": "sample:reviews_alpaca.jsonl", "validation_split": 0.0, "max_length": 64},
        "training": {"max_steps": 6, "save_steps": 100, "logging_steps": 1, "batch_size": 2,
                     "stall_min_s": 1, "stall_factor": 2},
        "output": {"run_name": "stall"},
    })
    run = RunDir.create(config)
    monkeypatch.setenv(faults.ENV, "slow_step:3:4")
    proc = start_worker(run)
    assert proc.wait(timeout=300) == 0, run.log_path.read_text()
    events = run.events()
    assert [e["state"] for e in events if e["type"] == "status"][-1] == "done"
    stalls = [e for e in events if e["type"] == "stall" and e.get("step") == 3]
    assert len(stalls) == 1, [format_event(e) for e in events]
    stall = stalls[0]
    assert stall["phase"] == PHASE_STEP and stall["silent_s"] >= 1
    assert 'File "' in stall["stack"] and "slow_step" in stall["stack"]  # the sleeping frame, named
    assert any(e["type"] == "log" and e.get("stall_ended") and e.get("step") == 3 for e in events)
