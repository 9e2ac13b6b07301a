"""The launch plan for a run of more than one process: who runs where, torchrun's exact command line,
the ranks' environment, and the FSDP / DeepSpeed files — as pure functions, so the plan can be
printed (``sft-tui train CONFIG --print-launch``), tested against golden files and written into the
run directory (``launch.json``) before anything starts.

Why torchrun
============
The launcher is ``python -m torch.distributed.run`` (torchrun), not ``accelerate launch``:

- it ships with torch, so multi-GPU training needs no extra dependency;
- its elastic agent watches every rank: when one dies it tears all the others down (``--max-restarts
  0``: a failed rank ends the run, it is never silently retried) and each rank's traceback lands in its
  own error file (``TORCHELASTIC_ERROR_FILE``, set per rank by torchrun when ``--log-dir`` is given),
  which torchrun quotes in its "Root Cause" summary;
- it reads no user-level configuration file. ``accelerate launch`` reads
  ``~/.cache/huggingface/accelerate/default_config.yaml``, so a file left by another project could
  change how our run shards. torchrun does read ``PET_*`` variables as defaults for its flags, and
  accelerate (under transformers' Trainer) reads ``ACCELERATE_*``, ``FSDP_*``, ``MEGATRON_LM_*`` and
  ``PARALLELISM_CONFIG_*`` variables (``ACCELERATE_USE_FSDP``, ``ACCELERATE_MIXED_PRECISION``,
  ``ACCELERATE_USE_DEEPSPEED`` …): ``launch_env`` removes all of those from the ranks' environment.

FSDP and DeepSpeed are configured only through transformers' ``TrainingArguments`` (``fsdp``,
``fsdp_config``, ``deepspeed``) pointing at files written into the run directory (``fsdp.json``,
``deepspeed.json``), so what a run used is in its folder.

Single node vs several
======================
One node uses ``--standalone``: a private rendezvous on a free port, so two runs on one machine never
clash over ``master_port``. Several nodes use torchrun's static rendezvous at ``master_addr:master_port``
with ``--node-rank``; node 0 waits up to 10 minutes for the others (torchrun's default), so the
per-node commands (``print_launch``) or a SLURM job (``sbatch_script``) must start them within that.

Files the ranks write
=====================
``--log-dir RUN/ranks --redirects 3 --tee 0:3``: every rank's stdout and stderr go to
``RUN/ranks/<rendezvous id>_<random>/attempt_0/<local rank>/{stdout,stderr}.log`` (its error file
beside them as ``error.json``), and local rank 0 is also copied to torchrun's own output (the run's
``worker.log``), so the log reads like a single-process run's while no rank's output is lost.

What the worker does with ``--rank-child``
==========================================
torchrun starts ``python -m sft_tui.worker RUN --rank-child [worker args]`` once per rank, with
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``/``MASTER_PORT`` and
``TORCHELASTIC_ERROR_FILE`` set. The rank joins the process group first (with the timeout from
``SFT_TUI_COLLECTIVE_TIMEOUT_S``), runs the same recipe with ``training_arguments_for`` merged into its
``TrainingArguments``, writes events only from rank 0, and must not write ``worker.pid`` (the
supervisor's pid is the run's). GPU indices are physical (nvidia-smi / NVML order):
``CUDA_VISIBLE_DEVICES`` lists them with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so local rank ``i`` uses
``cuda:i``.
"""

from __future__ import annotations

import functools
import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sft_tui.core.errors import UserError
from sft_tui.core.train.ranks import DEFAULT_TIMEOUT_S, TIMEOUT_ENV

if TYPE_CHECKING:  # pragma: no cover
    from sft_tui.core.config import Config

LAUNCHER_MODULE = "torch.distributed.run"
WORKER_MODULE = "sft_tui.worker"
RANK_CHILD_FLAG = "--rank-child"
RANKS_DIR = "ranks"
LAUNCH_FILE = "launch.json"
FSDP_FILE = "fsdp.json"
DEEPSPEED_FILE = "deepspeed.json"
# How long torchrun lets the ranks exit after SIGTERM before SIGKILL. Long enough for rank 0 to finish
# writing a file it is in the middle of; short enough that the survivors of a dead rank (stuck in a
# collective, deaf to SIGTERM) release their GPUs and the error is reported within a minute.
SHUTDOWN_TIMEOUT_S = 60
# Variables the libraries under the ranks read as configuration; none of them may leak in from the
# shell that started sft-tui (see the module docstring). Distributed identity variables are also
# dropped: torchrun sets them for each rank, and stray ones from an outer launcher only confuse.
CLEARED_PREFIXES = ("ACCELERATE_", "FSDP_", "MEGATRON_LM_", "PARALLELISM_CONFIG_", "PET_", "TORCHELASTIC_")
CLEARED_NAMES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                 "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT")
LOCAL_MASTER = "127.0.0.1"


