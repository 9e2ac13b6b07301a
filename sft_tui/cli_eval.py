"""CLI commands for what comes after training: ``eval``, ``chat`` and ``export``.

Registered into the main parser by ``sft_tui.cli``. Handlers return the exit code and raise
``UserError`` for problems the user can fix (printed as "error: … / hint: …", exit 2).
``eval --json`` prints the saved result (the same JSON as ``RUN/eval/*.json``, verdict included); it is
an API, and so are ``eval --gate``'s exit codes: 0 when the tuned model is clearly better than the
base, 1 when it is not, 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from sft_tui.core.eval.export import GGUF_DEFAULT_TYPES, GGUF_TYPES
from sft_tui.core.eval.generate import SOURCES


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _progress_printer(quiet: bool):
    last: dict[str, Any] = {"stage": None, "pct": -1}

    def progress(stage: str, fraction: float) -> None:
        if quiet:
            return
        pct = int(fraction * 100)
        if stage != last["stage"] or pct >= last["pct"] + 25 or fraction >= 1.0:
            if stage != last["stage"] or pct != last["pct"]:
                _err(f"{stage}: {pct}%" if fraction else stage)
            last["stage"], last["pct"] = stage, pct

    return progress


def _once_each():
    """A progress printer that says each message once (loading steps may report the same one twice)."""
    seen: set[str] = set()

    def say(message: str) -> None:
        if message not in seen:
            seen.add(message)
            _err(message)

    return say


def _gen_settings(args: argparse.Namespace):
    from sft_tui.core.eval.generate import GenSettings

    return GenSettings(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p).validated()


# --------------------------------------------------------------------------- eval


VERDICT_STYLE = {"better": "bold green", "worse": "bold red", "mixed": "bold yellow", "unclear": "bold yellow",
                 "unknown": "bold yellow"}


def cmd_eval(args: argparse.Namespace) -> int:
    from sft_tui.core.errors import UserError
    from sft_tui.core.eval.evaluate import evaluate_run, latest_result
    from sft_tui.core.run.rundir import find_run

    if args.gate and args.no_base:
        raise UserError("--gate compares the tuned model with the base, and --no-base skips the base",
                        "drop --no-base to gate on the verdict")
    run = find_run(args.run, args.runs_dir)
    if args.last:
        result = latest_result(run)
        if result is None:
            raise UserError(f"run {run.name} has no saved evaluation in {run.path / 'eval'}",
                            f"evaluate it first: sft-tui eval {run.name}")
    else:
        which = ("tuned",) if args.no_base else ("base", "tuned")
        result = evaluate_run(run, data_path=args.data, limit=args.limit, which=which, settings=_gen_settings(args),
                              source=args.source, batch_size=args.batch_size, loss_limit=args.loss_limit,
                              progress=_progress_printer(args.json or args.quiet), name=args.name)
    verdict = result.get_verdict(run)  # saved with the result; computed now for an older file
    code = (0 if verdict.better else 1) if args.gate else 0
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
        return code
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = Console(highlight=False)
    table = Table(title=f"{run.name}: base vs tuned ({result.source})", title_justify="left")
    for i, col in enumerate(result.columns(verdict)):
        table.add_column(col, justify="left" if i == 0 else "right")
    for label, cells in result.table(verdict):
        table.add_row(label, *cells)
    console.print(table)
    console.print(f"data: {result.data}; loss over {result.rows_loss} rows, generation on "
                  f"{result.rows_generated} rows; {result.seconds:.1f} s", markup=False)
    console.print(Text.assemble(("verdict: ", "bold"), (verdict.line, VERDICT_STYLE.get(verdict.decision, "bold"))))
    for warning in verdict.warnings:
        console.print(Text.assemble(("warning: ", "bold yellow"), warning["text"]))
    for sample in result.samples[: args.show]:
        console.print(f"\n[bold]prompt[/]: {sample['prompt']}")
        console.print(f"  reference: {sample['reference']}", markup=False)
        for name in ("base", "tuned"):
            if name in sample:
                console.print(f"  {name:>9}: {sample[name]}", markup=False)
    console.print(f"\nsaved: {result.path}", markup=False)
    if args.gate:
        console.print(f"gate: {'passed' if code == 0 else 'failed'} (exit {code}: the tuned model is "
                      f"{'' if code == 0 else 'not '}clearly better than the base)", markup=False)
    return code


# --------------------------------------------------------------------------- chat


def cmd_chat(args: argparse.Namespace) -> int:
    from sft_tui.core.eval.generate import ChatRecord, append_history, load_pair, unescape_prompt
    from sft_tui.core.run.rundir import find_run

    run = find_run(args.run, args.runs_dir)
    settings = _gen_settings(args)
    which = "base" if args.base else "tuned"
    interactive = sys.stdin.isatty()
    pair = load_pair(run, args.source, progress=_once_each() if interactive else None)
    if interactive:
        _err(f"chatting with the {which} model of {run.name}; one prompt a line (\\n for a newline), "
             "Ctrl-D or /quit to leave")
    while True:
        if interactive:
            try:
                line = input("> ")
            except EOFError:
                _err("")
                break
        else:
            line = sys.stdin.readline()
            if not line:
                break
        prompt = line.strip()
        if not prompt:
            continue
        if prompt in ("/quit", "/exit"):
            break
        prompt = unescape_prompt(prompt)  # a literal \n in a line is a newline in the prompt
        parts = []
        for chunk in pair.stream(which, prompt, settings):
            parts.append(chunk)
            sys.stdout.write(chunk)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()
        if not args.no_history:
            append_history(run, ChatRecord(prompt, {which: "".join(parts).strip()}, settings.to_dict()))
    return 0


# --------------------------------------------------------------------------- export


def cmd_export(args: argparse.Namespace) -> int:
    from sft_tui.core.eval import export
    from sft_tui.core.run.rundir import find_run

    run = find_run(args.run, args.runs_dir)
    say = (lambda msg: None) if args.quiet else _err
    card = export.write_model_card(run)
    print(f"adapter: {run.adapter_dir} (model card: {card})")
    merged_dir = None
    if args.merge:
        res = export.merge(run, args.merge, overwrite=args.force, progress=say)
        merged_dir = res.path
        print(f"merged: {res.path} ({res.dtype}, {res.seconds:.1f} s); load it with "
              f"AutoModelForCausalLM.from_pretrained({str(res.path)!r})")
        if res.note:
            print(f"note: {res.note}")
    if args.gguf is not None:
        source = merged_dir or (run.merged_dir if run.has_merged else None)
        if source is None:
            from sft_tui.core.errors import UserError

            raise UserError("GGUF conversion needs a merged model", f"add --merge {run.merged_dir}")
        converter, problem = export.locate_converter(args.llama_cpp)
        if converter is None:
            _err(export.gguf_instructions(problem))
            return 1
        # One named output file holds one type (f16, as before); otherwise both f16 and q8_0 by default.
        default = ["f16"] if args.gguf else list(export.GGUF_DEFAULT_TYPES)
        types = tuple(dict.fromkeys(t.strip() for arg in (args.gguf_type or default)
                                    for t in arg.split(",") if t.strip()))
        results = export.export_gguf(source, types, args.gguf or None, run=run, llama_cpp=args.llama_cpp,
                                     progress=say)
        for res in results:
            info = res.info
            print(f"gguf: {res.path} ({res.outtype}, {info.bytes / 1e6:.1f} MB; checked: {info.architecture}, "
                  f"{info.tensors} tensors like the merged model, eos token id {info.eos_token_id})")
            print(f"ollama: {res.modelfile}" + ("" if res.template else " (no TEMPLATE: unknown chat template)")
                  + f"; run: ollama create {run.name} -f {res.modelfile}")
    if args.push:
        folder = merged_dir if (merged_dir and not args.push_adapter) else run.adapter_dir
        url = export.push_to_hub(folder, args.push, private=not args.public, progress=say)
        print(f"pushed {folder} to {url}")
    return 0


# --------------------------------------------------------------------------- parser


def _gguf_type(text: str) -> str:
    bad = [t for t in text.split(",") if t.strip() and t.strip() not in GGUF_TYPES]
    if bad or not text.strip():
        raise argparse.ArgumentTypeError(f"unknown GGUF type {', '.join(bad) or repr(text)}; "
                                         f"use {', '.join(GGUF_TYPES)}")
    return text


def _add_gen_args(p: argparse.ArgumentParser, max_new_tokens: int) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help=f"answer length cap (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling share when temperature > 0")
    p.add_argument("--source", choices=SOURCES, default="auto",
                   help="tuned model to use: the adapter (default when present) or the merged export")


def register(sub: Any) -> None:
    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.add_argument("--runs-dir", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    p = add("eval", cmd_eval, "evaluate a run against its base model: loss, perplexity, ROUGE-L, BLEU, exact match, "
            "and a verdict (is the tuned model better, by how much, with paired bootstrap intervals)")
    p.add_argument("run", help="run name or folder")
    p.add_argument("--data", help="evaluate on this file instead of the run's held-out rows")
    p.add_argument("--limit", type=int, default=50, help="rows to generate answers for (default 50; 0 skips generation)")
    p.add_argument("--loss-limit", type=int, default=None, help="rows to compute the loss over (default all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-base", action="store_true", help="evaluate only the tuned model")
    p.add_argument("--name", help="save as eval/NAME.json (default: a timestamp)")
    p.add_argument("--show", type=int, default=3, help="sample answers to print (default 3)")
    p.add_argument("--json", action="store_true", help="print the result as JSON, verdict included "
                   "(progress is not printed)")
    p.add_argument("--gate", action="store_true", help="exit 0 when the tuned model is clearly better than the base "
                   "(the verdict), 1 when it is not (worse, mixed or no clear difference): for scripts and CI")
    p.add_argument("--last", action="store_true", help="show (and --gate on) the latest saved evaluation "
                   "instead of evaluating again")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    _add_gen_args(p, 64)

    p = add("chat", cmd_chat, "talk to a run's tuned (or --base) model; reads prompts line by line, streams answers")
    p.add_argument("run", help="run name or folder")
    p.add_argument("--base", action="store_true", help="answer with the base model instead of the tuned one")
    p.add_argument("--no-history", action="store_true", help="do not keep the exchange in RUN/chat/history.jsonl")
    _add_gen_args(p, 128)

    p = add("export", cmd_export, "write the adapter's model card; merge, push to the hub, convert to GGUF")
    p.add_argument("run", help="run name or folder")
    p.add_argument("--merge", metavar="OUT_DIR", help="merge the LoRA into the base weights and save it here")
    p.add_argument("--force", action="store_true", help="replace OUT_DIR if it exists")
    p.add_argument("--push", metavar="REPO_ID", help="upload to the Hugging Face hub (the merged model when --merge, "
                   "else the adapter); needs network and a token")
    p.add_argument("--push-adapter", action="store_true", help="push the adapter even when merging")
    p.add_argument("--public", action="store_true", help="create the hub repo public (default private)")
    p.add_argument("--gguf", nargs="?", const="", metavar="OUT_FILE",
                   help="convert the merged model to GGUF with llama.cpp's converter (pip install \"sft-tui[gguf]\") "
                   "and write an Ollama Modelfile beside each file (default MERGED/<run>-<type>.gguf)")
    p.add_argument("--gguf-type", action="append", metavar="TYPE", type=_gguf_type,
                   help=f"GGUF type, repeatable or comma-separated: {', '.join(GGUF_TYPES)} "
                   f"(default {','.join(GGUF_DEFAULT_TYPES)}; f16 when OUT_FILE is given)")
    p.add_argument("--llama-cpp", help="use this llama.cpp checkout's converter "
                   "(default $SFT_TUI_LLAMA_CPP, then llama_cpp in the settings file, then the installed package)")
    p.add_argument("--quiet", "-q", action="store_true")
