"""Synthetic run directories with realistic, deterministic events — for tests, snapshots and benches.

``write_run`` lays out a run folder exactly as the worker would (config.yaml, events.jsonl) with a
smooth decaying loss, evals, checkpoints and memory samples at fixed times, so screens drawn from
it look the same on every machine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterator

from sft_tui.core.config import Config, save_config
from sft_tui.core.run.rundir import RunDir

T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC: fixed so snapshots never show today's date


def train_event(step: int, max_steps: int, t: float, *, loss0: float = 3.2, floor: float = 0.9,
                tokens_per_step: int = 2048, step_s: float = 0.5, seed: int = 0) -> dict[str, Any]:
    wobble = 0.08 * math.sin(step * 1.7 + seed) + 0.05 * math.sin(step * 0.31 + 2 * seed)
    loss = floor + (loss0 - floor) * math.exp(-step / max(max_steps / 4, 1)) + wobble
    warm = max(max_steps // 20, 1)
    lr = 2e-4 * (step / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(max_steps - warm, 1))))
    return {"time": t, "type": "train", "step": step, "max_steps": max_steps, "epoch": step / max_steps * 3,
            "loss": round(loss, 6), "lr": lr, "grad_norm": round(1.5 + 0.4 * math.sin(step * 0.9 + seed), 4),
            "tokens_per_s": tokens_per_step / step_s, "tokens_seen": tokens_per_step * step,
            "elapsed_s": step * step_s}


def events(steps: int, max_steps: int | None = None, *, final: str | None = "done", eval_every: int = 0,
           save_every: int = 0, memory: bool = True, t0: float = T0, step_s: float = 0.5, seed: int = 0,
           run_path: str = "RUN") -> Iterator[dict[str, Any]]:
    """The event stream of a run that trained ``steps`` steps (of ``max_steps``) and then ``final``."""
    max_steps = max_steps or steps
    t = t0
    yield {"time": t, "type": "status", "state": "starting"}
    yield {"time": t + 1, "type": "status", "state": "loading", "device": "cpu", "precision": "fp32"}
    yield {"time": t + 2, "type": "status", "state": "tokenizing"}
    yield {"time": t + 3, "type": "status", "state": "training", "resumed_from": None}
    yield {"time": t + 3, "type": "log", "level": "info", "msg": f"training for {max_steps} steps on cpu"}
    t = t + 3
    for step in range(1, steps + 1):
        t = t0 + 3 + step * step_s
        ev = train_event(step, max_steps, t, step_s=step_s, seed=seed)
        yield ev
        if memory:
            yield {"time": t, "type": "memory", "device": "cpu", "allocated": 600 << 20, "reserved": 600 << 20,
                   "peak": 640 << 20}
        if eval_every and step % eval_every == 0:
            yield {"time": t + 0.1, "type": "eval", "step": step, "epoch": ev["epoch"],
                   "eval_loss": round(ev["loss"] + 0.15, 6), "eval_perplexity": math.exp(ev["loss"] + 0.15)}
        if save_every and step % save_every == 0:
            yield {"time": t + 0.2, "type": "checkpoint", "step": step,
                   "path": f"{run_path}/checkpoints/checkpoint-{step}"}
    if final:
        yield {"time": t + 1, "type": "status", "state": "saving"}
        yield {"time": t + 2, "type": "saved", "path": f"{run_path}/adapter", "method": "lora"}
        yield {"time": t + 2, "type": "status", "state": final}


def write_run(root: str | Path, name: str, steps: int = 60, max_steps: int | None = None, *,
              final: str | None = "done", pid: int | None = None, model: str = "demo", method: str = "lora",
              **kwargs: Any) -> RunDir:
    """A run folder whose events.jsonl holds ``events(...)``; ``pid`` is written as worker.pid."""
    run = RunDir(Path(root) / name)
    run.path.mkdir(parents=True, exist_ok=True)
    config = Config()
    config.model.path = model
    config.method.type = method  # type: ignore[assignment]
    config.output.run_name = name
    config.output.runs_dir = str(Path(root))
    save_config(config, run.config_path, comments=False)
    with open(run.events_path, "w") as fh:
        kwargs.setdefault("run_path", str(run.path))  # snapshots pass a fixed one: no tmp paths on screen
        for ev in events(steps, max_steps, final=final, **kwargs):
            fh.write(json.dumps(ev) + "\n")
    if pid is not None:
        run.pid_path.write_text(str(pid))
    return run


def append(run: RunDir, *evs: dict[str, Any]) -> None:
    with open(run.events_path, "a") as fh:
        for ev in evs:
            fh.write(json.dumps(ev) + "\n")
