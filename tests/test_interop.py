"""Import from / export to Axolotl, LLaMA-Factory and TRL (sft_tui.core.interop, sft_tui.cli_interop).

Golden files live in tests/fixtures/peer_configs/expected/. After an intended change, regenerate them with

    SFT_TUI_REGEN_GOLDEN=1 pytest -q tests/test_interop.py

and review the diff. Paths that depend on the checkout are written as <FIXTURES> and <SAMPLE_DATA>.
Nothing here loads a model, a tokenizer or a dataset, and no peer script is ever run.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
from pathlib import Path

import pytest
import yaml

from sft_tui.cli_interop import cmd_config_export, cmd_config_import, register, register_config_actions
from sft_tui.core.config import Config, load_config, parse_config
from sft_tui.core.errors import UserError
from sft_tui.core.interop import detect_source, export_config, export_files, import_config
from sft_tui.core.paths import sample_data_dir

FIXTURES = Path(__file__).parent / "fixtures" / "peer_configs"
EXPECTED = FIXTURES / "expected"
REGEN = os.environ.get("SFT_TUI_REGEN_GOLDEN") == "1"

IMPORTS = {  # fixture -> the tool it is for
    "axolotl_lora.yml": "axolotl",
    "axolotl_qlora.yml": "axolotl",
    "axolotl_deepspeed.yml": "axolotl",
    "llamafactory_lora_sft.yaml": "llamafactory",
    "llamafactory_full_sft.yaml": "llamafactory",
    "llamafactory_lora_ds.yaml": "llamafactory",
    "trl_sft.py": "trl",
    "trl_sft_multi.py": "trl",
}
SUFFIX = {"axolotl": ".yaml", "llamafactory": ".yaml", "trl": ".py"}


def _deepspeed(monkeypatch, installed: bool) -> None:
    """strategy deepspeed is valid only where the deepspeed package is installed (config.cross_check asks
    importlib); these tests are about files, not this machine, so they say which it is."""
    import importlib.machinery
    import importlib.util

    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "deepspeed":
            return importlib.machinery.ModuleSpec("deepspeed", None) if installed else None
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.fixture
def deepspeed_installed(monkeypatch):
    _deepspeed(monkeypatch, True)


@pytest.fixture
def deepspeed_missing(monkeypatch):
    _deepspeed(monkeypatch, False)


def _normalise(text: str) -> str:
    return (text.replace(str(FIXTURES.resolve()), "<FIXTURES>").replace(str(FIXTURES), "<FIXTURES>")
            .replace(str(sample_data_dir().resolve()), "<SAMPLE_DATA>").replace(str(sample_data_dir()), "<SAMPLE_DATA>"))


def _golden(name: str, actual: str) -> None:
    path = EXPECTED / name
    actual = _normalise(actual)
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"golden file {path} is missing; create it with SFT_TUI_REGEN_GOLDEN=1")
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


def _dump(result) -> str:
    return yaml.safe_dump(result.to_dict(), sort_keys=False, allow_unicode=True, width=120)


# --------------------------------------------------------------------------- golden import


@pytest.mark.parametrize("fixture", list(IMPORTS))
def test_import_golden(fixture, deepspeed_installed):
    result = import_config(FIXTURES / fixture)
    assert result.source == IMPORTS[fixture]
    parse_config(result.config.to_dict())  # a valid sft-tui config, cross-field rules included
    _golden(f"{fixture}.import.yaml", _dump(result))


def test_import_axolotl_lora_maps_the_documented_keys():
    r = import_config(FIXTURES / "axolotl_lora.yml")
    c = r.config
    assert (c.model.path, c.method.type, c.method.lora_r, c.method.lora_alpha) == ("NousResearch/Llama-3.2-1B", "lora", 16, 32)
    assert c.data.path == "data/alpaca_2k.jsonl" and c.data.format == "alpaca" and c.data.template == "alpaca"
    assert (c.data.max_length, c.data.packing, c.data.validation_split) == (2048, True, 0.1)
    assert (c.training.batch_size, c.training.gradient_accumulation, c.training.epochs) == (2, 2, 1.0)
    assert c.training.optimizer == "adamw_8bit" and c.training.gradient_checkpointing is True
    assert c.model.attn_implementation == "flash_attention_2"
    assert c.method.target_modules == ["gate_proj", "down_proj", "up_proj", "q_proj", "v_proj", "k_proj", "o_proj"]


def test_import_axolotl_qlora_quantization_and_warmup_steps():
    r = import_config(FIXTURES / "axolotl_qlora.yml")
    c = r.config
    assert (c.method.type, c.method.bits, c.method.target_modules) == ("qlora", 4, "all-linear")
    assert c.training.max_steps == 1000 and c.training.warmup_ratio == pytest.approx(0.01)  # 10 of 1000 steps
    assert c.data.format == "sharegpt" and c.data.template == "chatml"
    keys = {u.key: u for u in r.unmapped}
    assert "hub" in keys["datasets[0].path"].reason  # aaditya/alpaca_subset_1 is not a local file
    assert "paged_adamw_32bit" in keys["optimizer"].reason


def test_import_llamafactory_reads_dataset_info():
    r = import_config(FIXTURES / "llamafactory_lora_sft.yaml")
    c = r.config
    data = FIXTURES.resolve() / "data"
    assert c.data.path == [str(data / "identity.json"), str(data / "alpaca_en_demo.json")]
    assert (c.method.type, c.method.lora_r, c.method.lora_alpha, c.method.target_modules) == ("lora", 8, 16, "all-linear")
    assert c.training.gradient_checkpointing is True  # LLaMA-Factory's default unless disabled
    assert (c.training.precision, c.training.eval_steps, c.data.validation_split) == ("bf16", 500, 0.1)
    assert any(u.key == "template" and "qwen3_nothink" == u.value for u in r.unmapped)


def test_import_llamafactory_full_reports_hub_dataset_and_missing_zero_file(deepspeed_installed):
    r = import_config(FIXTURES / "llamafactory_full_sft.yaml")
    assert r.config.method.type == "full" and r.config.data.template == "llama3"
    assert r.config.model.attn_implementation == "flash_attention_2"
    keys = {u.key: u.reason for u in r.unmapped}
    assert "hub dataset" in keys["dataset: alpaca_en"] and "deepspeed" not in keys
    # examples/deepspeed/ds_z3_config.json is not beside the fixture: the strategy maps, the stage is noted
    assert r.config.training.strategy == "deepspeed" and r.config.training.zero_stage == 2
    assert any("ds_z3_config.json was not found beside the imported config" in n and "zero_stage" in n
               for n in r.notes)


def test_import_trl_script_reads_literals_without_running_it():
    r = import_config(FIXTURES / "trl_sft.py")
    c = r.config
    assert c.model.path == "Qwen/Qwen2.5-0.5B-Instruct"  # resolved from the MODEL_ID constant
    assert (c.model.dtype, c.model.attn_implementation) == ("bfloat16", "sdpa")  # torch.bfloat16 read as a name
    assert (c.method.type, c.method.lora_r, c.method.lora_alpha) == ("lora", 32, 16)
    assert (c.data.path, c.data.validation_split, c.data.max_length, c.data.packing) == ("data/chat.jsonl", 0.05, 2048, True)
    assert (c.training.learning_rate, c.training.eval_steps) == (2e-4, 100)
    keys = {u.key: u.reason for u in r.unmapped}
    assert "literal" in keys["SFTConfig.run_name"]  # an f-string is not a literal
    assert "LoraConfig.modules_to_save" in keys and "from_pretrained.device_map" in keys
    assert c.training.report_to == ["wandb"] and r.mapped["training.report_to"] == "SFTConfig.report_to"


# --------------------------------------------------------------------------- trackers, GPUs and sharding


def test_import_axolotl_deepspeed_reads_the_zero_file_and_trackers(deepspeed_installed):
    r = import_config(FIXTURES / "axolotl_deepspeed.yml")
    t = r.config.training
    assert (t.strategy, t.zero_stage) == ("deepspeed", 2)  # zero_optimization.stage of deepspeed_configs/zero2.json
    assert t.report_to == ["wandb", "tensorboard"]  # wandb_project turns W&B on, as in Axolotl
    assert r.mapped["training.zero_stage"] == "deepspeed"
    assert "set WANDB_PROJECT=llama-full-ft in the environment; sft-tui does not store it" in " ".join(r.notes)
    keys = {u.key: u.reason for u in r.unmapped}
    assert "no CPU offload" in keys["deepspeed: zero_optimization.offload_optimizer"]
    assert keys["wandb_entity"] == "set WANDB_ENTITY=my-team in the environment; sft-tui does not store it"
    assert "run folder" in keys["wandb_name"] and "WANDB_LOG_MODEL=checkpoint" in keys["wandb_log_model"]
    assert any("allgather_bucket_size" in n for n in r.notes)  # the rest of the file, by name
    assert any("set training.devices" in n for n in r.notes)  # the file does not say how many GPUs


def test_import_deepspeed_where_it_is_not_installed(deepspeed_missing):
    """The imported config must validate here: the strategy becomes unmapped with the fix, its stage a note."""
    r = import_config(FIXTURES / "axolotl_deepspeed.yml")
    assert r.config.training.strategy == "auto" and r.config.training.zero_stage == 2
    keys = {u.key: u.reason for u in r.unmapped}
    assert "deepspeed package is not installed" in keys["deepspeed"] and "pip install deepspeed" in keys["deepspeed"]
    assert next(u.value for u in r.unmapped if u.key == "deepspeed") == "deepspeed_configs/zero2.json"
    assert any("ZeRO stage 2 was left out" in n for n in r.notes)
    assert not any("set training.devices" in n for n in r.notes)
    parse_config(r.config.to_dict())


def test_import_llamafactory_deepspeed_and_tensorboard(deepspeed_installed):
    r = import_config(FIXTURES / "llamafactory_lora_ds.yaml")
    t = r.config.training
    assert (t.strategy, t.zero_stage, t.report_to) == ("deepspeed", 3, ["tensorboard"])
    notes = " ".join(r.notes)
    assert "zero_allow_untested_optimizer" in notes and "stage3_max_live_parameters" in notes
    keys = {u.key: u.reason for u in r.unmapped}
    assert "SFT_TUI_COLLECTIVE_TIMEOUT_S" in keys["ddp_timeout"]


def test_import_trl_fsdp_and_wandb():
    r = import_config(FIXTURES / "trl_sft_multi.py")
    t = r.config.training
    assert (t.strategy, t.report_to) == ("fsdp", ["wandb"])
    # FSDP's own activation checkpointing is what sft-tui's gradient_checkpointing means under FSDP
    assert t.gradient_checkpointing is True
    assert r.mapped["training.gradient_checkpointing"] == "SFTConfig.fsdp_config.activation_checkpointing"
    keys = {u.key: u.reason for u in r.unmapped}
    assert "every process" in keys["SFTConfig.fsdp_config.cpu_ram_efficient_loading"]
    assert "SFTConfig.fsdp_config.state_dict_type" not in keys and "SFTConfig.fsdp" not in keys


def test_import_axolotl_fsdp2_settings_that_do_not_carry_over():
    text = ("base_model: m\nfsdp_version: 2\ngradient_checkpointing: false\nfsdp_config:\n  offload_params: true\n"
            "  state_dict_type: SHARDED_STATE_DICT\n  auto_wrap_policy: TRANSFORMER_BASED_WRAP\n"
            "  transformer_layer_cls_to_wrap: LlamaDecoderLayer\n  reshard_after_forward: true\n"
            "  activation_checkpointing: true\n")
    r = import_config(text, "axolotl")
    assert r.config.training.strategy == "fsdp" and r.config.training.gradient_checkpointing is True
    keys = {u.key: u.reason for u in r.unmapped}
    assert set(keys) == {"fsdp_config.offload_params", "fsdp_config.state_dict_type"}
    assert "no CPU offload" in keys["fsdp_config.offload_params"] and "rank 0" in keys["fsdp_config.state_dict_type"]
    assert any("LlamaDecoderLayer" in n and "_no_split_modules" in n for n in r.notes)
    assert not any("FSDP version" in n for n in r.notes)


def test_import_axolotl_fsdp1_list_and_prefixed_keys():
    text = ("base_model: m\nfsdp:\n  - full_shard\n  - auto_wrap\n  - offload\nfsdp_config:\n"
            "  fsdp_sync_module_states: true\n  fsdp_state_dict_type: FULL_STATE_DICT\n")
    r = import_config(text, "axolotl")
    assert r.config.training.strategy == "fsdp"
    keys = {u.key: u.reason for u in r.unmapped}
    assert "no CPU offload" in keys["fsdp: offload"]
    assert "FSDP1" in keys["fsdp_config.fsdp_sync_module_states"]
    assert any("FSDP version 1 settings are read as FSDP2" in n for n in r.notes)


def test_import_deepspeed_inline_and_with_fsdp(deepspeed_installed):
    text = ("base_model: m\ndeepspeed:\n  zero_optimization:\n    stage: 3\n    offload_param:\n      device: nvme\n"
            "  optimizer:\n    type: AdamW\nfsdp_version: 2\nfsdp_config:\n  reshard_after_forward: true\n")
    r = import_config(text, "axolotl")
    assert (r.config.training.strategy, r.config.training.zero_stage) == ("deepspeed", 3)
    keys = {u.key: u.reason for u in r.unmapped}
    assert "weights on the GPUs" in keys["deepspeed: zero_optimization.offload_param"]
    assert "training.optimizer" in keys["deepspeed: optimizer"]
    assert "one of them" in keys["fsdp_config"]
    stage0 = import_config("base_model: m\ndeepspeed:\n  zero_optimization:\n    stage: 0\n", "axolotl")
    assert stage0.config.training.strategy == "ddp" and any("stage 0" in n for n in stage0.notes)


@pytest.mark.parametrize("value, trackers, unmapped", [
    ("none", "none", None),
    ("[wandb, tensorboard]", ["wandb", "tensorboard"], None),
    ("wandb,mlflow", ["wandb", "mlflow"], None),
    ("[wandb, swanlab]", ["wandb"], "not one of sft-tui's trackers"),
    ("swanlab", "none", "not one of sft-tui's trackers"),
    ("all", "none", "every tracker installed"),
])
def test_import_report_to(value, trackers, unmapped):
    r = import_config(f"model_name_or_path: m\nstage: sft\nfinetuning_type: lora\nreport_to: {value}\n", "llamafactory")
    assert r.config.training.report_to == trackers
    keys = {u.key: u.reason for u in r.unmapped}
    assert (unmapped in keys["report_to"]) if unmapped else ("report_to" not in keys)


def test_import_llamafactory_swanlab_is_named_as_no_tracker_of_ours():
    r = import_config("model_name_or_path: m\nstage: sft\nuse_swanlab: true\nswanlab_project: p\nreport_to: none\n",
                      "llamafactory")
    keys = {u.key: u.reason for u in r.unmapped}
    assert "SwanLab is not one of sft-tui's trackers" in keys["use_swanlab"] and "swanlab_project" in keys
    assert r.config.training.report_to == "none"


def test_import_axolotl_tracker_switches():
    r = import_config("base_model: m\nuse_mlflow: true\nmlflow_tracking_uri: http://mlflow:5000\nuse_wandb: false\n"
                      "use_comet: true\ntrackio_project_name: sft-tui\nwandb_mode: offline\n", "axolotl")
    assert r.config.training.report_to == ["mlflow", "trackio"]
    keys = {u.key: u.reason for u in r.unmapped}
    assert "MLFLOW_TRACKING_URI=http://mlflow:5000" in keys["mlflow_tracking_uri"]
    assert "not one of sft-tui's trackers" in keys["use_comet"]
    assert "WANDB_MODE=offline" in keys["wandb_mode"]
    assert not r.notes  # trackio_project_name sft-tui is sft-tui's own project
    off = import_config("base_model: m\nuse_wandb: false\nuse_tensorboard: false\n", "axolotl")
    assert off.config.training.report_to == "none" and not off.unmapped


def test_unmapped_reasons_are_true_today(deepspeed_installed):
    """sft-tui trains on several GPUs and reports to trackers now: no reason may say otherwise."""
    from sft_tui.core.interop._common import REASONS
    from sft_tui.core.train.ranks import DEFAULT_TIMEOUT_S, TIMEOUT_ENV

    assert TIMEOUT_ENV in REASONS["ddp_timeout"] and f"default {int(DEFAULT_TIMEOUT_S)} s" in REASONS["ddp_timeout"]
    for key in ("report_to", "deepspeed", "fsdp", "fsdp_config"):
        assert key not in REASONS, key
    for fixture in IMPORTS:
        for u in import_config(FIXTURES / fixture).unmapped:
            assert "one device" not in u.reason and "events.jsonl" not in u.reason, (fixture, u)


# --------------------------------------------------------------------------- golden export


@pytest.mark.parametrize("target", ["axolotl", "llamafactory", "trl"])
def test_export_golden(target):
    config = load_config(FIXTURES / "sft_tui_config.yaml")
    text = export_config(config, target)
    assert "sample:" not in text.split("Not carried over")[-1].split("\n\n", 1)[-1]
    assert str(sample_data_dir() / "reviews_chat.jsonl") in text  # sample:NAME written as the bundled file
    _golden(f"export.{target}{SUFFIX[target]}", text)


def _placed_config(**training) -> Config:
    raw = yaml.safe_load((FIXTURES / "sft_tui_config.yaml").read_text())
    raw["training"].update(training)
    return parse_config(raw)


# on 2 nodes of 4 GPUs each, sharded with ZeRO-3, logged to MLflow and Trackio
DEEPSPEED_NODES = {"devices": 4, "nodes": 2, "master_addr": "10.0.0.1", "strategy": "deepspeed", "zero_stage": 3,
                   "report_to": ["mlflow", "trackio"]}


@pytest.mark.parametrize("target", ["axolotl", "llamafactory", "trl"])
def test_export_golden_deepspeed_on_two_nodes(target, deepspeed_installed):
    text = export_config(_placed_config(**DEEPSPEED_NODES), target)
    _golden(f"export_deepspeed.{target}{SUFFIX[target]}", text)
    if target == "trl":
        ast.parse(text)


def test_export_launch_commands_follow_the_devices():
    """The header's command starts the peer on the GPUs sft-tui would use (verified in each tool's docs)."""
    two = _placed_config(devices=[0, 2], strategy="ddp", report_to="none")
    assert "Train with: CUDA_VISIBLE_DEVICES=0,2 axolotl train FILE --launcher torchrun -- --nproc_per_node=2\n" \
        in export_config(two, "axolotl")
    assert "Train with: CUDA_VISIBLE_DEVICES=0,2 FORCE_TORCHRUN=1 llamafactory-cli train FILE\n" \
        in export_config(two, "llamafactory")
    assert "Run with: CUDA_VISIBLE_DEVICES=0,2 torchrun --nproc_per_node=2 THIS_FILE\n" in export_config(two, "trl")
    one = _placed_config(devices="auto", strategy="fsdp", report_to="none")
    lf = export_config(one, "llamafactory")
    assert "Train with: llamafactory-cli train FILE\n" in lf and "LLaMA-Factory uses every visible GPU" in lf
    ax = export_config(one, "axolotl")  # one process: sft-tui does not shard, so neither does the export
    assert "fsdp_config" not in ax and "training.strategy fsdp: sft-tui shards only across several processes" in ax
    waits = export_config(_placed_config(wait_for_gpu=True, stall_factor=20.0), "trl")
    assert "training.wait_for_gpu" in waits and "has no stall watch" in waits


def test_export_files_write_the_zero_config_beside(tmp_path, deepspeed_installed):
    config = _placed_config(devices=2, strategy="deepspeed", zero_stage=3)
    for target in ("axolotl", "llamafactory"):
        out = tmp_path / target / "train.yaml"
        files = export_files(config, target, out)
        ds = out.parent.resolve() / "ds_zero3.json"
        assert json.loads(files[ds])["zero_optimization"]["stage"] == 3
        assert yaml.safe_load(files[out])["deepspeed"] == str(ds)
        assert "The DeepSpeed ZeRO config" not in files[out]  # the file itself is written, not a copy in the header
        for path, text in files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        back = import_config(out)
        assert (back.config.training.strategy, back.config.training.zero_stage) == ("deepspeed", 3)
        assert not back.notes or not any("not read" in n for n in back.notes)  # sft-tui reads its own file whole
    assert list(export_files(config, "trl", tmp_path / "t.py")) == [tmp_path / "t.py"]  # TRL holds it inline


def test_export_header_lists_what_does_not_carry_over():
    config = Config.model_validate({"data": {"format": "alpaca", "template": "chatml", "truncation": "drop",
                                             "skip_bad_rows": True}, "model": {"dtype": "float16"}})
    ax = export_config(config, "axolotl")
    assert "model 'demo'" in ax and "data.template chatml" in ax and "skip_bad_rows" in ax
    lf = export_config(config, "llamafactory")
    assert "truncation drop" in lf and "model.dtype float16" in lf
    trl = export_config(config, "trl")
    assert "truncation drop" in trl.split('"""')[1]


