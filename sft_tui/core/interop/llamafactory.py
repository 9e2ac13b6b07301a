"""LLaMA-Factory training YAML (+ its ``dataset_info.json``) <-> sft-tui config.

Sources (llamafactory 0.9.5 sdist, ``src/llamafactory/``): ``hparams/model_args.py`` (model_name_or_path,
model_revision, trust_remote_code, flash_attn, disable_gradient_checkpointing, quantization_bit/method/type),
``hparams/finetuning_args.py`` (stage, finetuning_type, lora_rank/alpha/dropout/target, use_dora, use_rslora,
early_stopping_steps), ``hparams/data_args.py`` (dataset, eval_dataset, dataset_dir, template, cutoff_len,
train_on_prompt, val_size, packing, default_system, preprocessing_num_workers), ``data/parser.py``
(dataset_info.json entries: file_name, formatting, columns, tags, hf_hub_url…), ``extras/constants.py``
(AttentionFunction), the rest is Hugging Face TrainingArguments (see ``hf.py``). Examples followed:
``examples/train_lora/qwen3_lora_sft.yaml``, ``examples/train_full/qwen3_full_sft.yaml``; docs:
https://llamafactory.readthedocs.io/en/latest/ and ``data/README.md`` (dataset_info.json format).
``report_to``, ``deepspeed``, ``fsdp`` / ``fsdp_config`` and the multi-GPU launch command: see
``_distributed.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from sft_tui.core.config import Config

from ._common import (detected_format, format_for_export, Builder, ImportResult, Skip, as_bool, data_paths, export_path, fail, header, is_local_path,
                      one_of, sample_name)
from ._distributed import (deepspeed_json, deepspeed_name, deepspeed_out, map_deepspeed, map_hf_fsdp,
                           map_report_to, other_trackers, report_to_out, runtime_lost, tracker_lost, train_command,
                           uses)
from .hf import map_training_args, training_args

DATA_INFO = "dataset_info.json"
TRAIN_NAME, EVAL_NAME = "sft_tui_train", "sft_tui_eval"
# flash_attn (extras/constants.py AttentionFunction) -> model.attn_implementation
ATTENTION = {"auto": "auto", "disabled": "eager", "sdpa": "sdpa", "fa2": "flash_attention_2"}
# template names that mean the same prompt in both tools (data/template.py register_template names)
TEMPLATES = {"alpaca": "alpaca", "chatml": "chatml", "llama3": "llama3"}
# dataset_info.json alpaca columns -> sft-tui alpaca field names (data/parser.py DatasetAttr defaults)
ALPACA_COLUMNS = {"prompt": ("instruction", "instruction"), "query": ("input", "input"),
                  "response": ("output", "output"), "system": ("system", None), "history": ("history", None)}
OPENAI_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
               "system_tag": "system"}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
                 "system_tag": "system"}
# sft-tui field <- LLaMA-Factory key (besides the TrainingArguments in hf.py)
SIMPLE: list[tuple[str, str, Any]] = [  # (key, field, LLaMA-Factory default)
    ("model_name_or_path", "model.path", None),          # model_args.py
    ("trust_remote_code", "model.trust_remote_code", None),  # model_args.py
    ("cutoff_len", "data.max_length", 2048),              # data_args.py
    ("train_on_prompt", "data.train_on_prompt", None),   # data_args.py
    ("default_system", "data.system_prompt", None),      # data_args.py
    ("preprocessing_num_workers", "data.num_proc", None),  # data_args.py
    ("val_size", "data.validation_split", 0.0),          # data_args.py
    ("early_stopping_steps", "training.early_stopping_patience", None),  # finetuning_args.py
]


def looks_like(raw: dict[str, Any]) -> int:
    keys = {"model_name_or_path", "stage", "finetuning_type", "dataset", "template", "lora_rank", "lora_target",
            "cutoff_len", "quantization_bit", "dataset_dir", "per_device_train_batch_size", "do_train"}
    return len(keys & set(raw)) + (2 if raw.get("stage") in ("sft", "pt", "rm", "ppo", "dpo", "kto") else 0)


def import_llamafactory(raw: dict[str, Any], base_dir: Path | None = None) -> ImportResult:
    b = Builder("llamafactory", raw)
    if isinstance(raw.get("val_size"), (int, float)) and raw["val_size"] > 1:
        b.skip("val_size", raw["val_size"], "a number of rows; sft-tui holds out a share (0-0.5)")
    for key, target, default in SIMPLE:
        if b.has(key) or default is not None:
            b.set(target, b.take(key, default), key)
    revision = b.take("model_revision")
    if revision not in (None, "main"):
        b.set("model.revision", revision, "model_revision")
    b.convert("model.attn_implementation", "flash_attn", one_of(ATTENTION, "flash_attn"))
    stage = b.take("stage", "sft")
    if stage != "sft":
        b.skip("stage", stage, "sft-tui does supervised fine-tuning (stage: sft) only")
        b.note(f"stage {stage!r} is not supervised fine-tuning: the imported config trains SFT on the same data")
    if raw.get("do_train") is True:
        b.used.add("do_train")
    _method(b)
    _datasets(b, base_dir)
    template = b.take("template")
    if template is not None:
        if template in TEMPLATES:
            b.set("data.template", TEMPLATES[template], "template")
        else:
            b.skip("template", template, "a LLaMA-Factory prompt template; sft-tui uses the tokenizer's own chat "
                   "template (data.template: auto) or one of alpaca, chatml, llama3")
    b.convert("data.packing", "packing", as_bool)
    map_training_args(b)
    gc = b.take("disable_gradient_checkpointing", False)
    try:
        b.set("training.gradient_checkpointing", not as_bool(gc), "disable_gradient_checkpointing", record=gc)
    except Skip as why:
        b.skip("disable_gradient_checkpointing", gc, str(why))
    if raw.get("per_device_eval_batch_size") == b.values.get("training.batch_size"):
        b.used.add("per_device_eval_batch_size")
    if raw.get("load_best_model_at_end") and "training.early_stopping_patience" in b.values:
        b.used.update({"load_best_model_at_end", "metric_for_best_model"})
    map_report_to(b, "report_to")
    other_trackers(b)
    map_deepspeed(b, "deepspeed", base_dir)
    map_hf_fsdp(b, "fsdp", "fsdp_config", base_dir)
    return b.finish()


def _method(b: Builder) -> None:
    raw = b.raw
    kind = b.take("finetuning_type", "lora")
    bits, qmethod = b.take("quantization_bit"), b.take("quantization_method", "bnb")
    if kind not in ("lora", "full"):
        b.skip("finetuning_type", kind, "sft-tui trains full or lora (freeze and oft have no equivalent)")
        return
    if bits is not None:
        if kind != "lora":
            b.skip("quantization_bit", bits, "quantization needs LoRA (sft-tui: method.type qlora)")
        elif qmethod != "bnb":
            b.skip("quantization_method", qmethod, "sft-tui quantizes with bitsandbytes (bnb) only")
            b.skip("quantization_bit", bits, "needs quantization_method: bnb")
        elif b.set("method.quantization_bits", bits, "quantization_bit"):
            b.set("method.type", "qlora", "finetuning_type", record=kind)
            kind = "qlora"
    if raw.get("quantization_type") in (None, "nf4"):
        b.used.add("quantization_type")
    if kind == "lora" or bits is None:
        b.set("method.type", kind, "finetuning_type")
    if kind == "full":
        for key in ("lora_rank", "lora_alpha", "lora_dropout", "lora_target", "use_dora", "use_rslora"):
            if b.has(key):
                b.skip(key, raw[key], "a LoRA setting, and finetuning_type is full")
        return
    rank = b.take("lora_rank", 8)
    b.set("method.lora_r", rank, "lora_rank")
    b.set("method.lora_alpha", b.take("lora_alpha", rank * 2 if isinstance(rank, int) else None), "lora_alpha")
    b.set("method.lora_dropout", b.take("lora_dropout", 0.0), "lora_dropout")
    target = b.take("lora_target", "all")
    names = [t.strip() for t in str(target).split(",") if t.strip()] if isinstance(target, str) else target
    b.set("method.target_modules", "all-linear" if names == ["all"] else names, "lora_target", record=target)
    for key in ("use_dora", "use_rslora"):
        if b.has(key):
            b.convert(f"method.{key}", key, as_bool)


def _find_info(dataset_dir: str, base_dir: Path | None) -> tuple[Path | None, str]:
    where = Path(dataset_dir).expanduser()
    candidates = [where] if where.is_absolute() else ([base_dir / where] if base_dir else []) + [Path.cwd() / where]
    for folder in candidates:
        if (folder / DATA_INFO).is_file():
            return folder.resolve(), ""
    return None, f"{DATA_INFO} was not found in dataset_dir {dataset_dir!r}"


def _entry(b: Builder, name: str, info: dict[str, Any], folder: Path) -> tuple[str, str, dict[str, str]] | None:
    key = f"dataset_info.{name}"
    entry = info.get(name)
    if not isinstance(entry, dict):
        b.skip(f"dataset: {name}", name, f"not defined in {folder / DATA_INFO}")
        return None
    for hub in ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name"):
        if hub in entry:
            b.skip(f"dataset: {name}", entry[hub], f"a hub dataset ({hub} in {DATA_INFO}), not a local file; "
                   "download it and point data.path at the file")
            return None
    if "file_name" not in entry:
        b.skip(f"dataset: {name}", name, f"{DATA_INFO} gives no file_name for it")
        return None
    for extra in sorted(set(entry) - {"file_name", "formatting", "columns", "tags", "split"}):
        b.skip(f"{key}.{extra}", entry[extra])
    file_name = Path(str(entry["file_name"])).expanduser()
    path = str(file_name if file_name.is_absolute() else folder / file_name)
    formatting = entry.get("formatting", "alpaca")
    cols, tags = dict(entry.get("columns") or {}), dict(entry.get("tags") or {})
    columns: dict[str, str] = {}
    if formatting == "alpaca":
        fmt = "alpaca"
        for lf_name, column in cols.items():
            if lf_name in ALPACA_COLUMNS:
                ours, default = ALPACA_COLUMNS[lf_name]
                if column != default:
                    columns[ours] = str(column)
            else:
                b.skip(f"{key}.columns.{lf_name}", column)
    elif formatting in ("sharegpt", "openai"):
        role_tag = tags.get("role_tag", "role" if formatting == "openai" else "from")
        fmt = "messages" if role_tag == "role" else "sharegpt"
        expected = OPENAI_TAGS if fmt == "messages" else SHAREGPT_TAGS
        for tag, value in tags.items():
            if tag in expected and expected[tag] != value:
                b.skip(f"{key}.tags.{tag}", value, "sft-tui reads role/content or from/value items with the "
                       "usual role names")
        canonical = "messages" if fmt == "messages" else "conversations"
        column = str(cols.get("messages", "messages" if formatting == "openai" else "conversations"))
        if column != canonical:
            columns[canonical] = column
        for lf_name, value in cols.items():
            if lf_name == "system":
                columns["system"] = str(value)
            elif lf_name != "messages":
                b.skip(f"{key}.columns.{lf_name}", value)
    else:
        b.skip(f"{key}.formatting", formatting, "sft-tui reads alpaca, sharegpt and openai formats")
        return None
    if entry.get("split") not in (None, "train"):
        b.skip(f"{key}.split", entry["split"], "sft-tui reads a file's rows, not a named split")
    return sample_name(path), fmt, columns


def _datasets(b: Builder, base_dir: Path | None) -> None:
    raw = b.raw
    names = [n.strip() for n in str(b.take("dataset", "")).split(",") if n.strip()]
    eval_names = [n.strip() for n in str(b.take("eval_dataset", "")).split(",") if n.strip()]
    dataset_dir = str(b.take("dataset_dir", "data"))
    if not names and not eval_names:
        return
    folder, why = _find_info(dataset_dir, base_dir)
    info: dict[str, Any] = {}
    if folder is not None:
        try:
            info = json.loads((folder / DATA_INFO).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            folder, why = None, f"{folder / DATA_INFO} could not be read: {exc}"
        if not isinstance(info, dict):
            folder, why = None, f"{DATA_INFO} is not a mapping of dataset names"
    if folder is None:
        for name in names + eval_names:
            reason = (f"a local file (LLaMA-Factory reads it from dataset_dir), but {why}" if is_local_path(name, base_dir)
                      and name.lower().endswith((".json", ".jsonl", ".csv", ".parquet")) else
                      f"a LLaMA-Factory dataset name (registered in dataset_dir/{DATA_INFO}), not a local file; {why}")
            b.skip("dataset" if name in names else "eval_dataset", raw.get("dataset") if name in names
                   else raw.get("eval_dataset"), reason)
        return
    paths: list[str] = []
    fmt, columns = None, {}
    for name in names:
        got = _entry(b, name, info, folder)
        if got is None:
            continue
        if paths and (got[1], got[2]) != (fmt, columns):
            b.skip(f"dataset: {name}", name, "sft-tui trains files of one format together; this one differs")
            continue
        paths.append(got[0])
        fmt, columns = got[1], got[2]
    if paths:
        b.set("data.path", paths[0] if len(paths) == 1 else paths, "dataset", record=raw.get("dataset"))
        b.set("data.format", fmt, "dataset", record=raw.get("dataset"))
        if columns:
            b.set("data.columns", columns, "dataset", record=raw.get("dataset"))
    if eval_names:
        got = _entry(b, eval_names[0], info, folder)
        if got is not None:
            b.set("data.validation_path", got[0], "eval_dataset")
        for extra in eval_names[1:]:
            b.skip(f"eval_dataset: {extra}", extra, "sft-tui takes one validation file")


# --------------------------------------------------------------------------- export


def dataset_info(config: Config) -> dict[str, Any]:
    """The ``dataset_info.json`` entries that register sft-tui's data files with LLaMA-Factory."""
    d = config.data
    fmt = detected_format(config) or "auto"
    entry: dict[str, Any] = {}
    if fmt in ("alpaca", "prompt_completion", "auto", "text"):
        entry["formatting"] = "alpaca"
        cols = {"prompt": d.columns.get("instruction", "instruction"), "query": d.columns.get("input", "input"),
                "response": d.columns.get("output", "output")}
        if fmt == "prompt_completion":
            cols = {"prompt": d.columns.get("prompt", "prompt"), "response": d.columns.get("completion", "completion")}
        if "system" in d.columns:
            cols["system"] = d.columns["system"]
        if "history" in d.columns:
            cols["history"] = d.columns["history"]
        entry["columns"] = cols
    elif fmt == "messages":
        entry.update(formatting="sharegpt", columns={"messages": d.columns.get("messages", "messages")},
                     tags=dict(OPENAI_TAGS))
    else:
        entry.update(formatting="sharegpt", columns={"messages": d.columns.get("conversations", "conversations")},
                     tags=dict(SHAREGPT_TAGS))
    if "system" in d.columns and fmt in ("messages", "sharegpt"):
        entry["columns"]["system"] = d.columns["system"]
    out: dict[str, Any] = {}
    paths = data_paths(config)
    for i, path in enumerate(paths):
        out[TRAIN_NAME if len(paths) == 1 else f"{TRAIN_NAME}_{i}"] = {"file_name": path, **entry}
    if d.validation_path:
        out[EVAL_NAME] = {"file_name": export_path(d.validation_path), **entry}
    return out


