"""Shared test setup: every test gets private sft-tui dirs and no network access to the hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub: tests must never reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One torch thread per process: tests often run the app and a training worker at once on 2 cores,
# and oversubscribed torch threads were measured 10-50x slower than one thread each.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# The demo model is built once per machine into a shared cache so the suite does not rebuild it
# for every test (it is deterministic, so sharing it is safe).
os.environ.setdefault("SFT_TUI_CACHE_DIR", str(Path(__file__).resolve().parent.parent / ".cache" / "test-cache"))


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("sft-home")
    monkeypatch.setenv("SFT_TUI_HOME", str(home))
    monkeypatch.setenv("SFT_TUI_RUNS_DIR", str(home / "runs"))
    monkeypatch.setenv("SFT_TUI_SETTINGS", str(home / "settings.yaml"))
    yield home


@pytest.fixture(scope="session")
def demo_model_dir() -> Path:
    from sft_tui.core.models.demo import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture(autouse=True)
def _no_cursor_blink(monkeypatch):
    """Input and TextArea cursors blink on a timer, which made snapshots depend on timing: a steady
    cursor in every test (the reactive's default, so each widget is created with blinking off)."""
    from textual.widgets import Input, TextArea

    for widget in (Input, TextArea):
        monkeypatch.setattr(widget.cursor_blink, "_default", False)
