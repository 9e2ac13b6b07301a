"""Doctor checks and the models/gpus/doctor CLI handlers, called through a small argparse."""

from __future__ import annotations

import argparse
import json

import pytest

from sft_tui import cli_models
from sft_tui.core.system import doctor
from sft_tui.core.system.doctor import Check, run_checks
from sft_tui.core.errors import UserError

from test_models_info import LLAMA2_7B, write_model


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="sft-tui")
    cli_models.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(list(argv))


def run(capsys, *argv: str) -> tuple[int, str]:
    args = parse(*argv)
    code = args.func(args)
    return code, capsys.readouterr().out


def test_run_checks_covers_every_item():
    checks = run_checks()
    names = [c.name for c in checks]
    for expected in ("torch", "cuda", "gpus", "bitsandbytes", "flash-attention", "disk", "huggingface hub"):
        assert expected in names
    assert all(isinstance(c, Check) and c.detail for c in checks)
    hub = next(c for c in checks if c.name == "huggingface hub")
    assert hub.detail.startswith("not checked (offline mode set")  # the test suite runs with HF_HUB_OFFLINE=1


def test_a_crashing_check_is_reported(monkeypatch):
    def check_boom():
        raise RuntimeError("kaput")

    monkeypatch.setattr(doctor, "CHECKS", [doctor.check_python, check_boom])
    checks = run_checks()
    assert checks[1].name == "boom" and checks[1].ok is False and "kaput" in checks[1].detail


def test_low_disk_is_a_problem(monkeypatch, tmp_path):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(100, 99, 1024**3))
    check = doctor.check_disk(tmp_path / "runs" / "not-yet")
    assert check.ok is False and "free" in check.detail


def test_doctor_cli(capsys):
    code, out = run(capsys, "doctor")
    assert code in (0, 1) and "torch" in out and "disk" in out
    code, out = run(capsys, "doctor", "--json")
    data = json.loads(out)
    assert {"name", "ok", "detail", "verdict"} <= set(data[0])


def test_gpus_cli_without_gpu(capsys, monkeypatch):
    from sft_tui.core.system import gpus

    monkeypatch.setattr(gpus, "sample_gpus", lambda: gpus.GpuSnapshot(False, gpus.NO_GPU))
    code, out = run(capsys, "gpus")
    assert code == 0 and "no NVIDIA GPU found" in out
    code, out = run(capsys, "gpus", "--json")
    assert json.loads(out)["available"] is False


def test_gpus_cli_with_fake_gpu(capsys, monkeypatch):
    from sft_tui.core.system import gpus
    from test_gpus import FakeNVML

    sampler = gpus.GpuSampler(FakeNVML())
    monkeypatch.setattr(gpus, "sample_gpus", sampler.sample)
    code, out = run(capsys, "gpus")
    sampler.shutdown()
    assert code == 0 and "H100" in out and "312 W" in out and "4242" in out


def test_models_cli_lists_demo_and_dirs(capsys, tmp_path):
    write_model(tmp_path / "lib" / "my-llama", LLAMA2_7B)
    code, out = run(capsys, "models", "--json", "--dir", str(tmp_path / "lib"))
    data = json.loads(out)
    assert code == 0 and data[0]["name"] == "demo"
    assert {"name": "my-llama", "source": "dir"}.items() <= data[-1].items()
    code, out = run(capsys, "models", "--dir", str(tmp_path / "lib"))
    assert code == 0 and "my-llama" in out and "demo" in out


def test_models_inspect_cli(capsys, tmp_path):
    folder = write_model(tmp_path / "llama7b", LLAMA2_7B)
    code, out = run(capsys, "models", "inspect", str(folder), "--method", "qlora", "--batch-size", "2",
                    "--max-length", "1024", "--gradient-checkpointing", "--json")
    data = json.loads(out)
    assert code == 0 and data["model"]["param_count"] == 6_738_415_616
    assert data["estimate"]["inputs"]["bits"] == 4 and data["estimate"]["inputs"]["batch_size"] == 2
    assert data["verdict"]["level"] in ("fits", "tight", "does-not-fit", "no-gpu")
    code, out = run(capsys, "models", "inspect", str(folder))
    assert code == 0 and "6.74B" in out and "total" in out and "q_proj" in out


def test_models_inspect_rejects_bert(tmp_path):
    folder = write_model(tmp_path / "bert", {"architectures": ["BertForMaskedLM"], "model_type": "bert"})
    args = parse("models", "inspect", str(folder))
    with pytest.raises(UserError, match="not a causal language model"):
        args.func(args)


# --------------------------------------------------------------------------- the hub check is honest


@pytest.fixture
def online(monkeypatch):
    """The hub check as on a machine where no offline variable is set (the suite sets HF_HUB_OFFLINE)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HTTPS_PROXY", "https_proxy",
                "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(var, raising=False)


class _Conn:
    def close(self):
        pass


def test_hub_not_checked_in_offline_mode(monkeypatch):
    import socket

    def never(*a, **k):
        raise AssertionError("offline mode must not touch the network")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket, "create_connection", never)
    check = doctor.check_hub()
    assert check.ok is None and check.detail.startswith("not checked (offline mode set")


def test_hub_unreachable_is_not_called_online(monkeypatch, online):
    import socket

    def no_network(address, timeout=None):
        raise socket.gaierror(-3, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "create_connection", no_network)
    check = doctor.check_hub()
    assert check.ok is None and check.detail.startswith("unreachable") and "huggingface.co" in check.detail
    assert "online" not in check.detail and "HF_HUB_OFFLINE=1" in check.detail


def test_hub_check_never_hangs(monkeypatch, online):
    """A resolver that never answers: the check gives up after HUB_TIMEOUT (2 s), not the resolver's 10+ s."""
    import socket
    import threading
    import time

    release = threading.Event()
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: (release.wait(30), _Conn())[1])
    monkeypatch.setattr(doctor, "HUB_TIMEOUT", 0.3)
    start = time.monotonic()
    check = doctor.check_hub()
    release.set()
    assert time.monotonic() - start < 1.5
    assert check.ok is None and "no answer within 0.3 s" in check.detail


def test_hub_check_limit_is_about_two_seconds():
    assert 0 < doctor.HUB_TIMEOUT <= 2.0


def test_hub_reachable_names_where_it_connected(monkeypatch, online):
    import socket

    seen = []
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: seen.append((address, timeout))
                        or _Conn())
    check = doctor.check_hub()
    assert check.ok is True and check.detail.startswith("reachable (huggingface.co:443 answered in")
    assert seen == [(("huggingface.co", 443), doctor.HUB_TIMEOUT)]
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    seen.clear()
    assert doctor.check_hub().ok is True and seen[0][0] == ("proxy.corp", 3128)
