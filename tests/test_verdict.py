"""The verdict on an evaluation (paired bootstrap intervals, warnings) and `sft-tui eval --gate`.

No model is loaded: results are built by hand from synthetic per-row scores, or from answers
scored by the real metric code, in synthetic run folders (``sft_tui.testing.synthetic``).
``write_evaluated_run`` is shared with the Evaluate screen's pilot and snapshot tests.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from sft_tui.core.eval.evaluate import EvalResult, generation_metrics, row_scores, save_result
from sft_tui.core.eval.verdict import MIN_ROWS, Verdict, bleu_scores, compute_verdict
from sft_tui.core.run.rundir import RunDir
from sft_tui.testing import synthetic

# --------------------------------------------------------------------------- builders


def scored(base: list[float], tuned: list[float], *, base_loss: list[float] | None = None,
           tuned_loss: list[float] | None = None, stopped: list[bool] | None = None,
           answers: tuple[list[str], list[str], list[str]] | None = None) -> EvalResult:
    """A result from synthetic per-row ROUGE-L scores (and per-row mean losses over 10 tokens)."""
    n = len(base)
    result = EvalResult(run="r", source="adapter", data="held-out rows", rows_loss=len(base_loss or []),
                        rows_generated=n, settings={"max_new_tokens": 32})
    refs, bases, tuneds = answers or ([f"reference {i}" for i in range(n)], [f"b{i}" for i in range(n)],
                                      [f"t{i}" for i in range(n)])
    for name, scores, losses in (("base", base, base_loss), ("tuned", tuned, tuned_loss)):
        metrics: dict = {"rouge_l": sum(scores) / n}
        per_row: dict = {"rouge_l": list(scores)}
        if losses:
            per_row.update(loss_sum=[10 * x for x in losses], loss_tokens=[10] * len(losses))
            metrics["eval_loss"] = sum(losses) / len(losses)
        if name == "tuned" and stopped is not None:
            per_row["stopped"] = stopped
        result.models[name], result.per_row[name] = metrics, per_row
    result.samples = [{"prompt": f"p{i}", "reference": refs[i], "base": bases[i], "tuned": tuneds[i]} for i in range(n)]
    return result


def noisy(n: int, mean: float, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [min(max(mean + rng.uniform(-spread, spread), 0.0), 1.0) for _ in range(n)]


REVIEWS = [
    ("The room was clean and the staff were friendly.", "positive", "hotel"),
    ("The soup was cold and the waiter was rude.", "negative", "restaurant"),
    ("The battery died after an hour.", "negative", "phone"),
    ("The plot was gripping and the acting superb.", "positive", "movie"),
    ("The bed was hard and the shower leaked.", "negative", "hotel"),
    ("The bread was fresh and the dessert delicious.", "positive", "restaurant"),
    ("The screen is bright and the camera sharp.", "positive", "phone"),
    ("The dialogue was flat and the ending silly.", "negative", "movie"),
    ("The view from the balcony was stunning.", "positive", "hotel"),
    ("We waited an hour for a cold pizza.", "negative", "restaurant"),
    ("The charger stopped working in a week.", "negative", "phone"),
    ("A warm, funny film with a great cast.", "positive", "movie"),
]


def write_evaluated_run(root: Path, name: str = "demo-lora-example", *, rows: int = 12,
                        run_path: str | None = None) -> RunDir:
    """A finished synthetic LoRA run with a saved evaluation of ``rows`` real review rows: the
    tuned model right on all but two, the base off-task; the tuned eval loss is about twice the
    run's final train loss (an overfitting warning). Fixed: the same file on every machine."""
    run = synthetic.write_run(root, name, steps=40, run_path=run_path or f"runs/{name}")
    run.adapter_dir.mkdir(parents=True, exist_ok=True)
    (run.adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 32, "base_model_name_or_path": "demo"}))
    picked = [REVIEWS[i % len(REVIEWS)] for i in range(rows)]
    refs = [f"Sentiment: {s}. Topic: {t}." for _, s, t in picked]
    tuned = list(refs)
    if rows > 3:
        tuned[3] = "Sentiment: positive. Topic: hotel."
        tuned[-1] = ("Sentiment: positive. Topic: movie. Sentiment: positive. Topic: movie. Sentiment: positive. "
                     "Topic: movie. Sentiment: positive.")
    base = ["I stayed there twice and the waiter was lovely and the battery was",
            "Write a short review of a phone you bought.", "user user user"] * (rows // 3 + 1)
    base = base[:rows]
    result = EvalResult(run=name, source="adapter", data="held-out 10% of sample:reviews_alpaca.jsonl",
                        rows_loss=40, rows_generated=rows, settings={"max_new_tokens": 24, "temperature": 0.0},
                        time=1795600000.0, seconds=12.5)
    for model, preds, loss in (("base", base, 2.83), ("tuned", tuned, 1.95)):
        per_row = row_scores(preds, refs)
        sums = [9 * (loss + 0.3 * math.sin(i * 1.3 + len(model))) for i in range(40)]
        tokens = [9] * 40
        mean = sum(sums) / sum(tokens)
        result.models[model] = {"eval_loss": mean, "perplexity": math.exp(mean), "trained_tokens": sum(tokens),
                                **generation_metrics(preds, refs, per_row), "seconds": 6.0}
        per_row.update(loss_sum=sums, loss_tokens=tokens,
                       stopped=[model == "tuned" and i != rows - 1 for i in range(rows)])
        result.per_row[model] = per_row
    result.samples = [{"prompt": f"Read the review and give its sentiment and topic.\n\n{text}", "reference": ref,
                       "line": 1801 + i, "base": b, "tuned": t}
                      for i, ((text, _, _), ref, b, t) in enumerate(zip(picked, refs, base, tuned))]
    result.verdict = compute_verdict(result, run).to_dict()
    save_result(run, result, "eval-example")
    return run


# --------------------------------------------------------------------------- decisions


def test_a_clear_win_is_called_better_with_intervals():
    n = 40
    result = scored(noisy(n, 0.15, 0.1, 1), noisy(n, 0.85, 0.1, 2),
                    base_loss=noisy(60, 0.9, 0.1, 3), tuned_loss=noisy(60, 0.4, 0.1, 4))
    verdict = compute_verdict(result)
    assert verdict.decision == "better" and verdict.better
    rouge = next(m for m in verdict.metrics if m.key == "rouge_l")
    assert rouge.decision == "better" and 0 < rouge.low < rouge.diff < rouge.high and rouge.n == n
    assert rouge.diff == pytest.approx(result.models["tuned"]["rouge_l"] - result.models["base"]["rouge_l"])
    loss = next(m for m in verdict.metrics if m.key == "eval_loss")
    assert loss.decision == "better" and loss.high < 0 and loss.n == 60  # lower loss is better
    assert verdict.line.startswith("Tuned is better than base on 2 of 2 metrics: ROUGE-L +0.")
    assert "n=40 rows; loss on 60 rows; paired bootstrap 95%" in verdict.line
    assert verdict.warnings == []
    # Deterministic: the same evidence gives the same interval every time.
    again = next(m for m in compute_verdict(result).metrics if m.key == "rouge_l")
    assert (again.low, again.high) == (rouge.low, rouge.high)


def test_a_three_row_difference_is_not_called_a_win():
    result = scored([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])  # every row improved, but only three of them
    verdict = compute_verdict(result)
    assert verdict.decision == "unclear" and not verdict.better
    assert verdict.line.startswith("Not enough rows to call a win")
    assert "n=3 rows" in verdict.line
    assert [w["kind"] for w in verdict.warnings] == ["few_rows"]
    assert "not enough rows to call a win" in verdict.warnings[0]["text"]
    # The same per-row gain on enough rows is a win.
    assert compute_verdict(scored([0.0] * MIN_ROWS, [1.0] * MIN_ROWS)).decision == "better"
    # A loss measured on many rows still counts; the few generated rows are named as too few.
    mixed_n = compute_verdict(scored([0.0] * 6, [1.0] * 6, base_loss=noisy(200, 0.8, 0.1, 1),
                                     tuned_loss=noisy(200, 0.3, 0.1, 2)))
    assert mixed_n.decision == "better"
    assert mixed_n.line.startswith("Tuned is better than base on 1 of 2 metrics: eval loss −0.")
    assert "; too few rows to tell on ROUGE-L +1.00 [+1.00, +1.00]: only 6 rows, at least 10 needed" in mixed_n.line


def test_a_clear_loss_is_called_worse():
    result = scored(noisy(30, 0.8, 0.1, 5), noisy(30, 0.3, 0.1, 6))
    verdict = compute_verdict(result)
    assert verdict.decision == "worse" and not verdict.better
    assert verdict.line.startswith("Tuned is worse than base on 1 of 1 metrics: ROUGE-L −0.")


def test_mixed_and_no_clear_difference():
    mixed = compute_verdict(scored(noisy(30, 0.2, 0.1, 7), noisy(30, 0.8, 0.1, 8),
                                   base_loss=noisy(30, 0.4, 0.05, 9), tuned_loss=noisy(30, 0.9, 0.05, 10)))
    assert mixed.decision == "mixed" and not mixed.better
    assert mixed.line.startswith("Mixed: tuned is better on ROUGE-L")
    assert "but worse on eval loss +0.51 [+0.49, +0.52]" in mixed.line
    same = compute_verdict(scored(noisy(40, 0.5, 0.3, 11), noisy(40, 0.5, 0.3, 12)))
    assert same.decision == "unclear" and same.line.startswith("No clear difference between tuned and base")
    rouge = same.metrics[0]
    assert rouge.low < 0 < rouge.high and rouge.decision == "unclear"


def test_better_needs_no_clear_loss_and_a_tuned_only_result_has_no_verdict():
    only_tuned = scored([0.1] * 12, [0.9] * 12)
    del only_tuned.models["base"]
    verdict = compute_verdict(only_tuned)
    assert verdict.decision == "unknown" and "base model was not evaluated" in verdict.line


def test_bleu_interval_uses_the_corpus_bleu_the_table_shows():
    import numpy as np
    import sacrebleu

    from sft_tui.core.eval.evaluate import bleu_statistics

    rng = random.Random(0)
    words = "the a cat sat on mat hotel positive negative topic sentiment . :".split()
    for _ in range(100):
        n = rng.randint(1, 5)
        refs = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(n)]
        hyps = [" ".join(rng.choices(words, k=rng.randint(0, 8))) for _ in range(n)]
        summed = np.sum(bleu_statistics(hyps, refs), axis=0)
        assert float(bleu_scores(summed)[0]) == pytest.approx(sacrebleu.corpus_bleu(hyps, [refs]).score, abs=1e-9)


