"""What every importer and exporter shares: the result type, the field-by-field builder, path rules.

The builder validates each value against sft-tui's own schema the moment it is mapped, so a value the
schema would reject becomes an ``unmapped`` entry with the schema's reason, never an exception; the
cross-field rules (``config.cross_check``) run at the end and move what they reject there too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from sft_tui.core.config import SECTIONS, Config, _problem_from_error, cross_check
from sft_tui.core.errors import UserError

SOURCES = ("axolotl", "llamafactory", "trl")
TOOL_NAMES = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory", "trl": "TRL"}
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".arrow", ".txt", ".tsv")
NO_EQUIVALENT = "no sft-tui equivalent"
# Why common settings have no equivalent, by their last name part (``SFTConfig.output_dir`` -> output_dir).
REASONS = {
    "output_dir": "sft-tui writes each run to its own run directory (output.runs_dir/output.run_name)",
    "overwrite_output_dir": "sft-tui never writes into an existing run directory",
    "ddp_timeout": "sft-tui sets the timeout of the processes' collective calls from the "
                   "SFT_TUI_COLLECTIVE_TIMEOUT_S environment variable (default 600 s)",
    "run_name": "sft-tui names each tracker run after its run folder (output.run_name)",
    "ddp_backend": "sft-tui uses nccl between GPUs and gloo between CPU processes",
    "ddp_find_unused_parameters": "sft-tui sets it itself (off when training LoRA adapters)",
    "resume_from_checkpoint": "resume a run with `sft-tui train --resume RUN`",
    "push_to_hub": "export the trained adapter with `sft-tui export RUN`",
    "hub_model_id": "export the trained adapter with `sft-tui export RUN`",
}


class Unmapped(NamedTuple):
    """A peer setting that did not become part of the sft-tui config, and why."""

    key: str
    value: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.key} = {self.value!r}: {self.reason}"


@dataclass
class ImportResult:
    config: Config
    source: str
    unmapped: list[Unmapped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mapped: dict[str, str] = field(default_factory=dict)  # sft-tui field -> the peer key it came from

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "config": self.config.to_dict(), "mapped": dict(self.mapped),
                "unmapped": [{"key": u.key, "value": u.value, "reason": u.reason} for u in self.unmapped],
                "notes": list(self.notes)}


class Skip(Exception):
    """Raised by a value converter: the value has no sft-tui equivalent (the message says why)."""


class Builder:
    """Collects mapped values for one import, validating each against the schema as it goes."""

    def __init__(self, source: str, raw: dict[str, Any]) -> None:
        self.source = source
        self.raw = raw
        self.used: set[str] = set()
        self.values: dict[str, Any] = {}
        self.origin: dict[str, str] = {}
        self.recorded: dict[str, Any] = {}
        self.unmapped: list[Unmapped] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------ reading the peer's keys

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def take(self, key: str, default: Any = None) -> Any:
        """The peer's value for ``key`` (its documented default when absent); marks it handled."""
        self.used.add(key)
        value = self.raw.get(key)
        return default if value is None else value

    # ------------------------------------------------------------------ writing sft-tui fields

    def set(self, target: str, value: Any, key: str, *, record: Any = None) -> bool:
        """Map ``key`` to the sft-tui field ``target`` ("section.name"); False (and an unmapped entry)
        if the schema rejects the value. ``record`` is the value to report, when not ``value``."""
        self.used.add(key)
        section, name = target.split(".")
        try:
            checked = SECTIONS[section].model_validate({name: value})
        except ValidationError as exc:
            error = dict(exc.errors()[0])
            error["loc"] = (section, *error["loc"])  # so the schema's bounds and descriptions are found
            problem = _problem_from_error(error, {section: {name: value}})
            reason = f"sft-tui would reject it ({target}): {problem.message}"
            if problem.fix:
                reason += f"; {problem.fix}"
            self.skip(key, value if record is None else record, reason)
            return False
        self.values[target] = getattr(checked, name)
        self.origin[target] = key
        self.recorded[target] = value if record is None else record  # what the peer wrote, for reports
        return True

    def skip(self, key: str, value: Any, reason: str = NO_EQUIVALENT) -> None:
        self.used.add(key)
        if not any(u.key == key for u in self.unmapped):
            self.unmapped.append(Unmapped(key, _plain(value), reason))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def convert(self, target: str, key: str, converter: Any, default: Any = None) -> bool:
        """``set`` after ``converter(value)``; a converter raising ``Skip`` makes an unmapped entry."""
        if not self.has(key) and default is None:
            self.used.add(key)
            return False
        value = self.take(key, default)
        try:
            converted = converter(value)
        except Skip as why:
            self.skip(key, value, str(why))
            return False
        return self.set(target, converted, key, record=value)

    # ------------------------------------------------------------------ the end

    def finish(self, ignore: tuple[str, ...] = ()) -> ImportResult:
        for key, value in self.raw.items():
            if key in self.used or key in ignore or value is None:
                continue
            key = str(key)  # YAML reads `123:` or `true:` as a number or a bool
            self.skip(key, value, REASONS.get(key.rsplit(".", 1)[-1], NO_EQUIVALENT))
        config = self._config()
        for _ in range(10):  # each pass moves the fields the cross-field rules reject to unmapped
            problems = [p for p in cross_check(config) if p.field in self.values]
            if not problems:
                break
            for prob in problems:
                self.values.pop(prob.field)
                value = self.recorded.pop(prob.field, None)
                key = self.origin.pop(prob.field)
                reason = f"sft-tui would reject it ({prob.field}): {prob.message}"
                self.unmapped.append(Unmapped(key, _plain(value), reason + (f"; {prob.fix}" if prob.fix else "")))
            config = self._config()
        config = self._placement(config)
        return ImportResult(config=config, source=self.source, unmapped=self.unmapped, notes=self.notes,
                            mapped=dict(sorted(self.origin.items())))

    def _placement(self, config: Config) -> Config:
        """A ZeRO stage without its strategy (moved to unmapped above) goes too; a sharding strategy on
        the default one device gets a note, since no peer config says how many GPUs it ran on."""
        t = config.training
        if "training.zero_stage" in self.values and t.strategy != "deepspeed":
            stage, key = self.values.pop("training.zero_stage"), self.origin.pop("training.zero_stage")
            self.note(f"{key}: ZeRO stage {stage} was left out with the strategy; set training.strategy: deepspeed "
                      f"and training.zero_stage: {stage} where deepspeed is installed")
            config = self._config()
        if t.strategy in ("fsdp", "deepspeed") and t.devices == "auto":
            tool = TOOL_NAMES.get(self.source, self.source)
            self.note(f"training.strategy {t.strategy} shards across several processes, but the {tool} config does not "
                      "say how many GPUs it ran on: set training.devices (a count such as 2, or GPU "
                      "indices such as [0, 1]); left at auto, sft-tui trains on one GPU")
        return config

    def _config(self) -> Config:
        data: dict[str, dict[str, Any]] = {}
        for target, value in self.values.items():
            section, name = target.split(".")
            data.setdefault(section, {})[name] = value
        return Config.model_validate(data)


