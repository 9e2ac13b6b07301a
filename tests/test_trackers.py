"""Experiment trackers (``training.report_to``): what the Trainer is given, and one real run that uses two.

The unit tests check the arguments and environment built for each tracker (everything inside the run
directory, the user's own settings untouched) and that a missing library is refused at pre-flight
with the install command. One real worker trains the demo model with TensorBoard and W&B (offline)
at once and proves the result: TensorBoard event files with a ``train/loss`` scalar, a W&B offline run
holding our config, and no token from the environment in any file of the run directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sft_tui.core.config import Config
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.train import trackers
from sft_tui.core.train.preflight import PreflightError, preflight
from sft_tui.core.train.trackers import (
    TrackerSetup,
    flat_config,
    missing_packages,
    tracker_setup,
)

SECRETS = {"WANDB_API_KEY": "sk-test-SECRET-123", "HF_TOKEN": "hf_SECRET"}


def config_with(report_to, **training) -> Config:
    return Config.model_validate({
        "model": "demo",
        "data": {"path": "sample:reviews_alpaca.jsonl", "validation_split": 0.0, "max_length": 64},
        "training": {"report_to": report_to, **training},
    })


def test_every_tracker_writes_inside_the_run_directory(tmp_path):
    run = tmp_path / "runs" / "my-run"
    setup = tracker_setup(config_with(["tensorboard", "wandb", "mlflow", "trackio"]), run, environ={})
    assert setup.report_to == ["tensorboard", "wandb", "mlflow", "trackio"] and setup.run_name == "my-run"
    assert setup.env["TENSORBOARD_LOGGING_DIR"] == str(run / "trackers" / "tensorboard")
    assert setup.env["WANDB_DIR"] == str(run / "trackers") and setup.env["WANDB_PROJECT"] == "sft-tui"
    assert setup.env["MLFLOW_TRACKING_URI"] == (run / "trackers" / "mlruns").resolve().as_uri()
    assert setup.env["MLFLOW_EXPERIMENT_NAME"] == "sft-tui" and setup.env["MLFLOW_ALLOW_FILE_STORE"] == "true"
    assert setup.env["TRACKIO_DIR"] == str(run / "trackers" / "trackio")
    args = setup.trainer_arguments()
    assert args["report_to"] == setup.report_to and args["run_name"] == "my-run"
    assert args["project"] == "sft-tui" and args["trackio_static_space_id"] is False  # no Space unless asked
    assert not any("TOKEN" in key or "KEY" in key for key in setup.env)


def test_only_the_chosen_trackers_are_set_up_and_none_means_none(tmp_path):
    setup = tracker_setup(config_with("tensorboard"), tmp_path / "r", environ={})
    assert setup.report_to == ["tensorboard"] and list(setup.env) == ["TENSORBOARD_LOGGING_DIR"]
    assert "project" not in setup.trainer_arguments()
    none = tracker_setup(config_with("none"), tmp_path / "r", environ={})
    assert none.report_to == [] and none.env == {} and none.trainer_arguments()["report_to"] == "none"


def test_what_the_user_set_is_never_overwritten(tmp_path):
    user = {"WANDB_PROJECT": "team-project", "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000"}
    setup = tracker_setup(config_with(["wandb", "mlflow"]), tmp_path / "r", environ=user)
    assert "WANDB_PROJECT" not in setup.env and "MLFLOW_TRACKING_URI" not in setup.env
    assert "MLFLOW_ALLOW_FILE_STORE" not in setup.env  # their server, their rules
    assert setup.env["WANDB_DIR"] == str(tmp_path / "r" / "trackers")
    environ = dict(user, WANDB_DIR="/elsewhere")
    TrackerSetup(["wandb"], "r", {"WANDB_DIR": str(tmp_path / "x"), "WANDB_PROJECT": "sft-tui"}).apply(environ)
    assert environ["WANDB_DIR"] == "/elsewhere" and environ["WANDB_PROJECT"] == "team-project"
    assert not (tmp_path / "x").exists()  # a folder is made only where we chose it


def test_apply_sets_the_variables_and_makes_the_folders(tmp_path):
    environ: dict[str, str] = {}
    setup = tracker_setup(config_with(["tensorboard", "wandb"]), tmp_path / "r", environ=environ)
    setup.apply(environ)
    assert environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "r" / "trackers" / "tensorboard")
    assert Path(environ["TENSORBOARD_LOGGING_DIR"]).is_dir() and Path(environ["WANDB_DIR"]).is_dir()


def test_the_trainer_gets_report_to_and_the_run_name(tmp_path, monkeypatch):
    from sft_tui.core.train.recipe import Device, training_arguments

    for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.setenv(key, "")  # recorded, so what training_arguments sets is undone after the test
        monkeypatch.delenv(key)
    config = config_with(["tensorboard"], max_steps=2)
    run = RunDir.create(config)
    args = training_arguments(config, run, Device("cpu", False, False), "fp32", has_eval=False)
    assert args.report_to == ["tensorboard"] and args.run_name == run.name
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run.path / "trackers" / "tensorboard")
    args = training_arguments(config_with("none"), run, Device("cpu", False, False), "fp32", has_eval=False)
    assert args.report_to == []  # transformers' spelling of "none"


def test_our_config_goes_along_as_one_flat_dict():
    flat = flat_config(config_with(["wandb"], learning_rate=3e-4))
    assert flat["sft_tui/training.learning_rate"] == 3e-4 and flat["sft_tui/model.path"] == "demo"
    assert flat["sft_tui/training.report_to"] == ["wandb"]
    assert not any(isinstance(value, dict) for value in flat.values())


def test_a_missing_tracker_library_is_refused_at_preflight_with_the_install_command(monkeypatch):
    real = trackers._importable
    monkeypatch.setattr(trackers, "_importable", lambda module: module != "mlflow" and real(module))
    assert missing_packages(["mlflow"]) == [("mlflow", "mlflow-skinny")]
    report = preflight(config_with(["mlflow"]), deep=False)
    found = [f for f in report.errors if f.field == "training.report_to"]
    assert len(found) == 1 and "mlflow" in found[0].message
    assert "pip install mlflow-skinny" in found[0].fix and "sft-tui[trackers]" in found[0].fix
    with pytest.raises(PreflightError) as info:
        report.raise_if_blocked()
    assert "report_to" in info.value.message
    assert not [f for f in preflight(config_with("none"), deep=False).errors if f.field == "training.report_to"]


# --------------------------------------------------------------------------- one real run, two trackers


@pytest.mark.slow
def test_a_real_run_reports_to_tensorboard_and_wandb_offline_and_leaks_no_token(demo_model_dir, monkeypatch):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'sft-tui[trackers]')")
    pytest.importorskip("wandb", reason="wandb is not installed (pip install 'sft-tui[trackers]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sft_tui.core.run.launch import start_worker

    for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "WANDB_PROJECT", "WANDB_RUN_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    config = config_with(["tensorboard", "wandb"], max_steps=4, logging_steps=1, save_steps=100, batch_size=2)
    config.output.run_name = "tracked"
    run = RunDir.create(config)
    proc = start_worker(run)
    assert proc.wait(timeout=300) == 0, run.log_path.read_text()
    assert [e["state"] for e in run.events() if e["type"] == "status"][-1] == "done"

    tb_dir = run.path / "trackers" / "tensorboard"
    assert list(tb_dir.glob("events.out.tfevents.*")), sorted(p.name for p in run.path.rglob("*"))
    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    assert "train/loss" in acc.Tags()["scalars"]
    assert [s.step for s in acc.Scalars("train/loss")] == [1, 2, 3, 4]

    offline = list((run.path / "trackers" / "wandb").glob("offline-run-*"))
    assert len(offline) == 1, sorted(str(p.relative_to(run.path)) for p in run.path.rglob("*"))
    records = b"".join(p.read_bytes() for p in offline[0].glob("*.wandb"))
    assert b"sft_tui/training.learning_rate" in records and b"tracked" in records  # our config, our run name

    for path in run.path.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            for key, secret in SECRETS.items():
                assert secret.encode() not in data, f"{key}'s value was written into {path.relative_to(run.path)}"
