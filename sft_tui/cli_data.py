"""`sft-tui data inspect`: the dataset pipeline's report on a terminal, or as JSON for scripts.

The JSON is ``DataReport.to_dict()`` unchanged, so the CLI, the TUI and scripts agree on one shape.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sft_tui.core.config import choices
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
    ins.add_argument("--max-length", type=int, dest="max_length")
    ins.add_argument("--batch-size", type=int, dest="batch_size", help="batch size for the padding estimate")
    ins.add_argument("--column", action="append", default=[], metavar="FIELD=COLUMN",
                     help="map a format field to a column, e.g. --column instruction=question")
    ins.add_argument("--rows", type=int, default=3, help="rendered rows to show")
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


def print_report(report: Any, console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    r = report.to_dict()
    console.print(f"[bold]{', '.join(r['paths'])}[/bold]")
    console.print(f"format: [bold]{r['format']}[/bold] (confidence {r['confidence']:.0%}: {r['reason']})")
    if r["template"]:
        console.print(f"template: {r['template']}" + (f"   tokenizer: {r['tokenizer']}" if r["tokenizer"] else ""))
    expanded = r.get("examples") not in (None, r["rows_ok"])
    console.print(f"rows: {r['rows']}  usable: {r['rows_ok']}  left out: {r['rows_bad']}"
                  + (f"  training rows: {r['examples']} (one per answer)" if expanded else "")
                  + ("   (from cache)" if r["from_cache"] else ""))
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
    for i, sample in enumerate(r["samples"], 1):
        console.rule(f"row {sample.get('line')}" + (f" — {sample.get('trained_tokens')}/{sample.get('tokens')} tokens "
                                                     "trained (highlighted)" if "segments" in sample else ""))
        if "segments" in sample:
            text = Text()
            for chunk, trained in sample["segments"]:
                text.append(chunk, style="bold green reverse" if trained else "dim")
            console.print(text)
        else:
            for turn in sample["turns"]:
                console.print(f"[bold]{turn['role']}:[/bold] ", end="")
                console.print(turn["content"], markup=False)
