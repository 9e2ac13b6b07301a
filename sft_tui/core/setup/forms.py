"""The training form without the UI: which fields it shows, in which groups, and how the text a
person typed becomes a validated config with each problem pinned to its field.

The TUI's training screen only draws what this module describes; every rule lives in
``sft_tui.core.config`` (the schema), so the form, the YAML comments and ``sft-tui config validate``
can never disagree.
"""

from __future__ import annotations

import re
import types

from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from sft_tui.core.config import PRESETS, SECTIONS, Config, ConfigError, Environment, Problem, parse_config, preset_about

Kind = Literal["choice", "bool", "int", "float", "text", "modules"]

# (group id, title, fields) in the order the form shows them: the schema's sections, split the way
# a person thinks about a run (what is trained, how fast, for how long, how it is checked and kept).
GROUPS: list[tuple[str, str, list[str]]] = [
    ("method", "Method", ["method.type"]),
    ("lora", "LoRA", ["method.lora_r", "method.lora_alpha", "method.lora_dropout", "method.target_modules",
                      "method.use_dora", "method.use_rslora"]),
    ("quantization", "Quantization", ["method.quantization_bits", "model.dtype"]),
    ("optimisation", "Optimisation", ["training.learning_rate", "training.optimizer", "training.batch_size",
                                      "training.gradient_accumulation", "training.gradient_checkpointing",
                                      "training.precision", "training.weight_decay", "training.max_grad_norm",
                                      "training.liger", "training.loss"]),
    ("schedule", "Schedule", ["training.epochs", "training.max_steps", "training.scheduler",
                              "training.warmup_ratio", "training.seed"]),
    ("sequences", "Sequences", ["data.max_length", "data.truncation", "data.packing", "data.padding_free",
                                "data.group_by_length", "data.train_on_prompt", "data.multi_turn", "data.num_proc"]),
    ("evaluation", "Evaluation", ["data.validation_split", "data.validation_path", "training.eval_steps",
                                  "training.early_stopping_patience"]),
    ("saving", "Saving", ["training.save_steps", "training.save_total_limit", "training.logging_steps",
                          "output.run_name", "output.runs_dir"]),
    ("model", "Model loading", ["model.attn_implementation", "model.trust_remote_code", "model.revision"]),
    ("hardware", "GPUs and processes", ["training.devices", "training.strategy", "training.zero_stage",
                                        "training.wait_for_gpu", "training.wait_memory_gb",
                                        "training.wait_timeout_min"]),
    ("nodes", "Several machines", ["training.nodes", "training.node_rank", "training.master_addr",
                                   "training.master_port"]),
    ("watching", "Watching the run", ["training.report_to", "training.stall_factor", "training.stall_min_s"]),
]

# Fields edited on another screen (the step that owns them), so the form leaves them alone.
ELSEWHERE: dict[str, str] = {
    "model.path": "model", "data.path": "data", "data.format": "data", "data.columns": "data",
    "data.template": "data", "data.system_prompt": "data", "data.skip_bad_rows": "data",
}

_LABELS = {
    "padding_free": "padding-free", "group_by_length": "length grouping", "liger": "Liger kernels",
    "type": "method", "lora_r": "rank (r)", "lora_alpha": "alpha", "lora_dropout": "dropout",
    "target_modules": "target modules", "use_dora": "DoRA", "use_rslora": "rsLoRA",
    "quantization_bits": "bits", "dtype": "weight dtype", "learning_rate": "learning rate",
    "gradient_accumulation": "grad accumulation", "gradient_checkpointing": "grad checkpointing",
    "max_grad_norm": "max grad norm", "attn_implementation": "attention",
    "trust_remote_code": "trust remote code", "early_stopping_patience": "early stop patience",
    "save_total_limit": "keep checkpoints", "num_proc": "tokenize processes", "multi_turn": "multi-turn rows",
    "zero_stage": "ZeRO stage", "wait_for_gpu": "wait for GPUs", "wait_memory_gb": "wait for GiB free",
    "wait_timeout_min": "give up after (min)", "node_rank": "this node's rank", "master_addr": "master address",
    "master_port": "master port", "report_to": "trackers", "stall_factor": "stall after × median step",
    "stall_min_s": "stall at least (s)",
}


@dataclass(frozen=True)
class FormField:
    key: str  # "training.learning_rate"
    section: str
    name: str
    label: str
    help: str
    kind: Kind
    choices: tuple[str, ...] = ()
    optional: bool = False  # empty means "not set" (None)

    @property
    def widget_id(self) -> str:
        return "f-" + self.key.replace(".", "-").replace("_", "-")


