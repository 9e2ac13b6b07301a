"""Faults in a run directory that readers, senders and the pre-flight must survive (no worker).

Each test injects one fault a user can meet and asserts both what the user sees and what is kept.
The worker-level faults (kill -9 at each phase, full disk, NaN) are in test_faults_worker.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sft_tui.cli import main
from sft_tui.core.config import Config, ConfigError
from sft_tui.core.errors import UserError, explain
from sft_tui.core.run.events import EventTail, EventWriter, format_event
from sft_tui.core.run.rundir import RunDir, find_run, list_runs, runs_root
from sft_tui.core.train.preflight import preflight
from sft_tui.core.train.resume import plan_resume
from sft_tui.testing import synthetic

HOSTILE = {
    "5000-digit integer": '{"time": 1700000001, "type": "train", "step": ' + "9" * 5000 + "}",
    "deep nesting": "[" * 200_000 + "]" * 200_000,
    "string for a number": '{"time": 1700000001, "type": "train", "step": "abc", "loss": "x"}',
    "float overflowing to inf": '{"time": 1700000001, "type": "train", "step": 3, "loss": 1e400}',
    "status not a string": '{"time": 1700000001, "type": "status", "state": 7}',
    "not JSON": "}{ garbage",
    "no type": '{"time": 1700000001, "step": 3}',
    "oversized line": '{"time": 1700000001, "type": "log", "msg": "' + "x" * (2 << 20) + '"}',
    "nested too deep in a field": '{"time": 1, "type": "log", "extra": ' + "[" * 60 + "]" * 60 + "}",
}


def _runs(tmp_path: Path) -> Path:
    synthetic.write_run(tmp_path, "good", steps=10)
    for i, (name, line) in enumerate(HOSTILE.items()):
        run = synthetic.write_run(tmp_path, f"hostile-{i}", steps=5, final=None)
        with open(run.events_path, "a") as fh:
            fh.write(line + "\n")
        synthetic.append(run, {"time": synthetic.T0 + 99, "type": "status", "state": "done"})
    return tmp_path


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_a_hostile_line_is_one_counted_unreadable_line(tmp_path, kind):
    run = synthetic.write_run(tmp_path, "r", steps=5, final=None)
    with open(run.events_path, "a") as fh:
        fh.write(HOSTILE[kind] + "\n")
    synthetic.append(run, {"time": synthetic.T0 + 99, "type": "status", "state": "done"})
    tail = EventTail(run.events_path)
    events = tail.read_new()
    assert tail.unreadable == 1 and events[-1]["state"] == "done"  # what follows is still read
    st = run.status()
    assert st.state == "done" and st.unreadable == 1 and st.step == 5
    for ev in events:
        format_event(ev)  # every event the reader lets through can be printed
    chunked = EventTail(run.events_path)  # the monitor reads in chunks: a huge line must not stall it
    seen = []
    for _ in range(200):
        seen += chunked.read_new(max_bytes=1 << 16)
    assert seen and seen[-1]["state"] == "done"


def test_runs_lists_every_run_and_notes_unreadable_lines(tmp_path, capsys):
    root = _runs(tmp_path)
    assert main(["--runs-dir", str(root), "runs"]) == 0
    out, err = capsys.readouterr()
    assert "good" in out and out.count("done") >= len(HOSTILE) + 1
    assert "could not be read" in err
    assert main(["--runs-dir", str(root), "runs", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(HOSTILE) + 1 and sum(r["unreadable"] for r in rows) == len(HOSTILE)
    for i in range(len(HOSTILE)):
        assert main(["--runs-dir", str(root), "logs", f"hostile-{i}"]) == 0


def test_a_run_that_cannot_be_read_at_all_is_listed_as_unreadable(tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root reads every file: permissions cannot make a run unreadable")
    synthetic.write_run(tmp_path, "good", steps=3)
    bad = synthetic.write_run(tmp_path, "locked", steps=3)
    bad.events_path.chmod(0)
    assert main(["--runs-dir", str(tmp_path), "runs"]) == 0
    assert "unreadable" in capsys.readouterr().out


def test_torn_last_line_does_not_swallow_the_next_event(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text('{"time": 1, "type": "status", "state": "training"}\n{"time": 2, "type": "tra')
    tail = EventTail(path)
    assert [e["state"] for e in tail.read_new()] == ["training"]  # the torn line waits
    EventWriter(path).write("status", state="stopped")
    assert [e["state"] for e in tail.read_new()] == ["stopped"] and tail.unreadable == 1


def test_attach_history_reader_ends_on_a_hostile_log(tmp_path):
    """`attach` reads history in chunks; an oversized line used to leave it on 'reading history…'."""
    run = synthetic.write_run(tmp_path, "r", steps=3)
    with open(run.events_path, "a") as fh:
        fh.write(HOSTILE["oversized line"] + "\n")
    synthetic.append(run, {"time": synthetic.T0 + 99, "type": "status", "state": "done"})
    events = list(run.follow(poll=0.01, timeout=5))
    assert events[-1]["state"] == "done"


@pytest.mark.parametrize("content", ['{"seq": "abc", "command": "stop"}', '{"seq": 1e400, "command": "stop"}',
                                     '{"seq": null, "command": "stop"}', "garbage{", '{"seq": 3, "command": "rm"}',
                                     "[1, 2]", '{"seq": -1, "command": "stop"}'])
def test_a_bad_control_file_is_reported_and_the_next_command_still_counts(tmp_path, content):
    run = synthetic.write_run(tmp_path, "r", steps=2, final=None)
    synthetic.append(run, {"time": synthetic.T0 + 9, "type": "log", "level": "debug", "msg": "x", "control_seq": 7})
    run.control_path.write_text(content)
    command, problem = run.read_control_checked()
    assert command == {} and problem and "control.json" in problem
    assert run.read_control() == {}
    seq = run.send("stop")
    assert seq == 8 and run.read_control() == {"seq": 8, "command": "stop"}  # above what the worker saw


def test_two_stops_at_once_never_crash_or_tear_the_file(tmp_path):
    run = synthetic.write_run(tmp_path, "r", steps=2, final=None)
    errors: list[BaseException] = []

    def send() -> None:
        try:
            for _ in range(50):
                run.send("stop")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and run.read_control()["command"] == "stop"
    assert not list(run.path.glob(".control.json.*"))  # no temp file left behind


def _create(args: tuple[str, str]) -> str:
    root, name = args
    config = Config()
    config.output.run_name = name
    return RunDir.create(config, runs_dir=root).name


def test_two_runs_with_one_name_at_once_get_two_folders(tmp_path):
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        names = pool.map(_create, [(str(tmp_path), "same")] * 8)
    assert len(set(names)) == 8 and "same" in names


@pytest.mark.parametrize("name", ["../../escape", "/etc/evil", "a/b", "..", ".hidden", "x" * 300])
def test_names_cannot_leave_the_runs_dir(tmp_path, name, capsys):
    config = Config()
    with pytest.raises(ConfigError):
        config.output.run_name = name
        RunDir.create(config, runs_dir=tmp_path / "runs")
    assert not (tmp_path / "escape").exists() and not Path("/etc/evil").exists()
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: demo\n")
    assert main(["--runs-dir", str(tmp_path / "runs"), "train", str(cfg), "--name", name]) == 2
    err = capsys.readouterr().err
    assert "output.run_name" in err and "Traceback" not in err
    assert not (tmp_path / "escape").exists()


def test_unusable_runs_dirs_are_clear_errors(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(UserError, match="is a file"):
        runs_root(a_file)
    with pytest.raises(UserError, match="cannot create runs"):
        runs_root("/proc/sft-tui-runs")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        with pytest.raises(UserError, match="not writable"):
            runs_root(locked)


def test_cli_turns_oserror_into_an_error_with_a_hint(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: demo\n")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["--runs-dir", str(a_file), "train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "hint:" in err and "Traceback" not in err


def test_pid_file_is_replaced_atomically(tmp_path):
    from sft_tui.core.run.rundir import write_pid

    run = synthetic.write_run(tmp_path, "r", steps=1, final=None)
    seen: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(run.pid_path.read_text())
            except FileNotFoundError:
                pass

    reader = threading.Thread(target=read)
    reader.start()
    for pid in range(1000, 1400):
        write_pid(run, pid)
    stop.set()
    reader.join()
    assert seen and all(text.strip().isdigit() for text in seen)  # never empty, never half a number


def test_a_died_runs_duration_ends_at_its_last_event(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = synthetic.write_run(tmp_path, "dead", steps=4, max_steps=20, final=None, pid=dead.pid)
    first = run.status()
    assert first.state == "died" and first.ended is not None
    assert first.duration == run.status().duration == first.ended - first.started


# --------------------------------------------------------------------------- checkpoints


def _checkpoint(run: RunDir, step: int, max_steps: int = 40, *, complete: bool = True) -> Path:
    folder = run.checkpoints_dir / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    if complete:
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            (folder / name).write_bytes(b"x")
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": max_steps,
                                                               "num_train_epochs": 3}))
    else:
        (folder / "optimizer.pt").write_bytes(b"PK partial")
    return folder


def test_a_partial_checkpoint_is_reported_set_aside_and_never_resumed(tmp_path):
    run = synthetic.write_run(tmp_path, "r", steps=25, max_steps=40, final=None, pid=999_999_999)
    _checkpoint(run, 10)
    _checkpoint(run, 20, complete=False)
    assert run.latest_checkpoint().name == "checkpoint-10"
    assert run.status().last_checkpoint.endswith("checkpoint-10")  # runs/monitor agree with --resume
    plan = plan_resume(run)
    assert plan.checkpoint.name == "checkpoint-10"
    assert plan.notes() == ["checkpoint-20 is incomplete (missing trainer_state.json, scheduler.pt, "
                            "rng_state.pth), resuming from checkpoint-10"]
    moved = run.set_aside_incomplete()
    assert [p.name for p, _ in moved] == ["checkpoint-20"] and moved[0][0].parent.name == "incomplete-checkpoints"
    assert (moved[0][0] / "optimizer.pt").exists()  # kept for a person to look at, out of the trainer's way
    assert [p.name for p in run.all_checkpoints()] == ["checkpoint-10"]


def test_only_partial_checkpoints_is_a_clear_refusal(tmp_path):
    run = synthetic.write_run(tmp_path, "r", steps=5, final=None, pid=999_999_999)
    _checkpoint(run, 5, complete=False)
    with pytest.raises(UserError, match="no complete checkpoint.*checkpoint-5 is incomplete"):
        plan_resume(run)


def test_resume_of_a_done_run_is_refused_unless_steps_were_raised(tmp_path):
    run = synthetic.write_run(tmp_path, "r", steps=40, max_steps=40, final="done")
    _checkpoint(run, 40)
    with pytest.raises(UserError, match="finished") as info:
        plan_resume(run)
    assert "max_steps" in info.value.hint
    config = run.load_config()
    config.training.max_steps = 80
    from sft_tui.core.config import save_config

    save_config(config, run.config_path)
    plan = plan_resume(run)
    assert plan.checkpoint.name == "checkpoint-40" and not plan.finish_only


def test_a_run_that_died_in_its_final_save_is_finished_not_retrained(tmp_path):
    run = synthetic.write_run(tmp_path, "r", steps=40, max_steps=40, final=None, pid=999_999_999)
    synthetic.append(run, {"time": synthetic.T0 + 99, "type": "status", "state": "saving"})
    _checkpoint(run, 40)
    plan = plan_resume(run)
    assert plan.finish_only and plan.step == 40
    assert "saving the final model" in plan.notes()[-1]


def test_disk_full_has_its_own_kind_and_hint():
    import errno

    info = explain(OSError(errno.ENOSPC, "No space left on device", "/runs/r/checkpoints/x/optimizer.pt"))
    assert info.kind == "disk_full" and "save_total_limit" in info.hint and "optimizer.pt" in info.message
    wrapped = RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos; No space left on device")
    assert explain(wrapped).kind == "disk_full"


# --------------------------------------------------------------------------- pre-flight


def _config(**sections) -> Config:
    return Config.model_validate({"model": "demo", **sections})


def test_preflight_reports_everything_at_once_with_field_value_and_fix(tmp_path, demo_model_dir):
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"instruction": "a", "output": "b"})
    bad.write_text("\n".join([good, "{broken", good, "not json either", good]) + "\n")
    config = _config(data={"path": str(bad)}, training={"batch_size": 64})
    report = preflight(config, runs_dir=tmp_path / "runs")
    texts = [str(f) for f in report.errors]
    assert any("2 malformed line(s)" in t and "line 2, 4" in t for t in texts), texts
    assert all(f.field and f.fix for f in report.errors)
    config.data.skip_bad_rows = True
    report = preflight(config, runs_dir=tmp_path / "runs")
    assert [f.field for f in report.errors] == ["training.batch_size"] and report.errors[0].forceable
    assert "3 training row(s)" in report.errors[0].message
    assert report.blocking(force=True) == []


def test_preflight_missing_paths_are_not_hub_ids(tmp_path):
    config = _config(data={"path": str(tmp_path / "nope.jsonl")})
    config.model.path = str(tmp_path / "models" / "llama")
    report = preflight(config, runs_dir=tmp_path / "runs", deep=False)
    fields = {f.field: f.message for f in report.errors}
    assert "not found" in fields["data.path"] and fields["model.path"] == "model folder not found"
    assert not any("Repo id" in str(f) for f in report.findings)


def test_preflight_remote_code_names_the_field_and_the_code(tmp_path):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM"}}))
    (folder / "tokenizer.json").write_text("{}")
    config = _config()
    config.model.path = str(folder)
    report = preflight(config, runs_dir=tmp_path / "runs", deep=False)
    remote = [f for f in report.errors if f.field == "model.trust_remote_code"]
    assert remote and "modeling_x.py" in remote[0].message and "configuration_x.py" in remote[0].message
    config.model.trust_remote_code = True
    assert not [f for f in preflight(config, runs_dir=tmp_path / "runs", deep=False).errors
                if f.field == "model.trust_remote_code"]


def test_preflight_model_folder_without_tokenizer(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    config = _config()
    config.model.path = str(folder)
    report = preflight(config, runs_dir=tmp_path / "runs", deep=False)
    assert any("no tokenizer files" in f.message for f in report.errors)


def test_preflight_memory_that_does_not_fit_is_forceable(tmp_path, demo_model_dir):
    from types import SimpleNamespace

    tiny = [SimpleNamespace(index=0, name="fake", mem_free=4 << 20)]  # a 4 MiB GPU
    report = preflight(_config(), runs_dir=tmp_path / "runs", gpus=tiny)
    memory = [f for f in report.errors if "GPU memory" in f.message]
    assert memory and memory[0].forceable and report.blocking(force=True) == []


def test_config_validate_runs_the_preflight(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {tmp_path / 'gone'}\ndata:\n  path: {tmp_path / 'nope.jsonl'}\n")
    assert main(["config", "validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "nope.jsonl" in err and "model folder not found" in err and "is valid" not in err
    assert main(["config", "validate", str(cfg), "--no-env"]) == 0  # the schema alone is fine


def test_doomed_run_is_refused_before_its_folder_exists(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  path: {tmp_path / 'nope.jsonl'}\n")
    runs = tmp_path / "runs"
    assert main(["--runs-dir", str(runs), "train", str(cfg)]) == 2
    assert "nope.jsonl" in capsys.readouterr().err and list_runs(runs) == []
    with pytest.raises(UserError):
        find_run("anything", runs)


# --------------------------------------------------------------------------- resume guard


def _recorded(run: RunDir, step: int, config: Config, data: str | None = None, rows: int = 90) -> Path:
    from sft_tui.core.train.resume import write_record

    folder = _checkpoint(run, step)
    write_record(folder, config, data, rows)
    return folder


def test_resume_guard_refuses_a_rank_change_and_applies_a_learning_rate_change(tmp_path):
    from sft_tui.core.config import save_config
    from sft_tui.core.train.resume import data_identity

    run = synthetic.write_run(tmp_path, "r", steps=10, max_steps=40, final=None, pid=999_999_999)
    config = run.load_config()
    _recorded(run, 10, config, data_identity(config))
    changed = config.model_copy(deep=True)
    changed.method.lora_r = 64
    save_config(changed, run.config_path)
    with pytest.raises(UserError) as info:
        plan_resume(run)
    assert "method.lora_r: 16 → 64" in info.value.message and str(run.config_path) in info.value.hint
    changed.method.lora_r = 16
    changed.training.learning_rate = 1e-5
    save_config(changed, run.config_path)
    plan = plan_resume(run)
    assert plan.change_notes() == ["changed since checkpoint-10: training.learning_rate 0.0002 → 1e-05 (applied)"]


def test_resume_guard_warns_when_the_data_changed(tmp_path):
    from sft_tui.core.config import save_config

    data = tmp_path / "d.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    run = synthetic.write_run(tmp_path, "r", steps=10, max_steps=40, final=None, pid=999_999_999)
    config = run.load_config()
    config.data.path = str(data)
    save_config(config, run.config_path)
    from sft_tui.core.train.resume import data_identity

    _recorded(run, 10, config, data_identity(config), rows=1)
    assert plan_resume(run).data_changed is None
    data.write_text('{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": "d"}\n')
    os.utime(data, (1, 1))
    note = plan_resume(run).data_changed
    assert note and "data files changed since checkpoint-10" in note and "1 training rows then" in note


@pytest.mark.parametrize("value", [None, "abc", float("inf"), float("-inf"), float("nan"), 10**5000, True, [1]],
                         ids=["none", "str", "inf", "-inf", "nan", "huge-int", "bool", "list"])
def test_every_formatter_copes_with_values_a_hostile_log_could_hold(value):
    from sft_tui.core import format as F

    for fn in (F.human_bytes, F.human_count, F.human_context, F.human_duration, F.human_time, F.compact):
        assert isinstance(fn(value), str)
    assert F.fixed(value, ".4f") == "-"
    line = format_event({"time": value, "type": "train", "step": 1, "loss": value, "lr": value})
    assert "train" in line


def test_a_long_but_legitimate_line_is_read_even_in_small_chunks(tmp_path):
    """Only lines over MAX_LINE_BYTES are skipped; a data report longer than one read is not."""
    path = tmp_path / "events.jsonl"
    report = json.dumps({"time": 1, "type": "data", "report": {"problems": "x" * 5000}})
    path.write_text('{"time": 1, "type": "train", "step": 1}\n' + report + '\n{"time": 2, "type": "train", "step": 2}\n')
    tail = EventTail(path)
    seen = []
    for _ in range(20):
        seen += tail.read_new(max_bytes=1000)
    assert [e["type"] for e in seen] == ["train", "data", "train"] and tail.unreadable == 0


def test_the_run_index_isolates_a_run_it_cannot_read(tmp_path, monkeypatch):
    """The Runs screen's incremental index follows the same rule as `sft-tui runs`."""
    from sft_tui.core.run.index import RunIndex, TrackedRun

    synthetic.write_run(tmp_path, "good", steps=3)
    bad = synthetic.write_run(tmp_path, "bad", steps=3)
    real = TrackedRun.refresh

    def refresh(self):
        if self.run.name == "bad":
            raise OSError(5, "Input/output error")
        return real(self)

    monkeypatch.setattr(TrackedRun, "refresh", refresh)
    states = {run.name: st.state for run, st in RunIndex(tmp_path).refresh()}
    assert states == {"good": "done", "bad": "unreadable"}
    monkeypatch.setattr(TrackedRun, "refresh", real)
    bad.events_path.unlink()
    bad.events_path.mkdir()  # not a file: unreadable by any reader
    assert {run.name: st.state for run, st in RunIndex(tmp_path).refresh()}["bad"] == "unreadable"
    assert bad.status().state == "unreadable"
