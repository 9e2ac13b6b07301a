"""describe_model without weights: config-only 7B, safetensors headers, rejections, the demo model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sft_tui.core.errors import UserError
from sft_tui.core.models.describe import classify, describe_model, read_safetensors_header

LLAMA2_7B_PUBLISHED = 6_738_415_616
LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
    "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "torch_dtype": "float16", "hidden_act": "silu",
}
ALL_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def write_model(folder: Path, config: dict, **files: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    for name, text in files.items():
        (folder / name.replace("__", ".")).write_text(text)
    return folder


def test_config_only_7b_counts_params_without_weights(tmp_path):
    info = describe_model(write_model(tmp_path / "llama7b", LLAMA2_7B))
    assert abs(info.param_count - LLAMA2_7B_PUBLISHED) / LLAMA2_7B_PUBLISHED < 0.01
    assert info.param_count_source == "meta"
    assert info.is_causal_lm and info.architecture == "LlamaForCausalLM" and info.model_type == "llama"
    assert (info.hidden_size, info.num_layers, info.context_length) == (4096, 32, 4096)
    assert info.dtype == "float16" and info.quantization is None
    assert info.lora_targets == ALL_LINEAR  # lm_head is not a LoRA target
    assert info.linear_layers["q_proj"].count == 32
    assert not info.has_tokenizer and any("tokenizer" in w for w in info.warnings)
    assert info.disk_bytes == (tmp_path / "llama7b" / "config.json").stat().st_size
    assert json.loads(json.dumps(info.to_dict()))["param_count"] == info.param_count


def test_mistral_7b_gqa_count(tmp_path):
    cfg = dict(LLAMA2_7B, architectures=["MistralForCausalLM"], model_type="mistral", intermediate_size=14336,
               num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096)
    info = describe_model(write_model(tmp_path / "mistral", cfg))
    assert abs(info.param_count - 7_241_732_096) / 7_241_732_096 < 0.01  # Mistral-7B-v0.1's published count
    assert info.linear_layers["k_proj"].out_features == 1024


@pytest.mark.parametrize("cfg, words", [
    ({"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 768}, "encoder model"),
    ({"model_type": "bert", "hidden_size": 768}, "BERT-style"),
    ({"architectures": ["ViTForImageClassification"], "model_type": "vit"}, "vision"),
    ({"architectures": ["LlavaForConditionalGeneration"], "model_type": "llava", "vision_config": {}}, "vision"),
    ({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5", "is_encoder_decoder": True}, "encoder-decoder"),
    ({}, "neither an architecture"),
])
def test_non_causal_models_are_rejected_clearly(tmp_path, cfg, words):
    with pytest.raises(UserError) as err:
        describe_model(write_model(tmp_path / "m", cfg))
    assert "not a causal language model" in err.value.message and words in err.value.message
    assert "ForCausalLM" in err.value.hint


def test_non_causal_can_still_be_described(tmp_path):
    cfg = {"architectures": ["BertForMaskedLM"], "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
           "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 100}
    info = describe_model(write_model(tmp_path / "bert", cfg), require_causal=False)
    assert not info.is_causal_lm and "encoder" in info.not_causal_reason


def test_classify_without_architectures_asks_transformers():
    assert classify({"model_type": "llama"}) == (True, None)
    ok, why = classify({"model_type": "not-a-real-type"})
    assert not ok and "not-a-real-type" in why


def test_safetensors_headers_give_exact_count_and_dtype(tmp_path):
    import torch
    from safetensors.torch import save_file

    h, inter, layers, vocab = 16, 24, 2, 50
    tensors = {"model.embed_tokens.weight": torch.zeros(vocab, h, dtype=torch.bfloat16),
               "model.norm.weight": torch.zeros(h, dtype=torch.bfloat16),
               "lm_head.weight": torch.zeros(vocab, h, dtype=torch.bfloat16)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for name, shape in {"self_attn.q_proj": (h, h), "self_attn.k_proj": (8, h), "self_attn.v_proj": (8, h),
                            "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
                            "mlp.down_proj": (h, inter)}.items():
            tensors[p + name + ".weight"] = torch.zeros(*shape, dtype=torch.bfloat16)
        tensors[p + "input_layernorm.weight"] = torch.zeros(h, dtype=torch.bfloat16)
    folder = tmp_path / "st"
    folder.mkdir()
    half = len(tensors) // 2
    items = list(tensors.items())
    save_file(dict(items[:half]), str(folder / "model-00001-of-00002.safetensors"))
    save_file(dict(items[half:]), str(folder / "model-00002-of-00002.safetensors"))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h, "intermediate_size": inter,
           "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": vocab}
    write_model(folder, cfg, tokenizer__json="{}",
                tokenizer_config__json=json.dumps({"chat_template": "{{ messages }}"}))
    info = describe_model(folder)
    assert info.param_count == sum(t.numel() for t in tensors.values())
    assert info.param_count_source == "safetensors" and info.dtype == "bfloat16"
    assert info.lora_targets == ALL_LINEAR
    assert info.linear_layers["down_proj"].sum_in_out == layers * (inter + h)
    assert info.has_tokenizer and info.has_chat_template
    assert info.disk_bytes > 2 * 8
    assert "lm_head.weight" in read_safetensors_header(folder / "model-00002-of-00002.safetensors") or \
        "lm_head.weight" in read_safetensors_header(folder / "model-00001-of-00002.safetensors")


def test_damaged_files_are_user_errors(tmp_path):
    folder = write_model(tmp_path / "m", LLAMA2_7B)
    (folder / "model.safetensors").write_bytes(b"\x05\x00")
    with pytest.raises(UserError, match="too short"):
        describe_model(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        describe_model(folder)


@pytest.mark.parametrize("qcfg, expected", [
    ({"quant_method": "gptq", "bits": 4, "group_size": 128}, ("gptq", 4)),
    ({"quant_method": "awq", "bits": 4}, ("awq", 4)),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, ("bnb-4bit", 4)),
    ({"quant_method": "bitsandbytes", "load_in_8bit": True}, ("bnb-8bit", 8)),
])
def test_quantized_checkpoints_are_recognised(tmp_path, qcfg, expected):
    cfg = dict(LLAMA2_7B, num_hidden_layers=2, hidden_size=256, intermediate_size=512, num_attention_heads=4,
               num_key_value_heads=4, quantization_config=qcfg)
    folder = write_model(tmp_path / "q", cfg, chat_template__jinja="{{ x }}")
    # Packed int32 weights would give a wrong count; the meta build counts the real model.
    (folder / "model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    info = describe_model(folder)
    assert (info.quantization, info.quantization_bits) == expected
    assert info.param_count_source == "meta" and info.param_count > 16_000_000
    assert info.has_chat_template


def test_demo_model(demo_model_dir):
    info = describe_model("demo")
    assert info.path == str(demo_model_dir)
    assert info.is_causal_lm and info.param_count_source == "safetensors"
    assert 100_000 < info.param_count < 5_000_000
    assert info.has_tokenizer and info.has_chat_template
    assert set(info.lora_targets) >= {"q_proj", "v_proj"} and "lm_head" not in info.lora_targets
    assert info.disk_bytes > info.param_count  # at least one byte per parameter on disk
