"""Regression losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from lossd.spec import Input, LossSpec, Reduced, Reduction, require_same_shape


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


def _check_same_shape(inputs: Mapping[str, Any], _p: Any) -> None:
    require_same_shape(inputs["input"], inputs["target"], "input", "target")


MSE = LossSpec(
    name="mse",
    aliases=("l2", "mean_squared_error"),
    summary="Squared error (input-target)^2 per element (torch.nn.functional.mse_loss); half=true halves it.",
    fn=mse,
    inputs=(
        Input("input", "float", "any", "prediction", differentiable=True),
        Input("target", "float", "same as input", "ground truth", differentiable=True),
    ),
    params=MSEParams,
    check=_check_same_shape,
    reference="torch.nn.functional.mse_loss",
)

SPECS: tuple[LossSpec, ...] = (MSE,)
