"""GPU-only paths: QLoRA training, real NVML gauges, mixed precision. Skipped without CUDA.

Run on a GPU machine with `pytest -m gpu`. Here (no GPU) the no-GPU behaviour is tested instead:
see test_config.py (qlora refused with a reason), test_gpus.py and `sft-tui doctor`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

torch = pytest.importorskip("torch")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]


def test_nvml_reports_the_gpu_and_our_process():
    from sft_tui.core.system.gpus import GpuSampler

    x = torch.ones(64 * 2**20, device="cuda")  # 256 MiB so this process shows up in NVML
    snap = GpuSampler().sample()
    assert snap.available and snap.gpus
    gpu = snap.gpus[0]
    assert gpu.mem_total and gpu.mem_used and gpu.mem_used <= gpu.mem_total
    assert gpu.name
    del x


@pytest.mark.parametrize("method", ["qlora", "lora"])
def test_short_gpu_run_trains_and_saves(tmp_path, demo_model_dir, method):
    cfg = {"model": "demo", "method": {"type": method},
           "data": {"validation_split": 0.05, "max_length": 128},
           "training": {"max_steps": 6, "logging_steps": 2, "save_steps": 3}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "sft_tui", "train", str(tmp_path / "c.yaml"), "--name", method],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    from sft_tui.core.run.rundir import find_run

    run = find_run(method)
    assert proc.returncode == 0, proc.stdout + proc.stderr + run.log_path.read_text()[-3000:]
    events = run.events()
    loading = next(e for e in events if e["type"] == "status" and e["state"] == "loading")
    assert loading["device"] == "cuda" and loading["precision"] in ("bf16", "fp16")
    assert any(e["type"] == "memory" and e["device"].startswith("cuda") and e["peak"] > 0 for e in events)
    assert (run.adapter_dir / "adapter_config.json").exists()
