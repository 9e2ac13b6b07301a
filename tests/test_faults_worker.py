"""Faults at every phase of a real worker's life: kill -9, a full disk, NaN, files vanishing.

Each test asserts what the user sees (the status, the error's kind and hint, what `train --resume`
says) and what is kept (complete checkpoints, the adapter, the loss curve continuing). Faults at
exact moments use the worker's test-only hooks (``SFT_TUI_FAULTS``, see core/train/faults.py),
which raise the real exception type from the real call.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sft_tui.core.config import Config
from sft_tui.core.run.launch import start_worker
from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.train.resume import plan_resume
from sft_tui.testing.waiting import wait_for

pytestmark = pytest.mark.slow


def make_run(name: str, max_steps: int = 20, save_steps: int = 5, **data) -> RunDir:
    config = Config.model_validate({
        "model": "demo",
        "data": {"path": "sample:reviews_alpaca.jsonl", "validation_split": 0.0, "max_length": 96, **data},
        "training": {"max_steps": max_steps, "save_steps": save_steps, "logging_steps": 1, "batch_size": 4,
                     "save_total_limit": 3},
        "output": {"run_name": name},
    })
    return RunDir.create(config)



def has_event(run: RunDir, kind: str, **fields) -> bool:
    return any(e["type"] == kind and all(e.get(k) == v for k, v in fields.items()) for e in run.events())


def logged(run: RunDir, text: str) -> bool:
    return any(e["type"] == "log" and text in (e.get("msg") or "") for e in run.events())


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def resume(run: RunDir, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_tui", "train", "--resume", str(run.path)],
                          capture_output=True, text=True, timeout=timeout)


def train_steps(run: RunDir) -> list[int]:
    return [e["step"] for e in run.events() if e["type"] == "train"]


@pytest.mark.parametrize("phase", ["starting", "loading", "tokenizing"])
def test_kill9_before_the_first_checkpoint_leaves_a_clear_refusal(phase, demo_model_dir):
    run = make_run(f"kill-{phase}")
    proc = start_worker(run)
    if phase != "starting":
        wait_for(lambda: has_event(run, "status", state=phase) or has_event(run, "status", state="training"),
                 120, phase)
    kill9(proc)
    assert run.status().state == "died"
    out = resume(run)
    assert out.returncode == 2 and "no complete checkpoint" in out.stderr and "Traceback" not in out.stderr
    assert run.config_path.exists()  # the run and its config are kept; starting again is one command


def test_kill9_while_training_resumes_and_the_loss_curve_continues(demo_model_dir):
    run = make_run("kill-training", max_steps=20)
    proc = start_worker(run)
    wait_for(lambda: has_event(run, "checkpoint", step=5), 180, "checkpoint-5")
    kill9(proc)
    before = train_steps(run)
    assert run.status().state == "died" and run.latest_checkpoint().name.startswith("checkpoint-")
    out = resume(run)
    assert out.returncode == 0, out.stdout + out.stderr
    after = train_steps(run)[len(before):]
    kept = int(run.status().last_checkpoint.rsplit("-", 1)[1])
    assert after[0] > 5 and after[-1] == 20 and run.status().state == "done" and kept == 20
    assert (run.adapter_dir / "adapter_model.safetensors").exists()


def test_kill9_mid_checkpoint_write_resumes_from_the_previous_one(demo_model_dir, monkeypatch):
    monkeypatch.setenv("SFT_TUI_FAULTS", "pause_checkpoint:10")
    run = make_run("kill-mid-checkpoint", max_steps=15)
    proc = start_worker(run)
    wait_for(lambda: logged(run, "test fault: paused"), 180, "the pause inside checkpoint-10")
    kill9(proc)
    assert [p.name for p in run.all_checkpoints()] == ["checkpoint-5", "checkpoint-10"]
    assert run.latest_checkpoint().name == "checkpoint-5"  # the partial one never counts
    assert run.status().last_checkpoint.endswith("checkpoint-5")
    monkeypatch.delenv("SFT_TUI_FAULTS")
    out = resume(run)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "checkpoint-10 is incomplete" in out.stderr and "resuming from checkpoint-5" in out.stderr
    assert logged(run, "checkpoint-10 is incomplete")
    assert (run.path / "incomplete-checkpoints" / "checkpoint-10").is_dir()
    assert run.status().state == "done" and train_steps(run)[-1] == 15


def test_kill9_in_the_final_save_is_finished_without_training_again(demo_model_dir, monkeypatch):
    monkeypatch.setenv("SFT_TUI_FAULTS", "pause_final_save")
    run = make_run("kill-final-save", max_steps=10)
    proc = start_worker(run)
    wait_for(lambda: logged(run, "test fault: paused"), 180, "the pause in the final save")
    kill9(proc)
    assert not run.adapter_dir.exists()  # staged beside it, never half-written in place
    monkeypatch.delenv("SFT_TUI_FAULTS")
    steps = train_steps(run)
    out = resume(run)
    assert out.returncode == 0, out.stdout + out.stderr
    assert train_steps(run) == steps  # no step 11 of 10
    assert run.status().state == "done" and (run.adapter_dir / "adapter_model.safetensors").exists()
    again = resume(run)
    assert again.returncode == 2 and "finished" in again.stderr and "max_steps" in again.stderr


def test_disk_full_during_a_checkpoint(demo_model_dir, monkeypatch):
    monkeypatch.setenv("SFT_TUI_FAULTS", "enospc_checkpoint:10")
    run = make_run("disk-full", max_steps=15)
    proc = start_worker(run)
    assert proc.wait(timeout=300) == 1
    error = [e for e in run.events() if e["type"] == "error"][-1]
    assert error["kind"] == "disk_full" and "save_total_limit" in error["hint"]
    assert run.status().state == "failed" and run.latest_checkpoint().name == "checkpoint-5"
    monkeypatch.delenv("SFT_TUI_FAULTS")
    out = resume(run)
    assert out.returncode == 0 and "checkpoint-10 is incomplete" in out.stderr
    assert run.status().state == "done"


def test_stop_while_loading_ends_quickly_as_stopped(demo_model_dir):
    run = make_run("stop-early", max_steps=200)
    proc = start_worker(run)
    run.send("stop")  # before the worker has even read its config
    start = time.monotonic()
    assert proc.wait(timeout=120) == 130
    assert time.monotonic() - start < 60
    st = run.status()
    assert st.state == "stopped" and not train_steps(run) and run.latest_checkpoint() is None
    stopped = [e for e in run.events() if e["type"] == "status" and e["state"] == "stopped"][-1]
    assert "nothing to resume" in stopped["reason"]
    out = resume(run)
    assert out.returncode == 2 and "no complete checkpoint" in out.stderr


def test_nan_loss_fails_with_its_hint(demo_model_dir, monkeypatch):
    monkeypatch.setenv("SFT_TUI_FAULTS", "nan_loss:3")
    run = make_run("nan", max_steps=20)
    assert start_worker(run).wait(timeout=300) == 1
    error = [e for e in run.events() if e["type"] == "error"][-1]
    assert error["kind"] == "nan_loss" and "learning_rate" in error["hint"]


def test_data_and_model_deleted_mid_run(demo_model_dir, tmp_path):
    """Training holds what it loaded; a later start is refused with the path that went missing."""
    from sft_tui.core.paths import resolve_sample

    data = tmp_path / "data.jsonl"
    shutil.copy(resolve_sample("sample:reviews_alpaca.jsonl"), data)
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    config = Config.model_validate({"model": str(model), "data": {"path": str(data), "max_length": 96},
                                    "training": {"max_steps": 15, "save_steps": 5, "logging_steps": 1},
                                    "output": {"run_name": "vanish"}})
    run = RunDir.create(config)
    proc = start_worker(run)
    wait_for(lambda: has_event(run, "status", state="training"), 180, "training")
    data.unlink()
    shutil.rmtree(model)
    assert proc.wait(timeout=300) == 0 and run.status().state == "done"
    cfg = tmp_path / "again.yaml"
    cfg.write_text(config.to_yaml())
    out = subprocess.run([sys.executable, "-m", "sft_tui", "train", str(cfg)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2 and "data.jsonl" in out.stderr and "model folder not found" in out.stderr


def test_seeded_random_kills_end_resumable_or_refused_clearly(demo_model_dir):
    """12 kill -9 at random moments of random phases; the run ends done, its loss curve whole.

    (The CLI's refusal wording for "no complete checkpoint" is tested above; here plan_resume, the
    same decision, is asked in-process to keep the test short.)

    After each kill the run is either resumed from its newest complete checkpoint, or — when none
    exists yet — `train --resume` refuses with a clear message and the run is started again.
    """
    rng = random.Random(1234)
    phases = ["starting", "loading", "tokenizing", "training", "training", "training"]
    outcomes: dict[str, int] = {}
    by_phase: dict[str, int] = {}
    run = make_run("random-kills", max_steps=80, save_steps=6)
    proc = start_worker(run)
    for _ in range(12):
        phase = rng.choice(phases)
        seen = len([e for e in run.events() if e["type"] == "status"])
        if phase != "starting":
            try:
                wait_for(lambda: any(e.get("state") in (phase, "training")
                                     for e in [e for e in run.events() if e["type"] == "status"][seen:]),
                         120, phase, poll=0.02)
            except AssertionError:
                break
        time.sleep(rng.uniform(0.0, 2.5 if phase == "training" else 0.3))
        if proc.poll() is not None:
            break  # finished before this kill
        kill9(proc)
        state = run.status().state
        by_phase[phase] = by_phase.get(phase, 0) + 1
        if run.latest_checkpoint() is None:
            with pytest.raises(UserError, match="no complete checkpoint"):
                plan_resume(run)
            outcomes["no checkpoint yet: refused clearly, started again"] = \
                outcomes.get("no checkpoint yet: refused clearly, started again", 0) + 1
            run.writer().status("starting")
            proc = start_worker(run)
        else:
            assert state == "died"
            outcomes["resumed from the newest complete checkpoint"] = \
                outcomes.get("resumed from the newest complete checkpoint", 0) + 1
            run.writer().status("starting", resume=True)
            proc = start_worker(run, resume=True)
    kills = sum(by_phase.values())
    assert proc.wait(timeout=600) == 0, run.log_path.read_text()[-3000:]
    st = run.status()
    assert kills >= 12 and st.state == "done" and (run.adapter_dir / "adapter_model.safetensors").exists()
    steps = [e["step"] for e in run.events() if e["type"] == "train"]
    assert steps[-1] == 80 and set(range(1, 81)) <= set(steps)  # every step trained at least once
    assert not run.incomplete_checkpoints()
    report = f"random kills: {kills} by phase {by_phase}; outcomes {outcomes}"
    print(report)
    (Path(os.environ["SFT_TUI_HOME"]) / "random-kill-outcomes.txt").write_text(report + "\n")


def test_resume_guard_on_a_real_run(demo_model_dir, tmp_path):
    """A real run's checkpoints record their config and data: a rank change is refused, an lr change
    applied and listed, a data change warned about with the row counts."""
    from sft_tui.core.config import save_config
    from sft_tui.core.paths import resolve_sample

    data = tmp_path / "data.jsonl"
    shutil.copy(resolve_sample("sample:reviews_alpaca.jsonl"), data)
    run = make_run("guarded", max_steps=12, save_steps=4, path=str(data))
    proc = start_worker(run)
    wait_for(lambda: has_event(run, "checkpoint", step=4), 180, "checkpoint-4")
    run.send("stop")
    assert proc.wait(timeout=120) == 0 and run.status().state == "stopped"
    assert (run.latest_checkpoint() / "sft_tui_run.json").exists()
    config = run.load_config()
    config.method.lora_r = 32
    save_config(config, run.config_path)
    out = resume(run)
    assert out.returncode == 2 and "method.lora_r: 16 → 32" in out.stderr
    config.method.lora_r = 16
    config.training.learning_rate = 1e-4
    save_config(config, run.config_path)
    lines = data.read_text().splitlines()
    data.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    out = resume(run)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "training.learning_rate 0.0002 → 0.0001 (applied)" in out.stderr
    assert "data files changed since checkpoint-" in out.stderr
    assert logged(run, "training rows:") and run.status().state == "done"
