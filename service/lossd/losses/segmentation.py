"""Segmentation and image losses: dice, tversky, total_variation."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from pydantic import Field

from lossd.losses._common import reduce
from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Reduced,
    Reduction,
    require_indices,
    require_min_ndim,
    require_ndim,
    require_shape,
    require_unit_interval,
    shape_str,
)

Activation = Literal["none", "sigmoid", "softmax"]
Over = Literal["all", "sample", "sample_class"]

# ---------------------------------------------------------------------------
# dice / tversky: shared preparation


def _probs_and_target(
    input: torch.Tensor, target: torch.Tensor, activation: Activation, include_background: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The activated prediction and the (one-hot) target, both (N,C',...) in the input's dtype.

    A floating target is taken as it is, a bool one shaped like the input as one-hot 0/1, an integer one
    as class indices over dim 1.
    """
    if activation == "sigmoid":
        p = torch.sigmoid(input)
    elif activation == "softmax":
        p = torch.softmax(input, dim=1)
    else:
        p = input
    if target.is_floating_point() or target.dtype == torch.bool:
        t = target.to(p.dtype)
    else:
        # One-hot over dim 1 by comparison: no kernel that could assert on a bad index.
        classes = torch.arange(input.shape[1], device=target.device).view(1, -1, *([1] * (input.dim() - 2)))
        t = (target.unsqueeze(1) == classes).to(p.dtype)
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]
    return p, t


def _sum_dims(x: torch.Tensor, over: Over) -> tuple[int, ...]:
    if over == "all":
        return tuple(range(x.dim()))
    if over == "sample":
        return tuple(range(1, x.dim()))
    return tuple(range(2, x.dim()))


def _group_sum(x: torch.Tensor, over: Over) -> torch.Tensor:
    dims = _sum_dims(x, over)
    # sum over an empty dim list means "sum everything" in torch: keep the elements as they are instead.
    return x.sum(dim=dims) if dims else x


def _reduce_groups(values: torch.Tensor, over: Over, reduction: Reduction) -> torch.Tensor:
    if over == "all":  # already one value, shape (): every reduction returns it
        return values
    return reduce(values, reduction)


class DiceParams(Reduced):
    activation: Activation = "none"
    eps: float = Field(1e-5, ge=0.0)
    smooth: float = Field(0.0, ge=0.0)
    over: Over = "all"
    include_background: bool = True


