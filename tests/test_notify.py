"""Hearing about a run over SSH: terminal escapes, support detection, dedupe, the command hook."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sft_tui.core.notify import (
    CommandHook,
    Notification,
    RunNotifier,
    TerminalSupport,
    describe,
    escapes,
    install_worker_hook,
    notable_kind,
    osc9,
    osc777,
    screen_passthrough,
    terminal_notifier,
    terminal_support,
    tmux_passthrough,
)
from sft_tui.core.run.events import EventWriter
from sft_tui.core.run.rundir import RunDir, RunStatus
from sft_tui.core.settings import Settings, load_settings, save_settings
from sft_tui.testing import synthetic

ESC, BEL = "\x1b", "\x07"
BOTH = TerminalSupport(osc9=True, osc777=True, bell=True)


def note(title: str = "sft-tui: run r1 done", body: str = "step 6/6, loss 0.81, 42 min") -> Notification:
    return Notification(run="r1", kind="done", title=title, body=body)


def wait_until(cond, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


# --------------------------------------------------------------------------- the bytes


def test_exact_sequences():
    assert osc9("sft-tui: run r1 done") == "\x1b]9;sft-tui: run r1 done\x07"
    assert osc777("sft-tui: run r1 done", "step 6/6") == "\x1b]777;notify;sft-tui: run r1 done;step 6/6\x07"
    assert escapes("T", "B", BOTH) == "\x1b]9;T: B\x07" + "\x1b]777;notify;T;B\x07" + "\x07"
    assert escapes("T", "B", TerminalSupport(bell=True)) == "\x07"
    assert escapes("T", "B", TerminalSupport()) == ""


def test_tmux_and_screen_passthrough():
    assert tmux_passthrough("\x1b]9;hi\x07") == "\x1bPtmux;\x1b\x1b]9;hi\x07\x1b\\"
    assert screen_passthrough("\x1b]9;hi\x07") == "\x1bP\x1b]9;hi\x07\x1b\\"
    tmux = TerminalSupport(osc9=True, osc777=True, bell=True, multiplexer="tmux")
    assert escapes("T", "B", tmux) == ("\x1bPtmux;\x1b\x1b]9;T: B\x07\x1b\\"
                                       "\x1bPtmux;\x1b\x1b]777;notify;T;B\x07\x1b\\"
                                       "\x07")  # the bell travels bare: tmux forwards it itself
    screen = TerminalSupport(osc777=True, multiplexer="screen")
    assert escapes("T", "B", screen) == "\x1bP\x1b]777;notify;T;B\x07\x1b\\"
    env = {"TERM": "tmux-256color", "TMUX": "/tmp/tmux-1000/default,123,0"}
    assert terminal_support("auto", env, tty=True).multiplexer == "tmux"
    assert terminal_support("auto", {"TERM": "screen", "STY": "1.pts-0.host"}, tty=True).multiplexer == "screen"


def test_a_hostile_run_name_cannot_inject_escapes():
    name = "x\x1b]0;owned\x07\x1b[2J;evil\u009c\nname"
    n = describe(name, "done", {"type": "status", "state": "done"}, None)
    data = escapes(n.title, n.body, BOTH)
    assert data.count(ESC) == 2 and data.count(BEL) == 3  # one ESC per sequence, one BEL to end each + bell
    assert "\u009c" not in data and "\n" not in data and "[2J" in data  # the text stays, inert
    seven = data[data.index(f"{ESC}]777"):]
    assert len(seven.split(BEL)[0].split(";")) == 4  # 777 ; notify ; title ; body — nothing more
    assert osc9("9;4;1;50 progress")[len(ESC) + 3] == "-"  # never a ConEmu/Windows Terminal command


def test_long_text_is_cut():
    n = note(body="x" * 5000)
    assert len(escapes(n.title, n.body, BOTH)) < 1200


# --------------------------------------------------------------------------- support detection


@pytest.mark.parametrize("mode, env, tty, want", [
    ("auto", {"TERM": "linux"}, True, (False, False, False)),
    ("auto", {"TERM": "dumb"}, True, (False, False, False)),
    ("auto", {}, True, (False, False, False)),
    ("auto", {"TERM": "xterm-256color"}, False, (False, False, False)),  # a pipe or a log file
    ("auto", {"TERM": "xterm-256color"}, True, (True, True, True)),  # unknown: both
    ("auto", {"TERM": "xterm-256color", "TERM_PROGRAM": "iTerm.app"}, True, (True, False, True)),
    ("auto", {"TERM": "xterm-256color", "LC_TERMINAL": "iTerm2"}, True, (True, False, True)),
    ("auto", {"TERM": "xterm-256color", "WT_SESSION": "abc"}, True, (True, False, True)),
    ("auto", {"TERM": "xterm-kitty"}, True, (True, False, True)),
    ("auto", {"TERM": "xterm-ghostty"}, True, (False, True, True)),  # reads both: one banner
    ("auto", {"TERM": "xterm-256color", "TERM_PROGRAM": "WezTerm"}, True, (False, True, True)),
    ("auto", {"TERM": "foot"}, True, (False, True, True)),
    ("auto", {"TERM": "rxvt-unicode-256color"}, True, (False, True, True)),
    ("auto", {"TERM": "xterm-256color", "VTE_VERSION": "7600"}, True, (False, True, True)),
    ("auto", {"TERM": "xterm-256color", "VTE_VERSION": "4200"}, True, (False, False, True)),
    ("on", {"TERM": "dumb"}, False, (True, True, True)),
    ("off", {"TERM": "xterm-256color"}, True, (False, False, False)),
])
def test_support_by_terminal(mode, env, tty, want):
    s = terminal_support(mode, env, tty=tty)
    assert (s.osc9, s.osc777, s.bell) == want, s.reason


def test_terminal_notifier_is_none_for_a_pipe(tmp_path):
    run = synthetic.write_run(tmp_path, "r1", steps=2)
    with open(tmp_path / "out", "w") as pipe_like:
        assert terminal_notifier(run, mode="auto", stream=pipe_like, env={"TERM": "xterm"}) is None
        assert terminal_notifier(run, mode="on", stream=pipe_like, env={"TERM": "xterm"}) is not None


# --------------------------------------------------------------------------- what is notable, once


def test_notable_events():
    assert notable_kind({"type": "status", "state": "done"}) == "done"
    assert notable_kind({"type": "status", "state": "training"}) is None
    assert notable_kind({"type": "error", "kind": "oom", "message": "m"}) == "oom"
    assert notable_kind({"type": "error", "kind": "nan_loss", "message": "m"}) == "nan_loss"
    assert notable_kind({"type": "error", "kind": "config", "message": "m"}) is None  # its 'failed' tells
    assert notable_kind({"type": "stall", "phase": "step", "silent_s": 600, "median_step_s": 2.0}) == "stall"
    assert notable_kind({"type": "log", "level": "warning", "msg": "slow data", "input_bound": True}) is None


def test_titles_and_bodies():
    st = RunStatus(name="qwen-lora-1203", state="done", step=600, max_steps=600, last_loss=0.81,
                   started=1000.0, ended=1000.0 + 42 * 60)
    n = describe("qwen-lora-1203", "done", {"type": "status", "state": "done"}, st)
    assert (n.title, n.body, n.severity) == ("sft-tui: run qwen-lora-1203 done", "step 600/600, loss 0.81, 42 min",
                                             "information")
    st.error = {"kind": "disk_full", "message": "The disk is full.", "hint": "free space"}
    n = describe("r", "failed", {"type": "status", "state": "failed"}, st)
    assert n.body == "The disk is full at step 600/600" and n.severity == "error"
    n = describe("r", "oom", {"type": "error", "kind": "oom", "message": "The GPU ran out of memory."}, st)
    assert n.title == "sft-tui: run r failed: out of memory"
    n = describe("r", "stall", {"type": "stall", "phase": "saving a checkpoint", "silent_s": 720,
                                "median_step_s": 3.2, "stack": "..."}, st)
    assert n.body == "no progress for 12 min while saving a checkpoint (a step usually takes 3.2 s)"
    assert n.severity == "warning"


def _resumed_run(tmp_path: Path) -> tuple[RunDir, float]:
    """A run stopped an hour ago and then resumed: its file holds the old 'stopped'."""
    run = synthetic.write_run(tmp_path, "r1", steps=3, max_steps=6, final="stopped", t0=time.time() - 3600)
    return run, time.time()


def test_dedupe_only_events_after_the_watch_began_fire(tmp_path):
    run, began = _resumed_run(tmp_path)
    told: list[Notification] = []
    notifier = RunNotifier(run, told.append, since=began)
    assert notifier.feed_all(run.events()) == []  # the old 'stopped' is history
    writer = run.writer()
    writer.status("starting", resume=True)
    writer.write("train", step=6, max_steps=6, loss=0.5)
    writer.status("done")
    fired = notifier.feed_all(run.events())  # a monitor re-reading the whole file
    assert [n.kind for n in fired] == ["done"] and told == fired
    assert "step 6/6" in fired[0].body
    assert notifier.feed_all(run.events()) == []  # and again: nothing twice


def test_dedupe_line_based_watch(tmp_path):
    """``since=None``: every event fed is new; the TUI's tail starts at the end of the file."""
    from sft_tui.core.notify import RunWatch

    run, _ = _resumed_run(tmp_path)
    with open(run.events_path, "a") as fh:
        fh.write('{"time": 1, "type": "status", "st')  # a line still being written when the watch begins
    watch = RunWatch(run)
    with open(run.events_path, "a") as fh:
        fh.write('ate": "training"}\n')
    assert watch.read() == []
    run.writer().status("done")
    assert [n.kind for n in watch.read()] == ["done"]
    assert watch.read() == []


