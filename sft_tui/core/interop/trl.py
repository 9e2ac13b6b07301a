"""TRL training script <-> sft-tui config.

Import reads the script with ``ast`` and never runs it: the keyword arguments of ``SFTConfig(...)`` /
``TrainingArguments(...)``, ``LoraConfig(...)``, ``BitsAndBytesConfig(...)``, ``*.from_pretrained(...)``,
``load_dataset(...)`` / ``load_from_disk(...)``, ``.train_test_split(...)``, ``EarlyStoppingCallback(...)``
and ``SFTTrainer(...)``, literal values only (a module-level ``NAME = literal`` counts as a literal, and so
does ``torch.bfloat16``). Anything computed is reported as unmapped.

Sources: TRL ``trl/trainer/sft_config.py`` (max_length, packing, dataset_text_field, completion_only_loss,
assistant_only_loss, dataset_num_proc, gradient_checkpointing default True, learning_rate default 2e-5,
logging_steps default 10; https://huggingface.co/docs/trl/sft_trainer), peft ``tuners/lora/config.py``
(r, lora_alpha, lora_dropout, target_modules, use_dora, use_rslora;
https://huggingface.co/docs/peft/package_reference/lora), transformers ``BitsAndBytesConfig`` and
``from_pretrained`` (dtype, attn_implementation, trust_remote_code, revision), TrainingArguments in ``hf.py``.
Checked against the installed trl 1.16, peft 0.21 and transformers 5. ``report_to``, ``project``,
``deepspeed``, ``fsdp`` / ``fsdp_config`` and the multi-GPU launch command: see ``_distributed.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from sft_tui.core.config import Config

from ._common import (format_for_export, Builder, ImportResult, as_bool, data_paths, export_path, fail, header, is_local_path,
                      loader_for, one_of, sample_name)
from ._distributed import (PROJECT, deepspeed_json, fsdp_settings, map_deepspeed, map_hf_fsdp, map_report_to,
                           map_trackio_project, report_to_out, runtime_lost, tracker_lost, train_command, uses)
from .hf import HF_DEFAULTS, map_training_args, training_args

ARGS_CLASSES = ("SFTConfig", "TrainingArguments")
SFT_DEFAULTS = {**HF_DEFAULTS, "learning_rate": 2e-5, "logging_steps": 10}
DTYPES = {"auto": "auto", "float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "bf16": "bfloat16",
          "fp16": "float16", "fp32": "float32"}
ATTENTION = {"eager": "eager", "sdpa": "sdpa", "flash_attention_2": "flash_attention_2"}
# constants an sft-tui export writes at the top of its script (a hand-written script has none of them)
EXPORT_CONSTANTS = {"DATA_FORMAT": "data.format", "TEMPLATE": "data.template", "SYSTEM_PROMPT": "data.system_prompt",
                    "COLUMNS": "data.columns"}
STRUCTURAL = {"model", "args", "train_dataset", "eval_dataset", "peft_config", "processing_class", "tokenizer",
              "callbacks"}
NOT_LITERAL = "not a literal value (the script is never run, so only literal values are read)"


class _NonLiteral:
    def __init__(self, text: str) -> None:
        self.text = text


def _name(func: ast.AST) -> str:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


class Script:
    """The calls of interest in a parsed script, with their literal keyword values."""

    def __init__(self, text: str) -> None:
        try:
            self.tree = ast.parse(text)
        except SyntaxError as exc:
            raise fail(f"not valid Python at line {exc.lineno}: {exc.msg}",
                       "a TRL import reads a Python training script; for YAML use --from axolotl or llamafactory") from None
        self.constants: dict[str, Any] = {}
        for node in self.tree.body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                value = self.value(node.value)
                if not isinstance(value, _NonLiteral):
                    self.constants[node.targets[0].id] = value
        self.calls: dict[str, list[ast.Call]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                self.calls.setdefault(_name(node.func), []).append(node)
        for calls in self.calls.values():
            calls.sort(key=lambda c: (c.lineno, c.col_offset))

    def value(self, node: ast.AST) -> Any:
        if isinstance(node, ast.Name) and node.id in getattr(self, "constants", {}):
            return self.constants[node.id]
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
            return node.attr  # torch.bfloat16 -> "bfloat16"
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [self.value(n) for n in node.elts]
            bad = [i for i in items if isinstance(i, _NonLiteral)]
            return bad[0] if bad else items
        if isinstance(node, ast.Dict) and None not in node.keys:
            keys = [self.value(k) for k in node.keys]  # type: ignore[arg-type]
            values = [self.value(v) for v in node.values]
            if not any(isinstance(x, _NonLiteral) for x in keys + values):
                return dict(zip(keys, values))
        try:
            return ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return _NonLiteral(ast.unparse(node))

    def first(self, *names: str) -> tuple[str, ast.Call] | None:
        found = [(n, c) for n in names for c in self.calls.get(n, [])]
        return min(found, key=lambda nc: (nc[1].lineno, nc[1].col_offset)) if found else None

    def kwargs(self, call: ast.Call, prefix: str, b: Builder) -> dict[str, Any]:
        out = {}
        for kw in call.keywords:
            if kw.arg is None:
                b.skip(f"{prefix}(**{ast.unparse(kw.value)})", ast.unparse(kw.value),
                       "keyword arguments expanded from a variable are not read")
                continue
            value = self.value(kw.value)
            if isinstance(value, _NonLiteral):
                if kw.arg not in STRUCTURAL | {"quantization_config", "formatting_func"}:
                    b.skip(f"{prefix}.{kw.arg}", value.text, NOT_LITERAL)
                continue
            out[f"{prefix}.{kw.arg}"] = value
        return out


def looks_like(text: str) -> bool:
    return any(f"{name}(" in text for name in ARGS_CLASSES + ("SFTTrainer", "LoraConfig"))


def import_trl(text: str, base_dir: Path | None = None) -> ImportResult:
    """The settings of a TRL script; ``base_dir`` is where a DeepSpeed or FSDP JSON it names is looked up."""
    script = Script(text)
    b = Builder("trl", {})
    found = script.first(*ARGS_CLASSES)
    if found is None:
        raise fail("no SFTConfig(...) or TrainingArguments(...) call found in the script",
                   "sft-tui reads the training settings from the keyword arguments of SFTConfig(...) "
                   "(or TrainingArguments(...)) in a TRL script")
    cls, args_call = found
    b.raw.update(script.kwargs(args_call, cls, b))
    for other in script.calls.get("SFTConfig", []) + script.calls.get("TrainingArguments", []):
        if other is not args_call:
            b.note(f"{_name(other.func)}(...) at line {other.lineno} was ignored: only the first one is read")
    k = lambda name: f"{cls}.{name}"  # noqa: E731
    sft = cls == "SFTConfig"
    map_training_args(b, k, SFT_DEFAULTS if sft else HF_DEFAULTS)
    b.convert("training.gradient_checkpointing", k("gradient_checkpointing"), as_bool, sft)
    if sft:
        length_key = k("max_length") if b.has(k("max_length")) or not b.has(k("max_seq_length")) else k("max_seq_length")
        b.set("data.max_length", b.take(length_key, 1024), length_key)
        b.convert("data.packing", k("packing"), as_bool)
        b.convert("data.num_proc", k("dataset_num_proc"), lambda v: v)
        field = b.take(k("dataset_text_field"))
        if field is not None and field != "text":
            b.set("data.columns", {"text": field}, k("dataset_text_field"))
            b.set("data.format", "text", k("dataset_text_field"))
        if b.raw.get(k("completion_only_loss")) is False:
            b.set("data.train_on_prompt", True, k("completion_only_loss"), record=False)
        else:
            b.used.add(k("completion_only_loss"))
        if b.raw.get(k("assistant_only_loss")) is True:
            b.set("data.train_on_prompt", False, k("assistant_only_loss"), record=True)
        else:
            b.used.add(k("assistant_only_loss"))
        init = b.take(k("model_init_kwargs"))
        if isinstance(init, dict):
            _model_kwargs(b, {f"{cls}.model_init_kwargs.{n}": v for n, v in init.items()},
                          f"{cls}.model_init_kwargs.")
    if b.raw.get(k("load_best_model_at_end")):
        b.used.update({k("load_best_model_at_end"), k("metric_for_best_model")})
    if b.raw.get(k("per_device_eval_batch_size")) == b.values.get("training.batch_size"):
        b.used.add(k("per_device_eval_batch_size"))
    map_report_to(b, k("report_to"))
    map_trackio_project(b, k("project"))
    map_deepspeed(b, k("deepspeed"), base_dir)
    map_hf_fsdp(b, k("fsdp"), k("fsdp_config"), base_dir)

    _model(script, b)
    _lora(script, b)
    _data(script, b)
    for name, target in EXPORT_CONSTANTS.items():
        if name in script.constants and script.constants[name] is not None:
            b.raw[name] = script.constants[name]
            b.set(target, script.constants[name], name)
    stop = script.first("EarlyStoppingCallback")
    if stop is not None:
        b.raw.update(script.kwargs(stop[1], "EarlyStoppingCallback", b))
        b.set("training.early_stopping_patience", b.take("EarlyStoppingCallback.early_stopping_patience", 1),
              "EarlyStoppingCallback.early_stopping_patience")
    trainer = script.first("SFTTrainer", "Trainer")
    if trainer is not None:
        kw = script.kwargs(trainer[1], trainer[0], b)
        for key, value in kw.items():
            if key.split(".", 1)[1] not in STRUCTURAL:
                b.raw[key] = value
        for kwd in trainer[1].keywords:
            if kwd.arg == "formatting_func":
                b.skip(f"{trainer[0]}.formatting_func", ast.unparse(kwd.value),
                       "a Python function; sft-tui maps columns with data.format and data.columns")
    if not any(t.startswith("model.path") for t in b.values):
        b.note("no model found in the script (a literal in from_pretrained(...) or SFTTrainer(model=...)); "
               "model.path keeps its default")
    return b.finish()


def _model_kwargs(b: Builder, kw: dict[str, Any], prefix: str) -> None:
    b.raw.update(kw)
    for name in ("dtype", "torch_dtype"):
        b.convert("model.dtype", prefix + name, one_of(DTYPES, "dtype"))
    b.convert("model.attn_implementation", prefix + "attn_implementation", one_of(ATTENTION, "attn_implementation"))
    b.convert("model.trust_remote_code", prefix + "trust_remote_code", as_bool)
    if b.raw.get(prefix + "revision") not in (None, "main"):
        b.set("model.revision", b.raw[prefix + "revision"], prefix + "revision")
    else:
        b.used.add(prefix + "revision")


def _model(script: Script, b: Builder) -> None:
    loads = [c for c in script.calls.get("from_pretrained", [])
             if isinstance(c.func, ast.Attribute) and not any(w in ast.unparse(c.func.value)
                                                              for w in ("Tokenizer", "Processor", "Config"))]
    model = None
    if loads:
        call = loads[0]
        model = script.value(call.args[0]) if call.args else None
        kw = script.kwargs(call, "from_pretrained", b)
        model = kw.pop("from_pretrained.pretrained_model_name_or_path", model)
        quant = next((k for k in call.keywords if k.arg == "quantization_config"), None)
        _model_kwargs(b, kw, "from_pretrained.")
        if quant is not None:
            _quantization(script, b, quant.value)
    trainer = script.first("SFTTrainer")
    if model is None and trainer is not None:
        kw = next((k for k in trainer[1].keywords if k.arg == "model"), None)
        model = script.value(kw.value) if kw is not None else None
    if isinstance(model, _NonLiteral):
        b.raw["model"] = model.text
        b.skip("model", model.text, NOT_LITERAL)
    elif isinstance(model, str):
        b.raw["model"] = model
        b.set("model.path", model, "model")


def _quantization(script: Script, b: Builder, node: ast.AST) -> None:
    if not (isinstance(node, ast.Call) and _name(node.func) == "BitsAndBytesConfig"):
        b.skip("from_pretrained.quantization_config", ast.unparse(node), NOT_LITERAL)
        return
    kw = script.kwargs(node, "BitsAndBytesConfig", b)
    b.raw.update(kw)
    four, eight = kw.get("BitsAndBytesConfig.load_in_4bit"), kw.get("BitsAndBytesConfig.load_in_8bit")
    if four or eight:
        b.set("method.quantization_bits", 4 if four else 8,
              "BitsAndBytesConfig.load_in_4bit" if four else "BitsAndBytesConfig.load_in_8bit")
        b.used.update({"BitsAndBytesConfig.load_in_4bit", "BitsAndBytesConfig.load_in_8bit"})
    # sft-tui's own 4-bit setting (core/models/load.py): NF4, double quantization, compute in bf16/fp16
    if kw.get("BitsAndBytesConfig.bnb_4bit_quant_type", "nf4") == "nf4":
        b.used.add("BitsAndBytesConfig.bnb_4bit_quant_type")
    if kw.get("BitsAndBytesConfig.bnb_4bit_use_double_quant", True) is True:
        b.used.add("BitsAndBytesConfig.bnb_4bit_use_double_quant")
    if kw.get("BitsAndBytesConfig.bnb_4bit_compute_dtype") in (None, "bfloat16", "float16"):
        b.used.add("BitsAndBytesConfig.bnb_4bit_compute_dtype")


def _lora(script: Script, b: Builder) -> None:
    found = script.first("LoraConfig")
    bits = b.values.get("method.quantization_bits")
    if found is None:
        b.set("method.type", "full", "LoraConfig", record=None)
        if bits is not None:
            b.values.pop("method.quantization_bits")
            key = b.origin.pop("method.quantization_bits")
            b.skip(key, True, "a quantized base needs LoRA (sft-tui: method.type qlora)")
        return
    kw = script.kwargs(found[1], "LoraConfig", b)
    b.raw.update(kw)
    b.raw["LoraConfig"] = "LoraConfig(...)"
    b.set("method.type", "qlora" if bits else "lora", "LoraConfig")
    # peft LoraConfig defaults: r=8, lora_alpha=8, lora_dropout=0.0
    b.set("method.lora_r", b.take("LoraConfig.r", 8), "LoraConfig.r")
    b.set("method.lora_alpha", b.take("LoraConfig.lora_alpha", 8), "LoraConfig.lora_alpha")
    b.set("method.lora_dropout", b.take("LoraConfig.lora_dropout", 0.0), "LoraConfig.lora_dropout")
    target = b.take("LoraConfig.target_modules")
    if target is None:
        b.note("LoraConfig has no target_modules: peft picks per-model defaults (often q_proj, v_proj); "
               "the import uses sft-tui's all-linear")
    elif isinstance(target, str) and target != "all-linear":
        b.skip("LoraConfig.target_modules", target, "a module-name pattern; sft-tui takes a list of names or all-linear")
    else:
        b.set("method.target_modules", list(target) if not isinstance(target, str) else target,
              "LoraConfig.target_modules", record=target)
    for name in ("use_dora", "use_rslora"):
        b.convert(f"method.{name}", f"LoraConfig.{name}", as_bool)
    if str(b.raw.get("LoraConfig.task_type", "CAUSAL_LM")).upper().endswith("CAUSAL_LM"):
        b.used.add("LoraConfig.task_type")
    if b.raw.get("LoraConfig.bias", "none") == "none":
        b.used.add("LoraConfig.bias")


def _data(script: Script, b: Builder) -> None:
    loads = [("load_dataset", c) for c in script.calls.get("load_dataset", [])]
    loads += [("load_from_disk", c) for c in script.calls.get("load_from_disk", [])]
    loads.sort(key=lambda nc: nc[1].lineno)
    train: list[str] = []
    validation: str | None = None
    assigned: dict[int, list[str]] = {}
    for node in ast.walk(script.tree):
        if isinstance(node, ast.Assign):
            names = [n.id for t in node.targets for n in ast.walk(t) if isinstance(n, ast.Name)]
            for sub in ast.walk(node.value):
                assigned.setdefault(id(sub), []).extend(names)
    for i, (func, call) in enumerate(loads):
        key = func if i == 0 else f"{func}[{i}]"
        args = [script.value(a) for a in call.args]
        kw = {k.arg: script.value(k.value) for k in call.keywords if k.arg}
        b.raw[key] = ast.unparse(call)
        b.used.add(key)
        bad = [v for v in list(args) + list(kw.values()) if isinstance(v, _NonLiteral)]
        if bad:
            b.skip(key, ast.unparse(call), NOT_LITERAL)
            continue
        first = args[0] if args else kw.get("path", kw.get("dataset_path"))
        files = kw.get("data_files")
        if func == "load_from_disk" or (files is None and isinstance(first, str) and is_local_path(first, None)
                                        and first not in ("json", "csv", "parquet", "text")):
            paths, val = [first], None
        elif isinstance(first, str) and first in ("json", "csv", "parquet", "text", "arrow") and files is not None:
            if isinstance(files, dict):
                paths = files.get("train") or []
                val = files.get("validation", files.get("test"))
                for split in set(files) - {"train", "validation", "test"}:
                    b.skip(f"{key}.data_files.{split}", files[split], "sft-tui reads train and validation files")
            else:
                paths, val = files, None
            paths = [paths] if isinstance(paths, str) else list(paths)
        else:
            b.skip(key, ast.unparse(call), "a Hugging Face hub dataset id, not a local file; download it and "
                   "point data.path at the file")
            continue
        split = kw.get("split")
        names = assigned.get(id(call), [])
        is_eval = split in ("validation", "test", "eval") or (isinstance(split, str) and split.startswith("test")) \
            or any(w in n.lower() for n in names for w in ("eval", "valid", "test"))
        if is_eval and len(paths) == 1 and validation is None:
            validation = paths[0]
        elif not train:
            train = [str(p) for p in paths]
            if isinstance(val, str):
                validation = val
        else:
            b.skip(key, ast.unparse(call), "sft-tui takes one training dataset (a file or a list of files)")
    if train:
        train = [sample_name(p) for p in train]
        b.set("data.path", train[0] if len(train) == 1 else train, "load_dataset", record=b.raw.get("load_dataset"))
    if validation:
        b.set("data.validation_path", sample_name(validation), "load_dataset")
    split = script.first("train_test_split")
    if split is not None:
        kw = script.kwargs(split[1], "train_test_split", b)
        b.raw.update(kw)
        size = kw.get("train_test_split.test_size")
        if isinstance(size, float):
            b.set("data.validation_split", size, "train_test_split.test_size")
        elif size is not None:
            b.skip("train_test_split.test_size", size, "a number of rows; sft-tui holds out a share (0-0.5)")
        b.used.add("train_test_split.seed")
    elif not validation:
        b.set("data.validation_split", 0.0, "eval_dataset", record=None)


# --------------------------------------------------------------------------- export

CHAT_TEMPLATES = {
    "chatml": ("{% for message in messages %}{% if message['role'] == 'assistant' %}"
               "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}"
               "{% endgeneration %}{{ '\\n' }}{% else %}"
               "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
               "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    "llama3": ("{{ bos_token }}{% for message in messages %}"
               "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
               "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|eot_id|>' }}"
               "{% endgeneration %}{% else %}{{ message['content'] + '<|eot_id|>' }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    "alpaca": ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}"
               "{% else %}{{ 'Below is an instruction that describes a task. Write a response that appropriately "
               "completes the request.\\n\\n' }}{% endif %}{% for message in messages %}"
               "{% if message['role'] == 'user' %}{{ '### Instruction:\\n' + message['content'] + '\\n\\n' }}"
               "{% elif message['role'] == 'assistant' %}{{ '### Response:\\n' }}{% generation %}"
               "{{ message['content'] + eos_token }}{% endgeneration %}{{ '\\n\\n' }}{% endif %}{% endfor %}"
               "{% if add_generation_prompt %}{{ '### Response:\\n' }}{% endif %}"),
}

_CONVERT = {
    "alpaca": '''
def to_trl(row):
    """An alpaca row as a conversational prompt/completion (only the completion is trained)."""
    get = lambda name: row.get(COLUMNS.get(name, name))
    user = get("instruction") + ("\\n\\n" + get("input") if get("input") else "")
    prompt = [{"role": "user", "content": user}]
    system = get("system") or SYSTEM_PROMPT
    if system:
        prompt.insert(0, {"role": "system", "content": system})
    return {"prompt": prompt, "completion": [{"role": "assistant", "content": get("output")}]}
''',
    "sharegpt": '''
ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
         "model": "assistant", "observation": "tool", "tool": "tool", "function_call": "assistant"}


def to_trl(row):
    """A sharegpt row (from/value turns) as TRL's conversational messages."""
    turns = row[COLUMNS.get("conversations", "conversations")]
    messages = [{"role": ROLES.get(t["from"], t["from"]), "content": t["value"]} for t in turns]
    system = row.get(COLUMNS.get("system", "system")) or SYSTEM_PROMPT
    if system and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}
