"""Bit-for-bit reproducible values: what they depend on is reported, and equal settings give equal bits.

CPU reductions split their sums by the number of torch intra-op threads, so the last bits of a large
mean may differ between nodes with different thread counts. /v1/info reports the count; two servers
(or a server and the client's own torch) with the same count give the same bits.
"""

from __future__ import annotations

import json
import os

import httpx
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from serverutil import run_server

pytestmark = pytest.mark.skipif(os.environ.get("LOSSD_TEST_DEVICE", "cpu") != "cpu", reason="CPU thread-count numerics")


def _call(url: str, loss: str, x: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
    body = save({"input": x, "target": y}, metadata={"params": json.dumps({"reduction": reduction})})
    r = httpx.post(
        f"{url}/v1/losses/{loss}", content=body, headers={"Content-Type": "application/x-safetensors"}, timeout=60
    )
    assert r.status_code == 200, r.text
    return load(r.content)["value"]


def _references(x: torch.Tensor, y: torch.Tensor, threads: int) -> dict[tuple[str, str], torch.Tensor]:
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return {
            ("mse", "mean"): F.mse_loss(x, y),
            ("l1", "sum"): F.l1_loss(x, y, reduction="sum"),
            ("smooth_l1", "mean"): F.smooth_l1_loss(x, y),
        }
    finally:
        torch.set_num_threads(before)


def test_same_thread_count_same_bits() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(512, 1000, generator=g)  # 512k elements: reductions run in several chunks
    y = torch.randn(512, 1000, generator=g)
    want = {threads: _references(x, y, threads) for threads in (1, 2)}
    # The thread count matters: with it unknown, a node's bits could not be checked.
    assert any(not torch.equal(want[1][k], want[2][k]) for k in want[1])
    for threads, values in want.items():
        with run_server(env={"LOSSD_TORCH_THREADS": str(threads)}) as server:
            numerics = httpx.get(server.url + "/v1/info").json()["numerics"]
            assert numerics == {"torch_threads": threads, "tf32": False, "deterministic_algorithms": False}
            for (loss, reduction), value in values.items():
                for _ in range(3):  # and the same bits on every call
                    got = _call(server.url, loss, x, y, reduction)
                    assert got.dtype == torch.float32
                    assert got.view(torch.int32).item() == value.view(torch.int32).item(), (threads, loss, got, value)
