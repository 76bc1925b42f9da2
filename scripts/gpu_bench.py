"""GPU numbers for W1-W3 of the load-test issue: in-process compute vs lossd over HTTP.

Self-contained (httpx + multiprocessing load, no wrk), for a device machine:
    python3 scripts/gpu_bench.py [--device cuda] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import httpx
import orjson
import safetensors.torch
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from serverutil import run_server


def inprocess_ms(fn, device: str, reps: int = 20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _load_worker(url: str, body: bytes, conc: int, seconds: float, q: mp.Queue) -> None:  # type: ignore[type-arg]
    async def run() -> list[float]:
        lat: list[float] = []
        stop = time.perf_counter() + seconds
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=conc), timeout=30) as c:

            async def user() -> None:
                while time.perf_counter() < stop:
                    t0 = time.perf_counter()
                    r = await c.post(url, content=body, headers={"content-type": "application/json"})
                    assert r.status_code == 200, r.text
                    lat.append(time.perf_counter() - t0)

            await asyncio.gather(*[user() for _ in range(conc)])
        return lat

    q.put(asyncio.run(run()))


def load(url: str, body: bytes, clients: int, seconds: float) -> dict[str, float]:
    procs = min(clients, 8)
    per = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    q: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    ps = [mp.Process(target=_load_worker, args=(url, body, n, seconds, q)) for n in per]
    for p in ps:
        p.start()
    lat: list[float] = []
    for _ in ps:
        lat += q.get()
    for p in ps:
        p.join()
    lat.sort()
    return {
        "rps": len(lat) / seconds,
        "p50_ms": lat[len(lat) // 2] * 1000,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000,
    }


def timed_post(url: str, body: bytes, ctype: str, reps: int = 5) -> tuple[float, int]:
    times = []
    size = 0
    with httpx.Client(timeout=120) as c:
        for _ in range(reps + 1):
            t0 = time.perf_counter()
            r = c.post(url, content=body, headers={"content-type": ctype})
            assert r.status_code == 200, r.text[:300]
            times.append(time.perf_counter() - t0)
            size = len(r.content)
    return statistics.median(times[1:]) * 1000, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=5)
    args = ap.parse_args()
    dev = args.device
    results: dict[str, object] = {"device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu"}
    g = torch.Generator().manual_seed(0)

    x1, t1 = torch.randn(32, 10, generator=g), torch.randint(0, 10, (32,), generator=g)
    x2, t2 = torch.randn(4096, 1000, generator=g), torch.randint(0, 1000, (4096,), generator=g)
    x3, y3 = torch.randn(8_000_000, generator=g), torch.randn(8_000_000, generator=g)

    def fwd_bwd_ce(x: torch.Tensor, t: torch.Tensor):  # type: ignore[no-untyped-def]
        xd, td = x.to(dev), t.to(dev)

        def f() -> None:
            xx = xd.detach().requires_grad_(True)
            torch.autograd.grad(F.cross_entropy(xx, td), [xx])

        return f

    x3d, y3d = x3.to(dev), y3.to(dev)

    def mse_f() -> None:
        xx = x3d.detach().requires_grad_(True)
        torch.autograd.grad(F.mse_loss(xx, y3d), [xx])

    results["inprocess_ms"] = {
        "ce_32x10": inprocess_ms(fwd_bwd_ce(x1, t1), dev, 200),
        "ce_4096x1000": inprocess_ms(fwd_bwd_ce(x2, t2), dev),
        "mse_8M": inprocess_ms(mse_f, dev),
    }

    for devices in (dev, "all" if dev == "cuda" else dev):
        with run_server({"LOSSD_DEVICE": devices, "LOSSD_MAX_CONCURRENCY": "256"}) as s:
            url = s.url + "/v1/losses/cross_entropy"
            small = orjson.dumps({"inputs": {"input": x1.tolist(), "target": t1.tolist()}, "grad": ["input"]})
            w1 = {f"c{c}": load(url, small, c, args.seconds) for c in (1, 32)}
            results[f"W1[{devices}]"] = w1
            if devices != dev:
                results[f"info[{devices}]"] = httpx.get(s.url + "/v1/info").json()["devices"]
                continue
            big_json = orjson.dumps({"inputs": {"input": x2.tolist(), "target": t2.tolist()}, "grad": ["input"]})
            big_st = safetensors.torch.save({"input": x2, "target": t2}, metadata={"grad": '["input"]'})
            j_ms, j_resp = timed_post(url, big_json, "application/json", 3)
            s_ms, s_resp = timed_post(url, big_st, "application/x-safetensors", 5)
            results["W2"] = {
                "json_ms": j_ms,
                "json_bytes": len(big_json) + j_resp,
                "safetensors_ms": s_ms,
                "safetensors_bytes": len(big_st) + s_resp,
            }
            body3 = safetensors.torch.save({"input": x3, "target": y3}, metadata={"grad": '["input"]'})
            m_ms, m_resp = timed_post(s.url + "/v1/losses/mse", body3, "application/x-safetensors", 5)
            mb = (len(body3) + m_resp) / 1e6
            results["W3"] = {"ms": m_ms, "MB": mb, "MB_per_s": mb / (m_ms / 1000)}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
