"""Classification and probabilistic losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Reduced,
    Reduction,
    require_indices,
    require_min_ndim,
    require_ndim,
    require_same_shape,
    require_shape,
)


def _check_class_target(inputs: Mapping[str, Any], ignore_index: int | None, allow_probs: bool) -> None:
    """(N,C[,d..]) logits with (N[,d..]) indices, or probabilities shaped like the input."""
    x, t = inputs["input"], inputs["target"]
    require_min_ndim(x, "input", 1, "of logits (N,C) or (N,C,d1..dk)")
    if x.dim() == 1:  # torch accepts a single unbatched sample (C)
        num_classes = x.shape[0]
        idx_shape: tuple[int, ...] = ()
    else:
        num_classes = x.shape[1]
        idx_shape = (x.shape[0], *x.shape[2:])
    if t.is_floating_point():
        if not allow_probs:
            raise InputError(("inputs", "target"), "expected integer class indices")
        require_same_shape(x, t, "input", "target")
    else:
        require_shape(t, "target", idx_shape, "of class indices")
        require_indices(t, "target", num_classes, ignore_index)
    w = inputs.get("weight")
    if w is not None:
        require_shape(w, "weight", (num_classes,), "(one weight per class)")


# ---------------------------------------------------------------------------
# cross_entropy


class CrossEntropyParams(Reduced):
    ignore_index: int = -100
    label_smoothing: float = Field(0.0, ge=0.0, le=1.0)


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Softmax cross entropy, exactly ``torch.nn.functional.cross_entropy``.

    ``loss_n = -w[y_n] * log softmax(x_n)[y_n]`` for index targets (weighted mean over
    non-ignored samples), ``-sum_c w_c t_nc log softmax(x_n)_c`` for probability targets.
    """
    return F.cross_entropy(
        input, target, weight=weight, ignore_index=ignore_index, reduction=reduction, label_smoothing=label_smoothing
    )


def _check_cross_entropy(inputs: Mapping[str, Any], p: CrossEntropyParams) -> None:
    _check_class_target(inputs, p.ignore_index, allow_probs=True)
    t = inputs["target"]
    if t.is_floating_point() and t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise InputError(("inputs", "target"), "expected class probabilities in [0, 1]")


CROSS_ENTROPY = LossSpec(
    name="cross_entropy",
    aliases=("softmax_cross_entropy", "softmax_loss", "categorical_cross_entropy", "sparse_categorical_cross_entropy"),
    summary="Softmax cross entropy over dim 1: -log softmax(input)[target], or -sum t*log softmax(input) "
    "for probability targets (torch.nn.functional.cross_entropy).",
    fn=cross_entropy,
    inputs=(
        Input("input", "float", "(N,C) or (N,C,d1..dk)", "logits", differentiable=True),
        Input("target", "float_or_index", "(N) / (N,d1..dk) indices, or probabilities shaped like input"),
        Input("weight", "float", "(C)", "per-class weight", required=False),
    ),
    params=CrossEntropyParams,
    check=_check_cross_entropy,
    reference="torch.nn.functional.cross_entropy",
)


# ---------------------------------------------------------------------------
# focal


class FocalParams(Reduced):
    gamma: float = Field(2.0, ge=0.0)
    alpha: float | list[float] | None = None
    ignore_index: int = -100


def focal(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | list[float] | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Softmax focal loss (Lin et al. 2017), multi-class.

    Per element ``-a_t * (1 - p_t)^gamma * log(p_t)``, ``p_t`` the softmax probability of
    the target class over dim 1, ``a_t`` 1, ``alpha``, or ``alpha[t]``. ``mean`` divides by
    the count of non-ignored elements (not by the alpha weights, unlike cross_entropy);
    ignored elements are 0 under ``none``.
    """
    logp = F.log_softmax(input, dim=1 if input.dim() > 1 else 0)
    valid = target != ignore_index
    safe_t = torch.where(valid, target, torch.zeros_like(target))
    if input.dim() == 1:
        logp_t = logp.gather(0, safe_t.reshape(1)).reshape(())
    else:
        logp_t = logp.gather(1, safe_t.unsqueeze(1)).squeeze(1)
    p_t = logp_t.exp()
    loss = -((1 - p_t).clamp(min=0) ** gamma) * logp_t
    if isinstance(alpha, list):
        a = torch.tensor(alpha, dtype=loss.dtype, device=loss.device)
        loss = loss * a[safe_t]
    elif alpha is not None:
        loss = loss * alpha
    loss = torch.where(valid, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / valid.sum()


def _check_focal(inputs: Mapping[str, Any], p: FocalParams) -> None:
    x = inputs["input"]
    require_min_ndim(x, "input", 1)
    _check_class_target(inputs, p.ignore_index, allow_probs=False)
    if isinstance(p.alpha, list):
        c = x.shape[1] if x.dim() > 1 else x.shape[0]
        if len(p.alpha) != c:
            raise InputError(("params", "alpha"), f"expected {c} per-class weights (one per class), got {len(p.alpha)}")


FOCAL = LossSpec(
    name="focal",
    aliases=("softmax_focal",),
    summary="Softmax focal loss: -a_t * (1-p_t)^gamma * log(p_t) per element, mean over non-ignored elements.",
    fn=focal,
    inputs=(
        Input("input", "float", "(N,C) or (N,C,d1..dk)", "logits", differentiable=True),
        Input("target", "index", "(N) or (N,d1..dk)", "class indices"),
    ),
    params=FocalParams,
    check=_check_focal,
    reference="float64 formula in the tests; equals cross_entropy at gamma=0, alpha=null",
)


SPECS: tuple[LossSpec, ...] = (CROSS_ENTROPY, FOCAL)

__all__ = ["SPECS", "cross_entropy", "focal", "require_ndim"]
