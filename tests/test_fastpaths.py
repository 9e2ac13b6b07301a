"""Fast paths: each is chosen when its conditions hold and warned about when it was asked for but cannot apply."""

from __future__ import annotations

import os

import pytest
import torch

from sft_tui.core.config import Config
from sft_tui.core.data import IGNORE_INDEX, make_collator
from sft_tui.core.train.fastpaths import (
    Capabilities, chunked_causal_lm_loss, decide, flops_per_token, mfu, peak_tflops, set_alloc_conf)


def cfg(**sections) -> Config:
    return Config.model_validate(sections)


CPU = Capabilities(cuda=False, packed_masks=True, model_type="llama", chunked_loss_ok=True)
GPU = Capabilities(cuda=True, bf16=True, flash_attn=True, liger=True, packed_masks=True, model_type="llama",
                   chunked_loss_ok=True, gpu_name="NVIDIA H100 80GB HBM3")


def test_cpu_defaults_group_by_length_and_chunked_loss():
    fp = decide(cfg(), CPU)
    assert (fp.attn_implementation, fp.packing, fp.padding_free) == ("auto", False, False)
    assert fp.group_by_length and fp.loss == "chunked" and not fp.liger and not fp.expandable_segments
    assert fp.warnings == []  # nothing was asked for that cannot apply; liger 'auto' stays quiet on CPU


def test_gpu_defaults_flash_padding_free_liger():
    fp = decide(cfg(), GPU)
    assert fp.attn_implementation == "flash_attention_2" and fp.boundaries
    assert fp.padding_free and not fp.group_by_length  # no padding at all: grouping is moot
    assert fp.liger and fp.loss == "liger" and fp.expandable_segments and fp.warnings == []


def test_packing_needs_a_kernel_that_keeps_rows_apart():
    assert decide(cfg(data={"packing": True}), CPU).packing  # sdpa + block-causal masks from position ids
    old = Capabilities(cuda=False, packed_masks=False, model_type="gpt2")
    fp = decide(cfg(data={"packing": True}), old)
    assert not fp.packing and fp.group_by_length
    assert any("packing was requested" in w for w in fp.warnings)
    fp = decide(cfg(data={"packing": True}, model={"attn_implementation": "flash_attention_2"}), old)
    assert fp.packing and fp.padding_free  # flash-attention keeps rows apart on any model (varlen)


def test_padding_free_on_and_off():
    assert decide(cfg(data={"padding_free": "on"}), CPU).padding_free
    fp = decide(cfg(data={"padding_free": "on"}), Capabilities(model_type="gpt2"))
    assert not fp.padding_free and any("padding-free was requested" in w for w in fp.warnings)
    assert not decide(cfg(data={"padding_free": "off"}), GPU).padding_free
    assert decide(cfg(data={"padding_free": "off"}), GPU).group_by_length


def test_group_by_length_needs_batches():
    assert not decide(cfg(training={"batch_size": 1}), CPU).group_by_length
    assert not decide(cfg(data={"group_by_length": "off"}), CPU).group_by_length


def test_liger_warnings():
    fp = decide(cfg(training={"liger": "on"}), CPU)
    assert not fp.liger and "not installed" in fp.warnings[0] and "NVIDIA GPU" in fp.warnings[0]
    fp = decide(cfg(), Capabilities(cuda=True, bf16=True, liger=False, model_type="llama", chunked_loss_ok=True))
    assert not fp.liger and any("pip install liger-kernel" in w for w in fp.warnings) and fp.loss == "chunked"
    fp = decide(cfg(training={"liger": "on"}), Capabilities(cuda=True, liger=True, model_type="gpt2"))
    assert not fp.liger and "does not support the model type 'gpt2'" in fp.warnings[0]
    assert not decide(cfg(training={"liger": "off"}), GPU).liger


def test_loss_choice():
    assert decide(cfg(training={"loss": "standard"}), CPU).loss == "standard"
    fp = decide(cfg(training={"loss": "chunked"}), Capabilities(model_type="gemma2"))
    assert fp.loss == "standard" and "chunked loss was requested" in fp.warnings[0]
    assert decide(cfg(), Capabilities(model_type="gemma2")).loss == "standard"  # auto: quietly standard


