"""The measured pre-flight: a few real steps on the longest batch, and its figure against the real run's."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from sft_tui.core.config import Config
from sft_tui.core.train.measure import candidates, measure_config, parse_bytes

pytestmark = pytest.mark.slow

CONFIG = {"model": "demo",
          "data": {"path": "sample:reviews_alpaca.jsonl", "validation_split": 0.05, "max_length": 128},
          "training": {"logging_steps": 2, "batch_size": 4, "max_steps": 12, "save_steps": 6, "eval_steps": 6}}


def test_parse_bytes_and_candidates():
    assert parse_bytes("2GiB") == 2 * 1024**3 and parse_bytes("800MiB") == 800 * 1024**2 and parse_bytes("123") == 123
    steps = [c for _, c in candidates(Config.model_validate(CONFIG), cuda=True)]
    assert steps[0] == {"training.gradient_checkpointing": True}
    assert {"training.batch_size": 1, "training.gradient_accumulation": 4}.items() <= steps[2].items()
    assert steps[-1]["method.type"] == "qlora"


def test_measured_rss_within_ten_percent_of_the_real_run(tmp_path, demo_model_dir):
    """The worker, started as `sft-tui train` starts it, is waited for with wait4: its ru_maxrss is the truth."""
    from sft_tui.core.run.launch import start_worker
    from sft_tui.core.run.rundir import RunDir

    config = Config.model_validate(CONFIG)
    measured = measure_config(config)
    assert measured.ok, measured.error
    run = RunDir.create(config, runs_dir=tmp_path / "runs")
    proc = start_worker(run)
    _, status, usage = os.wait4(proc.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, run.log_path.read_text()[-3000:]
    real = usage.ru_maxrss * 1024
    error = (measured.peak_rss - real) / real
    print(f"measured pre-flight {measured.peak_rss / 2**20:.0f} MiB vs real run {real / 2**20:.0f} MiB: {error:+.1%}")
    assert abs(error) <= 0.10
    assert measured.batch_shape[0] == 4 and measured.batch_tokens > 0 and measured.steps == 3


def _cli(args, env):
    return subprocess.run([sys.executable, "-m", "sft_tui", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_cli_preflight_exit_codes(tmp_path, demo_model_dir):
    path = tmp_path / "run.yaml"
    cfg = dict(CONFIG, training=dict(CONFIG["training"], batch_size=2))
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ)
    started = time.monotonic()
    ok = _cli(["train", str(path), "--preflight"], env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "measured peak resident memory" in ok.stdout and "fits" in ok.stdout
    assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists() and not list((tmp_path.parent).glob("runs/*"))  # no run started
    tight = _cli(["train", str(path), "--preflight"], dict(env, SFT_TUI_MEMORY_BUDGET="50MiB"))
    assert tight.returncode == 1, tight.stdout + tight.stderr
    assert "does not fit" in tight.stdout and "gradient checkpointing on" in tight.stdout
    bad = _cli(["train", str(tmp_path / "missing.yaml"), "--preflight"], env)
    assert bad.returncode == 2
