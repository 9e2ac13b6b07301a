"""The fast tokenization path (shape skeletons, pre-token cache, batch labelling) against the exact per-row path.

The exact path renders every row with the template turn by turn and labels it with
``tokenize_conversation``; the pipeline must give the very same input_ids and labels for every row.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from sft_tui.core.config import DataConfig
from sft_tui.core.data import Conversation, load_rows, to_conversation, tokenize_conversation
from sft_tui.core.data.conversation import BadRow
from sft_tui.core.data.formats import detect_format
from sft_tui.core.data.masking import PreTokenCache, encode_spans_batch, label_batch
from sft_tui.core.data.pipeline import _RowProcessor, _tokenized
from sft_tui.core.data.templates import get_renderer, pieces_to_spans
from sft_tui.testing.toy import build_toy_tokenizer
from sft_tui.core.paths import sample_data_dir

SAMPLES = ["reviews_alpaca.jsonl", "reviews_chat.jsonl", "reviews_sharegpt.jsonl",
           "reviews_prompt_completion.jsonl", "reviews_text.jsonl"]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_TUI_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tokenizers(demo_model_dir):
    from transformers import AutoTokenizer

    return {"demo": AutoTokenizer.from_pretrained(str(demo_model_dir), local_files_only=True),
            "chatml": build_toy_tokenizer("chatml"), "llama3": build_toy_tokenizer("llama3")}


def _exact_rows(path, tokenizer, data: DataConfig):
    ds = load_rows(path)
    det = detect_format(ds)
    renderer = get_renderer(tokenizer, data.template)
    out = {}
    for i, row in enumerate(ds):
        try:
            conv = to_conversation(row, det.format, det.columns, data.system_prompt)
        except BadRow:  # not trainable: the pipeline must leave it out too
            continue
        out[i] = tokenize_conversation(conv, tokenizer, renderer, data.max_length, data.train_on_prompt)
    return out


def _assert_same(path, tokenizer, data: DataConfig):
    ds, meta, _ = _tokenized(path, tokenizer, data, None, use_cache=False)
    exact = _exact_rows(path, tokenizer, data)
    assert ds.num_rows == meta["rows_ok"] > 0
    for row in ds:
        ref = exact[row["__row__"]]
        assert row["input_ids"] == ref.input_ids, row["__row__"]
        assert row["labels"] == ref.labels, row["__row__"]
        assert row["length"] == len(ref.input_ids) and row["orig_length"] == ref.original_length
        assert row["n_trained"] == ref.trained_tokens
    return ds


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize("tok", ["demo", "llama3"])
def test_fast_path_equals_exact_path_on_samples(name, tok, tokenizers):
    _assert_same(f"sample:{name}", tokenizers[tok], DataConfig(path=f"sample:{name}"))


@pytest.mark.parametrize("tok", ["demo", "chatml", "llama3"])
def test_fast_path_equals_exact_with_truncation_prompt_training_and_named_templates(tok, tokenizers):
    t = tokenizers[tok]
    path = "sample:reviews_chat.jsonl"
    _assert_same(path, t, DataConfig(path=path, max_length=40))
    _assert_same(path, t, DataConfig(path=path, train_on_prompt=True, max_length=64))
    for template in ("chatml", "llama3", "alpaca"):
        _assert_same("sample:reviews_alpaca.jsonl", t, DataConfig(path="sample:reviews_alpaca.jsonl", template=template))


def test_fast_path_is_used_for_the_sample_tokenizers(tokenizers):
    for tok in tokenizers.values():
        renderer = get_renderer(tok)
        assert renderer.verbatim
        skel = renderer.skeleton(False, ("system", "user", "assistant", "user", "assistant"))
        assert skel is not None and len(skel.runs) == 2
        assert PreTokenCache.from_tokenizer(tok) is not None
    # after a pipeline run the skeletons were verified and the cache stayed on
    tok = tokenizers["demo"]
    ds = load_rows("sample:reviews_alpaca.jsonl")
    det = detect_format(ds)
    proc = _RowProcessor(det.format, det.columns, DataConfig(path="x"), tok, get_renderer(tok))
    proc(ds.with_format("arrow").data.table.slice(0, 300), list(range(300)))
    assert not proc.cache.disabled and proc.cache.checked >= 64
    skels = [s for s in proc.renderer._skeletons.values() if s is not None]
    assert skels and all(s.ok and s.verified == _RowProcessor.VERIFY_ROWS for s in skels)


def _with_template(template: str):
    tok = build_toy_tokenizer("chatml")
    tok.chat_template = template
    return tok


TRANSFORMING = {
    # content-dependent branch: the text around the answer depends on the answer
    "branch": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
               "{% if 'positive' in m['content'] %}+{% endif %}{{ m['content'] }}<|im_end|>\n{% endfor %}"
               "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    # content changed on its way in (a filter)
    "upper": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | upper }}<|im_end|>\n"
              "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
    # contents reach the text without a visible content access (only the probes can tell)
    "json": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m | tojson }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"),
}


@pytest.mark.parametrize("kind", sorted(TRANSFORMING))
def test_template_that_transforms_content_falls_back_to_exact(kind):
    tok = _with_template(TRANSFORMING[kind])
    renderer = get_renderer(tok)
    assert renderer.skeleton(False, ("user", "assistant")) is None
    ds = _assert_same("sample:reviews_chat.jsonl", tok, DataConfig(path="sample:reviews_chat.jsonl"))
    if kind == "branch":  # the branch really was taken for some rows and not for others
        texts = {tok.decode(r["input_ids"]).count("+Sentiment") > 0 for r in ds}
        assert texts == {True, False}


def test_trimming_template_keeps_exact_for_rows_with_edge_whitespace(tmp_path, tokenizers):
    tok = tokenizers["llama3"]  # its template trims contents
    rows = [{"instruction": f"  Say {i}\n", "input": "", "output": f"Answer {i}  " if i % 2 else f"Answer {i}"}
            for i in range(20)]
    path = tmp_path / "ws.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    _assert_same(str(path), tok, DataConfig(path=str(path)))
    _assert_same(str(path), tokenizers["chatml"], DataConfig(path=str(path)))


def test_skeleton_disagreeing_with_a_real_row_sends_the_shape_to_the_exact_path(tokenizers):
    tok = tokenizers["chatml"]
    renderer = get_renderer(tok)
    skel = renderer.skeleton(False, ("user", "assistant"))
    skel.items[0] = "<|im_start|>USER\n"  # a wrong skeleton: the first real row must catch it
    proc = _RowProcessor("messages", {}, DataConfig(path="x"), tok, renderer)
    conv = Conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}])
    assert proc.render(conv) == pieces_to_spans(renderer.pieces(conv))
    assert not skel.ok
    assert proc.render(conv) == pieces_to_spans(renderer.pieces(conv))


def _sample_texts():
    out = []
    for name in SAMPLES:
        out += (sample_data_dir() / name).read_text(encoding="utf-8").splitlines()
    return out


@pytest.mark.parametrize("tok", ["demo", "llama3"])
def test_pre_token_cache_matches_rust_tokenizer(tok, tokenizers):
    t = tokenizers[tok]
    cache = PreTokenCache.from_tokenizer(t)
    texts = _sample_texts()[:3000] + ["a\n\n  b  \n", "  x", "x  ", "\t\n \r\nA", "it's 12345 don't!!  ?", "",
                                      "<|im_start|>user\n<|im_end|>\n\n", "héllo wörld", "tab\x0bvt"]
    texts += [t.apply_chat_template([{"role": "user", "content": x[:200]}, {"role": "assistant", "content": x[-60:]}],
                                    tokenize=False) for x in texts[:500]]
    handled = 0
    for text in texts:
        got = cache.encode(text)
        if got is None:
            assert not text.isascii() or "\x0b" in text
            continue
        handled += 1
        enc = t.backend_tokenizer.encode(text, add_special_tokens=False)
        ends = list(itertools.accumulate(got[1]))
        assert got[0] == enc.ids and list(zip([0] + ends[:-1], ends)) == enc.offsets, text
    assert handled >= len(texts) - 2


def test_pre_token_cache_refuses_other_tokenizers_and_turns_off_on_disagreement(tokenizers):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    assert PreTokenCache.from_tokenizer(PreTrainedTokenizerFast(tokenizer_object=core)) is None
    tok = tokenizers["chatml"]
    cache = PreTokenCache.from_tokenizer(tok)
    cache._append(["Hello"], np.asarray([1]), np.asarray([5]), np.asarray([1]))  # a wrong entry
    assert cache.encode_rows(["Hello there"]) is None and cache.disabled
    texts = ["Hello there", "<|im_start|>x<|im_end|>"]
    spans = [[(0, 5)], [(12, 13)]]
    fast = encode_spans_batch(texts, spans, tok, None, False, cache)
    rows = label_batch([[(t[:s], False), (t[s:e], True), (t[e:], False)] for t, [(s, e)] in zip(texts, spans)], tok, None)
    assert fast.input_ids.tolist() == [x for r in rows for x in r.input_ids]
    assert fast.labels.tolist() == [x for r in rows for x in r.labels]


def test_batch_labelling_mixes_cached_and_rust_rows_exactly(tokenizers):
    tok = tokenizers["demo"]
    cache = PreTokenCache.from_tokenizer(tok)
    texts = ["plain ascii answer", "ünïcode answer here", "", "x", "more ascii\n\n text"]
    spans = [[(6, 11)], [(0, 3), (9, 15)], [], [(0, 1)], [(0, 4), (12, 18)]]
    pieces = []
    for text, sp in zip(texts, spans):
        cut, pos = [], 0
        for s, e in sp:
            cut += [(text[pos:s], False), (text[s:e], True)]
            pos = e
        pieces.append(cut + [(text[pos:], False)])
    for max_length in (None, 3):
        fast = encode_spans_batch(texts, spans, tok, max_length, False, cache)
        rows = label_batch(pieces, tok, max_length)
        assert fast.input_ids.tolist() == [x for r in rows for x in r.input_ids]
        assert fast.labels.tolist() == [x for r in rows for x in r.labels]
        assert fast.lengths.tolist() == [len(r.input_ids) for r in rows]
        assert fast.original_lengths.tolist() == [r.original_length for r in rows]
        assert fast.trained.tolist() == [r.trained_tokens for r in rows]


@pytest.mark.parametrize("tok", ["demo", "llama3"])
@pytest.mark.parametrize("one_by_one", [True, False])
def test_pre_token_cache_batch_matches_rust_row_by_row(tok, one_by_one, tokenizers):
    """Rows split into words all at once (markers for added tokens and row ends) give each row's own tokens."""
    t = tokenizers[tok]
    cache = PreTokenCache.from_tokenizer(t)
    cache.replace_one_by_one = one_by_one and cache.replace_one_by_one
    specials = list(cache.added)
    edge = ["  ", "\n", " \n ", "!!", "x", "'s", " 12", "", "\t"]
    texts = [a + s + b for a in edge for s in specials[:3] for b in edge]
    texts += [s1 + s2 for s1 in specials for s2 in specials] + ["", "a", "", "héllo", "  trailing  "]
    texts += _sample_texts()[:400]
    got = cache.encode_rows(texts, verify=False)
    encs = t.backend_tokenizer.encode_batch([x for x, h in zip(texts, got.handled) if h], add_special_tokens=False)
    assert got.handled.sum() == len(texts) - 1
    starts = np.concatenate(([0], np.cumsum(got.counts)))
    for r, enc in enumerate(encs):
        a, b = starts[r], starts[r + 1]
        ends = np.cumsum(got.lens[a:b]).tolist()
        assert got.ids[a:b].tolist() == enc.ids and list(zip([0] + ends[:-1], ends)) == enc.offsets, r