def _plain(value: Any) -> Any:
    """Values as YAML/JSON can show them (tuples from scripts become lists)."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --------------------------------------------------------------------------- converters


def as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no"):
        return value.strip().lower() in ("true", "yes")
    raise Skip(f"expected true or false, got {value!r}")


def one_of(mapping: dict[Any, Any], what: str) -> Any:
    """A converter that maps the peer's names to sft-tui's, refusing any other value."""

    def convert(value: Any) -> Any:
        key = value.lower() if isinstance(value, str) else value
        if key in mapping:
            return mapping[key]
        raise Skip(f"{what} {value!r} is not supported by sft-tui (supported: "
                   f"{', '.join(str(k) for k in mapping)})")

    return convert


def warmup_from_steps(steps: Any, max_steps: Any) -> float:
    """A warmup in steps as sft-tui's share of steps: exact when the run's length is fixed."""
    try:
        steps = float(steps)
    except (TypeError, ValueError):
        raise Skip(f"expected a number of steps, got {steps!r}") from None
    if 0 <= steps < 1:
        return steps  # transformers 5 reads a float below 1 as a ratio
    if steps == 0:
        return 0.0
    if isinstance(max_steps, (int, float)) and max_steps > 0:
        return round(steps / float(max_steps), 6)
    raise Skip("sft-tui sets warmup as a share of the steps (training.warmup_ratio), and the number of "
               "steps is not known before training (no max_steps); set warmup_ratio instead")


# --------------------------------------------------------------------------- paths


def sample_name(path: str) -> str:
    """``sample:NAME`` for a file inside sft-tui's bundled sample data, else the path unchanged."""
    try:
        from sft_tui.core.paths import sample_data_dir

        root = sample_data_dir().resolve()
        resolved = Path(path).expanduser().resolve()
    except (FileNotFoundError, OSError, RuntimeError):
        return path
    if resolved.parent == root and resolved.is_file():
        return f"sample:{resolved.name}"
    return path


