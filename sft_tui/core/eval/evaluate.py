"""Evaluating a run: loss/perplexity on the trained tokens, and generation scored against references.

The same pipeline as training prepares the data (``prepare_datasets`` with the run's config), so
the held-out rows are exactly the ones training left out and the loss is counted over exactly the
tokens training learned (labels ≠ -100), summed over tokens rather than averaged per batch. The
generation half renders each held-out prompt with ``render_prompt`` (identical to the training
text up to the answer), decodes greedily by default, and scores with rouge-score and sacrebleu;
exact match is reported when the references are short enough for it to mean something. Both the
base and the tuned model go through the same code, so the table compares like with like. Per-row
scores and losses are kept with the result, and ``verdict.compute_verdict`` turns them into the
one-line verdict (paired bootstrap intervals) saved beside the numbers.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from sft_tui.core.errors import UserError
from sft_tui.core.eval.generate import WHICH, GenSettings, ModelPair, answer_only, load_pair
from sft_tui.core.run.rundir import RunDir

Progress = Callable[[str, float], None]

DEFAULT_LIMIT = 50
SHORT_REFERENCE_WORDS = 32  # exact match is reported when the median reference is this short

# (key, label, format, higher is better) — the table's rows, shared by the CLI and the screen.
METRICS: list[tuple[str, str, str, bool]] = [
    ("eval_loss", "eval loss", "{:.4f}", False),
    ("perplexity", "perplexity", "{:.2f}", False),
    ("exact_match", "exact match", "{:.1%}", True),
    ("rouge_l", "ROUGE-L F1", "{:.4f}", True),
    ("bleu", "BLEU", "{:.2f}", True),
    ("mean_answer_words", "answer words", "{:.1f}", None),  # type: ignore[list-item]
]


# --------------------------------------------------------------------------- metrics


class _WordTokenizer:
    """Unicode-aware words for rouge-score (its default drops every non-ASCII letter)."""

    def tokenize(self, text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())


def normalise(text: str) -> str:
    return " ".join(text.split())


def row_scores(predictions: list[str], references: list[str]) -> dict[str, list[Any]]:
    """Per-row scores, kept for the verdict's paired bootstrap: ROUGE-L F1 (0..1), exact match
    (whitespace-normalised) and sacrebleu's sufficient statistics per row, whose column sums give
    the corpus BLEU exactly ([hyp len, ref len, 4 × matches, 4 × totals])."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    rouge = [float(scorer.score(ref, pred)["rougeL"].fmeasure) for pred, ref in zip(predictions, references)]
    exact = [normalise(p) == normalise(r) for p, r in zip(predictions, references)]
    return {"rouge_l": rouge, "exact_match": exact, "bleu_stats": bleu_statistics(predictions, references)}


def bleu_statistics(predictions: list[str], references: list[str]) -> list[list[int]] | None:
    """sacrebleu's per-row BLEU statistics, or None where its (private) API has changed."""
    try:
        from sacrebleu.metrics.bleu import BLEU

        return [[int(x) for x in row] for row in BLEU()._extract_corpus_statistics(predictions, [references])]
    except Exception:  # pragma: no cover - a sacrebleu without the statistics API: BLEU gets no interval
        return None


def generation_metrics(predictions: list[str], references: list[str],
                       rows: dict[str, list[Any]] | None = None) -> dict[str, Any]:
    """ROUGE-L F1 (mean, 0..1), corpus BLEU (sacrebleu, 0..100) and exact match (share, short refs only)."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return {"rouge_l": None, "bleu": None, "exact_match": None, "rows": 0}
    rows = rows or row_scores(predictions, references)
    rouge, exact = rows["rouge_l"], rows["exact_match"]
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    return {
        "rouge_l": float(sum(rouge) / len(rouge)),
        "bleu": float(bleu),
        "exact_match": float(sum(exact) / len(exact)) if exact_match_applies(references) else None,
        "exact_matches": int(sum(exact)),
        "mean_answer_words": float(sum(len(p.split()) for p in predictions) / len(predictions)),
        "rows": len(references),
    }


def exact_match_applies(references: list[str]) -> bool:
    """Exact match means something only for short references."""
    return bool(references) and statistics.median(len(r.split()) for r in references) <= SHORT_REFERENCE_WORDS


# --------------------------------------------------------------------------- data


@dataclass
class EvalData:
    dataset: Any  # tokenized rows: input_ids / attention_mask / labels
    conversations: list[Any]
    source: str  # "validation split of PATH" or the file


def eval_data(pair: ModelPair, data_path: str | None = None, progress: Progress | None = None) -> EvalData:
    """The run's held-out rows (as training split them), or every row of ``data_path``."""
    from sft_tui.core.data import prepare_datasets

    config = pair.config.model_copy(deep=True)
    config.data.packing = False  # loss per original row; packing only speeds training up
    if data_path:
        from sft_tui.core.paths import resolve_sample

        if not data_path.startswith("sample:") and not Path(data_path).expanduser().exists():
            raise UserError(f"no data file at {data_path}", "give a .jsonl/.json/.csv/.parquet file or a dataset folder")
        if not data_path.startswith("sample:"):
            data_path = str(Path(data_path).expanduser().resolve())
        config.data.path = data_path
        config.data.validation_path = data_path
        config.data.format = "auto"
        source = str(resolve_sample(data_path)) if data_path.startswith("sample:") else data_path
    else:
        if not config.data.validation_path and config.data.validation_split <= 0:
            raise UserError(f"run {pair.run.name} held out no validation rows (data.validation_split is 0)",
                            "evaluate on a file instead: sft-tui eval RUN --data FILE")
        source = (f"validation file {config.data.validation_path}" if config.data.validation_path
                  else f"held-out {config.data.validation_split:.0%} of {config.data.path}")
    data = prepare_datasets(config, pair.tokenizer, progress=progress)
    if data.eval is None or len(data.eval) == 0:
        raise UserError("no evaluation rows", "pass --data FILE, or set data.validation_split above 0")
    return EvalData(data.eval, data.eval_conversations, source)


