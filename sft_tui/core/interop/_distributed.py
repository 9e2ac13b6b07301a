"""Where a run runs and who hears about it, to and from the peers: experiment trackers
(``training.report_to``) and several processes (``training.devices``, ``strategy``, ``zero_stage``,
``nodes``).

Import reads the peers' tracker switches, a DeepSpeed JSON (inline or beside the imported file) and
FSDP settings; export writes the peer's keys and the command that starts it on the same GPUs.

Sources, checked for every key and command below:

- transformers 5 ``training_args.py`` (installed): ``report_to`` (``"all"``, ``"none"`` or names),
  ``deepspeed`` (a JSON path or a dict), ``fsdp`` (``True`` or the legacy option string
  ``full_shard auto_wrap offload …``), ``fsdp_config`` (a JSON path or a dict; keys with an ``fsdp_``
  prefix are read without it: ``version``, ``reshard_after_forward``, ``cpu_offload``,
  ``activation_checkpointing``, ``cpu_ram_efficient_loading``, ``state_dict_type``,
  ``auto_wrap_policy``, ``transformer_layer_cls_to_wrap``, ``min_num_params``, FSDP1's
  ``backward_prefetch`` …), ``project`` (Trackio's project); the tracker variables
  ``WANDB_PROJECT``/``WANDB_LOG_MODEL``/``WANDB_WATCH``, ``MLFLOW_TRACKING_URI``/
  ``MLFLOW_EXPERIMENT_NAME``/``HF_MLFLOW_LOG_ARTIFACTS`` in ``integrations/integration_utils.py``.
- Axolotl ``src/axolotl/utils/schemas/integrations.py`` (``use_wandb``, ``wandb_*``, ``use_mlflow``,
  ``mlflow_*``, ``use_comet``, ``comet_*``), ``TrackioConfig`` (``use_trackio``,
  ``trackio_project_name``…), ``config.py`` (``use_tensorboard``, ``deepspeed: str | dict``,
  ``fsdp`` (deprecated list), ``fsdp_config``, ``fsdp_version``), ``schemas/fsdp.py`` (FSDPConfig:
  ``offload_params``, ``cpu_ram_efficient_loading``, ``state_dict_type``, ``auto_wrap_policy``,
  ``transformer_layer_cls_to_wrap``, ``reshard_after_forward``, ``activation_checkpointing``…),
  ``utils/wandb_.py`` / ``mlflow_.py`` / ``trackio_.py`` (a project or experiment name turns the
  tracker on; each ``wandb_*`` value goes to the ``WANDB_*`` variable), ``core/builders/base.py``
  (``report_to`` from the ``use_*`` switches), ``schemas/validation.py`` (FSDP2 refuses
  ``adamw_8bit``), ``docs/multi-gpu.qmd`` and ``docs/cli.qmd`` (``axolotl train config.yml
  --launcher torchrun -- --nproc_per_node=2 --nnodes=1``).
- LLaMA-Factory ``examples/README.md`` (it uses every visible GPU; ``FORCE_TORCHRUN=1 NNODES=2
  NODE_RANK=0 MASTER_ADDR=… MASTER_PORT=29500 llamafactory-cli train …``), the example YAMLs
  (``deepspeed: examples/deepspeed/ds_z3_config.json``, ``report_to: none  # choices: [none, wandb,
  tensorboard, swanlab, mlflow]``) and ``examples/ascend/qwen3_lora_sft_fsdp.yaml`` (FSDP is started
  with ``accelerate launch --config_file examples/accelerate/fsdp_config.yaml src/train.py FILE``).
- torchrun (``python -m torch.distributed.run --help``, installed): ``--nproc_per_node``,
  ``--nnodes``, ``--node_rank``, ``--master_addr``, ``--master_port``.
- sft-tui itself: ``core/train/launcher.py`` (the FSDP2 settings and ZeRO file it writes into a run,
  one process unless ``devices`` asks for more) and ``core/train/trackers.py`` (files in the run
  folder, project ``sft-tui``, the user's ``WANDB_PROJECT``/``MLFLOW_*`` variables win).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sft_tui.core.config import Config

from ._common import REASONS, Builder, Skip, as_bool

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
TRACKER_LIST = "tensorboard, wandb, mlflow, trackio"
PROJECT = "sft-tui"  # the project sft-tui's runs log to (core/train/trackers.py)
NOT_TRACKER = f"not one of sft-tui's trackers ({TRACKER_LIST})"
RUN_NAME = REASONS["run_name"]
DEEPSPEED_WITH_FSDP = "deepspeed is set too and a run uses one of them; sft-tui keeps deepspeed"
OFFLOAD = "sft-tui's {what} keeps {thing} on the GPUs (no CPU offload){instead}"
ZERO_INSTEAD = "; a higher training.zero_stage or more GPUs save memory instead"
FSDP_OFFLOAD = OFFLOAD.format(what="FSDP", thing="weights", instead="; more GPUs save memory instead")
FSDP1_ONLY = "an FSDP1 setting with no FSDP2 counterpart (sft-tui shards with FSDP2)"
FULL_STATE = "sft-tui saves full state dicts gathered on rank 0, so checkpoints load without FSDP"


def env_reason(name: str, value: Any) -> str:
    return f"set {name}={value} in the environment; sft-tui does not store it"


# =========================================================================== import: trackers


def report_to_names(b: Builder, key: str) -> tuple[list[str], bool] | None:
    """(sft-tui trackers named by the ``report_to``-style value at ``key``, whether other names were
    there); None when the key is absent or its value is unusable (then it is reported)."""
    value = b.take(key)
    if value is None:
        return None
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            b.skip(key, value, f"expected tracker names ({TRACKER_LIST}) or none, got {item!r}")
            return None
        names += [part.strip().lower() for part in item.split(",") if part.strip()]
    if "all" in names:
        b.skip(key, value, "'all' means every tracker installed where it runs; sft-tui names its trackers: "
               f"set training.report_to to some of {TRACKER_LIST}")
        return None
    names = [n for n in names if n != "none"]
    other = [n for n in names if n not in TRACKERS]
    if other:
        b.skip(key, other[0] if len(other) == 1 else other, NOT_TRACKER)
    return list(dict.fromkeys(n for n in names if n in TRACKERS)), bool(other)


def set_trackers(b: Builder, names: list[str], keys: list[str], record: Any = None) -> None:
    b.set("training.report_to", list(names) if names else "none", ", ".join(keys), record=record)
    b.used.update(keys)


def map_report_to(b: Builder, key: str) -> None:
    """A Hugging Face ``report_to`` (LLaMA-Factory's YAML, a TRL script's SFTConfig)."""
    record = b.raw.get(key)
    got = report_to_names(b, key)
    if got is not None and (got[0] or not got[1]):
        set_trackers(b, got[0], [key], record=record)


def map_trackio_project(b: Builder, key: str) -> None:
    """TrainingArguments' ``project`` (only Trackio reads it)."""
    value = b.take(key)
    if value is not None and value not in (PROJECT, "huggingface"):
        b.skip(key, value, f"sft-tui logs Trackio runs to the project {PROJECT}")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


