"""Pre-flight: everything that can be known before training, checked at once and reported together.

One function serves ``sft-tui config validate``, ``sft-tui train`` (which refuses a doomed run
before its run folder exists), the TUI's Start button and the worker. Each finding names the
config field, the value and the fix. ``deep=False`` keeps to what is cheap enough for every
keystroke (files exist, folders look right, runs dir writable); ``deep=True`` also reads the data
(malformed lines counted with their numbers, format detected, rows against the batch size) and
loads the tokenizer. Findings that can be wrong — the memory and disk estimates, a batch bigger
than the data — are ``forceable``: ``--force`` (or the TUI's confirm) starts the run anyway.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sft_tui.core.config import Config, Environment, cross_check
from sft_tui.core.errors import UserError
from sft_tui.core.format import human_bytes

SCAN_LINES = 2000  # lines of a JSON-lines file checked for malformed rows before training
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tiktoken.model", "spiece.model")


@dataclass
class Finding:
    field: str
    value: Any
    message: str
    fix: str = ""
    level: Literal["error", "warning"] = "error"
    forceable: bool = False

    def __str__(self) -> str:
        shown = "" if self.value is None else f" = {self.value!r}"
        return f"{self.field}{shown}: {self.message}" + (f" — {self.fix}" if self.fix else "")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Preflight:
    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # rows, format, model folder… for the UI
    deep: bool = False

    def add(self, *args: Any, **kwargs: Any) -> None:
        self.findings.append(Finding(*args, **kwargs))

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    def blocking(self, force: bool = False) -> list[Finding]:
        """The errors that stop a start (with ``force``, only those that cannot be wrong)."""
        return [f for f in self.errors if not (force and f.forceable)]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "deep": self.deep, "findings": [f.to_dict() for f in self.findings],
                "facts": self.facts}

    def raise_if_blocked(self, force: bool = False, source: str | None = None) -> None:
        blocking = self.blocking(force)
        if blocking:
            raise PreflightError(self, blocking, source)


class PreflightError(UserError):
    """A run refused before it started; carries every finding, not just the first."""

    def __init__(self, report: Preflight, blocking: list[Finding], source: str | None = None) -> None:
        self.report, self.blocking = report, blocking
        forceable = all(f.forceable for f in blocking)
        hint = ("these checks can be wrong: start anyway with --force (the TUI asks)" if forceable
                else "fix the fields above; `sft-tui config validate FILE` checks again")
        lines = [f"the run would fail: {len(blocking)} problem(s){' in ' + source if source else ''}:"]
        lines += [f"  ✗ {f}" for f in blocking]
        super().__init__("\n".join(lines), hint, kind="preflight")


# --------------------------------------------------------------------------- the checks


def preflight(config: Config, env: Environment | None = None, *, deep: bool = True,
              runs_dir: str | Path | None = None, gpus: Any = None, scan_lines: int = SCAN_LINES) -> Preflight:
    """Check ``config`` against this machine; never raises for a problem it can name."""
    report = Preflight(deep=deep)
    for p in cross_check(config, env):
        report.add(p.field, p.value, p.message, p.fix)
    _check_runs_dir(report, config, runs_dir)
    _check_trackers(report, config)
    files = _check_data_paths(report, config)
    folder = _check_model(report, config)
    if deep:
        if files:
            _check_data_content(report, config, files, scan_lines)
        if folder is not None:
            _check_tokenizer(report, config, folder)
    _check_sizes(report, config, folder, gpus, runs_dir)
    return report


def _check_trackers(report: Preflight, config: Config) -> None:
    """A tracker in report_to whose library is missing would fail at the first step: refuse it now."""
    from sft_tui.core.train.trackers import missing_fix, missing_packages

    missing = missing_packages(config.training.trackers())
    if missing:
        names = ", ".join(name for name, _ in missing)
        report.add("training.report_to", config.training.report_to,
                   f"the {names} package{'s are' if len(missing) > 1 else ' is'} not installed", missing_fix(missing))


def _check_runs_dir(report: Preflight, config: Config, runs_dir: str | Path | None) -> None:
    from sft_tui.core.run.rundir import runs_root

    try:
        root = runs_root(runs_dir or config.output.runs_dir)
    except UserError as exc:
        report.add("output.runs_dir", str(runs_dir or config.output.runs_dir or ""), exc.message, exc.hint)
        return
    report.facts["runs_dir"] = str(root)
    if config.output.run_name:
        from sft_tui.core.config import ConfigError
        from sft_tui.core.run.rundir import check_run_name

        try:
            check_run_name(config.output.run_name)
        except ConfigError as exc:
            for p in exc.problems:
                report.add(p.field, p.value, p.message, p.fix)


def _check_data_paths(report: Preflight, config: Config) -> list[Path]:
    from sft_tui.core.data import resolve_paths

    files: list[Path] = []
    for key, value in (("data.path", config.data.path), ("data.validation_path", config.data.validation_path)):
        if value is None:
            continue
        try:
            found = resolve_paths(value)
        except UserError as exc:
            report.add(key, value, exc.message, exc.hint)
            continue
        for item in found:
            if isinstance(item, str):
                report.add(key, item, "will be loaded from the Hugging Face hub when the run starts",
                           "download it once and point at the local copy to run offline", level="warning")
            elif key == "data.path":
                files.append(item)
    return files


def _check_model(report: Preflight, config: Config) -> Path | None:
    """The model's local folder when it can be known without building or downloading anything."""
    from sft_tui.core.models.load import hub_offline, is_model_dir, looks_like_hub_id

    name = config.model.path
    if name == "demo":
        from sft_tui.core.models.demo import demo_model_dir, is_built

        report.facts["model_folder"] = str(demo_model_dir())
        return demo_model_dir() if is_built() else None  # built on first use, in seconds
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir() or not is_model_dir(path):
            report.add("model.path", name, f"{path} is not a model folder (no config.json)",
                       "point model.path at the folder that holds config.json, the weights and the tokenizer")
            return None
        if not any((path / f).is_file() for f in TOKENIZER_FILES):
            report.add("model.path", name, "the model folder has no tokenizer files "
                       f"({', '.join(TOKENIZER_FILES[:3])}, …)", "copy the tokenizer files into the folder")
        _check_remote_code(report, config, path)
        report.facts["model_folder"] = str(path)
        return path
    if name.startswith(("/", ".", "~")) or not looks_like_hub_id(name) or (
            "/" in name and Path(name).parent.exists() and str(Path(name).parent) not in ("", ".")):
        report.add("model.path", name, "model folder not found",
                   "check the path (it may have been moved or deleted), or run `sft-tui models` to list models")
        return None
    from sft_tui.core.models.load import resolve_model

    try:
        folder = resolve_model(name, allow_download=False, revision=config.model.revision)
    except UserError as exc:
        if hub_offline():
            report.add("model.path", name, exc.message, exc.hint)
        else:
            report.add("model.path", name, "is not downloaded yet: the worker will download it first",
                       f"or download it now: hf download {name}", level="warning")
        return None
    _check_remote_code(report, config, folder)
    report.facts["model_folder"] = str(folder)
    return folder


