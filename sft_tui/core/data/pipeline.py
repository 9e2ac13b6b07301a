"""load → detect → normalise → render → tokenize+mask → cache → split → pack, as one call.

Tokenized rows are cached on disk (Arrow, memory-mapped) under ``cache_dir()/tokenized/<key>``;
the key covers the files' identity, the tokenizer and every data setting that changes tokens,
and nothing else (split, seed, packing and batch size are applied after the cache, cheaply), so
changing the validation split never re-tokenizes. Bad rows are tokenized as empty and recorded
in the problem log in the same pass, which is what lets inspection and training share one cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sft_tui.core.config import Config, DataConfig
from sft_tui.core.errors import UserError
from sft_tui.core.paths import cache_dir

from .conversation import BadRow, Conversation, ProblemLog
from .formats import Detection, detect_for, role_assignment, to_conversation
from .lint import WARNING_KINDS, tokenizer_warnings
from .lint import row_warnings
from .messages import CONTENT_FLAGS, content_flags, has_control_chars
from .profile import template_profile
from .loading import DATASETS_LOCK, LoadedRows, file_identity, load_rows_detailed, quiet_datasets, resolve_paths
from .masking import encode_spans_batch, tokenize_conversation
from .report import DataReport
from .stats import length_stats
from .templates import Renderer, get_renderer, pieces_to_spans

PIPELINE_VERSION = "4"
Progress = Callable[[str, float], None]
MAP_BATCH = 5000
SEP = "\x1f"  # joins several problems of one row in the __kind__/__msg__ columns
TOKEN_COLUMNS = ["input_ids", "attention_mask", "labels", "length", "orig_length", "n_trained", "__row__"]


@dataclass
class PreparedData:
    train: Any
    eval: Any | None
    eval_conversations: list[Conversation]
    report: DataReport
    warnings: list[str] = field(default_factory=list)
    packing: bool = False


# --------------------------------------------------------------------------- keys


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Identity of a tokenizer by content (vocab, merges, normalisation, template), memoised on it."""
    cached = getattr(tokenizer, "_sft_tui_fingerprint", None)
    if cached:
        return cached
    digest = hashlib.sha256()
    backend = getattr(tokenizer, "backend_tokenizer", None)
    digest.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
    digest.update(str(getattr(tokenizer, "chat_template", None)).encode())
    digest.update(json.dumps(getattr(tokenizer, "special_tokens_map", {}), sort_keys=True, default=str).encode())
    value = digest.hexdigest()[:20]
    try:
        tokenizer._sft_tui_fingerprint = value
    except Exception:  # pragma: no cover - frozen objects
        pass
    return value


