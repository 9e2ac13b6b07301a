"""Dataset pipeline: formats, mappings, loading, error paths, masking token by token, cache, split, packing."""

from __future__ import annotations

import argparse
import json

import pytest

from sft_tui.core.config import Config, DataConfig
from sft_tui.core.data import (
    IGNORE_INDEX, BadRow, Conversation, detect_format, inspect_data, load_rows, make_collator,
    prepare_datasets, render_prompt, to_conversation, tokenize_conversation,
)
from sft_tui.testing.toy import build_toy_tokenizer
from sft_tui.core.errors import UserError


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_TUI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def chatml():
    return build_toy_tokenizer("chatml")


@pytest.fixture(scope="module")
def llama3():
    return build_toy_tokenizer("llama3")


def write_jsonl(path, rows):
    path.write_text("".join(r if isinstance(r, str) else json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ALPACA = [{"instruction": f"Say {i}", "input": "", "output": f"Answer {i}"} for i in range(10)]
MULTI = Conversation([
    {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review: great soup."},
    {"role": "assistant", "content": "Sentiment: positive."}, {"role": "user", "content": "Topic?"},
    {"role": "assistant", "content": "Topic: restaurant."},
])


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("name,fmt", [
    ("reviews_alpaca.jsonl", "alpaca"), ("reviews_chat.jsonl", "messages"), ("reviews_sharegpt.jsonl", "sharegpt"),
    ("reviews_prompt_completion.jsonl", "prompt_completion"), ("reviews_text.jsonl", "text"),
])
def test_detects_every_sample_format(name, fmt):
    det = detect_format(load_rows(f"sample:{name}"))
    assert (det.format, det.confidence) == (fmt, 1.0)


def test_csv_needs_mapping_and_both_directions_work():
    ds = load_rows("sample:reviews_qa.csv")
    det = detect_format(ds)
    assert det.format == "unknown" and "instruction: question" in det.reason
    for mapping in ({"instruction": "question", "output": "answer"}, {"question": "instruction", "answer": "output"}):
        det = detect_format(ds, mapping)
        assert det.format == "alpaca" and det.confidence == 1.0
        conv = to_conversation(ds[0], "alpaca", det.columns)
        assert conv.turns[-1] == {"role": "assistant", "content": ds[0]["answer"]}


def test_unknown_mapped_column_is_a_user_error():
    with pytest.raises(UserError, match="no column 'questoin'"):
        detect_format(load_rows("sample:reviews_qa.csv"), {"instruction": "questoin"})


def test_conversions_and_roles():
    conv = to_conversation({"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": '{"name": "f", "arguments": {}}'},
                                              {"from": "observation", "value": "o"}, {"from": "gpt", "value": "a"}]},
                           "sharegpt", system_prompt="sys")
    assert [t["role"] for t in conv.turns] == ["system", "user", "assistant", "tool", "assistant"]
    conv = to_conversation({"instruction": "i", "input": "x", "output": "o", "history": [["h", "a"]]}, "alpaca")
    assert [t["content"] for t in conv.turns] == ["h", "a", "i\n\nx", "o"]
    assert to_conversation({"prompt": "p", "completion": "c"}, "prompt_completion").raw
    with pytest.raises(BadRow) as e:
        to_conversation({"messages": [{"role": "wizard", "content": "x"}]}, "messages", line=7)
    assert e.value.kind == "bad_role" and e.value.line == 7
    for row, kind in [({"instruction": "i", "output": ""}, "empty_output"), ({"instruction": "i"}, "missing_field")]:
        with pytest.raises(BadRow) as e:
            to_conversation(row, "alpaca")
        assert e.value.kind == kind


# ----------------------------------------------------------------------------- loading


def test_loads_json_array_object_csv_tsv_parquet_saved_and_many(tmp_path):
    import datasets

    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    (tmp_path / "b.json").write_text(json.dumps({k: [r[k] for r in ALPACA] for k in ALPACA[0]}, indent=1))
    (tmp_path / "c.tsv").write_text("instruction\toutput\nq1\ta1\nq2\ta2\n")
    datasets.Dataset.from_list(ALPACA).to_parquet(str(tmp_path / "d.parquet"))
    datasets.Dataset.from_list(ALPACA).save_to_disk(str(tmp_path / "saved"))
    for name, n in [("a.json", 10), ("b.json", 10), ("c.tsv", 2), ("d.parquet", 10), ("saved", 10)]:
        ds = load_rows(str(tmp_path / name))
        assert len(ds) == n and detect_format(ds).format == "alpaca", name
    both = load_rows([str(tmp_path / "a.json"), str(tmp_path / "d.parquet")])
    assert len(both) == 20 and set(both["__file__"]) == {0, 1}


def test_missing_file_and_offline_hub(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="not found"):
        load_rows(str(tmp_path / "nope.jsonl"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline"):
        load_rows("someone/some-dataset")


def test_bad_json_line_named_and_skippable(tmp_path, chatml):
    path = write_jsonl(tmp_path / "bad.jsonl", ALPACA[:3] + ['{"instruction": "x", "output": \n'] + ALPACA[3:6])
    cfg = Config.model_validate({"data": {"path": str(path), "validation_split": 0}})
    with pytest.raises(UserError, match=r"bad.jsonl:4: not valid JSON"):
        prepare_datasets(cfg, chatml)
    report = inspect_data(str(path), chatml)
    assert report.problems.counts == {"bad_json": 1} and report.rows_ok == 6
    assert report.problems.examples["bad_json"][0]["line"] == 4
    cfg.data.skip_bad_rows = True
    assert prepare_datasets(cfg, chatml).train.num_rows == 6


def test_row_problems_counted_with_lines(tmp_path, chatml):
    rows = ALPACA[:4] + [{"instruction": "q", "input": "", "output": ""}, {"instruction": "q", "input": "", "output": None},
                         {"instruction": "long " * 200, "input": "", "output": "a"}]
    path = write_jsonl(tmp_path / "p.jsonl", [json.dumps(r) + ("\n\n" if i == 1 else "\n") for i, r in enumerate(rows)])
    report = inspect_data(str(path), chatml, max_length=64)
    assert report.problems.counts == {"empty_output": 1, "missing_field": 1, "too_long": 1}
    # line numbers are file lines: the blank line after row 2 shifts the rest by one
    assert report.problems.examples["empty_output"][0]["line"] == 6
    assert report.problems.examples["too_long"][0]["line"] == 8
    assert report.stats["over_max_length"] == 1
    cfg = Config.model_validate({"data": {"path": str(path), "max_length": 64, "truncation": "drop",
                                          "skip_bad_rows": True, "validation_split": 0}})
    assert prepare_datasets(cfg, chatml).train.num_rows == 4
    report = inspect_data(str(path), None)  # tokenizer-free inspection still finds problems
    assert report.problems.counts == {"empty_output": 1, "missing_field": 1} and report.rows_ok == 5


# ----------------------------------------------------------------------------- masking


def _trained_text(row, tok):
    return [tok.decode([t for t, l in zip(row.input_ids, row.labels) if l != IGNORE_INDEX])]


def test_mask_matches_hf_generation_markers_multi_turn(chatml):
    row = tokenize_conversation(MULTI, chatml)
    hf = chatml.apply_chat_template(MULTI.turns, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert row.input_ids == list(hf["input_ids"])
    assert [l != IGNORE_INDEX for l in row.labels] == [bool(m) for m in hf["assistant_masks"]]
    trained = [s for s, t in row.segments() if t]
    assert trained == ["Sentiment: positive.<|im_end|>", "Topic: restaurant.<|im_end|>"]
    assert "".join(s for s, _ in row.segments()) == row.text


def test_mask_on_llama3_template_without_markers(llama3):
    row = tokenize_conversation(MULTI, llama3)
    assert row.input_ids == llama3.apply_chat_template(MULTI.turns, tokenize=True, return_dict=True)["input_ids"]
    flags = [l != IGNORE_INDEX for l in row.labels]
    eot = llama3.convert_tokens_to_ids("<|eot_id|>")
    # token by token: exactly the two answers and their <|eot_id|> are trained, in two runs
    runs = [i for i in range(len(flags)) if flags[i] and (i == 0 or not flags[i - 1])]
    assert len(runs) == 2
    assert [s for s, t in row.segments() if t] == ["Sentiment: positive.<|eot_id|>", "Topic: restaurant.<|eot_id|>"]
    assert sum(1 for i, f in enumerate(flags) if f and row.input_ids[i] == eot) == 2
    assert all(l == i for l, i in zip(row.labels, row.input_ids) if l != IGNORE_INDEX)
    full = tokenize_conversation(MULTI, llama3, train_on_prompt=True)
    assert full.labels == full.input_ids


@pytest.mark.parametrize("template", ["chatml", "llama3", "alpaca"])
def test_named_templates_and_render_prompt_agree_with_training(template, chatml, llama3):
    for tok in (chatml, llama3):
        row = tokenize_conversation(MULTI, tok, template)
        trained = [s for s, t in row.segments() if t]
        assert len(trained) == 2 and trained[1].startswith("Topic: restaurant.") and trained[1].endswith(tok.eos_token)
        prompt = render_prompt(MULTI, tok, template)
        assert row.text.startswith(prompt) and row.text[len(prompt):].startswith("Topic: restaurant.")


def test_no_chat_template_defaults_to_chatml_with_eos():
    tok = build_toy_tokenizer("none")
    row = tokenize_conversation(MULTI, tok)
    assert [s for s, t in row.segments() if t][0] == "Sentiment: positive.<|im_end|><|endoftext|>"


def test_truncation(chatml):
    row = tokenize_conversation(MULTI, chatml, max_length=10)
    assert len(row.input_ids) == 10 and row.truncated and row.original_length > 10
    with pytest.raises(BadRow, match="max_length"):
        tokenize_conversation(MULTI, chatml, max_length=10, truncation="drop")


# ----------------------------------------------------------------------------- pipeline


def test_prepare_split_cache_and_collator(tmp_path, chatml):
    path = write_jsonl(tmp_path / "d.jsonl", [{"instruction": f"Say {i}", "output": f"Answer {i}"} for i in range(50)])
    cfg = Config.model_validate({"data": {"path": str(path), "validation_split": 0.2}, "training": {"seed": 3}})
    seen = []
    a = prepare_datasets(cfg, chatml, progress=lambda s, f: seen.append((s, f)))
    assert (a.train.num_rows, a.eval.num_rows, len(a.eval_conversations)) == (40, 10, 10)
    assert not a.report.from_cache and any(s == "tokenizing" for s, _ in seen)
    b = prepare_datasets(cfg, chatml)
    assert b.report.from_cache and b.eval["input_ids"][:] == a.eval["input_ids"][:]
    held = {c.turns[-1]["content"] for c in a.eval_conversations}
    decoded = {chatml.decode([t for t, l in zip(r["input_ids"], r["labels"]) if l != -100]) for r in a.eval}
    assert {h + "<|im_end|>" for h in held} == decoded
    cfg.training.seed = 4
    assert prepare_datasets(cfg, chatml).eval["input_ids"][:] != a.eval["input_ids"][:]
    batch = make_collator(chatml, packing=False)([a.train[0], a.train[1], a.train[2]])
    n = batch["input_ids"].shape[1]
    assert batch["labels"].shape == (3, n) and (batch["labels"][batch["attention_mask"] == 0] == -100).all()


def test_validation_path_and_packing(tmp_path, chatml):
    train = write_jsonl(tmp_path / "t.jsonl", [{"text": f"row number {i} " * (1 + i % 4)} for i in range(40)])
    val = write_jsonl(tmp_path / "v.jsonl", [{"text": f"held {i}"} for i in range(5)])
    cfg = Config.model_validate({"data": {"path": str(train), "validation_path": str(val), "packing": True,
                                          "max_length": 64}})
    p = prepare_datasets(cfg, chatml)
    assert p.eval is not None and len(p.eval_conversations) == 5
    assert "position_ids" in p.train.column_names and p.train.num_rows < 40
    # Whether packed rows are kept apart is the fast paths' decision (kernel and mask), warned there
    # (tests/test_fastpaths.py); the data pipeline no longer guesses it from attn_implementation.
    assert not any("attend to each other" in w for w in p.warnings)
    row = p.train[0]
    starts = [i for i, x in enumerate(row["position_ids"]) if x == 0]
    assert len(starts) >= 2 and all(row["labels"][i] == -100 for i in starts)
    flat = make_collator(chatml, packing=True, padding_free=True)([p.train[0], p.train[1]])
    assert flat["input_ids"].shape[0] == 1 and "attention_mask" not in flat


def test_format_override_needs_columns(tmp_path, chatml):
    path = write_jsonl(tmp_path / "x.jsonl", [{"q": "a", "a": "b"}])
    with pytest.raises(UserError, match="needs column"):
        inspect_data(str(path), chatml, format="alpaca")
    with pytest.raises(UserError, match="could not tell the data format"):
        inspect_data(str(path), chatml)
    assert inspect_data(DataConfig(path=str(path), format="alpaca", columns={"instruction": "q", "output": "a"}),
                        chatml).rows_ok == 1


def test_cli_inspect_json(capsys):
    from sft_tui import cli_data

    parser = argparse.ArgumentParser()
    cli_data.register(parser.add_subparsers())
    args = parser.parse_args(["data", "inspect", "sample:reviews_qa.csv", "--column", "instruction=question",
                              "--column", "output=answer", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "alpaca" and out["rows"] == 200 and out["samples"]
    args = parser.parse_args(["data", "inspect", "sample:reviews_chat.jsonl", "--rows", "1"])
    assert args.func(args) == 0 and "messages" in capsys.readouterr().out


# ----------------------------------------------------------------------------- pipeline rows = exact rows
# The pipeline renders and labels many rows per batch; every row must be what ``tokenize_conversation``
# (the preview) gives for it alone, and the labelling rule itself is checked against a plain loop.

SAMPLES = ["reviews_alpaca.jsonl", "reviews_chat.jsonl", "reviews_sharegpt.jsonl",
           "reviews_prompt_completion.jsonl", "reviews_text.jsonl"]


@pytest.fixture(scope="module")
def tokenizers(demo_model_dir, chatml, llama3):
    from transformers import AutoTokenizer

    return {"demo": AutoTokenizer.from_pretrained(str(demo_model_dir), local_files_only=True),
            "chatml": chatml, "llama3": llama3}


def _exact_rows(path, tokenizer, data: DataConfig):
    from sft_tui.core.data import get_renderer

    ds = load_rows(path)
    det = detect_format(ds)
    renderer = get_renderer(tokenizer, data.template)
    out = {}
    for i, row in enumerate(ds):
        try:
            conv = to_conversation(row, det.format, det.columns, data.system_prompt)
            out[i] = tokenize_conversation(conv, tokenizer, renderer, data.max_length, data.train_on_prompt)
        except BadRow:  # not trainable: the pipeline must leave it out too
            continue
    return out


def _assert_same(path, tokenizer, data: DataConfig):
    from sft_tui.core.data.pipeline import _tokenized

    ds, meta, _ = _tokenized(path, tokenizer, data, None, use_cache=False)
    exact = _exact_rows(path, tokenizer, data)
    assert ds.num_rows == meta["rows_ok"] > 0
    for row in ds:
        ref = exact[row["__row__"]]
        assert row["input_ids"] == ref.input_ids, row["__row__"]
        assert row["labels"] == ref.labels, row["__row__"]
        assert row["length"] == len(ref.input_ids) and row["orig_length"] == ref.original_length
        assert row["n_trained"] == ref.trained_tokens
    return ds, meta


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("tok", ["demo", "llama3"])
def test_pipeline_rows_equal_exact_rows_on_samples(name, tok, tokenizers):
    _assert_same(f"sample:{name}", tokenizers[tok], DataConfig(path=f"sample:{name}"))


@pytest.mark.parametrize("tok", ["demo", "chatml", "llama3"])
def test_pipeline_rows_equal_exact_with_truncation_prompt_training_and_named_templates(tok, tokenizers):
    t = tokenizers[tok]
    path = "sample:reviews_chat.jsonl"
    _assert_same(path, t, DataConfig(path=path, max_length=40))
    _assert_same(path, t, DataConfig(path=path, train_on_prompt=True, max_length=64))
    for template in ("chatml", "llama3", "alpaca"):
        _assert_same("sample:reviews_alpaca.jsonl", t, DataConfig(path="sample:reviews_alpaca.jsonl", template=template))


# Templates whose text around an answer depends on the answer, or that change contents on the way in.
TRANSFORMING = {
    "branch": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
               "{% if 'positive' in m['content'] %}+{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "upper": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    "json": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m | tojson }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}


@pytest.mark.parametrize("kind", sorted(TRANSFORMING))
def test_templates_that_transform_contents_give_the_exact_rows(kind):
    tok = build_toy_tokenizer("chatml")
    tok.chat_template = TRANSFORMING[kind]
    ds, _ = _assert_same("sample:reviews_chat.jsonl", tok, DataConfig(path="sample:reviews_chat.jsonl"))
    texts = [tok.decode(r["input_ids"]) for r in ds]
    if kind == "branch":  # the branch really was taken for some rows and not for others
        assert {t.count("+Sentiment") > 0 for t in texts} == {True, False}
    elif kind == "upper":
        assert all("SENTIMENT:" in t for t in texts)


def test_trimming_template_and_edge_whitespace_give_the_exact_rows(tmp_path, tokenizers):
    rows = [{"instruction": f"  Say {i}\n", "input": "", "output": f"Answer {i}  " if i % 2 else f"Answer {i}"}
            for i in range(20)]
    path = write_jsonl(tmp_path / "ws.jsonl", rows)
    _assert_same(str(path), tokenizers["llama3"], DataConfig(path=str(path)))  # its template trims contents
    _assert_same(str(path), tokenizers["chatml"], DataConfig(path=str(path)))


def test_row_starting_with_an_assistant_turn_is_trained(tmp_path, tokenizers):
    rows = [{"messages": [{"role": "assistant", "content": "Hello, how can I help?"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}]
    path = write_jsonl(tmp_path / "lead.jsonl", rows)
    ds, meta = _assert_same(str(path), tokenizers["demo"], DataConfig(path=str(path)))
    assert ds.num_rows == 2 and not meta["problems"]


def _mixed_alpaca_rows(n: int = 60) -> list[dict]:
    """Alpaca rows of every kind: good, missing and blank fields, edge whitespace, non-ASCII, EOS text."""
    rows = []
    for i in range(n):
        row = {"instruction": f"Do task {i} {{0}} {{x}}", "input": f"text {i}" if i % 3 else "", "output": f"Done {i}."}
        kind = i % 11
        if kind == 1:
            row["input"] = None
        elif kind == 2:
            row["output"] = f"  padded {i}\n"
        elif kind == 3:
            row["output"] = "   "  # empty_output
        elif kind == 4:
            row["instruction"] = None  # missing_field
        elif kind == 5:
            row["instruction"], row["input"] = " ", " "  # empty instruction
        elif kind == 6:
            row["input"] = f"ünïcode {i}"
        elif kind == 7:
            row["output"] = f"ends with eos <|im_end|> {i}"
        elif kind == 8:
            row["input"] = "   "  # blank input: just the instruction
        rows.append(row)
    return rows


@pytest.mark.parametrize("tok", ["demo", "chatml", "llama3"])
@pytest.mark.parametrize("settings", [{}, {"system_prompt": "Be brief."}, {"train_on_prompt": True},
                                      {"max_length": 32}, {"template": "alpaca"}])
def test_mixed_rows_over_many_batches_give_the_exact_rows_and_problems(tok, settings, tmp_path, tokenizers,
                                                                      monkeypatch):
    from sft_tui.core.data import pipeline

    monkeypatch.setattr(pipeline, "MAP_BATCH", 7)  # many batches, bad rows among good ones in each
    path = write_jsonl(tmp_path / "mixed.jsonl", _mixed_alpaca_rows())
    data = DataConfig(path=str(path), **settings)
    ds, meta = _assert_same(str(path), tokenizers[tok], data)
    exact = _exact_rows(str(path), tokenizers[tok], data).values()
    assert ds.num_rows == sum(1 for r in exact if not (r.truncated and r.trained_tokens == 0))
    assert set(meta["problems"]) - {"too_long"} == {"empty_output", "missing_field"}
    assert meta["problems"]["empty_output"]["count"] == 6 and meta["problems"]["missing_field"]["count"] == 11


def _labels_by_loop(text, spans, ids, offsets):
    """The labelling rule written out: a token is trained if one of its characters is in a span; an
    empty-width token takes the label of the character at its start (the last one at the end)."""
    trained_chars = {c for s, e in spans for c in range(s, e)}
    out = []
    for tid, (s, e) in zip(ids, offsets):
        hit = any(c in trained_chars for c in range(s, e)) if e > s else bool(text) and min(s, len(text) - 1) in trained_chars
        out.append(tid if hit else IGNORE_INDEX)
    return out


def _trimming_tokenizer():
    """Byte-level BPE whose post-processor trims whitespace off offsets: lone spaces become empty-width tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.post_processor = processors.ByteLevel(trim_offsets=True)
    trainer = trainers.BpeTrainer(vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    core.train_from_iterator(["plain ascii answer", "more text spaced out"], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core)


@pytest.mark.parametrize("tok", ["demo", "llama3", "trim"])
def test_batch_labelling_follows_the_overlap_rule_row_by_row(tok, tokenizers):
    from sft_tui.core.data.masking import encode_spans_batch

    t = _trimming_tokenizer() if tok == "trim" else tokenizers[tok]
    texts = ["plain ascii answer", "ünïcode answer here", "", "x", "more ascii\n\n text",
             "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nok<|im_end|>\n", "  spaced   out  ", "a  b   "]
    spans = [[(6, 11)], [(0, 3), (9, 15)], [], [(0, 1)], [(0, 4), (12, 17)], [(43, 55)], [(1, 9)], [(2, 7)]]
    backend = t.backend_tokenizer
    for max_length in (None, 3):
        enc = encode_spans_batch(texts, spans, t, max_length)
        for r, (text, sp) in enumerate(zip(texts, spans)):
            ref = backend.encode(text, add_special_tokens=False)
            labels = _labels_by_loop(text, sp, ref.ids, ref.offsets)[:max_length]
            a, b = int(enc.starts[r]), int(enc.starts[r + 1])
            assert enc.input_ids[a:b].tolist() == ref.ids[:max_length], r
            assert enc.labels[a:b].tolist() == labels, r
            assert [tuple(o) for o in enc.offsets[a:b].tolist()] == ref.offsets[:max_length], r
            assert enc.original_lengths[r] == len(ref.ids)
            assert enc.trained[r] == sum(1 for x in labels if x != IGNORE_INDEX)
        if tok == "trim":  # the rule for empty-width tokens was really exercised, both ways
            empty = [(text, sp, s) for text, sp in zip(texts, spans)
                     for s, e in backend.encode(text, add_special_tokens=False).offsets if e <= s and text]
            assert {any(a <= min(s, len(text) - 1) < b for a, b in sp) for text, sp, s in empty} == {True, False}
        assert any(x != IGNORE_INDEX for x in enc.labels.tolist()) and IGNORE_INDEX in enc.labels.tolist()
        full = encode_spans_batch(texts, spans, t, max_length, train_on_prompt=True)
        assert full.labels.tolist() == full.input_ids.tolist()
