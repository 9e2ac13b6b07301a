"""Axolotl training YAML <-> sft-tui config.

Sources for every key below (names, types and defaults): axolotl 0.19.0, ``src/axolotl/utils/schemas/``
— ``model.py`` (base_model, revision_of_model, trust_remote_code), ``peft.py`` (adapter, load_in_4bit/8bit,
lora_*, peft_use_dora/rslora), ``training.py`` (micro_batch_size, gradient_accumulation_steps,
learning_rate, optimizer, lr_scheduler, weight_decay, max_grad_norm, num_epochs, train_on_inputs),
``config.py`` (datasets, test_datasets, val_set_size, sequence_len, excess_length_strategy,
sample_packing, bf16/fp16/bfloat16/float16/float32, gradient_checkpointing, *_attention,
attn_implementation, max_steps, warmup_*, eval/save/logging steps, save_total_limit,
early_stopping_patience, seed, chat_template, default_system_message, dataset_processes/num_proc),
``datasets.py`` (SFTDataset: path, type, ds_type, data_files, split, field_messages,
message_property_mappings, field), ``enums.py`` (ChatTemplate). Reference:
https://docs.axolotl.ai/docs/config-reference.html and https://docs.axolotl.ai/docs/dataset-formats/.
Trackers (``use_wandb``, ``wandb_project``, ``use_tensorboard``…), ``deepspeed``, ``fsdp_config`` /
``fsdp_version`` and the multi-GPU launch command: see ``_distributed.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sft_tui.core.config import Config

from ._common import (format_for_export, NO_EQUIVALENT, Builder, ImportResult, Skip, as_bool, data_paths, export_path, header,
                      is_local_path, loader_for, one_of, sample_name, warmup_from_steps)
from ._distributed import (axolotl_fsdp, axolotl_trackers, axolotl_trackers_out, deepspeed_json, deepspeed_out,
                           deepspeed_name, fsdp_settings, map_deepspeed, runtime_lost, tracker_lost, train_command,
                           uses)
from .hf import OPTIMIZERS, SCHEDULERS

# Axolotl defaults that differ from sft-tui's (schemas above): a key left out means these.
DEFAULTS = {"num_epochs": 1.0, "micro_batch_size": 1, "gradient_accumulation_steps": 1, "val_set_size": 0.0,
            "lora_dropout": 0.0, "weight_decay": 0.0, "excess_length_strategy": "drop", "warmup_ratio": 0.0}

# Axolotl key -> sft-tui field, for plain values (schemas: see the module docstring).
SIMPLE: list[tuple[str, str]] = [
    ("base_model", "model.path"),                      # model.py
    ("revision_of_model", "model.revision"),           # model.py
    ("trust_remote_code", "model.trust_remote_code"),  # model.py
    ("lora_r", "method.lora_r"),                       # peft.py
    ("lora_alpha", "method.lora_alpha"),               # peft.py
    ("lora_dropout", "method.lora_dropout"),           # peft.py (default 0.0)
    ("peft_use_dora", "method.use_dora"),              # peft.py
    ("peft_use_rslora", "method.use_rslora"),          # peft.py
    ("sequence_len", "data.max_length"),               # config.py (default 512)
    ("sample_packing", "data.packing"),                # config.py
    ("train_on_inputs", "data.train_on_prompt"),       # training.py
    ("default_system_message", "data.system_prompt"),  # config.py
    ("val_set_size", "data.validation_split"),         # config.py (a share; 0 = no eval)
    ("num_epochs", "training.epochs"),                 # training.py (default 1.0)
    ("max_steps", "training.max_steps"),               # config.py
    ("learning_rate", "training.learning_rate"),       # training.py
    ("micro_batch_size", "training.batch_size"),       # training.py (default 1)
    ("gradient_accumulation_steps", "training.gradient_accumulation"),  # training.py
    ("weight_decay", "training.weight_decay"),         # training.py
    ("max_grad_norm", "training.max_grad_norm"),       # training.py
    ("seed", "training.seed"),                         # config.py
    ("logging_steps", "training.logging_steps"),       # config.py
    ("eval_steps", "training.eval_steps"),             # config.py
    ("save_steps", "training.save_steps"),             # config.py
    ("save_total_limit", "training.save_total_limit"),  # config.py
    ("early_stopping_patience", "training.early_stopping_patience"),  # config.py
]
# chat_template (enums.py ChatTemplate) -> data.template
TEMPLATES = {"tokenizer_default": "auto", "chatml": "chatml", "llama3": "llama3", "alpaca": "alpaca"}
# boolean attention switches (config.py) -> model.attn_implementation
ATTENTION = {"flash_attention": "flash_attention_2", "sdp_attention": "sdpa", "eager_attention": "eager"}
ATTN_NAMES = {"flash_attention_2": "flash_attention_2", "sdpa": "sdpa", "eager": "eager"}
# full-precision load switches (config.py: "No AMP") -> model.dtype
DTYPES = {"bfloat16": "bfloat16", "float16": "float16", "float32": "float32"}
# datasets[].type -> data.format (docs: dataset-formats/{inst_tune,conversation,pretraining}.qmd)
TYPES = {"alpaca": "alpaca", "chat_template": "messages", "sharegpt": "sharegpt", "completion": "text"}
DATASET_KEYS = {"path", "type", "ds_type", "data_files", "split", "field_messages", "message_property_mappings",
                "field", "chat_template"}


def looks_like(raw: dict[str, Any]) -> int:
    keys = {"base_model", "datasets", "adapter", "micro_batch_size", "sequence_len", "num_epochs", "lora_r",
            "load_in_4bit", "load_in_8bit", "lora_target_linear", "sample_packing", "val_set_size"}
    score = len(keys & set(raw))
    if isinstance(raw.get("datasets"), list) and any(isinstance(d, dict) and "path" in d for d in raw["datasets"]):
        score += 3
    return score


def import_axolotl(raw: dict[str, Any], base_dir: Path | None = None) -> ImportResult:
    b = Builder("axolotl", raw)
    if isinstance(raw.get("val_set_size"), (int, float)) and raw["val_set_size"] > 1:
        b.skip("val_set_size", raw["val_set_size"], "a number of rows; sft-tui holds out a share (0-0.5)")
    adapter = raw.get("adapter") is not None
    for key, target in SIMPLE:
        if b.has(key) or (key in DEFAULTS and (adapter or not target.startswith("method."))):
            b.set(target, b.take(key, DEFAULTS.get(key)), key)
    _method(b)
    _datasets(b, base_dir)
    _precision(b)
    _attention(b)
    b.convert("data.truncation", "excess_length_strategy",
              one_of({"truncate": "truncate", "drop": "drop"}, "excess_length_strategy"),
              DEFAULTS["excess_length_strategy"])
    for key in ("dataset_num_proc", "dataset_processes"):
        if b.has(key) and "data.num_proc" not in b.values:
            b.set("data.num_proc", b.take(key), key)
        elif b.has(key):
            b.skip(key, raw[key], "dataset_num_proc is set too; sft-tui keeps that one")
    b.convert("training.scheduler", "lr_scheduler", one_of(SCHEDULERS, "lr_scheduler"))
    value = b.take("optimizer")
    if value is not None:
        if value == "adamw_torch_fused":
            b.note("optimizer adamw_torch_fused is read as adamw_torch (the same AdamW; sft-tui does not fuse it)")
        b.convert("training.optimizer", "optimizer", one_of(OPTIMIZERS, "optimizer"))
    b.convert("training.gradient_checkpointing", "gradient_checkpointing", as_bool)
    if b.has("warmup_ratio") and b.has("warmup_steps"):
        b.skip("warmup_steps", raw["warmup_steps"], "warmup_ratio is set too; sft-tui keeps the ratio")
    if b.has("warmup_steps") and not b.has("warmup_ratio"):
        b.convert("training.warmup_ratio", "warmup_steps", lambda v: warmup_from_steps(v, raw.get("max_steps")))
    else:
        b.set("training.warmup_ratio", b.take("warmup_ratio", 0.0), "warmup_ratio")
    template = raw.get("chat_template")
    if template is not None and "data.template" not in b.values:
        b.convert("data.template", "chat_template", one_of(TEMPLATES, "chat_template"))
    else:
        b.used.add("chat_template")
    map_deepspeed(b, "deepspeed", base_dir)
    axolotl_fsdp(b)
    axolotl_trackers(b)
    return b.finish()


def _method(b: Builder) -> None:
    raw = b.raw
    adapter = b.take("adapter")
    four, eight = bool(b.take("load_in_4bit")), bool(b.take("load_in_8bit"))
    if adapter is None:
        b.set("method.type", "full", "adapter", record=None)
        for key in ("load_in_4bit", "load_in_8bit"):
            if raw.get(key):
                b.skip(key, True, "a quantized base needs an adapter (sft-tui: method.type qlora)")
    elif adapter in ("lora", "qlora"):
        if four or eight or adapter == "qlora":
            b.set("method.type", "qlora", "adapter", record=adapter)
            b.set("method.quantization_bits", 8 if eight and not four else 4,
                  "load_in_8bit" if eight and not four else "load_in_4bit")
            if adapter == "lora":
                b.note(f"adapter: lora on a {8 if eight and not four else 4}-bit base is sft-tui's qlora")
        else:
            b.set("method.type", "lora", "adapter")
    else:
        b.skip("adapter", adapter, f"adapter {adapter!r} is not supported by sft-tui (lora, qlora or none)")
    linear, modules = raw.get("lora_target_linear"), raw.get("lora_target_modules")
    b.used.update({"lora_target_linear", "lora_target_modules"})
    if linear:
        b.set("method.target_modules", "all-linear", "lora_target_linear", record=True)
        if modules:
            b.skip("lora_target_modules", modules, "lora_target_linear already adapts every linear layer")
    elif isinstance(modules, list):
        b.set("method.target_modules", [str(m) for m in modules], "lora_target_modules", record=modules)
    elif modules == "all-linear":
        b.set("method.target_modules", "all-linear", "lora_target_modules")
    elif modules is not None:
        b.skip("lora_target_modules", modules, "a module-name pattern; sft-tui takes a list of names or all-linear")


def _precision(b: Builder) -> None:
    bf16, fp16 = b.take("bf16"), b.take("fp16")
    if bf16 == "auto" and not fp16:
        b.set("training.precision", "auto", "bf16")
    elif bf16 is True:
        b.set("training.precision", "bf16", "bf16")
        if fp16:
            b.skip("fp16", fp16, "bf16 and fp16 are both on; sft-tui keeps bf16")
    elif fp16:
        b.set("training.precision", "fp16", "fp16", record=fp16)
    elif bf16 is False and fp16 is False:
        b.set("training.precision", "fp32", "bf16", record=False)
    elif bf16 not in (None, False, "auto"):
        b.skip("bf16", bf16, f"bf16 {bf16!r} is not supported by sft-tui (true, false or auto)")
    for key, dtype in DTYPES.items():
        if b.take(key):
            b.set("model.dtype", dtype, key, record=True)


def _attention(b: Builder) -> None:
    if b.has("attn_implementation"):
        b.convert("model.attn_implementation", "attn_implementation", one_of(ATTN_NAMES, "attn_implementation"))
    for key, impl in ATTENTION.items():
        value = b.take(key)
        if value and "model.attn_implementation" not in b.values:
            b.set("model.attn_implementation", impl, key, record=value)
        elif value:
            b.skip(key, value, "another attention setting is already mapped")


def _one_dataset(b: Builder, ds: Any, where: str, base_dir: Path | None) -> tuple[list[str], str | None, dict, str | None]:
    """(paths, format, columns, template) of one datasets[] entry; unusable parts become unmapped."""
    if not isinstance(ds, dict):
        b.skip(where, ds, "expected a mapping with path and type")
        return [], None, {}, None
    for key, value in ds.items():
        if key not in DATASET_KEYS and value is not None:
            b.skip(f"{where}.{key}", value)
    path, files, dtype = ds.get("path"), ds.get("data_files"), ds.get("type")
    if files is not None:
        files = [files] if isinstance(files, str) else list(files)
        paths = [str(f) for f in files]
    elif isinstance(path, str) and path in ("json", "csv", "parquet", "text") and ds.get("data_files") is None:
        b.skip(f"{where}.path", path, "a datasets builder name without data_files")
        return [], None, {}, None
    else:
        paths = [path] if isinstance(path, str) else []
    if not paths or not all(is_local_path(p, base_dir) for p in paths):
        b.skip(f"{where}.path", path, "a Hugging Face hub dataset id (or remote URL), not a local file; download "
               "it and point data.path at the file")
        return [], None, {}, None
    if ds.get("split") not in (None, "train"):
        b.skip(f"{where}.split", ds["split"], "sft-tui reads a file's rows, not a named split")
    columns: dict[str, str] = {}
    fmt = None
    if isinstance(dtype, str) and dtype.split(":")[0] in TYPES:
        fmt = TYPES[dtype.split(":")[0]]
        if ":" in dtype and fmt != "sharegpt":
            b.skip(f"{where}.type", dtype, f"prompt style {dtype!r} has no sft-tui equivalent; read as {fmt}")
    elif dtype is not None:
        b.skip(f"{where}.type", dtype, "dataset type not supported by sft-tui (alpaca, chat_template, sharegpt, "
               "completion)")
    mapping = ds.get("message_property_mappings") or {}
    field = ds.get("field_messages")
    if fmt == "messages":
        if mapping.get("role") == "from" and mapping.get("content") == "value":
            fmt = "sharegpt"
        elif mapping and (mapping.get("role", "role"), mapping.get("content", "content")) != ("role", "content"):
            b.skip(f"{where}.message_property_mappings", mapping, "sft-tui reads role/content or from/value items")
        if field and field != ("conversations" if fmt == "sharegpt" else "messages"):
            columns[fmt if fmt == "messages" else "conversations"] = str(field)
    elif field or mapping:
        b.skip(f"{where}.field_messages", field or mapping, "only used with type: chat_template")
    if ds.get("field"):
        if fmt == "text":
            if ds["field"] != "text":
                columns["text"] = str(ds["field"])
        else:
            b.skip(f"{where}.field", ds["field"], "only used with type: completion")
    template = ds.get("chat_template")
    if dtype == "alpaca":
        template = "alpaca"  # Axolotl's alpaca type always uses the Alpaca prompt
    return [sample_name(p) for p in paths], fmt, columns, template


def _datasets(b: Builder, base_dir: Path | None) -> None:
    raw = b.raw
    entries = b.take("datasets")
    if entries is not None and not isinstance(entries, list):
        entries = [entries]
    paths: list[str] = []
    fmt = template = None
    columns: dict[str, str] = {}
    for i, ds in enumerate(entries or []):
        got, f, c, t = _one_dataset(b, ds, f"datasets[{i}]", base_dir)
        if not got:
            continue
        if paths and (f != fmt or c != columns):
            b.skip(f"datasets[{i}]", ds, "sft-tui trains files of one format together; this one differs from "
                   "the first dataset")
            continue
        paths += got
        fmt, columns, template = f, c, template or t
    if paths:
        b.set("data.path", paths[0] if len(paths) == 1 else paths, "datasets")
        if fmt:
            b.set("data.format", fmt, "datasets", record=raw["datasets"])
        if columns:
            b.set("data.columns", columns, "datasets", record=raw["datasets"])
        if template:
            top = template == raw.get("chat_template")
            try:
                b.set("data.template", one_of(TEMPLATES, "chat_template")(template),
                      "chat_template" if top else "datasets", record=template)
            except Skip as why:
                b.skip("chat_template" if top else "datasets[0].chat_template", template, str(why))
    tests = b.take("test_datasets")
    if tests:
        got = _one_dataset(b, tests[0] if isinstance(tests, list) else tests, "test_datasets[0]", base_dir)[0]
        if len(got) == 1:
            b.set("data.validation_path", got[0], "test_datasets")
            if isinstance(tests, list) and len(tests) > 1:
                b.skip("test_datasets[1]", tests[1], "sft-tui takes one validation file")
        elif got:
            b.skip("test_datasets", tests, "sft-tui takes one validation file")


# --------------------------------------------------------------------------- export


def export_axolotl(config: Config, deepspeed_path: str | None = None) -> str:
    """The Axolotl YAML; with strategy deepspeed it names the ZeRO file ``deepspeed_path`` (default: a
    file name beside the config, whose contents the header holds — ``export_axolotl_files`` writes it)."""
    m, d, t, mo = config.method, config.data, config.training, config.model
    lost: list[str] = []
    out: dict[str, Any] = {"base_model": mo.path}
    if mo.path == "demo":
        lost.append("model 'demo' is sft-tui's built-in model: run `sft-tui demo` and put the folder it prints "
                    "in base_model")
    if mo.revision:
        out["revision_of_model"] = mo.revision
    if mo.trust_remote_code:
        out["trust_remote_code"] = True
    if mo.dtype != "auto":
        out[mo.dtype] = True
    if m.type == "qlora":
        bits = m.bits
        out.update({"load_in_8bit": bits == 8, "load_in_4bit": bits == 4, "adapter": "qlora" if bits == 4 else "lora"})
    elif m.type == "lora":
        out["adapter"] = "lora"
    if m.type != "full":
        out.update(lora_r=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout)
        if m.target_modules == "all-linear":
            out["lora_target_linear"] = True
        else:
            out["lora_target_modules"] = list(m.target_modules)
        if m.use_dora:
            out["peft_use_dora"] = True
        if m.use_rslora:
            out["peft_use_rslora"] = True
    elif m.use_dora or m.use_rslora:
        lost.append("use_dora/use_rslora (LoRA options) with method full")

    fmt = format_for_export(config, lost)
    entries = []
    for path in data_paths(config):
        entries.append(_dataset_entry(path, fmt, d.columns, lost))
    out["datasets"] = entries
    if d.validation_path:
        out["test_datasets"] = [dict(_dataset_entry(export_path(d.validation_path), fmt, d.columns, []),
                                     split="train")]
        out["val_set_size"] = 0.0
    else:
        out["val_set_size"] = d.validation_split
    if fmt == "auto":
        lost.append("data.format auto: Axolotl needs the dataset type; written as chat_template (messages) — "
                    "change datasets[].type to alpaca, completion or sharegpt to match your file")
    if fmt == "alpaca":
        if d.template not in ("alpaca", "auto"):
            lost.append(f"data.template {d.template}: Axolotl's alpaca type always uses the Alpaca prompt")
        if d.columns:
            lost.append(f"data.columns {d.columns}: rename the columns in the file to instruction/input/output")
    elif fmt in ("messages", "sharegpt", "auto"):
        out["chat_template"] = {v: k for k, v in TEMPLATES.items()}[d.template]
    elif fmt == "prompt_completion":
        lost.append("data.format prompt_completion: Axolotl has no prompt/completion type; written as "
                    "input_output — convert the rows to its segments format, or to alpaca")
    if d.system_prompt:
        out["default_system_message"] = d.system_prompt
    out.update(sequence_len=d.max_length, excess_length_strategy=d.truncation, sample_packing=d.packing,
               train_on_inputs=d.train_on_prompt)
    if d.num_proc:
        out["dataset_num_proc"] = d.num_proc
    if d.skip_bad_rows:
        lost.append("data.skip_bad_rows: Axolotl stops on a malformed row")

    out["num_epochs"] = t.epochs
    if t.max_steps:
        out["max_steps"] = t.max_steps
    fsdp = uses(config, "fsdp")
    out.update(learning_rate=t.learning_rate, lr_scheduler=t.scheduler, warmup_ratio=t.warmup_ratio,
               micro_batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation,
               # under FSDP the checkpointing is FSDP's own (fsdp_config.activation_checkpointing)
               gradient_checkpointing=t.gradient_checkpointing and not fsdp, optimizer=t.optimizer)
    out.update({"auto": {"bf16": "auto"}, "bf16": {"bf16": True}, "fp16": {"bf16": False, "fp16": True},
                "fp32": {"bf16": False, "fp16": False}}[t.precision])
    if mo.attn_implementation != "auto":
        out[{v: k for k, v in ATTENTION.items()}[mo.attn_implementation]] = True
    out.update(weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, seed=t.seed, logging_steps=t.logging_steps)
    if t.eval_steps:
        out["eval_steps"] = t.eval_steps
    elif d.validation_split > 0 or d.validation_path:
        out["evals_per_epoch"] = 1
    out.update(save_steps=t.save_steps, save_total_limit=t.save_total_limit)
    if t.early_stopping_patience:
        out["early_stopping_patience"] = t.early_stopping_patience
    out["output_dir"] = f"./outputs/{config.output.run_name or 'sft-tui'}"
    if config.output.runs_dir:
        lost.append(f"output.runs_dir {config.output.runs_dir}: Axolotl writes to output_dir")
    out.update(axolotl_trackers_out(config))
    lost += tracker_lost(config, "Axolotl")
    command = train_command(config, "axolotl", lost)
    ds_head = deepspeed_out(config, out, deepspeed_path)
    if fsdp:
        settings = fsdp_settings(config)
        out["fsdp_version"] = settings.pop("version")
        out["fsdp_config"] = {"offload_params": False, **settings}
        if t.optimizer == "adamw_8bit":
            lost.append("training.optimizer adamw_8bit: Axolotl refuses it with FSDP2 (it suggests adamw_torch_8bit)")
    lost += runtime_lost(config, "Axolotl")
    text = yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=1000)
    return header(lost, "Axolotl config written by `sft-tui config export --to axolotl`. "
                        f"Train with: {command}") + ds_head + "\n" + text


def export_axolotl_files(config: Config, out_path: Path) -> dict[Path, str]:
    """The YAML at ``out_path`` and, with strategy deepspeed, the ZeRO config beside it."""
    if not uses(config, "deepspeed"):
        return {out_path: export_axolotl(config)}
    ds_path = out_path.parent.resolve() / deepspeed_name(config)
    return {out_path: export_axolotl(config, deepspeed_path=str(ds_path)),
            ds_path: json.dumps(deepspeed_json(config), indent=2) + "\n"}


def _dataset_entry(path: str, fmt: str, columns: dict[str, str], lost: list[str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"path": path}
    loader = loader_for(path)
    if loader:
        entry["ds_type"] = loader
    if fmt == "alpaca":
        entry["type"] = "alpaca"
    elif fmt == "text":
        entry["type"] = "completion"
        if columns.get("text"):
            entry["field"] = columns["text"]
    elif fmt == "sharegpt":
        entry.update(type="chat_template", field_messages=columns.get("conversations", "conversations"),
                     message_property_mappings={"role": "from", "content": "value"})
    elif fmt == "prompt_completion":
        entry["type"] = "input_output"
    else:
        entry["type"] = "chat_template"
        if columns.get("messages"):
            entry["field_messages"] = columns["messages"]
    extra = {k: v for k, v in columns.items() if k not in ("text", "messages", "conversations")}
    if extra and fmt != "alpaca" and lost is not None and not any("data.columns" in x for x in lost):
        lost.append(f"data.columns {extra}: Axolotl has no column renames for this type")
    return entry


__all__ = ["import_axolotl", "export_axolotl", "export_axolotl_files", "looks_like", "NO_EQUIVALENT", "Skip"]
