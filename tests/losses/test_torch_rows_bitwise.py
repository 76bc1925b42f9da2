"""Rows marked "torch" in losses.md: the values are torch.nn.functional's to the last bit.

Evaluation users compare lossd with what torch gives them in-process; "exact" means equal bits, not
close ones. Each case is the loss function of the catalogue against the torch function of its row,
for every reduction, in float32 and float64.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from lossd.losses import default_catalogue

CATALOGUE = default_catalogue()
REDUCTIONS = ("mean", "sum", "none")


def _cases(dtype: torch.dtype) -> list[tuple[str, dict[str, Any], dict[str, Any], Callable[..., torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, dtype=dtype)

    x, t2 = randn(16, 7), randn(16, 7)
    y = torch.randint(0, 7, (16,), generator=g)
    w = rand(7)
    probs, soft = rand(16, 7), rand(16, 7)
    signs = torch.where(randn(16, 7) > 0, 1.0, -1.0).to(dtype)
    multi_hot = (rand(16, 7) > 0.5).to(dtype)
    multilabel = torch.randint(-1, 7, (16, 7), generator=g)
    a, b, c = randn(16, 5), randn(16, 5), randn(16, 5)
    s1 = torch.where(randn(16) > 0, 1.0, -1.0).to(dtype)
    var = rand(16, 7) + 0.1
    logp = F.log_softmax(randn(16, 7), 1)
    q = F.softmax(randn(16, 7), 1)
    q[::3, ::4] = 0
    lp3 = F.log_softmax(randn(30, 4, 6), 2)
    labels = torch.randint(1, 6, (4, 10), generator=g)
    il, tl = torch.tensor([30, 25, 30, 20]), torch.tensor([10, 5, 8, 3])
    return [
        (
            "ctc",
            {"input": lp3, "targets": labels, "input_lengths": il, "target_lengths": tl},
            {},
            lambda **p: F.ctc_loss(lp3, labels, il, tl, **p),
        ),
        ("cross_entropy", {"input": x, "target": y}, {"label_smoothing": 0.1}, lambda **p: F.cross_entropy(x, y, **p)),
        ("cross_entropy", {"input": x, "target": y, "weight": w}, {}, lambda **p: F.cross_entropy(x, y, weight=w, **p)),
        ("cross_entropy", {"input": x, "target": soft}, {}, lambda **p: F.cross_entropy(x, soft, **p)),
        ("nll", {"input": F.log_softmax(x, 1), "target": y}, {}, lambda **p: F.nll_loss(F.log_softmax(x, 1), y, **p)),
        (
            "binary_cross_entropy",
            {"input": probs, "target": soft},
            {},
            lambda **p: F.binary_cross_entropy(probs, soft, **p),
        ),
        (
            "binary_cross_entropy_with_logits",
            {"input": x, "target": soft},
            {},
            lambda **p: F.binary_cross_entropy_with_logits(x, soft, **p),
        ),
        ("kl_div", {"input": logp, "target": q}, {}, lambda **p: F.kl_div(logp, q, **p)),
        ("poisson_nll", {"input": x, "target": soft}, {}, lambda **p: F.poisson_nll_loss(x, soft, **p)),
        ("gaussian_nll", {"input": x, "target": t2, "var": var}, {}, lambda **p: F.gaussian_nll_loss(x, t2, var, **p)),
        ("multi_margin", {"input": x, "target": y}, {}, lambda **p: F.multi_margin_loss(x, y, **p)),
        (
            "multi_margin",
            {"input": x, "target": y, "weight": w},
            {"p": 2, "margin": 0.5},
            lambda **p: F.multi_margin_loss(x, y, weight=w, **p),
        ),
        ("soft_margin", {"input": x, "target": signs}, {}, lambda **p: F.soft_margin_loss(x, signs, **p)),
        (
            "multilabel_soft_margin",
            {"input": x, "target": multi_hot},
            {},
            lambda **p: F.multilabel_soft_margin_loss(x, multi_hot, **p),
        ),
        (
            "multilabel_margin",
            {"input": x, "target": multilabel},
            {},
            lambda **p: F.multilabel_margin_loss(x, multilabel, **p),
        ),
        ("hinge_embedding", {"input": x, "target": signs}, {}, lambda **p: F.hinge_embedding_loss(x, signs, **p)),
        ("mse", {"input": x, "target": t2}, {}, lambda **p: F.mse_loss(x, t2, **p)),
        ("l1", {"input": x, "target": t2}, {}, lambda **p: F.l1_loss(x, t2, **p)),
        ("smooth_l1", {"input": x, "target": t2}, {"beta": 0.5}, lambda **p: F.smooth_l1_loss(x, t2, **p)),
        ("huber", {"input": x, "target": t2}, {"delta": 0.7}, lambda **p: F.huber_loss(x, t2, **p)),
        (
            "triplet_margin",
            {"anchor": a, "positive": b, "negative": c},
            {"swap": True},
            lambda **p: F.triplet_margin_loss(a, b, c, **p),
        ),
        (
            "cosine_embedding",
            {"input1": a, "input2": b, "target": s1},
            {"margin": 0.2},
            lambda **p: F.cosine_embedding_loss(a, b, s1, **p),
        ),
        (
            "margin_ranking",
            {"input1": a[:, 0], "input2": b[:, 0], "target": s1},
            {"margin": 0.1},
            lambda **p: F.margin_ranking_loss(a[:, 0], b[:, 0], s1, **p),
        ),
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_torch_rows_are_bitwise_torch(dtype: torch.dtype, reduction: str) -> None:
    for name, inputs, params, ref in _cases(dtype):
        spec = CATALOGUE.get(name)
        assert spec is not None and spec.reference.startswith("torch.nn.functional"), name
        got = spec.fn(**inputs, **params, reduction=reduction)
        want = ref(**params, reduction=reduction)
        assert got.dtype == want.dtype and got.shape == want.shape, name
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True, msg=f"{name} {params}")


@pytest.mark.parametrize("name", ["multi_margin", "multilabel_margin"])
def test_empty_batches_reduce_to_torch_conventions_not_garbage(name: str) -> None:
    """torch's own mean and sum of an empty batch are garbage for these two; lossd gives NaN and 0."""
    x = torch.zeros(0, 5)
    target = torch.zeros(0, dtype=torch.int64) if name == "multi_margin" else torch.zeros(0, 5, dtype=torch.int64)
    fn = CATALOGUE.get(name).fn  # type: ignore[union-attr]
    assert torch.isnan(fn(input=x, target=target, reduction="mean"))
    assert fn(input=x, target=target, reduction="sum") == 0
    assert fn(input=x, target=target, reduction="none").shape == (0,)
