"""The fixed workloads: tensors, request bodies for every service, and the in-process reference.

Bodies are encoded once, before timing: what is measured is the service's request path
(transfer, parsing, compute, response), the same for every service compared.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import orjson
import safetensors.numpy
import torch
import torch.nn.functional as F

SEED = 1234
W1_SHAPE = (32, 10)
W2_SHAPE = (4096, 1000)
W3_ELEMENTS = 8_000_000
W4_CALLS = 64


@dataclass(frozen=True)
class Bodies:
    """One workload's request bodies: lossd JSON (data and b64 forms), lossd safetensors, and the peers' JSON."""

    lossd_json: bytes
    lossd_b64: bytes
    lossd_st: bytes
    peer_json: bytes


def ce_tensors(n: int, c: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, c), dtype=np.float32), rng.integers(0, c, n, dtype=np.int64)


def mse_tensors(n: int, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n, dtype=np.float32), rng.standard_normal(n, dtype=np.float32)


def _b64(a: np.ndarray) -> dict[str, object]:
    import base64

    return {"dtype": str(a.dtype), "shape": list(a.shape), "b64": base64.b64encode(a.tobytes()).decode()}


def bodies(x: np.ndarray, y: np.ndarray) -> Bodies:
    """Request bodies asking for the gradient of ``input`` for inputs (x, y)."""
    call = {"inputs": {"input": x, "target": y}, "grad": ["input"]}
    b64 = {"inputs": {"input": _b64(x), "target": _b64(y)}, "grad": ["input"], "encoding": "b64"}
    st = safetensors.numpy.save({"input": x, "target": y}, metadata={"grad": '["input"]', "params": "{}"})
    opt = orjson.OPT_SERIALIZE_NUMPY
    return Bodies(
        orjson.dumps(call, option=opt), orjson.dumps(b64), st, orjson.dumps({"input": x, "target": y}, option=opt)
    )


def batch_body(x: np.ndarray, y: np.ndarray, calls: int = W4_CALLS) -> bytes:
    one = {"loss": "cross_entropy", "inputs": {"input": x, "target": y}, "grad": ["input"]}
    return orjson.dumps({"calls": [one] * calls}, option=orjson.OPT_SERIALIZE_NUMPY)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def inprocess_seconds(loss: str, x: np.ndarray, y: np.ndarray, device: torch.device, reps: int) -> list[float]:
    """Forward+backward in this process: host tensors in, gradient back on the host (what a service must do)."""
    fn = F.cross_entropy if loss == "cross_entropy" else F.mse_loss
    tx, ty = torch.from_numpy(x), torch.from_numpy(y)

    def once() -> None:
        xi = tx.to(device).requires_grad_(True)
        value = fn(xi, ty.to(device))
        (g,) = torch.autograd.grad(value, [xi])
        g.cpu()
        value.item()

    for _ in range(3):
        once()
    times = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        once()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times
