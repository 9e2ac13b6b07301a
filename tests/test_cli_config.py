"""The headless CLI's config commands: output and exit codes are an API."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from sft_tui.cli import main
from sft_tui.core.config import Config, parse_config


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_tui", *args], capture_output=True, text=True, timeout=120)


def test_broken_config_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: demo\ntraining:\n  learning_rate: 5\n  optimzer: sgd\nmethod:\n  lora_r: 0\n")
    proc = run_cli("config", "validate", str(bad))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "3 problem(s)" in proc.stderr
    assert "did you mean 'optimizer'" in proc.stderr
    assert "training.learning_rate = 5" in proc.stderr


def test_validate_json(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: {max_length: 1}\n")
    assert main(["config", "validate", "--json", "--no-env", str(bad)]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] is False and out["problems"][0]["field"] == "data.max_length"


def test_new_writes_a_valid_commented_config(tmp_path, capsys):
    assert main(["config", "new", "--preset", "quick-test"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("# preset: quick-test")
    cfg = parse_config(yaml.safe_load(text))
    assert cfg.training.max_steps == 60
    path = tmp_path / "c.yaml"
    path.write_text(text)
    assert main(["config", "validate", "--no-env", str(path)]) == 0


def test_new_with_model_and_data(capsys):
    assert main(["config", "new", "--model", "/m", "--data", "x.jsonl"]) == 0
    cfg = parse_config(yaml.safe_load(capsys.readouterr().out))
    assert (cfg.model.path, cfg.data.path) == ("/m", "x.jsonl")
    assert cfg.training == Config().training


def test_unknown_run_is_exit_2(capsys):
    assert main(["logs", "nope"]) == 2
    assert "no run named 'nope'" in capsys.readouterr().err


def test_train_needs_a_config(capsys):
    assert main(["train"]) == 2
    assert "hint" in capsys.readouterr().err


def test_missing_config_file(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