class WorldError(UserError):
    """A placement this machine cannot run; names the config field so pre-flight can report it there."""

    def __init__(self, field: str, value: Any, message: str, hint: str) -> None:
        super().__init__(message, hint, kind="config")
        self.field, self.value = field, value


@dataclass(frozen=True)
class World:
    """Where a run's processes go: this node's share of them and how they meet."""

    nproc_per_node: int
    nnodes: int
    node_rank: int
    device: Literal["cuda", "cpu"]
    backend: Literal["nccl", "gloo"]
    gpu_indices: tuple[int, ...]  # physical GPU indices on this node; () on CPU
    strategy: Literal["ddp", "fsdp", "deepspeed"]
    zero_stage: int | None  # DeepSpeed ZeRO stage; None for ddp and fsdp
    master_addr: str
    master_port: int

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes

    @property
    def multi_process(self) -> bool:
        return self.world_size > 1

    @property
    def multi_node(self) -> bool:
        return self.nnodes > 1

    @property
    def global_ranks(self) -> range:
        """The global ranks this node runs."""
        start = self.node_rank * self.nproc_per_node
        return range(start, start + self.nproc_per_node)

    def to_dict(self) -> dict[str, Any]:
        return {"nproc_per_node": self.nproc_per_node, "nnodes": self.nnodes, "node_rank": self.node_rank,
                "world_size": self.world_size, "device": self.device, "backend": self.backend,
                "gpu_indices": list(self.gpu_indices), "strategy": self.strategy, "zero_stage": self.zero_stage,
                "master_addr": self.master_addr, "master_port": self.master_port}


# --------------------------------------------------------------------------- the world


def resolve_world(config: Config, gpu_count: int | None, chosen: Sequence[int] | None = None) -> World:
    """The processes this node runs, from ``training.devices`` and the GPUs it has.

    ``gpu_count`` is the number of GPUs on the node that will run (0: CPU processes with gloo;
    None: unknown, as when a command is prepared on a login node — the request is then taken as it
    is). ``chosen`` are physical indices already picked (the most free memory first) for 'auto' or a
    count; without them a count N takes GPUs 0..N-1.
    """
    t = config.training
    devices = t.devices
    if isinstance(devices, list):
        wanted = len(devices)
    elif devices == "auto":
        wanted = 1
    else:
        wanted = int(devices)
    if wanted < 1:
        raise WorldError("training.devices", devices, "training.devices must name at least one device",
                         "use 'auto', a count of 1 or more, or GPU indices such as [0, 1]")
    on_gpu = gpu_count is None or gpu_count > 0
    indices: tuple[int, ...] = ()
    if on_gpu:
        indices = _gpu_indices(devices, wanted, gpu_count, chosen)
    strategy = "ddp" if t.strategy == "auto" else t.strategy
    if strategy == "deepspeed" and not on_gpu:
        raise WorldError("training.strategy", "deepspeed", "strategy deepspeed needs NVIDIA GPUs, and this "
                         "machine has none", "use training.strategy: ddp or fsdp for CPU processes")
    if t.nodes > 1 and not t.master_addr:
        raise WorldError("training.master_addr", None, f"a run on {t.nodes} nodes needs the address of node 0",
                         "set training.master_addr to a host name or IP every node can reach")
    if t.node_rank >= t.nodes:
        raise WorldError("training.node_rank", t.node_rank, f"training.node_rank {t.node_rank} is not below the "
                         f"node count ({t.nodes})", f"number the nodes 0..{t.nodes - 1}; node 0 is the master")
    return World(
        nproc_per_node=wanted, nnodes=t.nodes, node_rank=t.node_rank,
        device="cuda" if on_gpu else "cpu", backend="nccl" if on_gpu else "gloo", gpu_indices=indices,
        strategy=strategy, zero_stage=t.zero_stage if strategy == "deepspeed" else None,
        master_addr=t.master_addr if t.nodes > 1 else LOCAL_MASTER, master_port=t.master_port,
    )


