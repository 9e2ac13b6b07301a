"""A starting run says what it is doing from its first second, not just ``starting`` for minutes.

The worker writes a ``progress`` event before anything slow (torch and transformers take seconds to
import on a busy machine); then each stage of the start is a ``progress`` event (``stage``,
``fraction``): loading the libraries, building the demo model on first use (with the share of its
pre-training steps done, and the time left in its log lines), loading the model, tokenizing.
"""

from __future__ import annotations

import time

import pytest

from sft_tui.core.config import Config
from sft_tui.core.run.launch import start_worker
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.train import recipe
from sft_tui.core.train.recipe import (STAGE_DEMO, STAGE_LIBRARIES, STAGE_MODEL, STAGE_WORKER, Device,
                                       StageProgress, resolve_base)
from sft_tui.testing.waiting import wait_for


def small_config(**training) -> Config:
    config = Config()
    config.data.validation_split = 0.05
    config.data.max_length = 96
    config.training.max_steps = 2
    config.training.logging_steps = 1
    config.training.save_steps = 100
    for key, value in training.items():
        setattr(config.training, key, value)
    return config


def progress_events(run: RunDir) -> list[dict]:
    return [e for e in run.events() if e["type"] == "progress"]


@pytest.mark.slow
def test_a_detached_worker_reports_within_a_second_and_each_stage_of_its_start(demo_model_dir):
    run = RunDir.create(small_config())
    created = run.events()[0]
    assert created["type"] == "status" and created["state"] == "starting"  # written before any worker
    launched = time.time()
    proc = start_worker(run)
    try:
        first = wait_for(lambda: progress_events(run), 10, "the worker's first progress event", poll=0.02)[0]
        # Measured 0.3 s on 2 shared cores; the slack is for a machine far busier than that.
        assert first["stage"] == STAGE_WORKER and first["time"] - launched < 1.5, first["time"] - launched
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, run.log_path.read_text()[-3000:]
    events = run.events()
    marks = [(e["type"], e.get("state") or e.get("stage"), e.get("fraction")) for e in events
             if e["type"] == "progress" or e["type"] == "status"]
    order = [
        ("progress", STAGE_WORKER, 0.0),
        ("progress", STAGE_LIBRARIES, 0.0),
        ("progress", STAGE_LIBRARIES, 1.0),
        ("status", "loading", None),
        ("progress", STAGE_MODEL, 0.0),
        ("progress", STAGE_MODEL, 1.0),
        ("status", "tokenizing", None),
        ("status", "training", None),
        ("status", "done", None),
    ]
    at = [marks.index(mark) for mark in order]  # each is there (ValueError otherwise) ...
    assert at == sorted(at), marks  # ... and in this order
    loading = next(e for e in events if e["type"] == "status" and e["state"] == "loading")
    assert loading["model_path"] == str(demo_model_dir) and loading["device"] == "cpu"


@pytest.mark.slow
def test_a_first_demo_build_reports_its_pretraining_share_under_loading(tmp_path, monkeypatch):
    """A fresh cache: the run's ``loading`` status names the folder being built, then the build's
    share of pre-training steps arrives as progress events (at most one a second), then the load."""
    from sft_tui.core.models import demo

    monkeypatch.setenv("SFT_TUI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(demo, "PRETRAIN_STEPS", 24)  # a short build: the stages, not the model, are tested
    monkeypatch.setattr(demo, "PROGRESS_EVERY", 8)
    assert not demo.is_built()
    run = RunDir.create(Config())
    writer = run.writer()
    stages = StageProgress(writer, every=0.0)  # every fraction, to see them all
    path = resolve_base(run.load_config(), writer, stages, Device("cpu", False, False), "fp32")
    assert path == str(demo.demo_model_dir()) and demo.is_built()

    events = run.events()
    kinds = [(e["type"], e.get("state") or e.get("stage")) for e in events if e["type"] in ("status", "progress")]
    loading = kinds.index(("status", "loading"))
    assert kinds.index(("progress", STAGE_DEMO)) > loading  # the build is reported as part of loading
    assert kinds[-1] == ("progress", STAGE_MODEL)
    assert next(e for e in events if e.get("state") == "loading")["model_path"] == path
    built = [e["fraction"] for e in events if e["type"] == "progress" and e["stage"] == STAGE_DEMO]
    assert built[0] == 0.0 and built[-1] == 1.0 and built == sorted(built)
    assert len(set(built)) >= demo.PRETRAIN_STEPS  # one per pre-training step, then the save
    texts = [e["msg"] for e in events if e["type"] == "log"]
    assert any(f"step 8/{demo.PRETRAIN_STEPS} (33%)" in t and "left" in t for t in texts), texts


def test_stage_progress_writes_each_new_stage_and_throttles_within_one(tmp_path):
    from sft_tui.core.run.events import EventTail, EventWriter

    writer = EventWriter(tmp_path / "events.jsonl")
    stages = StageProgress(writer, every=3600.0)
    for i in range(100):
        stages(STAGE_DEMO, i / 100)
    stages(STAGE_DEMO, 1.0)
    stages(STAGE_MODEL, 0.0)
    events = EventTail(tmp_path / "events.jsonl").read_new()
    assert [(e["stage"], e["fraction"]) for e in events] == [(STAGE_DEMO, 0.0), (STAGE_DEMO, 1.0), (STAGE_MODEL, 0.0)]


@pytest.mark.slow
def test_a_slow_model_load_is_reported_while_it_happens(demo_model_dir, monkeypatch):
    """While the model loads (here: made slow), the run's newest events already say so."""
    run = RunDir.create(small_config(max_steps=1))
    seen: dict = {}
    original = recipe.build_model

    def slow_build(*args, **kwargs):
        events = run.events()
        seen["status"] = [e["state"] for e in events if e["type"] == "status"][-1]
        seen["progress"] = [(e["stage"], e["fraction"]) for e in events if e["type"] == "progress"][-1]
        time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(recipe, "build_model", slow_build)
    assert recipe.run_training(run) == "done"
    assert seen == {"status": "loading", "progress": (STAGE_MODEL, 0.0)}
    assert (STAGE_LIBRARIES, 1.0) in [(e["stage"], e["fraction"]) for e in run.events() if e["type"] == "progress"]
