"""The cross-language example (examples/javascript/lossd.mjs) runs against a real server and gets torch's numbers."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from serverutil import Server

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "javascript" / "lossd.mjs"


@pytest.mark.skipif(shutil.which("node") is None, reason="needs Node.js 18+")
def test_javascript_example(server: Server) -> None:
    run = subprocess.run(["node", str(EXAMPLE), server.url], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [x["call"] for x in lines] == ["json", "safetensors", "float16"]

    x = torch.tensor([[2, 0.5, -1], [0.1, 1.5, 0.3]], requires_grad=True)
    ref = torch.nn.functional.cross_entropy(x, torch.tensor([0, 1]))
    ref.backward()
    assert lines[0]["loss"] == "cross_entropy" and lines[0]["value"] == ref.item()  # the same float32, exactly
    assert torch.equal(torch.tensor(lines[0]["grad"]), x.grad.flatten())

    xs = torch.tensor([math.sin(i) for i in range(1000)], dtype=torch.float32)
    mse = torch.nn.functional.mse_loss(xs, torch.zeros(1000), reduction="sum")
    out = lines[1]
    assert out["loss"] == "mse" and out["value_shape"] == [] and out["grad_shape"] == [1000]
    assert out["value"] == mse.item()
    assert out["grad_head"] == (2 * xs[:4]).tolist()

    # float16 data encoded and its float16 gradient decoded by hand in JavaScript (the values are exact in float16).
    h = torch.tensor([0.5, -1.25, 2, 0.125], dtype=torch.float16, requires_grad=True)
    ref16 = torch.nn.functional.mse_loss(h.float(), torch.zeros(4), reduction="sum")
    ref16.backward()
    assert lines[2] == {"call": "float16", "value": ref16.item(), "grad_dtype": "F16", "grad": h.grad.float().tolist()}