def _gpu_indices(devices: Any, wanted: int, gpu_count: int | None,
                 chosen: Sequence[int] | None) -> tuple[int, ...]:
    """The physical GPUs for a request, checked against the GPUs there are."""
    have = "this machine has" if gpu_count is not None else ""
    if isinstance(devices, list):
        missing = [i for i in devices if gpu_count is not None and not 0 <= i < gpu_count]
        if missing:
            raise WorldError("training.devices", devices,
                             f"training.devices lists GPU {', '.join(map(str, missing))}, but {have} "
                             f"{_gpus_word(gpu_count)} (indices 0..{max((gpu_count or 0) - 1, 0)})",
                             "list GPUs that exist (`sft-tui gpus` shows them), or use a count such as "
                             f"devices: {min(len(devices), gpu_count or 1)}")
        return tuple(devices)
    if gpu_count is not None and wanted > gpu_count:
        raise WorldError("training.devices", devices,
                         f"training.devices asks for {wanted} GPUs, but {have} {_gpus_word(gpu_count)}",
                         f"set training.devices: {gpu_count} (or fewer), or run on a machine with {wanted} GPUs")
    if chosen:
        if len(chosen) < wanted:
            raise WorldError("training.devices", devices, f"{wanted} GPUs were asked for but only {len(chosen)} "
                             f"were chosen ({', '.join(map(str, chosen))})", "free some GPUs, or ask for fewer")
        return tuple(int(i) for i in chosen[:wanted])
    return tuple(range(wanted))


def _gpus_word(count: int | None) -> str:
    return "an unknown number of GPUs" if count is None else ("no GPU" if count == 0 else
                                                             f"{count} GPU{'s' if count != 1 else ''}")


# --------------------------------------------------------------------------- command and environment


def launch_command(world: World, run_dir: str | Path, worker_args: Sequence[str] = (),
                   python: str | None = None) -> list[str]:
    """torchrun's exact argv for this node; ``python`` defaults to this interpreter."""
    run_dir = Path(run_dir)
    argv = [python or sys.executable, "-m", LAUNCHER_MODULE,
            "--nnodes", str(world.nnodes), "--nproc-per-node", str(world.nproc_per_node)]
    if world.multi_node:
        argv += ["--node-rank", str(world.node_rank), "--master-addr", world.master_addr,
                 "--master-port", str(world.master_port)]
    else:
        argv += ["--standalone"]  # a free port of its own: two runs on one machine never clash
    argv += ["--max-restarts", "0"]
    if torchrun_knows("--shutdown-timeout"):  # torch 2.12+; older torchrun waits its own 30 s
        argv += ["--shutdown-timeout", str(SHUTDOWN_TIMEOUT_S)]
    argv += ["--log-dir", str(run_dir / RANKS_DIR), "--redirects", "3", "--tee", "0:3",
             "-m", WORKER_MODULE, str(run_dir), RANK_CHILD_FLAG, *worker_args]
    return argv


@functools.lru_cache(maxsize=None)
def torchrun_knows(flag: str) -> bool:
    """Whether this torch's torchrun accepts ``flag`` (torch >= 2.4 is allowed; flags were added since)."""
    try:
        from torch.distributed.run import get_args_parser

        return flag in get_args_parser()._option_string_actions
    except Exception:  # noqa: BLE001 - no torch or another parser: leave the flag out
        return False


