"""Generation stops where the chat template ends a turn, not only at the tokenizer's EOS.

Qwen-style base models have an EOS (``<|endoftext|>``) that is not the token closing a chat turn
(``<|im_end|>``). The ``eot_run`` fixture gives the demo run exactly that shape: the same trained
adapter and base weights, with the EOS of the tokenizer and the model's generation config moved to
``<|endoftext|>``. Stopping on the EOS alone, the tuned model then writes its answer again and
again (a made-up next turn); the template's stop id ends it after the first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from sft_tui.core.run.rundir import RunDir
from test_eval_support import cached_trained_run, one_torch_thread

PROMPT = "Read the review and give its sentiment and topic.\n\nThe soup was cold and the waiter was rude."
RUN_ON = "positive.<|im_end|>\n<|im_start|>user\nWe stayed two nights"


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


def _set_eos(folder: Path, token: str, token_id: int) -> None:
    tok = folder / "tokenizer_config.json"
    data = json.loads(tok.read_text())
    data["eos_token"] = token
    tok.write_text(json.dumps(data))
    for name in ("generation_config.json", "config.json"):
        path = folder / name
        if path.exists():
            data = json.loads(path.read_text())
            data["eos_token_id"] = token_id
            path.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def eot_run(demo_model_dir, tmp_path_factory) -> RunDir:
    """The demo run, re-pointed at a copy of the demo model whose EOS is <|endoftext|> (id 0)."""
    root = tmp_path_factory.mktemp("eot")
    base = root / "base"
    shutil.copytree(demo_model_dir, base)
    run_dir = root / "run"
    shutil.copytree(cached_trained_run(demo_model_dir), run_dir)
    shutil.rmtree(run_dir / "merged", ignore_errors=True)
    shutil.rmtree(run_dir / "eval", ignore_errors=True)
    _set_eos(base, "<|endoftext|>", 0)
    _set_eos(run_dir / "adapter", "<|endoftext|>", 0)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["model"]["path"] = str(base)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return RunDir(run_dir)


@pytest.fixture(scope="module")
def eot_pair(eot_run):
    from sft_tui.core.eval.generate import ModelPair

    return ModelPair(eot_run)


# --------------------------------------------------------------------------- no model


def test_stop_ids_are_the_templates_end_of_turn_then_the_eos():
    from sft_tui.core.data.profile import stop_strings
    from sft_tui.core.eval.generate import answer_only, generation_stop_ids
    from sft_tui.testing.toy import build_toy_tokenizer

    tok = build_toy_tokenizer("chatml")
    tok.eos_token = "<|endoftext|>"
    im_end, eos = tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert generation_stop_ids(tok, "auto") == [im_end, eos]
    assert generation_stop_ids(tok, "chatml") == [im_end, eos]
    stops = stop_strings(tok, "auto")
    assert answer_only(RUN_ON, stops) == "positive."
    assert answer_only("  Sentiment: good.  ", stops) == "Sentiment: good."


def test_a_marker_the_tokenizer_splits_is_no_stop_id():
    """llama3's <|eot_id|> is several tokens to a chatml tokenizer: its first piece ('<' or so)
    must not stop generation, the text is matched instead."""
    from sft_tui.core.eval.generate import generation_stop_ids
    from sft_tui.testing.toy import build_toy_tokenizer

    tok = build_toy_tokenizer("chatml")
    tok.eos_token = "<|endoftext|>"
    assert len(tok("<|eot_id|>", add_special_tokens=False)["input_ids"]) > 1
    assert generation_stop_ids(tok, "llama3") == [tok.convert_tokens_to_ids("<|endoftext|>")]


def test_streamed_text_is_cut_at_a_stop_text_split_across_pieces():
    from sft_tui.core.eval.generate import _StopCutter

    cutter = _StopCutter(["<|im_end|>", "</s>"])
    out = [cutter.feed(piece) for piece in ["posi", "tive.<|im", "_en", "d|>\nuser", "\nmore"]]
    assert "".join(out) == "positive." and cutter.done
    plain = _StopCutter(["<|im_end|>"])
    text = "".join(plain.feed(p) for p in ["a <", "b", " c"]) + plain.flush()
    assert text == "a <b c" and not plain.done


# --------------------------------------------------------------------------- the demo run


def test_answers_stop_at_the_end_of_turn_not_in_a_made_up_next_turn(eot_pair):
    from sft_tui.core.eval.generate import GenSettings

    pair = eot_pair
    im_end = pair.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert pair.tokenizer.eos_token == "<|endoftext|>"
    assert pair.stop_ids[0] == im_end and pair.tokenizer.eos_token_id in pair.stop_ids
    settings = GenSettings(max_new_tokens=40)
    batched = pair.generate("tuned", [pair.render(PROMPT)], settings)[0]
    streamed = "".join(pair.stream("tuned", PROMPT, settings)).strip()
    for answer in (batched, streamed):
        assert answer.startswith("Sentiment:")
        assert answer.count("Sentiment:") == 1 and "\n" not in answer, answer
        assert "user" not in answer
    assert batched == streamed


def test_scores_count_the_answer_only(eot_run, eot_pair, monkeypatch):
    """A model output that runs past its end-of-turn marker is scored as what came before it."""
    from sft_tui.core.eval.evaluate import evaluate_run
    from sft_tui.core.eval.generate import GenSettings

    monkeypatch.setattr(eot_pair, "generate", lambda which, texts, *a, **k: [RUN_ON] * len(texts))
    result = evaluate_run(eot_run, limit=3, which=("tuned",), settings=GenSettings(max_new_tokens=4),
                          pair=eot_pair, loss_limit=4, save=False)
    assert [s["tuned"] for s in result.samples] == ["positive."] * 3
    assert result.models["tuned"]["mean_answer_words"] == 1.0


def test_exported_models_stop_on_the_end_of_turn(eot_run, tmp_path, capfd):
    """generation_config.json of a merge (and of a full fine-tune's folder) lists the stop ids,
    so plain ``model.generate()`` elsewhere stops where the template ends a turn; the export
    prints no third-party progress bars."""
    from transformers import GenerationConfig
    from transformers.utils import logging as hf_logging

    from sft_tui.core.eval.export import merge, write_model_card

    hf_logging.enable_progress_bar()  # as in a fresh process
    capfd.readouterr()
    res = merge(eot_run, tmp_path / "merged")
    printed = capfd.readouterr()
    assert "%|" not in printed.err + printed.out
    im_end, eos = 3, 0
    assert json.loads((res.path / "generation_config.json").read_text())["eos_token_id"] == [im_end, eos]
    assert GenerationConfig.from_pretrained(str(res.path)).eos_token_id == [im_end, eos]

    full = tmp_path / "full-run"
    full.mkdir()
    config = yaml.safe_load((eot_run.path / "config.yaml").read_text())
    config["method"]["type"] = "full"
    (full / "config.yaml").write_text(yaml.safe_dump(config))
    shutil.copytree(res.path, full / "adapter")
    gen = full / "adapter" / "generation_config.json"
    gen.write_text(json.dumps({**json.loads(gen.read_text()), "eos_token_id": eos}))
    write_model_card(RunDir(full))
    assert json.loads(gen.read_text())["eos_token_id"] == [im_end, eos]
    # A LoRA adapter folder has no generation config: none is invented.
    write_model_card(eot_run)
    assert not (eot_run.adapter_dir / "generation_config.json").exists()
