"""Margin (hinge-type) and exponential classification losses.

Formula rows (hinge, squared_hinge, categorical_hinge, exponential) are written here;
torch rows (multi_margin, soft_margin, multilabel_soft_margin, multilabel_margin,
hinge_embedding) are ``torch.nn.functional`` with its own target rules, plus the host
checks that keep anything torch would raise on (or a CUDA kernel assert on) a 422.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from lossd.losses._common import reduce
from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Reduced,
    Reduction,
    require_broadcastable,
    require_ndim,
    require_same_shape,
    require_shape,
    require_values_in,
    shape_str,
    signed_labels,
)

# A finite margin (NaN or infinity is a 422, not a NaN loss).
_MARGIN = Field(1.0, allow_inf_nan=False)


# ---------------------------------------------------------------------------
# Shared helpers


def _signed_on_device(t: torch.Tensor) -> torch.Tensor:
    """{0,1} targets (every value 0 or 1 and at least one 0) mapped to 2t-1, others as they are.

    The host check (:func:`lossd.spec.signed_labels`) has already rejected anything that is
    neither {-1,1} nor {0,1}; this is the same decision as tensor ops, with no host sync.
    """
    is_01 = ((t == 0) | (t == 1)).all() & (t == 0).any()
    return torch.where(is_01, 2 * t - 1, t)


def _check_signed_elementwise(inputs: Mapping[str, Any], _p: Any) -> None:
    """Scores of any shape; target broadcastable to them, in {-1,1} or {0,1} (mapped)."""
    x, t = inputs["input"], inputs["target"]
    require_broadcastable(t, "target", x.shape)
    signed_labels(t, "target")


def _check_target_elementwise(inputs: Mapping[str, Any], _p: Any) -> None:
    """Torch element-wise rows: target broadcastable to the input's shape (values as torch takes them)."""
    require_broadcastable(inputs["target"], "target", inputs["input"].shape)


def _check_matrix(x: torch.Tensor, name: str = "input") -> int:
    """(N,C) or an unbatched (C) with C >= 1 (torch's multi-margin kernels reject anything else); returns C."""
    require_ndim(x, name, (1, 2), "of scores (N,C) or (C)")
    c = x.shape[-1]
    if c == 0:
        raise InputError(("inputs", name), f"expected at least one class, got shape {shape_str(x)}")
    return c


# ---------------------------------------------------------------------------
# hinge / squared_hinge


class HingeParams(Reduced):
    margin: float = _MARGIN
    squared: bool = False


class SquaredHingeParams(Reduced):
    margin: float = _MARGIN


