"""The headless monitor: `sft-tui runs [--json]`, `sft-tui logs RUN [--follow] [--json]`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from sft_tui.cli import main
from sft_tui.core.run.events import format_event
from sft_tui.testing import synthetic


@pytest.fixture
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_json_for_scripts(tmp_path, capsys, dead_pid):
    synthetic.write_run(tmp_path, "done-run", steps=20, eval_every=10)
    synthetic.write_run(tmp_path, "crashed", steps=4, max_steps=20, final=None, pid=dead_pid)
    assert main(["--runs-dir", str(tmp_path), "runs", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"done-run", "crashed"}
    done = rows["done-run"]
    assert done["state"] == "done" and done["step"] == 20 and done["max_steps"] == 20
    assert done["best_eval_loss"] is not None and done["model"] == "demo" and done["method"] == "lora"
    assert done["duration"] == pytest.approx(15.0) and done["path"].endswith("done-run")
    assert rows["crashed"]["state"] == "died" and rows["crashed"]["alive"] is False
    for key in ("started", "ended", "last_loss", "pid", "error", "last_checkpoint"):
        assert key in done


def test_runs_table_and_empty(tmp_path, capsys):
    assert main(["--runs-dir", str(tmp_path), "runs"]) == 0
    assert "no runs yet" in capsys.readouterr().out
    synthetic.write_run(tmp_path, "r1", steps=3)
    assert main(["--runs-dir", str(tmp_path), "runs"]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "done" in out


def test_logs_prints_history_without_memory_lines(tmp_path, capsys):
    synthetic.write_run(tmp_path, "r1", steps=5, eval_every=5)
    assert main(["--runs-dir", str(tmp_path), "logs", "r1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert sum("train  step" in line for line in out) == 5
    assert any("eval   step 5" in line for line in out) and not any("memory" in line for line in out)
    assert main(["--runs-dir", str(tmp_path), "logs", "r1", "--all"]) == 0
    assert "memory cpu" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path), "logs", "r1", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["state"] == "starting" and lines[-1]["state"] == "done"
    assert main(["--runs-dir", str(tmp_path), "logs", "nope"]) == 2


def test_logs_follow_prints_metrics_as_they_come(tmp_path):
    """A real subprocess: lines appear while the fake worker writes, and it ends on a final status."""
    run = synthetic.write_run(tmp_path, "live", steps=2, max_steps=10, final=None, pid=os.getpid())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sft_tui.cli", "--runs-dir", str(tmp_path), "logs", "live", "-f"],
                            stdout=subprocess.PIPE, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 20
        while not any("step 2/10" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("step 2/10" in line for line in lines)  # the history first
        synthetic.append(run, synthetic.train_event(3, 10, synthetic.T0 + 30))
        while not any("step 3/10" in line for line in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("step 3/10" in line for line in lines)  # then new metrics as they come
        assert proc.poll() is None  # still following
        synthetic.append(run, {"time": synthetic.T0 + 31, "type": "status", "state": "stopped"})
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    assert "status stopped" in lines[-1]


def test_logs_follow_ends_when_the_worker_died(tmp_path, dead_pid, capsys):
    synthetic.write_run(tmp_path, "dead", steps=3, max_steps=10, final=None, pid=dead_pid)
    start = time.monotonic()
    assert main(["--runs-dir", str(tmp_path), "logs", "dead", "--follow"]) == 0
    assert time.monotonic() - start < 5
    assert "step 3/10" in capsys.readouterr().out


def test_format_event_covers_every_type():
    for ev in synthetic.events(2, eval_every=1, save_every=1):
        assert format_event(ev)
    assert "ERROR" in format_event({"type": "error", "message": "m", "hint": "h", "time": 0})
    assert "lora weights in runs/x/adapter" in format_event({"type": "saved", "path": "runs/x/adapter",
                                                             "method": "lora", "time": 0})
    assert "12 training rows" in format_event({"type": "data", "train_rows": 12, "eval_rows": 3, "time": 0})
    assert "50%" in format_event({"type": "progress", "stage": "tokenizing", "fraction": 0.5, "time": 0})


# --------------------------------------------------------------------------- the table at any width

LONG_NAMES = ["demo-lora-20240611-143015-a-long-descriptive-name", "qwen2.5-0.5b-instruct-qlora-20240611-150102"]


@pytest.fixture
def long_runs(tmp_path):
    synthetic.write_run(tmp_path, LONG_NAMES[0], steps=20, eval_every=10)
    synthetic.write_run(tmp_path, LONG_NAMES[1], steps=4, max_steps=20, final="stopped")
    return tmp_path


def terminal_output(monkeypatch, runs_dir, width: int) -> str:
    """`sft-tui runs` as drawn on a terminal ``width`` columns wide (COLUMNS=width)."""
    import io

    from rich.console import Console

    from sft_tui import cli

    buf = io.StringIO()
    monkeypatch.setattr(cli, "console", Console(file=buf, width=width, force_terminal=True, color_system=None,
                                                highlight=False))
    assert main(["--runs-dir", str(runs_dir), "runs"]) == 0
    return buf.getvalue()


@pytest.mark.parametrize("width", [120, 80, 60])
def test_runs_table_keeps_whole_names_and_statuses_at_narrow_widths(monkeypatch, long_runs, width):
    out = terminal_output(monkeypatch, long_runs, width)
    lines = out.splitlines()
    assert "…" not in out
    assert all(len(line) <= width for line in lines)
    for name, state in zip(LONG_NAMES, ["done", "stopped"]):
        row = next(line for line in lines if name in line)  # the whole name on one line
        assert state in row
    if width < 100:
        assert "hidden at this width:" in out and "--json" in out  # says what it left out and where it is


def test_runs_table_at_80_columns_keeps_step_and_loss(monkeypatch, long_runs):
    out = terminal_output(monkeypatch, long_runs, 80)
    row = next(line for line in out.splitlines() if LONG_NAMES[1] in line)
    assert "4/20" in row and "2.0203" in row
    assert "hidden at this width: model, method, best eval, started, duration" in " ".join(out.split())


def test_runs_table_too_narrow_for_a_name_folds_it_rather_than_cutting_it(monkeypatch, long_runs):
    out = terminal_output(monkeypatch, long_runs, 40)
    assert "…" not in out
    lines = out.splitlines()
    cut = lines[0].index("status")
    run_column = "".join(line[:cut].strip() for line in lines[2:] if not line.startswith("hidden"))
    for name in LONG_NAMES:
        assert name in run_column


def test_runs_piped_prints_every_value_in_full(long_runs, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    assert main(["--runs-dir", str(long_runs), "runs"]) == 0
    out = capsys.readouterr().out
    assert "…" not in out and "┃" not in out
    lines = out.splitlines()
    assert lines[0].split()[:2] == ["run", "status"] and "best eval" in lines[0] and "duration" in lines[0]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert set(rows) == set(LONG_NAMES)  # `awk '{print $1}'` gives the names
    assert rows[LONG_NAMES[0]][1:6] == ["done", "demo", "lora", "20/20", "0.9803"]
    assert rows[LONG_NAMES[1]][1] == "stopped"
