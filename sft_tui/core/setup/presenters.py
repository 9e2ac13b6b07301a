"""Words and numbers the setup screens show, computed without any UI (and testable alone).

The model table's cells, the memory verdict in one line, a data row as table cells, the mapping a
format needs, a length histogram as text bars and a data report as short lines: the screens only
put these into widgets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

from sft_tui.core.config import Config, DataConfig
from sft_tui.core.format import human_bytes, human_context, human_count, shorten_path



# --------------------------------------------------------------------------- models


def model_choice_name(entry: Any) -> str:
    """What goes into config.model.path for a discovered model (portable where possible)."""
    if entry.source == "demo":
        return "demo"
    if entry.source == "hf-cache":
        return entry.name
    return str(entry.path) if entry.path is not None else entry.name


def model_cells(entry: Any, info: Any | None, failed: str | None = None) -> tuple[str, ...]:
    """(name, architecture, params, context, size, chat template) for the model table."""
    size = human_bytes(entry.size_bytes) if entry.size_bytes else ""
    if info is None:
        pending = "—" if failed else "…"
        if entry.source == "demo" and entry.path is None:
            return (entry.name, "not built", "", "", "", "")
        return (entry.name, pending, "", "", size, "")
    arch = (info.architecture or info.model_type or "?").removesuffix("ForCausalLM")
    size = size or human_bytes(info.disk_bytes)
    return (entry.name, arch, human_count(info.param_count), human_context(info.context_length), size,
            "✓" if info.has_chat_template else "✗")


def model_details(entry: Any | None, info: Any | None) -> list[tuple[str, str]]:
    """(label, value) lines for the details pane; no machine paths for the built-in demo."""
    if info is None:
        return []
    where = "built-in demo model" if (entry is not None and entry.source == "demo") or info.name == "demo" \
        else str(info.path)
    rows = [
        ("model", info.name),
        ("where", where),
        ("architecture", info.architecture or info.model_type or "?"),
        ("parameters", f"{human_count(info.param_count)} ({info.param_count_source})"),
        ("layers×hidden", f"{info.num_layers or '?'} × {info.hidden_size or '?'}"),
        ("context", str(info.context_length or "?")),
        ("vocabulary", str(info.vocab_size or "?")),
        ("dtype", info.dtype or "?"),
        ("on disk", human_bytes(info.disk_bytes)),
        ("tokenizer", "yes" if info.has_tokenizer else "missing"),
        ("chat template", "yes" if info.has_chat_template else "no (chatml is used)"),
        ("LoRA targets", ", ".join(info.lora_targets) or "?"),
    ]
    if info.quantization:
        rows.append(("quantized", f"{info.quantization} {info.quantization_bits or ''}".strip()))
    for warning in info.warnings:
        rows.append(("note", warning))
    return rows


@dataclass
class MemoryView:
    level: str  # fits | tight | does-not-fit | no-gpu | unknown
    headline: str
    lines: list[str] = field(default_factory=list)  # one fact a line, short enough not to break mid-figure
    brief: list[str] = field(default_factory=list)  # the few of them a narrow side panel shows


def _world(config: Config, gpus: Any) -> tuple[int, Any]:
    """(processes of the whole run, the GPUs of this machine it uses: indices or a count) — (1, None)
    when it cannot tell (the form shows that problem)."""
    from sft_tui.core.errors import UserError
    from sft_tui.core.models.memory import gpu_count
    from sft_tui.core.train.launcher import resolve_world

    try:
        world = resolve_world(config, gpu_count(gpus))
    except UserError:
        return 1, None
    devices = config.training.devices
    here = devices if isinstance(devices, list) else (world.nproc_per_node if world.world_size > 1 else None)
    return world.world_size, here


def memory_view(config: Config, info: Any, gpus: Any) -> MemoryView:
    """The estimate for ``config`` on this model against the GPUs found, in a few short lines."""
    from sft_tui.core.errors import UserError
    from sft_tui.core.models.memory import estimate_for_config, suggest, verdict

    world_size, here = _world(config, gpus)
    try:
        est = estimate_for_config(config, info, world_size=world_size)
    except UserError as exc:
        return MemoryView("unknown", str(exc.message if hasattr(exc, "message") else exc),
                          [exc.hint] if getattr(exc, "hint", "") else [])
    v = verdict(est, gpus, devices=here)
    m = config.method
    method = m.type if m.type != "qlora" else f"qlora {m.bits}-bit"
    setup = (f"{method}, batch {config.training.batch_size} × {config.data.max_length} tokens"
             + (", grad ckpt" if config.training.gradient_checkpointing else ""))
    # One part a line: run together, a narrow pane broke "573 MiB" between the number and its unit.
    parts = [f"  {name:<12}{human_bytes(value)}" for name, value in est.parts.items() if value]
    lines = [setup, *parts, f"trainable {human_count(est.trainable_params)} params", f"peak at {est.peak_phase}"]
    brief = [setup]
    if v.level in ("tight", "does-not-fit") and v.gpu_index is not None:
        free = (v.spare_bytes or 0) + est.total
        tip = suggest(est, int(free * 0.9))
        if tip:
            lines.append(f"try: {tip}")
            brief.append(f"try: {tip}")
    if world_size > 1:
        setup += f", {world_size} processes ({config.training.strategy if config.training.strategy != 'auto' else 'ddp'})"
        brief[0] = setup
        lines[0] = setup
    each = " per GPU" if world_size > 1 else ""
    headline = f"needs ~{human_bytes(est.total)}{each} — {v.text}"
    if v.level == "no-gpu":
        # Two short lines: run together, a narrow pane wrapped it mid-thought (or cut it, at 80×24).
        headline = f"needs ~{human_bytes(est.total)} of GPU memory\nno NVIDIA GPU: trains on CPU (slow)"
    return MemoryView(v.level, headline, lines, brief)


# --------------------------------------------------------------------------- text that must fit


def fit_paths(text: str, width: int) -> str:
    """``text`` with every path longer than ``width`` shortened by :func:`shorten_path`, so a narrow pane
    never breaks a path across lines mid-name (the rest of the words wrap as usual)."""
    import re

    def fit(match: "re.Match[str]") -> str:
        token = match.group(0)
        end = ""
        while token and token[-1] in ".,;:)'\"":  # a sentence's punctuation, not the path's
            token, end = token[:-1], token[-1] + end
        if "/" not in token or len(token) <= width:
            return match.group(0)
        return shorten_path(token, width) + end

    return re.sub(r"[^\s]+", fit, text)


# --------------------------------------------------------------------------- data


SAMPLE_FILES = ["reviews_alpaca.jsonl", "reviews_chat.jsonl", "reviews_sharegpt.jsonl",
                "reviews_prompt_completion.jsonl", "reviews_text.jsonl", "reviews_qa.csv"]


def sample_choices() -> list[tuple[str, str]]:
    """(label, data.path value) for each bundled sample file that exists."""
    from sft_tui.core.paths import sample_data_dir

    folder = sample_data_dir()
    names = [n for n in SAMPLE_FILES if (folder / n).exists()]
    names += sorted(p.name for p in folder.glob("*") if p.suffix in (".jsonl", ".csv", ".json", ".parquet")
                    and p.name not in names)
    return [(n, f"sample:{n}") for n in names]


def path_text(path: str | list[str]) -> str:
    return ", ".join(path) if isinstance(path, list) else str(path)


def parse_path_text(text: str) -> str | list[str]:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return parts[0] if len(parts) == 1 else parts


def mapping_fields(fmt: str) -> list[tuple[str, bool]]:
    """(field, required) the format reads; 'auto'/'unknown' show alpaca's, the usual fix."""
    from sft_tui.core.data.formats import FIELDS as FORMAT_FIELDS

    fmt = fmt if fmt in FORMAT_FIELDS else "alpaca"
    required, optional = FORMAT_FIELDS[fmt]
    return [(f, True) for f in required] + [(f, False) for f in optional]