# --------------------------------------------------------------------------- round trips

BASE = {
    "model": {"path": "Qwen/Qwen2.5-0.5B", "dtype": "bfloat16", "attn_implementation": "sdpa",
              "trust_remote_code": True, "revision": "v1.0"},
    "data": {"path": "sample:reviews_chat.jsonl", "format": "messages", "template": "chatml",
             "system_prompt": "Be brief.", "validation_split": 0.2, "max_length": 1024, "packing": True,
             "train_on_prompt": False, "num_proc": 2},
    "method": {"type": "qlora", "quantization_bits": 4, "lora_r": 32, "lora_alpha": 64, "lora_dropout": 0.1,
               "target_modules": ["q_proj", "v_proj"], "use_dora": True, "use_rslora": True},
    "training": {"epochs": 2.0, "max_steps": 500, "learning_rate": 1e-4, "scheduler": "linear", "warmup_ratio": 0.05,
                 "batch_size": 2, "gradient_accumulation": 8, "gradient_checkpointing": True, "precision": "bf16",
                 "optimizer": "paged_adamw_8bit", "weight_decay": 0.01, "max_grad_norm": 0.5, "seed": 7,
                 "logging_steps": 3, "eval_steps": 50, "save_steps": 60, "save_total_limit": 3,
                 "early_stopping_patience": 2},
}
VARIANTS = {
    "qlora-messages": {},
    "qlora-8bit-sharegpt": {"method": {"quantization_bits": 8},
                            "data": {"path": "sample:reviews_sharegpt.jsonl", "format": "sharegpt", "template": "llama3"},
                            "training": {"precision": "fp16", "optimizer": "adamw_8bit", "scheduler": "cosine",
                                         "report_to": ["trackio"]}},
    "lora-alpaca-fsdp": {"method": {"type": "lora", "quantization_bits": None, "target_modules": "all-linear",
                                    "use_dora": False},
                         "data": {"path": "sample:reviews_alpaca.jsonl", "format": "alpaca", "template": "alpaca",
                                  "train_on_prompt": True, "packing": False, "system_prompt": None},
                         "training": {"precision": "fp32", "max_steps": None, "optimizer": "adamw_torch",
                                      "scheduler": "constant_with_warmup", "early_stopping_patience": None,
                                      "eval_steps": None, "devices": 2, "strategy": "fsdp",
                                      "report_to": ["tensorboard", "wandb"]}},
    "full-text-validation-file-zero3": {"method": {"type": "full", "quantization_bits": None, "use_dora": False,
                                                   "use_rslora": False},
                                        "data": {"path": "sample:reviews_text.jsonl", "format": "text",
                                                 "template": "auto", "validation_path": "sample:reviews_text.jsonl",
                                                 "system_prompt": None},
                                        "training": {"precision": "auto", "optimizer": "sgd",
                                                     "gradient_checkpointing": False, "devices": [0, 1],
                                                     "strategy": "deepspeed", "zero_stage": 3,
                                                     "report_to": ["mlflow"]}},
}
LORA_FIELDS = {"method.lora_r", "method.lora_alpha", "method.lora_dropout", "method.target_modules"}
# What a target cannot hold (each is named in the export's header, tested above). No peer config says how
# many GPUs it runs on: the header's launch command does.
NOT_CARRIED = {"axolotl": {"output.run_name", "training.devices"},
               "llamafactory": {"model.dtype", "output.run_name", "training.devices"},
               "trl": {"output.run_name", "training.devices"}}
