"""CUDA paths: skipped without a GPU. Run the whole suite on a GPU with LOSSD_TEST_DEVICE=cuda."""

from __future__ import annotations

import httpx
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from serverutil import run_server

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_bad_index_on_cuda_is_422_and_server_keeps_serving() -> None:
    with run_server({"LOSSD_DEVICE": "cuda"}) as s:
        assert httpx.get(s.url + "/v1/info").json()["devices"][0]["device"].startswith("cuda")
        for target in ([10**9], [-7], [3]):
            r = httpx.post(
                s.url + "/v1/losses/cross_entropy", json={"inputs": {"input": [[1.0, 2.0, 3.0]], "target": target}}
            )
            assert r.status_code == 422, r.text
        ctc_bad = {
            "inputs": {"input": [[[0.0, 0.0]]], "targets": [[5]], "input_lengths": [1], "target_lengths": [1]},
        }
        assert httpx.post(s.url + "/v1/losses/ctc", json=ctc_bad).status_code == 422
        x = torch.randn(256, 100)
        t = torch.randint(0, 100, (256,))
        body = safetensors.torch.save({"input": x, "target": t}, metadata={"grad": "true"})
        r = httpx.post(
            s.url + "/v1/losses/cross_entropy", content=body, headers={"content-type": "application/x-safetensors"}
        )
        assert r.status_code == 200
        out = safetensors.torch.load(r.content)
        xr = x.clone().requires_grad_(True)
        ref = F.cross_entropy(xr, t)
        ref.backward()
        torch.testing.assert_close(out["value"], ref.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out["grad.input"], xr.grad, rtol=1e-5, atol=1e-6)


def test_every_device_engine_answers() -> None:
    n = torch.cuda.device_count()
    with run_server({"LOSSD_DEVICE": ",".join(f"cuda:{i}" for i in range(n))}) as s:
        devices = httpx.get(s.url + "/v1/info").json()["devices"]
        assert [d["device"] for d in devices] == [f"cuda:{i}" for i in range(n)]
        for _ in range(4):
            r = httpx.post(s.url + "/v1/losses/mse", json={"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}})
            assert r.json()["value"] == pytest.approx(2.5)


def test_gpu_and_cpu_engines_share_calls() -> None:
    """The multi-device engine on a one-GPU machine: a CUDA engine beside a CPU engine, calls placed on the
    least-loaded one, each answer right wherever it ran, and /v1/info and /metrics counting per device."""
    from test_multidevice import check_calls_spread

    gen = torch.Generator().manual_seed(5)
    cases = [(torch.randn(1024, 256, generator=gen), torch.randn(1024, 256, generator=gen)) for _ in range(16)]
    with run_server({"LOSSD_DEVICE": "cuda:0,cpu", "LOSSD_TORCH_THREADS": "1"}) as s:
        with httpx.Client(base_url=s.url, timeout=120.0) as client:
            assert [d["device"] for d in client.get("/v1/info").json()["devices"]] == ["cuda:0", "cpu"]
            check_calls_spread(client, cases, threads=6, rel=1e-4)
