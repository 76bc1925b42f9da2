"""Regression losses."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lossd.losses._common import reduce
from lossd.spec import Input, LossSpec, Reduced, Reduction, require_min_ndim, require_same_shape


def _check_same_shape(inputs: Mapping[str, Any], _p: Any) -> None:
    require_same_shape(inputs["input"], inputs["target"], "input", "target")


def _pair(doc: str = "prediction") -> tuple[Input, Input]:
    return (
        Input("input", "float", "any", doc, differentiable=True),
        Input("target", "float", "same as input", "ground truth", differentiable=True),
    )


# ---------------------------------------------------------------------------
# mse


class MSEParams(Reduced):
    half: bool = False


def mse(
    input: torch.Tensor, target: torch.Tensor, *, half: bool = False, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Mean squared error, ``torch.nn.functional.mse_loss``: ``(input - target)^2`` per element.

    ``half=True`` multiplies by 0.5 (the halved squared error whose gradient is the residual).
    """
    loss = F.mse_loss(input, target, reduction=reduction)
    return loss * 0.5 if half else loss


MSE = LossSpec(
    name="mse",
    aliases=("l2", "mean_squared_error"),
    summary="Squared error (input-target)^2 per element (torch.nn.functional.mse_loss); half=true halves it.",
    fn=mse,
    inputs=_pair(),
    params=MSEParams,
    check=_check_same_shape,
    reference="torch.nn.functional.mse_loss",
)


# ---------------------------------------------------------------------------
# l1