# What an exported file carries that sft-tui has no field for (the import reports these and nothing else).
EXPECTED_UNMAPPED = {"axolotl": {"output_dir", "evals_per_epoch"}, "llamafactory": {"output_dir"},
                     "trl": {"SFTConfig.output_dir"}}


def _config(name: str) -> Config:
    data = json.loads(json.dumps(BASE))
    for section, values in VARIANTS[name].items():
        data[section].update(values)
    return parse_config(data)


def _flat(config: Config) -> dict[str, object]:
    return {f"{s}.{k}": v for s, fields in config.to_dict().items() for k, v in fields.items()}


def _unsupported(target: str, config: Config) -> set[str]:
    skip = set(NOT_CARRIED[target])
    if config.method.type == "full":
        skip |= LORA_FIELDS  # not exported for full fine-tuning: nothing to compare
    if config.data.validation_path:
        skip.add("data.validation_split")  # ignored by sft-tui when a validation file is given
    if target == "llamafactory" and config.data.format == "text":
        skip |= {"data.format"}  # LLaMA-Factory's sft stage has no plain-text rows (named in the header)
    if target == "llamafactory" and config.training.strategy == "fsdp":
        skip |= {"training.strategy"}  # started from an accelerate config, not the YAML (named in the header)
    if target == "axolotl" and config.data.format == "alpaca":
        skip |= {"data.system_prompt"} if config.data.system_prompt is None else set()
    return skip


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("target", ["axolotl", "llamafactory", "trl"])
def test_round_trip(target, variant, tmp_path, deepspeed_installed):
    ours = _config(variant)
    out = tmp_path / f"exported{SUFFIX[target]}"
    for path, text in export_files(ours, target, out).items():
        path.write_text(text, encoding="utf-8")
    back = import_config(out, target)
    assert back.source == target
    want, got = _flat(ours), _flat(back.config)
    skip = _unsupported(target, ours)
    diff = {k: (want[k], got[k]) for k in want if k not in skip and want[k] != got[k]}
    assert diff == {}, f"{target}/{variant}: fields changed in the round trip: {diff}"
    assert {u.key for u in back.unmapped} <= EXPECTED_UNMAPPED[target], back.unmapped