def dice(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: Activation = "none",
    eps: float = 1e-5,
    smooth: float = 0.0,
    over: Over = "all",
    include_background: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Soft Dice loss.

    ``p`` = ``input`` (activation "none"), ``sigmoid(input)`` or ``softmax(input, dim=1)``;
    ``t`` = ``target`` (probabilities / one-hot shaped like input; a bool one-hot is 0/1 in the input's
    dtype) or the one-hot encoding of integer indices (N,...) over dim 1. ``include_background=False``
    drops channel 0 of both.
    Per group ``1 - (2*sum(p*t) + smooth) / (sum(p) + sum(t) + smooth + eps)``, the sums over
    all elements (``over="all"``: one group, shape ()), per sample ((N)) or per (sample, class)
    ((N,C')); ``reduction`` averages or sums the groups, ``none`` returns them.
    """
    p, t = _probs_and_target(input, target, activation, include_background)
    inter = _group_sum(p * t, over)
    denom = _group_sum(p, over) + _group_sum(t, over)
    loss = 1 - (2 * inter + smooth) / (denom + smooth + eps)
    return _reduce_groups(loss, over, reduction)


class TverskyParams(DiceParams):
    alpha: float = Field(0.5, ge=0.0)
    beta: float = Field(0.5, ge=0.0)


def tversky(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.5,
    beta: float = 0.5,
    activation: Activation = "none",
    eps: float = 1e-5,
    smooth: float = 0.0,
    over: Over = "all",
    include_background: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Soft Tversky loss (Salehi et al. 2017), with dice's activation, target, grouping and reduction.

    Per group ``1 - (TP + smooth) / (TP + alpha*FP + beta*FN + smooth + eps)`` with
    ``TP = sum(p*t)``, ``FP = sum(p*(1-t))``, ``FN = sum((1-p)*t)``. alpha=beta=0.5 with
    smooth=eps=0 equals dice.
    """
    p, t = _probs_and_target(input, target, activation, include_background)
    tp = _group_sum(p * t, over)
    fp = _group_sum(p * (1 - t), over)
    fn = _group_sum((1 - p) * t, over)
    loss = 1 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth + eps)
    return _reduce_groups(loss, over, reduction)


def _check_overlap(inputs: Mapping[str, Any], p: DiceParams) -> None:
    x, t = inputs["input"], inputs["target"]
    require_min_ndim(x, "input", 2, "(N,C,...)")
    num_classes = x.shape[1]
    if num_classes < 1:
        raise InputError(("inputs", "input"), f"expected at least one channel in dim 1, got shape {shape_str(x)}")
    if not p.include_background and num_classes < 2:
        raise InputError(
            ("inputs", "input"),
            f"include_background=false drops channel 0 and needs at least 2 channels, got shape {shape_str(x)}",
        )
    if t.is_floating_point() or t.dtype == torch.bool:
        if t.shape != x.shape:
            # No dtype in the message: a bool one-hot arrives here already converted to the call's float dtype.
            raise InputError(
                ("inputs", "target"),
                f"expected probabilities / one-hot shaped like input {shape_str(x)}, or integer class indices "
                f"({x.shape[0]}{''.join(',' + str(s) for s in x.shape[2:])}), got a non-integer target "
                f"{shape_str(t)}",
            )
        if t.is_floating_point():  # a bool one-hot is 0/1 by its dtype
            require_unit_interval(t, "target", "target probabilities / one-hot values")
    else:
        if t.shape == x.shape:
            raise InputError(
                ("inputs", "target"),
                f"an integer target is read as class indices (N,...) and cannot have the input's shape "
                f"{shape_str(x)}; send one-hot / probability targets with a floating dtype",
            )
        require_shape(t, "target", (x.shape[0], *x.shape[2:]), "of integer class indices (N,...)")
        require_indices(t, "target", num_classes)


_OVERLAP_INPUTS = (
    Input("input", "float", "(N,C,d1..dk)", "probabilities, or logits (see activation)", differentiable=True),
    Input(
        "target",
        "onehot_or_index",
        "shaped like input (probabilities / one-hot in [0,1], or bool one-hot), or (N,d1..dk) class indices",
        "ground truth; indices are one-hot encoded over dim 1",
    ),
)

DICE = LossSpec(
    name="dice",
    summary="Soft Dice: 1 - (2*sum(p*t) + smooth) / (sum(p) + sum(t) + smooth + eps), over all elements, "
    "per sample or per (sample, class).",
    fn=dice,
    inputs=_OVERLAP_INPUTS,
    params=DiceParams,
    check=_check_overlap,
    reference="float64 formula in the tests (numpy); gradcheck on input",
)

TVERSKY = LossSpec(
    name="tversky",
    summary="Soft Tversky: 1 - (TP + smooth) / (TP + alpha*FP + beta*FN + smooth + eps), grouped like dice.",
    fn=tversky,
    inputs=_OVERLAP_INPUTS,
    params=TverskyParams,
    check=_check_overlap,
    reference="float64 formula in the tests (numpy); equals dice at alpha=beta=0.5, smooth=eps=0; gradcheck on input",
)


# ---------------------------------------------------------------------------
# total_variation


class TotalVariationParams(Reduced):
    norm: Literal["l1", "l2", "isotropic"] = "l1"


_ISO_EPS = 1e-8


def total_variation(
    input: torch.Tensor, *, norm: Literal["l1", "l2", "isotropic"] = "l1", reduction: Reduction = "mean"
) -> torch.Tensor:
    """Total variation of images (N,C,H,W), or of one image (C,H,W).

    Per image: ``l1`` ``sum |x[h+1,w]-x[h,w]| + sum |x[h,w+1]-x[h,w]|`` (``tf.image.total_variation``),
    ``l2`` the same with squared differences, ``isotropic``
    ``sum_{c,h<H-1,w<W-1} sqrt(dv^2 + dh^2 + 1e-8)`` with ``dv = x[c,h+1,w]-x[c,h,w]`` and
    ``dh = x[c,h,w+1]-x[c,h,w]``. ``reduction`` averages or sums the images; ``none`` gives (N),
    or (1) for a (C,H,W) input.
    """
    x = input.unsqueeze(0) if input.dim() == 3 else input
    dv = x[:, :, 1:, :] - x[:, :, :-1, :]
    dh = x[:, :, :, 1:] - x[:, :, :, :-1]
    if norm == "l1":
        per_image = dv.abs().sum(dim=(1, 2, 3)) + dh.abs().sum(dim=(1, 2, 3))
    elif norm == "l2":
        per_image = dv.square().sum(dim=(1, 2, 3)) + dh.square().sum(dim=(1, 2, 3))
    else:
        grid = dv[:, :, :, :-1].square() + dh[:, :, :-1, :].square()
        per_image = torch.sqrt(grid + _ISO_EPS).sum(dim=(1, 2, 3))
    return reduce(per_image, reduction)


def _check_total_variation(inputs: Mapping[str, Any], _p: TotalVariationParams) -> None:
    require_ndim(inputs["input"], "input", (3, 4), "of images (N,C,H,W) or one image (C,H,W)")


TOTAL_VARIATION = LossSpec(
    name="total_variation",
    aliases=("tv",),
    summary="Total variation per image: sum of |vertical| + |horizontal| neighbour differences (l1), "
    "squared (l2), or sqrt(dv^2 + dh^2 + 1e-8) per pixel (isotropic).",
    fn=total_variation,
    inputs=(Input("input", "float", "(N,C,H,W) or (C,H,W)", "images", differentiable=True),),
    params=TotalVariationParams,
    check=_check_total_variation,
    reference="float64 formula in the tests (numpy; l1 as tf.image.total_variation's documented formula, NHWC); "
    "gradcheck on input",
)


SPECS: tuple[LossSpec, ...] = (DICE, TVERSKY, TOTAL_VARIATION)
