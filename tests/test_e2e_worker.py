"""End to end: real worker processes train the demo model and write the run directory.

These spawn `python -m sft_tui.worker` exactly as the TUI and CLI do, so they prove the contract
(config.yaml, events.jsonl, control.json, worker.pid, worker.log, checkpoints/, adapter/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir, find_run
from sft_tui.testing.waiting import wait_for

pytestmark = pytest.mark.slow

SECRET = "hf_sentinelTOKEN0123456789"


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_tui", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or dict(os.environ))


def write_config(path: Path, **training) -> Path:
    cfg = {
        "model": "demo",
        "data": {"path": "sample:reviews_alpaca.jsonl", "validation_split": 0.05, "max_length": 128},
        "training": {"logging_steps": 2, "save_steps": 5, "eval_steps": 5, "batch_size": 4, **training},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path



@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, demo_model_dir):
    """One short foreground run through the CLI, with a hub token in the environment."""
    home = tmp_path_factory.mktemp("e2e-home")
    config = write_config(home / "run.yaml", max_steps=12)
    env = dict(os.environ, SFT_TUI_HOME=str(home), SFT_TUI_RUNS_DIR=str(home / "runs"), HF_TOKEN=SECRET)
    proc = cli("train", str(config), "--name", "e2e", env=env)
    run = RunDir(home / "runs" / "e2e")
    assert proc.returncode == 0, proc.stdout + proc.stderr + (run.log_path.read_text() if run.log_path.exists() else "")
    return run, proc


def test_run_directory_layout(finished_run):
    run, proc = finished_run
    for name in ("config.yaml", "events.jsonl", "worker.pid", "worker.log", "checkpoints", "adapter"):
        assert (run.path / name).exists(), name
    assert "adapter saved" in proc.stdout


def test_events_tell_the_whole_story(finished_run):
    run, _ = finished_run
    events = run.events()
    states = [e["state"] for e in events if e["type"] == "status"]
    assert states[0] == "starting" and states[-1] == "done"
    assert {"loading", "tokenizing", "training", "saving"} <= set(states)
    train = [e for e in events if e["type"] == "train"]
    assert [e["step"] for e in train][-1] == 12 and all(e["max_steps"] == 12 for e in train)
    assert all(isinstance(e["loss"], float) and e["loss"] > 0 for e in train)
    assert all(e["lr"] is not None and e["tokens_per_s"] is not None for e in train[1:])
    evals = [e for e in events if e["type"] == "eval"]
    assert {5, 10} <= {e["step"] for e in evals} and all(e["eval_loss"] > 0 for e in evals)
    # each evaluation is announced (the monitor pauses its ETA) and training is resumed after it
    for ev in evals:
        before = [e for e in events[: events.index(ev)] if e["type"] == "status"]
        assert before[-1]["state"] == "evaluating" and before[-1]["step"] == ev["step"]
    assert states.count("training") >= 1 + len([e for e in evals if e["step"] < 12])
    checkpoints = [e["step"] for e in events if e["type"] == "checkpoint"]
    assert {5, 10} <= set(checkpoints)
    assert any(e["type"] == "memory" and e["device"] == "cpu" and e["peak"] > 0 for e in events)
    st = run.status()
    assert (st.state, st.step, st.alive) == ("done", 12, False)


def test_checkpoints_kept_and_adapter_loads_with_peft(finished_run):
    run, _ = finished_run
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert [p.name for p in run.checkpoints()][-1] == "checkpoint-12"
    assert len(run.checkpoints()) <= 2  # save_total_limit
    config = json.loads((run.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["peft_type"] == "LORA"
    from sft_tui.core.models.demo import ensure_demo_model

    base = AutoModelForCausalLM.from_pretrained(ensure_demo_model())
    model = PeftModel.from_pretrained(base, run.adapter_dir)
    assert any("lora_A" in name for name, _ in model.named_parameters())


def test_no_token_written_anywhere(finished_run):
    run, _ = finished_run
    for path in run.path.rglob("*"):
        if path.is_file() and path.stat().st_size < 50_000_000:
            assert SECRET.encode() not in path.read_bytes(), path


def test_cli_runs_and_logs(finished_run):
    run, _ = finished_run
    env = dict(os.environ, SFT_TUI_RUNS_DIR=str(run.path.parent))
    listed = json.loads(cli("runs", "--json", env=env).stdout)
    assert [(r["name"], r["state"], r["step"]) for r in listed] == [("e2e", "done", 12)]
    logs = cli("logs", "e2e", env=env)
    assert logs.returncode == 0 and "step 12/12" in logs.stdout and "status done" in logs.stdout


def test_stop_via_control_then_resume(tmp_path, demo_model_dir):
    # Scheduled saves are out of reach, so every checkpoint here comes from a command.
    config = write_config(tmp_path / "long.yaml", max_steps=40, save_steps=1000, eval_steps=1000)
    env = dict(os.environ)
    proc = cli("train", str(config), "--detach", "--name", "long", env=env)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(proc.stdout.strip())
    assert run.name == "long" and run.pid() is not None
    wait_for(lambda: any(e["type"] == "train" and e["step"] >= 2 for e in run.events()), 120, "training steps")
    run.send("save")
    saved = wait_for(lambda: [e for e in run.events() if e["type"] == "checkpoint"], 60, "a save-now checkpoint")
    assert (run.checkpoints_dir / f"checkpoint-{saved[0]['step']}").is_dir()
    assert run.is_alive()  # saving does not stop training
    stop = cli("stop", "long", "--wait", "--timeout", "120", env=env)
    assert stop.returncode == 0, stop.stderr
    wait_for(lambda: not run.is_alive(), 60, "the worker to exit")
    st = run.status()
    assert st.state == "stopped", run.log_path.read_text()[-3000:]
    assert st.step < 40
    stopped_at = run.latest_checkpoint()
    assert stopped_at is not None and int(stopped_at.name.split("-")[1]) == st.step
    assert (run.adapter_dir / "adapter_model.safetensors").exists()

    resumed = cli("train", "--resume", "long", env=env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    events = run.events()
    training = [e for e in events if e["type"] == "status" and e["state"] == "training"]
    assert training[-1]["resumed_from"].endswith(stopped_at.name)
    steps_after = [e["step"] for e in events[events.index(training[-1]):] if e["type"] == "train"]
    assert steps_after and min(steps_after) > st.step and steps_after[-1] == 40
    assert run.status().state == "done"


def test_missing_data_file_is_refused_before_a_run_folder_exists(tmp_path, demo_model_dir):
    """A doomed run is refused up front (pre-flight), not started and failed 15-60 s later."""
    cfg = {"model": "demo", "data": {"path": str(tmp_path / "nope.jsonl")}, "training": {"max_steps": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = cli("train", str(tmp_path / "c.yaml"), "--name", "broken")
    assert proc.returncode == 2 and "nope.jsonl" in proc.stderr and "data.path" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    with pytest.raises(UserError):
        find_run("broken")  # no run folder was created


def test_data_file_gone_when_the_worker_starts_fails_with_event(tmp_path, demo_model_dir):
    """If the data vanishes between `train` and the worker, the worker's own pre-flight says so."""
    from sft_tui.core.config import Config
    from sft_tui.core.run.launch import start_worker

    data = tmp_path / "gone.jsonl"
    config = Config.model_validate({"model": "demo", "data": {"path": str(data)}, "training": {"max_steps": 2},
                                    "output": {"run_name": "broken"}})
    run = RunDir.create(config)
    proc = start_worker(run)
    assert proc.wait(timeout=120) == 1
    errors = [e for e in run.events() if e["type"] == "error"]
    assert errors and "gone.jsonl" in errors[0]["message"] and errors[0]["hint"]
    assert run.status().state == "failed"
    assert "Traceback" in run.log_path.read_text()  # the trace is kept for whoever debugs it