''',
    "messages": '''
def to_trl(row):
    """A messages row as TRL's conversational messages (the system prompt added where missing)."""
    messages = [{"role": m["role"], "content": m["content"]} for m in row[COLUMNS.get("messages", "messages")]]
    system = row.get(COLUMNS.get("system", "system")) or SYSTEM_PROMPT
    if system and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": system})
    return {"messages": messages}
''',
    "prompt_completion": '''
def to_trl(row):
    """A prompt/completion row as TRL reads it (no template; only the completion is trained)."""
    return {"prompt": row[COLUMNS.get("prompt", "prompt")], "completion": row[COLUMNS.get("completion", "completion")]}
''',
}


def _py(value: Any) -> str:
    return repr(value)


def _literal(value: Any, indent: str = "    ") -> str:
    """A dict as a Python literal, one key a line (short ones on one), indented for a keyword argument."""
    if not isinstance(value, dict) or len(repr(value)) <= 60:
        return _py(value)
    inner = indent + "    "
    return "{\n" + "".join(f"{inner}{k!r}: {_literal(v, inner)},\n" for k, v in value.items()) + indent + "}"


def _call(name: str, kwargs: dict[str, Any], indent: str = "    ") -> str:
    inner = "".join(f"{indent}{k}={v if isinstance(v, _Code) else _py(v)},\n" for k, v in kwargs.items())
    return f"{name}(\n{inner})"


class _Code(str):
    """Python source written as is (not repr'd) in a call."""


def export_trl(config: Config) -> str:
    m, d, t, mo = config.method, config.data, config.training, config.model
    lost: list[str] = []
    fmt = format_for_export(config, lost)
    if mo.path == "demo":
        lost.append("model 'demo' is sft-tui's built-in model: run `sft-tui demo` and put the folder it prints "
                    "in MODEL")
    if fmt == "auto":
        lost.append("data.format auto: the script hands rows to SFTTrainer as they are (TRL reads text, messages "
                    "or prompt/completion columns); set DATA_FORMAT to convert alpaca or sharegpt rows")
    if d.truncation == "drop":
        lost.append("data.truncation drop: TRL truncates rows longer than max_length")
    if d.skip_bad_rows:
        lost.append("data.skip_bad_rows: datasets stops on a malformed row")
    if d.template == "auto" and fmt in ("messages", "sharegpt", "auto") and not d.train_on_prompt:
        lost.append("data.template auto + answers-only training: assistant_only_loss needs a chat template with "
                    "{% generation %} markers; if the tokenizer's has none, TRL stops with an error — set TEMPLATE")
    if d.template != "auto" and fmt in ("text", "prompt_completion"):
        lost.append(f"data.template {d.template}: {fmt} rows are trained without a template")
    if config.output.runs_dir:
        lost.append(f"output.runs_dir {config.output.runs_dir}: the script writes to output_dir")
    lost += tracker_lost(config, "TRL")
    command = train_command(config, "trl", lost)
    lost += runtime_lost(config, "TRL")
    needs = "pip install trl peft transformers datasets"
    if uses(config, "deepspeed"):
        needs += " deepspeed"
    if t.optimizer in ("adamw_8bit", "paged_adamw_8bit") or m.type == "qlora":
        needs += " bitsandbytes  (and a CUDA GPU)"

    files = data_paths(config)
    loader = loader_for(files[0])
    lines = ['"""Supervised fine-tuning with TRL\'s SFTTrainer, written by `sft-tui config export --to trl`.', ""]
    lines += [line[2:] for line in header(lost, f"Needs: {needs}. Run with: {command}").splitlines()]
    lines += ['"""', "", "from datasets import " + ("load_dataset" if loader else "load_from_disk")
              + (", load_dataset" if not loader and d.validation_path and loader_for(d.validation_path) else "")]
    lines += ["from peft import LoraConfig"] if m.type != "full" else []
    tf = ["AutoModelForCausalLM", "AutoTokenizer"]
    if m.type == "qlora":
        tf.append("BitsAndBytesConfig")
    if t.early_stopping_patience:
        tf.append("EarlyStoppingCallback")
    lines += [f"from transformers import {', '.join(tf)}", "from trl import SFTConfig, SFTTrainer", ""]
    lines += [f"MODEL = {_py(mo.path)}",
              f"DATA_FILES = {_py(files[0] if len(files) == 1 else files)}"]
    if d.validation_path:
        lines.append(f"VALIDATION_FILE = {_py(export_path(d.validation_path))}")
    lines += [f"DATA_FORMAT = {_py(fmt)}  # sft-tui data.format: alpaca, messages, sharegpt, prompt_completion, text",
              f"COLUMNS = {_py(dict(d.columns))}  # sft-tui data.columns: format field -> column in the file",
              f"SYSTEM_PROMPT = {_py(d.system_prompt)}  # sft-tui data.system_prompt: added to rows without one",
              f"TEMPLATE = {_py(d.template)}  # sft-tui data.template; auto keeps the tokenizer's chat template"]
    if d.template in CHAT_TEMPLATES:
        lines.append(f"CHAT_TEMPLATE = {_py(CHAT_TEMPLATES[d.template])}")
    lines.append("")
    if fmt in _CONVERT:
        lines += _CONVERT[fmt].strip("\n").splitlines() + ["", ""]
    load = (f"load_dataset({_py(loader)}, data_files=DATA_FILES, split=\"train\")" if loader
            else "load_from_disk(DATA_FILES)")
    lines.append(f"dataset = {load}")
    if fmt in _CONVERT:
        lines.append("dataset = dataset.map(to_trl, remove_columns=dataset.column_names)")
    if d.validation_path:
        vload = loader_for(d.validation_path)
        lines.append("eval_dataset = " + (f"load_dataset({_py(vload)}, data_files=VALIDATION_FILE, split=\"train\")"
                                         if vload else "load_from_disk(VALIDATION_FILE)"))
        if fmt in _CONVERT:
            lines.append("eval_dataset = eval_dataset.map(to_trl, remove_columns=eval_dataset.column_names)")
        lines.append("train_dataset = dataset")
    elif d.validation_split > 0:
        lines += [f"splits = dataset.train_test_split(test_size={_py(d.validation_split)}, seed={t.seed})",
                  "train_dataset, eval_dataset = splits[\"train\"], splits[\"test\"]"]
    else:
        lines += ["train_dataset, eval_dataset = dataset, None"]
    lines.append("")
    lines.append("tokenizer = AutoTokenizer.from_pretrained(MODEL, trust_remote_code="
                 f"{mo.trust_remote_code}" + (f", revision={_py(mo.revision)}" if mo.revision else "") + ")")
    if d.template in CHAT_TEMPLATES:
        lines.append("tokenizer.chat_template = CHAT_TEMPLATE")
    model_kw: dict[str, Any] = {}
    if mo.dtype != "auto":
        model_kw["dtype"] = mo.dtype
    if mo.attn_implementation != "auto":
        model_kw["attn_implementation"] = mo.attn_implementation
    if mo.trust_remote_code:
        model_kw["trust_remote_code"] = True
    if mo.revision:
        model_kw["revision"] = mo.revision
    if m.type == "qlora":
        bnb = ({"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
                "bnb_4bit_compute_dtype": "bfloat16"} if m.bits == 4 else {"load_in_8bit": True})
        model_kw["quantization_config"] = _Code(_call("BitsAndBytesConfig", bnb, "        ").replace("\n)", "\n    )"))
    lines.append("model = AutoModelForCausalLM.from_pretrained(MODEL" + ("" if not model_kw else ", " + ", ".join(
        f"{k}={v if isinstance(v, _Code) else _py(v)}" for k, v in model_kw.items())) + ")")
    if m.type != "full":
        lora = {"r": m.lora_r, "lora_alpha": m.lora_alpha, "lora_dropout": m.lora_dropout,
                "target_modules": m.target_modules if isinstance(m.target_modules, str) else list(m.target_modules),
                "use_dora": m.use_dora, "use_rslora": m.use_rslora, "bias": "none", "task_type": "CAUSAL_LM"}
        lines.append("peft_config = " + _call("LoraConfig", lora))
    fsdp = uses(config, "fsdp")
    args = {"output_dir": f"outputs/{config.output.run_name or 'sft-tui'}", **training_args(config, warmup_key="warmup_steps"),
            # under FSDP the checkpointing is FSDP's own (fsdp_config["activation_checkpointing"])
            "gradient_checkpointing": t.gradient_checkpointing and not fsdp, "max_length": d.max_length,
            "packing": d.packing}
    if d.num_proc:
        args["dataset_num_proc"] = d.num_proc
    if fmt == "text":
        args["dataset_text_field"] = d.columns.get("text", "text")
    elif fmt in ("alpaca", "prompt_completion"):
        args["completion_only_loss"] = not d.train_on_prompt
    elif fmt in ("messages", "sharegpt") or (fmt == "auto" and not d.train_on_prompt):
        args["assistant_only_loss"] = not d.train_on_prompt
    has_eval = bool(d.validation_path) or d.validation_split > 0
    if has_eval:
        args.update(per_device_eval_batch_size=t.batch_size, eval_strategy="steps" if t.eval_steps else "epoch")
        if t.eval_steps:
            args["eval_steps"] = t.eval_steps
    if t.early_stopping_patience:
        args.update(load_best_model_at_end=True, metric_for_best_model="eval_loss")
    args["report_to"] = report_to_out(config)
    if "trackio" in config.training.trackers():
        args["project"] = PROJECT
    if uses(config, "deepspeed"):
        args["deepspeed"] = _Code(_literal(deepspeed_json(config)))
    elif fsdp:
        args.update(fsdp=True, fsdp_config=_Code(_literal(fsdp_settings(config))))
    lines.append("args = " + _call("SFTConfig", args))
    lines.append("")
    trainer = {"model": _Code("model"), "args": _Code("args"), "train_dataset": _Code("train_dataset"),
               "eval_dataset": _Code("eval_dataset"), "processing_class": _Code("tokenizer")}
    if m.type != "full":
        trainer["peft_config"] = _Code("peft_config")
    if t.early_stopping_patience:
        trainer["callbacks"] = _Code(f"[EarlyStoppingCallback(early_stopping_patience={t.early_stopping_patience})]")
    lines.append("trainer = " + _call("SFTTrainer", trainer))
    lines += ["trainer.train()", "trainer.save_model()", ""]
    return "\n".join(lines)


__all__ = ["import_trl", "export_trl", "looks_like"]