def env_settings(world: World, base_env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables the launch sets (a value already in ``base_env`` wins where a person may tune it).

    Only these are recorded in ``launch.json``: never the rest of the environment, which can hold secrets.
    """
    base = base_env or {}
    env = {
        "PYTHONUNBUFFERED": "1",  # rank logs as they happen, not when a buffer fills
        "OMP_NUM_THREADS": base.get("OMP_NUM_THREADS", "1"),  # torchrun's own default, minus its warning
        "TOKENIZERS_PARALLELISM": base.get("TOKENIZERS_PARALLELISM", "false"),
        TIMEOUT_ENV: base.get(TIMEOUT_ENV, str(int(DEFAULT_TIMEOUT_S))),
    }
    if world.device == "cuda":
        env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"  # CUDA numbers GPUs as nvidia-smi and NVML do
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, world.gpu_indices))
        # A failed NCCL collective aborts its communicator and the process, so torchrun sees the
        # rank end instead of every rank waiting forever.
        env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] = base.get("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    return env


def cleared_names(base_env: Mapping[str, str]) -> list[str]:
    """The names (never the values) of variables removed from the ranks' environment."""
    return sorted(k for k in base_env if k.startswith(CLEARED_PREFIXES) or k in CLEARED_NAMES)


def launch_env(world: World, base_env: Mapping[str, str]) -> dict[str, str]:
    """The environment torchrun starts with: ``base_env`` without stray configuration, plus ours."""
    drop = set(cleared_names(base_env))
    env = {k: v for k, v in base_env.items() if k not in drop}
    env.update(env_settings(world, base_env))
    return env


# --------------------------------------------------------------------------- files in the run directory


def fsdp_config(config: Config) -> dict[str, Any]:
    """FSDP2 settings for transformers' ``fsdp_config``.

    Each decoder block is one shard unit (accelerate takes the block class from the model's
    ``_no_split_modules``, so no class name is written here); weights are freed after the forward pass
    and gathered again for backward (``reshard_after_forward``); checkpoints and the final model are
    full state dicts gathered on rank 0, so the adapter and model folders load anywhere without
    FSDP. Gradient checkpointing is done by FSDP itself, which avoids the extra all-gather the
    Trainer's own checkpointing costs under FSDP.
    """
    return {
        "version": 2,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "reshard_after_forward": True,
        "state_dict_type": "FULL_STATE_DICT",
        "cpu_ram_efficient_loading": False,
        "activation_checkpointing": bool(config.training.gradient_checkpointing),
    }


def deepspeed_config(config: Config) -> dict[str, Any]:
    """A ZeRO config whose sizes are 'auto': transformers fills them from the TrainingArguments and
    the model (batch sizes, accumulation, clipping, bf16/fp16, bucket sizes from the hidden size), so
    the file can never disagree with the run's config. No optimizer or scheduler section: the Trainer
    builds the configured ones and hands them to DeepSpeed."""
    stage = int(config.training.zero_stage)
    zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                            "reduce_bucket_size": "auto"}
    if stage == 3:
        zero.update({"stage3_prefetch_bucket_size": "auto", "stage3_param_persistence_threshold": "auto",
                     # saving gathers the full 16-bit weights, so the adapter/model folder loads anywhere
                     "stage3_gather_16bit_weights_on_model_save": True})
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
        "steps_per_print": 2**31 - 1,  # our callback reports progress; DeepSpeed's own lines are noise
        "wall_clock_breakdown": False,
    }


def training_arguments_for(world: World, run_dir: str | Path, config: Config | None = None) -> dict[str, Any]:
    """Extra ``TrainingArguments`` keyword arguments for one rank (all exist in transformers 5).

    Empty for a single process. ``config`` (when given) refines them: LoRA adapters are all used in
    every step, so DDP need not search for unused parameters (that search costs a pass over the graph
    and breaks with gradient checkpointing); under FSDP, gradient checkpointing moves into
    ``fsdp.json``.
    """
    if not world.multi_process:
        return {}
    from sft_tui.core.train.ranks import collective_timeout

    run_dir = Path(run_dir)
    kwargs: dict[str, Any] = {"ddp_backend": world.backend, "ddp_timeout": int(collective_timeout())}
    if world.device == "cpu":
        kwargs["use_cpu"] = True
    if world.strategy == "ddp":
        if config is not None and config.method.type != "full":
            kwargs["ddp_find_unused_parameters"] = False
    elif world.strategy == "fsdp":
        kwargs["fsdp"] = True  # every setting is in fsdp_config (a string here is deprecated in v5)
        kwargs["fsdp_config"] = str(run_dir / FSDP_FILE)
        if config is not None and config.training.gradient_checkpointing:
            kwargs["activation_checkpointing"] = False
    else:
        kwargs["deepspeed"] = str(run_dir / DEEPSPEED_FILE)
    return kwargs


