"""`sft-tui config import` / `config export`: walk in from Axolotl, LLaMA-Factory or TRL, walk out to them.

Exit codes follow the CLI's API: 0 done (unmapped settings are listed on stderr, not an error), 2 the
input was wrong (unreadable or unrecognised file, invalid sft-tui config, refused overwrite).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

SOURCES = ("axolotl", "llamafactory", "trl")


def register_config_actions(config_subparsers: Any) -> None:
    """Add ``import`` and ``export`` to an existing ``config`` sub-command group."""
    p = config_subparsers.add_parser(
        "import", help="turn an Axolotl / LLaMA-Factory YAML or a TRL script into an sft-tui config",
        description="Read another tool's training config (never running it) and print the sft-tui config; "
                    "settings with no sft-tui equivalent are listed on stderr.")
    p.add_argument("file", help="the peer's training YAML, or a TRL Python script")
    p.add_argument("--from", dest="source", choices=SOURCES, help="the tool that wrote FILE (default: detect)")
    p.add_argument("-o", "--output", metavar="OUT", help="write the sft-tui config here instead of printing it")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_config_import)
    p = config_subparsers.add_parser(
        "export", help="write an sft-tui config as an Axolotl / LLaMA-Factory YAML or a TRL script",
        description="Write the equivalent config for another tool; its header lists what does not carry over.")
    p.add_argument("file", metavar="CONFIG", help="an sft-tui config file, or a run (name or folder): its config.yaml")
    p.add_argument("--to", dest="target", choices=SOURCES, required=True, help="the tool to write for")
    p.add_argument("-o", "--output", metavar="OUT", help="write here (LLaMA-Factory: dataset_info.json goes beside "
                                                         "it) instead of printing")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.set_defaults(func=cmd_config_export)


def register(subparsers: Any) -> None:
    """Add the actions to the ``config`` group of ``subparsers`` (made here if the CLI has none yet)."""
    cfg = subparsers.choices.get("config") if hasattr(subparsers, "choices") else None
    if cfg is None:
        cfg = subparsers.add_parser("config", help="create and check run configs")
        group = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    else:
        group = next(a for a in cfg._actions if isinstance(a, argparse._SubParsersAction))
    register_config_actions(group)


def _error(message: str, hint: str = "") -> int:
    sys.stderr.write(f"error: {message}\n")
    if hint:
        sys.stderr.write(f"  hint: {hint}\n")
    return 2


def _refuse_overwrite(paths: list[Path], force: bool) -> int | None:
    existing = [p for p in paths if p.exists() and p.name != "dataset_info.json"]
    if existing and not force:
        return _error(f"{existing[0]} already exists", "choose another -o path, or add --force to overwrite it")
    return None


def render_import(result: Any, file: str) -> str:
    """The imported config as commented YAML, headed by where it came from and what did not carry over."""
    lines = [f"# Imported from {result.source}: {file}  (sft-tui config import)"]
    for note in result.notes:
        lines.append(f"# note: {note}")
    if result.unmapped:
        lines.append("# Not carried over:")
        lines += [f"#   - {u.key} = {u.value!r}: {u.reason}".replace("\n", " ") for u in result.unmapped]
    return "\n".join(lines) + "\n" + result.config.to_yaml(comments=True)


def cmd_config_import(args: argparse.Namespace) -> int:
    from sft_tui.core.errors import UserError
    from sft_tui.core.interop import import_config

    path = Path(args.file)
    if not path.is_file():
        return _error(f"{args.file}: file not found" if not path.exists() else f"{args.file} is not a file",
                      "give the path of an Axolotl or LLaMA-Factory YAML, or of a TRL training script")
    try:
        result = import_config(path, args.source)
    except UserError as exc:
        return _error(exc.message, exc.hint)
    text = render_import(result, args.file)
    if args.output:
        out = Path(args.output)
        refused = _refuse_overwrite([out], args.force)
        if refused is not None:
            return refused
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as exc:
            return _error(f"could not write {out}: {exc.strerror or exc}", "check the folder exists and is writable")
        sys.stderr.write(f"wrote {out} ({result.source} → sft-tui; check it with: sft-tui config validate {out})\n")
    else:
        sys.stdout.write(text)
    for note in result.notes:
        sys.stderr.write(f"note: {note}\n")
    if result.unmapped:
        sys.stderr.write(f"{len(result.unmapped)} setting(s) not carried over:\n")
        for item in result.unmapped:
            sys.stderr.write(f"  - {item.key} = {item.value!r}: {item.reason}\n")
    return 0


def cmd_config_export(args: argparse.Namespace) -> int:
    from sft_tui.core.config import ConfigError, load_config
    from sft_tui.core.errors import UserError
    from sft_tui.core.interop import export_config, export_files

    path = Path(args.file).expanduser()
    if not path.is_file():  # a run's name or folder: reproduce that run elsewhere
        from sft_tui.core.run.rundir import find_run

        try:
            path = find_run(args.file, getattr(args, "runs_dir", None)).config_path
        except UserError as exc:
            return _error(f"no config file or run named {args.file!r}", exc.hint)
    try:
        config = load_config(path)
    except ConfigError as exc:
        sys.stderr.write(f"error: {len(exc.problems)} problem(s) in {args.file}:\n")
        for prob in exc.problems:
            sys.stderr.write(f"  ✗ {prob}\n")
        sys.stderr.write("  hint: fix them first; `sft-tui config validate FILE --no-env` checks the file\n")
        return 2
    try:
        if not args.output:
            sys.stdout.write(export_config(config, args.target))
            if args.target == "llamafactory":
                sys.stderr.write("note: LLaMA-Factory reads the data through dataset_info.json (see the header); "
                                 "-o FILE writes it beside FILE\n")
            return 0
        files = export_files(config, args.target, Path(args.output))
    except UserError as exc:
        return _error(exc.message, exc.hint)
    refused = _refuse_overwrite(list(files), args.force)
    if refused is not None:
        return refused
    for path, text in files.items():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        except OSError as exc:
            return _error(f"could not write {path}: {exc.strerror or exc}", "check the folder exists and is writable")
        sys.stderr.write(f"wrote {path}\n")
    return 0