# tracker, its Axolotl switch, the Axolotl key naming its project (which turns it on too)
AXOLOTL_SWITCHES = (("wandb", "use_wandb", "wandb_project"), ("mlflow", "use_mlflow", "mlflow_experiment_name"),
                    ("tensorboard", "use_tensorboard", None), ("trackio", "use_trackio", "trackio_project_name"))


def axolotl_trackers(b: Builder) -> None:
    """Axolotl's tracker switches: ``use_*`` and the project names that turn a tracker on."""
    raw = b.raw
    order = {key: i for i, key in enumerate(raw)}
    first: dict[str, int] = {}  # tracker -> where in the file it is first turned on (the order it is listed in)
    keys: list[str] = []

    def turn_on(name: str, key: str) -> None:
        first[name] = min(first.get(name, len(order)), order.get(key, len(order)))
        keys.append(key)
        b.used.add(key)

    for name, switch, project in AXOLOTL_SWITCHES:
        on = raw.get(switch)
        if on is not None:
            try:
                on = as_bool(on)
            except Skip as why:
                b.skip(switch, on, str(why))
                on = False
            b.used.add(switch)
        named = _text(raw.get(project)) if project else None
        if name == "wandb" and str(raw.get("wandb_mode", "")).lower() == "disabled":
            if on or named:
                b.note("wandb_mode disabled turns W&B off, so training.report_to leaves wandb out")
            b.used.update({switch, "wandb_mode"} | ({project} if named else set()))
            continue
        if on:
            turn_on(name, switch)
        if named:
            turn_on(name, project)  # Axolotl turns the tracker on when its project is named
            if named != PROJECT:
                if name == "wandb":
                    b.note(f"wandb_project {named!r}: {env_reason('WANDB_PROJECT', named)}")
                elif name == "mlflow":
                    b.note(f"mlflow_experiment_name {named!r}: {env_reason('MLFLOW_EXPERIMENT_NAME', named)}")
                else:
                    b.note(f"trackio_project_name {named!r}: sft-tui logs Trackio runs to the project {PROJECT}")
        elif project:
            b.used.add(project)
    got = report_to_names(b, "report_to")  # not an Axolotl key, but a TrainingArguments name people try
    if got is not None:
        for name in got[0]:
            turn_on(name, "report_to")
    for key in list(raw):
        value = raw[key]
        if value is None or key in b.used or not isinstance(key, str):  # `123:` is no tracker setting
            continue
        if key in ("wandb_name", "mlflow_run_name", "trackio_run_name"):
            b.skip(key, value, RUN_NAME)
        elif key.startswith("wandb_") and isinstance(value, str):
            b.skip(key, value, env_reason(key.upper(), value))
        elif key == "mlflow_tracking_uri":
            b.skip(key, value, env_reason("MLFLOW_TRACKING_URI", value)
                   + " (without it, sft-tui keeps MLflow runs in the run folder)")
        elif key == "hf_mlflow_log_artifacts":
            b.skip(key, value, env_reason("HF_MLFLOW_LOG_ARTIFACTS", value))
        elif key == "trackio_space_id":
            b.skip(key, value, "sft-tui logs Trackio runs locally, in the run folder (no Space)")
    other_trackers(b)
    if keys:
        set_trackers(b, sorted(first, key=lambda name: first[name]),
                     sorted(dict.fromkeys(keys), key=lambda key: order.get(key, len(order))))
    elif any(raw.get(switch) is False for _, switch, _ in AXOLOTL_SWITCHES):
        set_trackers(b, [], [switch for _, switch, _ in AXOLOTL_SWITCHES if raw.get(switch) is False])


