"""Failures become words a person can act on: the classifier shared by CLI, worker and TUI."""

from __future__ import annotations

import math

import pytest

from sft_tui.core.config import ConfigError, Problem
from sft_tui.core.errors import NanLossError, UserError, explain


class OutOfMemoryError(RuntimeError):
    """Stands in for torch.cuda.OutOfMemoryError (same class name, no CUDA needed)."""


@pytest.mark.parametrize("exc, kind, hint_words", [
    (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom", "batch_size"),
    (RuntimeError("CUDA error: out of memory"), "oom", "qlora"),
    (NanLossError("the training loss became NaN/inf at step 7"), "nan_loss", "learning_rate"),
    (FileNotFoundError(2, "No such file", "/data/x.jsonl"), "missing_file", "path"),
    (UserError("bad thing", "do this"), "error", "do this"),
    (ConfigError([Problem("training.batch_size", 0, "out of range", "use ≥ 1")]), "config", "validate"),
    (OSError("nope/model does not appear to have a file named config.json"), "model_not_found", "hub id"),
    (ValueError("something odd"), "internal", "worker.log"),
])
def test_explain(exc, kind, hint_words):
    info = explain(exc)
    assert info.kind == kind
    assert hint_words in info.hint
    assert "Traceback" not in info.message


def test_missing_file_names_the_path():
    assert "/data/x.jsonl" in explain(FileNotFoundError(2, "No such file", "/data/x.jsonl")).message


def test_callback_raises_on_nan_loss(tmp_path):
    """A NaN loss stops training with the NaN hint rather than training on garbage."""
    from sft_tui.core.config import Config
    from sft_tui.core.run.rundir import RunDir
    from sft_tui.core.train.callback import EventCallback
    from sft_tui.core.train.control import StopHandle

    run = RunDir.create(Config(), runs_dir=tmp_path)
    callback = EventCallback(run, run.writer(), "cpu", StopHandle())

    class State:
        global_step, max_steps, epoch, num_input_tokens_seen = 3, 10, 0.1, 100

    callback.on_log(None, State(), None, logs={"loss": 1.5, "learning_rate": 1e-4})
    with pytest.raises(NanLossError) as info:
        callback.on_log(None, State(), None, logs={"loss": math.nan})
    assert explain(info.value).kind == "nan_loss"
    train = [e for e in run.events() if e["type"] == "train"]
    assert [e["loss"] for e in train] == [1.5]


def test_callback_obeys_control_commands(tmp_path):
    from sft_tui.core.config import Config
    from sft_tui.core.run.rundir import RunDir
    from sft_tui.core.train.callback import EventCallback
    from sft_tui.core.train.control import StopHandle

    run = RunDir.create(Config(), runs_dir=tmp_path)
    run.send("save")  # sent before the worker started: already handled, must not replay
    callback = EventCallback(run, run.writer(), "cpu", StopHandle())

    class Control:
        should_save = False
        should_training_stop = False

    control = callback.on_step_end(None, None, Control())
    assert not control.should_save
    import os
    import time

    run.send("save")
    os.utime(run.control_path, (time.time() + 1, time.time() + 1))  # coarse mtimes on some filesystems
    control = callback.on_step_end(None, None, Control())
    assert control.should_save and not control.should_training_stop
    run.send("stop")
    os.utime(run.control_path, (time.time() + 2, time.time() + 2))
    control = callback.on_step_end(None, None, Control())
    assert control.should_save and control.should_training_stop and callback.stop_requested
