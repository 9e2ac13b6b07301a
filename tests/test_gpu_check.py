"""The one-command GPU check must not break on its first contact with a GPU: its dry run runs every step on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_dry_run(tmp_path, demo_model_dir):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out-dir", str(out)],
                          capture_output=True, text=True, timeout=400, cwd=tmp_path, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "GPU check passed" in proc.stdout
    [path] = list(out.glob("gpu-dryrun-*.json"))
    result = json.loads(path.read_text())
    assert result["dry_run"] and not result["failures"]
    runs = result["sections"]["runs"]
    lora = runs["lora-fp32"]
    assert lora["ok"] and lora["checkpoints"] and lora["adapter"] and lora["merge"]["generated_tokens"] > 0
    assert {s["what"] for s in result["skipped"]} >= {"runs/qlora-nf4", "runs/qlora-8bit"}
    assert all("CUDA" in s["why"] or "GPU" in s["why"] or "CUDA" in s["why"] for s in result["skipped"])
    mem = result["sections"]["memory"]
    assert len(mem) >= 2 and all(m["real_ok"] and m["preflight_ok"] for m in mem)
    tp = result["sections"]["throughput"]
    assert tp["ours_vs_trl"][0]["ratio"] > 0 and len(tp["fast_paths"]) >= 8
    assert all("tokens_per_s" in f for f in tp["fast_paths"]), tp["fast_paths"]
    md = (out / "RESULTS.md").read_text()
    assert "GPU check (dry run on CPU)" in md and "| method | length |" in md
