"""`sft-tui data inspect`: the dataset pipeline's report on a terminal, or as JSON for scripts.

The JSON is ``DataReport.to_dict()`` unchanged, so the CLI, the TUI and scripts agree on one shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sft_tui.core.config import DataConfig, choices
from sft_tui.core.errors import UserError


def register(subparsers: Any) -> argparse.ArgumentParser:
    data = subparsers.add_parser("data", help="inspect training data")
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND")
    sub.required = True
    ins = sub.add_parser("inspect", help="detect the format, count problems, show statistics and rendered rows")
    ins.add_argument("path", nargs="+", help="data file(s), a saved dataset folder, or sample:NAME")
    ins.add_argument("--model", help="'demo' or a local model folder (its tokenizer gives token statistics)")
    ins.add_argument("--format", choices=choices("data.format"))
    ins.add_argument("--template", choices=choices("data.template"))
    ins.add_argument("--trust-remote-code", action="store_true", dest="trust_remote_code",
                     help="let the model's tokenizer run its own Python code (model.trust_remote_code)")
    ins.add_argument("--max-length", type=int, dest="max_length",
                     help=f"longest training sequence in tokens (data.max_length; default {DataConfig().max_length})")
    ins.add_argument("--batch-size", type=int, dest="batch_size", help="batch size for the padding estimate")
    ins.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                     help="map a format field to a column, e.g. --column instruction=question")
    ins.add_argument("--rows", type=int, default=3,
                     help="rows to show as the model is trained on them, trained text marked (default 3)")
    ins.add_argument("--json", action="store_true", help="print the report as JSON")
    ins.set_defaults(func=handle_inspect)
    return data


def load_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``model`` exactly as training would load it (same folder rule, pad token)."""
    from sft_tui.core.config import Config
    from sft_tui.core.models.load import tokenizer_for

    config = Config()
    config.model.path, config.model.trust_remote_code = model, trust_remote_code
    return tokenizer_for(config)