def _check_remote_code(report: Preflight, config: Config, folder: Path) -> None:
    """A model whose config maps classes to its own .py files runs that code when loaded."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        report.add("model.path", config.model.path, "config.json cannot be read", "the download may be incomplete")
        return
    auto_map = cfg.get("auto_map") if isinstance(cfg, dict) else None
    if not auto_map or config.model.trust_remote_code:
        return
    modules = sorted({str(v).split("--")[-1].split(".")[0] + ".py" for v in
                      (auto_map.values() if isinstance(auto_map, dict) else [])
                      for v in (v if isinstance(v, list) else [v]) if v})
    report.add("model.trust_remote_code", False,
               f"this model needs its own Python code to load ({', '.join(modules) or 'auto_map in config.json'})",
               "set model.trust_remote_code: true only if you trust its authors (the code runs with your "
               "permissions), or choose a model that transformers supports natively")


def _check_data_content(report: Preflight, config: Config, files: list[Path], scan_lines: int) -> None:
    """Malformed lines (counted, with numbers), the format, and the rows against the batch size."""
    from sft_tui.core.data.formats import detect_for
    from sft_tui.core.data.loading import load_rows_detailed

    bad_total = 0
    for path in files:
        if path.suffix.lower() not in (".jsonl", ".ndjson", ".json") or not path.is_file():
            continue
        bad = _malformed_lines(path, scan_lines)
        if bad:
            bad_total += len(bad)
            lines = ", ".join(str(n) for n, _ in bad[:5]) + (" …" if len(bad) > 5 else "")
            message = (f"{path.name}: {len(bad)} malformed line(s) in the first {scan_lines} "
                       f"(line {lines}: {bad[0][1]})")
            if config.data.skip_bad_rows:
                report.add("data.path", str(path), message, "they will be left out (data.skip_bad_rows)",
                           level="warning")
            else:
                report.add("data.path", str(path), message,
                           "fix those lines, or set data.skip_bad_rows: true to leave them out")
    if bad_total and not config.data.skip_bad_rows:
        return
    try:
        loaded = load_rows_detailed(config.data.path, skip_bad_rows=True)
        detection = detect_for(loaded.dataset, config.data.format, config.data.columns)
    except UserError as exc:
        report.add("data.format" if exc.kind == "config" else "data.path", config.data.format
                   if exc.kind == "config" else config.data.path, exc.message, exc.hint)
        return
    rows = len(loaded.dataset)
    report.facts.update(rows=rows, format=detection.format)
    held_out = 0 if config.data.validation_path else int(rows * config.data.validation_split)
    train_rows = rows - held_out
    batch = config.training.batch_size
    if train_rows < batch:
        report.add("training.batch_size", batch, f"is more than the {train_rows} training row(s)",
                   f"use a batch size of {max(train_rows, 1)} or less, or add data", forceable=True)


def _malformed_lines(path: Path, limit: int) -> list[tuple[int, str]]:
    """The loader's own line scan over the first ``limit`` lines of a JSON-lines file."""
    from sft_tui.core.data.loading import _first_char, scan_jsonl

    try:
        if _first_char(path) == b"[":
            return []  # a JSON array: the loader reports its own parse error precisely
        bad = [(n, msg[:80]) for n, msg in scan_jsonl(path, max_lines=limit)]
    except OSError as exc:
        return [(0, f"cannot be read: {exc.strerror or exc}")]
    if len(bad) == 1 and bad[0][0] == 1 and path.suffix.lower() == ".json":
        return []  # one pretty-printed JSON object: not JSON lines at all; the loader reads it whole
    return bad


