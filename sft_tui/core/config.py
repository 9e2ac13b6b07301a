"""The one typed run configuration: schema, YAML in/out, presets and human validation.

Field descriptions and bounds here are the single source for validation messages, the training
form's help text and the comments in generated YAML, so they are written for a person, not a
programmer.
"""

from __future__ import annotations

import difflib
import io
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEMO_MODEL = "demo"
DEFAULT_DATA = "sample:reviews_alpaca.jsonl"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


class ModelConfig(_Section):
    path: str = Field(
        DEMO_MODEL,
        description="Base model: 'demo' (built-in tiny model), a local folder, or a Hugging Face hub id.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weight precision when loading; 'auto' picks bf16 on GPUs that support it, else float32."
    )
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = Field(
        "auto", description="Attention kernel; 'auto' lets transformers choose (sdpa where available)."
    )
    trust_remote_code: bool = Field(
        False, description="Run Python code shipped with the model. Only enable for models you trust."
    )
    revision: str | None = Field(None, description="Hub branch, tag or commit to load (hub ids only).")


class DataConfig(_Section):
    path: Union[str, list[str]] = Field(
        DEFAULT_DATA,
        description="Training data: a file, a list of files, a saved dataset folder, or 'sample:NAME' for bundled data.",
    )
    validation_path: str | None = Field(
        None, description="Separate validation file; when set, validation_split is ignored."
    )
    format: Literal["auto", "alpaca", "messages", "sharegpt", "prompt_completion", "text"] = Field(
        "auto", description="Row format; 'auto' detects it from the columns."
    )
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Rename columns to the format's names, e.g. {instruction: question, output: answer}.",
    )
    template: Literal["auto", "alpaca", "chatml", "llama3"] = Field(
        "auto", description="Prompt template; 'auto' uses the tokenizer's chat template, else chatml."
    )
    system_prompt: str | None = Field(None, description="System message added to rows that have none.")
    multi_turn: Literal["final", "expand"] = Field(
        "final",
        description="Rows with several answers: 'final' trains each row once, as the chat template renders it "
        "for its last answer (templates that drop earlier reasoning drop it here too); 'expand' makes one row per "
        "answer, each ending on that answer, so every answer is trained with its reasoning.",
    )
    validation_split: float = Field(
        0.1, ge=0.0, le=0.5, description="Share of rows held out for evaluation (0 disables evaluation)."
    )
    max_length: int = Field(512, ge=16, le=262144, description="Longest training sequence in tokens.")
    truncation: Literal["truncate", "drop"] = Field(
        "truncate", description="What to do with rows longer than max_length: cut them or leave them out."
    )
    packing: bool = Field(
        False, description="Pack several short rows into one sequence to waste less compute on padding."
    )
    train_on_prompt: bool = Field(
        False, description="Also train on prompt tokens (normally only the assistant's answers are trained)."
    )
    skip_bad_rows: bool = Field(
        False, description="Skip malformed rows (bad JSON, missing fields) instead of stopping with an error."
    )
    num_proc: int | None = Field(
        None, ge=1, le=256, description="Processes for tokenizing; empty picks one by data size and CPU count."
    )
    padding_free: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Join each batch's rows into one row with no padding at all (position ids mark where each "
        "row starts); 'auto' turns it on where the attention kernel keeps rows apart (flash-attention).",
    )
    group_by_length: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Batch rows of similar length together so less padding is computed; 'auto' turns it on "
        "when batches are padded (batch size above 1, not packed, not padding-free).",
    )


class MethodConfig(_Section):
    type: Literal["full", "lora", "qlora"] = Field(
        "lora",
        description="full: train every weight (most memory); lora: train small adapters; qlora: lora on a 4/8-bit base (CUDA only).",
    )
    quantization_bits: Literal[4, 8] | None = Field(
        None, description="Base-model quantization for qlora: 4 (NF4) or 8 bits; empty means 4 for qlora."
    )
    lora_r: int = Field(16, ge=1, le=1024, description="LoRA rank: adapter size; 8-64 is typical.")
    lora_alpha: int = Field(32, ge=1, le=4096, description="LoRA scaling; usually twice the rank.")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the adapter inputs.")
    target_modules: Union[Literal["all-linear"], list[str]] = Field(
        "all-linear", description="Layers that get adapters: 'all-linear' or a list such as [q_proj, v_proj]."
    )
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA): sometimes better, slower.")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling (alpha/sqrt(r)); helps at high ranks.")

    @property
    def bits(self) -> int | None:
        """The quantization actually applied: qlora defaults to 4-bit."""
        if self.type == "qlora":
            return self.quantization_bits or 4
        return None


