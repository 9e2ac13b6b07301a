"""The run directory contract: events, torn lines, control commands, derived status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from sft_tui.core.config import Config
from sft_tui.core.errors import UserError
from sft_tui.core.run.events import EventTail
from sft_tui.core.run.rundir import RunDir, find_run, list_runs, pid_alive


def make_run(tmp_path, name="r1") -> RunDir:
    config = Config()
    config.output.run_name = name
    return RunDir.create(config, runs_dir=tmp_path)


def test_create_writes_config_and_starting_event(tmp_path):
    run = make_run(tmp_path)
    assert run.config_path.exists() and run.load_config().output.run_name == "r1"
    assert [e["state"] for e in run.events()] == ["starting"]
    second = make_run(tmp_path)
    assert second.name == "r1-2"  # never overwrite an existing run


def test_auto_name(tmp_path):
    run = RunDir.create(Config(), runs_dir=tmp_path)
    assert run.name.startswith("demo-lora-")


def test_torn_last_line_is_left_for_later(tmp_path):
    run = make_run(tmp_path)
    writer = run.writer()
    writer.write("train", step=1, loss=2.0)
    with open(run.events_path, "a") as fh:
        fh.write('{"time": 1, "type": "train", "step": 2, "lo')
    tail = EventTail(run.events_path)
    assert [e.get("step") for e in tail.read_new() if e["type"] == "train"] == [1]
    with open(run.events_path, "a") as fh:
        fh.write('ss": 1.5}\n')
    assert [e["step"] for e in tail.read_new()] == [2]
    assert tail.read_new() == []


def test_damaged_line_does_not_hide_the_rest(tmp_path):
    run = make_run(tmp_path)
    with open(run.events_path, "a") as fh:
        fh.write("garbage\n")
    run.writer().write("train", step=3, loss=1.0)
    assert run.status().step == 3


def test_nan_is_written_as_null(tmp_path):
    run = make_run(tmp_path)
    run.writer().write("train", step=1, loss=float("nan"))
    line = run.events_path.read_text().splitlines()[-1]
    assert json.loads(line)["loss"] is None


def test_status_derivation(tmp_path):
    run = make_run(tmp_path)
    w = run.writer()
    w.status("training")
    w.write("train", step=5, max_steps=10, loss=1.2, epoch=0.5)
    w.write("eval", step=5, eval_loss=1.4)
    w.write("eval", step=10, eval_loss=1.1)
    w.write("checkpoint", step=10, path="checkpoints/checkpoint-10")
    # a worker pid that no longer exists → died, not training
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    run.pid_path.write_text(str(proc.pid))
    st = run.status()
    # the checkpoint at step 10 advances the step although the last logged loss was at step 5
    assert (st.state, st.step, st.max_steps, st.last_loss, st.best_eval_loss) == ("died", 10, 10, 1.2, 1.1)
    assert st.last_checkpoint.endswith("checkpoint-10")
    run.pid_path.write_text(str(os.getpid()))
    assert run.status().state == "training" and run.status().alive
    w.status("done")
    assert run.status().state == "done"


def test_error_event_in_status(tmp_path):
    run = make_run(tmp_path)
    run.writer().write("error", kind="oom", message="out of memory", hint="lower batch")
    run.writer().status("failed")
    st = run.status()
    assert st.state == "failed" and st.error["hint"] == "lower batch"


def test_control_commands_have_increasing_seq(tmp_path):
    run = make_run(tmp_path)
    run.send("save")
    assert run.read_control()["command"] == "save" and run.read_control()["seq"] == 1
    run.send("stop")
    assert run.read_control() == {**run.read_control(), "command": "stop", "seq": 2}
    with pytest.raises(UserError):
        run.send("explode")


def test_find_and_list_runs(tmp_path):
    a = make_run(tmp_path, "alpha")
    make_run(tmp_path, "beta")
    assert [r.name for r in list_runs(tmp_path)] == ["alpha", "beta"]
    assert find_run("alpha", tmp_path).path == a.path
    assert find_run(str(a.path)).path == a.path
    with pytest.raises(UserError) as info:
        find_run("alpah", tmp_path)
    assert "did you mean alpha" in info.value.hint


def test_delete_refuses_running(tmp_path):
    run = make_run(tmp_path)
    run.pid_path.write_text(str(os.getpid()))
    with pytest.raises(UserError):
        run.delete()
    run.pid_path.write_text("999999999")
    run.delete()
    assert not run.path.exists()


def test_checkpoints_sorted_numerically(tmp_path):
    run = make_run(tmp_path)
    for step in (5, 40, 100):
        complete_checkpoint(run.checkpoints_dir / f"checkpoint-{step}", step)
    assert run.latest_checkpoint().name == "checkpoint-100"


def complete_checkpoint(folder, step: int) -> None:
    """What the trainer leaves in a finished checkpoint of a LoRA run (contents are placeholders)."""
    folder.mkdir(parents=True)
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth", "adapter_model.safetensors"):
        (folder / name).write_bytes(b"x")
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 100}))


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(999999999)