def test_one_failure_one_notification(tmp_path):
    run = synthetic.write_run(tmp_path, "r1", steps=2, final=None)
    notifier = RunNotifier(run, since=None)
    fired = notifier.feed_all([
        {"time": 1.0, "type": "error", "kind": "oom", "message": "The GPU ran out of memory.", "hint": "h"},
        {"time": 1.1, "type": "status", "state": "failed"},
    ])
    assert [n.kind for n in fired] == ["oom"]
    fired = notifier.feed_all([{"time": 2.0, "type": "status", "state": "starting"},  # resumed, fails again
                               {"time": 3.0, "type": "status", "state": "failed"}])
    assert [n.kind for n in fired] == ["failed"]


def test_a_worker_that_vanished_is_news_only_if_seen_running(tmp_path):
    run = synthetic.write_run(tmp_path, "r1", steps=2, final=None)
    died = RunStatus(name="r1", state="died", step=2, max_steps=60, last_event=5.0)
    found_dead = RunNotifier(run, since=None, status=lambda: died)
    assert found_dead.finish() is None  # nothing seen running: a run found dead is history
    watched = RunNotifier(run, since=None, status=lambda: died)
    watched.feed({"time": 5.0, "type": "train", "step": 2, "max_steps": 60, "loss": 1.0})
    n = watched.finish()
    assert n is not None and n.kind == "died" and n.body.endswith("at step 2/60")
    assert watched.finish() is None


