"""Whether and how a run can be resumed: the one decision the CLI, the TUI and the worker share.

A resume only ever loads a complete checkpoint (``rundir.checkpoint_problem``); partial ones are
reported and set aside. A finished run is not trained again (that would run step 41 of 40 and
overwrite the final adapter) unless the user raised ``max_steps`` or ``epochs`` in its config. A run
that died after its last step but before the final adapter was written is finished from its last
checkpoint without training.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir, checkpoint_state

# What sft-tui writes into each checkpoint: the config it was trained with and its data's identity.
RECORD = "sft_tui_run.json"
# Changes that make a resume fail or meaningless: the weights, their shapes, or what a token means.
BREAKING = ("model.path", "model.revision", "method.type", "method.quantization_bits", "method.lora_r",
            "method.lora_alpha", "method.target_modules", "method.use_dora", "method.use_rslora",
            "data.max_length", "data.packing", "data.template", "data.train_on_prompt",
            "data.multi_turn")

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
    changed: list[tuple[str, object, object]] = field(default_factory=list)  # safe changes, applied
    data_changed: str | None = None

    def change_notes(self) -> list[str]:
        out = [f"changed since {self.checkpoint.name}: {key} {old!r} → {new!r} (applied)"
               for key, old, new in self.changed]
        return out + ([self.data_changed] if self.data_changed else [])

    def notes(self) -> list[str]:
        out = [f"{path.name} is incomplete ({why}), resuming from {self.checkpoint.name}"
               for path, why in self.incomplete]
        out += self.change_notes()
        if self.finish_only:
            out.append(f"{self.checkpoint.name} is the last step of the run: saving the final model from it")
        return out


def plan_resume(run: RunDir, world_size: int | None = None) -> ResumePlan:
    """The checkpoint to resume from, or a UserError that says why not and what to do.

    ``world_size`` is the number of processes the resume runs with (the worker knows it; the CLI's
    early check does not, and passes None).
    """
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
    plan = ResumePlan(checkpoint, step, planned, finish_only, incomplete)
    record = read_record(checkpoint)
    if record:
        _guard(run, config, record, plan)
        _guard_world(run, config, record, plan, world_size)
    return plan


def flat(config_dict: dict) -> dict[str, object]:
    return {f"{section}.{key}": value for section, values in config_dict.items() if isinstance(values, dict)
            for key, value in values.items()}


def read_record(checkpoint: Path) -> dict:
    try:
        data = json.loads((checkpoint / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and isinstance(data.get("config"), dict) else {}


def data_identity(config) -> str | None:
    """A digest of the data files' paths, sizes and mtimes (cheap; changes when the data does)."""
    from sft_tui.core.data.loading import file_identity, resolve_paths

    try:
        return hashlib.sha256(json.dumps(file_identity(resolve_paths(config.data.path))).encode()).hexdigest()[:16]
    except (UserError, OSError):
        return None


def write_record(checkpoint: Path, config, data: str | None, train_rows: int | None, world_size: int = 1) -> None:
    """Written into every checkpoint as it is saved, so a resume can tell what changed since."""
    payload = {"config": config.to_dict(), "data": data, "train_rows": train_rows, "world_size": world_size}
    (checkpoint / RECORD).write_text(json.dumps(payload, default=str), encoding="utf-8")


def _guard(run: RunDir, config, record: dict, plan: ResumePlan) -> None:
    """Refuse changes that break a resume; list the safe ones; warn when the data changed."""
    before, now = flat(record["config"]), flat(config.to_dict())
    ignore = {"output.run_name", "output.runs_dir"}
    diffs = [(k, before.get(k), now.get(k)) for k in sorted(set(before) | set(now))
             if k not in ignore and before.get(k) != now.get(k)]
    breaking = [d for d in diffs if d[0] in BREAKING]
    if breaking:
        listing = "; ".join(f"{k}: {old!r} → {new!r}" for k, old, new in breaking)
        raise UserError(f"run {run.name} cannot resume from {plan.checkpoint.name}: {listing} changed since it was "
                        "saved, and the checkpoint only fits the settings it was trained with",
                        f"put those values back in {run.config_path}, or start a new run with the new settings")
    plan.changed = diffs
    if record.get("data") and record["data"] != data_identity(config):
        rows = record.get("train_rows")
        plan.data_changed = (f"warning: the data files changed since {plan.checkpoint.name}"
                             + (f" ({rows} training rows then; the count now is logged when tokenizing)" if rows else "")
                             + ": the resumed run trains on the new data")


def _guard_world(run: RunDir, config, record: dict, plan: ResumePlan, world_size: int | None) -> None:
    """A checkpoint is resumed with the world size it was saved with. DDP checkpoints hold whole
    weights and optimizer states, so another size works (with another global batch); FSDP and
    ZeRO checkpoints hold one shard per rank and cannot be re-cut here."""
    then = record.get("world_size")
    if world_size is None or not isinstance(then, int) or then == world_size:
        return
    strategy = config.training.strategy
    if strategy in ("fsdp", "deepspeed") and max(then, world_size) > 1:
        raise UserError(f"run {run.name} was saved by {then} process(es) with {strategy}, which keeps one shard per "
                        f"process, and would resume with {world_size}",
                        f"resume on {then} device(s) (set training.devices to {then} in {run.config_path}), or start a "
                        "new run")
    t = config.training
    per_process = t.batch_size * t.gradient_accumulation
    plan.changed.append((f"processes (global batch {then * per_process} → {world_size * per_process} rows)",
                         then, world_size))


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