def test_round_trip_comparison_can_fail(tmp_path):
    """The round trip above would notice a lost field: an edited export comes back different."""
    ours = _config("qlora-messages")
    text = export_config(ours, "axolotl").replace("lora_r: 32", "lora_r: 8")
    back = import_config(text, "axolotl")
    assert back.config.method.lora_r == 8 != ours.method.lora_r


# --------------------------------------------------------------------------- unmapped and rejected values


def test_unmapped_settings_are_reported_by_name():
    r = import_config(FIXTURES / "axolotl_lora.yml")
    keys = {u.key: u for u in r.unmapped}
    for name in ("loss_watchdog_threshold", "saves_per_epoch", "special_tokens", "dataset_prepared_path", "tf32"):
        assert name in keys, name
    assert "warmup_ratio" in keys["warmup_steps"].reason  # 10 steps, and no max_steps to turn it into a share
    assert "wandb_project" not in keys  # an empty key sets nothing


def test_values_the_schema_rejects_become_unmapped_not_exceptions():
    text = ("base_model: m\nadapter: lora\nlora_r: 0\nlearning_rate: 5\nsequence_len: 8\nval_set_size: 2000\n"
            "lr_scheduler: one_cycle\neval_steps: 10\ndatasets:\n  - path: d.jsonl\n    type: alpaca\n")
    r = import_config(text, "axolotl")
    keys = {u.key: u.reason for u in r.unmapped}
    assert "sft-tui would reject it (method.lora_r)" in keys["lora_r"]
    assert "training.learning_rate" in keys["learning_rate"] and "data.max_length" in keys["sequence_len"]
    assert "number of rows" in keys["val_set_size"] and "one_cycle" in keys["lr_scheduler"]
    assert "≥ 1" in keys["lora_r"]  # the schema's own bounds
    parse_config(r.config.to_dict())