# --------------------------------------------------------------------------- the command hook


def test_hook_gets_the_event_json_on_stdin_and_env(tmp_path):
    out, env_out = tmp_path / "stdin.json", tmp_path / "env.txt"
    hook = CommandHook(f"cat > '{out}'; printf '%s|%s' \"$SFT_TUI_EVENT\" \"$SFT_TUI_RUN\" > '{env_out}'")
    n = Notification(run="r1", kind="done", title="sft-tui: run r1 done", body="step 6/6",
                     event={"time": 1.0, "type": "status", "state": "done"}, run_dir="/runs/r1")
    hook(n).join(timeout=10)
    data = json.loads(out.read_text())
    assert data["kind"] == "done" and data["run"] == "r1" and data["event"]["state"] == "done"
    assert data["title"] == "sft-tui: run r1 done" and data["run_dir"] == "/runs/r1"
    assert env_out.read_text() == "done|r1"


def test_a_failing_or_hanging_hook_never_blocks_or_raises(tmp_path):
    warnings: list[str] = []
    CommandHook("echo 'no route to host' >&2; exit 7", warn=warnings.append)(note()).join(timeout=10)
    assert warnings and "status 7" in warnings[0] and "no route to host" in warnings[0]

    late = tmp_path / "late"
    hook = CommandHook(f"sleep 30; touch '{late}'", timeout=0.5, warn=warnings.append)
    start = time.monotonic()
    thread = hook(note())
    assert time.monotonic() - start < 0.3  # the caller never waits
    thread.join(timeout=10)
    assert not thread.is_alive() and time.monotonic() - start < 5
    assert "longer than 0.5 s" in warnings[-1]
    time.sleep(0.2)
    assert not late.exists()  # the whole group was killed, not just the shell

    CommandHook("exit 0", warn=warnings.append)(note()).join(timeout=10)
    assert len(warnings) == 2


def test_worker_observer_runs_the_hook_for_done(tmp_path):
    out = tmp_path / "hook.json"
    run = synthetic.write_run(tmp_path, "r1", steps=0, max_steps=5, final=None)
    observer = install_worker_hook(Settings(notify_command=f"cat > '{out}'"))
    assert observer is not None
    try:
        writer = EventWriter(run.events_path)
        writer.status("training")
        writer.write("train", step=5, max_steps=5, loss=float("nan"))  # written as null: still valid JSON
        writer.status("done")
        assert wait_until(lambda: out.exists() and out.read_text().endswith("\n"))
        data = json.loads(out.read_text())
        assert data["kind"] == "done" and data["run"] == "r1" and "step 5/5" in data["body"]
    finally:
        EventWriter.remove_observer(observer)
    assert install_worker_hook(Settings()) is None  # no command, no observer