def hinge(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    margin: float = 1.0,
    squared: bool = False,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Hinge loss per element: ``max(0, margin - y*f)``, squared when ``squared``.

    ``y`` in {-1,1}; {0,1} targets (all 0 or 1, at least one 0) become ``2y-1``.
    """
    y = _signed_on_device(target)
    loss = torch.clamp(margin - y * input, min=0)
    if squared:
        loss = loss * loss
    return reduce(loss, reduction)


def squared_hinge(
    input: torch.Tensor, target: torch.Tensor, *, margin: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Squared hinge per element: ``max(0, margin - y*f)^2`` (hinge with squared=true)."""
    return hinge(input, target, margin=margin, squared=True, reduction=reduction)


_SIGNED_INPUTS = (
    Input("input", "float", "any", "scores", differentiable=True),
    Input("target", "float", "same as input (or broadcastable to it)", "labels in {-1,1}, or {0,1} mapped to 2t-1"),
)

HINGE = LossSpec(
    name="hinge",
    summary="Hinge loss max(0, margin - y*f) per element (squared=true: its square); {0,1} targets map to 2t-1.",
    fn=hinge,
    inputs=_SIGNED_INPUTS,
    params=HingeParams,
    check=_check_signed_elementwise,
    reference="float64 formula in the tests",
)

SQUARED_HINGE = LossSpec(
    name="squared_hinge",
    summary="Squared hinge loss max(0, margin - y*f)^2 per element; {0,1} targets map to 2t-1.",
    fn=squared_hinge,
    inputs=_SIGNED_INPUTS,
    params=SquaredHingeParams,
    check=_check_signed_elementwise,
    reference="float64 formula in the tests",
)


# ---------------------------------------------------------------------------
# exponential


def exponential(input: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Exponential (AdaBoost) loss per element: ``exp(-y*f)``; {0,1} targets become ``2y-1``."""
    y = _signed_on_device(target)
    return reduce(torch.exp(-y * input), reduction)


EXPONENTIAL = LossSpec(
    name="exponential",
    aliases=("adaboost",),
    summary="Exponential (AdaBoost) loss exp(-y*f) per element; {0,1} targets map to 2t-1.",
    fn=exponential,
    inputs=_SIGNED_INPUTS,
    params=Reduced,
    check=_check_signed_elementwise,
    reference="float64 formula in the tests",
)


# ---------------------------------------------------------------------------
# categorical_hinge


def categorical_hinge(input: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Keras 3 categorical hinge per sample: ``max(0, 1 + max_j((1-t_j)*f_j) - sum_j t_j*f_j)``.

    With a one-hot ``t`` the true class contributes 0 to the max, so the max is never below 0.
    ``none`` gives shape (N).
    """
    pos = (target * input).sum(dim=-1)
    neg = ((1 - target) * input).amax(dim=-1)
    return reduce(torch.clamp(neg - pos + 1, min=0), reduction)


def _check_categorical_hinge(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    require_ndim(x, "input", 2, "of scores (N,C)")
    if x.shape[1] == 0:
        raise InputError(("inputs", "input"), f"expected at least one class, got shape {shape_str(x)}")
    require_same_shape(x, t, "input", "target")
    require_values_in(t, "target", (0, 1))
    if t.numel() and not bool((t.sum(dim=1) == 1).all()):
        raise InputError(("inputs", "target"), "expected one-hot rows (exactly one 1 per sample)")


CATEGORICAL_HINGE = LossSpec(
    name="categorical_hinge",
    summary="Keras categorical hinge max(0, 1 + max_j((1-t_j)*f_j) - sum_j t_j*f_j) per sample.",
    fn=categorical_hinge,
    inputs=(
        Input("input", "float", "(N,C)", "scores", differentiable=True),
        Input("target", "float", "(N,C)", "one-hot labels"),
    ),
    params=Reduced,
    check=_check_categorical_hinge,
    reference="float64 formula (Keras 3 code) in the tests",
)


# ---------------------------------------------------------------------------
# multi_margin


class MultiMarginParams(Reduced):
    p: Literal[1, 2] = 1
    margin: float = _MARGIN

    @field_validator("p", mode="before")
    @classmethod
    def _not_a_boolean(cls, v: object) -> object:
        if isinstance(v, bool):  # true == 1 would pass the Literal, even in strict mode
            raise ValueError("expected 1 or 2, not a boolean")
        return v


def multi_margin(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    p: int = 1,
    margin: float = 1.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Multi-class hinge, ``torch.nn.functional.multi_margin_loss``.

    ``loss_n = sum_{j != y} w[y] * max(0, margin - x[y] + x[j])^p / C``; mean over samples.
    An empty batch is reduced here from torch's ``none`` values (torch's own mean or sum of it
    is garbage); otherwise torch reduces, so that the bits are torch's.
    """
    if input.numel() == 0:
        loss = F.multi_margin_loss(input, target, p=p, margin=margin, weight=weight, reduction="none")
        return reduce(loss, reduction)
    return F.multi_margin_loss(input, target, p=p, margin=margin, weight=weight, reduction=reduction)


def _check_multi_margin(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    c = _check_matrix(x)
    n = x.shape[0] if x.dim() == 2 else 1
    if x.dim() == 2:
        require_shape(t, "target", (n,), "of class indices (N)")
    elif t.dim() > 1 or t.numel() != 1:
        raise InputError(
            ("inputs", "target"), f"expected one class index () or (1) for a (C) input, got {shape_str(t)}"
        )
    if t.numel() and not bool(((t >= 0) & (t < c)).all()):
        bad = t[(t < 0) | (t >= c)][0].item()
        raise InputError(("inputs", "target"), f"class index {bad} out of range [0, {c})")
    w = inputs.get("weight")
    if w is not None:
        require_shape(w, "weight", (c,), "(one weight per class)")


MULTI_MARGIN = LossSpec(
    name="multi_margin",
    aliases=("multiclass_hinge",),
    summary="Multi-class hinge sum_{j!=y} w[y]*max(0, margin - x[y] + x[j])^p / C per sample "
    "(torch.nn.functional.multi_margin_loss).",
    fn=multi_margin,
    inputs=(
        Input("input", "float", "(N,C) or (C)", "scores", differentiable=True),
        Input("target", "index", "(N)", "class indices in [0, C)"),
        Input("weight", "float", "(C)", "per-class weight", required=False),
    ),
    params=MultiMarginParams,
    check=_check_multi_margin,
    reference="torch.nn.functional.multi_margin_loss",
)


# ---------------------------------------------------------------------------
# soft_margin


def soft_margin(input: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Two-class logistic loss per element, ``torch.nn.functional.soft_margin_loss``: ``log(1 + exp(-y*x))``.

    Targets are used as given (torch's rules: no {0,1} mapping).
    """
    return F.soft_margin_loss(input, target, reduction=reduction)


SOFT_MARGIN = LossSpec(
    name="soft_margin",
    summary="Soft margin (logistic) loss log(1 + exp(-y*x)) per element (torch.nn.functional.soft_margin_loss).",
    fn=soft_margin,
    inputs=(
        Input("input", "float", "any", "scores", differentiable=True),
        Input("target", "float", "same as input (or broadcastable to it)", "labels in {-1,1}"),
    ),
    params=Reduced,
    check=_check_target_elementwise,
    reference="torch.nn.functional.soft_margin_loss",
)


# ---------------------------------------------------------------------------
# multilabel_soft_margin


def multilabel_soft_margin(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Multi-label one-vs-all logistic loss, ``torch.nn.functional.multilabel_soft_margin_loss``.

    ``loss_n = -1/C * sum_c w_c * (y_c*log s(x_c) + (1-y_c)*log s(-x_c))``; ``none`` gives (N).
    """
    return F.multilabel_soft_margin_loss(input, target, weight=weight, reduction=reduction)


def _check_multilabel_soft_margin(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    c = _check_matrix(x)
    require_same_shape(x, t, "input", "target")
    w = inputs.get("weight")
    if w is not None:
        require_shape(w, "weight", (c,), "(one weight per class)")


MULTILABEL_SOFT_MARGIN = LossSpec(
    name="multilabel_soft_margin",
    summary="Multi-label logistic loss -mean_c w_c*(y_c*log s(x_c) + (1-y_c)*log s(-x_c)) per sample "
    "(torch.nn.functional.multilabel_soft_margin_loss).",
    fn=multilabel_soft_margin,
    inputs=(
        Input("input", "float", "(N,C) or (C)", "logits", differentiable=True),
        Input("target", "float", "(N,C) or (C)", "labels in {0,1}"),
        Input("weight", "float", "(C)", "per-class weight", required=False),
    ),
    params=Reduced,
    check=_check_multilabel_soft_margin,
    reference="torch.nn.functional.multilabel_soft_margin_loss",
)


# ---------------------------------------------------------------------------
# multilabel_margin


def multilabel_margin(input: torch.Tensor, target: torch.Tensor, *, reduction: Reduction = "mean") -> torch.Tensor:
    """Multi-label hinge, ``torch.nn.functional.multilabel_margin_loss``.

    ``loss_n = sum_{j in Y} sum_{i not in Y} max(0, 1 - (x[j] - x[i])) / C``, ``Y`` the target
    indices before the first -1. An empty batch is reduced here from torch's ``none`` values
    (torch's own mean or sum of it is garbage); otherwise torch reduces, so that the bits are torch's.
    """
    if input.numel() == 0:
        return reduce(F.multilabel_margin_loss(input, target, reduction="none"), reduction)
    return F.multilabel_margin_loss(input, target, reduction=reduction)


def _multilabel_comparisons(inputs: Mapping[str, Any]) -> int:
    """torch compares every label with every class: labels * C steps per sample."""
    x, t = inputs["input"], inputs["target"]
    return int((t >= 0).sum().item()) * (x.shape[-1] if x.dim() else 1)


def _check_multilabel_margin(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    c = _check_matrix(x)
    require_same_shape(x, t, "input", "target")
    if t.numel() and not bool(((t >= -1) & (t < c)).all()):
        bad = t[(t < -1) | (t >= c)][0].item()
        raise InputError(("inputs", "target"), f"class index {bad} out of range [0, {c}) (or -1 padding)")
    work = _multilabel_comparisons(inputs)
    if work > MAX_MULTILABEL_WORK:
        raise InputError(
            ("inputs", "target"),
            f"{work} label-class comparisons (labels * C) is over the limit of {MAX_MULTILABEL_WORK} per call; "
            "split the call",
            status=413,
        )


MAX_MULTILABEL_WORK = 1 << 30  # about 2 s on one CPU core (measured: 2^32 took 7.7 s)

MULTILABEL_MARGIN = LossSpec(
    name="multilabel_margin",
    summary="Multi-label hinge sum_{j in Y, i not in Y} max(0, 1 - (x[j] - x[i])) / C per sample, targets -1 padded "
    "(torch.nn.functional.multilabel_margin_loss).",
    fn=multilabel_margin,
    inputs=(
        Input("input", "float", "(N,C) or (C)", "scores", differentiable=True),
        Input("target", "index", "(N,C) or (C)", "class indices in [0, C), padded with -1 after the last"),
    ),
    params=Reduced,
    check=_check_multilabel_margin,
    reference="torch.nn.functional.multilabel_margin_loss",
    work=lambda inputs: _multilabel_comparisons(inputs) / MAX_MULTILABEL_WORK,
)


# ---------------------------------------------------------------------------
# hinge_embedding


class HingeEmbeddingParams(Reduced):
    margin: float = _MARGIN


def hinge_embedding(
    input: torch.Tensor, target: torch.Tensor, *, margin: float = 1.0, reduction: Reduction = "mean"
) -> torch.Tensor:
    """Hinge embedding loss, ``torch.nn.functional.hinge_embedding_loss``.

    Per element ``x`` where ``y == 1`` and ``max(0, margin - x)`` where ``y == -1``.
    """
    return F.hinge_embedding_loss(input, target, margin=margin, reduction=reduction)


HINGE_EMBEDDING = LossSpec(
    name="hinge_embedding",
    summary="Hinge embedding loss: x where y=1, max(0, margin - x) where y=-1, per element "
    "(torch.nn.functional.hinge_embedding_loss).",
    fn=hinge_embedding,
    inputs=(
        Input("input", "float", "any", "distances", differentiable=True),
        Input("target", "float", "same as input (or broadcastable to it)", "labels in {-1,1}"),
    ),
    params=HingeEmbeddingParams,
    check=_check_target_elementwise,
    reference="torch.nn.functional.hinge_embedding_loss",
)


SPECS: tuple[LossSpec, ...] = (
    HINGE,
    SQUARED_HINGE,
    CATEGORICAL_HINGE,
    MULTI_MARGIN,
    EXPONENTIAL,
    SOFT_MARGIN,
    MULTILABEL_SOFT_MARGIN,
    MULTILABEL_MARGIN,
    HINGE_EMBEDDING,
)

__all__ = [
    "SPECS",
    "categorical_hinge",
    "exponential",
    "hinge",
    "hinge_embedding",
    "multi_margin",
    "multilabel_margin",
    "multilabel_soft_margin",
    "soft_margin",
    "squared_hinge",
]
