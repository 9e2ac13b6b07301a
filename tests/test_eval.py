"""Evaluation, generation and the eval/chat CLI on a real (short) demo training run."""

from __future__ import annotations

import io
import json
import math

import pytest

from sft_tui.core.errors import UserError
from sft_tui.core.run.rundir import RunDir
from test_eval_support import cached_trained_run, copy_run, one_torch_thread


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield

FAST = dict(max_new_tokens=16)


@pytest.fixture(scope="module")
def run(demo_model_dir, tmp_path_factory) -> RunDir:
    return RunDir(copy_run(cached_trained_run(demo_model_dir), tmp_path_factory.mktemp("eval-runs")))


@pytest.fixture(scope="module")
def pair(run):
    from sft_tui.core.eval.generate import load_pair

    return load_pair(run)


@pytest.fixture(scope="module")
def result(run, pair):
    from sft_tui.core.eval.evaluate import evaluate_run
    from sft_tui.core.eval.generate import GenSettings

    stages = []
    res = evaluate_run(run, limit=16, settings=GenSettings(**FAST), pair=pair,
                       progress=lambda stage, f: stages.append((stage, f)))
    res.stages = stages  # type: ignore[attr-defined]
    return res


# --------------------------------------------------------------------------- metrics (no model)


def test_generation_metrics_exact_rouge_bleu():
    from sft_tui.core.eval.evaluate import generation_metrics

    refs = ["Sentiment: positive. Topic: hotel.", "Sentiment: negative. Topic: movie."]
    same = generation_metrics(refs, refs)
    assert same["exact_match"] == 1.0 and same["rouge_l"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(100.0)
    half = generation_metrics(["Sentiment:  positive. Topic: hotel.", "Sentiment: positive. Topic: phone."], refs)
    assert half["exact_match"] == 0.5  # whitespace is normalised, words are not
    assert 0.5 < half["rouge_l"] < 1.0 and 0 < half["bleu"] < 100
    none = generation_metrics(["", "nothing like it"], refs)
    assert none["exact_match"] == 0.0 and none["rouge_l"] == 0.0
    # Long references: exact match says nothing, so it is not reported.
    long = ["word " * 80, "other " * 80]
    assert generation_metrics(long, long)["exact_match"] is None
    # rouge-score's default tokenizer drops non-ASCII words; ours keeps them.
    assert generation_metrics(["Привет мир"], ["Привет мир"])["rouge_l"] == pytest.approx(1.0)


def test_gen_settings_validation():
    from sft_tui.core.eval.generate import GenSettings

    assert GenSettings(max_new_tokens="12", temperature="0.5", top_p="0.9").validated().max_new_tokens == 12  # type: ignore[arg-type]
    with pytest.raises(UserError, match="top-p"):
        GenSettings(top_p=0).validated()
    with pytest.raises(UserError, match="max new tokens"):
        GenSettings(max_new_tokens=0).validated()


# --------------------------------------------------------------------------- evaluation


def test_eval_metrics_computed_and_saved(run, result):
    from sft_tui.core.eval.evaluate import latest_result

    assert set(result.models) == {"base", "tuned"}
    for metrics in result.models.values():
        assert metrics["trained_tokens"] > 0
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]), rel=1e-6)
        for key in ("rouge_l", "bleu", "exact_match"):
            assert metrics[key] is not None
    assert result.rows_generated == 16 and result.rows_loss == 200  # 10% of the 2000 sample rows
    saved = json.loads(open(result.path).read())
    assert saved["models"]["tuned"]["eval_loss"] == result.models["tuned"]["eval_loss"]
    assert result.path.startswith(str(run.path / "eval"))
    assert latest_result(run).path == result.path
    assert len(saved["samples"]) == 16 and {"prompt", "reference", "base", "tuned"} <= set(saved["samples"][0])
    assert result.stages[-1] == ("done", 1.0)
    # Per-row scores and losses are kept (the verdict's evidence) and add up to the table's numbers.
    for name in ("base", "tuned"):
        rows, metrics = saved["per_row"][name], result.models[name]
        assert len(rows["loss_sum"]) == len(rows["loss_tokens"]) == 200
        assert sum(rows["loss_tokens"]) == metrics["trained_tokens"]
        assert sum(rows["loss_sum"]) / sum(rows["loss_tokens"]) == pytest.approx(metrics["eval_loss"], rel=1e-6)
        assert len(rows["rouge_l"]) == len(rows["exact_match"]) == len(rows["stopped"]) == len(rows["bleu_stats"]) == 16
        assert sum(rows["rouge_l"]) / 16 == pytest.approx(metrics["rouge_l"])
    assert all(saved["per_row"]["tuned"]["stopped"])  # tuned answers end on the end-of-turn token
    assert saved["verdict"]["line"] == result.verdict["line"]