# --------------------------------------------------------------------------- loss


def token_losses(pair: ModelPair, which: str, dataset: Any, batch_size: int = 8,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[float], list[int]]:
    """Per row (in dataset order): the summed cross-entropy over its trained tokens (labels ≠ -100)
    and how many there were. The mean loss is sum(losses) / sum(counts), token-weighted."""
    import torch.nn.functional as F

    from sft_tui.core.data import IGNORE_INDEX, make_collator

    collate = make_collator(pair.tokenizer, pad_to_multiple_of=16)  # few distinct shapes: CPU kernels warm once
    rows = [dataset[i] for i in range(len(dataset))]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    sums, counts = [0.0] * len(rows), [0] * len(rows)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        batch = collate([rows[i] for i in idx])
        with pair.use(which) as model:
            logits = model(input_ids=batch["input_ids"].to(pair.device),
                           attention_mask=batch["attention_mask"].to(pair.device)).logits
        labels = batch["labels"][:, 1:].to(logits.device)
        logits = logits[:, :-1].float()
        losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
        row_sums = losses.sum(dim=1).tolist()
        row_counts = (labels != IGNORE_INDEX).sum(dim=1).tolist()
        for k, i in enumerate(idx):
            sums[i], counts[i] = float(row_sums[k]), int(row_counts[k])
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    return sums, counts


