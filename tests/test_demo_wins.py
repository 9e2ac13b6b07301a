"""The demo wins in the preset a newcomer tries first: quick-test on the demo model, fixed seed.

The issue this pins: 60 steps at the usual LoRA rate (2e-4) left the tuned model writing reviews,
every answer alike, and Evaluate showed ROUGE-L 0.064 → 0.018 ✗ and BLEU 0.46 → 0.22 ✗. Here the
preset is trained in-process exactly as the worker does (``run_training``), evaluated as ``sft-tui
eval`` does (loss on every held-out row, generation on the first 24), and the tuned model must beat
the base on every metric the table marks ✓/✗, clearly, with answers that are the task's answers and
end where the turn ends (no made-up next turn), in the Playground's streaming path too.
Measured on 2 shared CPU cores: about 26 s with the demo model built.
"""

from __future__ import annotations

import re

import pytest

from sft_tui.core.config import Config, apply_preset
from sft_tui.core.eval.evaluate import METRICS, evaluate_run
from sft_tui.core.run.rundir import RunDir
from sft_tui.core.train.recipe import run_training

pytestmark = pytest.mark.slow

ANSWER = re.compile(r"^Sentiment: (positive|negative)\. Topic: (restaurant|hotel|movie|phone)\.$")
RUN_ON = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "user\n", "assistant\n")
GENERATED_ROWS = 24


@pytest.fixture(scope="module")
def quick_test_eval(tmp_path_factory, demo_model_dir):
    config = apply_preset(Config(), "quick-test")
    assert config.model.path == "demo" and config.data.path == "sample:reviews_alpaca.jsonl"
    assert config.training.max_steps == 60 and config.training.seed == 42
    run = RunDir.create(config, runs_dir=tmp_path_factory.mktemp("demo-wins") / "runs")
    assert run_training(run) == "done"
    result = evaluate_run(run, limit=GENERATED_ROWS)
    return run, result


def test_quick_test_tuned_beats_base_on_every_shown_metric(quick_test_eval):
    _, result = quick_test_eval
    base, tuned = result.models["base"], result.models["tuned"]
    assert result.rows_generated == GENERATED_ROWS
    shown = [(key, higher) for key, _label, _fmt, higher in METRICS
             if higher is not None and (base.get(key) is not None or tuned.get(key) is not None)]
    assert {k for k, _ in shown} >= {"eval_loss", "perplexity", "exact_match", "rouge_l", "bleu"}
    for key, higher in shown:
        assert (tuned[key] > base[key]) if higher else (tuned[key] < base[key]), (key, base[key], tuned[key])
    # Clearly, not by a hair; seed 42 on these 24 rows measured eval loss 1.45 → 0.20, ROUGE-L
    # 0.01 → 0.81, BLEU 0.4 → 78, exact match 0% → 33%.
    assert tuned["eval_loss"] < 0.5 * base["eval_loss"]
    assert tuned["rouge_l"] > base["rouge_l"] + 0.4
    assert tuned["bleu"] > base["bleu"] + 40
    assert tuned["exact_match"] >= 0.2
    # Every ✓/✗ in the table the user sees is a ✓.
    rows = dict(result.table())
    for label in ("eval loss", "perplexity", "exact match", "ROUGE-L F1", "BLEU"):
        assert "✗" not in rows[label][-1] and "✓" in rows[label][-1], (label, rows[label])
    verdict = result.get_verdict() if hasattr(result, "get_verdict") else None
    if verdict is not None:
        assert verdict.decision == "better", verdict.to_dict()
        assert all(m.decision == "better" for m in verdict.metrics), verdict.to_dict()


def test_quick_test_answers_are_the_tasks_answers_and_end_with_the_turn(quick_test_eval):
    _, result = quick_test_eval
    tuned = [s["tuned"] for s in result.samples]
    assert len(set(tuned)) >= 3, tuned  # not one sentence for every review
    assert sum(bool(ANSWER.match(a)) for a in tuned) >= 0.9 * len(tuned), tuned
    for sample in result.samples:
        for which in ("base", "tuned"):
            assert not any(marker in sample[which] for marker in RUN_ON), (which, sample[which])


def test_the_playground_answers_with_the_task_and_stops(quick_test_eval):
    """The Playground streams through ``ModelPair.stream``; its answer is a label, then it stops."""
    from sft_tui.core.eval.generate import GenSettings, load_pair

    run, _ = quick_test_eval
    pair = load_pair(run, "auto")
    prompt = "Classify the sentiment and topic of this review.\n\nThe soup was cold and the waiter was rude."
    answer = "".join(pair.stream("tuned", prompt, GenSettings(max_new_tokens=48))).strip()
    assert ANSWER.match(answer), answer
    base = "".join(pair.stream("base", prompt, GenSettings(max_new_tokens=48))).strip()
    assert not any(marker in base for marker in RUN_ON), base