def test_overlap_check_for_one_by_one_replacement():
    from sft_tui.core.data.masking import _overlap_free

    assert _overlap_free(["<|im_start|>", "<|im_end|>", "<|endoftext|>"])
    assert not _overlap_free(["<a>", "<a>b"])  # one inside another
    assert not _overlap_free(["ab", "bc"])  # "abc": a regex split takes "ab", replacing "bc" first would not
    assert not _overlap_free(["aa"])  # overlaps itself


def _mixed_alpaca_rows(n: int = 60) -> list[dict]:
    """Alpaca rows the column-wise path builds, mixed with every kind it must leave to the exact path."""
    rows = []
    for i in range(n):
        row = {"instruction": f"Do task {i} {{0}} {{x}}", "input": f"text {i}" if i % 3 else "", "output": f"Done {i}."}
        kind = i % 11
        if kind == 1:
            row["input"] = None
        elif kind == 2:
            row["output"] = f"  padded {i}\n"  # edge whitespace: guarded templates render it row by row
        elif kind == 3:
            row["output"] = "   "  # empty_output
        elif kind == 4:
            row["instruction"] = None  # missing_field
        elif kind == 5:
            row["instruction"], row["input"] = " ", " "  # empty instruction
        elif kind == 6:
            row["input"] = f"ünïcode {i}"  # not ASCII: Rust tokenizes it
        elif kind == 7:
            row["output"] = f"ends with eos <|im_end|> {i}"
        elif kind == 8:
            row["input"] = "   "  # blank input: just the instruction
        rows.append(row)
    return rows


