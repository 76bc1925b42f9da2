"""lossd on Ray Serve: `lossd serve --ray` starts a local Ray instance (CPU replicas), two
replicas answer real loss calls through Ray's HTTP proxy, and SIGTERM undeploys and exits 0."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import orjson
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from serverutil import free_port_outside_ephemeral

pytest.importorskip("ray.serve", reason="ray[serve] is not installed")
pytestmark = pytest.mark.ray

from lossd.settings import Settings  # noqa: E402

START_TIMEOUT_S = 240.0  # Ray, its controller and proxy, and two replicas importing torch, on 2 cores


@contextlib.contextmanager
def ray_lossd(replicas: int) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    # Not a bind(0) port: Ray's own exporters take those while it starts, and one once took ours.
    port = free_port_outside_ephemeral()
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",  # no usage report leaves the machine
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # a single-node instance: Ray's own traffic stays on loopback
        "LOSSD_RAY_MIN_REPLICAS": str(replicas),
        "LOSSD_RAY_MAX_REPLICAS": str(replicas),
        "LOSSD_RAY_CPUS_PER_REPLICA": "0.5",
        "LOSSD_RAY_GPUS_PER_REPLICA": "0",
        "LOSSD_WARMUP": "false",
        "LOSSD_SHUTDOWN_GRACE_S": "10",
    }
    # Own session: the Ray processes it starts share its process group, which the teardown can end by id.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lossd", "serve", "--ray", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"lossd --ray exited with {proc.returncode} before it was ready"
            with contextlib.suppress(httpx.HTTPError):
                r = httpx.get(url + "/readyz", timeout=2.0)
                if r.status_code == 200 and "x-lossd-replica" in r.headers:  # lossd, not something else there
                    break
            assert time.monotonic() < deadline, "lossd on Ray did not become ready in time"
            time.sleep(0.5)
        yield url, proc
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of this test's Ray instance is left
        proc.wait()


def test_two_replicas_answer_loss_calls_through_ray_proxy() -> None:
    gen = torch.Generator().manual_seed(7)
    cases = []
    for _ in range(24):
        x = torch.randn(5, 4, generator=gen, dtype=torch.float64)
        y = torch.randint(0, 4, (5,), generator=gen)
        cases.append((x, y))

    with ray_lossd(replicas=2) as (url, proc):
        with httpx.Client(base_url=url, timeout=60.0) as client:

            def call(case: tuple[torch.Tensor, torch.Tensor]) -> httpx.Response:
                x, y = case
                body = {
                    "inputs": {
                        "input": {"dtype": "float64", "shape": list(x.shape), "data": x.tolist()},
                        "target": {"dtype": "int64", "shape": list(y.shape), "data": y.tolist()},
                    },
                    "grad": True,
                }
                return client.post("/v1/losses/cross_entropy", json=body)

            with ThreadPoolExecutor(8) as pool:
                responses = list(pool.map(call, cases))
                # Small calls finish in microseconds, so Ray's router may keep choosing one replica
                # (or learn of the second late): send more, bounded in count and time, until both answer.
                stop = time.monotonic() + 60
                for _ in range(20):
                    if len({r.headers["x-lossd-replica"] for r in responses}) > 1 or time.monotonic() > stop:
                        break
                    cases += cases[:24]
                    responses += list(pool.map(call, cases[-24:]))
            replicas = set()
            for (x, y), r in zip(cases, responses):
                assert r.status_code == 200, r.text
                out = r.json()
                xr = x.clone().requires_grad_(True)
                ref = F.cross_entropy(xr, y)
                ref.backward()
                assert abs(out["value"] - ref.item()) < 1e-12
                g = out["grads"]["input"]
                assert g["dtype"] == "float64"
                assert torch.allclose(torch.tensor(g["data"], dtype=torch.float64).reshape(g["shape"]), xr.grad)
                replicas.add(r.headers["x-lossd-replica"])
            assert len(replicas) == 2, f"expected both replicas to answer, got {replicas}"
            # A safetensors answer (sent by lossd as memoryviews over tensor memory) through Ray's proxy.
            x, y = cases[0]
            body = save(
                {"input": x.contiguous(), "target": y.contiguous()},
                metadata={"grad": "true"},
            )
            r = client.post(
                "/v1/losses/cross_entropy", content=body, headers={"Content-Type": "application/x-safetensors"}
            )
            assert r.status_code == 200, r.text
            out_st = load(r.content)
            xr = x.clone().requires_grad_(True)
            F.cross_entropy(xr, y).backward()
            assert torch.equal(out_st["grad.input"], xr.grad)
            info = client.get("/v1/info").json()
            assert [d["device"] for d in info["devices"]] == ["cpu"]  # one engine per replica

            # SIGTERM with a call in flight: the replicas drain as one process does (readyz and new calls
            # 503 with Retry-After, not Ray's 404 for a deleted route), the call gets its answer, exit 0.
            x = torch.randn(2000, generator=gen, dtype=torch.float64)
            body = orjson.dumps(
                {"inputs": {"input": {"dtype": "float64", "shape": [2000], "data": x.tolist()}, "target": [0.0] * 2000}}
            )
            sending = threading.Event()

            def trickle() -> Iterator[bytes]:
                for i in range(0, len(body), len(body) // 10 + 1):
                    yield body[i : i + len(body) // 10 + 1]
                    sending.set()
                    time.sleep(0.4)

            with ThreadPoolExecutor(1) as pool:
                slow = pool.submit(
                    client.post, "/v1/losses/mse", content=trickle(), headers={"Content-Type": "application/json"}
                )
                assert sending.wait(30)
                time.sleep(0.5)
                os.kill(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + 3
                while (ready := client.get("/readyz")).status_code == 200 and time.monotonic() < deadline:
                    time.sleep(0.1)  # the replicas poll the word to drain
                assert ready.status_code == 503 and "draining" in ready.json()["detail"]
                fresh = client.post("/v1/losses/mse", json={"inputs": {"input": [1.0], "target": [0.0]}})
                assert fresh.status_code == 503 and "Retry-After" in fresh.headers
                answer = slow.result(timeout=60)
            assert answer.status_code == 200, answer.text
            assert abs(answer.json()["value"] - float((x**2).mean())) <= 1e-12

        assert proc.wait(timeout=90) == 0


def test_one_replica_per_gpu_autoscaled_between_bounds() -> None:
    from lossd.ray_serve import deployment_options

    opts = deployment_options(Settings(ray_min_replicas=1, ray_max_replicas=8, shutdown_grace_s=20), gpus_available=8)
    assert opts["ray_actor_options"]["num_gpus"] == 1.0
    assert opts["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 8, "target_ongoing_requests": 4.0}
    assert "num_replicas" not in opts
    assert opts["graceful_shutdown_timeout_s"] == 20
    fixed = deployment_options(Settings(ray_min_replicas=2, ray_max_replicas=2), gpus_available=0)
    assert fixed["ray_actor_options"]["num_gpus"] == 0.0
    assert fixed["num_replicas"] == 2 and "autoscaling_config" not in fixed


def test_a_replica_with_several_gpus_runs_an_engine_on_each() -> None:
    from lossd.ray_serve import replica_device

    assert [replica_device(g) for g in (0, 0.5, 1, 2, 4)] == ["cpu", "cuda", "cuda", "all", "all"]


def test_serve_run_builder_takes_settings_as_arguments() -> None:
    from lossd.ray_serve import app_builder

    with pytest.raises(ValueError, match="no_such_setting"):
        app_builder({"no_such_setting": "1"})
    app = app_builder({"max_replicas": "3", "min_replicas": "1", "gpus_per_replica": "0"})
    assert type(app).__name__ == "Application"
