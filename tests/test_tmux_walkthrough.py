"""A newcomer's first hour, in a real terminal: tmux at 80×24, a fresh HOME, the quick-test demo to the end.

The app is driven by keys only (tmux send-keys) and read as a person reads it (capture-pane):
Model (demo) › Data › Training, the quick-test preset from the palette, Start, the monitor until
the run is done, Evaluate, and the verdict. Asserted: the verdict says the tuned model is better,
the example rows can be scrolled to, and no screen shows a line cut with an ellipsis.
The demo model comes from the shared test cache (building it is covered by its own tests).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")]

SESSION = "sft-walkthrough"
# Lines ending in a cut word: an ellipsis where text did not fit ("stopp…", "1.54k se…"). An ellipsis
# after a verb in -ing ("loading…", "checking and starting…") says work is under way and is kept.
CUT = re.compile(r"(?<=[\w-])(?<!ing)…\s*[│┃▏]?\s*$")


class Tmux:
    def __init__(self, socket: Path) -> None:
        self.base = ["tmux", "-S", str(socket)]

    def run(self, *args: str) -> str:
        return subprocess.run([*self.base, *args], check=True, capture_output=True, text=True).stdout

    def keys(self, *keys: str, pause: float = 0.4) -> None:
        for key in keys:
            self.run("send-keys", "-t", SESSION, key)
            time.sleep(pause)

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-t", SESSION)

    def wait(self, pattern: str, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if re.search(pattern, text):
                return text
            time.sleep(0.5)
        raise AssertionError(f"waited {timeout:.0f} s for {what}; the screen shows:\n{text}")


def cut_lines(text: str) -> list[str]:
    """Lines ending in a cut word; a progress phrase ("loading the tokenizer…", "waiting for the
    model's description…", wrapped or not) is no cut."""
    flat = re.sub(r"[\s│┃▏╭╮╰╯─]+", " ", text)
    out = []
    for line in text.splitlines():
        match = CUT.search(line)
        if not match:
            continue
        word = re.findall(r"[\w'-]+(?=…)", line)[-1]
        if re.search(rf"\b\w+ing\b[^…]{{0,60}}{re.escape(word)}…", flat):
            continue
        out.append(line)
    return out


def test_quick_test_demo_from_a_fresh_home_ends_with_a_better_verdict(tmp_path, demo_model_dir):
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SFT_TUI_HOME", "SFT_TUI_RUNS", "SFT_TUI_SETT"))}
    env.update(HOME=str(home), TERM="xterm-256color")
    tmux = Tmux(tmp_path / "tmux.sock")
    command = " ".join(shlex.quote(x) for x in [sys.executable, "-m", "sft_tui"])
    exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()
                       if k in ("HOME", "TERM", "SFT_TUI_CACHE_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                "TRANSFORMERS_OFFLINE", "OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "PATH", "LANG"))
    # env -i: nothing of the test's own setup (its SFT_TUI_HOME, runs dir) leaks into the app
    tmux.run("new-session", "-d", "-s", SESSION, "-x", "80", "-y", "24", f"env -i {exports} {command}")
    screens: list[str] = []
    try:
        screens.append(tmux.wait(r"Model", 60, "the Model screen"))
        tmux.keys("C-n")
        screens.append(tmux.wait(r"Data", 30, "the Data screen"))
        tmux.keys("C-n")
        screens.append(tmux.wait(r"ready to start|Start training", 60, "the Training screen"))
        tmux.keys("C-p")
        tmux.keys(*"quick-test", pause=0.1)
        time.sleep(1)
        tmux.keys("Enter")
        screens.append(tmux.wait(r"ready to start", 60, "the pre-flight after the preset"))
        tmux.keys("C-g")
        screens.append(tmux.wait(r"training|loading|starting", 60, "the monitor"))
        done = tmux.wait(r"\bdone\b", 420, "the run to finish")
        screens.append(done)
        tmux.keys("C-n")
        screens.append(tmux.wait(r"Evaluate|evaluat", 30, "the Evaluate screen"))
        tmux.keys("C-r")
        verdict = tmux.wait(r"Tuned is (better|worse|not clearly)|no clear difference|mixed", 420, "the verdict")
        screens.append(verdict)
        assert re.search(r"Tuned is better than base", verdict), verdict
        # the example rows are reachable by keyboard: Tab into them, then End
        for _ in range(8):
            tmux.keys("Tab", pause=0.3)
            if re.search(r"tuned", tmux.screen(), re.I) and re.search(r"reference", tmux.screen(), re.I):
                break
        tmux.keys("End", pause=1.0)
        examples = tmux.screen()
        screens.append(examples)
        assert re.search(r"reference", examples, re.I) and re.search(r"tuned", examples, re.I), examples
        cut = [(line, text) for text in screens for line in cut_lines(text)]
        assert not cut, "lines cut with an ellipsis:\n" + "\n\n".join(f"{line}\nin:\n{text}" for line, text in cut)
        tmux.keys("C-q", pause=0.5)
    finally:
        subprocess.run([*tmux.base, "kill-server"], capture_output=True)
        for pid_file in home.glob(".local/share/sft-tui/runs/*/worker.pid"):  # a detached worker outlives tmux
            try:
                os.kill(int(pid_file.read_text().strip()), 9)
            except (OSError, ValueError):
                pass