def test_a_broken_observer_never_breaks_a_write(tmp_path):
    def broken(event, path):
        raise RuntimeError("boom")

    EventWriter.add_observer(broken)
    try:
        EventWriter(tmp_path / "events.jsonl").status("done")
    finally:
        EventWriter.remove_observer(broken)
    assert "done" in (tmp_path / "events.jsonl").read_text()


# --------------------------------------------------------------------------- settings


def test_notify_settings_round_trip(tmp_path):
    path = tmp_path / "settings.yaml"
    path.write_text("notify: off\nnotify_command: curl -d @- ntfy.sh/topic\n")  # YAML's bare off is a bool
    s = load_settings(path, strict=True)
    assert (s.notify, s.notify_command) == ("off", "curl -d @- ntfy.sh/topic")
    save_settings(s, path)
    assert load_settings(path, strict=True) == s
    save_settings(Settings(), path)
    assert "notify" not in path.read_text()  # unset keys stay out of the file
    path.write_text("notify: loud\n")
    with pytest.raises(Exception, match="notify must be auto, on or off"):
        load_settings(path, strict=True)
    assert load_settings(path).notify == "auto" and load_settings(path).warning


# --------------------------------------------------------------------------- the clients


def test_logs_follow_writes_the_escapes_when_the_run_ends(tmp_path):
    Path(os.environ["SFT_TUI_SETTINGS"]).write_text("notify: 'on'\n")
    run = synthetic.write_run(tmp_path, "r1", steps=2, max_steps=4, final="stopped", t0=time.time() - 3600)
    run.pid_path.write_text(str(os.getpid()))  # a live 'worker': the follow waits for the end
    run.writer().status("training", resume=True)
    env = {k: v for k, v in os.environ.items() if k not in ("TMUX", "STY", "TERM_PROGRAM", "VTE_VERSION",
                                                           "WT_SESSION", "KITTY_WINDOW_ID", "LC_TERMINAL")}
    env.update(TERM="xterm-256color", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "sft_tui.cli", "--runs-dir", str(tmp_path), "logs", "r1", "-f"],
                            stdout=subprocess.PIPE, env=env)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stdout.read1(4096), b"")), daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: b"status training" in b"".join(chunks), 30)
        writer = run.writer()
        writer.write("train", step=4, max_steps=4, loss=0.7)
        writer.status("done")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    out = b"".join(chunks)
    assert b"\x1b]9;sft-tui: run r1 done: step 4/4, loss 0.7" in out
    assert b"\x1b]777;notify;sft-tui: run r1 done;step 4/4, loss 0.7" in out
    assert out.count(b"\x1b]") == 2  # the old 'stopped' in the history did not fire


async def test_the_app_notifies_when_a_watched_run_finishes(tmp_path, monkeypatch):
    from pilot_support import wait_for

    from sft_tui.app import SftApp
    from sft_tui.core.setup.session import Session
    from sft_tui.widgets.notifier import AppNotifier

    for key in ("TMUX", "STY", "TERM_PROGRAM", "VTE_VERSION", "WT_SESSION", "KITTY_WINDOW_ID", "LC_TERMINAL"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setattr(AppNotifier, "POLL_S", 0.1)
    written: list[str] = []
    monkeypatch.setattr(AppNotifier, "write", lambda self, data: written.append(data))
    run, _ = _resumed_run(tmp_path)
    run.pid_path.write_text(str(os.getpid()))
    app = SftApp(session=Session(run=RunDir(run.path), runs_dir=tmp_path), start="runs",
                 settings=Settings(notify="on"))
    async with app.run_test(size=(100, 30)) as pilot:
        assert await wait_for(pilot, lambda: run.path in app.run_notifier.watches)
        await pilot.pause(0.4)
        assert written == []  # the history's 'stopped' is not news
        run.writer().status("training", resume=True)
        run.writer().status("done")
        assert await wait_for(pilot, lambda: written)
        await pilot.pause(0.3)
        assert len(written) == 1 and written[0].startswith("\x1b]9;sft-tui: run r1 done")
        assert "\x1b]777;notify;sft-tui: run r1 done;" in written[0] and written[0].endswith("\x07")
        assert any(n.title == "sft-tui: run r1 done" for n in app._notifications)
