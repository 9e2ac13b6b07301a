"""The multi-process launch plan: the world from the config, torchrun's argv, the ranks' environment,
the files written into the run directory, the per-node commands and the SLURM script.

The argv, launch.json, fsdp.json / deepspeed.json, the print-launch text and the sbatch script are
pinned by golden files in tests/fixtures/launch/; after an intended change, regenerate them with

    SFT_TUI_REGEN_GOLDEN=1 pytest -q tests/test_launcher.py

and review the diff. This interpreter is written <PYTHON> and the run directory <RUN>. Two tests run
torchrun for real (two gloo CPU processes, a few seconds): the argv parses, both ranks run, each rank's
output lands in its own file, and a failed rank is named in torchrun's summary.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from sft_tui.core.config import Config, ConfigError
from sft_tui.core.models.memory import GiB
from sft_tui.core.train import launcher
from sft_tui.core.train.launcher import (
    World,
    WorldError,
    deepspeed_config,
    launch_command,
    launch_env,
    load_node_config,
    print_launch,
    resolve_world,
    sbatch_script,
    training_arguments_for,
    write_launcher_files,
)

GOLDEN = Path(__file__).parent / "fixtures" / "launch"
REGEN = os.environ.get("SFT_TUI_REGEN_GOLDEN") == "1"
RUN = "/shared/runs"

# A shell that started sft-tui with stray configuration and a secret: none of it may reach launch.json.
BASE_ENV = {
    "PATH": "/usr/bin:/bin", "HOME": "/home/ada", "HF_TOKEN": "hf_not_for_files",
    "ACCELERATE_USE_FSDP": "true", "ACCELERATE_MIXED_PRECISION": "fp16", "FSDP_SHARDING_STRATEGY": "NO_SHARD",
    "PET_NPROC_PER_NODE": "7", "TORCHELASTIC_RUN_ID": "stale", "RANK": "3",
}

CASES = {
    # name: (config, GPUs per node)
    "1x2gpu": ({"model": "/models/llama", "output": {"run_name": "one-node", "runs_dir": RUN},
                "training": {"devices": 2, "strategy": "deepspeed", "zero_stage": 2}}, 2),
    "2x8gpu": ({"model": "/models/llama", "method": {"type": "full"},
                "output": {"run_name": "two-nodes", "runs_dir": RUN},
                "training": {"devices": 8, "strategy": "fsdp", "nodes": 2, "master_addr": "10.0.0.1",
                             "gradient_checkpointing": True}}, 8),
    "1x2cpu": ({"output": {"run_name": "cpu-pair", "runs_dir": RUN}, "training": {"devices": 2}}, 0),
}


def _config(raw: dict) -> Config:
    return Config.model_validate(raw)


def _normalise(text: str, run_dir: Path | str | None = None) -> str:
    if run_dir is not None:
        text = text.replace(str(run_dir), "<RUN>")
    return text.replace(sys.executable, "<PYTHON>")


def _golden(name: str, actual: str) -> None:
    path = GOLDEN / name
    if REGEN or not path.exists():
        if not REGEN:
            pytest.fail(f"golden file {path} is missing; create it with SFT_TUI_REGEN_GOLDEN=1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
    assert actual == path.read_text(encoding="utf-8"), f"{name} differs from its golden file"


@pytest.fixture(autouse=True)
def _no_timeout_override(monkeypatch):
    monkeypatch.delenv(launcher.TIMEOUT_ENV, raising=False)


# --------------------------------------------------------------------------- goldens


@pytest.mark.parametrize("case", sorted(CASES))
def test_launch_plan_goldens(case, tmp_path):
    raw, gpus = CASES[case]
    config = _config(raw)
    world = resolve_world(config, gpus)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    argv = launch_command(world, run_dir, ["--control-seq", "0"])
    _golden(f"{case}.argv.json", _normalise(json.dumps(argv, indent=2), run_dir) + "\n")

    written = write_launcher_files(world, config, run_dir, ["--control-seq", "0"], base_env=BASE_ENV)
    assert {p.name for p in written} == {"launch.json"} | {
        "fsdp": {"fsdp.json"}, "deepspeed": {"deepspeed.json"}}.get(world.strategy, set())
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert "hf_not_for_files" not in text
        _golden(f"{case}.{path.name}", _normalise(text, run_dir))

    _golden(f"{case}.print-launch.txt", print_launch(config, gpus, "run.yaml"))
    _golden(f"{case}.sbatch.sh", sbatch_script(config, "/home/ada/run.yaml", gpus))


def test_launch_json_records_only_what_we_set(tmp_path):
    raw, gpus = CASES["2x8gpu"]
    world = resolve_world(_config(raw), gpus)
    write_launcher_files(world, _config(raw), tmp_path, base_env=BASE_ENV)
    record = json.loads((tmp_path / "launch.json").read_text())
    assert set(record["env"]) <= set(launch_env(world, BASE_ENV))
    assert "PATH" not in record["env"] and "HOME" not in record["env"]
    assert record["env_removed"] == ["ACCELERATE_MIXED_PRECISION", "ACCELERATE_USE_FSDP", "FSDP_SHARDING_STRATEGY",
                                     "PET_NPROC_PER_NODE", "RANK", "TORCHELASTIC_RUN_ID"]
    assert record["world"]["world_size"] == 16 and record["files"] == {"fsdp_config": "fsdp.json"}


# --------------------------------------------------------------------------- the world


def _t(**training) -> Config:
    return _config({"training": training})


def test_auto_is_one_process_on_the_chosen_gpu_or_the_cpu():
    w = resolve_world(_t(), 4, chosen=[3])
    assert (w.nproc_per_node, w.gpu_indices, w.backend, w.device, w.multi_process) == (1, (3,), "nccl", "cuda", False)
    w = resolve_world(_t(), 0)
    assert (w.nproc_per_node, w.gpu_indices, w.backend, w.device) == (1, (), "gloo", "cpu")
    assert w.strategy == "ddp" and w.zero_stage is None and w.master_addr == "127.0.0.1"


def test_a_count_takes_that_many_processes():
    w = resolve_world(_t(devices=4), 8)
    assert w.gpu_indices == (0, 1, 2, 3) and w.world_size == 4 and w.multi_process
    assert resolve_world(_t(devices=2), 8, chosen=[5, 2, 7]).gpu_indices == (5, 2)
    cpu = resolve_world(_t(devices=3), 0)
    assert (cpu.nproc_per_node, cpu.backend, cpu.gpu_indices) == (3, "gloo", ())


def test_more_gpus_than_there_are_names_both_numbers_and_the_fix():
    with pytest.raises(WorldError) as err:
        resolve_world(_t(devices=4), 2)
    assert "asks for 4 GPUs" in err.value.message and "has 2 GPUs" in err.value.message
    assert "training.devices: 2" in err.value.hint and err.value.field == "training.devices"


def test_a_list_takes_exactly_those_gpus():
    assert resolve_world(_t(devices=[2, 0]), 4).gpu_indices == (2, 0)
    with pytest.raises(WorldError, match="lists GPU 5, but this machine has 4 GPUs"):
        resolve_world(_t(devices=[0, 5]), 4)
    assert resolve_world(_t(devices=[0, 1]), 0).nproc_per_node == 2  # no GPUs: that many CPU processes


def test_strategy_and_nodes():
    w = resolve_world(_t(devices=8, strategy="deepspeed", zero_stage=3, nodes=4, node_rank=2,
                         master_addr="head", master_port=29555), 8)
    assert (w.strategy, w.zero_stage, w.world_size, w.global_ranks) == ("deepspeed", 3, 32, range(16, 24))
    assert (w.master_addr, w.master_port, w.multi_node) == ("head", 29555, True)
    with pytest.raises(WorldError, match="needs NVIDIA GPUs"):
        resolve_world(_t(devices=2, strategy="deepspeed"), 0)
    with pytest.raises(WorldError, match="needs the address of node 0"):
        resolve_world(_t(nodes=2), 8)


def test_unknown_gpu_count_takes_the_request_as_it_is():
    w = resolve_world(_t(devices=8), None)
    assert w.device == "cuda" and w.gpu_indices == tuple(range(8))


# --------------------------------------------------------------------------- environment and arguments


def test_launch_env_clears_stray_configuration_and_sets_ours():
    world = resolve_world(_t(devices=[1, 3]), 4)
    env = launch_env(world, {**BASE_ENV, "OMP_NUM_THREADS": "6"})
    assert not [k for k in env if k.startswith(("ACCELERATE_", "FSDP_", "PET_", "TORCHELASTIC_"))]
    assert "RANK" not in env and env["PATH"] == "/usr/bin:/bin" and env["HF_TOKEN"] == "hf_not_for_files"
    assert env["CUDA_VISIBLE_DEVICES"] == "1,3" and env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1" and env["OMP_NUM_THREADS"] == "6"
    assert env[launcher.TIMEOUT_ENV] == "600"
    cpu = launch_env(resolve_world(_t(devices=2), 0), {})
    assert cpu["OMP_NUM_THREADS"] == "1" and "CUDA_VISIBLE_DEVICES" not in cpu


def test_training_arguments_for_each_strategy(tmp_path):
    lora = _t(devices=2)
    assert training_arguments_for(resolve_world(_t(), 1), tmp_path, lora) == {}  # one process: nothing extra
    ddp = training_arguments_for(resolve_world(lora, 2), tmp_path, lora)
    assert ddp == {"ddp_backend": "nccl", "ddp_timeout": 600, "ddp_find_unused_parameters": False}
    full = _config({"method": {"type": "full"}, "training": {"devices": 2, "strategy": "fsdp",
                                                             "gradient_checkpointing": True}})
    fsdp = training_arguments_for(resolve_world(full, 0), tmp_path, full)
    assert fsdp == {"ddp_backend": "gloo", "ddp_timeout": 600, "use_cpu": True, "fsdp": True,
                    "fsdp_config": str(tmp_path / "fsdp.json"), "activation_checkpointing": False}
    ds = training_arguments_for(resolve_world(_t(devices=2, strategy="deepspeed"), 2), tmp_path)
    assert ds["deepspeed"] == str(tmp_path / "deepspeed.json")


def test_every_training_argument_exists_in_transformers():
    from transformers import TrainingArguments

    fields = {f.name for f in dataclasses.fields(TrainingArguments)}
    seen: set[str] = set()
    for strategy in ("ddp", "fsdp", "deepspeed"):
        for gpus in (0, 2):
            if strategy == "deepspeed" and not gpus:
                continue
            config = _t(devices=2, strategy=strategy, gradient_checkpointing=True)
            seen |= set(training_arguments_for(resolve_world(config, gpus), "/run", config))
    assert seen and seen <= fields, seen - fields


def test_transformers_accepts_the_arguments_and_fsdp_json(tmp_path):
    """Built in a one-process gloo group (TrainingArguments sets up its device on creation)."""
    config = _config({"method": {"type": "full"}, "training": {"devices": 2, "strategy": "fsdp",
                                                               "gradient_checkpointing": True}})
    world = resolve_world(config, 0)
    write_launcher_files(world, config, tmp_path, base_env={})
    cases = {"fsdp": training_arguments_for(world, tmp_path, config),
             "ddp": training_arguments_for(resolve_world(_t(devices=2), 0), tmp_path, _t(devices=2))}
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, sys, tempfile\n"
        "import torch.distributed as dist\n"
        "dist.init_process_group('gloo', store=dist.FileStore(tempfile.mktemp(), 1), rank=0, world_size=1)\n"
        "from transformers import TrainingArguments\n"
        "out = {}\n"
        "for name, kw in json.loads(sys.argv[1]).items():\n"
        "    a = TrainingArguments(output_dir=tempfile.mkdtemp(), **kw)\n"
        "    out[name] = {'plugin': a.fsdp_plugin_args, 'backend': a.ddp_backend,\n"
        "                 'unused': a.ddp_find_unused_parameters, 'ckpt': a.activation_checkpointing}\n"
        "print('RESULT ' + json.dumps(out))\n", encoding="utf-8")
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(probe), json.dumps(cases)], capture_output=True, text=True, check=False,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    plugin = result["fsdp"]["plugin"]
    assert plugin["fsdp_version"] == 2 and plugin["auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert plugin["activation_checkpointing"] is True and plugin["state_dict_type"] == "FULL_STATE_DICT"
    assert result["fsdp"]["ckpt"] is False  # moved into fsdp.json, not done twice
    assert result["ddp"] == {"plugin": None, "backend": "gloo", "unused": False, "ckpt": False}


def test_deepspeed_autos_are_all_filled_by_transformers():
    """Every 'auto' in deepspeed.json is one transformers' HF integration fills (else DeepSpeed fails)."""
    filled = {"train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
              "gradient_clipping", "bf16.enabled", "fp16.enabled", "zero_optimization.reduce_bucket_size",
              "zero_optimization.stage3_prefetch_bucket_size",
              "zero_optimization.stage3_param_persistence_threshold"}

    def autos(node, prefix=""):
        for key, value in node.items():
            if isinstance(value, dict):
                yield from autos(value, f"{prefix}{key}.")
            elif value == "auto":
                yield prefix + key

    for stage in (1, 2, 3):
        ds = deepspeed_config(_t(devices=2, strategy="deepspeed", zero_stage=stage))
        assert ds["zero_optimization"]["stage"] == stage
        assert set(autos(ds)) <= filled
        assert ("stage3_gather_16bit_weights_on_model_save" in ds["zero_optimization"]) == (stage == 3)


