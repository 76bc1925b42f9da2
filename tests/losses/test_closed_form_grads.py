"""Closed-form gradients (LossSpec.value_and_grad) are autograd's to the last bit.

The engine computes cross_entropy's common case without recording a graph, calling the kernels
autograd would run. The reference here is the public API a user would call in-process:
F.cross_entropy and torch.autograd.grad of its sum.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lossd.engine import Engine
from lossd.losses import default_catalogue
from lossd.losses.classification import cross_entropy_value_and_grad
from lossd.settings import Settings

CATALOGUE = default_catalogue()


def _reference(x: torch.Tensor, target: torch.Tensor, **kw: Any) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = x.detach().clone().requires_grad_(True)
    value = F.cross_entropy(leaf, target, **kw)
    (g,) = torch.autograd.grad(value.sum(), [leaf])
    return value.detach(), g


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)


def _cases() -> list[tuple[str, torch.Tensor, torch.Tensor, dict[str, Any]]]:
    g = torch.Generator().manual_seed(7)
    out = []
    for dtype in (torch.float32, torch.float64):
        for n, c in ((1, 2), (32, 10), (257, 1000), (5, 3)):
            x = torch.randn(n, c, generator=g, dtype=dtype) * 4
            y = torch.randint(0, c, (n,), generator=g)
            w = torch.rand(c, generator=g, dtype=dtype)
            ignored = y.clone()
            ignored[::2] = -100
            for reduction in ("mean", "sum", "none"):
                tag = f"{dtype}-{n}x{c}-{reduction}"
                out.append((tag, x, y, {"reduction": reduction}))
                out.append((tag + "-weight", x, y, {"reduction": reduction, "weight": w}))
                out.append((tag + "-ignored", x, ignored, {"reduction": reduction}))
                out.append((tag + "-weight-ignored", x, ignored, {"reduction": reduction, "weight": w}))
                out.append((tag + "-ignore-3", x, y, {"reduction": reduction, "ignore_index": min(3, c - 1)}))
        # every sample ignored: mean is 0/0 (NaN) in torch, and so here
        out.append((f"{dtype}-all-ignored", torch.randn(4, 3, dtype=dtype), torch.full((4,), -100), {}))
        big = torch.tensor([[1e4, -1e4, 0.0], [-3e38, 3e38, 1.0]], dtype=dtype)
        out.append((f"{dtype}-extreme-logits", big, torch.tensor([1, 0]), {}))
    return out


CASES = _cases()


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_cross_entropy_closed_form_is_autograd_bit_for_bit(case: tuple[str, torch.Tensor, torch.Tensor, dict]) -> None:
    _, x, y, kw = case
    closed = cross_entropy_value_and_grad(("input",), x, y, **kw)
    assert closed is not None  # these are the cases it is for
    value, grads = closed
    ref_value, ref_grad = _reference(x, y, **kw)
    _same(value, ref_value)
    _same(grads["input"], ref_grad)


def test_cross_entropy_closed_form_declines_what_it_does_not_cover() -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    assert cross_entropy_value_and_grad(("input",), x, y, label_smoothing=0.1) is None
    assert cross_entropy_value_and_grad(("input",), x, torch.softmax(x, 1)) is None  # probabilities
    assert cross_entropy_value_and_grad(("input",), x.reshape(2, 3, 2), y.reshape(2, 2)) is None  # (N,C,d)
    assert cross_entropy_value_and_grad(("input",), torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) is None
    assert cross_entropy_value_and_grad((), x, y) is None


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize(
    "params",
    [{}, {"reduction": "sum"}, {"reduction": "none"}, {"ignore_index": 1}, {"label_smoothing": 0.2}],
    ids=["mean", "sum", "none", "ignore", "smoothing"],
)
def test_engine_cross_entropy_grads_match_autograd(dtype: str, params: dict[str, Any]) -> None:
    """Through the engine, closed form or not: the value and gradient of F.cross_entropy computed in the
    engine's compute dtype (float32 for half inputs), the gradient back in the input's dtype."""
    engine = Engine(CATALOGUE, torch.device("cpu"), Settings(warmup=False))
    spec = CATALOGUE.get("cross_entropy")
    assert spec is not None
    g = torch.Generator().manual_seed(3)
    x = torch.randn(24, 5, generator=g).to(getattr(torch, dtype))
    y = torch.randint(0, 5, (24,), generator=g)
    w = torch.rand(5, generator=g)
    result = engine.run(engine.prepare(spec, {"input": x, "target": y, "weight": w}, params or None, True))
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    ref_value, ref_grad = _reference(x.to(compute), y, weight=w.to(compute), **params)
    _same(result.value, ref_value)
    _same(result.grads["input"], ref_grad.to(x.dtype))
    engine.shutdown()