def write_launcher_files(world: World, config: Config, run_dir: str | Path, worker_args: Sequence[str] = (),
                         base_env: Mapping[str, str] | None = None) -> list[Path]:
    """Write ``launch.json`` (and ``fsdp.json`` or ``deepspeed.json``) into the run directory.

    ``launch.json`` holds the world, the argv, the variables we set and the names of those we removed
    — enough to see, and repeat by hand, exactly how the ranks were started.
    """
    import os

    from sft_tui.core.run.rundir import write_atomic

    run_dir = Path(run_dir)
    base = dict(os.environ) if base_env is None else dict(base_env)
    written: list[Path] = []
    files: dict[str, str] = {}
    if world.multi_process and world.strategy == "fsdp":
        written.append(_write_json(run_dir / FSDP_FILE, fsdp_config(config), write_atomic))
        files["fsdp_config"] = FSDP_FILE
    elif world.multi_process and world.strategy == "deepspeed":
        written.append(_write_json(run_dir / DEEPSPEED_FILE, deepspeed_config(config), write_atomic))
        files["deepspeed"] = DEEPSPEED_FILE
    record = {
        "launcher": "torchrun",
        "world": world.to_dict(),
        "argv": launch_command(world, run_dir, worker_args),
        "env": env_settings(world, base),
        "env_removed": cleared_names(base),
        "training_arguments": training_arguments_for(world, run_dir, config),
        "files": files,
    }
    written.append(_write_json(run_dir / launch_file(world.node_rank), record, write_atomic))
    return written


def launch_file(node_rank: int) -> str:
    """Node 0's plan is ``launch.json``; the other nodes of a shared run folder keep their own."""
    return LAUNCH_FILE if node_rank == 0 else f"launch-node-{node_rank}.json"


def _write_json(path: Path, data: dict[str, Any], write: Any) -> Path:
    write(path, json.dumps(data, indent=2) + "\n")
    return path


# --------------------------------------------------------------------------- commands for people


def _run_dir_for(config: Config, runs_dir: str | Path | None, name: str) -> Path:
    from sft_tui.core.paths import default_runs_dir

    return Path(runs_dir or config.output.runs_dir or default_runs_dir()).expanduser() / name


def _shown_env(world: World, picked_later: bool) -> str:
    env = env_settings(world, {})
    if picked_later and "CUDA_VISIBLE_DEVICES" in env:
        env["CUDA_VISIBLE_DEVICES"] = "<picked at start>"
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


def _per_node_text(world: World) -> str:
    if world.device == "cpu":
        return f"{world.nproc_per_node} CPU process{'es' if world.nproc_per_node != 1 else ''} (gloo)"
    return f"{world.nproc_per_node} GPU{'s' if world.nproc_per_node != 1 else ''}"


def _gpus_text(world: World, picked_later: bool) -> str:
    text = _per_node_text(world)
    if world.device == "cpu":
        return text
    if picked_later:
        return text + " (those with the most free memory when it starts)"
    return text + f" ({', '.join(map(str, world.gpu_indices))})"


def print_launch(config: Config, gpu_count: int | None, config_path: str = "CONFIG",
                 runs_dir: str | Path | None = None, run_name: str | None = None) -> str:
    """The command to run on each node, and the torchrun line each one starts, as text to copy.

    Every node gets the same config file and runs ``sft-tui train CONFIG --node-rank K``: the CLI
    overrides ``training.node_rank``, so one file serves all nodes. ``gpu_count`` is the GPUs per node
    (None: unknown, take the request as it is).
    """
    from sft_tui.core.run.rundir import _auto_name

    t = config.training
    name = run_name or config.output.run_name or _auto_name(config)
    run_dir = _run_dir_for(config, runs_dir, name)
    world = resolve_world(config, gpu_count)
    # 'auto' or a count below the GPUs there are: the supervisor picks the roomiest GPUs at start.
    picked_later = not isinstance(t.devices, list) and (gpu_count is None or gpu_count > world.nproc_per_node)
    total = world.world_size
    head = (f"# {world.nnodes} node{'s' if world.nnodes != 1 else ''} × {_gpus_text(world, picked_later)} = "
            f"{total} process{'es' if total != 1 else ''}, strategy {world.strategy}"
            + (f" (ZeRO stage {world.zero_stage})" if world.zero_stage else ""))
    lines = [head]
    # Every node must use the same run name; one node alone needs none.
    named = run_name or (world.multi_node and not config.output.run_name)
    name_flag = f" --name {shlex.quote(name)}" if named else ""
    if not world.multi_process:
        lines += ["# one process: no launcher is needed", f"sft-tui train {shlex.quote(config_path)}{name_flag}"]
        return "\n".join(lines) + "\n"
    if world.multi_node:
        lines += [f"# Rendezvous at {world.master_addr}:{world.master_port} (that port must be open on node 0).",
                  "# Give every node the same config file and run one command per node; start them within",
                  "# 10 minutes of each other. Keep output.runs_dir on storage all nodes share: each rank",
                  "# writes its part of a checkpoint there."]
    for node in range(world.nnodes):
        node_config = config.model_copy(deep=True)
        node_config.training.node_rank = node
        node_world = resolve_world(node_config, gpu_count)
        ranks = node_world.global_ranks
        role = f"master, {world.master_addr}" if world.multi_node and node == 0 else ""
        lines += ["", f"# node {node}" + (f" ({role})" if role else "")
                  + f": global ranks {ranks.start}-{ranks.stop - 1}"]
        rank_flag = f" --node-rank {node}" if world.multi_node else ""
        lines.append(f"sft-tui train {shlex.quote(config_path)}{name_flag}{rank_flag}")
        argv = launch_command(node_world, run_dir, [], python="python")
        lines += ["#   which starts, with " + _shown_env(node_world, picked_later) + ":", "#   " + shlex.join(argv)]
    return "\n".join(lines) + "\n"