def current_mapping(columns: dict[str, str], resolved: dict[str, str], field_name: str) -> str:
    """The dataset column that feeds ``field_name`` ('' when none): the user's mapping, else detection's."""
    for key, value in columns.items():
        if key == field_name:
            return value
        if value == field_name:
            return key
    return resolved.get(field_name, "")


def set_mapping(columns: dict[str, str], field_name: str, column: str | None) -> dict[str, str]:
    """A new data.columns with ``field_name`` read from ``column`` (None/'' removes the mapping)."""
    out = {k: v for k, v in columns.items() if k != field_name and v != field_name}
    if column and column != field_name:
        out[field_name] = column
    return out


def visible_columns(names: Iterable[str]) -> list[str]:
    return [c for c in names if not c.startswith("__")]


def cell_text(value: Any, width: int = 40) -> str:
    """One table cell: conversations summarised, text on one line, cut to ``width``."""
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        roles = [str(v.get("role") or v.get("from") or "?") for v in value]
        text = f"{len(value)} turns: " + "/".join(roles)
    elif value is None:
        text = ""
    else:
        text = str(value)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def row_cells(row: dict[str, Any], columns: list[str], width: int = 40) -> list[str]:
    line = row.get("__line__")
    return [str(line) if line is not None else "", *(cell_text(row.get(c), width) for c in columns)]