def export_llamafactory(config: Config, dataset_dir: str = ".", deepspeed_path: str | None = None) -> str:
    """The LLaMA-Factory YAML; with strategy deepspeed it names the ZeRO file ``deepspeed_path`` (default:
    a file name whose contents the header holds — ``export_llamafactory_files`` writes it)."""
    m, d, t, mo = config.method, config.data, config.training, config.model
    lost: list[str] = []
    out: dict[str, Any] = {"model_name_or_path": mo.path}
    if mo.path == "demo":
        lost.append("model 'demo' is sft-tui's built-in model: run `sft-tui demo` and put the folder it prints "
                    "in model_name_or_path")
    if mo.revision:
        out["model_revision"] = mo.revision
    if mo.trust_remote_code:
        out["trust_remote_code"] = True
    if mo.attn_implementation != "auto":
        out["flash_attn"] = {v: k for k, v in ATTENTION.items()}[mo.attn_implementation]
    if mo.dtype != "auto":
        lost.append(f"model.dtype {mo.dtype}: LLaMA-Factory picks the weight dtype from bf16/fp16")
    if m.type == "qlora":
        out.update(quantization_bit=m.bits, quantization_method="bnb")
    out.update(stage="sft", do_train=True, finetuning_type="full" if m.type == "full" else "lora")
    if m.type != "full":
        out.update(lora_rank=m.lora_r, lora_alpha=m.lora_alpha, lora_dropout=m.lora_dropout,
                   lora_target="all" if m.target_modules == "all-linear" else ",".join(m.target_modules))
        if m.use_dora:
            out["use_dora"] = True
        if m.use_rslora:
            out["use_rslora"] = True
    elif m.use_dora or m.use_rslora:
        lost.append("use_dora/use_rslora (LoRA options) with method full")
    fmt = format_for_export(config, lost)
    names = list(dataset_info(config))
    out["dataset"] = ",".join(n for n in names if n != EVAL_NAME)
    if d.validation_path:
        out["eval_dataset"] = EVAL_NAME
    out["dataset_dir"] = dataset_dir
    if d.template != "auto":
        out["template"] = d.template
    if fmt == "text":
        lost.append("data.format text: LLaMA-Factory's sft stage needs instruction/response rows (plain text is "
                    "its pt stage)")
    if fmt == "prompt_completion":
        lost.append("data.format prompt_completion: registered as alpaca prompt/response, so LLaMA-Factory puts "
                    "its template around it (sft-tui trains such rows without a template)")
    if fmt == "auto":
        lost.append("data.format auto: registered as alpaca; change formatting in dataset_info.json if the file "
                    "holds conversations")
    if d.truncation == "drop":
        lost.append("data.truncation drop: LLaMA-Factory truncates rows longer than cutoff_len")
    if d.skip_bad_rows:
        lost.append("data.skip_bad_rows: LLaMA-Factory stops on a malformed row")
    out.update(cutoff_len=d.max_length, packing=d.packing, train_on_prompt=d.train_on_prompt)
    if d.system_prompt:
        out["default_system"] = d.system_prompt
    if d.num_proc:
        out["preprocessing_num_workers"] = d.num_proc
    if not d.validation_path:
        out["val_size"] = d.validation_split
    out["output_dir"] = f"saves/{config.output.run_name or 'sft-tui'}"
    if config.output.runs_dir:
        lost.append(f"output.runs_dir {config.output.runs_dir}: LLaMA-Factory writes to output_dir")
    out.update(training_args(config))
    out["disable_gradient_checkpointing"] = not t.gradient_checkpointing
    if d.validation_path or d.validation_split > 0:
        out["per_device_eval_batch_size"] = t.batch_size
        out["eval_strategy"] = "steps" if t.eval_steps else "epoch"
        if t.eval_steps:
            out["eval_steps"] = t.eval_steps
    if t.early_stopping_patience:
        out.update(early_stopping_steps=t.early_stopping_patience, load_best_model_at_end=True,
                   metric_for_best_model="eval_loss")
    if t.precision == "auto":
        lost.append("training.precision auto: set bf16: true (or fp16: true) for mixed precision on a GPU")
    out["report_to"] = report_to_out(config)
    lost += tracker_lost(config, "LLaMA-Factory")
    command = train_command(config, "llamafactory", lost)
    ds_head = deepspeed_out(config, out, deepspeed_path)
    if uses(config, "fsdp"):
        lost.append("training.strategy fsdp: not written, and the command above trains with DDP; LLaMA-Factory "
                    "takes FSDP from an accelerate config instead (accelerate launch --config_file CONFIG "
                    "src/train.py FILE from its checkout, as in its examples/accelerate/)")
    lost += runtime_lost(config, "LLaMA-Factory")
    info = json.dumps(dataset_info(config), indent=2, ensure_ascii=False)
    head = header(lost, "LLaMA-Factory config written by `sft-tui config export --to llamafactory`. "
                        f"Train with: {command}")
    head += (f"# The data is registered in dataset_dir/{DATA_INFO} (`-o FILE` writes it beside FILE):\n"
             + "".join(f"#   {line}\n" for line in info.splitlines()))
    return head + ds_head + "\n" + yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=1000)


def export_llamafactory_files(config: Config, out_path: Path) -> dict[Path, str]:
    """The YAML at ``out_path`` and a ``dataset_info.json`` beside it (merged into one already there)."""
    folder = out_path.parent.resolve()
    info_path = folder / DATA_INFO
    info: dict[str, Any] = {}
    if info_path.exists():
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise fail(f"{info_path} exists and could not be read ({exc})",
                       "fix or move it, or export into another folder") from None
        if not isinstance(info, dict):
            raise fail(f"{info_path} is not a mapping of dataset names", "move it, or export into another folder")
    info.update(dataset_info(config))
    files = {info_path: json.dumps(info, indent=2, ensure_ascii=False) + "\n"}
    ds_path = None
    if uses(config, "deepspeed"):
        ds_path = folder / deepspeed_name(config)
        files[ds_path] = json.dumps(deepspeed_json(config), indent=2) + "\n"
    yaml_text = export_llamafactory(config, dataset_dir=str(folder), deepspeed_path=str(ds_path) if ds_path else None)
    return {out_path: yaml_text, **files}