def test_verdict_from_real_answers_round_trips_with_the_result(tmp_path):
    run = write_evaluated_run(tmp_path / "runs")
    saved = json.loads((run.path / "eval" / "eval-example.json").read_text())
    result = EvalResult.from_dict(saved)
    verdict = result.get_verdict()
    assert isinstance(verdict, Verdict) and verdict.to_dict() == {**saved["verdict"]}
    assert verdict.decision == "better" and saved["verdict"]["better"] is True
    assert {m.key for m in verdict.metrics} == {"rouge_l", "exact_match", "bleu", "eval_loss"}
    em = next(m for m in verdict.metrics if m.key == "exact_match")
    assert "exact match +83 pts [" in verdict.line and em.interval_text().endswith(" pts")
    table = dict(result.table(verdict))
    assert table["exact match"][2].endswith("✓") and table["exact match"][3] == em.interval_text()
    assert result.columns(verdict)[-1] == "95% interval" and result.columns()[-1] == "change"


def test_old_result_files_still_read_and_get_a_verdict(tmp_path):
    """A file saved before per-row scores: generation intervals from its answers, loss without one."""
    run = write_evaluated_run(tmp_path / "runs")
    path = run.path / "eval" / "eval-example.json"
    data = json.loads(path.read_text())
    del data["per_row"], data["verdict"]
    path.write_text(json.dumps(data))
    from sft_tui.core.eval.evaluate import latest_result

    result = latest_result(run)
    assert result is not None and result.per_row == {} and result.verdict is None
    verdict = result.get_verdict(run)
    loss = next(m for m in verdict.metrics if m.key == "eval_loss")
    assert loss.decision == "no interval" and "per-row losses not saved" in verdict.line
    rouge = next(m for m in verdict.metrics if m.key == "rouge_l")
    assert rouge.low is not None and rouge.decision == "better" and verdict.decision == "better"


