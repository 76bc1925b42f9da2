"""The naive peer: a loss service written the way the FastAPI tutorial would.

pydantic ``list[list[float]]`` in, nested lists out, a sync handler (FastAPI runs it in its
threadpool). Run: ``python -m bench.peers.naive PORT``; ``BENCH_DEVICE`` picks the torch device.
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel

DEVICE = torch.device(os.environ.get("BENCH_DEVICE", "cpu"))
app = FastAPI()


class CrossEntropyRequest(BaseModel):
    input: list[list[float]]
    target: list[int]


class MSERequest(BaseModel):
    input: list[float]
    target: list[float]


class MatrixResult(BaseModel):
    value: float
    grad: list[list[float]]


class VectorResult(BaseModel):
    value: float
    grad: list[float]


@app.post("/cross_entropy")
def cross_entropy(req: CrossEntropyRequest) -> MatrixResult:
    x = torch.tensor(req.input, device=DEVICE, requires_grad=True)
    loss = F.cross_entropy(x, torch.tensor(req.target, device=DEVICE))
    loss.backward()
    assert x.grad is not None
    return MatrixResult(value=loss.item(), grad=x.grad.tolist())


@app.post("/mse")
def mse(req: MSERequest) -> VectorResult:
    x = torch.tensor(req.input, device=DEVICE, requires_grad=True)
    loss = F.mse_loss(x, torch.tensor(req.target, device=DEVICE))
    loss.backward()
    assert x.grad is not None
    return VectorResult(value=loss.item(), grad=x.grad.tolist())


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


if __name__ == "__main__":
    # Same server stack as lossd (uvloop, httptools, no access log) so that only the app differs.
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
