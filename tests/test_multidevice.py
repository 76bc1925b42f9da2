"""Several engines in one process: device lists, `--devices all`, placement on the least-loaded
engine, and per-device /v1/info and /metrics. On this CPU-only machine the engines are CPU
engines (`--cpu-engines`); the code path is the one that places calls on several GPUs."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from serverutil import run_server

from lossd.cli import main, parse
from lossd.devices import expand_devices
from lossd.engine import resolve_device


def test_device_lists() -> None:
    assert expand_devices("cpu") == ["cpu"]
    assert expand_devices("cpu, cpu") == ["cpu:0", "cpu:1"]
    assert expand_devices("cuda:0,cuda:1") == ["cuda:0", "cuda:1"]
    assert expand_devices("cpu:0,cpu") == ["cpu:0", "cpu:1"]
    for bad in ("all,cpu", "cuda:0,cuda:0", "cuda,cuda:0", "", " , "):
        with pytest.raises(ValueError):
            expand_devices(bad)


def test_one_device_is_not_two_engines_under_two_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert expand_devices("auto") == ["cpu"]
    assert expand_devices("auto,cpu") == ["cpu:0", "cpu:1"]  # two CPU engines, each with its own label
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert expand_devices("auto") == ["cuda:0"]
    for bad in ("auto,cuda:0", "cuda,auto"):
        with pytest.raises(ValueError, match="twice"):
            expand_devices(bad)


def test_an_unknown_device_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="unsupported device 'gpu'"):
        resolve_device("gpu")
    assert main(["serve", "--devices", "gpu"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lossd: ") and "unsupported device 'gpu'" in err and "Traceback" not in err


def test_all_is_every_gpu_or_the_cpu_engine_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert expand_devices("all", cpu_engines=1) == ["cpu"]
    assert expand_devices("all", cpu_engines=3) == ["cpu:0", "cpu:1", "cpu:2"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert expand_devices("all", cpu_engines=3) == ["cuda:0", "cuda:1"]


def test_cli_devices_flag() -> None:
    assert parse(["serve", "--devices", "cuda:0,cuda:1"]).device == "cuda:0,cuda:1"
    assert parse(["serve", "--device", "all", "--cpu-engines", "2"]).cpu_engines == 2


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> float:
    """Independent float64 NT-Xent: cross-entropy of each view against its pair over the other 2N-1."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))
    pos = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    return F.cross_entropy(logits, pos).item()


def metric(text: str, name: str, device: str) -> float:
    m = re.search(rf'^{name}\{{device="{re.escape(device)}"\}} (\S+)$', text, re.M)
    assert m, f"{name} for {device} missing from /metrics"
    return float(m.group(1))


def check_calls_spread(
    client: httpx.Client, cases: list[tuple[torch.Tensor, torch.Tensor]], threads: int, rel: float
) -> None:
    """Concurrent info_nce calls with gradients: each value right (float64 NT-Xent) wherever it ran, both
    engines used, and /v1/info and /metrics agreeing per device. Also the CUDA test's (tests/test_cuda.py)."""

    def call(case: tuple[torch.Tensor, torch.Tensor]) -> float:
        body = safetensors.torch.save(
            {"z1": case[0], "z2": case[1]}, metadata={"params": '{"temperature": 0.5}', "grad": "true"}
        )
        r = client.post("/v1/losses/info_nce", content=body, headers={"Content-Type": "application/x-safetensors"})
        assert r.status_code == 200, r.text
        out = safetensors.torch.load(r.content)
        assert out["grad.z1"].shape == case[0].shape
        return float(out["value"].item())

    with ThreadPoolExecutor(threads) as pool:
        values = list(pool.map(call, cases))
    for (z1, z2), v in zip(cases, values):
        assert v == pytest.approx(nt_xent(z1, z2, 0.5), rel=rel)
    per_device = {d["device"]: d["calls"] for d in client.get("/v1/info").json()["devices"]}
    assert sum(per_device.values()) == len(cases)
    assert min(per_device.values()) > 0, f"one engine got no call: {per_device}"
    text = client.get("/metrics").text
    for dev, n in per_device.items():
        assert metric(text, "lossd_device_calls_total", dev) == n
        assert metric(text, "lossd_compute_seconds_count", dev) == n
        assert metric(text, "lossd_compute_seconds_sum", dev) > 0
        assert metric(text, "lossd_inflight_calls", dev) == 0


def test_calls_spread_over_two_engines_with_per_device_metrics() -> None:
    gen = torch.Generator().manual_seed(3)
    # ~0.1-0.2 s of compute each, so concurrent calls overlap and the second engine gets work.
    cases = [(torch.randn(1024, 256, generator=gen), torch.randn(1024, 256, generator=gen)) for _ in range(12)]
    args = ("--devices", "all", "--cpu-engines", "2")
    with run_server(env={"LOSSD_WARMUP": "false", "LOSSD_TORCH_THREADS": "1"}, args=args) as srv:
        with httpx.Client(base_url=srv.url, timeout=120.0) as client:
            info = client.get("/v1/info").json()
            assert [d["device"] for d in info["devices"]] == ["cpu:0", "cpu:1"]
            check_calls_spread(client, cases, threads=4, rel=1e-5)


def test_auto_on_a_machine_without_cuda_says_it_computes_on_the_cpu(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A GPU image on a host without the NVIDIA runtime serves from the CPU: the log says so at start-up."""
    from lossd.service import Service
    from lossd.settings import Settings

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, warned in (("auto", True), ("all", True), ("cpu", False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="lossd"):
            Service(Settings(warmup=False, device=device)).close()
        assert any("no CUDA device" in r.getMessage() for r in caplog.records) is warned, device
