"""Evaluating a run: loss/perplexity on the trained tokens, and generation scored against references.

The same pipeline as training prepares the data (``prepare_datasets`` with the run's config), so
the held-out rows are exactly the ones training left out and the loss is counted over exactly the
tokens training learned (labels ≠ -100), summed over tokens rather than averaged per batch. The
generation half renders each held-out prompt with ``render_prompt`` (identical to the training
text up to the answer), decodes greedily by default, and scores with rouge-score and sacrebleu;
exact match is reported when the references are short enough for it to mean something. Both the
base and the tuned model go through the same code, so the table compares like with like.
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


def generation_metrics(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """ROUGE-L F1 (mean, 0..1), corpus BLEU (sacrebleu, 0..100) and exact match (share, short refs only)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not references:
        return {"rouge_l": None, "bleu": None, "exact_match": None, "rows": 0}
    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())
    rouge = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    bleu = sacrebleu.corpus_bleu(predictions, [references]).score
    exact = [normalise(p) == normalise(r) for p, r in zip(predictions, references)]
    short = statistics.median(len(r.split()) for r in references) <= SHORT_REFERENCE_WORDS
    return {
        "rouge_l": float(sum(rouge) / len(rouge)),
        "bleu": float(bleu),
        "exact_match": float(sum(exact) / len(exact)) if short else None,
        "exact_matches": int(sum(exact)),
        "mean_answer_words": float(sum(len(p.split()) for p in predictions) / len(predictions)),
        "rows": len(references),
    }


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


def token_loss(pair: ModelPair, which: str, dataset: Any, batch_size: int = 8,
               progress: Callable[[int, int], None] | None = None) -> tuple[float, int]:
    """Mean cross-entropy over the trained tokens (labels ≠ -100) and how many there were."""
    import torch.nn.functional as F

    from sft_tui.core.data import IGNORE_INDEX, make_collator

    collate = make_collator(pair.tokenizer, pad_to_multiple_of=16)  # few distinct shapes: CPU kernels warm once
    rows = [dataset[i] for i in range(len(dataset))]
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        batch = collate([rows[i] for i in order[start:start + batch_size]])
        with pair.use(which) as model:
            logits = model(input_ids=batch["input_ids"].to(pair.device),
                           attention_mask=batch["attention_mask"].to(pair.device)).logits
        labels = batch["labels"][:, 1:].to(logits.device)
        logits = logits[:, :-1].float()
        total += F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                                 ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((labels != IGNORE_INDEX).sum().item())
        if progress:
            progress(min(start + batch_size, len(order)), len(order))
    if count == 0:
        raise UserError("the evaluation rows have no trained tokens", "check the data format and train_on_prompt")
    return total / count, count


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvalResult":
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)

    def table(self) -> list[tuple[str, list[str]]]:
        """Rows of (label, [base, tuned, change]) for every metric either model has."""
        names = [w for w in WHICH if w in self.models]
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
                better = "" if higher is None or delta == 0 else (" ✓" if (delta > 0) == higher else " ✗")
                cells.append(f"{sign}{text}{better}")
            elif len(names) == 2:
                cells.append("")
            rows.append((label, cells))
        return rows

    def columns(self) -> list[str]:
        names = [w for w in WHICH if w in self.models]
        return ["metric", *names, *(["change"] if len(names) == 2 else [])]


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
        loss, tokens = token_loss(pair, name_, dataset, batch_size,
                                  progress=lambda d, n, w=name_: say(f"{w}: loss", d / max(n, 1)))
        metrics: dict[str, Any] = {"eval_loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                                   "trained_tokens": tokens}
        if convs:
            preds = pair.generate(name_, prompts, settings, batch_size,
                                  progress=lambda d, n, w=name_: say(f"{w}: generating", d / max(n, 1)))
            # Only the answer is scored: a turn the model made up after its end-of-turn marker is not.
            preds = [answer_only(p, pair.stop_texts) for p in preds]
            predictions[name_] = preds
            metrics.update(generation_metrics(preds, references))
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        result.models[name_] = metrics
    for i, conv in enumerate(convs):
        sample = {"prompt": conv.without_last_assistant().turns[-1]["content"] if conv.turns else "",
                  "reference": references[i], "line": conv.line}
        for name_ in predictions:
            sample[name_] = predictions[name_][i]
        result.samples.append(sample)
    result.seconds = round(time.perf_counter() - start, 2)
    if save:
        save_result(run, result, name)
    say("done", 1.0)
    return result
