"""cross_entropy, mse and focal over real HTTP against torch.nn.functional / a float64 formula.

Values and gradients, every reduction, float16/bfloat16/float32/float64 inputs, JSON and safetensors.
"""

from __future__ import annotations

import httpx
import pytest
import safetensors.torch
import torch
import torch.nn.functional as F
from serverutil import Server

from lossd.codecs import dumps, encode_tensor

REDUCTIONS = ["mean", "sum", "none"]
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
TOL = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5, torch.float64: 1e-10}


def wire(t: torch.Tensor) -> dict:
    return encode_tensor(t, b64=t.dtype in (torch.float16, torch.bfloat16))


def decode(obj: object) -> torch.Tensor:
    from lossd.codecs import Limits, decode_tensor

    t = decode_tensor(obj, ("x",), Limits(10**8, 64))
    assert isinstance(t, torch.Tensor)
    return t


def call_json(server: Server, loss: str, inputs: dict, params: dict, grad: object) -> dict:
    body = {"inputs": {k: wire(v) for k, v in inputs.items()}, "params": params, "grad": grad}
    r = httpx.post(
        f"{server.url}/v1/losses/{loss}", content=dumps(body), headers={"content-type": "application/json"}, timeout=60
    )
    assert r.status_code == 200, r.text
    return r.json()


def reference(fn, inputs: dict, grad: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    """The reference in float32 (float64 for float64 inputs), as the catalogue's conventions say."""
    work = {}
    for k, v in inputs.items():
        if v.is_floating_point():
            v = v.to(torch.float64 if v.dtype == torch.float64 else torch.float32).detach()
            v.requires_grad_(k in grad)
        work[k] = v
    value = fn(**work)
    total = value if value.dim() == 0 else value.sum()
    gs = torch.autograd.grad(total, [work[k] for k in grad]) if grad else ()
    return value.detach(), {k: g.to(inputs[k].dtype) for k, g in zip(grad, gs)}


def check(out: dict, value: torch.Tensor, grads: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
    tol = TOL[dtype]
    if value.dim() == 0:
        assert out["value"] == pytest.approx(float(value), rel=tol, abs=tol)
    else:
        got = decode(out["value"])
        assert got.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        torch.testing.assert_close(got, value.to(got.dtype), rtol=tol, atol=tol)
    assert set(out["grads"]) == set(grads)
    for k, g in grads.items():
        got = decode(out["grads"][k])
        assert got.dtype == g.dtype, "gradients come back in the input's dtype"
        torch.testing.assert_close(got.double(), g.double(), rtol=tol * 10, atol=tol * 10)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy(server: Server, dtype: torch.dtype, reduction: str) -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 5, generator=g).to(dtype)
    t = torch.tensor([0, 4, 2, -100, 1, 3])
    w = torch.rand(5, generator=g).to(dtype)
    params = {"reduction": reduction, "label_smoothing": 0.1}
    out = call_json(server, "cross_entropy", {"input": x, "target": t, "weight": w}, params, ["input"])
    value, grads = reference(
        lambda input, target, weight: F.cross_entropy(
            input, target, weight=weight, reduction=reduction, label_smoothing=0.1
        ),
        {"input": x, "target": t, "weight": w},
        ["input"],
    )
    check(out, value, grads, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cross_entropy_probability_targets_spatial(server: Server, dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 4, generator=g, dtype=dtype)
    p = torch.softmax(torch.randn(2, 3, 4, generator=g, dtype=dtype), 1)
    out = call_json(server, "cross_entropy", {"input": x, "target": p}, {}, True)
    value, grads = reference(lambda input, target: F.cross_entropy(input, target), {"input": x, "target": p}, ["input"])
    check(out, value, grads, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_mse_both_gradients(server: Server, dtype: torch.dtype, reduction: str) -> None:
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(4, 3, generator=g).to(dtype), torch.randn(4, 3, generator=g).to(dtype)
    out = call_json(server, "mse", {"input": x, "target": y}, {"reduction": reduction}, True)
    value, grads = reference(
        lambda input, target: F.mse_loss(input, target, reduction=reduction),
        {"input": x, "target": y},
        ["input", "target"],
    )
    check(out, value, grads, dtype)


def test_mse_half(server: Server) -> None:
    x, y = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])
    out = call_json(server, "l2", {"input": x, "target": y}, {"half": True}, ["input"])
    assert out["value"] == pytest.approx(0.5 * 5.0)
    assert decode(out["grads"]["input"]).tolist() == pytest.approx([0.5, 1.5])


def focal_ref(
    input: torch.Tensor, target: torch.Tensor, gamma: float, alpha: list[float] | None, reduction: str
) -> torch.Tensor:
    """Float64 formula from losses.md, written independently of the service's code."""
    x = input.double()
    p = torch.softmax(x, 1)
    valid = target != -100
    t = torch.where(valid, target, 0)
    pt = p.gather(1, t.unsqueeze(1)).squeeze(1)
    a = torch.ones_like(pt) if alpha is None else torch.tensor(alpha, dtype=torch.float64)[t]
    per = torch.where(valid, -a * (1 - pt) ** gamma * torch.log(pt), torch.zeros_like(pt))
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / valid.sum()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_focal(server: Server, dtype: torch.dtype, reduction: str) -> None:
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 4, generator=g).to(dtype)
    t = torch.tensor([0, 3, -100, 1, 2])
    alpha = [0.25, 0.5, 0.75, 1.0]
    params = {"gamma": 1.5, "alpha": alpha, "reduction": reduction}
    out = call_json(server, "softmax_focal", {"input": x, "target": t}, params, ["input"])
    assert out["loss"] == "focal"
    value, grads = reference(
        lambda input, target: focal_ref(input, target, 1.5, alpha, reduction), {"input": x, "target": t}, ["input"]
    )
    check(out, value.to(torch.float64 if dtype == torch.float64 else torch.float32), grads, dtype)