def _check_tokenizer(report: Preflight, config: Config, folder: Path) -> None:
    from sft_tui.core.models.load import load_tokenizer

    try:
        tokenizer = load_tokenizer(folder, trust_remote_code=config.model.trust_remote_code,
                                   what=repr(config.model.path))
    except UserError as exc:
        report.add("model.path", config.model.path, exc.message, exc.hint)
        return
    has_template = bool(getattr(tokenizer, "chat_template", None))
    report.facts["chat_template"] = has_template
    if not has_template and config.data.template == "auto" and report.facts.get("format") not in (None, "text"):
        report.add("data.template", "auto", "the tokenizer has no chat template, so chatml is used",
                   "fine for a base model you will prompt the same way; set data.template to choose", level="warning")


def _check_sizes(report: Preflight, config: Config, folder: Path | None, gpus: Any,
                 runs_dir: str | Path | None) -> None:
    """Disk for the adapter and two checkpoints; GPU memory from the estimate (both forceable).

    The memory estimate is per device, for the processes this machine would run (``_check_world``).
    """
    world = _check_world(report, config, gpus)
    if folder is None:
        return
    from sft_tui.core.models.describe import describe_model
    from sft_tui.core.models.memory import estimate_for_config, verdict

    try:
        info = describe_model(folder, trust_remote_code=config.model.trust_remote_code)
        est = estimate_for_config(config, info, world_size=world.world_size if world else 1)
    except Exception:  # noqa: BLE001 - an estimate we cannot make is no reason to refuse a run
        return
    trainable = est.trainable_params or 0
    weight_bytes = 2 if config.training.precision in ("bf16", "fp16") else 4
    adapter = trainable * weight_bytes
    checkpoint = adapter + trainable * 8 + (1 << 20)  # weights + Adam moments + trainer state
    need = adapter + 2 * checkpoint
    root = report.facts.get("runs_dir")
    if root:
        try:
            free = shutil.disk_usage(root).free
        except OSError:
            free = None
        report.facts["disk_needed"], report.facts["disk_free"] = need, free
        if free is not None and free < need:
            report.add("output.runs_dir", root, f"{human_bytes(free)} free, but the adapter and two checkpoints "
                       f"need about {human_bytes(need)}",
                       "free some space, lower training.save_total_limit, or choose another output.runs_dir",
                       forceable=True)
    if gpus is None:
        return
    v = verdict(est, gpus, _verdict_devices(config, world))
    report.facts["memory"] = {"needed": est.total, "verdict": v.level, "text": v.text,
                              "world_size": world.world_size if world else 1}
    if v.level == "does-not-fit":
        report.add("training.batch_size", config.training.batch_size, f"out of GPU memory likely: {v.text}",
                   "lower training.batch_size or data.max_length, turn on training.gradient_checkpointing, "
                   "or use method.type: qlora", forceable=True)


def _check_world(report: Preflight, config: Config, gpus: Any) -> Any:
    """The processes this machine would run (``launcher.World``), or None when its GPUs are unknown or
    the request cannot be met here — then a finding names the field, both numbers and the fix."""
    if gpus is None:
        return None
    from sft_tui.core.models.memory import gpu_count
    from sft_tui.core.train.launcher import WorldError, resolve_world

    try:
        world = resolve_world(config, gpu_count(gpus))
    except WorldError as exc:
        if not any(f.field == exc.field for f in report.findings):  # cross_check may have said it already
            report.add(exc.field, exc.value, exc.message, exc.hint)
        return None
    report.facts["world"] = world.to_dict()
    return world


def _verdict_devices(config: Config, world: Any) -> Any:
    """Which GPUs the memory verdict looks at: those listed, else as many of the roomiest as processes."""
    if world is None or world.device != "cuda":
        return None
    if isinstance(config.training.devices, list):
        return list(world.gpu_indices)
    return world.nproc_per_node