@dataclass
class RowPreview:
    segments: list[tuple[str, bool]] = field(default_factory=list)  # (text, trained)
    tokens: int = 0
    trained: int = 0
    original: int = 0
    truncated: bool = False
    error: str = ""
    template: str = ""

    @property
    def summary(self) -> str:
        if self.error:
            return self.error
        cut = f", cut from {self.original} to max_length" if self.truncated else ""
        return f"{self.tokens} tokens: {self.trained} trained, {self.tokens - self.trained} masked{cut}"


def preview_row(row: dict[str, Any], fmt: str, resolved: dict[str, str], data: DataConfig,
                tokenizer: Any, renderer: Any = None) -> RowPreview:
    """Exactly what training sees for one raw row: the rendered text split into masked/trained parts."""
    from sft_tui.core.data import BadRow, get_renderer, to_conversation, tokenize_conversation
    from sft_tui.core.errors import UserError

    try:
        conv = to_conversation(row, fmt, resolved, data.system_prompt)
        renderer = renderer or get_renderer(tokenizer, data.template)
        tr = tokenize_conversation(conv, tokenizer, renderer, data.max_length, data.train_on_prompt)
    except BadRow as exc:
        return RowPreview(error=f"this row cannot be trained on: {exc.detail}")
    except UserError as exc:
        return RowPreview(error=str(exc))
    return RowPreview(tr.segments(), len(tr.input_ids), tr.trained_tokens, tr.original_length, tr.truncated,
                      template=getattr(renderer, "name", ""))


def histogram_lines(stats: dict[str, Any], width: int = 30, max_bars: int = 10) -> list[str]:
    """The length histogram as text bars, merged to at most ``max_bars`` bins."""
    hist = stats.get("histogram")
    if not hist or not hist.get("counts"):
        return []
    edges, counts = list(hist["edges"]), list(hist["counts"])
    while len(counts) > max_bars:
        merged_c, merged_e = [], [edges[0]]
        for i in range(0, len(counts), 2):
            merged_c.append(sum(counts[i:i + 2]))
            merged_e.append(edges[min(i + 2, len(edges) - 1)])
        counts, edges = merged_c, merged_e
    top = max(counts) or 1
    label_w = len(f"{edges[-1]}")
    out = []
    for i, count in enumerate(counts):
        bar = "█" * max(1 if count else 0, round(count / top * width))
        out.append(f"{edges[i]:>{label_w}}–{edges[i + 1]:<{label_w}} {bar} {count}")
    return out


UNREADABLE_KINDS = ("bad_json",)  # problems the loader drops before a row exists: not among report.rows


def unreadable_count(problems: Any) -> int:
    """Lines of the file that could not be read as a row at all (a ProblemLog's bad JSON lines)."""
    return sum(int(problems.counts.get(kind, 0)) for kind in UNREADABLE_KINDS)


def rows_read(report: Any) -> int:
    """Every row of the file, the unreadable lines included: a user counts the lines they wrote."""
    return report.rows + unreadable_count(report.problems)


def rows_with_problems(report: Any) -> int:
    """Rows that will not be trained on: rows with problems plus lines that could not be read."""
    return report.rows_bad + unreadable_count(report.problems)


def skipped_lines_text(problems: Any, shown: int = 3) -> str:
    """'line 16 is not valid JSON: skipped, not trained on' for the lines the loader dropped ('' if none)."""
    count = unreadable_count(problems)
    if not count:
        return ""
    lines = [str(ex["line"]) for kind in UNREADABLE_KINDS for ex in problems.examples.get(kind, [])
             if ex.get("line") is not None]
    if count == 1:
        return f"{f'line {lines[0]}' if lines else '1 line'} is not valid JSON: skipped, not trained on"
    where = ", ".join(lines[:shown]) + ("…" if count > min(len(lines), shown) else "")
    return f"{count} lines are not valid JSON{f' (lines {where})' if lines else ''}: skipped, not trained on"


