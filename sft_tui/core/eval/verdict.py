"""A verdict on an evaluation: is the tuned model better than the base on this data, by how much,
on which metrics, and how sure can we be.

Each metric's difference (tuned − base) gets a **paired bootstrap** 95% interval: the evaluated rows
are resampled with replacement ``RESAMPLES`` times (fixed seed, so a result reads the same every
time), the same rows for both models, and the metric is recomputed on each resample exactly as the
table computes it (mean ROUGE-L, exact-match share, corpus BLEU from summed sacrebleu statistics,
token-weighted eval loss). A metric is *clearly* better or worse only when its interval excludes 0
and it rests on at least ``MIN_ROWS`` rows; the overall verdict is "better" only when at least one
metric is clearly better and none is clearly worse. Results saved before per-row losses were kept
show the loss without an interval (and say so); their generation scores are recomputed from the
saved answers.

Warnings name what users most often get wrong: an overfit run (its final train loss far below the
eval loss), a model that gives the same answer to different prompts, answers that never stop (ran
to the token cap), and too few rows to call a win. UI-free: the CLI and the Evaluate screen show it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

MIN_ROWS = 10  # fewer rows than this: no metric is called clearly better or worse
RESAMPLES = 2000
SEED = 0
LEVEL = 0.95
OVERFIT_RATIO = 2.0  # eval loss / final train loss above this (and OVERFIT_GAP apart): overfitting
OVERFIT_GAP = 0.1  # nats; two tiny losses (0.01 vs 0.03) are not a warning
TRAIN_TAIL = 5  # the final train loss is the mean of the last few logged values (one is noisy)
SAME_ANSWER_SHARE = 0.5  # more tuned answers than this identical, although the references differ
NO_STOP_SHARE = 0.2  # at least this share of tuned answers ran to the cap without a stop token

METHOD = f"paired bootstrap {LEVEL:.0%}, {RESAMPLES} resamples"

# (key, label, higher is better) — the metrics a verdict weighs, in the order it names them.
VERDICT_METRICS: list[tuple[str, str, bool]] = [
    ("rouge_l", "ROUGE-L", True),
    ("exact_match", "exact match", True),
    ("bleu", "BLEU", True),
    ("eval_loss", "eval loss", False),
]
DECISIONS = ("better", "worse", "mixed", "unclear", "unknown")


def _signed(value: float, key: str) -> str:
    """A difference as the table writes it: unicode minus, points for shares."""
    sign = "+" if value >= 0 else "−"
    v = abs(value)
    if key == "exact_match":
        return f"{sign}{v * 100:.0f}"
    if key == "bleu":
        return f"{sign}{v:.1f}"
    return f"{sign}{v:.2f}"


@dataclass
class MetricVerdict:
    """One metric: both means, the difference, its interval and what it says."""

    key: str
    label: str
    higher_is_better: bool
    base: float
    tuned: float
    diff: float  # tuned − base
    low: float | None = None  # the interval of the difference (None: no per-row data)
    high: float | None = None
    n: int = 0  # rows it rests on
    decision: str = "unclear"  # better | worse | unclear | no interval
    note: str = ""

    def interval_text(self) -> str:
        if self.low is None or self.high is None:
            return "no interval"
        unit = " pts" if self.key == "exact_match" else ""
        return f"[{_signed(self.low, self.key)}, {_signed(self.high, self.key)}]{unit}"

    def summary(self) -> str:
        """'ROUGE-L +0.42 [+0.35, +0.49]', 'exact match +61 pts [+48, +74]', 'eval loss −1.40 (no interval: …)'."""
        unit = " pts" if self.key == "exact_match" else ""
        if self.low is None or self.high is None:
            return f"{self.label} {_signed(self.diff, self.key)}{unit} (no interval: {self.note or 'no per-row data'})"
        return (f"{self.label} {_signed(self.diff, self.key)}{unit} "
                f"[{_signed(self.low, self.key)}, {_signed(self.high, self.key)}]")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Verdict:
    decision: str  # better | worse | mixed | unclear | unknown
    line: str  # the one-line verdict, evidence included
    metrics: list[MetricVerdict] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)  # {"kind", "text"}
    rows: int = 0  # generated rows
    loss_rows: int = 0
    method: str = METHOD

    @property
    def better(self) -> bool:
        """What ``sft-tui eval --gate`` passes on."""
        return self.decision == "better"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["better"] = self.better
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        fields = MetricVerdict.__dataclass_fields__
        metrics = [MetricVerdict(**{k: v for k, v in m.items() if k in fields}) for m in data.get("metrics", [])]
        return cls(decision=str(data["decision"]), line=str(data["line"]), metrics=metrics,
                   warnings=[dict(w) for w in data.get("warnings", [])], rows=int(data.get("rows", 0)),
                   loss_rows=int(data.get("loss_rows", 0)), method=str(data.get("method", METHOD)))


# --------------------------------------------------------------------------- the bootstrap


def paired_bootstrap(n: int, statistic: Callable[[Any], Any], resamples: int = RESAMPLES,
                     seed: int = SEED, level: float = LEVEL) -> tuple[float, float]:
    """The ``level`` percentile interval of ``statistic`` over resamples of ``n`` paired rows.

    ``statistic`` takes a (k, n) matrix of counts (how often each row is drawn in each of k
    resamples) and returns k values; counts keep memory flat for any n (rows are drawn in chunks).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    chunk = max(1, min(resamples, 1_000_000 // max(n, 1)))
    p = np.full(n, 1.0 / n)
    values = []
    for start in range(0, resamples, chunk):
        counts = rng.multinomial(n, p, size=min(chunk, resamples - start)).astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            values.append(np.asarray(statistic(counts), dtype=float))
    tail = (1.0 - level) / 2 * 100
    low, high = np.nanpercentile(np.concatenate(values), [tail, 100 - tail])
    return float(low), float(high)


def _mean_diff(base: list[float], tuned: list[float]) -> Callable[[Any], Any]:
    import numpy as np

    d = np.asarray(tuned, dtype=float) - np.asarray(base, dtype=float)
    return lambda counts: counts @ d / len(d)


def _loss_diff(base_sum, base_tok, tuned_sum, tuned_tok) -> Callable[[Any], Any]:
    import numpy as np

    bs, bt, ts, tt = (np.asarray(x, dtype=float) for x in (base_sum, base_tok, tuned_sum, tuned_tok))
    return lambda counts: (counts @ ts) / (counts @ tt) - (counts @ bs) / (counts @ bt)


def bleu_scores(stats: Any) -> Any:
    """Corpus BLEU (0..100) for each row of summed sacrebleu statistics ([hyp len, ref len,
    4 × matches, 4 × totals]), vectorised: what sacrebleu's ``corpus_bleu`` computes with its
    defaults (4-grams, 'exp' smoothing), checked against it by the tests."""
    import numpy as np

    s = np.atleast_2d(np.asarray(stats, dtype=float))
    sys_len, ref_len, correct, total = s[:, 0], s[:, 1], s[:, 2:6], s[:, 6:10]
    with np.errstate(divide="ignore", invalid="ignore"):
        bp = np.where(sys_len >= ref_len, 1.0, np.where(sys_len > 0, np.exp(1 - ref_len / sys_len), 0.0))
        zeros = np.cumsum(correct == 0, axis=1)  # 'exp' smoothing halves each further zero-match order
        precision = np.where(correct > 0, 100.0 * correct / total, 100.0 / (2.0 ** zeros * total))
        score = bp * np.exp(np.log(precision).mean(axis=1))
    empty = (correct.sum(axis=1) == 0) | (total == 0).any(axis=1)
    return np.where(empty, 0.0, score)


def _bleu_diff(base_stats, tuned_stats) -> Callable[[Any], Any]:
    import numpy as np

    sb, st = np.asarray(base_stats, dtype=float), np.asarray(tuned_stats, dtype=float)
    return lambda counts: bleu_scores(counts @ st) - bleu_scores(counts @ sb)


# --------------------------------------------------------------------------- per-row data


def _generation_rows(result: Any) -> dict[str, dict[str, Any]] | None:
    """Per-row generation scores for base and tuned: saved ones, or recomputed from the saved answers."""
    n = len(result.samples)
    per_row = result.per_row or {}
    if all(len(per_row.get(w, {}).get("rouge_l") or []) == n > 0 for w in ("base", "tuned")):
        return {w: per_row[w] for w in ("base", "tuned")}
    samples = result.samples
    if not samples or not all(isinstance(s, dict) and all(k in s for k in ("reference", "base", "tuned"))
                              for s in samples):
        return None
    from sft_tui.core.eval.evaluate import row_scores

    refs = [str(s["reference"]) for s in samples]
    return {w: row_scores([str(s[w]) for s in samples], refs) for w in ("base", "tuned")}


def _loss_rows(result: Any) -> tuple[list, list, list, list] | None:
    per_row = result.per_row or {}
    try:
        b, t = per_row["base"], per_row["tuned"]
        parts = (b["loss_sum"], b["loss_tokens"], t["loss_sum"], t["loss_tokens"])
    except (KeyError, TypeError):
        return None
    if len({len(p) for p in parts}) != 1 or not parts[0]:
        return None
    return parts  # type: ignore[return-value]


# --------------------------------------------------------------------------- the verdict


def _decide(m: MetricVerdict) -> None:
    if m.low is None or m.high is None:
        m.decision = "no interval"
    elif m.n < MIN_ROWS:
        m.decision, m.note = "unclear", f"only {m.n} rows"
    elif m.low > 0 or m.high < 0:
        up = m.low > 0
        m.decision = "better" if up == m.higher_is_better else "worse"
    else:
        m.decision = "unclear"


def metric_verdicts(result: Any) -> list[MetricVerdict]:
    models = result.models
    base, tuned = models.get("base", {}), models.get("tuned", {})
    gen = _generation_rows(result) if result.samples else None
    losses = _loss_rows(result)
    out: list[MetricVerdict] = []
    for key, label, higher in VERDICT_METRICS:
        b, t = base.get(key), tuned.get(key)
        if not isinstance(b, (int, float)) or not isinstance(t, (int, float)) or math.isnan(b) or math.isnan(t):
            continue
        m = MetricVerdict(key, label, higher, float(b), float(t), float(t) - float(b))
        statistic, n = None, 0
        if key == "eval_loss":
            if losses is not None:
                statistic, n = _loss_diff(*losses), len(losses[0])
            else:
                m.note, m.n = "per-row losses not saved", int(result.rows_loss or 0)
        elif gen is not None:
            n = len(result.samples)
            if key == "bleu":
                sb, st = gen["base"].get("bleu_stats"), gen["tuned"].get("bleu_stats")
                if sb and st and len(sb) == len(st) == n:
                    statistic = _bleu_diff(sb, st)
                else:
                    m.note = "BLEU statistics unavailable"
            else:
                statistic = _mean_diff([float(x) for x in gen["base"][key]], [float(x) for x in gen["tuned"][key]])
        else:
            m.note = "answers not saved"
        if statistic is not None and n > 0:
            m.low, m.high = paired_bootstrap(n, statistic)
            m.n = n
        _decide(m)
        out.append(m)
    return out


def _final_train_loss(run: Any) -> float | None:
    from sft_tui.core.run.metrics import load_metrics

    try:
        ys = load_metrics(run).train_loss.ys
    except Exception:  # an unreadable run folder: no overfitting check, never an error
        return None
    tail = [float(y) for y in ys[-TRAIN_TAIL:] if isinstance(y, (int, float)) and math.isfinite(y)]
    return sum(tail) / len(tail) if tail else None


def verdict_warnings(result: Any, run: Any = None, train_loss: float | None = None) -> list[dict[str, str]]:
    warnings: list[dict[str, str]] = []
    rows = len(result.samples) or int(result.rows_generated or 0)
    if 0 < rows < MIN_ROWS:
        warnings.append({"kind": "few_rows", "text": (
            f"Only {rows} rows generated: not enough rows to call a win on the answer scores "
            f"(at least {MIN_ROWS}; raise rows / --limit).")})
    if 0 < int(result.rows_loss or 0) < MIN_ROWS:
        warnings.append({"kind": "few_rows", "text": (
            f"The loss rests on only {result.rows_loss} rows: not enough to call a win (at least {MIN_ROWS}).")})
    tuned = result.models.get("tuned", {})
    eval_loss = tuned.get("eval_loss")
    if train_loss is None and run is not None:
        train_loss = _final_train_loss(run)
    if (isinstance(eval_loss, (int, float)) and train_loss is not None and train_loss > 0
            and eval_loss / train_loss > OVERFIT_RATIO and eval_loss - train_loss > OVERFIT_GAP):
        warnings.append({"kind": "overfitting", "text": (
            f"Overfitting: the final train loss {train_loss:.3f} is far below the eval loss {eval_loss:.3f} "
            f"(eval/train {eval_loss / train_loss:.1f} > {OVERFIT_RATIO:g}): the model may be memorising its "
            "training rows; try fewer epochs, a lower learning rate or more data.")})
    answers = [s.get("tuned") for s in result.samples if isinstance(s, dict) and isinstance(s.get("tuned"), str)]
    if len(answers) >= 4:
        normal = [" ".join(a.split()) for a in answers]
        top, count = Counter(normal).most_common(1)[0]
        refs = {" ".join(str(s.get("reference", "")).split()) for s in result.samples
                if isinstance(s, dict) and " ".join(str(s.get("tuned", "")).split()) == top}
        if count / len(answers) > SAME_ANSWER_SHARE and len(refs) > 1:
            shown = (top[:60] + "…") if len(top) > 60 else top
            warnings.append({"kind": "same_answers", "text": (
                f"Identical answers: {count} of {len(answers)} tuned answers are the same "
                f"({'an empty answer' if not top else repr(shown)}) although their references differ; "
                "the model may have collapsed to one answer.")})
    stopped = (result.per_row or {}).get("tuned", {}).get("stopped")
    if isinstance(stopped, list) and stopped:
        never = sum(1 for s in stopped if not s)
        if never and never / len(stopped) >= NO_STOP_SHARE:
            cap = (result.settings or {}).get("max_new_tokens")
            warnings.append({"kind": "no_stop", "text": (
                f"Answers that never stop: {never} of {len(stopped)} tuned answers ran to the "
                f"{cap if cap else 'max-new-tokens'}-token cap without an end-of-turn token; the model may not "
                "have learned to stop (check the stop token is trained), or the cap is too low for these answers.")})
    return warnings


def _evidence(result: Any, metrics: list[MetricVerdict]) -> str:
    gen_n = next((m.n for m in metrics if m.key != "eval_loss" and m.n), len(result.samples))
    loss = next((m for m in metrics if m.key == "eval_loss"), None)
    parts = []
    if any(m.key != "eval_loss" for m in metrics):
        parts.append(f"n={gen_n} rows")
    if loss is not None and loss.n and (not parts or loss.n != gen_n):
        parts.append(f"loss on {loss.n} rows" if parts else f"n={loss.n} rows")
    parts.append(f"paired bootstrap {LEVEL:.0%}")
    return "; ".join(parts)


def compute_verdict(result: Any, run: Any = None, train_loss: float | None = None) -> Verdict:
    """The verdict on an ``EvalResult``; ``run`` (its RunDir) lets it read the train loss."""
    rows, loss_rows = len(result.samples), int(result.rows_loss or 0)
    warnings = verdict_warnings(result, run, train_loss)
    if "base" not in result.models or "tuned" not in result.models:
        return Verdict("unknown", "No verdict: the base model was not evaluated, so there is nothing to compare "
                       "(evaluate both, without --no-base).", [], warnings, rows, loss_rows)
    metrics = metric_verdicts(result)
    if not metrics:
        return Verdict("unknown", "No verdict: no metric was computed for both models.", [], warnings, rows, loss_rows)
    better = [m for m in metrics if m.decision == "better"]
    worse = [m for m in metrics if m.decision == "worse"]
    few = [m for m in metrics if m.decision == "unclear" and m.low is not None and m.n < MIN_ROWS]
    rest = [m for m in metrics if m.decision == "unclear" and m not in few]
    untested = [m for m in metrics if m.decision == "no interval"]
    evidence = _evidence(result, metrics)

    def listed(ms: list[MetricVerdict]) -> str:
        return ", ".join(m.summary() for m in ms)

    def too_few(ms: list[MetricVerdict]) -> str:
        counts = sorted({m.n for m in ms})
        return f"{listed(ms)}: only {' and '.join(map(str, counts))} rows, at least {MIN_ROWS} needed"

    others = ((f"; too few rows to tell on {too_few(few)}" if few else "")
              + (f"; not weighed: {listed(untested)}" if untested else ""))
    unclear = (f"; no clear difference on {listed(rest)}" if rest else "") + others
    if better and not worse:
        decision = "better"
        line = f"Tuned is better than base on {len(better)} of {len(metrics)} metrics: {listed(better)}{unclear}"
    elif worse and not better:
        decision = "worse"
        line = f"Tuned is worse than base on {len(worse)} of {len(metrics)} metrics: {listed(worse)}{unclear}"
    elif better and worse:
        decision = "mixed"
        line = f"Mixed: tuned is better on {listed(better)} but worse on {listed(worse)}{unclear}"
    else:
        decision = "unclear"
        if few and len(few) == len([m for m in metrics if m.low is not None]):
            line = f"Not enough rows to call a win (at least {MIN_ROWS} needed): {listed(metrics)}"
        else:
            line = f"No clear difference between tuned and base{': ' + listed(rest) if rest else ''}{others}"
    return Verdict(decision, f"{line} ({evidence})", metrics, warnings, rows, loss_rows)