def test_safetensors_path_matches_json(server: Server) -> None:
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 10, generator=g)
    t = torch.randint(0, 10, (64,), generator=g, dtype=torch.int32)
    body = safetensors.torch.save(
        {"input": x, "target": t}, metadata={"params": '{"reduction": "none"}', "grad": "true"}
    )
    r = httpx.post(
        f"{server.url}/v1/losses/cross_entropy", content=body, headers={"content-type": "application/x-safetensors"}
    )
    assert r.status_code == 200
    out = safetensors.torch.load(r.content)
    xr = x.clone().requires_grad_(True)
    ref = F.cross_entropy(xr, t.long(), reduction="none")
    ref.sum().backward()
    torch.testing.assert_close(out["value"], ref.detach())
    torch.testing.assert_close(out["grad.input"], xr.grad)


def test_integer_input_is_converted_to_float32(server: Server) -> None:
    out = httpx.post(
        f"{server.url}/v1/losses/mse", json={"inputs": {"input": [1, 2], "target": [0, 0]}, "grad": True}
    ).json()
    assert out["value"] == pytest.approx(2.5)
    assert out["grads"]["input"]["dtype"] == "float32"


def test_large_json_bodies(server: Server) -> None:
    """Bodies over LOSSD_INLINE_MAX_BYTES take the host pool and the numpy fast path: same answers."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2048, 100, generator=g)
    t = torch.randint(0, 100, (2048,), generator=g)
    body = dumps({"inputs": {"input": x.numpy(), "target": t.numpy()}, "grad": True})
    assert len(body) > 1024 * 1024  # codecs.LARGE_BODY: the simdjson path
    r = httpx.post(f"{server.url}/v1/losses/cross_entropy", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    xr = x.clone().requires_grad_(True)
    ref = F.cross_entropy(xr, t)
    ref.backward()
    assert r.json()["value"] == pytest.approx(float(ref), rel=1e-6)
    torch.testing.assert_close(decode(r.json()["grads"]["input"]), xr.grad)
    ragged = dumps({"inputs": {"input": [[0.5] * 100] * 3000 + [[0.5] * 99], "target": [0] * 3001}})
    r = httpx.post(
        f"{server.url}/v1/losses/cross_entropy", content=ragged, headers={"content-type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["errors"][0]["loc"] == ["inputs", "input"]
    calls = [{"loss": "mse", "inputs": {"input": [float(i)] * 3000, "target": [0.0] * 3000}} for i in range(8)]
    r = httpx.post(
        f"{server.url}/v1/batch", content=dumps({"calls": calls}), headers={"content-type": "application/json"}
    )
    assert [c["value"] for c in r.json()["results"]] == [float(i * i) for i in range(8)]
