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


def test_a_hung_rank_is_named_not_the_one_that_timed_out(tmp_path, monkeypatch):
    """After a hang, torchrun's root cause is a rank that timed out waiting; the heartbeats name the
    rank that stopped answering."""
    import json

    from sft_tui.core.config import Config
    from sft_tui.core.run.rundir import RunDir
    from sft_tui.core.train.launcher import resolve_world
    from sft_tui.core.train.supervise import RankFailure, Supervisor

    class Watcher:
        seq_done = 0

    run = RunDir.create(Config(), runs_dir=tmp_path)
    ranks = run.path / "ranks"
    ranks.mkdir()
    now = time.time()
    (ranks / "alive-0.json").write_text(json.dumps({"step": 40, "time": now, "host": "node-a", "pid": 1}))
    (ranks / "alive-1.json").write_text(json.dumps({"step": 12, "time": now - 600, "host": "node-b", "pid": 2}))
    supervisor = Supervisor(run, run.writer(), Watcher())
    world = resolve_world(Config.model_validate({"training": {"devices": 2}}), 0)
    supervisor._report(RankFailure(0, 0, "node-a", 1, "exited with code 1"), 1, world)
    error = [e for e in run.events() if e["type"] == "error"][-1]
    assert error["rank"] == 1 and error["host"] == "node-b"
    assert error["message"].startswith("rank 1 on node-b stopped answering after step 12; 600 s later rank 0 gave up")
    # without a laggard, the root cause is named as torchrun saw it
    (ranks / "alive-1.json").write_text(json.dumps({"step": 40, "time": now - 1, "host": "node-b", "pid": 2}))
    supervisor._report(RankFailure(1, 1, "node-b", -9, "killed by signal 9 (SIGKILL)"), 1, world)
    error = [e for e in run.events() if e["type"] == "error"][-1]
    assert error["message"].startswith("rank 1 on node-b killed by signal 9 (SIGKILL)")


def test_resume_keeps_the_world_size_or_says_why_not(tmp_path):
    from pathlib import Path

    from sft_tui.core.config import Config
    from sft_tui.core.run.rundir import RunDir
    from sft_tui.core.train.resume import ResumePlan, _guard_world

    run = RunDir.create(Config(), runs_dir=tmp_path)
    fsdp = Config.model_validate({"training": {"devices": 4, "strategy": "fsdp"}})
    plan = ResumePlan(Path("checkpoint-40"), 40, 100, False, [])
    _guard_world(run, fsdp, {"world_size": 4}, plan, 4)  # the same size: nothing to say
    assert plan.changed == []
    with pytest.raises(UserError, match="saved by 4 process.*fsdp.*resume with 2"):
        _guard_world(run, fsdp, {"world_size": 4}, plan, 2)
    ddp = Config.model_validate({"training": {"devices": 2, "batch_size": 4}})
    _guard_world(run, ddp, {"world_size": 4}, plan, 2)  # whole copies: another size works
    assert plan.change_notes() == ["changed since checkpoint-40: processes (global batch 16 → 8 rows) 4 → 2 (applied)"]


def test_placements_that_cannot_work_are_config_errors():
    from sft_tui.core.config import ConfigError, parse_config

    cases = {
        "training.devices": {"training": {"devices": [0, 0]}},
        "training.master_addr": {"training": {"nodes": 2}},
        "training.node_rank": {"training": {"nodes": 2, "node_rank": 2, "master_addr": "h"}},
        "training.strategy": {"method": {"type": "qlora", "quantization_bits": 8}, "training": {"strategy": "fsdp"}},
    }
    for field, raw in cases.items():
        with pytest.raises(ConfigError) as info:
            parse_config(raw)
        assert [p.field for p in info.value.problems] == [field], (field, info.value)
        assert all(p.fix for p in info.value.problems)
    import importlib.util

    if importlib.util.find_spec("deepspeed") is None:
        with pytest.raises(ConfigError, match="pip install deepspeed"):
            parse_config({"training": {"strategy": "deepspeed"}})


def test_sharded_checkpoints_count_as_complete(tmp_path):
    """FSDP keeps its optimizer in optimizer.bin, DeepSpeed in global_stepN/ (with `latest`); a
    checkpoint of either must not be set aside as incomplete."""
    import json

    from sft_tui.core.run.rundir import checkpoint_problem

    def make(name, files, folders=()):
        path = tmp_path / name
        path.mkdir()
        for f in files:
            (path / f).write_text("x")
        for d in folders:
            (path / d).mkdir()
            (path / d / "mp_rank_00_model_states.pt").write_text("x")
        (path / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
        return path

    common = ["rng_state_0.pth", "rng_state_1.pth", "adapter_model.safetensors"]
    assert checkpoint_problem(make("ddp", [*common, "optimizer.pt", "scheduler.pt"])) is None
    assert checkpoint_problem(make("fsdp", [*common, "optimizer.bin", "scheduler.pt"])) is None
    assert checkpoint_problem(make("zero", [*common, "latest"], ["global_step4"])) is None
    assert checkpoint_problem(make("fsdp-full", ["rng_state_0.pth", "pytorch_model_fsdp.bin", "optimizer.bin",
                                                 "scheduler.pt"])) is None
    assert checkpoint_problem(make("torn", [*common, "scheduler.pt"])) == "missing optimizer.pt"


def test_claims_last_until_the_first_step_and_a_resumed_run_queues_at_the_back(tmp_path):
    from sft_tui.core.run.rundir import RunDir, write_pid

    def make(name):
        cfg = config()
        cfg.output.run_name = name
        run = RunDir.create(cfg, runs_dir=tmp_path)
        write_pid(run)
        return run

    old = make("old")  # queued long ago, ran, was resumed: it waits again from now on
    old.writer().status("queued", reason="r")
    old.writer().status("starting", gpus=[0], claim_bytes=GIB)
    old.writer().status("stopped")
    time.sleep(0.01)
    me = make("me")
    me.writer().status("queued", reason="r")
    time.sleep(0.01)
    old.writer().status("queued", reason="r")
    assert [run.name for _, run, _ in ahead_and_claims(me)[0]] == []  # old is behind me now
    busy = make("busy")
    busy.writer().status("starting", gpus=[1], claim_bytes=9 * GIB)
    busy.writer().status("training")
    assert ahead_and_claims(me)[1] == {1: 9 * GIB}  # training, but no step yet: still claimed
    busy.writer().write("train", step=1, loss=1.0)
    assert ahead_and_claims(me)[1] == {}  # its memory now shows in NVML


def test_place_chooses_among_the_gpus_the_user_left_visible(tmp_path, monkeypatch):
    import threading

    from sft_tui.core.run.rundir import RunDir
    from sft_tui.core.train.supervise import place

    class Sampler:
        def sample(self):
            return snap(70, 10, 40, 60)

    class Watcher:
        start_now = threading.Event()

    run = RunDir.create(config(), runs_dir=tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")  # GPU 0 has the most free memory, but is not ours
    placed = place(run, config(), run.writer(), Watcher(), sampler=Sampler())
    assert placed.gpus == [2] and placed.world.world_size == 1
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2" and os.environ["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    named = place(run, config(devices=[0, 3]), run.writer(), Watcher(), sampler=Sampler())
    assert named.gpus == [0, 3] and named.world.world_size == 2  # indices named in the config win
