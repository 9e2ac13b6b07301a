"""Choosing GPUs and the order of the queue, on made-up snapshots (no GPU, no worker)."""

from __future__ import annotations

import time

import pytest

from sft_tui.core.config import Config
from sft_tui.core.errors import UserError
from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
from sft_tui.core.train.queue import ahead_and_claims, choose
from sft_tui.core.train.supervise import parse_failure

GIB = 1 << 30


def snap(*free_gib: float, total_gib: float = 80) -> GpuSnapshot:
    gpus = [GpuStats(index=i, name="NVIDIA H100", mem_used=int((total_gib - f) * GIB), mem_total=int(total_gib * GIB),
                     util_percent=0.0, temperature_c=40.0, power_w=100.0) for i, f in enumerate(free_gib)]
    return GpuSnapshot(True, "", gpus)


def config(**training) -> Config:
    return Config.model_validate({"training": training})


def test_auto_takes_the_gpu_with_the_most_free_memory():
    assert choose(config(), snap(10, 70, 40), 20 * GIB).gpus == [1]
    assert choose(config(devices=2), snap(10, 70, 40), 20 * GIB).gpus == [1, 2]


def test_named_gpus_wait_with_the_reason_and_the_holder():
    class Holder:
        def __init__(self, user, command, used, run_name=None):
            self.user, self.command, self.used_bytes, self.run_name = user, command, used, run_name

    holders = {1: [Holder("alice", "python train.py", 71 * GIB), Holder(None, None, 1 * GIB, run_name="mine")]}
    choice = choose(config(devices=[1]), snap(70, 9), 22 * GIB, holders=holders)
    assert not choice.ready
    assert choice.reason == "waiting for 22 GiB on GPU 1; 9.0 GiB free, held by alice: python train.py"


def test_claims_of_runs_ahead_are_deducted():
    # GPU 0 has 40 GiB free but a run just started there and claimed 30: the next run gets GPU 1.
    assert choose(config(), snap(40, 35), 20 * GIB, claims={0: 30 * GIB}).gpus == [1]
    choice = choose(config(), snap(40, 15), 20 * GIB, claims={0: 30 * GIB})
    assert choice.reason == "waiting for 20 GiB on GPU 1; 15 GiB free"  # the freest GPU, after the claim


def test_more_gpus_than_the_machine_has_is_a_user_error():
    with pytest.raises(UserError, match="asks for 3 GPUs, but this machine has 2"):
        choose(config(devices=3), snap(80, 80), None)
    with pytest.raises(UserError, match="names GPU 5"):
        choose(config(devices=[0, 5]), snap(80, 80), None)


def test_without_an_estimate_a_mostly_free_gpu_is_needed():
    assert choose(config(), snap(75, 50), None).gpus == [0]
    assert "90% of its memory" in choose(config(), snap(50), None).reason


def test_queue_order_and_claims_come_from_the_runs_folder(tmp_path):
    from sft_tui.core.run.rundir import RunDir, write_pid

    def make(name, states):
        cfg = config()
        cfg.output.run_name = name
        run = RunDir.create(cfg, runs_dir=tmp_path)
        write_pid(run)  # this test process stands for a live worker
        for state, fields in states:
            run.writer().status(state, **fields)
            time.sleep(0.01)
        return run

    first = make("first", [("queued", {"need_bytes": 5 * GIB})])
    started = make("started", [("queued", {}), ("starting", {"gpus": [1], "claim_bytes": 7 * GIB})])
    me = make("me", [("queued", {})])
    later = make("later", [("queued", {})])
    ahead, claims = ahead_and_claims(me)
    assert [run.name for _, run, _ in ahead] == ["first"]
    assert claims == {1: 7 * GIB}
    assert [run.name for _, run, _ in ahead_and_claims(later)[0]] == ["first", "me"]
    assert first and started


def test_torchrun_root_cause_is_parsed():
    text = """[W] something
============================================================
sft_tui.worker FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-02_06:00:00
  host      : gpu-node-3
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 4242)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 4242
============================================================
"""
    failure = parse_failure(text)
    assert (failure.rank, failure.local_rank, failure.host, failure.exitcode) == (1, 1, "gpu-node-3", -9)
    assert failure.detail == "killed by signal 9 (SIGKILL)"
    assert parse_failure("no summary here") is None