def test_cross_field_rules_move_contradictions_to_unmapped():
    r = import_config("base_model: m\nval_set_size: 0\neval_steps: 10\nearly_stopping_patience: 3\n", "axolotl")
    keys = {u.key: u.reason for u in r.unmapped}
    assert "evaluation needs validation data" in keys["eval_steps"]
    assert "early stopping needs validation data" in keys["early_stopping_patience"]
    parse_config(r.config.to_dict())


def test_llamafactory_dataset_without_dataset_info(tmp_path):
    cfg = tmp_path / "lf.yaml"
    cfg.write_text("model_name_or_path: m\nstage: dpo\nfinetuning_type: freeze\ndataset: alpaca_en\n")
    r = import_config(cfg)
    keys = {u.key: u.reason for u in r.unmapped}
    assert "dataset_info.json was not found" in keys["dataset"]
    assert "stage" in keys and "finetuning_type" in keys
    assert any("not supervised fine-tuning" in n for n in r.notes)


def test_dataset_given_as_hub_id_is_unmapped_and_data_keeps_its_default():
    r = import_config("base_model: m\ndatasets:\n  - path: tatsu-lab/alpaca\n    type: alpaca\n", "axolotl")
    assert r.config.data.path == Config().data.path
    assert any(u.key == "datasets[0].path" and "hub" in u.reason for u in r.unmapped)