def test_tuned_beats_base_on_held_out_rows(result):
    base, tuned = result.models["base"], result.models["tuned"]
    assert tuned["eval_loss"] < base["eval_loss"] - 1.0
    assert tuned["exact_match"] > base["exact_match"]
    assert tuned["rouge_l"] > base["rouge_l"] + 0.3
    assert tuned["bleu"] > base["bleu"]
    table = dict(result.table())
    assert table["exact match"][2].endswith("✓") and table["eval loss"][2].endswith("✓")
    verdict = result.get_verdict()
    assert verdict.decision == "better", verdict.line
    assert verdict.line.startswith("Tuned is better than base on 4 of 4 metrics: ROUGE-L +")
    assert "(n=16 rows; loss on 200 rows; paired bootstrap 95%)" in verdict.line
    assert dict(result.table(verdict))["eval loss"][3].startswith("[−")  # the interval column


def test_generation_says_which_answers_never_stopped(pair):
    from sft_tui.core.eval.generate import GenSettings

    prompts = [pair.render("Read the review and give its sentiment and topic.\n\nThe soup was cold."),
               pair.render("hi")]
    flags: list[bool] = []
    short = pair.generate("tuned", prompts, GenSettings(max_new_tokens=3), stopped=flags)
    assert flags == [False, False] and all(short)  # cut at 3 tokens: no end-of-turn token yet
    pair.generate("tuned", prompts[:1], GenSettings(max_new_tokens=24), stopped=flags)
    assert flags == [True]


def test_loss_counts_only_trained_tokens(pair):
    from sft_tui.core.data import IGNORE_INDEX
    from sft_tui.core.eval.evaluate import eval_data, token_loss

    data = eval_data(pair)
    rows = data.dataset.select(range(5))
    expected = sum(sum(1 for x in r["labels"][1:] if x != IGNORE_INDEX) for r in rows)
    _, count = token_loss(pair, "tuned", rows, batch_size=2)
    assert count == expected
    # Batching (padding) must not change the loss.
    one, _ = token_loss(pair, "tuned", rows, batch_size=1)
    many, _ = token_loss(pair, "tuned", rows, batch_size=5)
    assert one == pytest.approx(many, abs=1e-4)


def test_prompt_is_the_training_text_up_to_the_answer(pair):
    from sft_tui.core.data import IGNORE_INDEX
    from sft_tui.core.eval.evaluate import eval_data

    data = eval_data(pair)
    conv, row = data.conversations[0], data.dataset[0]
    prompt_ids = pair.encode(pair.render(conv))
    first_trained = next(i for i, x in enumerate(row["labels"]) if x != IGNORE_INDEX)
    assert row["input_ids"][:first_trained] == prompt_ids