def _unwrap(annotation: Any) -> tuple[list[Any], bool]:
    """The union members of an annotation (flattened) and whether None is one of them."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members: list[Any] = []
        for arg in get_args(annotation):
            sub, _ = _unwrap(arg)
            members.extend(sub)
        optional = any(m is type(None) for m in members)
        return [m for m in members if m is not type(None)], optional
    return [annotation], False


def _kind(annotation: Any) -> tuple[Kind, tuple[str, ...], bool]:
    members, optional = _unwrap(annotation)
    if any(get_origin(m) is list for m in members):
        # A named default or a list (target modules, trackers, GPU indices): typed as comma-separated text.
        words = tuple(str(v) for m in members if get_origin(m) is Literal for v in get_args(m))
        return "modules", words, optional
    if all(get_origin(m) is Literal for m in members):
        choices = tuple(str(v) for m in members for v in get_args(m))
        return "choice", choices, optional
    only = members[0] if len(members) == 1 else None
    if only is bool:
        return "bool", (), optional
    if only is int:
        return "int", (), optional
    if only is float:
        return "float", (), optional
    return "text", (), optional


def _build_fields() -> dict[str, FormField]:
    out: dict[str, FormField] = {}
    for _, _, keys in GROUPS:
        for key in keys:
            section, name = key.split(".")
            info = SECTIONS[section].model_fields[name]
            kind, choices, optional = _kind(info.annotation)
            out[key] = FormField(key, section, name, _LABELS.get(name, name.replace("_", " ")),
                                 info.description or "", kind, choices, optional)
    return out


FIELDS: dict[str, FormField] = _build_fields()


def groups() -> list[tuple[str, str, list[FormField]]]:
    return [(gid, title, [FIELDS[k] for k in keys]) for gid, title, keys in GROUPS]


# --------------------------------------------------------------------------- values <-> text


def format_number(value: float | int) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    text = f"{value:g}"
    return text


def value_of(config: Config, key: str) -> Any:
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def display_value(config: Config, key: str) -> str | bool:
    """What the widget for ``key`` shows: bool for switches, text for everything else ('' = unset)."""
    f = FIELDS[key]
    value = value_of(config, key)
    if f.kind == "bool":
        return bool(value)
    if value is None:
        return ""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, (int, float)):
        return format_number(value)
    return str(value)


def parse_value(f: FormField, value: Any) -> Any:
    """Turn widget text into the value the schema expects; text that cannot be converted is passed
    through unchanged so the schema reports it with its own words (and the field's bounds)."""
    if f.kind == "bool":
        return bool(value)
    text = "" if value is None else str(value).strip()
    if text == "" and (f.optional or f.kind in ("text",)):
        return None if f.optional else text
    if f.kind == "int":
        try:
            return int(text.replace("_", ""))
        except ValueError:
            try:
                number = float(text)
            except ValueError:
                return text
            return int(number) if number.is_integer() else number
    if f.kind == "float":
        try:
            return float(text.replace("_", ""))
        except ValueError:
            return text
    if f.kind == "choice":
        return int(text) if text.isdigit() and all(c.isdigit() for c in f.choices) else text
    if f.kind == "modules":
        if text in f.choices:
            return text
        if text == "":  # no trackers is "none"; no layers stays an empty list, which the schema refuses
            return "none" if "none" in f.choices else []
        parts = [part for part in re.split(r"[\s,]+", text.strip("[]")) if part]
        if f.key == "training.devices":  # "2" is a count, "0, 2" or "[1]" are GPU indices
            numbers = [int(p) if p.isdigit() else p for p in parts]
            return numbers[0] if len(numbers) == 1 and "," not in text and "[" not in text else numbers
        return parts
    return text


# --------------------------------------------------------------------------- validation


@dataclass
class FormResult:
    config: Config | None  # None while anything is wrong
    problems: dict[str, list[Problem]] = field(default_factory=dict)  # form field key -> problems
    other: list[Problem] = field(default_factory=list)  # problems in fields owned by other screens

    @property
    def valid(self) -> bool:
        return self.config is not None

    @property
    def count(self) -> int:
        return sum(len(v) for v in self.problems.values()) + len(self.other)


def problem_text(problem: Problem) -> str:
    return f"{problem.message} — {problem.fix}" if problem.fix else problem.message


def build_config(base: Config, values: dict[str, Any], env: Environment | None = None) -> FormResult:
    """Apply the form's ``values`` (field key -> widget value) on top of ``base`` and validate it all.

    Every problem is returned at once; those that name a form field are keyed by it so the form can
    show them at the field, the rest (e.g. data.path) go to ``other``.
    """
    raw = base.to_dict()
    for key, value in values.items():
        f = FIELDS[key]
        raw[f.section][f.name] = parse_value(f, value)
    try:
        config = parse_config(raw, source="the form", env=env)
    except ConfigError as exc:
        result = FormResult(None)
        for problem in exc.problems:
            if problem.field in FIELDS:
                result.problems.setdefault(problem.field, []).append(problem)
            else:
                result.other.append(problem)
        return result
    return FormResult(config)


def preset_choices() -> list[tuple[str, str]]:
    """(name, one-line description) of each preset, for a picker."""
    return [(name, str(values.get("_about", ""))) for name, values in PRESETS.items()]


def dump_changed(old: Config, new: Config) -> bool:
    """True when two configs differ in any value (what would be written to YAML)."""
    return old.to_dict() != new.to_dict()


__all__ = [
    "ELSEWHERE", "FIELDS", "FormField", "FormResult", "GROUPS", "build_config",
    "display_value", "dump_changed", "format_number", "preset_about", "groups", "parse_value", "preset_choices",
    "problem_text", "value_of",
]