# --------------------------------------------------------------------------- warnings


def test_overfitting_warning_reads_the_run_train_loss(tmp_path):
    run = synthetic.write_run(tmp_path, "overfit", steps=10)
    synthetic.append(run, *({"time": synthetic.T0 + 100 + s, "type": "train", "step": s, "loss": 0.05}
                            for s in range(11, 16)))
    result = scored(noisy(20, 0.2, 0.1, 1), noisy(20, 0.8, 0.1, 2),
                    base_loss=[2.0] * 20, tuned_loss=[1.2] * 20)
    warnings = compute_verdict(result, run).warnings
    assert [w["kind"] for w in warnings] == ["overfitting"]
    assert "final train loss 0.050 is far below the eval loss 1.200 (eval/train 24.0 > 2)" in warnings[0]["text"]
    # Close losses, or two tiny ones, are no warning.
    assert compute_verdict(result, train_loss=0.9).warnings == []
    tiny = scored([0.1] * 12, [0.9] * 12, base_loss=[1.0] * 12, tuned_loss=[0.03] * 12)
    assert compute_verdict(tiny, train_loss=0.01).warnings == []


def test_identical_answers_and_answers_that_never_stop_are_flagged():
    n = 12
    refs = [f"Sentiment: {'positive' if i % 2 else 'negative'}. Topic: t{i % 3}." for i in range(n)]
    tuned = ["Sentiment: positive. Topic: t1."] * 8 + refs[8:]
    result = scored([0.1] * n, [0.5] * n, answers=(refs, ["x"] * n, tuned),
                    stopped=[True] * 7 + [False] * 5)
    kinds = {w["kind"]: w["text"] for w in compute_verdict(result).warnings}
    assert set(kinds) == {"same_answers", "no_stop"}
    assert "8 of 12 tuned answers are the same ('Sentiment: positive. Topic: t1.')" in kinds["same_answers"]
    assert "5 of 12 tuned answers ran to the 32-token cap without an end-of-turn token" in kinds["no_stop"]
    # The same answer where the references are the same too is a right answer, not a collapse.
    same_refs = ["Sentiment: positive. Topic: t1."] * n
    fine = scored([0.1] * n, [0.5] * n, answers=(same_refs, ["x"] * n, same_refs), stopped=[True] * 11 + [False])
    assert compute_verdict(fine).warnings == []