def test_eval_on_a_data_file(run, pair, tmp_path):
    from sft_tui.core.eval.evaluate import evaluate_run
    from sft_tui.core.eval.generate import GenSettings

    path = tmp_path / "mine.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Read the review and give its sentiment and topic.\n\n{t}"},
                          {"role": "assistant", "content": a}]}
            for t, a in [("The room was clean and the staff were friendly.", "Sentiment: positive. Topic: hotel."),
                         ("The battery was terrible.", "Sentiment: negative. Topic: phone.")]]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = evaluate_run(run, data_path=str(path), limit=5, which=("tuned",), settings=GenSettings(**FAST),
                       pair=pair, name="mine")
    assert res.rows_loss == 2 and res.rows_generated == 2 and set(res.models) == {"tuned"}
    assert (run.path / "eval" / "mine.json").exists()
    with pytest.raises(UserError, match="no data file"):
        evaluate_run(run, data_path=str(tmp_path / "missing.jsonl"), pair=pair)


def test_run_without_adapter_is_a_clear_error(tmp_path):
    from sft_tui.core.config import Config
    from sft_tui.core.eval.evaluate import evaluate_run

    run = RunDir.create(Config(), runs_dir=tmp_path)
    with pytest.raises(UserError, match="no trained model yet"):
        evaluate_run(run)


def test_demo_runs_keep_the_base_they_were_trained_on(run, tmp_path):
    """'demo' may be rebuilt after training; the adapter's recorded base folder wins while it exists."""
    import shutil

    from sft_tui.core.models.demo import demo_model_dir
    from sft_tui.core.eval.generate import base_model_path

    assert base_model_path(run) == str(demo_model_dir())
    copy = RunDir(shutil.copytree(run.path, tmp_path / "r", ignore=shutil.ignore_patterns("eval", "chat", "merged")))
    cfg_path = copy.adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    old = tmp_path / "demo-model" / "v0-old"
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    cfg["base_model_name_or_path"] = str(old)
    cfg_path.write_text(json.dumps(cfg))
    assert base_model_path(copy) == str(old)
    shutil.rmtree(old)
    with pytest.raises(UserError, match="older build of the demo model"):
        base_model_path(copy)


# --------------------------------------------------------------------------- generation and chat


def test_stream_gives_the_same_answer_as_batched_generation(pair):
    from sft_tui.core.eval.generate import GenSettings

    prompt = "Read the review and give its sentiment and topic.\n\nThe soup was cold and the waiter was rude."
    settings = GenSettings(max_new_tokens=20)
    for which in ("base", "tuned"):
        chunks = list(pair.stream(which, prompt, settings))
        assert len(chunks) >= 2  # token by token, not one blob at the end
        assert "".join(chunks).strip() == pair.generate(which, [pair.render(prompt)], settings)[0]
    tuned = "".join(pair.stream("tuned", prompt, settings))
    assert tuned.startswith("Sentiment:")


def test_batched_generation_with_left_padding_matches_one_by_one(pair):
    from sft_tui.core.eval.generate import GenSettings

    prompts = [pair.render(p) for p in ("hi", "Read the review and give its sentiment and topic.\n\nThe soup was "
                                        "cold, the bread was stale and the waiter was rude. Never again.", "The phone")]
    settings = GenSettings(max_new_tokens=10)
    for which in ("base", "tuned"):
        together = pair.generate(which, prompts, settings, batch_size=3)
        alone = [pair.generate(which, [p], settings, batch_size=1)[0] for p in prompts]
        assert together == alone


def test_stream_can_be_stopped_and_sampling_works(pair):
    import threading

    from sft_tui.core.eval.generate import GenSettings

    stop = threading.Event()
    stop.set()
    out = "".join(pair.stream("base", "hello", GenSettings(max_new_tokens=40), stop=stop))
    assert len(out.split()) <= 2
    sampled = "".join(pair.stream("tuned", "hello", GenSettings(max_new_tokens=8, temperature=1.0, top_p=0.9)))
    assert isinstance(sampled, str)