def export_path(path: str) -> str:
    """A data path as another tool must see it: ``sample:NAME`` becomes the bundled file's path."""
    from sft_tui.core.paths import resolve_sample

    if path.startswith("sample:"):
        return str(resolve_sample(path))
    return path


def is_local_path(path: str, base_dir: Path | None) -> bool:
    """A local file or folder (as opposed to a hub or registry id such as ``tatsu-lab/alpaca``)."""
    if not isinstance(path, str) or not path:
        return False
    if path.startswith("sample:"):
        return True
    if "://" in path:
        return False
    candidates = [Path(path).expanduser()]
    if base_dir is not None and not Path(path).is_absolute():
        candidates.append(base_dir / path)
    if any(c.exists() for c in candidates):
        return True
    if path.startswith(("/", "./", "../", "~")) or path.lower().endswith(DATA_SUFFIXES):
        return True
    return False


def loader_for(path: str) -> str | None:
    """The ``datasets`` builder that reads this file (json, csv, parquet, text); None for a folder."""
    suffix = os.path.splitext(path)[1].lower()
    return {".json": "json", ".jsonl": "json", ".csv": "csv", ".tsv": "csv", ".parquet": "parquet",
            ".arrow": "arrow", ".txt": "text"}.get(suffix)


def data_paths(config: Config) -> list[str]:
    paths = config.data.path if isinstance(config.data.path, list) else [config.data.path]
    return [export_path(p) for p in paths]


def fail(message: str, hint: str) -> UserError:
    return UserError(message, hint, kind="config")


def header(lines: list[str], title: str, prefix: str = "# ") -> str:
    out = [f"{prefix}{title}"]
    if lines:
        out.append(f"{prefix}Not carried over from the sft-tui config:")
        out += [f"{prefix}  - {line}" for line in lines]
    else:
        out.append(f"{prefix}Every sft-tui setting carried over.")
    return "\n".join(out) + "\n"


class _Head:
    """The first rows of a JSON Lines file, shaped like the slice of a dataset that detect_format reads."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.column_names = list(dict.fromkeys(k for r in rows for k in r))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, part: slice) -> dict[str, list[Any]]:
        rows = self.rows[part]
        return {c: [r.get(c) for r in rows] for c in self.column_names}


def detected_format(config: Config) -> str | None:
    """data.format, or for ``auto`` the format sft-tui detects in the first rows of a JSON Lines file
    (the other tools need it spelled out); None when it cannot be told without loading the data."""
    if config.data.format != "auto":
        return config.data.format
    import json

    path = data_paths(config)[0]
    if not path.endswith(".jsonl"):
        return None
    rows: list[dict[str, Any]] = []
    try:
        with open(Path(path).expanduser(), encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    row = json.loads(line)
                    if isinstance(row, dict):
                        rows.append(row)
                if len(rows) >= 50:
                    break
        from sft_tui.core.data.formats import detect_format

        found = detect_format(_Head(rows), config.data.columns or None)
    except Exception:  # noqa: BLE001 - a file that cannot be sampled keeps 'auto' and its note
        return None
    return found.format if found.format != "unknown" and found.confidence >= 0.5 else None


def format_for_export(config: Config, lost: list[str]) -> str:
    fmt = detected_format(config)
    if fmt is None:
        return "auto"
    if config.data.format == "auto":
        lost.append(f"data.format auto: written as {fmt}, the format detected in the first rows of the data")
    return fmt
