"""CLI commands for models and the machine: ``models``, ``models inspect``, ``doctor`` (and ``gpus``,
registered here from ``sft_tui.cli_gpus``).

Registered into the main parser by ``sft_tui.cli``. Handlers return the exit code and raise
``UserError`` for bad input (the main CLI prints it and exits 2). ``--json`` output is an API:
field names come from the core dataclasses' ``to_dict()``.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from sft_tui.core.config import DataConfig, MethodConfig, TrainingConfig, choices
from sft_tui.core.format import human_bytes, human_count


def _console():
    from rich.console import Console

    return Console(highlight=False)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


# --------------------------------------------------------------------------- models


def cmd_models(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sft_tui.core.models.discovery import discover_models
    from sft_tui.core.models.load import hf_cache_dir
    from sft_tui.core.settings import load_settings

    entries = discover_models(extra_dirs=args.dir or None)
    if args.json:
        _print_json([e.to_dict() for e in entries])
        return 0
    console = _console()
    table = Table(title="Models", title_justify="left")
    table.add_column("name", style="bold")
    table.add_column("source")
    table.add_column("size", justify="right")
    table.add_column("path", overflow="fold")
    for e in entries:
        path = str(e.path) if e.path else "(built on first use)"
        table.add_row(e.name, e.source, human_bytes(e.size_bytes) if e.size_bytes else "", path)
    console.print(table)
    settings = load_settings()
    if settings.warning:
        console.print(f"[yellow]warning:[/] {settings.warning}")
    console.print(f"[dim]searched: the HF cache {hf_cache_dir()}, model_dirs in the settings file"
                  f"{', ' + ', '.join(args.dir) if args.dir else ''}. "
                  "Inspect one with `sft-tui models inspect NAME`.[/]")
    return 0


def _estimate_args(args: argparse.Namespace) -> dict[str, Any]:
    return dict(method=args.method, bits=args.bits, batch_size=args.batch_size, max_length=args.max_length,
                precision=args.precision, gradient_checkpointing=args.gradient_checkpointing,
                optimizer=args.optimizer, lora_r=args.lora_r)


def cmd_models_inspect(args: argparse.Namespace) -> int:
    from rich.table import Table

    from sft_tui.core.system.gpus import sample_gpus
    from sft_tui.core.models.memory import PARTS, estimate_memory
    from sft_tui.core.models.describe import describe_model

    info = describe_model(args.model, allow_download=args.download, trust_remote_code=args.trust_remote_code)
    est = estimate_memory(info, **_estimate_args(args))
    snap = sample_gpus()
    verdict = est.verdict(snap)
    if args.json:
        _print_json({"model": info.to_dict(), "estimate": est.to_dict(), "verdict": verdict.to_dict(),
                     "gpus": snap.to_dict()})
        return 0
    console = _console()
    t = Table(title=f"Model {info.name}", title_justify="left", show_header=False)
    t.add_column("field", style="bold")
    t.add_column("value", overflow="fold")
    quant = info.quantization + (f" ({info.quantization_bits}-bit)" if info.quantization_bits else "") \
        if info.quantization else "no"
    rows = [
        ("path", info.path),
        ("architecture", f"{info.architecture} ({info.model_type})"),
        ("parameters", f"{human_count(info.param_count)} ({info.param_count:,}; {info.param_count_source})"
         if info.param_count else "unknown"),
        ("hidden size / layers", f"{info.hidden_size} / {info.num_layers}"),
        ("context length", str(info.context_length or "?")),
        ("stored dtype", str(info.dtype or "?")),
        ("on disk", human_bytes(info.disk_bytes)),
        ("tokenizer", "yes" if info.has_tokenizer else "missing"),
        ("chat template", "yes" if info.has_chat_template else "no (a named template will be used)"),
        ("quantized", quant),
        ("LoRA targets", ", ".join(info.lora_targets) or "?"),
    ]
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)
    for w in info.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    i = est.inputs
    m = Table(title=(f"Memory for {i['method']}{' ' + str(i['bits']) + '-bit' if i['bits'] else ''}, batch "
                     f"{i['batch_size']} × {i['max_length']} tokens, {i['precision']}, "
                     f"{'gradient checkpointing, ' if i['gradient_checkpointing'] else ''}{i['optimizer']}"),
              title_justify="left")
    m.add_column("part")
    m.add_column(f"at peak ({est.peak_phase})", justify="right")
    m.add_column("own size", justify="right")
    for part in PARTS:
        m.add_row(part, human_bytes(getattr(est, part)), human_bytes(est.sizes.get(part)))
    m.add_row("[bold]total[/]", f"[bold]{human_bytes(est.total)}[/]", "")
    console.print(m)
    for note in est.notes:
        console.print(f"[dim]note: {note}[/]")
    style = {"fits": "green", "tight": "yellow", "does-not-fit": "red", "no-gpu": "yellow"}[verdict.level]
    console.print(f"[{style}]{verdict.level}:[/] {verdict.text}")
    return 0


# --------------------------------------------------------------------------- doctor


def cmd_doctor(args: argparse.Namespace) -> int:
    from sft_tui.core.system.doctor import run_checks

    checks = run_checks()
    if args.json:
        _print_json([c.to_dict() for c in checks])
    else:
        console = _console()
        marks = {True: "[green]✓[/]", False: "[red]✗[/]", None: "[yellow]•[/]"}
        width = max(len(c.name) for c in checks)
        for c in checks:
            console.print(f"{marks[c.ok]} {c.name.ljust(width)}  {c.detail}", soft_wrap=True)
    return 1 if any(c.ok is False for c in checks) else 0


# --------------------------------------------------------------------------- registration


def _add_estimate_options(p: argparse.ArgumentParser) -> None:
    d_method, d_train, d_data = MethodConfig(), TrainingConfig(), DataConfig()
    p.add_argument("--method", choices=choices("method.type"), default=d_method.type,
                   help=f"training method for the memory estimate (default {d_method.type})")
    p.add_argument("--bits", type=int, choices=choices("method.quantization_bits"), default=None, help="qlora quantization (default 4)")
    p.add_argument("--batch-size", type=int, default=d_train.batch_size, help=f"rows per step (default {d_train.batch_size})")
    p.add_argument("--max-length", type=int, default=d_data.max_length,
                   help=f"sequence length in tokens (default {d_data.max_length})")
    p.add_argument("--precision", choices=choices("training.precision"), default="auto",
                   help="compute precision; auto counts as bf16")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    p.add_argument("--optimizer", default=d_train.optimizer,
                   choices=choices("training.optimizer"))
    p.add_argument("--lora-r", type=int, default=d_method.lora_r, help=f"LoRA rank (default {d_method.lora_r})")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``models`` (with ``inspect``), ``gpus`` and ``doctor`` to the main parser."""
    p = subparsers.add_parser("models", help="list the models on this machine; `models inspect` describes one",
                              description="List models: the demo model, the Hugging Face cache, your model_dirs.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--dir", action="append", metavar="DIR", help="also search this folder (repeatable)")
    p.set_defaults(func=cmd_models)
    sub = p.add_subparsers(dest="models_command", metavar="ACTION")
    ins = sub.add_parser("inspect", help="describe a model and estimate its training memory",
                         description="Describe a model without loading its weights, and estimate training memory.")
    ins.add_argument("model", metavar="PATH_OR_ID", help="'demo', a model folder, or a hub id")
    _add_estimate_options(ins)
    ins.add_argument("--download", action="store_true", help="fetch config/tokenizer files of a hub id if missing")
    ins.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code")
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    ins.add_argument("--dir", action="append", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    ins.set_defaults(func=cmd_models_inspect)

    from sft_tui.cli_gpus import add_gpus_parser

    add_gpus_parser(subparsers)  # `gpus` lives in its own module: gauges and who holds each GPU

    d = subparsers.add_parser("doctor", help="check torch, CUDA, GPUs, bitsandbytes, flash-attention, disk, hub")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_doctor)