# --------------------------------------------------------------------------- hostile and broken input


@pytest.mark.parametrize("text, source, message", [
    ("base_model: [unclosed\n  - : :", "axolotl", "not valid YAML"),
    ("- base_model: m\n- lora_r: 8\n", "axolotl", "not a mapping"),
    ("", "llamafactory", "empty"),
    ("import trl\nprint('hello')\n", "trl", "no SFTConfig"),
    ("def broken(:\n", "trl", "not valid Python"),
    ("just some words\n", None, "plain text, not a mapping"),
    ("model: demo\ntraining:\n  epochs: 1\n", None, "already an sft-tui config"),
])
def test_broken_input_gives_a_clear_error(text, source, message):
    with pytest.raises(UserError) as info:
        import_config(text, source)
    assert message in info.value.message and info.value.hint


def test_script_with_non_literal_values_is_read_not_run(tmp_path):
    marker = tmp_path / "ran"
    script = (f"open({str(marker)!r}, 'w').write('x')\nimport os\nLR = float(os.environ.get('LR', '1e-4'))\n"
              "args = SFTConfig(learning_rate=LR, num_train_epochs=2, per_device_train_batch_size=compute(),\n"
              "                 **extra)\n")
    r = import_config(script, "trl")
    assert not marker.exists()
    keys = {u.key: u.reason for u in r.unmapped}
    assert "literal" in keys["SFTConfig.learning_rate"] and "literal" in keys["SFTConfig.per_device_train_batch_size"]
    assert any(k.startswith("SFTConfig(**") for k in keys)
    assert r.config.training.epochs == 2.0