def token_loss(pair: ModelPair, which: str, dataset: Any, batch_size: int = 8,
               progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Mean cross-entropy over the trained tokens (labels ≠ -100) and how many there were."""
    sums, counts = token_losses(pair, which, dataset, batch_size, progress)
    return _mean_loss(sums, counts)


def _mean_loss(sums: list[float], counts: list[int]) -> tuple[float, int]:
    count = sum(counts)
    if count == 0:
        raise UserError("the evaluation rows have no trained tokens", "check the data format and train_on_prompt")
    return sum(sums) / count, count


# --------------------------------------------------------------------------- the whole evaluation


@dataclass
class EvalResult:
    run: str
    source: str  # adapter | merged
    data: str
    rows_loss: int
    rows_generated: int
    settings: dict[str, Any]
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    time: float = field(default_factory=time.time)
    seconds: float = 0.0
    path: str | None = None
    # Per model, per row: rouge_l, exact_match, bleu_stats, stopped (generated rows, in samples'
    # order) and loss_sum, loss_tokens (loss rows). Files saved before it existed have none.
    per_row: dict[str, dict[str, Any]] = field(default_factory=dict)
    verdict: dict[str, Any] | None = None  # Verdict.to_dict(), saved with the result

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def get_verdict(self, run: RunDir | None = None):
        """The saved verdict, or one computed now (results saved before verdicts existed)."""
        from sft_tui.core.eval.verdict import Verdict, compute_verdict

        if isinstance(self.verdict, dict):
            try:
                return Verdict.from_dict(self.verdict)
            except (KeyError, TypeError, ValueError):
                pass
        verdict = compute_verdict(self, run)
        self.verdict = verdict.to_dict()
        return verdict

    def table(self, verdict: Any = None) -> list[tuple[str, list[str]]]:
        """Rows of (label, [base, tuned, change]) for every metric either model has.

        Without a verdict the change is marked ✓/✗ by its direction alone (the model card); with
        one, ✓/✗ only where the verdict's interval says clearly better/worse, and a 95% interval
        column follows.
        """
        names = [w for w in WHICH if w in self.models]
        decided = {m.key: m for m in verdict.metrics} if verdict is not None else {}
        decided_for = {"perplexity": "eval_loss"}
        rows = []
        for key, label, fmt, higher in METRICS:
            values = [self.models[w].get(key) for w in names]
            if all(v is None for v in values):
                continue
            cells = [fmt.format(v) if v is not None else "-" for v in values]
            if len(names) == 2 and None not in values:
                delta = values[1] - values[0]
                sign = "+" if delta >= 0 else "−"
                text = fmt.format(abs(delta)) if "%" not in fmt else f"{abs(delta) * 100:.1f} pts"
                if verdict is None:
                    better = "" if higher is None or delta == 0 else (" ✓" if (delta > 0) == higher else " ✗")
                else:
                    m = decided.get(decided_for.get(key, key))
                    better = {"better": " ✓", "worse": " ✗"}.get(m.decision if m else "", "")
                cells.append(f"{sign}{text}{better}")
                if verdict is not None:
                    m = decided.get(key)
                    cells.append(m.interval_text() if m is not None else "")
            elif len(names) == 2:
                cells.append("")
                if verdict is not None:
                    cells.append("")
            rows.append((label, cells))
        return rows

    def columns(self, verdict: Any = None) -> list[str]:
        names = [w for w in WHICH if w in self.models]
        extra = ["change"] if len(names) == 2 else []
        if extra and verdict is not None:
            extra.append("95% interval")
        return ["metric", *names, *extra]


def eval_dir(run: RunDir) -> Path:
    return run.path / "eval"


def save_result(run: RunDir, result: EvalResult, name: str | None = None) -> Path:
    folder = eval_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    stem = name or time.strftime("eval-%Y%m%d-%H%M%S", time.localtime(result.time))
    path, n = folder / f"{stem}.json", 1
    while path.exists() and name is None:
        n += 1
        path = folder / f"{stem}-{n}.json"
    result.path = str(path)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)
    return path


def list_results(run: RunDir) -> list[Path]:
    folder = eval_dir(run)
    if not folder.is_dir():
        return []
    return sorted(folder.glob("*.json"), key=lambda p: (p.stat().st_mtime, p.name))


def latest_result(run: RunDir) -> EvalResult | None:
    for path in reversed(list_results(run)):
        try:
            result = EvalResult.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            continue
        result.path = str(path)
        return result
    return None


def evaluate_run(run: RunDir, data_path: str | None = None, limit: int | None = DEFAULT_LIMIT,
                 which: tuple[str, ...] = WHICH, settings: GenSettings | None = None, source: str = "auto",
                 batch_size: int = 8, loss_limit: int | None = None, progress: Progress | None = None,
                 save: bool = True, name: str | None = None, pair: ModelPair | None = None) -> EvalResult:
    """Evaluate the run's base and/or tuned model the same way; saved as ``eval/<time>.json``.

    ``limit`` caps the rows generated from (0 skips generation); ``loss_limit`` caps the rows the
    loss is computed over (default: all of them).
    """
    start = time.perf_counter()
    say = progress or (lambda stage, fraction: None)
    settings = (settings or GenSettings(max_new_tokens=64)).validated()
    which = tuple(w for w in WHICH if w in which)
    if not which:
        raise UserError("nothing to evaluate", "choose base, tuned or both")
    if pair is None:
        say("loading models", 0.0)
        pair = load_pair(run, source, progress=lambda msg: say(msg, 0.0))
    data = eval_data(pair, data_path, progress=lambda stage, f: say(f"data: {stage}", f))
    dataset = data.dataset
    if loss_limit is not None and loss_limit < len(dataset):
        dataset = dataset.select(range(loss_limit))
    convs = [c for c in data.conversations if c.last_assistant is not None]
    if limit is not None:
        convs = convs[: max(limit, 0)]
    prompts = [pair.render(c) for c in convs]
    references = [c.last_assistant or "" for c in convs]

    result = EvalResult(run=run.name, source=pair.source, data=data.source, rows_loss=len(dataset),
                        rows_generated=len(convs), settings={**settings.to_dict(), "batch_size": batch_size})
    predictions: dict[str, list[str]] = {}
    for name_ in which:
        t0 = time.perf_counter()
        sums, counts = token_losses(pair, name_, dataset, batch_size,
                                    progress=lambda d, n, w=name_: say(f"{w}: loss", d / max(n, 1)))
        loss, tokens = _mean_loss(sums, counts)
        metrics: dict[str, Any] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                                   "trained_tokens": tokens}
        per_row: dict[str, Any] = {"loss_sum": sums, "loss_tokens": counts}
        if convs:
            stopped: list[bool] = []  # filled by the generator: did each answer end on a stop token?
            preds = pair.generate(name_, prompts, settings, batch_size, stopped=stopped,
                                  progress=lambda d, n, w=name_: say(f"{w}: generating", d / max(n, 1)))
            # Only the answer is scored: a turn the model made up after its end-of-turn marker is not.
            preds = [answer_only(p, pair.stop_texts) for p in preds]
            predictions[name_] = preds
            rows = row_scores(preds, references)
            metrics.update(generation_metrics(preds, references, rows))
            per_row.update(rows)
            if len(stopped) == len(preds):
                per_row["stopped"] = [bool(x) for x in stopped]
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        result.models[name_] = metrics
        result.per_row[name_] = per_row
    for i, conv in enumerate(convs):
        sample = {"prompt": conv.without_last_assistant().turns[-1]["content"] if conv.turns else "",
                  "reference": references[i], "line": conv.line}
        for name_ in predictions:
            sample[name_] = predictions[name_][i]
        result.samples.append(sample)
    from sft_tui.core.eval.verdict import compute_verdict

    result.verdict = compute_verdict(result, run).to_dict()
    result.seconds = round(time.perf_counter() - start, 2)
    if save:
        save_result(run, result, name)
    say("done", 1.0)
    return result