def test_alloc_conf_respects_the_user(monkeypatch):
    env = {}
    assert set_alloc_conf(env) and env["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    env = {"PYTORCH_CUDA_ALLOC_CONF": "max_split_size_mb:128"}
    assert not set_alloc_conf(env) and env["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:128"


def test_mfu_table():
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0 and peak_tflops("NVIDIA L40S") == 362.0
    assert peak_tflops("NVIDIA L4") == 121.0 and peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert peak_tflops("NVIDIA A10G") == 70.0 and peak_tflops(None) is None and peak_tflops("Weird") is None
    f = flops_per_token(1_000_000, "full")
    assert f == 6e6 and flops_per_token(1_000_000, "lora") == 4e6
    assert mfu(1000, f, 989.0) == pytest.approx(1000 * 6e6 / 989e12) and mfu(1000, f, None) is None


def _tiny():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2))


def test_chunked_loss_matches_the_standard_loss_and_gradients_under_accumulation():
    model = _tiny()
    ids = torch.randint(0, 300, (4, 17))
    labels = ids.clone()
    labels[:, :5] = IGNORE_INDEX
    labels[3, 11:] = IGNORE_INDEX
    mask = torch.ones_like(ids)
    mask[3, 11:] = 0
    # two micro-batches of one accumulated step: the count is over both, as the Trainer passes it
    n = (labels[..., 1:] != IGNORE_INDEX).sum()
    for part in (slice(0, 2), slice(2, 4)):
        model(input_ids=ids[part], attention_mask=mask[part], labels=labels[part], num_items_in_batch=n).loss.backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    losses = []
    for part in (slice(0, 2), slice(2, 4)):
        loss = chunked_causal_lm_loss(model, {"input_ids": ids[part], "attention_mask": mask[part],
                                              "labels": labels[part]}, n)
        loss.backward()
        losses.append(loss.item())
    got = [p.grad.clone() for p in model.parameters()]
    assert max((a - b).abs().max().item() for a, b in zip(ref, got)) < 1e-5
    full = model(input_ids=ids, attention_mask=mask, labels=labels).loss.item()
    assert sum(losses) == pytest.approx(full, rel=1e-5)


class _Tok:
    pad_token_id, eos_token_id = 0, 1


def test_collator_pads_to_longest_and_keeps_packed_rows_apart():
    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7], "attention_mask": [1, 1, 1]},
            {"input_ids": [8, 9], "labels": [-100, 9], "attention_mask": [1, 1]}]
    batch = make_collator(_Tok())(rows)
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"][1].tolist() == [1, 1, 0]
    flat = make_collator(_Tok(), padding_free=True)(rows)
    assert flat["input_ids"].tolist() == [[5, 6, 7, 8, 9]] and flat["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert flat["labels"].tolist() == [[-100, 6, 7, -100, 9]] and "attention_mask" not in flat
    packed = [{"input_ids": [5, 6, 7, 8], "labels": [-100, 6, -100, 8], "position_ids": [0, 1, 0, 1]},
              {"input_ids": [9, 9], "labels": [-100, 9], "position_ids": [0, 1]}]
    batch = make_collator(_Tok(), packing=True)(packed)
    assert "attention_mask" not in batch and batch["position_ids"][1].tolist() == [0, 1, 0, 1]  # pad: own segment


def test_sdpa_packed_rows_do_not_see_each_other():
    """The block-causal mask transformers builds from position ids: a packed row's logits equal its own."""
    model = _tiny().eval()
    a, b = [3, 4, 5, 6], [7, 8, 9]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([b]), use_cache=False).logits[0]
        packed = model(input_ids=torch.tensor([a + b]), position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2]]),
                       use_cache=False).logits[0]  # training: no cache, so the packed mask applies
    assert torch.allclose(alone, packed[4:], atol=1e-5)


@pytest.mark.slow
def test_worker_warns_about_a_fast_path_that_cannot_apply(tmp_path, demo_model_dir):
    from sft_tui.core.run.launch import start_run

    config = cfg(model={"path": "demo"}, data={"validation_split": 0.0, "max_length": 64},
                 training={"max_steps": 2, "batch_size": 2, "logging_steps": 1, "save_steps": 100, "liger": "on"})
    run = start_run(config, runs_dir=tmp_path / "runs")
    pid = int((run.path / "worker.pid").read_text().split()[0])
    os.waitpid(pid, 0)
    events = run.events()
    assert run.status().state == "done", run.log_path.read_text()[-3000:]
    warnings = [e["msg"] for e in events if e["type"] == "log" and e.get("level") == "warning"]
    assert any("liger was requested but cannot apply" in w for w in warnings)
    chosen = [e for e in events if e["type"] == "log" and "fast_paths" in e]
    assert chosen and chosen[0]["fast_paths"]["loss"] == "chunked" and chosen[0]["fast_paths"]["group_by_length"]
    train = [e for e in events if e["type"] == "train"]
    assert train and all("mfu" in e and e["mfu"] is None for e in train)  # CPU: no peak rate, no MFU
