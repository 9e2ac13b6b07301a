"""Shared by the eval/export/chat/TUI-eval tests: one short real training run on the demo model.

The run is trained by a real worker process (``python -m sft_tui.worker``) once, then kept in the
test cache keyed by the demo model and the training config, so the suite trains at most once per
machine (and once per session on a fresh checkout). Each test module gets its own copy, because
evaluation, chat and export write into the run folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

# Measured on 2 busy CPU cores, once per demo build: ~28 s with one OMP thread (2-4 min with two). The
# answer format and the sentiment are learned first, the topic last. Held-out exact match / ROUGE-L /
# loss, base → tuned: demo v3 0% → 66%, 0.11 → 0.92; demo v4 0% → 30-34%, 0.00 → 0.81-0.84,
# 2.83 → 1.43 (400 steps: 44%). Tests assert "clearly better than the base", not a level.
TRAIN = {"max_steps": 200, "batch_size": 8, "learning_rate": 0.002, "scheduler": "constant_with_warmup",
         "warmup_ratio": 0.05, "logging_steps": 20, "save_steps": 10000, "seed": 42}
MODEL_VERSION = "1"


def _key(demo_dir: Path) -> str:
    text = json.dumps({"demo": demo_dir.name, "train": TRAIN, "v": MODEL_VERSION}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@contextlib.contextmanager
def one_torch_thread():
    """Tiny models on a shared 2-core box: one intra-op thread is 10-50× faster than two that spin
    waiting for each other while other processes hold the cores (measured: eval loss pass 0.8 s vs
    8-42 s). Restored afterwards so other test modules keep their setting."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def cached_trained_run(demo_dir: Path) -> Path:
    """Folder of a finished demo run (adapter inside), training it first if the cache lacks it."""
    from sft_tui.core.config import Config
    from sft_tui.core.paths import cache_dir

    target = cache_dir() / "eval-test-runs" / f"run-{_key(demo_dir)}"
    if (target / "adapter" / "adapter_model.safetensors").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".training-", dir=target.parent))
    try:
        config = Config()
        config.model.path = "demo"
        for key, value in TRAIN.items():
            setattr(config.training, key, value)
        config.output.run_name = target.name
        run = work / target.name
        run.mkdir()
        (run / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
        proc = subprocess.run([sys.executable, "-m", "sft_tui.worker", str(run)], env=env,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0 or not (run / "adapter" / "adapter_model.safetensors").exists():
            raise RuntimeError(f"demo training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        shutil.rmtree(run / "checkpoints", ignore_errors=True)
        try:
            os.rename(run, target)
        except OSError:
            if not (target / "adapter" / "adapter_model.safetensors").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def copy_run(cached: Path, dest_parent: Path, name: str = "demo-run") -> Path:
    """A private copy of the cached run (its config keeps pointing at the demo model)."""
    dest = dest_parent / name
    shutil.copytree(cached, dest, ignore=shutil.ignore_patterns("checkpoints", "eval", "chat", "merged"))
    (dest / "worker.pid").unlink(missing_ok=True)
    return dest
