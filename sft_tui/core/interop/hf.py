"""Hugging Face ``TrainingArguments`` names, shared by LLaMA-Factory (its YAML is TrainingArguments plus its
own dataclasses) and TRL (``SFTConfig`` subclasses TrainingArguments).

Source for every name and default below: transformers ``src/transformers/training_args.py``
(https://huggingface.co/docs/transformers/main_classes/trainer#transformers.TrainingArguments), checked
against the installed transformers 5.x; TRL's overrides from ``trl/trainer/sft_config.py``
(https://huggingface.co/docs/trl/sft_trainer#trl.SFTConfig).
"""

from __future__ import annotations

from typing import Any, Callable

from sft_tui.core.config import Config, choices

from ._common import Builder, Skip, as_bool, one_of, warmup_from_steps

# peer optimizer name -> sft-tui training.optimizer (transformers OptimizerNames; sft-tui passes its names
# to TrainingArguments(optim=...) unchanged, so the export writes them as they are).
OPTIMIZERS = {"adamw_torch": "adamw_torch", "adamw_torch_fused": "adamw_torch", "adamw_8bit": "adamw_8bit",
              "adamw_bnb_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit", "sgd": "sgd",
              "adafactor": "adafactor"}
SCHEDULERS = {name: name for name in choices("training.scheduler")}

# TrainingArguments defaults that differ from sft-tui's (a key left out of a peer's file means these).
HF_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1, "learning_rate": 5e-5,
               "num_train_epochs": 3.0, "lr_scheduler_type": "linear", "warmup_ratio": 0.0,
               "logging_steps": 500, "save_steps": 500, "weight_decay": 0.0, "max_grad_norm": 1.0, "seed": 42}

# sft-tui field <- TrainingArguments key (plain values; the rest are handled in map_training_args)
SIMPLE: list[tuple[str, str]] = [
    ("per_device_train_batch_size", "training.batch_size"),
    ("gradient_accumulation_steps", "training.gradient_accumulation"),
    ("learning_rate", "training.learning_rate"),
    ("num_train_epochs", "training.epochs"),
    ("weight_decay", "training.weight_decay"),
    ("max_grad_norm", "training.max_grad_norm"),
    ("seed", "training.seed"),
    ("logging_steps", "training.logging_steps"),
    ("save_steps", "training.save_steps"),
    ("eval_steps", "training.eval_steps"),
    ("save_total_limit", "training.save_total_limit"),
]


def optimizer(b: Builder, key: str) -> None:
    value = b.take(key)
    if value is None:
        return
    if value == "adamw_torch_fused":
        b.note("optimizer adamw_torch_fused is read as adamw_torch (the same AdamW; sft-tui does not fuse it)")
    try:
        b.set("training.optimizer", one_of(OPTIMIZERS, "optimizer")(value), key, record=value)
    except Skip as why:
        b.skip(key, value, str(why))


def map_training_args(b: Builder, k: Callable[[str], str] = lambda n: n,
                      defaults: dict[str, Any] | None = None) -> None:
    """Map the TrainingArguments keys in ``b.raw`` (named ``k(name)``) onto sft-tui's training section."""
    defaults = {**HF_DEFAULTS, **(defaults or {})}
    for name, target in SIMPLE:
        if b.has(k(name)) or name in defaults:
            b.set(target, b.take(k(name), defaults.get(name)), k(name))
    max_steps = b.take(k("max_steps"))
    if max_steps is not None and max_steps != -1:
        b.set("training.max_steps", max_steps, k("max_steps"))
    b.convert("training.scheduler", k("lr_scheduler_type"), one_of(SCHEDULERS, "scheduler"),
              defaults.get("lr_scheduler_type"))
    warmup_steps = b.raw.get(k("warmup_steps"))
    if b.has(k("warmup_ratio")) or not warmup_steps:
        b.set("training.warmup_ratio", b.take(k("warmup_ratio"), defaults.get("warmup_ratio", 0.0)), k("warmup_ratio"))
        if warmup_steps == 0:
            b.used.add(k("warmup_steps"))
    if warmup_steps:
        if b.has(k("warmup_ratio")):
            b.skip(k("warmup_steps"), warmup_steps, "warmup_ratio is set too; sft-tui keeps the ratio")
        else:
            b.convert("training.warmup_ratio", k("warmup_steps"), lambda v: warmup_from_steps(v, max_steps))
    precision(b, k("bf16"), k("fp16"))
    optimizer(b, k("optim"))
    for name, ok in (("eval_strategy", ("no", "steps", "epoch")), ("evaluation_strategy", ("no", "steps", "epoch")),
                     ("save_strategy", ("steps",)), ("logging_strategy", ("steps",))):
        value = b.take(k(name))
        if value is not None and value not in ok:
            b.skip(k(name), value, f"sft-tui always uses '{ok[0]}'" if len(ok) == 1 else NOT_SUPPORTED)


NOT_SUPPORTED = "value not supported by sft-tui"


def precision(b: Builder, bf16_key: str, fp16_key: str) -> None:
    bf16, fp16 = b.take(bf16_key), b.take(fp16_key)
    try:
        bf16 = None if bf16 is None else as_bool(bf16)
        fp16 = None if fp16 is None else as_bool(fp16)
    except Skip as why:
        b.skip(bf16_key, bf16, str(why))
        return
    if bf16 and fp16:
        b.skip(fp16_key, fp16, "bf16 and fp16 are both on; sft-tui keeps bf16")
    if bf16:
        b.set("training.precision", "bf16", bf16_key, record=True)
    elif fp16:
        b.set("training.precision", "fp16", fp16_key, record=True)
    elif bf16 is False and fp16 is False:
        b.set("training.precision", "fp32", bf16_key, record=False)


def training_args(config: Config, *, warmup_key: str = "warmup_ratio") -> dict[str, Any]:
    """sft-tui's training section as TrainingArguments keyword arguments (the order a person reads).

    ``warmup_key="warmup_steps"`` for transformers 5, where a float below 1 is the ratio and
    ``warmup_ratio`` is gone."""
    t = config.training
    out: dict[str, Any] = {"num_train_epochs": t.epochs}
    if t.max_steps:
        out["max_steps"] = t.max_steps
    out.update(per_device_train_batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation,
               learning_rate=t.learning_rate, lr_scheduler_type=t.scheduler, **{warmup_key: t.warmup_ratio},
               weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, optim=t.optimizer)
    if t.precision == "bf16":
        out["bf16"] = True
    elif t.precision == "fp16":
        out["fp16"] = True
    elif t.precision == "fp32":
        out.update(bf16=False, fp16=False)
    out.update(seed=t.seed, logging_steps=t.logging_steps, save_strategy="steps", save_steps=t.save_steps,
               save_total_limit=t.save_total_limit)
    return out