@pytest.mark.parametrize("tok", ["demo", "chatml", "llama3"])
@pytest.mark.parametrize("settings", [{}, {"system_prompt": "Be brief."}, {"train_on_prompt": True},
                                      {"max_length": 32}, {"template": "alpaca"}])
def test_alpaca_columns_give_the_exact_rows(tok, settings, tmp_path, tokenizers, monkeypatch):
    from sft_tui.core.data import pipeline

    monkeypatch.setattr(pipeline, "MAP_BATCH", 7)  # many batches: first rows verified, then column-wise
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _mixed_alpaca_rows()))
    data = DataConfig(path=str(path), **settings)
    ds = _assert_same(str(path), tokenizers[tok], data)
    exact = _exact_rows(str(path), tokenizers[tok], data).values()
    assert ds.num_rows == sum(1 for r in exact if not (r.truncated and r.trained_tokens == 0))
    _, meta, _ = _tokenized(str(path), tokenizers[tok], data, None, use_cache=False)
    kinds = {k for k in meta["problems"]} - {"too_long"}
    assert kinds == {"empty_output", "missing_field"}


def test_alpaca_columns_used_only_after_the_skeleton_was_checked(tokenizers):
    import pyarrow as pa

    tok = tokenizers["chatml"]
    rows = [r for r in _mixed_alpaca_rows(40) if r["instruction"] and r["instruction"].strip()]
    table = pa.Table.from_pylist(rows)
    renderer = get_renderer(tok)
    proc = _RowProcessor("alpaca", {"instruction": "instruction", "input": "input", "output": "output"},
                         DataConfig(path="x"), tok, renderer)
    skel = renderer.skeleton(False, ("user", "assistant"))
    skel.items[0] = "<|im_start|>USER\n"  # wrong: the first rows, rendered exactly, must catch it
    out = proc(table, list(range(len(rows))))
    assert not skel.ok
    ref = [tokenize_conversation(to_conversation(r, "alpaca"), tok, renderer, 1024) for r in rows
           if r["output"].strip()]
    got = [ids for ids in out.column("input_ids").to_pylist() if ids]
    assert got == [r.input_ids for r in ref]
