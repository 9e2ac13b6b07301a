"""Experiment trackers (``training.report_to``): TensorBoard, Weights & Biases, MLflow, Trackio.

The run directory stays the record of a run; a tracker is a second place the same metrics go. So
everything a tracker writes locally lands inside the run directory (``RUN/trackers/…``), the tracker
run is named after the run directory, and our own config goes along as a flat dict so a tracker's
run can be matched to its ``config.yaml``. The Trainer's own integration callbacks do the logging;
this module only says which ones, where, and under what names.

Where each one writes (only where the user has not set the variable already — a team's MLflow
server or W&B project wins):

- tensorboard: ``TENSORBOARD_LOGGING_DIR`` = RUN/trackers/tensorboard (transformers 5 reads this
  variable; ``TrainingArguments`` no longer has a ``logging_dir``);
- wandb: ``WANDB_DIR`` = RUN/trackers (wandb adds ``wandb/``), ``WANDB_PROJECT`` = sft-tui;
- mlflow: ``MLFLOW_TRACKING_URI`` = file:RUN/trackers/mlruns (with ``MLFLOW_ALLOW_FILE_STORE``, which
  MLflow 3 needs for a folder store), ``MLFLOW_EXPERIMENT_NAME`` = sft-tui;
- trackio: ``TRACKIO_DIR`` = RUN/trackers/trackio, project sft-tui, and no Space is deployed at the end
  (``trackio_static_space_id=False``): nothing leaves the machine unless the user asks for a Space.

Secrets: nothing here reads or writes a token. Tokens (``WANDB_API_KEY``, ``HF_TOKEN``,
``MLFLOW_TRACKING_TOKEN``…) stay in the environment, where the tracker libraries read them; the config
has no field for one, and the environment is never dumped into a file or an event.

Importing this module is cheap (pre-flight uses it on every check): transformers is imported only by
``config_callbacks`` when a run starts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sft_tui.core.config import Config

PROJECT = "sft-tui"
CONFIG_PREFIX = "sft_tui/"  # our config's keys in a tracker, apart from the Trainer's own arguments
MAX_PARAM_CHARS = 500  # MLflow refuses longer parameter values

# tracker → (modules any one of which makes it work, what to pip install)
PACKAGES: dict[str, tuple[tuple[str, ...], str]] = {
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "wandb": (("wandb",), "wandb"),
    "mlflow": (("mlflow",), "mlflow-skinny"),
    "trackio": (("trackio",), "trackio"),
}
EXTRA_FIX = "pip install 'sft-tui[trackers]'"


def trackers_dir(run_path: str | Path) -> Path:
    return Path(run_path) / "trackers"


def missing_packages(trackers: list[str]) -> list[tuple[str, str]]:
    """(tracker, package to install) for each chosen tracker whose library is not importable."""
    missing = []
    for name in trackers:
        modules, package = PACKAGES.get(name, ((name,), name))
        if not any(_importable(module) for module in modules):
            missing.append((name, package))
    return missing


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a half-uninstalled package: as good as missing
        return False


def missing_fix(missing: list[tuple[str, str]]) -> str:
    """The one command that installs what is missing (the extra installs all four)."""
    packages = " ".join(package for _, package in missing)
    return f"pip install {packages} (or all trackers: {EXTRA_FIX}), or remove them from training.report_to"


@dataclass
class TrackerSetup:
    """What the Trainer needs for the chosen trackers: its arguments and the environment to set."""

    report_to: list[str]
    run_name: str
    env: dict[str, str] = field(default_factory=dict)  # only variables the user has not set

    def apply(self, environ: MutableMapping[str, str] | None = None) -> None:
        """Set the tracker variables in this (the worker's) process, never overwriting the user's."""
        environ = os.environ if environ is None else environ
        for key, value in self.env.items():
            if not environ.get(key):  # unset or empty, as ``tracker_setup`` judged it
                environ[key] = value
        for key in ("TENSORBOARD_LOGGING_DIR", "WANDB_DIR", "TRACKIO_DIR"):
            if key in self.env and environ.get(key) == self.env[key]:
                Path(self.env[key]).mkdir(parents=True, exist_ok=True)

    def trainer_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``TrainingArguments``."""
        args: dict[str, Any] = {"report_to": self.report_to or "none", "run_name": self.run_name}
        if "trackio" in self.report_to:
            args.update(project=PROJECT, trackio_static_space_id=False)
        return args


def tracker_setup(config: Config, run_path: str | Path, environ: Mapping[str, str] | None = None) -> TrackerSetup:
    """The trackers of ``config`` for the run at ``run_path``; ``environ`` is what the user has set."""
    environ = os.environ if environ is None else environ
    chosen = config.training.trackers()
    run_path = Path(run_path)
    root = trackers_dir(run_path)
    wanted: dict[str, str] = {}
    if "tensorboard" in chosen:
        wanted["TENSORBOARD_LOGGING_DIR"] = str(root / "tensorboard")
    if "wandb" in chosen:
        wanted["WANDB_DIR"] = str(root)
        wanted["WANDB_PROJECT"] = PROJECT
    if "mlflow" in chosen:
        wanted["MLFLOW_EXPERIMENT_NAME"] = PROJECT
        if not environ.get("MLFLOW_TRACKING_URI"):
            wanted["MLFLOW_TRACKING_URI"] = (root / "mlruns").resolve().as_uri()
            # MLflow 3 refuses a file store unless asked (its database store needs SQLAlchemy, which
            # mlflow-skinny lacks); a folder in the run directory is exactly what we want here.
            wanted["MLFLOW_ALLOW_FILE_STORE"] = "true"
    if "trackio" in chosen:
        wanted["TRACKIO_DIR"] = str(root / "trackio")
    env = {key: value for key, value in wanted.items() if not environ.get(key)}
    return TrackerSetup(report_to=chosen, run_name=run_path.name, env=env)


def flat_config(config: Config) -> dict[str, Any]:
    """Our config as one flat dict (``training.learning_rate`` → 0.001), keys prefixed for the tracker."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), item)
            if not value:
                out[CONFIG_PREFIX + prefix] = None  # an empty mapping (no column renames): nothing set
        else:
            out[CONFIG_PREFIX + prefix] = value

    walk("", config.model_dump(mode="json"))
    return out


def config_callbacks(config: Config, writer: Any) -> list:
    """A callback that hands our config to W&B and MLflow once their runs exist (after the Trainer's own
    integration callbacks, which come first, have started them); none when neither is chosen."""
    chosen = set(config.training.trackers()) & {"wandb", "mlflow"}
    if not chosen:
        return []
    from transformers import TrainerCallback

    params = flat_config(config)

    class SendConfig(TrainerCallback):
        """On train begin, our config into the tracker runs; a failure is a warning, never a failed run."""

        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            for name in sorted(chosen):
                try:
                    send_config(name, params)
                except Exception as exc:  # noqa: BLE001 - a tracker hiccup must not end the training
                    writer.write("log", level="warning",
                                 msg=f"{name}: could not record the sft-tui config ({type(exc).__name__}: {exc})")

    return [SendConfig()]


def send_config(name: str, params: dict[str, Any]) -> None:
    """Record ``params`` in the running ``name`` tracker run (wandb config, MLflow parameters)."""
    if name == "wandb":
        import wandb

        if wandb.run is not None:
            wandb.run.config.update(params, allow_val_change=True)
    elif name == "mlflow":
        import mlflow

        if mlflow.active_run() is not None:
            values = {key: "None" if value is None else str(value)[:MAX_PARAM_CHARS] for key, value in params.items()}
            items = list(values.items())
            for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters a call
                mlflow.log_params(dict(items[start:start + 100]))