def report_lines(report: Any) -> list[str]:
    """The headline numbers of a tokenized data report; the usable count leaves out every bad row,
    the unreadable lines included (they never became rows, so ``report.rows`` does not count them)."""
    s = report.stats
    bad = rows_with_problems(report)
    lines = [f"{rows_read(report)} rows read, {report.rows_ok} usable"
             + (f", {bad} with problems" if bad else "")
             + (" (from cache)" if report.from_cache else "")]
    if report.examples not in (None, report.rows_ok):
        lines.append(f"{report.examples} training rows: one per answer (multi-turn rows: expand)")
    if report.template:
        template = "the tokenizer's chat template" if report.template == "tokenizer" else report.template
        lines.append(f"format {report.format}, rendered with {template}")
    lines += [f"template: {note}" for note in report.template_notes]
    if report.roles:
        lines.append("roles: " + "; ".join(f"{role} ← {where}" for role, where in report.roles.items()))
    length = s.get("length")
    if length:
        unit = s.get("unit", "tokens")
        lines.append(f"length ({unit}): min {length['min']}, median {length['p50']}, p95 {length['p95']}, "
                     f"max {length['max']}")
    if "tokens" in s:
        share = s.get("trained_share")
        lines.append(f"{s['tokens']} tokens, {s.get('trained_tokens', 0)} trained"
                     + (f" ({share:.0%})" if share is not None else ""))
    if "over_max_length" in s:
        over = s["over_max_length"]
        lines.append(f"truncated: {over} row(s) over max_length {s.get('max_length')}" if over
                     else f"truncated: none (max_length {s.get('max_length')})")
    pad = s.get("padding") or {}
    if "without_packing" in pad:
        text = f"padding waste: {pad['without_packing']:.0%} at batch {pad.get('batch_size')}"
        if "with_packing" in pad:
            text += f", {pad['with_packing']:.0%} with packing"
        lines.append(text)
    return lines


def problem_lines(report: Any, limit: int = 20) -> list[str]:
    """Each problem kind with its count and the first locations (file line numbers)."""
    out: list[str] = []
    for kind, info in report.problems.to_dict().items():
        out.append(f"{kind}: {info['count']} row(s) — {info['about']}")
        for ex in info["examples"]:
            where = f"line {ex['line']}" if ex.get("line") is not None else "row ?"
            out.append(f"  {where}: {ex.get('message', '')}")
            if len(out) >= limit:
                return out
    return out


__all__ = [
    "MemoryView", "RowPreview", "SAMPLE_FILES", "cell_text", "current_mapping", "fit_paths",
    "histogram_lines", "mapping_fields", "memory_view",
    "model_cells", "model_choice_name", "model_details", "parse_path_text", "path_text", "preview_row",
    "problem_lines", "report_lines", "row_cells", "rows_read", "rows_with_problems", "sample_choices",
    "set_mapping", "shorten_path", "skipped_lines_text", "unreadable_count", "visible_columns",
]


def gpu_holder_lines(snapshot: Any, holders: dict[int, list[Any]] | None, limit: int = 2) -> list[str]:
    """Each GPU's free memory and who holds it, for choosing a model on a shared server:
    "GPU1 H100 80GB HBM3: 9.0 GiB free of 80 GiB" then "  alice 71 GiB python train.py"."""
    if snapshot is None or not getattr(snapshot, "available", False):
        return []
    lines: list[str] = []
    for gpu in snapshot.gpus:
        name = (gpu.name or "GPU").replace("NVIDIA ", "")
        free = f"{human_bytes(gpu.mem_free)} free of {human_bytes(gpu.mem_total)}" if gpu.mem_free is not None else "n/a"
        lines.append(f"GPU{gpu.index} {name}: {free}")
        rows = (holders or {}).get(gpu.index) or []
        for h in rows[:limit]:
            who = f"run {h.run_name}" if h.run_name else h.label()
            lines.append(f"  {human_bytes(h.used_bytes, '?')} {who}")
        if len(rows) > limit:
            lines.append(f"  +{len(rows) - limit} more (sft-tui gpus)")
    return lines