def handle_inspect(args: argparse.Namespace) -> int:
    from sft_tui.core.data import inspect_data

    columns = {}
    for item in args.column:
        if "=" not in item:
            raise UserError(f"--column {item}: expected FIELD=COLUMN", "e.g. --column instruction=question")
        field, col = item.split("=", 1)
        columns[field.strip()] = col.strip()
    tokenizer = load_tokenizer(args.model, args.trust_remote_code) if args.model else None
    path = args.path[0] if len(args.path) == 1 else list(args.path)
    progress = None if args.json or not sys.stderr.isatty() else _progress()
    report = inspect_data(path, tokenizer, format=args.format, max_length=args.max_length,
                          template=args.template, columns=columns or None, batch_size=args.batch_size,
                          samples=args.rows, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_report(report)
    return 0


def _progress():
    def show(stage: str, fraction: float) -> None:
        sys.stderr.write(f"\r{stage} {fraction * 100:5.1f}%   ")
        if fraction >= 1.0:
            sys.stderr.write("\r" + " " * 30 + "\r")
        sys.stderr.flush()

    return show


# How a problem's rows read in the counts line: "{n} rows {label}" ("1 bad JSON line" for bad_json).
_SHORT = {
    "missing_field": "missing a required field", "empty_output": "with an empty answer",
    "bad_role": "with a role that is not allowed", "no_assistant": "without an assistant turn",
    "bad_type": "with a field of the wrong type", "template_error": "the chat template refused",
    "nothing_trained": "with nothing left to train", "too_long": "longer than max_length",
    "render_mismatch": "tokenized differently from the inference prompt",
    "no_stop_token": "whose answer does not end on a stop token", "double_bos": "with two BOS tokens",
    "control_chars": "with control bytes in the text",
}

TRAINED_MARKS = ("⟦", "⟧")  # around trained text, so it shows without colour (pipes, logs, screen readers)
TRAINED_MARKS_ASCII = ("[[", "]]")


def _where(examples: list[dict[str, Any]], count: int, line_kind: str, several_files: bool) -> str:
    """'line 7', 'lines 3, 9', 'lines 3, 9, 12, 15, 20 and 7 more' — the places to look, in the file's terms."""
    from pathlib import Path

    places = []
    for ex in examples:
        if ex.get("line") is None:
            continue
        places.append(f"{Path(ex['source']).name}:{ex['line']}" if several_files and ex.get("source")
                      else str(ex["line"]))
    if not places:
        return ""
    word = line_kind if len(places) == 1 and count == 1 else f"{line_kind}s"
    more = f" and {count - len(places)} more" if count > len(places) else ""
    return f"{word} {', '.join(places)}{more}"


def problem_summary(r: dict[str, Any], kinds: list[str]) -> list[str]:
    """One short phrase per problem kind in ``kinds``: '1 bad JSON line: line 7'."""
    out = []
    several = len(r["paths"]) > 1
    for kind in kinds:
        info = r["problems"][kind]
        n = info["count"]
        if kind == "bad_json":
            what = f"{n} bad JSON line{'s' if n != 1 else ''}"
            where = _where(info["examples"], n, "line", several)
        else:
            noun = "row" if n == 1 else "rows"
            what = f"{n} {noun} {_SHORT.get(kind, info['about'])}"
            where = _where(info["examples"], n, r.get("line_kind") or "line", several)
        out.append(f"{what}: {where}" if where else what)
    return out


def honest_counts(r: dict[str, Any]) -> tuple[int, int, int]:
    """(read, usable, left out) of a report dict; unreadable lines count as read and left out (DataReport)."""
    return r["read"], r["rows_ok"], r["left_out"]


def trained_marks(console: Any) -> tuple[str, str]:
    encoding = (getattr(console, "encoding", "") or "").lower()
    return TRAINED_MARKS if "utf" in encoding else TRAINED_MARKS_ASCII


def print_report(report: Any, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from sft_tui.core.data.lint import WARNING_KINDS

    if console is None:
        console = Console(highlight=False)
        console.soft_wrap = not console.is_terminal  # piped: whole lines, never wrapped at 80 columns
    r = report.to_dict()
    console.print(f"[bold]{', '.join(r['paths'])}[/bold]")
    console.print(f"format: [bold]{r['format']}[/bold] (confidence {r['confidence']:.0%}: {r['reason']})")
    if r["template"]:
        template = "the tokenizer's own chat template" if r["template"] == "tokenizer" else r["template"]
        console.print(f"template: {template}" + (f"   tokenizer: {r['tokenizer']}" if r["tokenizer"] else ""),
                      markup=False)
    total, usable, left = honest_counts(r)
    unit = " lines" if r.get("line_kind", "line") == "line" else ""
    left_kinds = [k for k in r["problems"] if k not in WARNING_KINDS]
    kept_kinds = [k for k in r["problems"] if k in WARNING_KINDS]
    expanded = r.get("examples") not in (None, r["rows_ok"])
    counts = Text(f"rows: {total}{unit}, usable {usable}, ")
    counts.append(f"left out {left}", style="bold red" if left else "")
    if left_kinds:
        counts.append(f" ({'; '.join(problem_summary(r, left_kinds))})", style="red")
    if expanded:
        counts.append(f"; training rows: {r['examples']} (one per answer)")
    if r["from_cache"]:
        counts.append("   (from cache)")
    console.print(counts)
    if kept_kinds:
        console.print(Text("kept, with warnings: " + "; ".join(problem_summary(r, kept_kinds)), style="yellow"))
    if r["problems"]:
        console.print("  (details under 'problems' below)", style="dim")
    if r.get("roles"):
        console.print("roles: " + "; ".join(f"{role} ← {where}" for role, where in r["roles"].items()), markup=False)
    for note in r.get("template_notes", []):
        console.print(f"template: {note}", markup=False)
    s = r["stats"]
    if s.get("length"):
        unit = s.get("unit", "tokens")
        table = Table(title=f"lengths ({unit})", show_edge=False)
        for col in s["length"]:
            table.add_column(col, justify="right")
        table.add_row(*[str(v) for v in s["length"].values()])
        console.print(table)
    if "tokens" in s:
        console.print(f"tokens: {s['tokens']}  trained: {s.get('trained_tokens')} ({s.get('trained_share', 0):.1%})"
                      f"  over max_length {s.get('max_length')}: {s.get('over_max_length', 0)}")
        pad = s.get("padding", {})
        if pad:
            console.print(f"padding waste at batch size {pad['batch_size']}: {pad['without_packing']:.1%} "
                          f"without packing, {pad.get('with_packing', 0):.1%} with packing")
        hist = s.get("histogram")
        if hist:
            peak = max(hist["counts"]) or 1
            for lo, hi, c in zip(hist["edges"], hist["edges"][1:], hist["counts"]):
                console.print(f"  {lo:>6}-{hi:<6} {'█' * max(0, round(30 * c / peak)):<30} {c}")
    if r["problems"]:
        console.print("[bold yellow]problems[/bold yellow]")
        for kind, info in r["problems"].items():
            console.print(f"  {kind}: {info['count']} ({info['about']})")
            for ex in info["examples"]:
                where = f"{ex['source']}:{ex['line']}" if ex.get("line") is not None else (ex.get("source") or "")
                console.print(f"    {where}: {ex['message']}", markup=False)
    for w in r["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {w}")
    open_mark, close_mark = trained_marks(console)
    if any("segments" in sample for sample in r["samples"]):
        console.print(f"{open_mark}…{close_mark} marks the trained text (the answer tokens the loss is computed on); "
                      "the rest is the prompt, shown for context", markup=False,
                      style="" if not console.is_terminal else "italic")
    for sample in r["samples"]:
        if "segments" in sample:
            console.rule(f"row {sample.get('line')} — {sample.get('trained_tokens')}/{sample.get('tokens')} tokens "
                         "trained")
            console.print(marked_text(sample["segments"], open_mark, close_mark))
        else:
            console.rule(f"row {sample.get('line')}")
            for turn in sample["turns"]:
                console.print(f"[bold]{turn['role']}:[/bold] ", end="")
                console.print(turn["content"], markup=False)


def marked_text(segments: list[Any], open_mark: str = TRAINED_MARKS[0], close_mark: str = TRAINED_MARKS[1]) -> Any:
    """A rendered row with each run of trained text between the marks (and bold reverse on a terminal);
    the prompt is dim. Neighbouring trained pieces share one pair of marks."""
    from rich.text import Text

    merged: list[list[Any]] = []
    for chunk, trained in segments:
        if merged and merged[-1][1] == bool(trained):
            merged[-1][0] += chunk
        elif chunk:
            merged.append([chunk, bool(trained)])
    text = Text()
    for chunk, trained in merged:
        if trained:
            text.append(open_mark, style="bold green")
            text.append(chunk, style="bold green reverse")
            text.append(close_mark, style="bold green")
        else:
            text.append(chunk, style="dim")
    return text