def sbatch_script(config: Config, config_path: str, gpus_per_node: int | None = None,
                  time_limit: str = "24:00:00", cpus_per_task: int | None = None) -> str:
    """A SLURM batch script: one task per node, each running ``sft-tui train`` with its node number.

    Node 0's address comes from the job's node list and each node's number from ``$SLURM_NODEID``, so
    the config needs no ``master_addr``. The run is named after the job (same on every node, new for
    each submission) unless the config names it. Each node's ``sft-tui train`` starts the same
    torchrun line as a single-node run, so the worker's code path is the same.
    """
    probe = config.model_copy(deep=True)
    probe.training.node_rank = 0
    probe.training.master_addr = probe.training.master_addr or "$MASTER_ADDR"
    world = resolve_world(probe, gpus_per_node)
    cpus = cpus_per_task or 8 * world.nproc_per_node
    name = config.output.run_name
    job = name or "sft-tui"
    lines = [
        "#!/bin/bash",
        f"# Written by `sft-tui train {config_path} --sbatch`; submit with: sbatch THIS_FILE",
        f"# {world.nnodes} node{'s' if world.nnodes != 1 else ''} × {_per_node_text(world)} = "
        f"{world.world_size} processes, strategy {world.strategy}"
        + (f" (ZeRO stage {world.zero_stage})" if world.zero_stage else ""),
        f"#SBATCH --job-name={job}",
        f"#SBATCH --nodes={world.nnodes}",
        "#SBATCH --ntasks-per-node=1",
    ]
    if world.device == "cuda":
        lines.append(f"#SBATCH --gpus-per-node={world.nproc_per_node}")
    lines += [f"#SBATCH --cpus-per-task={cpus}", f"#SBATCH --time={time_limit}", "#SBATCH --output=%x-%j.out", "",
              "set -euo pipefail", "",
              "# Node 0 (first in the job's node list) hosts the rendezvous; every node can reach it.",
              'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)',
              "export MASTER_ADDR",
              'RUN_NAME="' + (name if name else '${SLURM_JOB_NAME}-${SLURM_JOB_ID}') + '"', "",
              f"# One task per node; each starts torchrun with {world.nproc_per_node} processes on its node.",
              "# --kill-on-bad-exit ends every node when one fails. sft-tui must be on PATH (sbatch passes",
              "# the submitting shell's environment); output.runs_dir must be on storage all nodes share.",
              "srun --kill-on-bad-exit=1 bash -c \\",
              ("  'exec sft-tui train \"$0\" --name \"$1\" --node-rank \"$SLURM_NODEID\" "
               "--master-addr \"$MASTER_ADDR\"' \\"),
              f"  {shlex.quote(config_path)} \"$RUN_NAME\""]
    return "\n".join(lines) + "\n"


def load_node_config(path: str | Path, env: Any = None, node_rank: int | None = None,
                     master_addr: str | None = None) -> Config:
    """Load a config file with this node's ``node_rank`` / ``master_addr`` put in before validation.

    Before, not after: a multi-node config without ``master_addr`` is invalid on its own, and on SLURM
    the address is only known when the job starts. Without overrides this is ``load_config``.
    """
    import yaml

    from sft_tui.core.config import load_config, parse_config

    if node_rank is None and master_addr is None:
        return load_config(path, env=env)
    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return load_config(path, env=env)  # it reports the problem in its own words
    if not isinstance(raw, dict) or not isinstance(raw.get("training", {}), dict):
        return load_config(path, env=env)
    training = dict(raw.get("training") or {})
    if node_rank is not None:
        training["node_rank"] = node_rank
    if master_addr is not None:
        training["master_addr"] = master_addr
    return parse_config({**raw, "training": training}, str(path), env)