def test_unknown_model_is_refused_with_hint(tmp_path):
    cfg = {"model": str(tmp_path / "no-such-model"), "training": {"max_steps": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = cli("train", str(tmp_path / "c.yaml"), "--name", "nomodel")
    assert proc.returncode == 2 and "no-such-model" in proc.stderr and "model.path" in proc.stderr
    assert "not found" in proc.stderr and "Repo id" not in proc.stderr
    with pytest.raises(UserError):
        find_run("nomodel")


def test_worker_refuses_non_run_dir(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "sft_tui.worker", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


def test_ctrl_c_in_foreground_stops_cleanly_and_keeps_the_checkpoint(tmp_path, demo_model_dir):
    import signal

    config = write_config(tmp_path / "fg.yaml", max_steps=200, save_steps=1000, eval_steps=1000)
    proc = subprocess.Popen([sys.executable, "-m", "sft_tui", "train", str(config), "--name", "fg"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    run = wait_for(lambda: find_run("fg") if (Path(os.environ["SFT_TUI_RUNS_DIR"]) / "fg").exists() else None,
                   60, "the run directory")
    wait_for(lambda: any(e["type"] == "train" and e["step"] >= 2 for e in run.events()), 120, "training steps")
    proc.send_signal(signal.SIGINT)  # what Ctrl-C in the terminal delivers to the foreground command
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "stopping" in out and "Traceback" not in out
    wait_for(lambda: not run.is_alive(), 60, "the worker to exit")
    st = run.status()
    assert st.state == "stopped" and st.step < 200
    assert run.latest_checkpoint() is not None
    assert (run.adapter_dir / "adapter_model.safetensors").exists()
