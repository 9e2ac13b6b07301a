"""Reading data files into Arrow-backed ``datasets.Dataset`` objects, with source line numbers.

Everything goes through ``datasets`` so files are converted to memory-mapped Arrow once and
never held as Python lists. Each row gets ``__line__`` (its line in a JSONL file, its record
number otherwise) and ``__file__`` (index into ``LoadedRows.files``) so problems can be located.
A malformed JSONL file is scanned line by line only after the fast reader failed, to name the
first bad lines; with ``skip_bad_rows`` a cleaned copy (good lines only) is what gets loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable

from sft_tui.core.errors import UserError
from sft_tui.core.imports import HEAVY_LOCK
from sft_tui.core.models.load import datasets_offline, looks_like_hub_id
from sft_tui.core.paths import cache_dir, resolve_sample

from .conversation import ProblemLog

SUFFIXES = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet", ".pq": "parquet", ".txt": "text"}


def _hf_cache() -> str:
    return str(cache_dir() / "datasets")


def resolve_paths(path: str | list[str]) -> list[Path | str]:
    """Files and dataset folders for ``data.path``; a str that is no local path is kept as a hub id."""
    items = path if isinstance(path, list) else [path]
    out: list[Path | str] = []
    for item in items:
        p = resolve_sample(str(item))
        if p.is_dir() and not _is_saved_dataset(p):
            files = sorted(f for f in p.rglob("*") if f.suffix.lower() in SUFFIXES and f.is_file())
            if not files:
                raise UserError(f"no data files in folder {p}",
                                f"put {', '.join(sorted(SUFFIXES))} files there, or point at a file")
            out.extend(files)
        elif p.exists():
            out.append(p)
        elif str(item).startswith("sample:"):
            raise UserError(f"no bundled sample '{str(item)[7:]}'",
                            "see sample_data/README.md for the names (e.g. sample:reviews_alpaca.jsonl)")
        elif _looks_like_hub_id(str(item)):
            out.append(str(item))
        else:
            raise UserError(f"data file not found: {p}", "check data.path (relative paths start from where you run sft-tui)")
    return out


def _looks_like_hub_id(text: str) -> bool:
    """A hub dataset id, unless it ends like a data file (then it is a missing file, said so)."""
    return looks_like_hub_id(text) and Path(text).suffix.lower() not in SUFFIXES


def _is_saved_dataset(p: Path) -> bool:
    return (p / "dataset_info.json").exists() or (p / "dataset_dict.json").exists() or (p / "state.json").exists()


def file_identity(paths: Iterable[Path | str]) -> list[list[Any]]:
    """Path + size + mtime of every file behind ``paths``: cheap to compute, changes when data changes."""
    out: list[list[Any]] = []
    for p in paths:
        if isinstance(p, str):
            out.append(["hub", p])
            continue
        files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
        for f in files:
            st = f.stat()
            out.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
    return out


def _load_hub(name: str):
    import datasets

    if datasets_offline():
        raise UserError(f"'{name}' is not a local file, and Hugging Face hub access is off (offline mode)",
                        "give a local file or folder, or go online (unset HF_HUB_OFFLINE) to use a hub dataset",
                        kind="missing_file")
    try:
        return datasets.load_dataset(name, split="train", cache_dir=_hf_cache())
    except Exception as exc:  # network errors, missing repos: all the same to the user
        raise UserError(f"could not load '{name}' from the Hugging Face hub: {str(exc).splitlines()[0]}",
                        "check the dataset name and your network, or give a local file") from None


def _first_char(path: Path) -> bytes:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1]


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        seen.add(key)
    return dict(pairs)


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
# A \uD800-\uDFFF escape; Python keeps a lone one as a surrogate, pyarrow refuses the line.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _line_problem(raw: bytes) -> str | None:
    """Why the fast reader would refuse this line, or None. Python's json accepts duplicate keys
    and unpaired surrogates; pyarrow does not, so they are checked here as well."""
    try:
        value = _DECODER.decode(raw.decode("utf-8-sig" if raw.startswith(b"\xef\xbb\xbf") else "utf-8"))
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    except (ValueError, RecursionError) as exc:
        return str(exc)
    if not isinstance(value, dict):
        return f"expected an object, got {type(value).__name__}"
    if _SURROGATE_ESCAPE.search(raw):
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return "a \\uD800-\\uDFFF escape without its pair (not a character)"
    return None


def scan_jsonl(path: Path, limit: int | None = None, max_lines: int | None = None) -> list[tuple[int, str]]:
    """(line, error) for every line the fast reader would refuse (not a JSON object, a key twice,
    an unpaired surrogate), stopping after ``limit`` bad lines or ``max_lines`` lines. The loader
    runs it only after the fast reader failed; the pre-flight runs it on the first lines of every
    JSON-lines file."""
    bad: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            if max_lines and number > max_lines:
                break
            if not raw.strip():
                continue
            problem = _line_problem(raw)
            if problem is not None:
                bad.append((number, problem))
            if limit and len(bad) >= limit:
                break
    return bad


# pyarrow numbers rows from 0 within each block it parses, so its "row 20" is no file line.
_ARROW_ROW = re.compile(r"\s*in row (\d+)")
_BATCH = 10 << 20  # datasets' JSON-lines batch (JsonConfig.chunksize): it reads this much, then to the line end


def _reader_message(exc: BaseException) -> str:
    """The reason behind datasets' "An error occurred while generating the dataset": the pyarrow
    or JSON message further down the exception chain, when there is one."""
    seen: set[int] = set()
    found = None
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if "JSON parse error" in text or type(current).__name__ in ("ArrowInvalid", "ArrowNotImplementedError"):
            found = found or text
        current = current.__cause__ or current.__context__
    text = found or str(exc) or type(exc).__name__
    return text.splitlines()[0].replace("JSON parse error: ", "")


def _nth_data_line(batch: bytes, row: int) -> int | None:
    """1-based line (within ``batch``) of its ``row``-th (0-based) non-blank line, as pyarrow counts."""
    seen = -1
    for number, raw in enumerate(batch.split(b"\n"), 1):
        if raw.strip():
            seen += 1
            if seen == row:
                return number
    return None


def _arrow_failure_line(path: Path, message: str) -> int | None:
    """The file line of pyarrow's failure: each batch is parsed again as one block, so the row it
    names counts from the batch start, and a batch failing with the same message is the one."""
    import io

    import pyarrow as pa
    import pyarrow.json as paj

    if not _ARROW_ROW.search(message):
        return None
    wanted = _ARROW_ROW.sub("", message)
    before = 0  # file lines before the current batch
    try:
        with open(path, "rb") as f:
            while batch := f.read(_BATCH):
                batch += f.readline()
                body = batch[3:] if before == 0 and batch.startswith(b"\xef\xbb\xbf") else batch
                try:
                    paj.read_json(io.BytesIO(body), read_options=paj.ReadOptions(block_size=len(body) + 1))
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
                    text = str(err).splitlines()[0].replace("JSON parse error: ", "")
                    found = _ARROW_ROW.search(text)
                    if found and _ARROW_ROW.sub("", text) == wanted:
                        line = _nth_data_line(body, int(found.group(1)))
                        return before + line if line else None
                before += batch.count(b"\n")
    except OSError:
        return None
    return None


def _line_numbers(path: Path, n_rows: int) -> list[int] | None:
    """Line of each row when blank lines shift them (rare, so only then do we pay for a scan)."""
    data_has_blank = False
    with open(path, "rb") as f:
        tail = b"\n"
        while chunk := f.read(1 << 20):
            buf = tail + chunk
            if b"\n\n" in buf or b"\n\r\n" in buf or re.search(rb"\n[ \t]+\r?\n", buf):
                data_has_blank = True
                break
            tail = chunk[-8:]
    if not data_has_blank:
        return None
    with open(path, "rb") as f:
        lines = [i for i, raw in enumerate(f, 1) if raw.strip()]
    return lines if len(lines) == n_rows else None


def _load_json(path: Path, skip_bad_rows: bool, problems: ProblemLog):
    import datasets

    first = _first_char(path)
    kwargs: dict[str, Any] = {"cache_dir": _hf_cache(), "split": "train"}
    if first == b"{" and not _is_jsonl(path):
        return _load_json_object(path), False
    quiet_datasets()
    try:
        ds = datasets.load_dataset("json", data_files=str(path), **kwargs)
        return ds, first != b"["
    except Exception as exc:
        if first == b"[":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError as err:
                raise UserError(f"{path}: not valid JSON: {err}", "fix the file (a JSON array of objects)") from None
            reason = _ARROW_ROW.sub("", _reader_message(exc))  # a block-relative row means nothing here
            raise UserError(f"{path}: could not read the JSON array: {reason}",
                            "each element should be an object with the same fields, each key once") from None
        bad = scan_jsonl(path, limit=None if skip_bad_rows else 5)
        if not bad:
            reason = _reader_message(exc)
            line = _arrow_failure_line(path, reason)
            reason = _ARROW_ROW.sub("", reason)
            raise UserError(f"{path}{f':{line}' if line else ''}: could not read the file: {reason}",
                            "rows may mix types in one field (e.g. text in some rows, numbers in others)") from None
        if not skip_bad_rows:
            line, err = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise UserError(f"{path}:{line}: not valid JSON: {err}{more}",
                            "fix the line, or set data.skip_bad_rows: true to leave bad lines out",
                            kind="bad_data") from None
        for line, err in bad:
            problems.add("bad_json", err, line, str(path))
        return _load_cleaned(path, {line for line, _ in bad}), True


def _is_jsonl(path: Path) -> bool:
    """One object per line, unless the file is a single JSON object holding the whole table."""
    with open(path, "rb") as f:
        line = f.readline()
        single_line = not f.read(64).strip()
    try:
        value = json.loads(line)
    except ValueError:
        return False  # a pretty-printed object spans lines
    if not (single_line and isinstance(value, dict) and value):
        return True
    from .formats import CANONICAL

    lists = [v for v in value.values() if isinstance(v, list)]
    if len(value) == 1 and lists and next(iter(value)) not in CANONICAL and all(isinstance(x, dict) for x in lists[0]):
        return False  # {"data": [{...}, ...]}
    if len(lists) == len(value) and len({len(v) for v in lists}) == 1 and not any(
            isinstance(x, (dict, list)) for v in lists for x in v[:3]):
        return False  # {"instruction": [...], "output": [...]}
    return True


def _is_turn_list(value: Any) -> bool:
    from .formats import ITEM_KEYS

    return (isinstance(value, list) and bool(value)
            and all(isinstance(t, dict) and any(k in t for k in ITEM_KEYS) for t in value))


def _single_record(obj: dict[str, Any]) -> bool:
    """One row of a known format (a ShareGPT ``conversations``, a ``messages`` list, an alpaca or
    prompt/completion record) rather than a table: its lists are turns, its texts are texts."""
    from .formats import FIELDS

    for fmt, (required, _optional) in FIELDS.items():
        if not all(k in obj for k in required):
            continue
        values = [obj[k] for k in required]
        if fmt in ("messages", "sharegpt"):
            if _is_turn_list(values[0]):
                return True
        elif fmt == "prompt_completion":
            if all(isinstance(v, str) or _is_turn_list(v) for v in values):
                return True
        elif all(isinstance(v, str) for v in values):
            return True
    return False


def _load_json_object(path: Path):
    """{"col": [...], ...} (columns), {"data": [{...}, ...]} (records under one key), or one record."""
    import datasets

    try:
        obj = json.loads(path.read_text(encoding="utf-8-sig"))
    except ValueError as err:
        raise UserError(f"{path}: not valid JSON: {err}", "fix the file, or write one JSON object per line") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: expected rows", "use JSON lines, an array of objects, or an object of arrays")
    if _single_record(obj):
        return datasets.Dataset.from_list([obj])
    lists = {k: v for k, v in obj.items() if isinstance(v, list)}
    records = [k for k, v in lists.items() if v and all(isinstance(x, dict) for x in v[:5])]
    if len(records) == 1 and len(lists) == 1:
        return datasets.Dataset.from_list(lists[records[0]])
    if lists and len(lists) == len(obj) and len({len(v) for v in lists.values()}) == 1:
        return datasets.Dataset.from_dict(lists)
    raise UserError(f"{path}: a JSON object must hold equal-length column arrays or one array of rows",
                    "use JSON lines (one object per line) or an array of objects")


def _load_cleaned(path: Path, bad_lines: set[int]):
    import datasets

    digest = hashlib.sha1(json.dumps(file_identity([path])).encode()).hexdigest()[:16]
    out_dir = cache_dir() / "cleaned"
    out_dir.mkdir(parents=True, exist_ok=True)
    clean = out_dir / f"{digest}.jsonl"
    lines_file = out_dir / f"{digest}.lines.json"
    if not clean.exists():
        kept: list[int] = []
        tmp = clean.with_suffix(".tmp")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            for number, raw in enumerate(src, 1):
                if number in bad_lines or not raw.strip():
                    continue
                dst.write(raw.rstrip(b"\r\n") + b"\n")
                kept.append(number)
        lines_file.write_text(json.dumps(kept))
        tmp.replace(clean)
    ds = datasets.load_dataset("json", data_files=str(clean), cache_dir=_hf_cache(), split="train")
    return ds.add_column("__line__", json.loads(lines_file.read_text()), new_fingerprint=_derived(ds, f"clean-{digest}"))


def _load_file(path: Path, skip_bad_rows: bool, problems: ProblemLog):
    import datasets

    if path.is_dir():
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            split = "train" if "train" in loaded else next(iter(loaded))
            loaded = loaded[split]
        return loaded, False
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"unsupported data file type '{path.suffix}' ({path.name})",
                        f"use one of {', '.join(sorted(SUFFIXES))}, or a folder saved with save_to_disk")
    if path.stat().st_size == 0:
        raise UserError(f"data file is empty: {path}", "check data.path")
    if kind == "json":
        return _load_json(path, skip_bad_rows, problems)
    try:
        if kind == "csv":
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            return datasets.load_dataset("csv", data_files=str(path), sep=sep, cache_dir=_hf_cache(),
                                         split="train", keep_default_na=False), False
        if kind == "text":
            return datasets.load_dataset("text", data_files=str(path), cache_dir=_hf_cache(), split="train"), True
        return datasets.load_dataset("parquet", data_files=str(path), cache_dir=_hf_cache(), split="train"), False
    except Exception as exc:
        raise UserError(f"{path}: could not read the {kind} file: {str(exc).splitlines()[0]}",
                        "check that the file is complete and well-formed") from None


class LoadedRows:
    """A raw dataset plus where its rows came from and the problems found while reading it."""

    def __init__(self, dataset, files: list[str], problems: ProblemLog, line_kind: str) -> None:
        self.dataset = dataset
        self.files = files
        self.problems = problems
        self.line_kind = line_kind  # 'line' when __line__ is a file line, 'row' when it is a record number


def _derived(ds: Any, what: str) -> str:
    return hashlib.sha256(f"{getattr(ds, '_fingerprint', '')}|{what}".encode()).hexdigest()[:16]


# datasets is not safe across threads: two UI workers loading at once failed with "type object 'tqdm'
# has no attribute '_lock'", and a load during another thread's first import of transformers with
# "module 'transformers' has no attribute 'PreTrainedTokenizerBase'". Loads, maps and those imports
# take turns on one lock.
DATASETS_LOCK = HEAVY_LOCK


def quiet_datasets() -> None:
    """datasets' tqdm bars ("Generating train split") and its own error log would land on the
    user's terminal, over the TUI; the loader reports progress and errors itself. Process-wide and
    left off on purpose: switching them back on after a load races loads in other threads."""
    import logging

    import datasets

    datasets.disable_progress_bars()
    datasets.utils.logging.set_verbosity_error()
    # Its "Failed to load JSON from file" is logged at error level; the loader re-explains it with the line.
    logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


def load_rows_detailed(path: str | list[str], skip_bad_rows: bool = False) -> LoadedRows:
    import datasets

    quiet_datasets()
    problems = ProblemLog()
    parts = []
    names: list[str] = []
    all_lines = True
    for idx, item in enumerate(resolve_paths(path)):
        if isinstance(item, str):
            with DATASETS_LOCK:
                ds, is_lines = _load_hub(item), False
        else:
            with DATASETS_LOCK:
                ds, is_lines = _load_file(item, skip_bad_rows, problems)
        all_lines &= is_lines
        n = len(ds)
        # Explicit fingerprints: otherwise datasets pickles and hashes every value of the new columns.
        if "__line__" not in ds.column_names:
            lines = _line_numbers(item, n) if is_lines and isinstance(item, Path) else None
            key = hashlib.sha1(json.dumps(lines).encode()).hexdigest()[:16] if lines else f"range{n}"
            ds = ds.add_column("__line__", lines or list(range(1, n + 1)),
                               new_fingerprint=_derived(ds, f"line-{key}"))
        ds = ds.add_column("__file__", [idx] * n, new_fingerprint=_derived(ds, f"file-{idx}-{n}"))
        parts.append(ds)
        names.append(str(item))
    if len(parts) == 1:
        dataset = parts[0]
    else:
        first = set(parts[0].column_names)
        for name, part in zip(names[1:], parts[1:]):
            if set(part.column_names) != first:
                raise UserError(
                    f"{name} has columns {sorted(set(part.column_names) - {'__line__', '__file__'})}, "
                    f"but {names[0]} has {sorted(first - {'__line__', '__file__'})}",
                    "files loaded together must share one format")
        try:
            dataset = datasets.concatenate_datasets(parts)
        except Exception as exc:
            raise UserError(f"the data files do not fit together: {str(exc).splitlines()[0]}",
                            "files loaded together must have the same columns and types") from None
    if len(dataset) == 0:
        raise UserError(f"no rows in {', '.join(names)}", "check data.path")
    return LoadedRows(dataset, names, problems, "line" if all_lines else "row")


def load_rows(data_config: Any) -> "Any":
    """The raw rows of ``data_config.path`` (a DataConfig, a path, or a list of paths) as a Dataset.

    Besides the file's own columns it has ``__line__`` and ``__file__`` for locating problems.
    """
    if isinstance(data_config, (str, os.PathLike, list)):
        return load_rows_detailed([str(p) for p in data_config] if isinstance(data_config, list)
                                  else str(data_config)).dataset
    return load_rows_detailed(data_config.path, data_config.skip_bad_rows).dataset