def l1(input: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Absolute error ``|input - target|`` per element, exactly ``torch.nn.functional.l1_loss``."""
    return F.l1_loss(input, target, reduction=reduction)


L1 = LossSpec(
    name="l1",
    aliases=("mae", "mean_absolute_error"),
    summary="Absolute error |input-target| per element (torch.nn.functional.l1_loss).",
    fn=l1,
    inputs=_pair(),
    params=Reduced,
    check=_check_same_shape,
    reference="torch.nn.functional.l1_loss",
)


# ---------------------------------------------------------------------------
# smooth_l1


class SmoothL1Params(Reduced):
    beta: float = Field(1.0, ge=0.0, allow_inf_nan=False)


def smooth_l1(
    input: torch.Tensor, target: torch.Tensor, *, beta: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Smooth L1, exactly ``torch.nn.functional.smooth_l1_loss``.

    Per element ``0.5*r^2/beta`` for ``|r| < beta``, else ``|r| - 0.5*beta`` (``r = input - target``);
    beta=0 is the L1 loss.
    """
    return F.smooth_l1_loss(input, target, beta=beta, reduction=reduction)


SMOOTH_L1 = LossSpec(
    name="smooth_l1",
    summary="Smooth L1: 0.5*r^2/beta for |r|<beta, else |r|-0.5*beta (torch.nn.functional.smooth_l1_loss).",
    fn=smooth_l1,
    inputs=_pair(),
    params=SmoothL1Params,
    check=_check_same_shape,
    reference="torch.nn.functional.smooth_l1_loss",
)


# ---------------------------------------------------------------------------
# huber


class HuberParams(Reduced):
    delta: float = Field(1.0, gt=0.0, allow_inf_nan=False)


def huber(
    input: torch.Tensor, target: torch.Tensor, *, delta: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Huber loss, exactly ``torch.nn.functional.huber_loss``.

    Per element ``0.5*r^2`` for ``|r| < delta``, else ``delta*(|r| - 0.5*delta)``.
    """
    return F.huber_loss(input, target, delta=delta, reduction=reduction)


HUBER = LossSpec(
    name="huber",
    summary="Huber: 0.5*r^2 for |r|<delta, else delta*(|r|-0.5*delta) (torch.nn.functional.huber_loss).",
    fn=huber,
    inputs=_pair(),
    params=HuberParams,
    check=_check_same_shape,
    reference="torch.nn.functional.huber_loss",
)


# ---------------------------------------------------------------------------
# tukey_biweight

PositiveFloat = Annotated[float, Field(gt=0.0, strict=True, allow_inf_nan=False)]


class TukeyParams(Reduced):
    c: PositiveFloat = 4.6851
    scale: Literal["mad", "none"] | PositiveFloat = "mad"


def _median0(x: torch.Tensor) -> torch.Tensor:
    """Median over dim 0 as ``numpy.median`` computes it.

    The mean of the two middle values for an even count, and NaN for a column that holds a NaN (torch's
    sort puts NaN last, which would otherwise yield a middle value of the remaining numbers).
    """
    n = x.shape[0]
    s = torch.sort(x, dim=0).values
    m = s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])
    return torch.where(x.isnan().any(dim=0), torch.full_like(m, math.nan), m)


def mad_scale(residual: torch.Tensor) -> torch.Tensor:
    """``1.4826 * median(|r - median(r)|)`` over dim 0 per coordinate, 1 where that is 0; no gradient.

    A coordinate with a NaN residual has a NaN median, hence a NaN MAD and scale (NaN is not 0, so no fallback).
    """
    r = residual.detach()
    if r.shape[0] == 0:
        return torch.ones(r.shape[1:], dtype=r.dtype, device=r.device)
    mad = _median0((r - _median0(r)).abs())
    s = 1.4826 * mad
    return torch.where(mad == 0, torch.ones_like(s), s)


def tukey_biweight(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    c: float = 4.6851,
    scale: Literal["mad", "none"] | float = "mad",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Tukey's biweight (Belagiannis et al. 2015), per element.

    ``u = (input - target) / s``, ``rho(u) = c^2/6 * (1 - (1 - (u/c)^2)^3)`` for ``|u| <= c``, else ``c^2/6``.
    ``s`` is ``1.4826 * MAD`` of the residuals over dim 0 per coordinate (``scale="mad"``, numpy medians,
    1 where the MAD is 0, held constant for the gradient), 1 (``"none"``), or the number given.
    """
    r = input - target
    if scale == "mad":
        r = r / mad_scale(r)
    elif scale != "none":
        r = r / scale
    u2 = (r / c).square().clamp(max=1.0)
    loss = (c * c / 6.0) * (1.0 - (1.0 - u2) ** 3)
    return reduce(loss, reduction)


def _check_tukey(inputs: Mapping[str, Any], p: TukeyParams) -> None:
    if p.scale == "mad":
        require_min_ndim(inputs["input"], "input", 1, "(N,...) for scale 'mad' (the MAD is over dim 0)")
    require_same_shape(inputs["input"], inputs["target"], "input", "target")


TUKEY = LossSpec(
    name="tukey_biweight",
    aliases=("tukey",),
    summary="Tukey biweight: c^2/6*(1-(1-(u/c)^2)^3) for |u|<=c else c^2/6, u=(input-target)/scale, "
    "scale 1.4826*MAD over dim 0 (constant for the gradient), none, or a number.",
    fn=tukey_biweight,
    inputs=(
        Input("input", "float", "(N,...)", "prediction", differentiable=True),
        Input("target", "float", "same as input", "ground truth", differentiable=True),
    ),
    params=TukeyParams,
    check=_check_tukey,
    reference="numpy float64 formula (numpy.median) in the tests; gradcheck for fixed scales",
)


# ---------------------------------------------------------------------------
# log_cosh

_LOG2 = math.log(2.0)
_LOG_COSH_SWITCH = 15.0


def log_cosh(input: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """``log(cosh(r))`` per element, ``r = input - target``, computed stably.

    ``log1p(2*sinh(r/2)^2)`` for ``|r| < 15`` (accurate for tiny residuals, no cancellation against log 2),
    ``|r| + softplus(-2|r|) - log 2`` beyond (no overflow). The gradient is ``tanh(r)``.
    """
    r = input - target
    a = r.abs()
    small = a < _LOG_COSH_SWITCH
    rs = r.clamp(-_LOG_COSH_SWITCH, _LOG_COSH_SWITCH)  # keeps the unused branch finite, gradients included
    near = torch.log1p(2.0 * torch.sinh(0.5 * rs).square())
    far = a + F.softplus(-2.0 * a) - _LOG2
    return reduce(torch.where(small, near, far), reduction)


LOG_COSH = LossSpec(
    name="log_cosh",
    summary="log(cosh(input-target)) per element, computed stably "
    "(log1p(2*sinh(r/2)^2), or |r| + softplus(-2|r|) - log 2 for |r| >= 15).",
    fn=log_cosh,
    inputs=_pair(),
    params=Reduced,
    check=_check_same_shape,
    reference="numpy float64 log(cosh(r)) in the tests, gradcheck",
)


# ---------------------------------------------------------------------------
# quantile


class QuantileParams(Reduced):
    q: float = Field(0.5, ge=0.0, le=1.0)


def quantile(
    input: torch.Tensor, target: torch.Tensor, *, q: float = 0.5, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Pinball loss ``max(q*(y-f), (q-1)*(y-f))`` per element, ``f`` the input, ``y`` the target.

    Written as ``(y-f) * (q - [y < f])``, so at ``y == f`` the gradient is the one-sided one of ``y-f >= 0``.
    """
    d = target - input
    return reduce(d * (q - (d < 0).to(d.dtype)), reduction)


QUANTILE = LossSpec(
    name="quantile",
    aliases=("pinball",),
    summary="Pinball loss max(q*(target-input), (q-1)*(target-input)) per element, q in [0,1].",
    fn=quantile,
    inputs=_pair(),
    params=QuantileParams,
    check=_check_same_shape,
    reference="numpy float64 formula in the tests, gradcheck",
)


SPECS: tuple[LossSpec, ...] = (MSE, L1, SMOOTH_L1, HUBER, TUKEY, LOG_COSH, QUANTILE)