def test_compare_streams_both_and_keeps_history(run, pair):
    from sft_tui.core.eval.generate import GenSettings, compare, load_history

    seen = []
    record = compare(pair, "Read the review and give its sentiment and topic.\n\nThe plot was superb.",
                     GenSettings(max_new_tokens=16), on_chunk=lambda w, c: seen.append(w))
    assert seen[0] == "base" and seen[-1] == "tuned" and seen.count("tuned") >= 2
    assert record.answers["tuned"].startswith("Sentiment:")
    history = load_history(run)
    assert history[-1]["answers"] == record.answers and history[-1]["settings"]["max_new_tokens"] == 16


def test_cli_eval_json(run, pair, capsys):
    from sft_tui.cli import main

    assert main(["eval", str(run.path), "--json", "--limit", "4", "--max-new-tokens", "14", "--loss-limit", "20",
                 "--gate"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows_generated"] == 4 and data["rows_loss"] == 20
    # The loss on 20 rows is a clear win; 4 generated rows are too few to call one on the answers.
    assert data["verdict"]["decision"] == "better" and data["verdict"]["better"] is True
    assert "too few rows to tell on ROUGE-L" in data["verdict"]["line"]
    assert [w["kind"] for w in data["verdict"]["warnings"]] == ["few_rows"]
    assert data["models"]["tuned"]["rouge_l"] > data["models"]["base"]["rouge_l"]
    assert (run.path / "eval").is_dir() and data["path"].endswith(".json")


def test_cli_eval_table_and_unknown_run(run, pair, capsys):
    from sft_tui.cli import main

    assert main(["eval", str(run.path), "--limit", "2", "--max-new-tokens", "12", "--loss-limit", "8",
                 "--no-base", "-q"]) == 0
    out = capsys.readouterr().out
    assert "exact match" in out and "tuned" in out and "saved:" in out
    assert "verdict: No verdict: the base model was not evaluated" in out
    assert main(["eval", "no-such-run"]) == 2
    assert "no run named" in capsys.readouterr().err


def test_cli_chat_with_piped_stdin(run, pair, capsys, monkeypatch):
    from sft_tui.cli import main
    from sft_tui.core.eval.generate import load_history

    before = len(load_history(run))
    # One prompt a line; a literal \\n inside a line stands for a newline in the prompt.
    monkeypatch.setattr("sys.stdin", io.StringIO(
        "Read the review and give its sentiment and topic.\\n\\nThe lobby was dirty and the view was terrible.\n"
        "\n"
        "Read the review and give its sentiment and topic.\\n\\nThe dessert was delicious.\n"))
    assert main(["chat", str(run.path), "--max-new-tokens", "16"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 2 and all(ln.startswith("Sentiment:") for ln in lines), lines
    history = load_history(run)
    assert len(history) == before + 2 and history[-1]["prompt"].endswith("\n\nThe dessert was delicious.")
    assert set(history[-1]["answers"]) == {"tuned"}
    monkeypatch.setattr("sys.stdin", io.StringIO("Read the review and give its sentiment and topic.\\n\\nThe lobby was dirty.\n"))
    assert main(["chat", str(run.path), "--base", "--max-new-tokens", "12", "--no-history"]) == 0
    base_answer = capsys.readouterr().out.strip()
    assert base_answer and not base_answer.startswith("Sentiment:")
    assert len(load_history(run)) == before + 2


def test_cli_chat_says_each_loading_step_once(run, pair, capsys, monkeypatch):
    """At a terminal, chat reports what it loads, each step once."""
    from sft_tui.cli import main
    from sft_tui.core.eval import generate

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    def no_more_input(prompt: str = "") -> str:
        raise EOFError

    monkeypatch.setattr(generate, "_CACHE", {})  # a fresh load, so the loading steps are reported
    monkeypatch.setattr("sys.stdin", Terminal(""))
    monkeypatch.setattr("builtins.input", no_more_input)
    assert main(["chat", str(run.path)]) == 0
    steps = [line for line in capsys.readouterr().err.splitlines() if line.startswith(("loading", "attaching"))]
    assert steps[0] == "loading the tokenizer" and len(steps) == len(set(steps)) >= 3, steps
