"""Tied embeddings are counted once: Qwen2.5-0.5B has 494M parameters, not 630M.

A model with ``tie_word_embeddings: true`` uses its input embedding as the output head; counting
the head again adds vocab × hidden (136M here), which inflated both the size shown and the memory
estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_tui.core.models.describe import _estimate_params, describe_model

# Qwen/Qwen2.5-0.5B's config.json (the fields that set sizes).
QWEN25_05B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
    "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864, "vocab_size": 151936,
    "tie_word_embeddings": True, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
    "hidden_act": "silu", "torch_dtype": "bfloat16",
}
QWEN25_05B_PARAMS = 494_032_768  # the safetensors files of Qwen/Qwen2.5-0.5B
HEAD = 151936 * 896


def _folder(tmp_path: Path, name: str, config: dict) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_tied_head_is_counted_once(tmp_path):
    info = describe_model(_folder(tmp_path, "qwen", QWEN25_05B))
    assert info.param_count == QWEN25_05B_PARAMS and info.param_count_source == "meta"
    assert info.tie_word_embeddings and info.embedding_params == HEAD


def test_untied_head_is_counted(tmp_path):
    info = describe_model(_folder(tmp_path, "qwen-untied", {**QWEN25_05B, "tie_word_embeddings": False}))
    assert info.param_count == QWEN25_05B_PARAMS + HEAD
    assert not info.tie_word_embeddings and info.embedding_params == 2 * HEAD


@pytest.mark.parametrize("tied", [True, False])
def test_arithmetic_fallback_agrees(tied):
    """Custom-code models fall back to arithmetic; it knows Qwen2's q/k/v biases and the tie."""
    expected = QWEN25_05B_PARAMS + (0 if tied else HEAD)
    assert _estimate_params({**QWEN25_05B, "tie_word_embeddings": tied}) == expected


def test_memory_estimate_follows_the_count(tmp_path):
    from sft_tui.core.models.memory import estimate_memory

    tied = estimate_memory(describe_model(_folder(tmp_path, "a", QWEN25_05B)), method="full", precision="bf16")
    untied = estimate_memory(describe_model(_folder(tmp_path, "b", {**QWEN25_05B, "tie_word_embeddings": False})),
                             method="full", precision="bf16")
    assert tied.trainable_params == QWEN25_05B_PARAMS
    assert untied.total - tied.total >= HEAD * 2 * 3  # weights, gradients and optimizer state of the head


def test_a_tied_head_saved_anyway_is_not_counted_twice(tmp_path):
    import torch
    from safetensors.torch import save_file

    h, vocab = 8, 20
    tensors = {"model.embed_tokens.weight": torch.zeros(vocab, h), "lm_head.weight": torch.zeros(vocab, h),
               "model.layers.0.self_attn.q_proj.weight": torch.zeros(h, h), "model.norm.weight": torch.zeros(h)}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": 16,
           "num_hidden_layers": 1, "num_attention_heads": 2, "vocab_size": vocab, "tie_word_embeddings": True}
    folder = _folder(tmp_path, "st", cfg)
    save_file(tensors, str(folder / "model.safetensors"))
    info = describe_model(folder)
    assert info.param_count_source == "safetensors"
    assert info.param_count == vocab * h + h * h + h
