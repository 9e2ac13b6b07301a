"""Whether and how a run can be resumed: the one decision the CLI, the TUI and the worker share.

A resume only ever loads a complete checkpoint (``rundir.checkpoint_problem``); partial ones are
reported and set aside. A finished run is not trained again (that would run step 41 of 40 and
overwrite the final adapter) unless the user raised ``max_steps`` or ``epochs`` in its config. A run
that died after its last step but before the final adapter was written is finished from its last
checkpoint without training.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir, checkpoint_state

# What a checkpoint holds of the model itself (the rest is optimizer/scheduler/trainer state).
WEIGHT_FILES = ("adapter_model.safetensors", "adapter_config.json", "model.safetensors",
                "model.safetensors.index.json", "config.json", "generation_config.json")


@dataclass
class ResumePlan:
    checkpoint: Path
    step: int
    planned_steps: int | None
    finish_only: bool = False  # training reached its end: only the final save is missing
    incomplete: list[tuple[Path, str]] = field(default_factory=list)

    def notes(self) -> list[str]:
        out = [f"{path.name} is incomplete ({why}), resuming from {self.checkpoint.name}"
               for path, why in self.incomplete]
        if self.finish_only:
            out.append(f"{self.checkpoint.name} is the last step of the run: saving the final model from it")
        return out


def plan_resume(run: RunDir) -> ResumePlan:
    """The checkpoint to resume from, or a UserError that says why not and what to do."""
    config = run.load_config()
    incomplete = run.incomplete_checkpoints()
    checkpoint = run.latest_checkpoint()
    if checkpoint is None:
        why = "; ".join(f"{p.name} is incomplete ({w})" for p, w in incomplete)
        raise UserError(f"run {run.name} has no complete checkpoint to resume from" + (f": {why}" if why else ""),
                        "start it again with `sft-tui train CONFIG` (lower training.save_steps to "
                        "checkpoint more often)")
    state = checkpoint_state(checkpoint)
    step = int(state.get("global_step") or 0)
    planned = state.get("max_steps") if isinstance(state.get("max_steps"), int) else None
    planned_epochs = state.get("num_train_epochs")
    t = config.training
    raised = bool((t.max_steps and planned and t.max_steps > planned)
                  or (not t.max_steps and isinstance(planned_epochs, (int, float)) and t.epochs > planned_epochs))
    status = run.status()
    if status.state == "done" and not raised:
        raise UserError(
            f"run {run.name} is finished (done at step {status.step}" + (f"/{planned}" if planned else "") + ")",
            f"to train it longer, raise training.max_steps or training.epochs in {run.config_path}, then resume")
    finish_only = bool(planned and step >= planned and not raised)
    return ResumePlan(checkpoint, step, planned, finish_only, incomplete)


def finish_from_checkpoint(checkpoint: Path, tokenizer, target: Path) -> None:
    """Write the final model folder from the last checkpoint's weights (no training needed)."""
    with staged_folder(target) as tmp:
        for name in WEIGHT_FILES:
            if (checkpoint / name).is_file():
                shutil.copy2(checkpoint / name, tmp / name)
        for shard in checkpoint.glob("model-*.safetensors"):
            shutil.copy2(shard, tmp / shard.name)
        tokenizer.save_pretrained(str(tmp))


class staged_folder:
    """Build a folder under a temporary name beside ``target`` and swap it in whole on success.

    A kill or a full disk while writing leaves the old folder (or none) plus a hidden temp folder,
    never a half-written ``target``.
    """

    def __init__(self, target: Path) -> None:
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.", dir=self.target.parent))
        return self.tmp

    def __exit__(self, kind, exc, tb) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        old = None
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
        os.replace(self.tmp, self.target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