def _key(path: Any, tokenizer: Any, data: DataConfig) -> str:
    parts = {
        "v": PIPELINE_VERSION,
        "files": file_identity(resolve_paths(path)),
        "tokenizer": [getattr(tokenizer, "name_or_path", ""), tokenizer_fingerprint(tokenizer)],
        "data": {k: getattr(data, k) for k in ("format", "columns", "template", "system_prompt", "max_length",
                                               "truncation", "train_on_prompt", "multi_turn")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def tokenized_cache_dir() -> Path:
    return cache_dir() / "tokenized"


# --------------------------------------------------------------------------- detection


def _detection(loaded: LoadedRows, data: DataConfig) -> Detection:
    return detect_for(loaded.dataset, data.format, data.columns)


# --------------------------------------------------------------------------- the map function


class _RowProcessor:
    """Batched map function (Arrow in, Arrow out): raw rows → input_ids/labels, bad rows → empty + a problem note.

    Each good row is rendered with the template (text and trained character spans; with
    ``multi_turn: expand`` one row per answer), all rows of a batch are tokenized in one Rust call,
    labelled with numpy by overlap with those spans, and linted (``lint.py``). Problems travel in
    ``__kind__``/``__msg__`` (several joined by ``SEP``); a row with only warnings keeps its tokens.
    """

    def __init__(self, fmt: str, columns: dict[str, str], data: DataConfig, tokenizer: Any,
                 renderer: Renderer, offset: int = 0, features: Any = None) -> None:
        self.fmt, self.columns, self.data = fmt, columns, data
        self.tokenizer, self.renderer, self.offset = tokenizer, renderer, offset
        self.stop_ids = template_profile(tokenizer, data.template).stop_token_ids
        self.on_batch: Callable[[int], None] | None = None
        # datasets stores objects of mixed shapes (messages whose content is text in one row and a part
        # list in another) as Json features: Arrow batches hold them as JSON text until decoded.
        self.features = features
        self.json_columns = [name for name, feat in (features or {}).items() if "Json" in repr(feat)]

    def _rows(self, batch: Any) -> list[dict[str, Any]]:
        rows = batch.to_pylist()
        if self.json_columns:
            decoded = self.features.decode_batch({c: batch.column(c).to_pylist() for c in self.json_columns})
            for c in self.json_columns:
                for row, value in zip(rows, decoded[c]):
                    row[c] = value
        return rows

    def _render_rows(self, batch: Any) -> tuple[list[int], list[list[tuple[str, str]]], list[str],
                                                 list[list[tuple[int, int]]], list[int]]:
        """Per output row: its batch row, problems, text, trained spans and CONTENT_FLAGS bits
        (a bad row: one output row, no text)."""
        src: list[int] = []
        problems: list[list[tuple[str, str]]] = []
        texts: list[str] = []
        spans: list[list[tuple[int, int]]] = []
        fmt, columns, system_prompt, pieces = self.fmt, self.columns, self.data.system_prompt, self.renderer.pieces
        expand = self.data.multi_turn == "expand"
        feats: list[int] = []
        for i, row in enumerate(self._rows(batch)):
            try:
                conv = to_conversation(row, fmt, columns, system_prompt)
                rendered = [pieces_to_spans(pieces(c)) for c in (expand_answers(conv) if expand else [conv])]
            except BadRow as exc:
                src.append(i)
                feats.append(0)
                problems.append([(exc.kind, exc.detail)])
                texts.append("")
                spans.append([])
                continue
            control = has_control_chars(conv.turns)
            flags = content_flags(conv.turns)
            feats.extend([flags] * len(rendered))
            for text, sp in rendered:
                src.append(i)
                problems.append([("control_chars", control)] if control else [])
                texts.append(text)
                spans.append(sp)
        return src, problems, texts, spans, feats

    def __call__(self, batch: Any, indices: Any) -> Any:
        import pyarrow as pa

        data = self.data
        src, problems, texts, spans, feats = self._render_rows(batch)
        n = len(src)
        good = [j for j in range(n) if not problems[j] or problems[j][0][0] in WARNING_KINDS]
        enc = encode_spans_batch([texts[j] for j in good], [spans[j] for j in good], self.tokenizer,
                                 data.max_length, data.train_on_prompt)
        kept, orig, trained = enc.lengths, enc.original_lengths, enc.trained
        ends = [spans[j][-1][0] if spans[j] and not data.train_on_prompt else None for j in good]
        lints = row_warnings(enc, ends, [texts[j] for j in good], self.tokenizer, self.stop_ids, data.max_length)
        keep = np.ones(len(good), dtype=bool)
        for k, j in enumerate(good):
            problems[j].extend(lints[k])
            if orig[k] > kept[k]:
                msg = f"{int(orig[k])} tokens > max_length {data.max_length}"
                if trained[k] and data.truncation != "drop":
                    msg += ": the last answer is cut, its end-of-turn not trained"
                if data.truncation == "drop":
                    keep[k] = False
                elif trained[k] == 0:
                    msg += " (nothing left to train after truncation, dropped)"
                    keep[k] = False
                problems[j].append(("too_long", msg))
            elif trained[k] == 0 and not data.train_on_prompt:
                problems[j].append(("nothing_trained", "no answer token is trained in this row"))
                keep[k] = False
        rows = np.asarray(good, dtype=np.int64)[keep]
        length = np.zeros(n, dtype=np.int64)
        orig_length = np.zeros(n, dtype=np.int64)
        n_trained = np.zeros(n, dtype=np.int64)
        length[rows], orig_length[rows], n_trained[rows] = kept[keep], orig[keep], trained[keep]
        tok_keep = np.repeat(keep, kept) if not keep.all() else slice(None)
        ids, labels = enc.input_ids[tok_keep], enc.labels[tok_keep]
        offsets = np.zeros(n + 1, dtype=np.int32)
        np.cumsum(length, out=offsets[1:])
        offsets_arr = pa.array(offsets)

        def lists(values: np.ndarray) -> Any:
            return pa.ListArray.from_arrays(offsets_arr, pa.array(values))

        names = batch.column_names
        take = pa.array(np.asarray(src, dtype=np.int64))
        out = {
            "input_ids": lists(ids.astype(np.int32)),
            "attention_mask": lists(np.ones(len(ids), dtype=np.int8)),
            "labels": lists(labels),
            "length": pa.array(length), "orig_length": pa.array(orig_length), "n_trained": pa.array(n_trained),
            "__row__": pa.array(np.asarray(indices, dtype=np.int64)[src] + self.offset),
            "__feat__": pa.array(np.asarray(feats, dtype=np.int8)),
            "__kind__": pa.array([SEP.join(k for k, _ in p) for p in problems], type=pa.string()),
            "__msg__": pa.array([SEP.join(m for _, m in p) for p in problems], type=pa.string()),
            "__line__": batch.column("__line__").take(take) if "__line__" in names else pa.nulls(n, pa.int64()),
            "__file__": (batch.column("__file__").take(take) if "__file__" in names
                         else pa.array(np.zeros(n, dtype=np.int64))),
        }
        if self.on_batch:
            self.on_batch(batch.num_rows)
        return pa.table(out)


def expand_answers(conv: Conversation) -> list[Conversation]:
    """``multi_turn: expand``: one conversation per trained answer, ending on it, earlier answers as context."""
    out = []
    for i, turn in enumerate(conv.turns):
        if turn["role"] != "assistant" or not turn.get("train", True):
            continue
        turns = [dict(t, train=False) if t["role"] == "assistant" else t for t in conv.turns[:i]] + [turn]
        out.append(Conversation(turns, conv.line, conv.source, conv.raw, conv.tools))
    return out


def _auto_num_proc(n_rows: int, requested: int | None) -> int:
    if requested:
        return requested
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    # Process start-up and pickling the tokenizer cost ~1 s; it only pays back on big data.
    # With few cores the Rust tokenizer already uses them all in-process; forking only adds overhead.
    return 1 if n_rows < 50_000 or cpus < 4 else min(cpus // 2, 8)


def _tokenize_loaded(loaded: LoadedRows, det: Detection, tokenizer: Any, data: DataConfig, workdir: Path,
                     progress: Progress | None, key: str):
    import datasets

    ds = loaded.dataset
    renderer = get_renderer(tokenizer, data.template)
    n = len(ds)
    num_proc = _auto_num_proc(n, data.num_proc)
    done = [0]

    def tick(k: int) -> None:
        done[0] += k
        if progress:
            progress("tokenizing", min(done[0] / n, 1.0))

    # Arrow in and out: no Python object per token; big batches amortise the per-batch Rust call.
    ds = ds.with_format("arrow")
    kwargs = dict(batched=True, batch_size=MAP_BATCH, with_indices=True, remove_columns=ds.column_names,
                  load_from_cache_file=False, desc=None)
    if progress:
        progress("tokenizing", 0.0)
    if num_proc == 1:
        proc = _RowProcessor(det.format, det.columns, data, tokenizer, renderer, features=ds.features)
        proc.on_batch = tick
        with DATASETS_LOCK:
            out = ds.map(proc, cache_file_name=str(workdir / "map.arrow"), new_fingerprint=key, **kwargs)
    else:
        # Worker processes cannot call back; map in a few chunks and report between them.
        chunks = max(2, min(10, n // 20_000))
        bounds = np.linspace(0, n, chunks + 1).astype(int)
        parts = []
        for c, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            proc = _RowProcessor(det.format, det.columns, data, tokenizer, renderer, offset=int(a),
                                 features=ds.features)
            part = ds.select(range(int(a), int(b)))
            with DATASETS_LOCK:
                parts.append(part.map(proc, num_proc=num_proc, cache_file_name=str(workdir / f"map{c}.arrow"),
                                      new_fingerprint=f"{key}-{c}", **kwargs))
            tick(int(b - a))
        out = datasets.concatenate_datasets(parts)
    return out.with_format(None)


def _collect(out: Any, loaded: LoadedRows) -> tuple[np.ndarray, ProblemLog, int, dict[str, int]]:
    """Indices of trainable rows, the problem log, how many source rows they came from, and how many
    of those hold tool calls, reasoning, tool results or turns of one role in a row."""
    table = out.data
    kinds = np.asarray(table.column("__kind__").to_pylist(), dtype=object)
    lengths = table.column("length").to_numpy()
    good = np.nonzero(lengths > 0)[0]
    sources = int(np.unique(table.column("__row__").to_numpy()[good]).size) if good.size else 0
    flags = np.zeros(0, dtype=np.int8)
    if good.size:  # once per source row (an expanded row repeats its source's flags)
        _, first = np.unique(table.column("__row__").to_numpy()[good], return_index=True)
        flags = table.column("__feat__").to_numpy()[good][first]
    content = {name: int(((flags & bit) > 0).sum()) for name, bit in CONTENT_FLAGS.items()}
    problems = ProblemLog()
    problems.merge(loaded.problems)
    bad = np.nonzero(kinds != "")[0]
    if bad.size:
        sub = out.select_columns(["__kind__", "__msg__", "__line__", "__file__"]).select(bad[:200_000])
        for kind, msg, line, f in zip(sub["__kind__"], sub["__msg__"], sub["__line__"], sub["__file__"]):
            source = loaded.files[f] if f is not None and f < len(loaded.files) else None
            for one_kind, one_msg in zip(kind.split(SEP), msg.split(SEP)):
                problems.add(one_kind, one_msg, line, source)
    return good, problems, sources, content


def _tokenized(path: Any, tokenizer: Any, data: DataConfig, progress: Progress | None,
               use_cache: bool = True) -> tuple[Any, dict[str, Any], bool]:
    """(good tokenized rows, meta, from_cache). Meta holds detection, problems and sample rows."""
    quiet_datasets()  # off for good: switching bars back on races loads in other threads (tqdm's _lock)
    return _tokenized_inner(path, tokenizer, data, progress, use_cache)


def _tokenized_inner(path: Any, tokenizer: Any, data: DataConfig, progress: Progress | None,
                     use_cache: bool = True) -> tuple[Any, dict[str, Any], bool]:
    import datasets

    key = _key(path, tokenizer, data)
    target = tokenized_cache_dir() / key
    meta = json.loads((target / "meta.json").read_text()) if use_cache and (target / "meta.json").exists() else None
    if meta is not None and meta.get("rows_ok", 0) > 0:  # an empty result is never served from the cache
        if progress:
            progress("cached", 1.0)
        return datasets.load_from_disk(str(target / "data")), meta, True
    if progress:
        progress("loading", 0.0)
    loaded = load_rows_detailed(path, skip_bad_rows=True)
    det = _detection(loaded, data)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    try:
        out = _tokenize_loaded(loaded, det, tokenizer, data, work, progress, key)
        good, problems, sources, content = _collect(out, loaded)
        if progress:
            progress("saving", 0.99)
        good_ds = out.select(good).select_columns(TOKEN_COLUMNS)
        if good.size == 0:
            # datasets cannot reload an empty saved dataset, and there is nothing worth caching:
            # report the problems from memory instead.
            meta = {"detection": det.to_dict(), "problems": problems.to_dict(), "rows": len(loaded.dataset),
                    "rows_ok": 0, "examples": 0, "content": content, "files": loaded.files,
                    "line_kind": loaded.line_kind,
                    "template": get_renderer(tokenizer, data.template).name, "samples": []}
            return good_ds.flatten_indices(), meta, False
        good_ds.save_to_disk(str(work / "data"))
        samples = []
        first_rows = dict.fromkeys(int(r) for r in out.data.column("__row__").to_numpy()[good[:50]])
        for src_row in list(first_rows)[:5]:
            row = loaded.dataset[src_row]
            conv = to_conversation(row, det.format, det.columns, data.system_prompt,
                                   source=loaded.files[row.get("__file__", 0) or 0])
            samples.append(conv.to_dict())
        meta = {"detection": det.to_dict(), "problems": problems.to_dict(), "rows": len(loaded.dataset),
                "rows_ok": sources, "examples": int(good.size), "content": content, "files": loaded.files,
                "line_kind": loaded.line_kind,
                "template": get_renderer(tokenizer, data.template).name, "samples": samples}
        (work / "meta.json").write_text(json.dumps(meta))
        del out
        for f in work.glob("map*.arrow"):
            f.unlink(missing_ok=True)
        # Another process that finished the same key first keeps its copy (the same rows): deleting it
        # pulled the files from under that process while it loaded them. Only a partial one is replaced.
        if not (target / "meta.json").exists():
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(work, target)
            except OSError:  # another process moved its copy in just now: theirs is as good
                pass
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if progress:
        progress("done", 1.0)
    return datasets.load_from_disk(str(target / "data")), meta, False


def _lengths(ds: Any, column: str) -> np.ndarray:
    return np.asarray(ds.data.column(column).to_numpy()) if ds.num_rows else np.zeros(0, dtype=np.int64)


def _report(data: DataConfig, meta: dict[str, Any], ds: Any, tokenizer: Any, batch_size: int,
            from_cache: bool, seed: int, n_samples: int) -> DataReport:
    det = meta["detection"]
    report = DataReport(
        paths=meta["files"], format=det["format"], confidence=det["confidence"], reason=det["reason"],
        columns=det["columns"], template=meta.get("template"), tokenizer=getattr(tokenizer, "name_or_path", None),
        line_kind=meta.get("line_kind", "line"), rows=meta["rows"], rows_ok=meta["rows_ok"],
        problems=ProblemLog.from_dict(meta["problems"]), from_cache=from_cache,
    )
    report.stats = length_stats(_lengths(ds, "length"), _lengths(ds, "n_trained"), data.max_length,
                                batch_size=batch_size, original=_lengths(ds, "orig_length"), seed=seed)
    if "over_max_length" in report.stats:  # dropped rows are not in ds, but every long row is logged
        report.stats["over_max_length"] = report.problems.counts.get("too_long", 0)
    report.examples = meta.get("examples", meta["rows_ok"])
    report.roles = role_assignment(det["format"], det["columns"], meta.get("samples", []))
    profile = template_profile(tokenizer, data.template)
    content = meta.get("content") or {}
    report.template_notes = [text for key, text in profile.notes.items() if key == "any" or content.get(key)]
    report.warnings.extend(tokenizer_warnings(tokenizer, data.template, profile.stop_token_ids))
    renderer = get_renderer(tokenizer, data.template) if n_samples else None
    convs = [Conversation.from_dict(c) for c in meta.get("samples", [])]
    if data.multi_turn == "expand":
        convs = [part for conv in convs for part in expand_answers(conv)]
    for conv in convs[:n_samples]:
        row = tokenize_conversation(conv, tokenizer, renderer, data.max_length, data.train_on_prompt)
        report.samples.append({"line": conv.line, "source": conv.source, "turns": conv.turns,
                               "tokens": len(row.input_ids), "trained_tokens": row.trained_tokens,
                               "segments": [[t, f] for t, f in row.segments()]})
    if report.stats.get("rows") and report.stats.get("trained_tokens", 1) == 0:
        report.warnings.append("no tokens are trained: check the format and data.train_on_prompt")
    return report


def _raise_if_bad(report: DataReport, data: DataConfig) -> None:
    fatal = {k: v for k, v in report.problems.to_dict().items() if k not in WARNING_KINDS}
    if data.skip_bad_rows or not fatal:
        return
    kind, info = next(iter(fatal.items()))
    ex = info["examples"][0] if info["examples"] else {}
    where = f"{ex.get('source')}:{ex.get('line')}: " if ex.get("line") is not None else ""
    total = sum(v["count"] for v in fatal.values())
    text = f"{where}{ex.get('message', info['about'])}"
    if kind == "bad_json":
        text = f"{where}not valid JSON: {ex.get('message')}"
    raise UserError(f"{total} bad row(s) in the data; first: {text}",
                    "fix them, or set data.skip_bad_rows: true to leave them out "
                    "(`sft-tui data inspect` lists them)", kind="bad_data")


# --------------------------------------------------------------------------- public entry points


def _as_data_config(source: Any) -> tuple[DataConfig, int, int]:
    if isinstance(source, Config):
        return source.data, source.training.batch_size, source.training.seed
    if isinstance(source, DataConfig):
        return source, 4, 42
    if isinstance(source, (list, tuple)):
        return DataConfig(path=[str(p) for p in source]), 4, 42
    return DataConfig(path=str(source)), 4, 42


def inspect_data(path_or_config: Any, tokenizer: Any = None, format: str | None = None,
                 max_length: int | None = None, template: str | None = None,
                 columns: dict[str, str] | None = None, batch_size: int | None = None,
                 samples: int = 3, progress: Progress | None = None, use_cache: bool = True) -> DataReport:
    """Everything the dataset screen and `sft-tui data inspect` show; never raises for bad rows.

    Without a tokenizer it still detects the format, counts rows and finds problems (lengths are
    then in characters).
    """
    start = time.perf_counter()
    data, default_bs, seed = _as_data_config(path_or_config)
    updates = {k: v for k, v in (("format", format), ("max_length", max_length), ("template", template),
                                 ("columns", columns)) if v is not None}
    if updates:
        data = data.model_copy(update=updates)
    bs = batch_size or default_bs
    if tokenizer is None:
        report = _inspect_without_tokenizer(data, samples, progress)
    else:
        ds, meta, hit = _tokenized(data.path, tokenizer, data, progress, use_cache)
        report = _report(data, meta, ds, tokenizer, bs, hit, seed, samples)
    report.seconds = time.perf_counter() - start
    return report


def _inspect_without_tokenizer(data: DataConfig, samples: int, progress: Progress | None) -> DataReport:
    loaded = load_rows_detailed(data.path, skip_bad_rows=True)
    det = _detection(loaded, data)
    problems = ProblemLog()
    problems.merge(loaded.problems)
    ds = loaded.dataset
    lengths: list[int] = []
    shown: list[dict[str, Any]] = []
    n = len(ds)
    done = 0
    for batch in ds.iter(batch_size=2000):
        keys = list(batch)
        for i in range(len(batch[keys[0]])):
            row = {k: batch[k][i] for k in keys}
            src = loaded.files[row.get("__file__") or 0]
            try:
                conv = to_conversation(row, det.format, det.columns, data.system_prompt, source=src)
            except BadRow as exc:
                problems.add(exc.kind, exc.detail, exc.line, src)
                continue
            lengths.append(sum(len(t["content"]) for t in conv.turns))
            if len(shown) < samples:
                shown.append({"line": conv.line, "source": src, "turns": conv.turns})
        done += len(batch[keys[0]])
        if progress:
            progress("checking", done / n)
    report = DataReport(paths=loaded.files, format=det.format, confidence=det.confidence, reason=det.reason,
                        columns=det.columns, line_kind=loaded.line_kind, rows=n, rows_ok=len(lengths),
                        problems=problems, samples=shown)
    report.stats = {"rows": len(lengths), "unit": "characters"}
    if lengths:
        arr = np.asarray(lengths)
        report.stats["length"] = {"min": int(arr.min()), "mean": round(float(arr.mean()), 1), "max": int(arr.max()),
                                  **{f"p{p}": int(np.percentile(arr, p)) for p in (50, 90, 95, 99)}}
    report.warnings.append("no tokenizer given: lengths are in characters (pass --model for token statistics)")
    return report


def prepare_datasets(config: Config, tokenizer: Any, progress: Progress | None = None) -> PreparedData:
    """Train/eval datasets ready for a plain HF Trainer with ``make_collator``; raises UserError on bad data."""
    data, seed = config.data, config.training.seed
    ds, meta, hit = _tokenized(data.path, tokenizer, data, progress)
    report = _report(data, meta, ds, tokenizer, config.training.batch_size, hit, seed, 3)
    _raise_if_bad(report, data)
    if ds.num_rows == 0:
        too_long = report.problems.counts.get("too_long", 0)
        if too_long:
            raise UserError(f"all {too_long} usable row(s) are longer than data.max_length {data.max_length}",
                            "raise data.max_length, or set data.truncation: truncate to cut rows instead")
        raise UserError("no trainable rows in the data", "see `sft-tui data inspect` for what is wrong")
    warnings = list(report.warnings)
    too_long = report.problems.counts.get("too_long", 0)
    if too_long:
        warnings.append(f"{too_long} row(s) longer than max_length {data.max_length} were "
                        f"{'cut' if data.truncation == 'truncate' else 'left out'}")
    eval_rows: np.ndarray | None = None
    if data.validation_path:
        eval_ds, eval_meta, _ = _tokenized(data.validation_path, tokenizer, data, progress)
        eval_report = _report(data, eval_meta, eval_ds, tokenizer, config.training.batch_size, True, seed, 0)
        _raise_if_bad(eval_report, data)
        train_ds = ds
        eval_source = data.validation_path
    elif data.validation_split > 0 and ds.num_rows >= 2:
        n = ds.num_rows
        n_eval = min(n - 1, max(1, int(round(n * data.validation_split))))
        perm = np.random.default_rng(seed).permutation(n)
        eval_rows, train_rows = np.sort(perm[:n_eval]), np.sort(perm[n_eval:])
        train_ds, eval_ds = ds.select(train_rows), ds.select(eval_rows)
        eval_source = data.path
    else:
        train_ds, eval_ds, eval_source = ds, None, None
    eval_conversations = _conversations(eval_source, eval_ds, data, meta if eval_source == data.path else None)
    report.train_rows = train_ds.num_rows
    report.eval_rows = eval_ds.num_rows if eval_ds is not None else 0
    keep = ["input_ids", "attention_mask", "labels"]
    train_ds = train_ds.select_columns(keep)
    eval_ds = eval_ds.select_columns(keep) if eval_ds is not None else None
    if data.packing:
        from .packing import pack

        if progress:
            progress("packing", 0.0)
        quiet_datasets()
        train_ds = pack(train_ds, data.max_length)
        eval_ds = pack(eval_ds, data.max_length) if eval_ds is not None else None
    report.warnings = warnings
    if progress:
        progress("ready", 1.0)
    return PreparedData(train_ds, eval_ds, eval_conversations, report, warnings, data.packing)


def _conversations(path: Any, ds: Any, data: DataConfig, meta: dict[str, Any] | None) -> list[Conversation]:
    """Held-out rows as conversations (for generation-based evaluation), read back from the raw data."""
    if path is None or ds is None or ds.num_rows == 0:
        return []
    loaded = load_rows_detailed(path, skip_bad_rows=True)
    det = _detection(loaded, data)
    rows = _lengths(ds, "__row__") if ds._indices is None else np.asarray(ds["__row__"])
    raw = loaded.dataset.select(rows.tolist())
    out = []
    for row in raw:
        try:
            out.append(to_conversation(row, det.format, det.columns, data.system_prompt,
                                       source=loaded.files[row.get("__file__") or 0]))
        except BadRow:
            continue
    return out