class TrainingConfig(_Section):
    epochs: float = Field(3.0, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (overrides epochs when set)."
    )
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate; 1e-4..3e-4 suits LoRA, 1e-5 full.")
    scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="How the learning rate changes over training."
    )
    warmup_ratio: float = Field(0.03, ge=0.0, le=0.5, description="Share of steps spent ramping the learning rate up.")
    batch_size: int = Field(4, ge=1, le=4096, description="Rows per device per step.")
    gradient_accumulation: int = Field(
        1, ge=1, le=4096, description="Steps whose gradients are summed before an update (effective batch = batch × this)."
    )
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in the backward pass: much less memory, ~30% slower."
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="Compute precision; 'auto' uses bf16 on GPUs that support it, fp32 on CPU."
    )
    optimizer: Literal["adamw_torch", "adamw_8bit", "paged_adamw_8bit", "sgd", "adafactor"] = Field(
        "adamw_torch", description="Optimizer; the 8-bit ones save memory and need CUDA."
    )
    weight_decay: float = Field(0.0, ge=0.0, le=1.0, description="L2 penalty on weights.")
    max_grad_norm: float = Field(1.0, ge=0.0, le=1000.0, description="Clip gradients to this norm (0 disables).")
    seed: int = Field(42, ge=0, description="Random seed for shuffling, splitting and initialisation.")
    logging_steps: int = Field(5, ge=1, description="Record loss and learning rate every N steps.")
    eval_steps: int | None = Field(
        None, ge=1, description="Evaluate every N steps; empty evaluates once per epoch (needs validation data)."
    )
    save_steps: int = Field(100, ge=1, description="Save a checkpoint every N steps.")
    save_total_limit: int = Field(2, ge=1, le=1000, description="Keep at most this many checkpoints.")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when eval loss has not improved for N evaluations (needs validation data)."
    )
    liger: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Liger kernels (fused RMSNorm, RoPE, SwiGLU and cross-entropy, less memory, faster); 'auto' "
        "uses them on an NVIDIA GPU when the liger-kernel package is installed and supports the model.",
    )
    loss: Literal["auto", "standard", "chunked"] = Field(
        "auto",
        description="How the loss is computed: 'chunked' runs the output layer and cross-entropy a slice of "
        "tokens at a time, so the full fp32 logits are never held (same loss, far less memory at large "
        "vocabularies); 'auto' uses chunked (or Liger's fused loss) where the model supports it.",
    )

    # ---- where it runs: GPUs, processes, machines (launched by torchrun; see core/train/launcher.py)
    devices: Union[Literal["auto"], int, list[int]] = Field(
        "auto",
        description="GPUs the run uses: 'auto' takes the one with the most free memory; a count N takes the N "
        "with the most free memory; a list such as [0, 2] takes exactly those. Without GPUs, a count above 1 "
        "runs that many CPU processes (gloo).",
    )
    strategy: Literal["auto", "ddp", "fsdp", "deepspeed"] = Field(
        "auto",
        description="How several processes share the work: 'ddp' copies the model to every GPU; 'fsdp' and "
        "'deepspeed' (ZeRO) shard weights, gradients and optimizer states across them; 'auto' is ddp.",
    )
    zero_stage: Literal[1, 2, 3] = Field(
        2, description="DeepSpeed ZeRO stage: 1 shards optimizer states, 2 also gradients, 3 also weights."
    )
    nodes: int = Field(1, ge=1, le=4096, description="Machines taking part; more than 1 needs master_addr.")
    node_rank: int = Field(0, ge=0, description="This machine's number among the nodes, from 0 (0 is the master).")
    master_addr: str | None = Field(
        None, description="Host name or address of node 0, reachable from every node (multi-node runs only)."
    )
    master_port: int = Field(29500, ge=1024, le=65535, description="TCP port on node 0 for the processes to meet.")
    wait_for_gpu: bool = Field(
        False,
        description="Queue the run until its GPUs have enough free memory, instead of failing when a "
        "colleague holds them; the worker waits, so the TUI can be closed.",
    )
    wait_memory_gb: float | None = Field(
        None, gt=0, le=100000,
        description="Free memory to wait for on each GPU, in GiB; empty uses the memory estimate.",
    )
    wait_timeout_min: float | None = Field(
        None, gt=0, description="Give up waiting after this many minutes (the run fails with the reason); empty waits as long as it takes."
    )
    stall_factor: float = Field(
        10.0, ge=2.0, le=1000.0,
        description="Warn of a stall when no step completes for this many times the median step time "
        "(never sooner than stall_min_s).",
    )
    stall_min_s: float = Field(
        120.0, ge=1.0, description="Shortest silence, in seconds, that counts as a stall (checkpoints and evaluation pause the watch)."
    )
    report_to: Union[Literal["none"], list[Literal["tensorboard", "wandb", "mlflow", "trackio"]]] = Field(
        "none",
        description="Experiment trackers that receive the metrics as well: tensorboard, wandb, mlflow, trackio "
        "(several at once, installed with pip install 'sft-tui[trackers]'); 'none' keeps everything in the run folder.",
    )

    @model_validator(mode="before")
    @classmethod
    def _tracker_shorthand(cls, value: Any) -> Any:
        # ``report_to: wandb`` and ``report_to: [none]`` are what people write.
        if isinstance(value, dict) and isinstance(value.get("report_to"), (str, list)):
            value = dict(value)
            rt = value["report_to"]
            if isinstance(rt, str) and rt != "none":
                rt = [part.strip() for part in rt.split(",") if part.strip()]
            if isinstance(rt, list) and (rt == [] or rt == ["none"]):
                rt = "none"
            value["report_to"] = rt
        return value

    def trackers(self) -> list[str]:
        return [] if self.report_to == "none" else list(dict.fromkeys(self.report_to))