def test_detect_source():
    for fixture, source in IMPORTS.items():
        assert detect_source((FIXTURES / fixture).read_text(), FIXTURES / fixture) == source


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        import_config(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------- the TRL script


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_exported_trl_script_is_python_importing_only_the_hf_stack(variant, deepspeed_installed):
    tree = ast.parse(export_config(_config(variant), "trl"))
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add((node.module or "").split(".")[0])
    assert modules and modules <= {"trl", "peft", "transformers", "datasets"}, modules
    calls = {n.func.id if isinstance(n.func, ast.Name) else getattr(n.func, "attr", "") for n in ast.walk(tree)
             if isinstance(n, ast.Call)}
    assert {"SFTConfig", "SFTTrainer", "load_dataset"} <= calls
    assert ("LoraConfig" in calls) == (_config(variant).method.type != "full")


def test_exported_trl_keywords_exist_in_the_installed_trl(deepspeed_installed):
    """Every SFTConfig / LoraConfig keyword the export writes is a field of the installed classes."""
    import dataclasses

    pytest.importorskip("trl")
    from peft import LoraConfig
    from trl import SFTConfig

    fields = {"SFTConfig": {f.name for f in dataclasses.fields(SFTConfig)},
              "LoraConfig": {f.name for f in dataclasses.fields(LoraConfig)}}
    for variant in VARIANTS:
        tree = ast.parse(export_config(_config(variant), "trl"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in fields:
                unknown = {k.arg for k in node.keywords} - fields[node.func.id]
                assert not unknown, f"{variant}: {node.func.id} has no {unknown}"


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    """A parser built the way sft_tui/cli.py builds its `config` group, plus our actions."""
    parser = argparse.ArgumentParser(prog="sft-tui")
    sub = parser.add_subparsers(dest="command")
    cfg = sub.add_parser("config")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    cfg_sub.add_parser("validate")
    register_config_actions(cfg_sub)
    return parser


def _run(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    return args.func(args)


def test_cli_import_prints_config_and_lists_unmapped(capsys):
    assert _run(["config", "import", str(FIXTURES / "axolotl_qlora.yml")]) == 0
    out, err = capsys.readouterr()
    config = parse_config(yaml.safe_load(out))
    assert config.method.type == "qlora" and out.startswith("# Imported from axolotl")
    assert "setting(s) not carried over" in err and "paged_adamw_32bit" in err


def test_cli_import_writes_output_and_refuses_overwrite(tmp_path, capsys):
    out = tmp_path / "run.yaml"
    argv = ["config", "import", str(FIXTURES / "trl_sft.py"), "--from", "trl", "-o", str(out)]
    assert _run(argv) == 0
    assert load_config(out).method.lora_r == 32
    assert _run(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert _run(argv + ["--force"]) == 0


@pytest.mark.parametrize("content, message", [(None, "file not found"), ("- a\n- b\n", "not a mapping"),
                                              (b"\xff\xfe\x00bin", "not a text file"),
                                              ("foo: 1\n", "could not tell")])
def test_cli_import_bad_file_exits_2_with_error_and_hint(tmp_path, capsys, content, message):
    path = tmp_path / "peer.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    assert _run(["config", "import", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "hint: " in err and "Traceback" not in err


@pytest.mark.parametrize("target", ["axolotl", "llamafactory", "trl"])
def test_cli_export_prints_each_target(target, capsys):
    assert _run(["config", "export", str(FIXTURES / "sft_tui_config.yaml"), "--to", target]) == 0
    out = capsys.readouterr().out
    if target == "trl":
        ast.parse(out)
    else:
        assert isinstance(yaml.safe_load(out), dict)


def test_cli_export_llamafactory_writes_dataset_info_and_round_trips(tmp_path, capsys):
    out = tmp_path / "lf" / "train.yaml"
    assert _run(["config", "export", str(FIXTURES / "sft_tui_config.yaml"), "--to", "llamafactory", "-o", str(out)]) == 0
    info = json.loads((out.parent / "dataset_info.json").read_text())
    assert info["sft_tui_train"]["file_name"] == str(sample_data_dir() / "reviews_chat.jsonl")
    assert "wrote" in capsys.readouterr().err
    back = import_config(out)
    assert back.config.data.path == "sample:reviews_chat.jsonl" and back.config.data.format == "messages"


def test_cli_export_invalid_config_exits_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  learning_rate: -1\n")
    assert _run(["config", "export", str(bad), "--to", "axolotl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "learning_rate" in err and "Traceback" not in err


def test_register_adds_actions_to_an_existing_config_group():
    parser = argparse.ArgumentParser(prog="sft-tui")
    sub = parser.add_subparsers(dest="command")
    cfg = sub.add_parser("config")
    cfg.add_subparsers(dest="config_command", required=True).add_parser("validate")
    register(sub)
    args = parser.parse_args(["config", "export", "x.yaml", "--to", "trl"])
    assert args.func is cmd_config_export
    assert parser.parse_args(["config", "import", "x.yaml"]).func is cmd_config_import


def test_export_takes_a_run_name_as_well_as_a_file(tmp_path, capsys, monkeypatch):
    """`sft-tui config export RUN --to ...` reproduces a run elsewhere from its config.yaml."""
    from sft_tui.cli import main
    from sft_tui.testing import synthetic

    synthetic.write_run(tmp_path, "done-run", steps=3)
    assert main(["--runs-dir", str(tmp_path), "config", "export", "done-run", "--to", "axolotl"]) == 0
    assert "base_model:" in capsys.readouterr().out
    assert main(["--runs-dir", str(tmp_path), "config", "export", "no-such-run", "--to", "axolotl"]) == 2
    assert "no config file or run named 'no-such-run'" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["axolotl", "llamafactory"])
def test_keys_that_are_not_names_are_listed_not_a_traceback(tmp_path, source):
    """YAML reads `123:` and `true:` as a number and a bool; they are listed as not carried over."""
    path = tmp_path / "odd.yaml"
    path.write_text("base_model: m\nmodel_name_or_path: m\n123: x\ntrue: y\nfsdp_version: 2\n"
                    "fsdp_config:\n  5: z\n  reshard_after_forward: true\n")
    result = import_config(path, source)
    keys = {u.key for u in result.unmapped}
    assert {"123", "True"} <= keys
