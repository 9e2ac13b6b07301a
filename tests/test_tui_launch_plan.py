"""The Training screen for more than one GPU or machine: the form's new fields, the per-GPU memory
line and the launch plan (the command for each node)."""

from __future__ import annotations

from sft_tui.app import SftApp
from sft_tui.core.config import Config
from sft_tui.core.setup.session import Session
from sft_tui.screens.dialogs import ReportScreen
from test_tui_setup import settle, setup_env, type_into  # noqa: F401  (fixture re-used)


async def test_devices_field_and_the_launch_plan_of_a_two_node_run(setup_env):
    config = Config.model_validate({"model": "demo", "data": "sample:reviews_alpaca.jsonl",
                                    "training": {"nodes": 2, "master_addr": "10.0.0.1", "devices": 2},
                                    "output": {"run_name": "two-nodes"}})
    app = SftApp(session=Session(config=config), start="training")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        screen = app.screen
        await type_into(pilot, "#f-training-devices", "0, 1")
        await settle(pilot)
        assert app.session.config.training.devices == [0, 1]
        await pilot.press("ctrl+l")
        await settle(pilot)
        assert isinstance(app.screen, ReportScreen)
        body = str(app.screen.query_one("#report-body").render())
        assert "# node 0 (master, 10.0.0.1)" in body and "# node 1" in body
        assert "--node-rank 1" in body and "--name two-nodes" not in body  # the config names the run
        await pilot.press("escape")
        await settle(pilot)
        assert app.screen is screen
        # a count the form reads as a count, and a typo the form refuses at the field
        await type_into(pilot, "#f-training-devices", "3")
        await settle(pilot)
        assert app.session.config.training.devices == 3
        await type_into(pilot, "#f-training-devices", "0, 0")
        await settle(pilot)
        assert "distinct" in str(screen.result.problems["training.devices"][0])


async def test_a_node_other_than_0_is_not_started_from_the_form(setup_env, tmp_path):
    from sft_tui.core.errors import UserError
    from sft_tui.core.run.launch import start_run

    config = Config.model_validate({"training": {"nodes": 2, "node_rank": 1, "master_addr": "10.0.0.1"}})
    try:
        start_run(config, runs_dir=tmp_path / "runs")
    except UserError as exc:
        assert "joins node 0's run" in exc.message and "--print-launch" in exc.hint
    else:
        raise AssertionError("node 1 started a run of its own")
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_memory_view_is_per_gpu_for_several_processes():
    from sft_tui.core.setup.presenters import memory_view
    from sft_tui.core.system.gpus import GpuSnapshot, GpuStats

    gib = 1 << 30
    gpus = GpuSnapshot(True, "", [GpuStats(index=i, name="NVIDIA H100", mem_used=0, mem_total=80 * gib,
                                           util_percent=0.0, temperature_c=30.0, power_w=60.0) for i in range(4)])
    from sft_tui.core.models.describe import describe_model
    from sft_tui.core.models.demo import demo_model_dir

    info = describe_model(demo_model_dir())
    one = memory_view(Config.model_validate({"method": {"type": "full"}}), info, gpus)
    four = memory_view(Config.model_validate({"method": {"type": "full"}, "training": {"devices": 4,
                                                                                       "strategy": "fsdp"}}), info, gpus)
    assert "per GPU" in four.headline and "per GPU" not in one.headline
    assert "4 processes (fsdp)" in four.lines[0]


async def test_the_model_screen_says_who_holds_each_gpu(setup_env):
    """On a shared server, choosing a model starts with who is using the GPUs now."""
    import os

    from sft_tui.core.system.gpus import GpuSnapshot, GpuStats
    from pilot_support import wait_for

    gib = 1 << 30

    class Sampler:
        def sample(self):
            return GpuSnapshot(True, "", [GpuStats(index=0, name="NVIDIA H100 80GB HBM3", mem_used=71 * gib,
                                                   mem_total=80 * gib, util_percent=97.0, temperature_c=70.0,
                                                   power_w=600.0, processes=[(os.getpid(), 71 * gib)])])

    app = SftApp(gpu_sampler=Sampler())
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        lines = app.screen.query_one("#memory-lines")
        assert await wait_for(pilot, lambda: "GPU0 H100 80GB HBM3: 9.0 GiB free of 80 GiB" in str(lines.render()),
                              timeout=20)
        shown = str(lines.render())
        import psutil

        me = psutil.Process().username()
        assert f"71 GiB {me} " in shown  # the holder's user and its command


async def test_the_save_button_saves_and_opens_no_launch_plan(setup_env, tmp_path):
    """A decorator once moved onto the launch plan's action: Save YAML opened the plan instead."""
    from sft_tui.widgets.filepicker import FilePicker

    config = Config.model_validate({"model": "demo", "data": "sample:reviews_alpaca.jsonl"})
    app = SftApp(session=Session(config=config), start="training")
    async with app.run_test(size=(120, 40)) as pilot:
        await settle(pilot)
        app.screen.query_one("#save").press()
        await pilot.pause(0.2)
        assert isinstance(app.screen, FilePicker)  # where to save it


def test_memory_view_of_a_multi_node_config_with_auto_devices():
    """nodes: 2 with devices: auto once passed "auto" on as a GPU count (a ValueError in the panel)."""
    from sft_tui.core.models.demo import demo_model_dir
    from sft_tui.core.models.describe import describe_model
    from sft_tui.core.setup.presenters import memory_view
    from sft_tui.core.system.gpus import GpuSnapshot, GpuStats

    gib = 1 << 30
    gpus = GpuSnapshot(True, "", [GpuStats(index=0, name="NVIDIA H100", mem_used=0, mem_total=80 * gib,
                                           util_percent=0.0, temperature_c=30.0, power_w=60.0)])
    config = Config.model_validate({"training": {"nodes": 2, "master_addr": "10.0.0.1"}})
    view = memory_view(config, describe_model(demo_model_dir()), gpus)
    assert "per GPU" in view.headline and "2 processes (ddp)" in view.lines[0]
