"""Two real runs on one shared "GPU": B waits in the queue for A, and starts when A's memory frees.

The GPU is the fake NVML file (``SFT_TUI_FAKE_GPUS``) whose free memory this test controls, the
way a colleague's job or run A itself would hold it on a real server. Training itself runs on the
CPU. The workers are real and detached, so nothing here depends on a TUI being open.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sft_tui.core.run.rundir import RunDir
from sft_tui.core.system.fakegpu import fake_gpu, write_fake_gpus
from sft_tui.testing.waiting import wait_for

pytestmark = pytest.mark.slow
GIB = 1 << 30


def cli(*args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sft_tui", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def gpu(used_by: dict[int, int]) -> list[dict]:
    return [fake_gpu(mem_used=sum(used_by.values()), processes=[{"pid": p, "used": u} for p, u in used_by.items()])]


def start(home: Path, env: dict, name: str, max_steps: int) -> RunDir:
    cfg = {"model": "demo", "data": {"path": "sample:reviews_alpaca.jsonl", "max_length": 64},
           "training": {"max_steps": max_steps, "logging_steps": 2, "save_steps": 100, "batch_size": 2,
                        "wait_for_gpu": True, "wait_memory_gb": 30}}
    path = home / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = cli("train", str(path), "--name", name, "--detach", env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return RunDir(home / "runs" / name)


async def monitor_text(run: RunDir) -> str:
    from pilot_support import wait_for as ui_wait_for
    from sft_tui.app import SftApp
    from sft_tui.core.settings import Settings
    from sft_tui.core.setup.session import Session

    app = SftApp(session=Session(run=run, runs_dir=run.path.parent), start="monitor", settings=Settings())
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert await ui_wait_for(pilot, lambda: screen.loaded and screen.is_queued())
        await pilot.pause(0.3)
        text = " ".join(str(screen.query_one("#run-progress").render()).split())
        await pilot.press("ctrl+q")
    return text


def states(run: RunDir) -> list[tuple[str, float]]:
    return [(e["state"], e["time"]) for e in run.events() if e["type"] == "status"]


def test_run_b_waits_for_run_a_and_starts_when_it_ends(tmp_path, demo_model_dir):
    fake = tmp_path / "gpus.json"
    colleague = os.getpid()  # a real process "holds" 40 GiB: its user and command are known
    write_fake_gpus(fake, gpu({colleague: 40 * GIB}))
    env = dict(os.environ, SFT_TUI_HOME=str(tmp_path), SFT_TUI_RUNS_DIR=str(tmp_path / "runs"),
               SFT_TUI_FAKE_GPUS=str(fake), SFT_TUI_QUEUE_POLL_S="0.3", OMP_NUM_THREADS="1")

    a = start(tmp_path, env, "run-a", max_steps=4)  # its memory stays on the fake GPU until the test frees it
    wait_for(lambda: any(s == "starting" and e for s, e in states(a)[1:]) or a.status().state not in ("starting", "new"),
             timeout=60, what="run A to claim the GPU")
    # A holds its memory as it would on a GPU once loaded; B needs 30 GiB and 5 are free.
    write_fake_gpus(fake, gpu({colleague: 40 * GIB, a.pid(): 35 * GIB}))
    b = start(tmp_path, env, "run-b", max_steps=4)
    wait_for(lambda: b.status().state == "queued", timeout=60, what="run B to queue")
    wait_for(lambda: "5.0 GiB free" in (b.status().extra.get("queued_reason") or ""), timeout=30,
             what="B's reason to follow the GPU")
    reason = b.status().extra["queued_reason"]
    assert reason.startswith("waiting for 30 GiB on GPU 0; 5.0 GiB free, held by ")
    assert "1 run(s) queued" not in reason  # A is not queued: it holds the GPU

    # The monitor on B says why it waits; closing the app leaves B waiting, as the TUI is only a view.
    shown = asyncio.run(monitor_text(b))
    assert "waiting for 30 GiB on GPU 0" in shown and "5.0 GiB free" in shown
    assert b.is_alive() and b.status().state == "queued"

    listing = cli("runs", env=env)
    assert "queued" in listing.stdout and "run-b: waiting for 30 GiB on GPU 0" in listing.stdout
    as_json = {r["name"]: r for r in json.loads(cli("runs", "--json", env=env).stdout)}
    # (the holder part of the reason may change meanwhile: A's pid outlives A on the fake GPU)
    assert as_json["run-b"]["state"] == "queued"
    assert as_json["run-b"]["extra"]["queued_reason"].startswith("waiting for 30 GiB on GPU 0; 5.0 GiB free, held by ")

    wait_for(lambda: a.status().state == "done", timeout=240, what="run A to finish")
    assert b.status().state == "queued", "A ended but its memory has not freed yet"
    a_done = states(a)[-1][1]
    write_fake_gpus(fake, gpu({colleague: 40 * GIB}))  # A's process is gone, its memory with it
    wait_for(lambda: b.status().state == "done", timeout=240, what="run B to start and finish")
    started = [t for s, t in states(b) if s == "starting"][-1]
    assert started > a_done
    claim = [e for e in b.events() if e["type"] == "status" and e["state"] == "starting" and e.get("gpus")]
    assert claim[-1]["gpus"] == [0] and claim[-1]["claim_bytes"] == 30 * GIB


def test_a_queued_run_can_be_cancelled_or_started_now(tmp_path, demo_model_dir):
    fake = tmp_path / "gpus.json"
    write_fake_gpus(fake, gpu({os.getpid(): 78 * GIB}))
    env = dict(os.environ, SFT_TUI_HOME=str(tmp_path), SFT_TUI_RUNS_DIR=str(tmp_path / "runs"),
               SFT_TUI_FAKE_GPUS=str(fake), SFT_TUI_QUEUE_POLL_S="0.3", OMP_NUM_THREADS="1")
    cancel = start(tmp_path, env, "cancel-me", max_steps=2)
    now = start(tmp_path, env, "start-me", max_steps=2)
    wait_for(lambda: cancel.status().state == now.status().state == "queued", timeout=60, what="both queued")
    assert "1 run(s) queued before this one" in now.status().extra["queued_reason"]
    assert cli("stop", "cancel-me", "--wait", "--timeout", "60", env=env).returncode == 0
    assert cancel.status().state == "stopped"
    started = cli("start", "start-me", env=env)
    assert started.returncode == 0, started.stderr
    wait_for(lambda: now.status().state == "done", timeout=240, what="the run started by hand to finish")
    assert any("started now by request" in (e.get("msg") or "") for e in now.events())
    refused = cli("start", "start-me", env=env)
    assert refused.returncode != 0 and "not waiting in the queue" in refused.stderr
