"""Walk in from a peer tool, walk out to another: Axolotl / LLaMA-Factory YAML and TRL scripts.

``import_config`` turns a peer's training config into sft-tui's ``Config`` and lists, by name, every
setting that did not carry over and why; ``export_config`` writes the equivalent peer config with a
header naming what does not carry over. Nothing here runs a peer's code or imports its package: YAML
is read with safe loading and a TRL script is parsed with ``ast``, literal values only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml

from sft_tui.core.config import Config

from ._common import SOURCES, ImportResult, Unmapped, fail
from .axolotl import export_axolotl, export_axolotl_files, import_axolotl
from .axolotl import looks_like as _looks_axolotl
from .llamafactory import DATA_INFO, dataset_info, export_llamafactory, export_llamafactory_files, import_llamafactory
from .llamafactory import looks_like as _looks_llamafactory
from .trl import export_trl, import_trl
from .trl import looks_like as _looks_trl

Source = Literal["axolotl", "llamafactory", "trl"]
TARGETS = SOURCES
HINT_FROM = "name the tool with --from axolotl, --from llamafactory or --from trl"

__all__ = ["import_config", "export_config", "export_files", "detect_source", "ImportResult", "Unmapped",
           "SOURCES", "TARGETS", "DATA_INFO", "dataset_info"]


def _read(path_or_text: str | Path) -> tuple[str, Path | None]:
    """(text, the file it came from) — a Path or a one-line string naming a file is read as a file."""
    is_path = isinstance(path_or_text, Path) or (
        isinstance(path_or_text, str) and path_or_text.strip() and "\n" not in path_or_text
        and len(path_or_text) < 4096
        and (Path(path_or_text).expanduser().exists() or path_or_text.endswith((".yaml", ".yml", ".py", ".json"))))
    if not is_path:
        return str(path_or_text), None
    path = Path(path_or_text).expanduser()
    if not path.exists():
        raise fail(f"{path}: file not found", "check the path")
    if path.is_dir():
        raise fail(f"{path} is a folder, not a config file", "give the training YAML or the TRL script itself")
    try:
        return path.read_text(encoding="utf-8"), path
    except UnicodeDecodeError:
        raise fail(f"{path} is not a text file", "give an Axolotl/LLaMA-Factory YAML or a TRL Python script") from None
    except OSError as exc:
        raise fail(f"{path} could not be read: {exc.strerror or exc}", "check that the file exists and that you may "
                   "read it") from None


def _yaml(text: str, where: str) -> dict:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise fail(f"{where} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}",
                   "a peer config is a YAML mapping (Axolotl, LLaMA-Factory) or a TRL Python script") from None
    if not isinstance(raw, dict):
        kind = "empty" if raw is None else {"str": "plain text", "list": "a YAML list"}.get(
            type(raw).__name__, f"a single {type(raw).__name__} value")
        raise fail(f"{where} is {kind}, not a mapping of settings",
                   "an Axolotl or LLaMA-Factory config is a YAML mapping such as `base_model: …`")
    return raw


def detect_source(text: str, path: Path | None = None) -> str:
    """Which tool wrote this config; raises a UserError naming the fix when it cannot tell."""
    where = str(path) if path else "the input"
    if (path is not None and path.suffix == ".py") or _looks_python(text):
        if _looks_trl(text):
            return "trl"
        raise fail(f"{where} looks like Python but has no SFTConfig(...), TrainingArguments(...) or "
                   "SFTTrainer(...) call", "give a TRL training script, or " + HINT_FROM)
    raw = _yaml(text, where)
    if {"model", "data", "method", "training"} & set(raw) and not (_looks_axolotl(raw) or _looks_llamafactory(raw)):
        raise fail(f"{where} is already an sft-tui config", f"use it as it is: sft-tui config validate {where}")
    scores = {"axolotl": _looks_axolotl(raw), "llamafactory": _looks_llamafactory(raw)}
    best = max(scores, key=lambda s: scores[s])
    if scores[best] == 0 or scores["axolotl"] == scores["llamafactory"]:
        raise fail(f"could not tell which tool {where} is for (no Axolotl or LLaMA-Factory keys found)", HINT_FROM)
    return best


def _looks_python(text: str) -> bool:
    head = "\n".join(line for line in text.splitlines()[:80] if line.strip() and not line.lstrip().startswith("#"))
    return any(line.startswith(("import ", "from ", "def ", "class ", '"""', "'''", "if __name__"))
               for line in head.splitlines())


def import_config(path_or_text: str | Path, source: Source | None = None, *,
                  base_dir: str | Path | None = None) -> ImportResult:
    """A peer's training config as an sft-tui ``Config``, plus what did not carry over.

    ``path_or_text`` is a file (Path, or a one-line string naming one) or the config's text;
    ``source`` None detects the tool. Relative data paths are looked up from ``base_dir`` (default:
    the file's folder). Raises ``UserError`` for input that is not a config at all; values that
    sft-tui's schema would reject become ``unmapped`` entries.
    """
    text, path = _read(path_or_text)
    folder = Path(base_dir) if base_dir is not None else (path.parent if path else None)
    if source is None:
        source = detect_source(text, path)  # type: ignore[assignment]
    if source not in SOURCES:
        raise fail(f"unknown source {source!r}", HINT_FROM)
    if source == "trl":
        result = import_trl(text, folder)
    else:
        raw = _yaml(text, str(path) if path else "the input")
        result = import_axolotl(raw, folder) if source == "axolotl" else import_llamafactory(raw, folder)
    return result


def export_config(config: Config, target: Source, *, dataset_dir: str = ".") -> str:
    """The equivalent Axolotl YAML, LLaMA-Factory YAML or TRL Python script, as text.

    LLaMA-Factory reads data through ``dataset_dir/dataset_info.json``: the header of its YAML holds
    the entries to put there (``export_files`` writes the file too).
    """
    if target == "axolotl":
        return export_axolotl(config)
    if target == "llamafactory":
        return export_llamafactory(config, dataset_dir=dataset_dir)
    if target == "trl":
        return export_trl(config)
    raise fail(f"unknown target {target!r}", "export to axolotl, llamafactory or trl")


def export_files(config: Config, target: Source, out_path: str | Path) -> dict[Path, str]:
    """Every file an export needs, by path: the config itself at ``out_path``, for LLaMA-Factory a
    ``dataset_info.json`` beside it (merged into one already there), and for strategy deepspeed with
    Axolotl or LLaMA-Factory the ZeRO config beside it (``ds_zeroN.json``; TRL holds it inline)."""
    out_path = Path(out_path)
    if target == "llamafactory":
        return export_llamafactory_files(config, out_path)
    if target == "axolotl":
        return export_axolotl_files(config, out_path)
    return {out_path: export_config(config, target)}
