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
    # The sections for the shared-GPU features: ok, or skipped with the reason (never silently absent).
    for name in ("shared", "queue", "multi_gpu"):
        status = result["sections"][name]["status"]
        assert status == "ok" or (status.startswith("skipped: ") and len(status) > 12), (name, status)
        assert name in result["timings"], name
    shared = result["sections"]["shared"]
    if shared["status"] == "ok":  # the fake GPU lists the real worker and helper: `sft-tui gpus --json` names them
        assert all(shared["checks"].values()), shared["checks"]
        assert shared["worker"]["run_name"] and shared["worker"]["ours"]
        assert "--_hold-gpu" in shared["helper"]["command"] and shared["helper"]["used_bytes"] == 4 << 30
        assert shared["gpu"]["throttled_by"] == ["power cap"] and shared["available"]["energy_counter"]
    queue = result["sections"]["queue"]
    if queue["status"] == "ok":  # waited on the fake GPU, named the holder, started once it left, finished
        assert all(queue["checks"].values()), queue["checks"]
        assert queue["reason"].startswith("waiting for 30 GiB on GPU 0;") and "--_hold-gpu" in queue["reason"]
        assert queue["waited_s"] >= 0 and queue["start_latency_s"] is not None and queue["run"]["final"] == "done"
    multi = result["sections"]["multi_gpu"]
    if multi["status"] == "ok":  # the 2-process gloo DDP run: one ranks row per process
        ddp = multi["runs"]["ddp-lora-gloo"]
        assert ddp["ok"] and ddp["world_size"] == 2 and ddp["backend"] == "gloo"
        assert sorted(ddp["ranks"]) == ["0", "1"] and all(r["tokens_per_s"] > 0 for r in ddp["ranks"].values())
    md = (out / "RESULTS.md").read_text()
    assert "GPU check (dry run on CPU)" in md and "| method | length |" in md
    assert "- shared GPU" in md and "- queue" in md and "multi-GPU" in md
