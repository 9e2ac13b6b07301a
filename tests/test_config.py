"""The config schema: defaults, YAML round trip, presets, and every validation rule."""

from __future__ import annotations

import pytest
import yaml

from sft_tui.core.config import (
    Config,
    ConfigError,
    Environment,
    apply_preset,
    cross_check,
    dump_yaml,
    load_config,
    parse_config,
    preset_names,
    save_config,
)

NO_GPU = Environment(cuda_available=False, bf16_supported=False)
GPU = Environment(cuda_available=True, bf16_supported=True)


def problems(raw, env=NO_GPU):
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env)
    return {p.field: p for p in info.value.problems}


def test_defaults_serve_the_demo():
    c = Config()
    assert c.model.path == "demo" and c.method.type == "lora"
    assert c.data.path.startswith("sample:")
    assert cross_check(c, NO_GPU) == []


def test_yaml_round_trip_plain_and_commented(tmp_path):
    c = apply_preset(Config(), "balanced")
    c.data.columns = {"instruction": "question", "output": "answer"}
    c.method.target_modules = ["q_proj", "v_proj"]
    for comments in (False, True):
        path = save_config(c, tmp_path / f"c{comments}.yaml", comments=comments)
        assert load_config(path, env=NO_GPU) == c
    text = dump_yaml(c, comments=True)
    assert "# Peak learning rate" in text  # field descriptions become comments


def test_shorthands_model_and_data():
    c = parse_config({"model": "demo", "data": "sample:reviews_chat.jsonl"})
    assert c.model.path == "demo" and c.data.path == "sample:reviews_chat.jsonl"


@pytest.mark.parametrize("name", preset_names())
def test_presets_are_valid(name):
    c = apply_preset(Config(), name)
    assert isinstance(c, Config)
    assert cross_check(c, GPU) == []


def test_unknown_preset_suggests():
    with pytest.raises(ConfigError) as info:
        apply_preset(Config(), "quick_test")
    assert "quick-test" in str(info.value)


def test_every_problem_reported_at_once_with_did_you_mean():
    found = problems({
        "trainng": {},
        "training": {"learning_rate": -1, "batch_size": "x", "optimzer": "sgd", "precision": "fp61"},
        "method": {"type": "qlora"},
        "output": {"run_name": "bad name"},
    })
    assert "did you mean 'training'" in found["trainng"].fix
    assert "did you mean 'optimizer'" in found["training.optimzer"].fix
    assert found["training.learning_rate"].message == "out of range"
    assert "> 0" in found["training.learning_rate"].fix
    assert "whole number" in found["training.batch_size"].message
    assert "did you mean 'fp16'" in found["training.precision"].fix
    assert "output.run_name" in found
    # the cross-field rule still runs although other fields were broken
    assert "CUDA" in found["method.type"].message
    assert len(found) == 7


@pytest.mark.parametrize("raw, field, words", [
    ({"method": {"type": "lora", "quantization_bits": 4}}, "method.quantization_bits", "only applies to qlora"),
    ({"method": {"type": "full", "use_dora": True}}, "method.use_dora", "LoRA options"),
    ({"data": {"validation_split": 0}, "training": {"eval_steps": 10}}, "training.eval_steps", "validation data"),
    ({"data": {"validation_split": 0}, "training": {"early_stopping_patience": 2}}, "training.early_stopping_patience", "validation"),
    ({"method": {"target_modules": []}}, "method.target_modules", "no layers"),
    ({"method": {"type": "qlora"}}, "method.type", "CUDA"),
    ({"training": {"optimizer": "paged_adamw_8bit"}}, "training.optimizer", "CUDA"),
    ({"training": {"precision": "fp16"}}, "training.precision", "GPU"),
    ({"data": {"validation_split": 0.9}}, "data.validation_split", "out of range"),
    ({"data": {"max_length": 4}}, "data.max_length", "out of range"),
    ({"data": {"format": "alpacca"}}, "data.format", "not an allowed value"),
    ({"method": {"target_modules": 5}}, "method.target_modules", "not an allowed value"),
    ({"training": {"gradient_checkpointing": "maybe"}}, "training.gradient_checkpointing", "true or false"),
])
def test_each_rule(raw, field, words):
    found = problems(raw)
    assert field in found, found
    assert words in str(found[field])


def test_machine_rules_pass_on_gpu():
    parse_config({"method": {"type": "qlora"}, "training": {"optimizer": "paged_adamw_8bit", "precision": "bf16"}}, env=GPU)
    found = problems({"training": {"precision": "bf16"}}, env=Environment(cuda_available=True, bf16_supported=False))
    assert "bf16" in found["training.precision"].message


def test_qlora_defaults_to_4_bits():
    assert parse_config({"method": {"type": "qlora"}}, env=GPU).method.bits == 4
    assert parse_config({"method": {"type": "qlora", "quantization_bits": 8}}, env=GPU).method.bits == 8
    assert Config().method.bits is None


def test_file_errors_are_problems(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert "not found" in str(info.value)
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  epochs: 1\n bad_indent: 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(bad)
    assert "line 3" in str(info.value)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError):
        load_config(listy)


def test_yaml_is_loaded_safely(tmp_path):
    evil = tmp_path / "evil.yaml"
    evil.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError) as info:
        load_config(evil)
    assert "YAML" in str(info.value)


def test_empty_file_means_defaults(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty, env=NO_GPU) == Config()


def test_environment_probe_is_lazy():
    env = Environment()
    parse_config({"method": {"type": "lora"}}, env=env)
    assert env._cuda is None  # nothing needed the probe, so torch was not consulted
    assert yaml.safe_load(Config().to_yaml())["method"]["type"] == "lora"


def test_every_schema_field_is_on_the_form_or_owned_by_a_screen():
    """A new config field must get a place in the TUI: the training form, or the screen that owns it."""
    from sft_tui.core.config import SECTIONS
    from sft_tui.core.setup.forms import ELSEWHERE, FIELDS

    every = [f"{s}.{n}" for s, cls in SECTIONS.items() for n in cls.model_fields]
    assert [k for k in every if k not in FIELDS and k not in ELSEWHERE] == []
    assert not set(FIELDS) & set(ELSEWHERE)


def test_choice_lists_come_from_the_schema():
    """Formats and templates are listed once (the schema's Literal); every consumer derives them."""
    from sft_tui.cli import build_parser
    from sft_tui.core.config import choices
    from sft_tui.core.data.formats import FIELDS, FORMATS

    assert choices("data.format") == ("auto", *FORMATS) and set(FIELDS) == set(FORMATS)
    assert choices("method.quantization_bits") == (4, 8)
    from sft_tui.core.data.templates import NAMED_TEMPLATES, get_renderer  # noqa: F401

    assert ("auto", *NAMED_TEMPLATES) == choices("data.template")
    parser = build_parser()
    data = next(a for a in parser._subparsers._group_actions[0].choices["data"]._actions if a.dest == "data_command")
    inspect = data.choices["inspect"]
    flags = {a.dest: a.choices for a in inspect._actions if a.choices}
    assert tuple(flags["format"]) == choices("data.format") and tuple(flags["template"]) == choices("data.template")

