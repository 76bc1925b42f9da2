"""Metric-learning losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from pydantic import Field, WithJsonSchema

from lossd.losses._common import reduce
from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Reduced,
    Reduction,
    require_ndim,
    require_same_shape,
    require_shape,
    require_values_in,
)

# ---------------------------------------------------------------------------
# contrastive


class ContrastiveParams(Reduced):
    margin: float = Field(1.0, ge=0.0, allow_inf_nan=False)


def _safe_euclidean(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Row-wise ``||x1 - x2||_2`` whose gradient is 0 (not NaN) where the distance is 0."""
    sq = (x1 - x2).square().sum(dim=-1)
    pos = sq > 0
    return torch.where(pos, torch.where(pos, sq, torch.ones_like(sq)).sqrt(), torch.zeros_like(sq))


def contrastive(
    x1: torch.Tensor,
    x2: torch.Tensor,
    label: torch.Tensor,
    *,
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Contrastive loss (Hadsell, Chopra, LeCun 2006), per pair.

    ``0.5*y*d^2 + 0.5*(1-y)*max(0, margin - d)^2``, ``d = ||x1 - x2||_2``, ``y`` 1 similar / 0 dissimilar.
    ``d^2`` is the sum of squares itself; the square root has gradient 0 at ``d = 0`` (a subgradient of the
    hinge term there) instead of NaN.
    """
    sq = (x1 - x2).square().sum(dim=-1)
    d = _safe_euclidean(x1, x2)
    loss = 0.5 * label * sq + 0.5 * (1 - label) * (margin - d).clamp(min=0).square()
    return reduce(loss, reduction)


def _check_contrastive(inputs: Mapping[str, Any], _p: Any) -> None:
    x1, x2, y = inputs["x1"], inputs["x2"], inputs["label"]
    require_ndim(x1, "x1", 2, "of embeddings (N,D)")
    require_same_shape(x1, x2, "x1", "x2")
    require_shape(y, "label", (x1.shape[0],), "(one label per pair: 1 similar, 0 dissimilar)")
    require_values_in(y, "label", (0, 1))


CONTRASTIVE = LossSpec(
    name="contrastive",
    aliases=("siamese",),
    summary="Contrastive loss per pair: 0.5*y*d^2 + 0.5*(1-y)*max(0, margin-d)^2, d = ||x1-x2||_2.",
    fn=contrastive,
    inputs=(
        Input("x1", "float", "(N,D)", "first embeddings", differentiable=True),
        Input("x2", "float", "(N,D)", "second embeddings", differentiable=True),
        Input("label", "mask", "(N)", "1 similar, 0 dissimilar (int, bool or float)"),
    ),
    params=ContrastiveParams,
    check=_check_contrastive,
    reference="float64 formula in the tests, gradcheck",
)


# ---------------------------------------------------------------------------
# triplet_margin


class TripletMarginParams(Reduced):
    margin: float = Field(1.0, gt=0.0, allow_inf_nan=False)
    # Any p > 0, infinity (the max norm) included. p = 0 (a count of the non-zero coordinates) has no gradient
    # path, and p < 0 is not a distance: refused, although torch computes them.
    p: Annotated[
        float, WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "Infinity"}]})
    ] = Field(2.0, gt=0.0, allow_inf_nan=True, description='norm order, > 0; "Infinity" for the max norm')
    eps: float = Field(1e-6, allow_inf_nan=False)
    swap: bool = False


def triplet_margin(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    *,
    margin: float = 1.0,
    p: float = 2.0,
    eps: float = 1e-6,
    swap: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Triplet margin loss, exactly ``torch.nn.functional.triplet_margin_loss``.

    ``max(0, d(a,p) - d(a,n) + margin)`` per triplet, ``d(x,y) = ||x - y + eps||_p``; ``swap`` uses
    ``min(d(a,n), d(p,n))`` as the negative distance. Any ``p > 0`` (``inf``: the max norm) and any finite
    ``eps`` (negative too), as torch takes them.
    """
    return F.triplet_margin_loss(
        anchor, positive, negative, margin=margin, p=p, eps=eps, swap=swap, reduction=reduction
    )


def _check_triplet(inputs: Mapping[str, Any], _p: Any) -> None:
    a = inputs["anchor"]
    require_ndim(a, "anchor", (1, 2), "of embeddings (N,D) (or one unbatched (D))")
    require_same_shape(a, inputs["positive"], "anchor", "positive")
    require_same_shape(a, inputs["negative"], "anchor", "negative")


TRIPLET_MARGIN = LossSpec(
    name="triplet_margin",
    aliases=("triplet",),
    summary="Triplet loss max(0, ||a-p+eps||_p - ||a-n+eps||_p + margin) per triplet "
    "(torch.nn.functional.triplet_margin_loss).",
    fn=triplet_margin,
    inputs=(
        Input("anchor", "float", "(N,D)", "anchor embeddings", differentiable=True),
        Input("positive", "float", "(N,D)", "positive embeddings", differentiable=True),
        Input("negative", "float", "(N,D)", "negative embeddings", differentiable=True),
    ),
    params=TripletMarginParams,
    check=_check_triplet,
    reference="torch.nn.functional.triplet_margin_loss",
)


# ---------------------------------------------------------------------------
# cosine_embedding


class MarginParams(Reduced):
    margin: float = Field(0.0, allow_inf_nan=False)


def cosine_embedding(
    input1: torch.Tensor,
    input2: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Cosine embedding loss, exactly ``torch.nn.functional.cosine_embedding_loss``.

    Per pair ``1 - cos(x1, x2)`` for ``y = 1``, ``max(0, cos(x1, x2) - margin)`` for ``y = -1``.
    """
    return F.cosine_embedding_loss(input1, input2, target, margin=margin, reduction=reduction)


def _check_cosine_embedding(inputs: Mapping[str, Any], _p: Any) -> None:
    x1, x2, y = inputs["input1"], inputs["input2"], inputs["target"]
    require_ndim(x1, "input1", (1, 2), "(N,D) (or one unbatched (D))")
    require_same_shape(x1, x2, "input1", "input2")
    require_shape(y, "target", x1.shape[:1] if x1.dim() == 2 else (), "(one target per pair)")
    require_values_in(y, "target", (-1, 1))


COSINE_EMBEDDING = LossSpec(
    name="cosine_embedding",
    summary="Cosine embedding loss per pair: 1-cos(x1,x2) for y=1, max(0, cos(x1,x2)-margin) for y=-1 "
    "(torch.nn.functional.cosine_embedding_loss).",
    fn=cosine_embedding,
    inputs=(
        Input("input1", "float", "(N,D)", "first embeddings", differentiable=True),
        Input("input2", "float", "(N,D)", "second embeddings", differentiable=True),
        Input("target", "float", "(N)", "1 similar, -1 dissimilar"),
    ),
    params=MarginParams,
    check=_check_cosine_embedding,
    reference="torch.nn.functional.cosine_embedding_loss",
)


# ---------------------------------------------------------------------------
# margin_ranking


def margin_ranking(
    input1: torch.Tensor,
    input2: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Margin ranking loss, exactly ``torch.nn.functional.margin_ranking_loss``: ``max(0, -y*(x1-x2) + margin)``."""
    return F.margin_ranking_loss(input1, input2, target, margin=margin, reduction=reduction)


def _check_margin_ranking(inputs: Mapping[str, Any], _p: Any) -> None:
    x1 = inputs["input1"]
    require_same_shape(x1, inputs["input2"], "input1", "input2")
    require_same_shape(x1, inputs["target"], "input1", "target")
    require_values_in(inputs["target"], "target", (-1, 1))


MARGIN_RANKING = LossSpec(
    name="margin_ranking",
    summary="Margin ranking loss max(0, -y*(x1-x2) + margin) per element (torch.nn.functional.margin_ranking_loss).",
    fn=margin_ranking,
    inputs=(
        Input("input1", "float", "(N)", "first scores", differentiable=True),
        Input("input2", "float", "(N)", "second scores", differentiable=True),
        Input("target", "float", "(N)", "1: input1 should rank higher, -1: input2"),
    ),
    params=MarginParams,
    check=_check_margin_ranking,
    reference="torch.nn.functional.margin_ranking_loss",
)


# ---------------------------------------------------------------------------
# info_nce


class InfoNCEParams(Reduced):
    temperature: float = Field(0.1, gt=0.0, allow_inf_nan=False)


def info_nce(
    z1: torch.Tensor,
    z2: torch.Tensor,
    *,
    temperature: float = 0.1,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """SimCLR NT-Xent (Chen et al. 2020) over the 2N views ``z = [z1; z2]``.

    ``s_ij = cos(z_i, z_j) / temperature``; for view ``i`` with positive ``j(i)`` (its pair),
    ``loss_i = -s_ij(i) + log sum_{k != i} exp(s_ik)``. ``none`` gives the (2N) values, z1's views first.
    Embeddings are normalised as ``z / max(||z||, 1e-12)``.
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    logits = (z @ z.T) / temperature
    eye = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    idx = torch.arange(2 * n, device=z.device)
    pos = torch.cat([idx[n:], idx[:n]])
    loss = torch.logsumexp(logits, dim=1) - logits[idx, pos]
    return reduce(loss, reduction)


def _check_info_nce(inputs: Mapping[str, Any], _p: Any) -> None:
    z1 = inputs["z1"]
    require_ndim(z1, "z1", 2, "of embeddings (N,D)")
    require_same_shape(z1, inputs["z2"], "z1", "z2")
    if z1.shape[0] == 0:
        raise InputError(("inputs", "z1"), "expected at least one pair (N >= 1)")
    # The similarity matrix is (2N)^2: bound it so that one call cannot take the device's memory.
    if (2 * z1.shape[0]) ** 2 > MAX_SIMILARITIES:
        raise InputError(
            ("inputs", "z1"),
            f"{z1.shape[0]} pairs need a ({2 * z1.shape[0]})^2 similarity matrix, over the limit of "
            f"{MAX_SIMILARITIES} entries per call (N <= {int(MAX_SIMILARITIES**0.5) // 2})",
            status=413,
        )
    # ...and its product with D, the time it takes to compute.
    if _info_nce_work(inputs) > 1:
        raise InputError(
            ("inputs", "z1"),
            f"(2N)^2*D = {(2 * z1.shape[0]) ** 2 * z1.shape[1]} multiply-adds is over the limit of "
            f"{MAX_SIMILARITY_WORK} per call; split the call or reduce D",
            status=413,
        )


MAX_SIMILARITIES = 1 << 26  # (2N)^2: 2N = 8192 views, 256 MiB of float32 per matrix
MAX_SIMILARITY_WORK = 1 << 36  # (2N)^2*D: about 3 s on one CPU core (measured: N=4096, D=1024, 3.3 s)


def _info_nce_work(inputs: Mapping[str, Any]) -> float:
    """The share of one call's bound: the larger of the matrix's size and its cost, (2N)^2 and (2N)^2*D."""
    n, d = inputs["z1"].shape
    return max((2 * n) ** 2 / MAX_SIMILARITIES, (2 * n) ** 2 * d / MAX_SIMILARITY_WORK)


INFO_NCE = LossSpec(
    name="info_nce",
    aliases=("nt_xent",),
    summary="SimCLR NT-Xent over the 2N views: -log(exp(cos(z_i,z_pos)/T) / sum_{k!=i} exp(cos(z_i,z_k)/T)) "
    "per view, z1's views first.",
    fn=info_nce,
    inputs=(
        Input("z1", "float", "(N,D)", "first views", differentiable=True),
        Input("z2", "float", "(N,D)", "second views; row i pairs with z1's row i", differentiable=True),
    ),
    params=InfoNCEParams,
    check=_check_info_nce,
    reference="float64 numpy NT-Xent in the tests, gradcheck",
    work=_info_nce_work,
)


SPECS: tuple[LossSpec, ...] = (CONTRASTIVE, TRIPLET_MARGIN, COSINE_EMBEDDING, MARGIN_RANKING, INFO_NCE)