# --------------------------------------------------------------------------- the CLI gate


def _cli(argv: list[str]) -> int:
    from sft_tui.cli import main

    return main(argv)


def _save(run: RunDir, result: EvalResult, name: str) -> None:
    result.run = run.name
    result.verdict = compute_verdict(result, run).to_dict()
    save_result(run, result, name)


def test_gate_exit_codes(tmp_path, capsys):
    run = synthetic.write_run(tmp_path, "gated", steps=10)
    assert _cli(["eval", str(run.path), "--last", "--gate"]) == 2  # nothing saved yet
    assert "no saved evaluation" in capsys.readouterr().err
    _save(run, scored(noisy(30, 0.1, 0.1, 1), noisy(30, 0.9, 0.1, 2)), "a-win")
    assert _cli(["eval", str(run.path), "--last", "--gate", "--show", "0"]) == 0
    out = capsys.readouterr().out
    assert "verdict: Tuned is better than base on 1 of 1 metrics" in out and "gate: passed (exit 0" in out
    assert "95% interval" in out
    assert _cli(["eval", str(run.path), "--last"]) == 0  # without --gate the exit code says nothing
    capsys.readouterr()
    _save(run, scored([0.0] * 3, [1.0] * 3), "b-three-rows")
    assert _cli(["eval", str(run.path), "--last", "--gate", "--show", "0"]) == 1
    out = capsys.readouterr().out
    assert "verdict: Not enough rows to call a win" in out and "warning: Only 3 rows generated" in out
    assert "gate: failed (exit 1" in out
    _save(run, scored(noisy(30, 0.5, 0.3, 3), noisy(30, 0.5, 0.3, 4)), "c-no-difference")
    assert _cli(["eval", str(run.path), "--last", "--gate", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["verdict"]["decision"] == "unclear" and data["verdict"]["better"] is False
    _save(run, scored(noisy(30, 0.9, 0.1, 5), noisy(30, 0.1, 0.1, 6)), "d-worse")
    assert _cli(["eval", str(run.path), "--last", "--gate"]) == 1
    capsys.readouterr()
    assert _cli(["eval", str(run.path), "--last", "--gate", "--no-base"]) == 2
    assert "--no-base" in capsys.readouterr().err


def test_gate_on_a_file_saved_before_verdicts(tmp_path, capsys):
    run = write_evaluated_run(tmp_path)
    path = run.path / "eval" / "eval-example.json"
    data = json.loads(path.read_text())
    del data["per_row"], data["verdict"]
    path.write_text(json.dumps(data))
    assert _cli(["eval", str(run.path), "--last", "--gate", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"]["decision"] == "better"
    del data["models"]["base"]  # a tuned-only evaluation: nothing to compare, so the gate fails
    path.write_text(json.dumps(data))
    assert _cli(["eval", str(run.path), "--last", "--gate"]) == 1
    assert "verdict: No verdict: the base model was not evaluated" in capsys.readouterr().out
