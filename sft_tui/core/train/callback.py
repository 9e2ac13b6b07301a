"""The one TrainerCallback: metrics out as flat events; commands in through the worker's watcher.

Only the worker imports this module (it imports transformers).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from sft_tui.core.errors import NanLossError
from sft_tui.core.train import faults
from sft_tui.core.run.events import EventWriter
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.train.control import ControlWatcher, StopHandle


def memory_snapshot(device: str) -> dict[str, Any]:
    """The worker's memory now: CUDA allocator figures on a GPU, resident memory on CPU."""
    if device == "cuda":
        import torch

        return {
            "device": "cuda:0",
            "allocated": torch.cuda.memory_allocated(),
            "reserved": torch.cuda.memory_reserved(),
            "peak": torch.cuda.max_memory_reserved(),
        }
    import psutil

    rss = psutil.Process().memory_info().rss
    return {"device": "cpu", "allocated": rss, "reserved": rss, "peak": rss}


def _mfu(tps: float | None, flops_token: float | None, peak: float | None) -> float | None:
    from sft_tui.core.train.fastpaths import mfu

    value = mfu(tps, flops_token, peak)
    return round(value, 4) if value is not None else None


class EventCallback(TrainerCallback):
    """Writes train/eval/checkpoint/memory events and turns control commands into trainer actions."""

    def __init__(self, run: RunDir, writer: EventWriter, device: str, stop: StopHandle,
                 watcher: ControlWatcher | None = None) -> None:
        self.run, self.writer, self.device, self.stop = run, writer, device, stop
        # Without a worker's watcher (tests, scripts), the callback reads control.json itself.
        self.watcher = watcher or ControlWatcher(run, writer, stop, run.control_seq())
        self.watcher.training = True
        self.record: tuple | None = None  # (config, data identity, train rows) written into each checkpoint
        self.last_log_time = time.monotonic()
        self.last_tokens = 0
        self.start_time = time.monotonic()
        # MFU = tokens/s × model FLOPs per token / the GPU's peak bf16 FLOP/s (set by the recipe; None on CPU)
        self.flops_per_token: float | None = None
        self.peak_tflops: float | None = None
        self._evaluating = False
        self._eval_batches = 0
        self._eval_progress_at = 0.0

    @property
    def stop_requested(self) -> bool:
        return self.stop.requested

    # -- control ---------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        if not self.watcher._thread.is_alive():
            self.watcher.poll()
        if self.watcher.save_pending.is_set():
            self.watcher.save_pending.clear()
            control.should_save = True
        if self.stop.requested:
            control.should_save = True
            control.should_training_stop = True
        return control

    # -- metrics ---------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self.writer.write("log", level="info", msg=f"training for {state.max_steps} steps on {self.device}")
        self.start_time = self.last_log_time = time.monotonic()
        self.last_tokens = state.num_input_tokens_seen or 0

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = dict(logs or {})
        now = time.monotonic()
        if "loss" in logs:
            loss = logs["loss"]
            if faults.nan_at(state.global_step):
                loss = math.nan
            if loss is None or (isinstance(loss, float) and (math.isnan(loss) or math.isinf(loss))):
                raise NanLossError(f"the training loss became NaN/inf at step {state.global_step}")
            tokens = state.num_input_tokens_seen or 0
            elapsed = max(now - self.last_log_time, 1e-6)
            tps = (tokens - self.last_tokens) / elapsed if tokens >= self.last_tokens else None
            self.last_tokens, self.last_log_time = tokens, now
            self.writer.write(
                "train", step=state.global_step, max_steps=state.max_steps, epoch=state.epoch,
                loss=loss, lr=logs.get("learning_rate"), grad_norm=logs.get("grad_norm"),
                tokens_per_s=tps, tokens_seen=tokens, elapsed_s=now - self.start_time,
                mfu=_mfu(tps, self.flops_per_token, self.peak_tflops),
            )
            self.writer.write("memory", **memory_snapshot(self.device))
        if "eval_loss" in logs:
            ev = {k: v for k, v in logs.items() if k.startswith("eval_")}
            if ev.get("eval_loss") is not None:
                ev["eval_perplexity"] = math.exp(min(ev["eval_loss"], 50))
            self.writer.write("eval", step=state.global_step, epoch=state.epoch, **ev)

    # -- evaluation: a status of its own, so the monitor pauses the ETA instead of freezing it ---------
    def on_prediction_step(self, args, state, control, **kwargs):
        if not self._evaluating:
            self._evaluating, self._eval_batches = True, 0
            self._eval_progress_at = 0.0
            self.writer.status("evaluating", step=state.global_step)
        self._eval_batches += 1
        loader = kwargs.get("eval_dataloader")
        now = time.monotonic()
        if loader is not None and now - self._eval_progress_at >= 1.0:
            try:
                total = len(loader)
            except TypeError:
                total = 0
            if total:
                self._eval_progress_at = now
                self.writer.write("progress", stage="evaluating", fraction=min(self._eval_batches / total, 1.0))

    def on_evaluate(self, args, state, control, **kwargs):
        if self._evaluating:
            self._evaluating = False
            if not control.should_training_stop and state.global_step < state.max_steps:
                self.writer.status("training", step=state.global_step)

    def on_save(self, args, state, control, **kwargs):
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.record is not None and path.is_dir() and state.is_world_process_zero:
            from sft_tui.core.train.resume import write_record

            write_record(path, *self.record)
        self.writer.write("checkpoint", step=state.global_step, path=str(path))