class OutputConfig(_Section):
    runs_dir: str | None = Field(None, description="Folder that holds run directories; empty uses sft-tui's data dir.")
    run_name: str | None = Field(
        None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=100,
        description="Run folder name; empty picks one from model and time.",
    )


class Config(_Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    method: MethodConfig = Field(default_factory=MethodConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="before")
    @classmethod
    def _shorthands(cls, value: Any) -> Any:
        # ``model: demo`` and ``data: file.jsonl`` are what people write first; accept them.
        if isinstance(value, dict):
            value = dict(value)
            if isinstance(value.get("model"), str):
                value["model"] = {"path": value["model"]}
            if isinstance(value.get("data"), (str, list)):
                value["data"] = {"path": value["data"]}
        return value

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_yaml(self, comments: bool = False) -> str:
        return dump_yaml(self, comments=comments)


SECTIONS: dict[str, type[_Section]] = {
    "model": ModelConfig,
    "data": DataConfig,
    "method": MethodConfig,
    "training": TrainingConfig,
    "output": OutputConfig,
}


def choices(key: str, auto: bool = True) -> tuple[Any, ...]:
    """The allowed values of a choice field (``"data.format"``), read from the schema itself.

    Every list of choices (CLI flags, the Data screen's selects, the format table) comes from here,
    so adding a value to a ``Literal`` adds it everywhere. ``auto=False`` leaves out ``"auto"``.
    """
    section, name = key.split(".")
    pending, found = [SECTIONS[section].model_fields[name].annotation], []
    while pending:
        annotation = pending.pop(0)
        if get_origin(annotation) is Literal:
            found += [v for v in get_args(annotation) if v not in found]
        else:
            pending += list(get_args(annotation))
    return tuple(v for v in found if auto or v != "auto")


# --------------------------------------------------------------------------- presets

PRESETS: dict[str, dict[str, Any]] = {
    # 60 steps at the usual LoRA rate (2e-4) barely move a model: on the demo the tuned answers were
    # still reviews and Evaluate showed ROUGE-L and BLEU falling. At 1e-3 (high, but for 60 steps and
    # warmed up over 6) the same steps teach the demo's task: eval loss 1.45 -> 0.20, ROUGE-L 0.02 ->
    # 0.83, BLEU 0.3 -> 80, exact match 0% -> 38% (seed 42, 50 rows; tests/test_demo_wins.py).
    "quick-test": {
        "_about": "A few minutes on any machine (the demo model: under a minute on a CPU): 60 steps at a high "
                  "learning rate, so even a short run shows what training does. Check the pipeline end to end "
                  "before a real run.",
        "training": {"epochs": 1.0, "max_steps": 60, "learning_rate": 1e-3, "warmup_ratio": 0.1,
                     "logging_steps": 2, "save_steps": 30, "eval_steps": 30},
        "data": {"max_length": 256},
        "method": {"lora_r": 8, "lora_alpha": 16},
    },
    "balanced": {
        "_about": "Sensible LoRA defaults for a 1-8B model on one GPU.",
        "method": {"type": "lora", "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05},
        "training": {"epochs": 3.0, "learning_rate": 2e-4, "batch_size": 4, "gradient_accumulation": 4,
                     "scheduler": "cosine", "warmup_ratio": 0.03},
        "data": {"max_length": 2048},
    },
    "low-memory": {
        "_about": "QLoRA 4-bit, small batch, gradient checkpointing and an 8-bit optimizer: fits big models on small GPUs.",
        "method": {"type": "qlora", "quantization_bits": 4, "lora_r": 16, "lora_alpha": 32},
        "training": {"batch_size": 1, "gradient_accumulation": 16, "gradient_checkpointing": True,
                     "optimizer": "paged_adamw_8bit"},
        "data": {"max_length": 1024},
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_about(name: str) -> str:
    return PRESETS[name]["_about"]


def apply_preset(config: Config, name: str) -> Config:
    """Return a copy of ``config`` with the preset's groups of values filled in."""
    if name not in PRESETS:
        raise ConfigError([Problem("preset", name, "unknown preset", _choices_fix(name, list(PRESETS)))])
    data = config.to_dict()
    for section, values in PRESETS[name].items():
        if section.startswith("_"):
            continue
        data[section].update(values)
    return Config.model_validate(data)


# --------------------------------------------------------------------------- problems


class Problem:
    """One thing wrong with a config, phrased so a person can fix it."""

    def __init__(self, field: str, value: Any, message: str, fix: str = "") -> None:
        self.field, self.value, self.message, self.fix = field, value, message, fix

    def __str__(self) -> str:
        shown = "" if self.value is _MISSING else f" = {self.value!r}"
        text = f"{self.field}{shown}: {self.message}"
        return f"{text} — {self.fix}" if self.fix else text

    def __repr__(self) -> str:
        return f"Problem({self!s})"

    def to_dict(self) -> dict[str, Any]:
        value = None if self.value is _MISSING else self.value
        return {"field": self.field, "value": value, "message": self.message, "fix": self.fix}


_MISSING = object()


class ConfigError(Exception):
    """Raised with every problem found at once, never just the first."""

    def __init__(self, problems: list[Problem], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{len(problems)} problem(s){where}:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


def _choices_fix(value: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{hint}choose one of: {', '.join(choices)}"


def _field_info(loc: tuple[Any, ...]):
    if len(loc) >= 2 and loc[0] in SECTIONS:
        return SECTIONS[loc[0]].model_fields.get(str(loc[1]))
    return None


def _bounds(info) -> str:
    parts = []
    for meta in getattr(info, "metadata", []):
        for name, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(meta, name, None) is not None:
                parts.append(f"{word} {getattr(meta, name)}")
    return " and ".join(parts)


def _lookup(raw: Any, loc: tuple[Any, ...]) -> Any:
    node = raw
    for key in loc:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return _MISSING
    return node


def _problem_from_error(err: dict[str, Any], raw: Any) -> Problem:
    # Past (section, field) pydantic adds union-member tags and list indexes; a person needs the key.
    loc = tuple(err["loc"][:2])
    field = ".".join(str(x) for x in loc) or "(top level)"
    value = _lookup(raw, loc)
    kind = err["type"]
    info = _field_info(loc)
    desc = info.description if info is not None and info.description else ""
    if kind == "extra_forbidden":
        section = loc[0] if len(loc) >= 2 else None
        known = list(SECTIONS[section].model_fields) if section in SECTIONS else list(SECTIONS)
        return Problem(field, _MISSING, "unknown key", _choices_fix(loc[-1], known))
    if kind in ("literal_error", "enum"):
        expected = err.get("ctx", {}).get("expected", "")
        choices = [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
        if info is not None and "list" in str(info.annotation):
            return Problem(field, value, "not an allowed value", desc)
        return Problem(field, value, "not an allowed value", _choices_fix(value, choices))
    if kind.startswith(("greater", "less")):
        return Problem(field, value, "out of range", f"use a value {_bounds(info)}" + (f" ({desc})" if desc else ""))
    if kind == "string_pattern_mismatch":
        return Problem(field, value, "not a valid name", "use letters, digits, '.', '_' or '-', starting with a letter or digit")
    if kind == "missing":
        return Problem(field, _MISSING, "required", desc or "add this key")
    want = {"int_parsing": "a whole number", "int_from_float": "a whole number", "float_parsing": "a number",
            "bool_parsing": "true or false", "string_type": "text", "dict_type": "a mapping of names",
            "list_type": "a list", "model_type": "a mapping of keys"}.get(kind.split(".")[0])
    if want:
        return Problem(field, value, f"wrong type: expected {want}", desc)
    return Problem(field, value, err.get("msg", "invalid"), desc)


# --------------------------------------------------------------------------- cross-field rules


class Environment:
    """What the machine can do. Probed lazily: importing torch costs seconds, and most configs
    never ask (only qlora, 8-bit optimizers and fp16/bf16 do). Pass values to test without probing."""

    def __init__(self, cuda_available: bool | None = None, bf16_supported: bool | None = None) -> None:
        self._cuda, self._bf16 = cuda_available, bf16_supported

    @classmethod
    def detect(cls) -> "Environment":
        return cls()

    @property
    def cuda_available(self) -> bool:
        if self._cuda is None:
            import torch

            self._cuda = bool(torch.cuda.is_available())
        return self._cuda

    @property
    def bf16_supported(self) -> bool:
        if self._bf16 is None:
            import torch

            self._bf16 = bool(self.cuda_available and torch.cuda.is_bf16_supported())
        return self._bf16


def cross_check(config: Config, env: Environment | None = None) -> list[Problem]:
    """Rules that involve several fields or the machine; each names the fix."""
    p: list[Problem] = []
    m, t, d = config.method, config.training, config.data
    if m.quantization_bits is not None and m.type != "qlora":
        p.append(Problem("method.quantization_bits", m.quantization_bits, f"quantization only applies to qlora, not {m.type}",
                         "set method.type: qlora, or remove quantization_bits"))
    if m.type == "full" and (m.use_dora or m.use_rslora):
        p.append(Problem("method.use_dora" if m.use_dora else "method.use_rslora", True,
                         "DoRA/rsLoRA are LoRA options and do nothing for full fine-tuning", "set method.type: lora, or turn the option off"))
    has_validation = d.validation_split > 0 or d.validation_path is not None
    if t.eval_steps is not None and not has_validation:
        p.append(Problem("training.eval_steps", t.eval_steps, "evaluation needs validation data",
                         "set data.validation_split above 0 or data.validation_path, or remove eval_steps"))
    if t.early_stopping_patience is not None and not has_validation:
        p.append(Problem("training.early_stopping_patience", t.early_stopping_patience, "early stopping needs validation data",
                         "set data.validation_split above 0 or data.validation_path"))
    if isinstance(m.target_modules, list) and not m.target_modules:
        p.append(Problem("method.target_modules", [], "no layers to adapt", "use 'all-linear' or name layers such as q_proj, v_proj"))
    p += _placement_problems(t)
    if m.type == "qlora" and m.bits == 8 and t.strategy == "fsdp":
        p.append(Problem("training.strategy", "fsdp", "FSDP shards only 4-bit QLoRA weights, not 8-bit ones",
                         "use method.quantization_bits: 4, or strategy: ddp"))
    if env is not None:
        if m.type == "qlora" and not env.cuda_available:
            p.append(Problem("method.type", "qlora", "qlora needs an NVIDIA GPU with CUDA (bitsandbytes), and none was found",
                             "use method.type: lora on this machine, or run on a CUDA machine"))
        if t.optimizer in ("adamw_8bit", "paged_adamw_8bit") and not env.cuda_available:
            p.append(Problem("training.optimizer", t.optimizer, "8-bit optimizers need CUDA (bitsandbytes)",
                             "use optimizer: adamw_torch on this machine"))
        if t.precision == "fp16" and not env.cuda_available:
            p.append(Problem("training.precision", "fp16", "fp16 training needs a GPU", "use precision: auto or fp32"))
        if t.precision == "bf16" and env.cuda_available and not env.bf16_supported:
            p.append(Problem("training.precision", "bf16", "this GPU does not support bf16", "use precision: fp16 or auto"))
    return p


def _placement_problems(t: TrainingConfig) -> list[Problem]:
    """Devices, strategy and nodes that cannot work, whatever the machine."""
    import importlib.util

    p: list[Problem] = []
    if isinstance(t.devices, int) and t.devices < 1:
        p.append(Problem("training.devices", t.devices, "a run needs at least one device",
                         "use 'auto', a count of 1 or more, or GPU indices such as [0, 1]"))
    if isinstance(t.devices, list):
        if not t.devices:
            p.append(Problem("training.devices", [], "no GPUs listed", "use 'auto', a count, or indices such as [0, 1]"))
        elif any(i < 0 for i in t.devices) or len(set(t.devices)) != len(t.devices):
            p.append(Problem("training.devices", t.devices, "GPU indices must be distinct and 0 or more",
                             "list each GPU once, e.g. [0, 1] (`sft-tui gpus` shows them)"))
    if t.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        p.append(Problem("training.strategy", "deepspeed", "the deepspeed package is not installed",
                         "pip install deepspeed (on a CUDA machine), or use strategy: fsdp, which needs nothing more"))
    if t.nodes > 1 and not t.master_addr:
        p.append(Problem("training.master_addr", None, f"a run on {t.nodes} nodes needs the address of node 0",
                         "set training.master_addr to a host name or IP that every node can reach"))
    if t.node_rank >= t.nodes:
        p.append(Problem("training.node_rank", t.node_rank, f"must be below the node count ({t.nodes})",
                         f"number the nodes 0..{t.nodes - 1}; node 0 is the master"))
    return p


# --------------------------------------------------------------------------- loading


def parse_config(raw: Any, source: str | None = None, env: Environment | None = None) -> Config:
    """Validate a plain mapping; raise ConfigError listing every problem."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([Problem("(top level)", raw, "a config must be a mapping of sections",
                                   "start from `sft-tui config new`")], source)
    problems: list[Problem] = []
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        shorthand = Config._shorthands(raw)
        problems = _dedupe([_problem_from_error(e, shorthand) for e in exc.errors()])
        problems += _cross_check_rest(shorthand, problems, env)
        raise ConfigError(problems, source) from None
    problems = cross_check(config, env)
    if problems:
        raise ConfigError(problems, source)
    return config


def _cross_check_rest(raw: dict[str, Any], found: list[Problem], env: Environment | None) -> list[Problem]:
    """Run the cross-field rules on what did parse, so one typo does not hide a contradiction."""
    pruned = {k: dict(v) if isinstance(v, dict) else v for k, v in raw.items()}
    for prob in found:
        parts = prob.field.split(".")
        if len(parts) == 1:
            pruned.pop(parts[0], None)
        elif isinstance(pruned.get(parts[0]), dict):
            pruned[parts[0]].pop(parts[1], None)
    try:
        config = Config.model_validate(pruned)
    except ValidationError:
        return []
    fields = {p.field for p in found}
    return [p for p in cross_check(config, env) if p.field not in fields]


def _dedupe(problems: list[Problem]) -> list[Problem]:
    # A Union field reports one error per member; one message per field is enough.
    seen: dict[str, Problem] = {}
    for prob in problems:
        seen.setdefault(prob.field, prob)
    return list(seen.values())


def load_config(path: str | Path, env: Environment | None = None) -> Config:
    path = Path(path)
    if not path.exists():
        raise ConfigError([Problem("(file)", str(path), "config file not found",
                                   "check the path, or create one with `sft-tui config new > FILE`")], str(path))
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        reason = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([Problem("(yaml)", _MISSING, f"not valid YAML at {where}: {reason}",
                                   "check indentation and that 'key: value' pairs use a space after the colon")],
                          str(path)) from None
    return parse_config(raw, str(path), env)


def save_config(config: Config, path: str | Path, comments: bool = True) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_yaml(config, comments=comments), encoding="utf-8")
    return path


def dump_yaml(config: Config, comments: bool = False) -> str:
    data = config.to_dict()
    if not comments:
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    out = io.StringIO()
    out.write("# sft-tui run configuration. Validate with: sft-tui config validate FILE\n")
    for section, cls in SECTIONS.items():
        out.write(f"\n{section}:\n")
        for name, info in cls.model_fields.items():
            if info.description:
                out.write(f"  # {info.description}\n")
            dumped = yaml.safe_dump({name: data[section][name]}, sort_keys=False, allow_unicode=True,
                                    default_flow_style=True, width=1000).strip()
            if dumped.startswith("{") and dumped.endswith("}"):
                dumped = dumped[1:-1]
            out.write(f"  {dumped}\n")
    return out.getvalue()
