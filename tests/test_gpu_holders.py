"""Shared GPU servers: who holds each GPU, throttling and clocks, energy, the fake NVML file,
``sft-tui gpus`` and the gauges' holder lines. No real GPU: NVML is the fake file module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import psutil
import pytest

from sft_tui.core.run.rundir import RunStatus, fold_event, write_pid, RunDir
from sft_tui.core.system import gpus as gpus_mod
from sft_tui.core.system.energy import EnergyMeter, energy_line, format_kwh, visible_gpu_indices
from sft_tui.core.system.fakegpu import GIB, FakeNvml, fake_gpu, write_fake_gpus
from sft_tui.core.system.gpus import GpuSampler, GpuSnapshot, GpuStats, decode_throttle, throttle_words
from sft_tui.core.system.holders import Holder, holders, short_command, worker_pids


@pytest.fixture(autouse=True)
def _fresh_nvml_state():
    yield
    GpuSampler.shutdown_all()
    gpus_mod._fakes.clear()


def free_pid() -> int:
    """A pid no process has now (what NVML reports for a process in another pid namespace)."""
    pid = 4_000_000
    while psutil.pid_exists(pid):
        pid -= 1
    return pid


def fake_run(runs: Path, name: str, pid: int) -> RunDir:
    """The least a runs dir needs for a run to be listed, with ``pid`` as its worker."""
    folder = runs / name
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text("{}\n")
    run = RunDir(folder)
    write_pid(run, pid)
    return run


@pytest.fixture
def worker(tmp_path):
    """A real 'worker' process with a child of its own (as a trainer's data loader or a rank would be)."""
    code = ("import subprocess, sys, time\n"
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    yield proc.pid, child
    for pid in (child, proc.pid):
        try:
            psutil.Process(pid).kill()
        except psutil.Error:
            pass
    proc.wait(timeout=10)


# ---------------------------------------------------------------- throttle reasons and clocks


def test_throttle_bits_decode_to_words_and_idle_is_not_throttling():
    assert decode_throttle(None) is None
    assert decode_throttle(0) == []
    keys = decode_throttle(0x1 | 0x4 | 0x40 | 0x800)
    assert keys == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown", "bit_0x800"]
    assert throttle_words(keys) == ["power cap", "thermal slowdown (hw)", "bit_0x800"]
    assert throttle_words(["gpu_idle"]) == []
    assert throttle_words(decode_throttle(0x2 | 0x8 | 0x10 | 0x20)) == [
        "app clocks setting", "hw slowdown", "sync boost", "thermal slowdown (sw)"]


def test_clocks_throttle_and_energy_are_read_with_the_older_name_as_fallback():
    class Old:
        """Bindings before the "clock event" rename, and a GPU without an energy counter."""

        NVMLError = Exception
        NVML_CLOCK_SM = 1

        def nvmlInit(self): pass
        def nvmlShutdown(self): pass
        def nvmlDeviceGetCount(self): return 1
        def nvmlDeviceGetHandleByIndex(self, i): return i
        def nvmlDeviceGetMemoryInfo(self, h): return SimpleNamespace(total=8 * GIB, used=GIB)
        def nvmlDeviceGetUtilizationRates(self, h): return SimpleNamespace(gpu=50)
        def nvmlDeviceGetTemperature(self, h, s): return 70
        def nvmlDeviceGetPowerUsage(self, h): return 100_000
        def nvmlDeviceGetEnforcedPowerLimit(self, h): return 150_000
        def nvmlDeviceGetName(self, h): return "NVIDIA T4"
        def nvmlDeviceGetClockInfo(self, h, clock): return 900 if clock == 1 else 5000
        def nvmlDeviceGetMaxClockInfo(self, h, clock): return 1590 if clock == 1 else 5001
        def nvmlDeviceGetCurrentClocksThrottleReasons(self, h): return 0x20
        def nvmlDeviceGetTotalEnergyConsumption(self, h): raise Exception("not supported")

    (gpu,) = GpuSampler(Old()).sample().gpus
    assert (gpu.clock_sm_mhz, gpu.clock_sm_max_mhz) == (900, 1590)
    assert gpu.throttle == ["sw_thermal_slowdown"] and gpu.throttled_by == ["thermal slowdown (sw)"]
    assert gpu.energy_mj is None
    d = gpu.to_dict()
    assert d["throttled_by"] == ["thermal slowdown (sw)"] and d["clock_sm_max_mhz"] == 1590 and "energy_mj" in d


# ---------------------------------------------------------------- the fake NVML file


def test_fake_file_gives_every_field_and_is_reread_on_every_sample(tmp_path):
    path = tmp_path / "gpus.json"
    write_fake_gpus(path, [{"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-abc", "mem_total": 80 * GIB,
                            "mem_used": 9 * GIB, "util": 35, "temperature": 50, "power_w": 300.0,
                            "power_limit_w": 700.0, "energy_mj": 123_456_789, "clock_sm_mhz": 1410,
                            "clock_sm_max_mhz": 1980, "throttle": ["sw_power_cap"],
                            "processes": [{"pid": 1234, "used": 9 * GIB, "sm_util": 30}]}])
    sampler = GpuSampler(FakeNvml(path))
    snap = sampler.sample()
    assert snap.available and snap.driver_version == "550.54"
    (g,) = snap.gpus
    assert (g.name, g.uuid, g.mem_used, g.mem_free) == ("NVIDIA H100 80GB HBM3", "GPU-abc", 9 * GIB, 71 * GIB)
    assert (g.util_percent, g.temperature_c, g.power_w, g.power_limit_w) == (35, 50, 300.0, 700.0)
    assert (g.energy_mj, g.clock_sm_mhz, g.clock_sm_max_mhz) == (123_456_789, 1410, 1980)
    assert g.throttled_by == ["power cap"] and g.processes == [(1234, 9 * GIB)] and g.process_util == {1234: 30}

    # another process frees memory: the next sample sees it, without a new init
    write_fake_gpus(path, [fake_gpu(mem_used=2 * GIB, util=0, processes=[])])
    (g,) = sampler.sample().gpus
    assert g.mem_used == 2 * GIB and g.processes == [] and g.throttled_by == []
    # a field left out is a field this GPU does not support
    write_fake_gpus(path, [{"name": "NVIDIA A10", "mem_total": 24 * GIB, "mem_used": GIB}])
    (g,) = sampler.sample().gpus
    assert g.name == "NVIDIA A10" and g.power_w is None and g.throttle is None and g.clock_sm_mhz is None


def test_default_sampler_follows_the_fake_variable(tmp_path, monkeypatch):
    path = write_fake_gpus(tmp_path / "gpus.json", [fake_gpu(index=0), fake_gpu(index=1, mem_used=5 * GIB)])
    monkeypatch.setenv(gpus_mod.FAKE_ENV, str(path))
    snap = gpus_mod.sample_gpus()
    assert snap.available and [g.mem_used for g in snap.gpus] == [0, 5 * GIB]
    assert gpus_mod.default_sampler() is gpus_mod.default_sampler()
    monkeypatch.setenv(gpus_mod.FAKE_ENV, str(tmp_path / "missing.json"))
    snap = gpus_mod.sample_gpus()
    assert not snap.available and "missing.json" in snap.reason  # said, never raised
    write_fake_gpus(tmp_path / "none.json", [])
    monkeypatch.setenv(gpus_mod.FAKE_ENV, str(tmp_path / "none.json"))
    assert gpus_mod.sample_gpus().reason == gpus_mod.NO_GPU


# ---------------------------------------------------------------- who holds each GPU


def test_short_command_drops_folders_and_cuts_long_lines():
    assert short_command(["/usr/bin/python3", "/home/alice/proj/train.py", "--lr", "1e-4"]) == \
        "python3 train.py --lr 1e-4"
    assert short_command(["python", "-m", "sft_tui.worker", "/data/runs/r1/"]) == "python -m sft_tui.worker r1"
    long = short_command(["python", "x" * 200], limit=30)
    assert len(long) == 30 and long.endswith("…")
    assert short_command([]) == ""


def test_workers_and_their_children_are_marked_with_the_run_name(tmp_path, worker):
    worker_pid, child_pid = worker
    runs = tmp_path / "runs"
    fake_run(runs, "alpaca-lora", worker_pid)
    fake_run(runs, "finished", free_pid())  # a dead worker's pid file marks nothing
    ghost = free_pid()
    other = 1  # init: another user's process in most places; whoever it is, psutil names the user
    snap = GpuSnapshot(True, "", [GpuStats(0, "NVIDIA H100", 30 * GIB, 80 * GIB, 90, 60, 500,
                                           processes=[(child_pid, 20 * GIB), (ghost, 4 * GIB), (other, GIB)],
                                           process_util={child_pid: 88})])
    table = holders(snap, runs)
    rows = {h.pid: h for h in table[0]}
    assert [h.pid for h in table[0]] == [child_pid, ghost, other]  # biggest first
    ours = rows[child_pid]
    assert ours.run_name == "alpaca-lora" and ours.ours and ours.visible and ours.sm_util == 88
    assert ours.user == psutil.Process().username() and ours.command.startswith("python")
    gone = rows[ghost]
    assert not gone.visible and gone.user is None and gone.used_bytes == 4 * GIB and gone.run_name is None
    assert gone.label() == f"pid {ghost} (not visible from here)"
    init = rows[other]
    assert init.visible and init.run_name is None
    assert init.user == psutil.Process(1).username() and init.command
    assert worker_pids(runs) == {worker_pid: "alpaca-lora", child_pid: "alpaca-lora"}
    assert holders(GpuSnapshot(False, "no NVIDIA GPU found"), runs) == {}


def test_a_stale_pid_file_does_not_claim_a_reused_pid(tmp_path, worker):
    worker_pid, child_pid = worker
    run = fake_run(tmp_path / "runs", "old", worker_pid)
    started = psutil.Process(worker_pid).create_time()
    os.utime(run.pid_path, (started - 3600, started - 3600))  # written long before this process began
    assert worker_pids(tmp_path / "runs") == {}


# ---------------------------------------------------------------- energy


def snap_of(*gpus: tuple[int, int | None, float | None]) -> GpuSnapshot:
    return GpuSnapshot(True, "", [GpuStats(i, "GPU", 0, 1, 0, 0, power, energy_mj=energy) for i, energy, power in gpus])


def test_energy_from_the_counter_and_from_power_samples():
    clock = iter([0.0, 10.0, 20.0, 30.0]).__next__
    meter = EnergyMeter(indices=[0, 1], clock=clock)
    meter.sample(snap_of((0, 1_000_000, 250.0), (1, None, 100.0), (2, 0, 700.0)))  # GPU 2 is not the run's
    assert meter.joules == 0.0 and meter.gpus == [0, 1]
    meter.sample(snap_of((0, 1_500_000, 250.0), (1, None, 300.0), (2, 9_000_000, 700.0)))
    # GPU 0: counter +500 J (its power is ignored); GPU 1: (100 + 300) / 2 W × 10 s = 2000 J
    assert meter.joules == pytest.approx(2500.0)
    meter.sample(snap_of((0, 200_000, 100.0), (1, None, 300.0)))  # driver reloaded: counter went back
    # GPU 0 falls back to (250 + 100) / 2 × 10 = 1750 J; GPU 1: 300 × 10 = 3000 J
    assert meter.joules == pytest.approx(2500.0 + 1750.0 + 3000.0)
    assert meter.kwh == pytest.approx(meter.joules / 3.6e6)
    assert meter.cost(0.30) == pytest.approx(meter.kwh * 0.30) and meter.cost(None) is None


def test_energy_without_a_gpu_is_unknown_never_an_error():
    meter = EnergyMeter(indices=None)
    assert meter.sample(GpuSnapshot(False, "no NVIDIA GPU found")) is None
    assert meter.kwh is None and meter.cost(0.3) is None

    class Broken:
        def sample(self):
            raise RuntimeError("NVML went away")

    assert EnergyMeter(Broken()).sample() is None
    assert EnergyMeter(indices=[0]).sample(snap_of((0, None, None))) is None  # reports neither


def test_visible_gpu_indices_from_cuda_visible_devices():
    snap = GpuSnapshot(True, "", [GpuStats(i, "GPU", 0, 1, 0, 0, 0, uuid=f"GPU-{i}aa") for i in range(4)])
    assert visible_gpu_indices("2,3", snap) == [2, 3]
    assert visible_gpu_indices("GPU-1, 3", snap) == [1, 3]
    assert visible_gpu_indices("", snap) == [] and visible_gpu_indices("-1", snap) == []
    assert visible_gpu_indices("0,bogus,1", snap) == [0]  # CUDA stops at the first invalid entry


def test_energy_words():
    assert format_kwh(1.234) == "1.23 kWh" and format_kwh(0.0456) == "0.0456 kWh" and format_kwh(123.4) == "123 kWh"
    assert energy_line(1.23, 0.30, "€") == "1.23 kWh (€0.37 at 0.30/kWh)"
    assert energy_line(1.23, 0.30, "EUR") == "1.23 kWh (0.37 EUR at 0.30/kWh)"
    assert energy_line(1.23) == "1.23 kWh"


def test_energy_callback_writes_cumulative_events_on_rank_zero(tmp_path, monkeypatch):
    from sft_tui.core.train.energy import EnergyCallback

    fake = write_fake_gpus(tmp_path / "gpus.json", [fake_gpu(index=0, energy_mj=1_000_000),
                                                    fake_gpu(index=1, energy_mj=5_000_000)])
    monkeypatch.setenv(gpus_mod.FAKE_ENV, str(fake))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    run = fake_run(tmp_path / "runs", "r1", os.getpid())
    run.writer().write("energy", joules=7200.0, kwh=0.002, gpus=[1])  # an earlier session of this run
    rank0, rank1 = SimpleNamespace(is_world_process_zero=True), SimpleNamespace(is_world_process_zero=False)

    other = EnergyCallback(run.writer(), "cuda", run)
    other.on_train_begin(None, rank1, None)
    other.on_log(None, rank1, None)
    cb = EnergyCallback(run.writer(), "cuda", run, every=3600)
    cb.on_train_begin(None, rank0, None)
    write_fake_gpus(fake, [fake_gpu(index=0, energy_mj=9_000_000), fake_gpu(index=1, energy_mj=5_360_000)])
    cb.on_log(None, rank0, None)  # within the minute: measured, not written
    cb.on_train_end(None, rank0, None)
    energy = [e for e in run.events() if e["type"] == "energy"]
    assert len(energy) == 3  # the earlier session's, this one's start and its end (rank 1 wrote nothing)
    assert energy[-1]["gpus"] == [1] and energy[-1]["joules"] == pytest.approx(7200.0 + 360.0)
    assert energy[-1]["kwh"] == pytest.approx(7560.0 / 3.6e6, abs=1e-6)
    assert run.status().extra["energy_kwh"] == energy[-1]["kwh"]

    cpu = fake_run(tmp_path / "runs", "cpu-run", os.getpid())
    cb = EnergyCallback(cpu.writer(), "cpu", cpu)
    cb.on_train_begin(None, rank0, None)
    cb.on_train_end(None, rank0, None)
    assert not [e for e in cpu.events() if e["type"] == "energy"]


def test_energy_events_fold_into_the_status_and_the_model_card(tmp_path, monkeypatch):
    st = RunStatus(name="r", state="training")
    fold_event(st, {"type": "energy", "kwh": 0.5, "joules": 1.8e6})
    fold_event(st, {"type": "energy", "kwh": "lots"})  # a wrong type changes nothing
    assert st.extra["energy_kwh"] == 0.5 and st.to_dict()["extra"]["energy_kwh"] == 0.5

    from sft_tui.core.config import Config
    from sft_tui.core.eval.export import model_card

    Path(os.environ["SFT_TUI_SETTINGS"]).write_text("energy_price: 0.30\nenergy_currency: €\n")
    run = RunDir.create(Config(), runs_dir=tmp_path / "runs")
    assert "Energy" not in model_card(run)
    run.writer().write("energy", joules=1.23 * 3.6e6, kwh=1.23, gpus=[0])
    assert "- Energy: 1.23 kWh (€0.37 at 0.30/kWh)" in model_card(run)


def test_energy_settings_are_checked(tmp_path):
    from sft_tui.core.errors import UserError
    from sft_tui.core.settings import Settings, load_settings, save_settings

    path = tmp_path / "settings.yaml"
    path.write_text("energy_price: 0.25\nenergy_currency: USD\n")
    s = load_settings(path, strict=True)
    assert (s.energy_price, s.energy_currency) == (0.25, "USD")
    save_settings(s, path)
    assert load_settings(path, strict=True) == s
    save_settings(Settings(), path)
    assert "energy" not in path.read_text()  # unset keys stay out of the file
    for bad in ("energy_price: cheap\n", "energy_price: -1\n", "energy_currency: [1]\n"):
        path.write_text(bad)
        with pytest.raises(UserError, match="energy_"):
            load_settings(path, strict=True)


# ---------------------------------------------------------------- sft-tui gpus


def shared_server(tmp_path: Path, worker_child: int) -> Path:
    ghost = free_pid()
    return write_fake_gpus(tmp_path / "gpus.json", [
        fake_gpu(index=0, mem_used=30 * GIB, util=97, power_w=699.0, clock_sm_mhz=1410, throttle=["sw_power_cap"],
                 processes=[{"pid": worker_child, "used": 20 * GIB}, {"pid": ghost, "used": 9 * GIB}]),
        fake_gpu("NVIDIA A100-SXM4-40GB", index=1, mem_total=40 * GIB),
    ])


def test_gpus_command_plain_and_json(tmp_path, monkeypatch, capsys, worker):
    from sft_tui.cli import main

    monkeypatch.setenv(gpus_mod.FAKE_ENV, str(shared_server(tmp_path, worker[1])))
    fake_run(tmp_path / "runs", "alpaca-lora", worker[0])
    assert main(["gpus", "--runs-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "2 GPU(s), driver 550.54" in out and "GPU 0  NVIDIA H100 80GB HBM3" in out
    assert "memory 30 GiB / 80 GiB (38%)" in out and "util 97%" in out and "power 699 W / 700 W" in out
    assert "clocks SM 1410 / 1980 MHz   throttled: power cap" in out
    assert "← sft-tui run alpaca-lora" in out and "(not visible from here)" in out and "20 GiB" in out
    assert "GPU 1  NVIDIA A100-SXM4-40GB" in out and "no processes" in out
    assert "throttled" not in out.split("GPU 1")[1]  # idle is not throttling

    assert main(["--runs-dir", str(tmp_path / "runs"), "gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    g0 = data["gpus"][0]
    assert data["available"] and g0["throttled_by"] == ["power cap"] and g0["clock_sm_mhz"] == 1410
    assert g0["holders"][0]["run_name"] == "alpaca-lora" and g0["holders"][0]["ours"] is True
    assert g0["holders"][1]["visible"] is False and g0["holders"][1]["used_bytes"] == 9 * GIB
    assert g0["processes"][0]["used_bytes"] in (20 * GIB, 9 * GIB)  # the old fields are still there
    assert data["gpus"][1]["holders"] == []


def test_gpus_command_without_a_gpu(tmp_path, monkeypatch, capsys):
    from sft_tui.cli import main

    monkeypatch.setenv(gpus_mod.FAKE_ENV, str(write_fake_gpus(tmp_path / "gpus.json", [])))
    assert main(["gpus"]) == 0
    assert capsys.readouterr().out.strip() == "no NVIDIA GPU found"
    assert main(["gpus", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["available"] is False and data["gpus"] == []


# ---------------------------------------------------------------- the gauges


def test_gauges_show_holders_and_throttling_within_the_width():
    from sft_tui.widgets.gauges import gpu_lines, holder_lines, throttle_lines

    gpu = GpuStats(0, "NVIDIA H100 80GB HBM3", 60 * GIB, 80 * GIB, 99, 70, 700, power_limit_w=700,
                   clock_sm_mhz=1410, clock_sm_max_mhz=1980, throttle=["gpu_idle", "sw_power_cap"])
    rows = [Holder(10, 20 * GIB, "me", "python -m sft_tui.worker", "my-run"),
            Holder(11, 2 * GIB, "me", "python", "my-run"),  # the worker's child: summed into one line
            Holder(20, 9 * GIB, "alice", "python train.py --config big.yaml"),
            Holder(30, 5 * GIB, None, None, visible=False),
            Holder(40, GIB, "bob", "jupyter-lab"),
            Holder(50, GIB, "carol", "vllm serve")]
    snap = GpuSnapshot(True, "", [gpu])
    for width in (26, 40, 80):
        lines = gpu_lines(snap, [], width, holders={0: rows})
        text = "\n".join(line.plain for line in lines)
        ours = holder_lines(rows, width) + throttle_lines(gpu, width)
        assert all(line.cell_len <= width for line in ours), [line.plain for line in ours]
        assert all(line.plain in text for line in ours)
        assert "throttled: power cap" in text and "idle" not in text
        assert "run my-run 22 GiB" in text
        assert "+3 more" in text and "bob" not in text  # 3 lines at most: 2 holders and "+3 more"
    wide = "\n".join(line.plain for line in gpu_lines(snap, [], 80, holders={0: rows[:3]}))
    assert "alice 9.0 GiB python train.py --config big.yaml" in wide and "more" not in wide
    (throttled,) = throttle_lines(gpu, 80)
    assert throttled.plain == "throttled: power cap (1410/1980 MHz)"
    assert any("yellow" in str(span.style) for span in throttled.spans)
    hidden = "\n".join(line.plain for line in gpu_lines(snap, [], 80, holders={0: [rows[3]]}))
    assert "pid 30 5.0 GiB (owner unknown)" in hidden


def test_gauges_without_a_gpu_are_unchanged_by_holders():
    from sft_tui.widgets.gauges import gpu_lines

    snap = GpuSnapshot(False, "no NVIDIA GPU found (nvidia-ml-py is not installed)")
    before = [line.plain for line in gpu_lines(snap, [], 30, 1024**3, True)]
    after = [line.plain for line in gpu_lines(snap, [], 30, 1024**3, True, holders=None)]
    assert before == after and before[0] == "GPU no NVIDIA GPU found"


def test_a_hostile_command_line_reaches_no_terminal_as_an_escape():
    from sft_tui.core.system.holders import short_command

    shown = short_command(["python", "x\x1b]52;c;aGFjaw==\x07", "--name\x9b31m"])
    assert "\x1b" not in shown and "\x07" not in shown and "\x9b" not in shown
    assert shown.startswith("python x ]52;c;aGFjaw==")
