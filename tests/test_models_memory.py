"""The memory estimate: its arithmetic, its orderings, the verdict against fake GPUs."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from sft_tui.core.config import Config
from sft_tui.core.errors import UserError
from sft_tui.core.models.memory import CUDA_CONTEXT, GiB, PARTS, estimate_for_config, estimate_memory
from sft_tui.core.models.describe import describe_model

from test_models_info import LLAMA2_7B, write_model


@pytest.fixture(scope="module")
def llama7b(tmp_path_factory):
    return describe_model(write_model(tmp_path_factory.mktemp("m") / "llama7b", LLAMA2_7B))


def gpu(index=0, free_gib=24.0, total_gib=24.0):
    return SimpleNamespace(index=index, mem_used=int((total_gib - free_gib) * GiB), mem_total=int(total_gib * GiB))


def test_parts_add_up_and_serialise(llama7b):
    est = estimate_memory(llama7b, "lora", None, 4, 2048, "bf16", True, "adamw_torch")
    assert sum(est.parts.values()) == est.total
    assert set(est.parts) == set(PARTS)
    assert est.reserved == est.total - CUDA_CONTEXT
    json.dumps(est.to_dict())


def test_textbook_numbers_for_7b(llama7b):
    P = llama7b.param_count
    full = estimate_memory(llama7b, "full", None, 1, 512, "bf16", True, "adamw_torch")
    assert full.sizes["weights"] == 2 * P and full.sizes["gradients"] == 2 * P
    assert full.sizes["optimizer"] == 3 * 2 * P  # two states + the foreach step buffer
    assert full.peak_phase == "optimizer step"
    lora = estimate_memory(llama7b, "lora", None, 1, 512, "bf16", True, "adamw_torch", lora_r=16)
    # all-linear r=16 on Llama-2-7B: 39,976,960 adapter params (what peft reports)
    assert lora.trainable_params == 39_976_960
    q4 = estimate_memory(llama7b, "qlora", 4, 1, 512, "bf16", True, "adamw_torch")
    q8 = estimate_memory(llama7b, "qlora", 8, 1, 512, "bf16", True, "adamw_torch")
    # 6.48B block params × 0.516 B + 262M embedding params × 4 B (fp32) + 40M adapters × 4 B ≈ 4.24 GiB
    assert 4.0 * GiB < q4.weights < 4.5 * GiB
    assert full.total > lora.total > q8.total > q4.total


def test_knobs_move_the_estimate_the_right_way(llama7b):
    base = dict(info=llama7b, method="lora", bits=None, batch_size=2, max_length=1024, precision="bf16",
                gradient_checkpointing=False, optimizer="adamw_torch")
    e = estimate_memory(**base)
    assert estimate_memory(**{**base, "gradient_checkpointing": True}).activations < e.activations / 4
    double = estimate_memory(**{**base, "batch_size": 4})
    assert 1.9 < double.activations / e.activations < 2.1
    assert estimate_memory(**{**base, "precision": "fp32"}).weights > 1.9 * e.weights
    assert estimate_memory(**{**base, "lora_r": 64}).trainable_params == 4 * e.trainable_params
    assert estimate_memory(**{**base, "target_modules": ["q_proj", "v_proj"]}).trainable_params < e.trainable_params
    f = dict(base, method="full", gradient_checkpointing=True)
    assert estimate_memory(**{**f, "optimizer": "adamw_8bit"}).total < estimate_memory(**f).total
    assert estimate_memory(**{**f, "optimizer": "sgd"}).sizes["optimizer"] == 0


@pytest.mark.parametrize("kwargs, fragment", [
    ({"method": "dpo"}, "Unknown training method"),
    ({"optimizer": "lion"}, "Unknown optimizer"),
    ({"precision": "fp8"}, "Unknown precision"),
    ({"method": "qlora", "bits": 3}, "4 or 8"),
    ({"batch_size": 0}, "at least 1"),
    ({"target_modules": ["nope"]}, "None of the target modules"),
])
def test_bad_inputs_are_user_errors(llama7b, kwargs, fragment):
    with pytest.raises(UserError, match=fragment):
        estimate_memory(llama7b, **kwargs)


def test_full_finetune_of_quantized_model_is_refused(llama7b):
    from dataclasses import replace

    gptq = replace(llama7b, quantization="gptq", quantization_bits=4)
    with pytest.raises(UserError, match="already quantized"):
        estimate_memory(gptq, "full")
    assert estimate_memory(gptq, "lora").weights < estimate_memory(llama7b, "lora").weights / 3


def test_verdicts(llama7b):
    est = estimate_memory(llama7b, "qlora", 4, 1, 1024, "bf16", True, "adamw_torch")
    need = est.total / GiB
    v = est.verdict([gpu(0, free_gib=need + 20, total_gib=80)])
    assert v.level == "fits" and v.text.startswith("fits on GPU 0 with") and "to spare" in v.text
    v = est.verdict([gpu(0, free_gib=need * 0.5), gpu(1, free_gib=need * 1.05)])
    assert v.level == "tight" and v.gpu_index == 1
    assert est.verdict([]).level == "no-gpu" and "no NVIDIA GPU found" in est.verdict([]).text
    assert est.verdict(SimpleNamespace(available=False, gpus=[])).level == "no-gpu"

    big = estimate_memory(llama7b, "lora", None, 4, 2048, "bf16", False, "adamw_torch")
    v = big.verdict([gpu(0, free_gib=22)])
    assert v.level == "does-not-fit" and v.text.startswith("needs ~") and "try" in v.text
    assert v.spare_bytes < 0
    v = big.verdict([gpu(0, free_gib=1)])
    assert v.level == "does-not-fit" and "smaller model" in v.text


def test_suggestion_names_a_change_that_fits(llama7b):
    est = estimate_memory(llama7b, "full", None, 1, 1024, "bf16", True, "adamw_torch")
    v = est.verdict([gpu(0, free_gib=20)])
    assert v.level == "does-not-fit" and "qlora" in v.text


def test_estimate_for_config(llama7b):
    cfg = Config.model_validate({"method": {"type": "qlora"}, "training": {"batch_size": 2, "gradient_checkpointing": True},
                                 "data": {"max_length": 1024}})
    est = estimate_for_config(cfg, llama7b)
    assert est.inputs["bits"] == 4 and est.inputs["batch_size"] == 2 and est.inputs["max_length"] == 1024
    assert est.inputs["precision"] == "bf16"  # 'auto' counts as bf16


def test_demo_model_estimate_is_small(demo_model_dir):
    info = describe_model("demo")
    est = estimate_memory(info, "lora", None, 4, 512, "fp32", False, "adamw_torch")
    assert est.total < 2 * GiB


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_estimate_within_20_percent_on_gpu(tmp_path):
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_memory", Path(__file__).parent.parent / "bench" / "bench_memory.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.measure(bench.CONFIGS[1], tmp_path, steps=3)
    assert abs(row["error"]) <= 0.2, row


# --------------------------------------------------------------------------- several processes


def _per_device(info, method, world_size=1, strategy="ddp", zero_stage=2):
    return estimate_memory(info, method, None, 1, 1024, "bf16", True, "adamw_torch",
                           world_size=world_size, strategy=strategy, zero_stage=zero_stage)


def test_one_process_ignores_the_strategy(llama7b):
    for method in ("full", "lora"):
        alone = _per_device(llama7b, method)
        for strategy in ("fsdp", "deepspeed"):
            assert _per_device(llama7b, method, 1, strategy).to_dict() == alone.to_dict()


def test_full_7b_on_4_gpus_shrinks_per_device_with_sharding(llama7b):
    P = llama7b.param_count
    single = _per_device(llama7b, "full")
    ddp = _per_device(llama7b, "full", 4, "ddp")
    zero1 = _per_device(llama7b, "full", 4, "deepspeed", 1)
    zero2 = _per_device(llama7b, "full", 4, "deepspeed", 2)
    zero3 = _per_device(llama7b, "full", 4, "deepspeed", 3)
    fsdp = _per_device(llama7b, "full", 4, "fsdp")
    # ddp replicates everything and adds its gradient buckets (a second copy of the bf16 gradients)
    assert ddp.sizes["gradients"] == 2 * single.sizes["gradients"] and ddp.total > single.total
    assert ddp.inputs["world_size"] == 4 and "world_size" not in single.inputs
    # ZeRO: fp32 master + two fp32 moments + the step buffer = 16 bytes a param, over 4 GPUs
    assert zero1.sizes["optimizer"] == 16 * P // 4 and zero1.sizes["gradients"] == 2 * P
    assert zero2.sizes["gradients"] == 2 * P // 4 and zero2.sizes["optimizer"] == zero1.sizes["optimizer"]
    assert zero3.sizes["weights"] < zero2.sizes["weights"] / 2
    # fsdp keeps fp32 masters sharded, plus two gathered blocks and the root (embeddings, head) in bf16
    assert 4 * P // 4 < fsdp.sizes["weights"] < 4 * P // 4 + 2 * GiB
    assert ddp.total > zero1.total > zero2.total > zero3.total
    assert fsdp.total < ddp.total / 2
    assert len({e.sizes["activations"] for e in (single, ddp, zero2, fsdp)}) == 1  # per device, unchanged


def test_lora_7b_on_4_gpus(llama7b):
    ddp = _per_device(llama7b, "lora", 4, "ddp")
    fsdp = _per_device(llama7b, "lora", 4, "fsdp")
    zero2 = _per_device(llama7b, "lora", 4, "deepspeed", 2)
    # LoRA's memory is the frozen base: only sharding the weights (fsdp, ZeRO-3) helps much
    assert fsdp.weights < ddp.weights / 2.5 and fsdp.total < ddp.total / 2
    assert zero2.total <= ddp.total and zero2.weights > ddp.weights * 0.95
    q_ddp = estimate_memory(llama7b, "qlora", 4, 1, 1024, "bf16", True, world_size=4, strategy="ddp")
    q_fsdp = estimate_memory(llama7b, "qlora", 4, 1, 1024, "bf16", True, world_size=4, strategy="fsdp")
    assert q_fsdp.sizes["weights"] > 0.9 * q_ddp.sizes["weights"]  # 4-bit storage is not sharded


def test_bad_world_inputs_are_user_errors(llama7b):
    for kwargs, fragment in (({"strategy": "tp"}, "Unknown strategy"), ({"zero_stage": 4}, "ZeRO stage"),
                             ({"world_size": 0}, "world_size")):
        with pytest.raises(UserError, match=fragment):
            estimate_memory(llama7b, **kwargs)


def test_verdict_per_device_on_several_gpus(llama7b):
    est = _per_device(llama7b, "full", 8, "fsdp")
    need = est.total / GiB
    gpus = [gpu(i, free_gib=need + 10, total_gib=80) for i in range(8)]
    v = est.verdict(gpus, 8)
    assert v.level == "fits" and v.text.startswith("fits on GPUs 0, 1, 2, 3, 4, 5, 6, 7") and "per GPU" in v.text
    gpus[5] = gpu(5, free_gib=need * 0.5, total_gib=80)
    v = est.verdict(gpus, 8)
    assert v.level == "does-not-fit" and v.gpu_index == 5  # the tightest GPU decides
    assert est.verdict(gpus, 7).level == "fits"  # the 7 roomiest leave GPU 5 out
    assert est.verdict(gpus, [0, 5]).gpu_index == 5
    assert est.verdict(gpus, [0, 9]).level == "does-not-fit" and "GPU 9 not found" in est.verdict(gpus, [0, 9]).text
    assert "needs 9 GPUs" in est.verdict(gpus, 9).text
    assert est.verdict(gpus, [3]).text.startswith("fits on GPU 3 with")  # one listed GPU reads as before


def test_ddp_that_does_not_fit_suggests_fsdp(llama7b):
    est = _per_device(llama7b, "full", 4, "ddp")
    v = est.verdict([gpu(i, free_gib=60, total_gib=80) for i in range(4)], 4)
    assert v.level == "does-not-fit" and "strategy fsdp" in v.text


def test_estimate_for_config_takes_the_world(llama7b):
    cfg = Config.model_validate({"method": {"type": "full"}, "training": {"strategy": "fsdp", "devices": 4}})
    est = estimate_for_config(cfg, llama7b, world_size=4)
    assert est.inputs["strategy"] == "fsdp" and est.inputs["world_size"] == 4
    assert est.total < 0.6 * estimate_for_config(cfg, llama7b).total