def other_trackers(b: Builder) -> None:
    """Comet (Axolotl's ``use_comet``, ``comet_*``) and SwanLab (``use_swanlab``, ``swanlab_*`` in Axolotl's
    plugin and LLaMA-Factory's finetuning arguments): switched off they say nothing; otherwise no equivalent."""
    for key, value in b.raw.items():
        if value is None or key in b.used or not isinstance(key, str):
            continue
        if key in ("use_comet", "use_swanlab") and value is False:
            b.used.add(key)
        elif key.startswith(("comet_", "swanlab_")) or key in ("use_comet", "use_swanlab"):
            b.skip(key, value, f"{'Comet' if 'comet' in key else 'SwanLab'} is {NOT_TRACKER}")


# =========================================================================== import: DeepSpeed


def _json_file(b: Builder, key: str, value: str, base_dir: Path | None, what: str) -> dict | None:
    """The JSON file a peer names (absolute, or relative to the imported file's folder); None with a note
    when it cannot be read."""
    path = Path(value).expanduser()
    found = path if path.is_absolute() else (base_dir / path if base_dir is not None else None)
    if found is None or not found.is_file():
        where = "" if path.is_absolute() else (" beside the imported config" if base_dir is not None else "")
        b.note(f"{key}: {value} was not found{where}, so {what}")
        return None
    try:
        data = json.loads(found.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        b.note(f"{key}: {value} could not be read ({exc}), so {what}")
        return None
    if not isinstance(data, dict):
        b.note(f"{key}: {value} is not a JSON object, so {what}")
        return None
    return data


def map_deepspeed(b: Builder, key: str, base_dir: Path | None) -> None:
    """``deepspeed: PATH | {...}`` -> training.strategy deepspeed, zero_stage from zero_optimization.stage."""
    from sft_tui.core.config import TrainingConfig

    value = b.take(key)
    if value is None or value is False or value == "":
        return
    default = TrainingConfig().zero_stage
    unread = (f"its ZeRO stage was not read: training.zero_stage keeps sft-tui's default {default}; set it to the "
              "file's zero_optimization.stage")
    if isinstance(value, dict):
        ds: dict | None = value
    elif isinstance(value, str):
        ds = _json_file(b, key, value, base_dir, unread)
    else:
        b.skip(key, value, "expected the path of a DeepSpeed JSON file, or its settings as a mapping")
        return
    if ds is None:
        b.set("training.strategy", "deepspeed", key, record=value)
        return
    zero = ds.get("zero_optimization") if isinstance(ds.get("zero_optimization"), dict) else {}
    stage = zero.get("stage", 0)  # DeepSpeed's own default: no ZeRO sharding
    if stage == 0:
        b.set("training.strategy", "ddp", key, record=value)
        b.note(f"{key}: ZeRO stage 0 shards nothing (plain data parallelism), so it is imported as "
               "training.strategy ddp")
    elif stage in (1, 2, 3) and not isinstance(stage, bool):
        if b.set("training.strategy", "deepspeed", key, record=value):
            b.set("training.zero_stage", stage, key, record=value)
    else:
        b.set("training.strategy", "deepspeed", key, record=value)
        b.skip(f"{key}: zero_optimization.stage", stage, "ZeRO stages are 0, 1, 2 and 3")
    for part, thing in (("offload_optimizer", "optimizer states"), ("offload_param", "weights")):
        setting = zero.get(part)
        device = setting.get("device") if isinstance(setting, dict) else setting
        if device not in (None, "none", False):
            b.skip(f"{key}: zero_optimization.{part}", setting,
                   OFFLOAD.format(what="ZeRO config", thing=thing, instead=ZERO_INSTEAD))
    for section, ours in (("optimizer", "training.optimizer"), ("scheduler", "training.scheduler")):
        if section in ds:
            b.skip(f"{key}: {section}", ds[section], f"DeepSpeed's own {section}; sft-tui's ZeRO config has none, so "
                   f"the Trainer builds {ours}")
    _deepspeed_rest(b, key, ds, zero, stage)


def _deepspeed_rest(b: Builder, key: str, ds: dict, zero: dict, stage: Any) -> None:
    """A note naming the settings of the peer's ZeRO file that sft-tui's own file does not have."""
    from sft_tui.core.train.launcher import DEEPSPEED_FILE, deepspeed_config

    ours = deepspeed_config(Config.model_validate({"training": {"zero_stage": stage if stage in (1, 2, 3) else 2}}))
    handled = {"optimizer", "scheduler", "zero_optimization"}
    extra = sorted(set(ds) - set(ours) - handled)
    extra += sorted(f"zero_optimization.{k}" for k in set(zero) - set(ours["zero_optimization"])
                    - {"stage", "offload_optimizer", "offload_param"})
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        b.note(f"{key}: {shown} not read: sft-tui writes its own ZeRO config into each run folder ({DEEPSPEED_FILE}), "
               "with sizes 'auto' so transformers fills them from the training settings")


# =========================================================================== import: FSDP

# fsdp_config key (without its fsdp_ prefix) -> (the value sft-tui's FSDP2 uses, why another does not carry)
FSDP_SAME: dict[str, tuple[Any, str]] = {
    "offload_params": (False, FSDP_OFFLOAD),
    "cpu_offload": (False, FSDP_OFFLOAD),
    "cpu_ram_efficient_loading": (False, "sft-tui loads the whole model in every process (no rank-0-only loading)"),
    "state_dict_type": ("FULL_STATE_DICT", FULL_STATE),
    "final_state_dict_type": ("FULL_STATE_DICT", FULL_STATE),
    "auto_wrap_policy": ("TRANSFORMER_BASED_WRAP", "sft-tui shards each decoder block (TRANSFORMER_BASED_WRAP)"),
    "reshard_after_forward": (True, "sft-tui's FSDP frees the gathered weights after the forward pass"),
    "sharding_strategy": ("FULL_SHARD", "sft-tui's FSDP shards weights, gradients and optimizer states"),
    "xla": (False, "XLA FSDP (TPUs); sft-tui trains on GPUs"),
    "min_num_params": (0, "used by SIZE_BASED_WRAP; sft-tui shards each decoder block"),
}
FSDP1_KEYS = {"backward_prefetch", "backward_prefetch_policy", "forward_prefetch", "use_orig_params",
              "sync_module_states", "limit_all_gathers", "activation_checkpointing_reentrant"}
# the legacy option words (transformers FSDPOption) that mean what sft-tui does
FSDP_OPTIONS_SAME = {"full_shard", "auto_wrap"}


def _same(value: Any, ours: Any) -> bool:
    if isinstance(ours, bool):
        return str(value).strip().lower() == str(ours).lower()
    if isinstance(ours, str):
        return str(value).strip().upper() == ours
    return value == ours


def _fsdp_settings(b: Builder, settings: dict, prefix: str, version: Any) -> None:
    """Check each FSDP setting against the FSDP2 sft-tui runs; what differs is reported by name."""
    for raw_name, value in settings.items():
        if not isinstance(raw_name, str):
            b.skip(f"{prefix}.{raw_name}", value, "not a setting name")
            continue
        name = raw_name.removeprefix("fsdp_")
        key = f"{prefix}.{raw_name}"
        if value is None:
            continue
        if name == "version":
            version = value
        elif name == "activation_checkpointing":
            try:
                if as_bool(value):
                    b.set("training.gradient_checkpointing", True, key)
            except Skip as why:
                b.skip(key, value, str(why))
        elif name == "transformer_layer_cls_to_wrap":
            b.note(f"{key} {value!r}: sft-tui takes the block class to shard from the model (its _no_split_modules)")
        elif name in FSDP_SAME:
            ours, why = FSDP_SAME[name]
            if not _same(value, ours):
                b.skip(key, value, why)
        elif name in FSDP1_KEYS:
            b.skip(key, value, FSDP1_ONLY)
        else:
            b.skip(key, value)
    if str(version) != "2":
        b.note(f"{prefix}: FSDP version {version if version is not None else 1} settings are read as FSDP2, which "
               "sft-tui uses")


def _fsdp_options(b: Builder, key: str, value: Any) -> bool:
    """The legacy option words (``full_shard auto_wrap offload`` or a list); False if not FSDP at all."""
    if value is True:
        return True
    if isinstance(value, str):
        words = value.split()
    elif isinstance(value, (list, tuple)):
        words = [str(w) for w in value]
    else:
        b.skip(key, value, "expected true, or FSDP options such as full_shard auto_wrap")
        return False
    words = [w.strip().lower() for w in words if w.strip()]
    if not words:
        return False
    for word in words:
        if word == "offload":
            b.skip(f"{key}: offload", value, FSDP_OFFLOAD)
        elif word == "shard_grad_op":
            b.skip(f"{key}: shard_grad_op", value, FSDP_SAME["reshard_after_forward"][1])
        elif word not in FSDP_OPTIONS_SAME:
            b.skip(f"{key}: {word}", value, "an FSDP1 sharding option; sft-tui shards every weight across all "
                   "processes with FSDP2")
    return True


def map_hf_fsdp(b: Builder, fsdp_key: str, config_key: str, base_dir: Path | None) -> None:
    """TrainingArguments' ``fsdp`` and ``fsdp_config`` (LLaMA-Factory's YAML, a TRL script)."""
    fsdp, cfg = b.take(fsdp_key), b.take(config_key)
    if fsdp is None or fsdp is False or fsdp == "" or fsdp == []:
        if cfg is not None:
            b.skip(config_key, cfg, f"{fsdp_key} is not set, so this turns nothing on")
        return
    if "training.strategy" in b.values:  # from deepspeed, read first
        b.skip(fsdp_key, fsdp, DEEPSPEED_WITH_FSDP)
        if cfg is not None:
            b.skip(config_key, cfg, DEEPSPEED_WITH_FSDP)
        return
    if not _fsdp_options(b, fsdp_key, fsdp):
        return
    settings: dict | None = {}
    if isinstance(cfg, dict):
        settings = cfg
    elif isinstance(cfg, str):
        settings = _json_file(b, config_key, cfg, base_dir, "its settings were not read: sft-tui's own FSDP2 "
                              "settings apply")
    elif cfg is not None:
        b.skip(config_key, cfg, "expected the path of a JSON file, or the settings as a mapping")
    _fsdp_settings(b, settings or {}, config_key, (settings or {}).get("version", 2))
    b.set("training.strategy", "fsdp", fsdp_key, record=fsdp)


def axolotl_fsdp(b: Builder) -> None:
    """Axolotl's ``fsdp_config`` + ``fsdp_version`` (and the deprecated ``fsdp`` option list)."""
    cfg, legacy, version = b.take("fsdp_config"), b.take("fsdp"), b.take("fsdp_version")
    if not cfg and not legacy:
        if version is not None:
            b.skip("fsdp_version", version, "fsdp_config is not set, so this turns nothing on")
        return
    if "training.strategy" in b.values:  # from deepspeed, read first
        for key, value in (("fsdp_config", cfg), ("fsdp", legacy), ("fsdp_version", version)):
            if value:
                b.skip(key, value, DEEPSPEED_WITH_FSDP)
        return
    if legacy and not _fsdp_options(b, "fsdp", legacy) and not cfg:
        return
    settings = dict(cfg) if isinstance(cfg, dict) else {}
    if cfg and not isinstance(cfg, dict):
        b.skip("fsdp_config", cfg, "expected a mapping of FSDP settings")
    inner = settings.pop("fsdp_version", settings.pop("version", None))
    version = version if version is not None else inner
    _fsdp_settings(b, settings, "fsdp_config", version)  # Axolotl without fsdp_version: FSDP1
    b.set("training.strategy", "fsdp", "fsdp_config" if cfg else "fsdp", record=cfg or legacy)
    b.used.add("fsdp_version")


# =========================================================================== export


def processes(config: Config) -> tuple[int, str | None]:
    """(processes per node, the CUDA_VISIBLE_DEVICES value a list of GPUs means)."""
    devices = config.training.devices
    if isinstance(devices, list):
        return len(devices), ",".join(str(i) for i in devices)
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices, None
    return 1, None


def multi_process(config: Config) -> bool:
    per_node, _ = processes(config)
    return per_node > 1 or config.training.nodes > 1


def train_command(config: Config, tool: str, lost: list[str]) -> str:
    """The command that starts ``tool`` on the GPUs sft-tui would use (appending what differs to ``lost``).

    ``tool`` is axolotl, llamafactory or trl; the file is FILE (THIS_FILE for the TRL script)."""
    t = config.training
    per_node, visible = processes(config)
    many = per_node > 1 or t.nodes > 1
    devices = t.devices
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 1:
        if tool == "llamafactory":
            visible = ",".join(str(i) for i in range(devices))
        lost.append(f"training.devices {devices}: sft-tui takes the {devices} GPUs with the most free memory; the "
                    f"command uses the first {devices} visible ones (set CUDA_VISIBLE_DEVICES to choose)")
    if tool == "llamafactory" and per_node == 1 and visible is None:
        lost.append(f"training.devices {devices}: sft-tui trains on the one GPU with the most free memory; "
                    "LLaMA-Factory uses every visible GPU, so set CUDA_VISIBLE_DEVICES (e.g. CUDA_VISIBLE_DEVICES=0) "
                    "to train on one")
    env = f"CUDA_VISIBLE_DEVICES={visible} " if visible else ""
    nodes = (f" --nnodes={t.nodes} --node_rank=RANK --master_addr={t.master_addr} --master_port={t.master_port}"
             if t.nodes > 1 else "")
    if tool == "axolotl":
        cmd = f"{env}axolotl train FILE"
        if many:
            cmd += f" --launcher torchrun -- --nproc_per_node={per_node}{nodes}"
    elif tool == "llamafactory":
        if t.nodes > 1:
            env += (f"FORCE_TORCHRUN=1 NNODES={t.nodes} NODE_RANK=RANK MASTER_ADDR={t.master_addr} "
                    f"MASTER_PORT={t.master_port} ")
        elif many:
            env += "FORCE_TORCHRUN=1 "
        cmd = f"{env}llamafactory-cli train FILE"
    else:
        cmd = f"{env}torchrun --nproc_per_node={per_node}{nodes} THIS_FILE" if many else f"{env}python THIS_FILE"
    if t.nodes > 1:
        others = "1 on the other" if t.nodes == 2 else f"1 to {t.nodes - 1} on the others"
        cmd += (f" (on each of the {t.nodes} nodes, RANK 0 on {t.master_addr} and {others}"
                + (f"; {per_node} GPUs each" if not visible else "") + ")")
    if not many and t.strategy in ("fsdp", "deepspeed"):
        lost.append(f"training.strategy {t.strategy}: sft-tui shards only across several processes, and "
                    f"training.devices {devices} starts one, so it is not written")
    return cmd


def runtime_lost(config: Config, tool: str) -> list[str]:
    """sft-tui's own run-time settings that no peer has."""
    from sft_tui.core.config import TrainingConfig

    t, d = config.training, TrainingConfig()
    lost = []
    if t.wait_for_gpu:
        lost.append(f"training.wait_for_gpu: sft-tui queues the run until its GPUs have free memory; {tool} starts "
                    "at once")
    if (t.stall_factor, t.stall_min_s) != (d.stall_factor, d.stall_min_s):
        lost.append(f"training.stall_factor/stall_min_s: {tool} has no stall watch")
    return lost


def tracker_lost(config: Config, tool: str) -> list[str]:
    chosen = config.training.trackers()
    if not chosen:
        return []
    line = ("training.report_to: sft-tui keeps the trackers' local files inside the run folder (trackers/); "
            f"{tool} leaves them where each tracker puts them")
    envs = [f"{var}={PROJECT}" for name, var in (("wandb", "WANDB_PROJECT"), ("mlflow", "MLFLOW_EXPERIMENT_NAME"))
            if name in chosen]
    if envs and tool != "Axolotl":
        line += f"; set {' and '.join(envs)} to log to sft-tui's project"
    return [line]


def axolotl_trackers_out(config: Config) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in config.training.trackers():
        out[f"use_{name}"] = True
        project = {"wandb": "wandb_project", "mlflow": "mlflow_experiment_name",
                   "trackio": "trackio_project_name"}.get(name)
        if project:
            out[project] = PROJECT
    return out


def report_to_out(config: Config) -> list[str] | str:
    return config.training.trackers() or "none"


def deepspeed_name(config: Config) -> str:
    """The file an export writes the ZeRO config to, beside the exported config."""
    return f"ds_zero{config.training.zero_stage}.json"


def deepspeed_json(config: Config) -> dict[str, Any]:
    from sft_tui.core.train.launcher import deepspeed_config

    return deepspeed_config(config)


def deepspeed_header(config: Config, path: str) -> str:
    """Header lines holding the ZeRO config for a text export (``export_files`` writes the file)."""
    text = json.dumps(deepspeed_json(config), indent=2)
    return (f"# The DeepSpeed ZeRO config, {path} (`-o FILE` writes it beside FILE; a relative path is read from "
            "the folder training starts in):\n" + "".join(f"#   {line}\n" for line in text.splitlines()))


def deepspeed_out(config: Config, out: dict[str, Any], path: str | None) -> str:
    """Point a YAML export's ``deepspeed`` key at the ZeRO file (``path`` when the export writes it,
    else the name it would have) and return the header lines that hold it when no file is written."""
    if not uses(config, "deepspeed"):
        return ""
    out["deepspeed"] = path or deepspeed_name(config)
    return "" if path else deepspeed_header(config, out["deepspeed"])


def fsdp_settings(config: Config) -> dict[str, Any]:
    """sft-tui's FSDP2 settings (core/train/launcher.py) as transformers' fsdp_config."""
    from sft_tui.core.train.launcher import fsdp_config

    return fsdp_config(config)


def uses(config: Config, strategy: str) -> bool:
    """Whether the export writes ``strategy`` (sft-tui shards only with several processes)."""
    return config.training.strategy == strategy and multi_process(config)


__all__ = ["axolotl_fsdp", "axolotl_trackers", "axolotl_trackers_out", "deepspeed_header", "deepspeed_json",
           "deepspeed_name", "deepspeed_out", "fsdp_settings", "map_deepspeed", "map_hf_fsdp", "map_report_to",
           "map_trackio_project", "other_trackers", "report_to_out", "runtime_lost", "tracker_lost",
           "train_command", "uses"]