def test_deepspeed_json_parses_with_deepspeed_installed(tmp_path):
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (it needs a CUDA machine)")
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    config = _t(devices=2, strategy="deepspeed", zero_stage=3)
    path = tmp_path / "deepspeed.json"
    path.write_text(json.dumps(deepspeed_config(config)))
    assert HfTrainerDeepSpeedConfig(str(path)).is_zero3()


# --------------------------------------------------------------------------- torchrun for real


_PROBE = """
import os, sys
import torch
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

@record
def main():
    dist.init_process_group("gloo")
    if "--fail" in sys.argv and os.environ["RANK"] == "1":
        raise RuntimeError("rank one broke on purpose")
    t = torch.tensor([1.0])
    dist.all_reduce(t)
    stray = sorted(k for k in os.environ if k.startswith(("ACCELERATE_", "PET_", "FSDP_")))
    print(f"RANK {os.environ['RANK']} WORLD {os.environ['WORLD_SIZE']} SUM {t.item():.0f} ARGS {sys.argv[1:]} "
          f"STRAY {stray} ERRFILE {os.environ.get('TORCHELASTIC_ERROR_FILE', '')}", flush=True)
    dist.destroy_process_group()

main()
"""


def _torchrun(tmp_path: Path, worker_args: list[str]) -> tuple[subprocess.CompletedProcess, Path]:
    """Run launch_command's argv with the worker module swapped for a probe that prints who it is."""
    (tmp_path / "launch_probe.py").write_text(_PROBE, encoding="utf-8")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    world = resolve_world(_t(devices=2), 0)
    argv = launch_command(world, run_dir, worker_args)
    argv[argv.index(launcher.WORKER_MODULE)] = "launch_probe"
    env = launch_env(world, {**os.environ, "ACCELERATE_USE_FSDP": "true", "PET_TEE": "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=180, check=False)
    return proc, run_dir


def _rank_files(run_dir: Path, name: str) -> dict[int, str]:
    found = {}
    for path in (run_dir / "ranks").glob(f"*/attempt_0/*/{name}"):
        found[int(path.parent.name)] = path.read_text(encoding="utf-8")
    return found


def test_torchrun_runs_both_ranks_with_their_own_logs(tmp_path):
    proc, run_dir = _torchrun(tmp_path, ["--control-seq", "0"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = _rank_files(run_dir, "stdout.log")
    assert sorted(out) == [0, 1]
    for rank in (0, 1):
        line = next(x for x in out[rank].splitlines() if x.startswith("RANK"))
        assert line.startswith(f"RANK {rank} WORLD 2 SUM 2 ARGS ") and "STRAY []" in line
        assert f"'{run_dir}', '--rank-child', '--control-seq', '0'" in line
        assert f"/attempt_0/{rank}/error.json" in line and str(run_dir / "ranks") in line
    # local rank 0 is teed to torchrun's own output (the run's worker.log); rank 1 stays in its file
    assert "RANK 0 WORLD 2" in proc.stdout and "RANK 1 WORLD 2" not in proc.stdout


def test_a_failed_rank_ends_the_run_and_is_named(tmp_path):
    proc, run_dir = _torchrun(tmp_path, ["--fail"])
    assert proc.returncode != 0
    summary = proc.stdout + proc.stderr
    assert "Root Cause (first observed failure)" in summary and "rank      : 1 (local_rank: 1)" in summary
    assert "rank one broke on purpose" in summary
    errors = list((run_dir / "ranks").glob("*/attempt_0/1/error.json"))
    assert errors and "rank one broke on purpose" in errors[0].read_text()


# --------------------------------------------------------------------------- CLI and per-node config


def _write_config(tmp_path: Path, raw: dict) -> Path:
    import yaml

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_cli_print_launch_prints_and_starts_nothing(tmp_path, capsys):
    from sft_tui.cli import main

    raw, _ = CASES["2x8gpu"]
    path = _write_config(tmp_path, raw)
    assert main(["train", str(path), "--print-launch", "--gpus-per-node", "8"]) == 0
    assert capsys.readouterr().out == print_launch(_config(raw), 8, str(path))
    assert not (Path(RUN) / "two-nodes").exists()


def test_cli_sbatch_writes_the_script(tmp_path, capsys):
    from sft_tui.cli import main

    raw = {"model": "/models/llama", "output": {"runs_dir": RUN},
           "training": {"devices": 4, "nodes": 3, "strategy": "fsdp"}}  # no master_addr: SLURM gives it
    path = _write_config(tmp_path, raw)
    script = tmp_path / "job.sbatch"
    assert main(["train", str(path), "--sbatch", str(script)]) == 0
    text = script.read_text()
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gpus-per-node=4" in text
    assert 'RUN_NAME="${SLURM_JOB_NAME}-${SLURM_JOB_ID}"' in text and str(path.resolve()) in text
    assert "sbatch" in capsys.readouterr().err


def test_node_overrides_go_in_before_validation(tmp_path):
    path = _write_config(tmp_path, {"training": {"devices": 2, "nodes": 2}})
    with pytest.raises(ConfigError, match="master_addr"):
        load_node_config(path)
    config = load_node_config(path, None, node_rank=1, master_addr="10.1.1.1")
    assert (config.training.node_rank, config.training.master_addr) == (1, "10.1.1.1")
    with pytest.raises(ConfigError, match="node_rank"):
        load_node_config(path, None, node_rank=2, master_addr="h")


# --------------------------------------------------------------------------- pre-flight


def _gpu(index: int, free_gib: float) -> SimpleNamespace:
    return SimpleNamespace(index=index, mem_used=int((80 - free_gib) * GiB), mem_total=80 * GiB)


def test_preflight_refuses_more_gpus_than_the_machine_has(demo_model_dir):
    from sft_tui.core.train.preflight import preflight

    report = preflight(_t(devices=4), None, deep=False, gpus=[_gpu(0, 70), _gpu(1, 70)])
    found = [f for f in report.errors if f.field == "training.devices"]
    assert found and "asks for 4 GPUs" in found[0].message and not found[0].forceable
    ok = preflight(_t(devices=2), None, deep=False, gpus=[_gpu(0, 70), _gpu(1, 70)])
    assert ok.facts["world"]["world_size"] == 2 and ok.facts["memory"]["world_size"] == 2
    assert ok.facts["memory"]["text"].startswith("fits on GPUs 0, 1")


def test_world_dataclass_is_plain_data():
    w = World(2, 1, 0, "cpu", "gloo", (), "ddp", None, "127.0.0.1", 29500)
    assert json.loads(json.dumps(w.to_dict()))["world_size"] == 2
