"""Classification and probabilistic losses."""

from __future__ import annotations

import math
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
    Params,
    Reduced,
    Reduction,
    loc,
    require_broadcastable,
    require_indices,
    require_min_ndim,
    require_ndim,
    require_same_shape,
    require_shape,
    require_values_in,
    shape_str,
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


_REDUCTION_ENUM = {"none": 0, "mean": 1, "sum": 2}  # ATen's Reduction
_nll_forward = torch.ops.aten.nll_loss_forward.default
_nll_backward = torch.ops.aten.nll_loss_backward.default


def cross_entropy_value_and_grad(
    grad: tuple[str, ...],
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]] | None:
    """Value and input gradient of :func:`cross_entropy` for (N,C) logits and (N) class indices
    without label smoothing: the kernels F.cross_entropy and its autograd graph run, called
    directly (log_softmax, nll_loss; then nll_loss's backward and log_softmax's), so the same
    bits in about 60% of the time. Anything else: None.

    ``d loss / d x = (softmax(x) - onehot(y)) * w[y] / (sum of w[y] over non-ignored samples for mean)``.
    """
    if grad != ("input",) or label_smoothing != 0.0 or input.dim() != 2 or target.dim() != 1:
        return None
    if target.is_floating_point() or input.shape[0] == 0:
        return None
    r = _REDUCTION_ENUM[reduction]
    log_p = torch._log_softmax(input, 1, False)
    value, total_weight = _nll_forward(log_p, target, weight, r, ignore_index)
    # The loss is summed before differentiation (for "none" too): a gradient of ones.
    d_log_p = _nll_backward(torch.ones_like(value), log_p, target, weight, r, ignore_index, total_weight)
    return value, {"input": torch._log_softmax_backward_data(d_log_p, log_p, 1, input.dtype)}


def _check_cross_entropy(inputs: Mapping[str, Any], p: CrossEntropyParams) -> None:
    _check_class_target(inputs, p.ignore_index, allow_probs=True)
    t = inputs["target"]
    if t.is_floating_point():
        if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
            raise InputError(("inputs", "target"), "expected class probabilities in [0, 1]")
        if p.ignore_index >= 0:  # torch raises for probability targets with a non-negative ignore_index
            raise InputError(
                ("params", "ignore_index"),
                f"ignore_index={p.ignore_index} is not supported with probability targets (use a negative value)",
            )


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
    value_and_grad=cross_entropy_value_and_grad,
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
    base = (1 - p_t).clamp(min=0)
    if gamma == 0:
        w = torch.ones_like(base)
    else:
        # Where p_t rounds to 1 the term and its true derivative are 0, but for gamma < 1 the
        # derivative of base**gamma at 0 is infinite and would make the gradient NaN.
        live = base > 0
        w = torch.where(live, torch.where(live, base, 1) ** gamma, 0)
    loss = -w * logp_t
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


# ---------------------------------------------------------------------------
# Local host-side helpers


def _require_probabilities(t: torch.Tensor, name: str, what: str = "probabilities") -> None:
    """Values in [0, 1]; NaN is rejected too (require_unit_interval, with a message that names the input)."""
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        bad = t[~((t >= 0) & (t <= 1))][0].item()
        raise InputError(loc(name), f"expected {what} in [0, 1], got {bad}")


def _require_positive(t: torch.Tensor, name: str, what: str) -> None:
    if t.numel() and not bool((t > 0).all()):
        bad = t[~(t > 0)][0].item()
        raise InputError(loc(name), f"expected {what} > 0, got {bad}")


def _require_optional_broadcastable(inputs: Mapping[str, Any], name: str, to: torch.Size) -> None:
    t = inputs.get(name)
    if t is not None:
        require_broadcastable(t, name, to)


# ---------------------------------------------------------------------------
# nll


class NLLParams(Reduced):
    ignore_index: int = -100


def nll(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Negative log likelihood, exactly ``torch.nn.functional.nll_loss``.

    ``loss_n = -w[y_n] * input[n, y_n]`` (input holds log-probabilities over dim 1); ``mean``
    divides by the sum of the weights of the non-ignored elements; ignored elements are 0.
    """
    return F.nll_loss(input, target, weight=weight, ignore_index=ignore_index, reduction=reduction)


def _check_nll(inputs: Mapping[str, Any], p: NLLParams) -> None:
    _check_class_target(inputs, p.ignore_index, allow_probs=False)


NLL = LossSpec(
    name="nll",
    aliases=("negative_log_likelihood",),
    summary="Negative log likelihood -w[target] * input[target] over dim 1 of log-probabilities, weighted mean over "
    "non-ignored elements (torch.nn.functional.nll_loss).",
    fn=nll,
    inputs=(
        Input("input", "float", "(N,C) or (N,C,d1..dk)", "log-probabilities", differentiable=True),
        Input("target", "index", "(N) or (N,d1..dk)", "class indices"),
        Input("weight", "float", "(C)", "per-class weight", required=False),
    ),
    params=NLLParams,
    check=_check_nll,
    reference="torch.nn.functional.nll_loss",
)


# ---------------------------------------------------------------------------
# binary_cross_entropy


def binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Binary cross entropy on probabilities, exactly ``torch.nn.functional.binary_cross_entropy``.

    ``-w * (y * log(p) + (1 - y) * log(1 - p))`` per element, each log clamped at -100.
    """
    return F.binary_cross_entropy(input, target, weight=weight, reduction=reduction)


def _check_bce(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    require_same_shape(x, t, "input", "target")
    _require_probabilities(x, "input")
    _require_probabilities(t, "target", "target probabilities")
    _require_optional_broadcastable(inputs, "weight", x.shape)


BINARY_CROSS_ENTROPY = LossSpec(
    name="binary_cross_entropy",
    aliases=("bce",),
    summary="Binary cross entropy on probabilities: -w*(y*log p + (1-y)*log(1-p)) per element, logs clamped at -100 "
    "(torch.nn.functional.binary_cross_entropy).",
    fn=binary_cross_entropy,
    inputs=(
        Input("input", "float", "any", "probabilities in [0, 1]", differentiable=True),
        Input("target", "float", "same as input", "target probabilities in [0, 1]"),
        Input("weight", "float", "broadcastable to input", "per-element weight", required=False),
    ),
    params=Reduced,
    check=_check_bce,
    reference="torch.nn.functional.binary_cross_entropy",
)


# ---------------------------------------------------------------------------
# binary_cross_entropy_with_logits


def binary_cross_entropy_with_logits(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    pos_weight: torch.Tensor | None = None,
    *,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Sigmoid cross entropy, exactly ``torch.nn.functional.binary_cross_entropy_with_logits``.

    ``-w * (pw * y * log s(x) + (1 - y) * log(1 - s(x)))`` per element, computed stably from the logits.
    """
    return F.binary_cross_entropy_with_logits(input, target, weight=weight, pos_weight=pos_weight, reduction=reduction)


def _check_bce_with_logits(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    require_same_shape(x, t, "input", "target")
    _require_optional_broadcastable(inputs, "weight", x.shape)
    _require_optional_broadcastable(inputs, "pos_weight", x.shape)


BINARY_CROSS_ENTROPY_WITH_LOGITS = LossSpec(
    name="binary_cross_entropy_with_logits",
    aliases=("sigmoid_cross_entropy", "logistic"),
    summary="Sigmoid cross entropy on logits: -w*(pw*y*log s(x) + (1-y)*log(1-s(x))) per element "
    "(torch.nn.functional.binary_cross_entropy_with_logits).",
    fn=binary_cross_entropy_with_logits,
    inputs=(
        Input("input", "float", "any", "logits", differentiable=True),
        Input("target", "float", "same as input", "targets"),
        Input("weight", "float", "broadcastable to input", "per-element weight", required=False),
        Input(
            "pos_weight",
            "float",
            "broadcastable to input, e.g. (C) over the last dim",
            "weight of positives",
            required=False,
        ),
    ),
    params=Reduced,
    check=_check_bce_with_logits,
    reference="torch.nn.functional.binary_cross_entropy_with_logits",
)


# ---------------------------------------------------------------------------
# balanced_binary_cross_entropy


class BalancedBCEParams(Reduced):
    beta: float | None = Field(None, ge=0.0, le=1.0)


def balanced_binary_cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Class-balanced sigmoid cross entropy (HED, Xie & Tu 2015).

    Per element ``-b * y * log s(x) - (1 - b) * (1 - y) * log(1 - s(x))``, computed as
    ``b * y * softplus(-x) + (1 - b) * (1 - y) * softplus(x)``. ``b`` is ``beta``, or when
    null, per sample (index along dim 0) the fraction of that sample's target elements that
    are 0. ``mean`` averages over all elements; ``none`` has the input's shape.
    """
    if beta is None:
        if input.dim() <= 1:  # one element per sample
            b = 1.0 - target
        else:
            frac_zero = (1.0 - target).flatten(1).mean(dim=1)
            b = frac_zero.reshape((-1,) + (1,) * (input.dim() - 1))
        loss = b * target * F.softplus(-input) + (1.0 - b) * (1.0 - target) * F.softplus(input)
    else:
        loss = beta * target * F.softplus(-input) + (1.0 - beta) * (1.0 - target) * F.softplus(input)
    return reduce(loss, reduction)


def _check_binary_target(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t = inputs["input"], inputs["target"]
    require_same_shape(x, t, "input", "target")
    require_values_in(t, "target", (0, 1))


def _check_balanced_bce(inputs: Mapping[str, Any], p: BalancedBCEParams) -> None:
    require_min_ndim(inputs["input"], "input", 1, "(N,...)")
    _check_binary_target(inputs, p)


BALANCED_BINARY_CROSS_ENTROPY = LossSpec(
    name="balanced_binary_cross_entropy",
    aliases=("balanced_sigmoid_cross_entropy",),
    summary="Class-balanced sigmoid cross entropy -b*y*log s(x) - (1-b)*(1-y)*log(1-s(x)), b = beta or per sample "
    "the fraction of zero targets (HED); mean over elements.",
    fn=balanced_binary_cross_entropy,
    inputs=(
        Input("input", "float", "(N,...)", "logits", differentiable=True),
        Input("target", "float", "same as input", "labels in {0, 1}"),
    ),
    params=BalancedBCEParams,
    check=_check_balanced_bce,
    reference="float64 formula in the tests; with beta=0.5 equals half of binary_cross_entropy_with_logits",
)


# ---------------------------------------------------------------------------
# sigmoid_focal


class SigmoidFocalParams(Reduced):
    alpha: float = 0.25
    gamma: float = Field(2.0, ge=0.0)

    @field_validator("alpha")
    @classmethod
    def _alpha_range(cls, v: float) -> float:
        if v != -1 and not 0.0 <= v <= 1.0:
            raise ValueError("alpha must be in [0, 1], or -1 for no alpha weighting")
        return v


def sigmoid_focal(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet), ``torchvision.ops.sigmoid_focal_loss`` with default reduction mean.

    Per element ``a_t * (1 - p_t)^gamma * BCEWithLogits(x, y)``, ``p_t = p*y + (1-p)*(1-y)``,
    ``p = s(x)``, ``a_t = alpha*y + (1-alpha)*(1-y)`` (1 when alpha = -1). ``1 - p_t`` is
    computed as ``s(x)*(1-y) + s(-x)*y`` (the same value, without cancellation).
    """
    ce = F.binary_cross_entropy_with_logits(input, target, reduction="none")
    one_minus_pt = torch.sigmoid(input) * (1.0 - target) + torch.sigmoid(-input) * target
    if gamma == 0:
        loss = ce
    else:
        # As in focal: where 1 - p_t underflows to 0 (|x| > ~104 in float32) the term and its true
        # derivative are 0, but for gamma < 1 the derivative of base**gamma at 0 is infinite (NaN).
        live = one_minus_pt > 0
        loss = ce * torch.where(live, torch.where(live, one_minus_pt, 1) ** gamma, 0)
    if alpha >= 0:
        loss = (alpha * target + (1.0 - alpha) * (1.0 - target)) * loss
    return reduce(loss, reduction)


SIGMOID_FOCAL = LossSpec(
    name="sigmoid_focal",
    aliases=("binary_focal", "retinanet_focal"),
    summary="Sigmoid focal loss a_t*(1-p_t)^gamma*BCEWithLogits(x,y) per element, p = sigmoid(x) "
    "(torchvision.ops.sigmoid_focal_loss, default reduction mean).",
    fn=sigmoid_focal,
    inputs=(
        Input("input", "float", "any", "logits", differentiable=True),
        Input("target", "float", "same as input", "labels in {0, 1}"),
    ),
    params=SigmoidFocalParams,
    check=_check_binary_target,
    reference="float64 formula in the tests, transcribed from torchvision.ops.sigmoid_focal_loss",
)


# ---------------------------------------------------------------------------
# kl_div


class KLDivParams(Params):
    log_target: bool = False
    reduction: Literal["batchmean", "mean", "sum", "none"] = "batchmean"


def kl_div(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_target: bool = False,
    reduction: Literal["batchmean", "mean", "sum", "none"] = "batchmean",
) -> torch.Tensor:
    """Kullback-Leibler divergence, exactly the values of ``torch.nn.functional.kl_div``.

    Pointwise ``xlogy(t, t) - t * x`` (so ``0 - 0 * x`` where ``t == 0``: 0, or NaN for an
    infinite ``x``, as torch), or ``exp(t) * (t - x)`` when ``log_target``; ``x`` holds
    log-probabilities. ``batchmean`` divides the sum by ``input.shape[0]`` (of a 0-d input: the
    sum), ``mean`` by the element count. Gradients where ``t == 0`` are 0 for both inputs (for the
    target, the one-sided derivative is -inf and torch gives NaN).
    """
    if log_target:
        loss = torch.exp(target) * (target - input)
    else:
        pos = target > 0
        safe = torch.where(pos, target, torch.ones_like(target))
        # Both masked where t == 0, so that no 0 * inf reaches the gradients; the value there is
        # torch's own expression, held constant.
        x = torch.where(pos, input, torch.zeros_like(input))
        loss = torch.where(pos, torch.xlogy(safe, safe) - safe * x, 0.0 - (target * input).detach())
    if reduction == "batchmean":
        total = loss.sum()
        return total / input.shape[0] if input.dim() > 0 else total
    return reduce(loss, reduction)


def _check_kl_div(inputs: Mapping[str, Any], p: KLDivParams) -> None:
    x, t = inputs["input"], inputs["target"]
    require_broadcastable(t, "target", x.shape)
    if not p.log_target:
        _require_probabilities(t, "target", "target probabilities (log_target=false)")


KL_DIV = LossSpec(
    name="kl_div",
    aliases=("kl_divergence",),
    summary="KL divergence t*(log t - x) per element, x log-probabilities (exp(t)*(t-x) with log_target); "
    "default reduction batchmean (torch.nn.functional.kl_div).",
    fn=kl_div,
    inputs=(
        Input("input", "float", "any", "log-probabilities", differentiable=True),
        Input(
            "target",
            "float",
            "broadcastable to input",
            "probabilities (log-probabilities with log_target)",
            differentiable=True,
        ),
    ),
    params=KLDivParams,
    check=_check_kl_div,
    reference="torch.nn.functional.kl_div",
)


# ---------------------------------------------------------------------------
# js_div


class JSDivParams(Reduced):
    input_is: Literal["probs", "logits", "log_probs"] = "probs"
    base: float | None = Field(None, gt=0.0)

    @field_validator("base")
    @classmethod
    def _base_not_one(cls, v: float | None) -> float | None:
        if v is not None and v == 1.0:
            raise ValueError("base must be a positive number other than 1")
        return v


def js_div(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    input_is: Literal["probs", "logits", "log_probs"] = "probs",
    base: float | None = None,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Jensen-Shannon divergence between distributions over the last dim.

    ``P`` = input (``softmax`` of it for logits, ``exp`` for log_probs), ``Q`` = target,
    ``M = (P + Q) / 2``; per row ``JS = 0.5*KL(P||M) + 0.5*KL(Q||M)`` with ``0 log 0 = 0``,
    divided by ``log(base)`` when a base is given. Each element contributes
    ``0.5*(P*log1p(d) + Q*log1p(-d))`` with ``d = (P-Q)/(P+Q)`` (no cancellation when P ~ Q).
    At a zero probability, where the derivative is infinite, ``0 log 0`` is taken as the constant
    0 so gradients stay finite. ``none`` gives shape ``input.shape[:-1]``.
    """
    if input_is == "logits":
        p = torch.softmax(input, dim=-1)
    elif input_is == "log_probs":
        p = torch.exp(input)
    else:
        p = input
    q = target
    s = p + q
    d = (p - q) / torch.where(s > 0, s, torch.ones_like(s))
    zero = torch.zeros_like(d)
    p_pos, q_pos = p > 0, q > 0
    tp = torch.where(p_pos, p * torch.log1p(torch.where(p_pos, d, zero)), zero)
    tq = torch.where(q_pos, q * torch.log1p(torch.where(q_pos, -d, zero)), zero)
    js = 0.5 * (tp + tq).sum(dim=-1)
    if base is not None:
        js = js / math.log(base)
    return reduce(js, reduction)


def _check_js_div(inputs: Mapping[str, Any], p: JSDivParams) -> None:
    x, t = inputs["input"], inputs["target"]
    require_min_ndim(x, "input", 1, "(distributions over the last dim)")
    require_same_shape(x, t, "input", "target")
    if p.input_is == "probs":
        _require_probabilities(x, "input")
    elif p.input_is == "log_probs" and x.numel() and not bool((x <= 0).all()):
        raise InputError(loc("input"), f"expected log-probabilities <= 0, got {x[~(x <= 0)][0].item()}")
    _require_probabilities(t, "target")


JS_DIV = LossSpec(
    name="js_div",
    aliases=("jensen_shannon",),
    summary="Jensen-Shannon divergence per row over the last dim: 0.5*KL(P||M) + 0.5*KL(Q||M), M=(P+Q)/2, "
    "natural log unless base is given.",
    fn=js_div,
    inputs=(
        Input(
            "input", "float", "(...,K)", "distribution P (probs, logits or log_probs per input_is)", differentiable=True
        ),
        Input("target", "float", "same as input", "distribution Q (probabilities)", differentiable=True),
    ),
    params=JSDivParams,
    check=_check_js_div,
    reference="scipy.spatial.distance.jensenshannon squared (rows summing to 1); float64 formula in the tests",
)


# ---------------------------------------------------------------------------
# poisson_nll


class PoissonNLLParams(Reduced):
    log_input: bool = True
    full: bool = False
    eps: float = Field(1e-8, ge=0.0)


def poisson_nll(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    log_input: bool = True,
    full: bool = False,
    eps: float = 1e-8,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Poisson negative log likelihood, exactly ``torch.nn.functional.poisson_nll_loss``.

    ``exp(x) - y*x`` (log_input) or ``x - y*log(x + eps)``; ``full`` adds the Stirling term
    ``y*log y - y + 0.5*log(2*pi*y)`` where ``y > 1``.
    """
    return F.poisson_nll_loss(input, target, log_input=log_input, full=full, eps=eps, reduction=reduction)


def _check_poisson_nll(inputs: Mapping[str, Any], _p: Any) -> None:
    require_broadcastable(inputs["target"], "target", inputs["input"].shape)


POISSON_NLL = LossSpec(
    name="poisson_nll",
    summary="Poisson NLL exp(x) - y*x (log_input) or x - y*log(x+eps), plus Stirling term when full "
    "(torch.nn.functional.poisson_nll_loss).",
    fn=poisson_nll,
    inputs=(
        Input("input", "float", "any", "log-rate (log_input) or rate", differentiable=True),
        Input("target", "float", "broadcastable to input", "counts"),
    ),
    params=PoissonNLLParams,
    check=_check_poisson_nll,
    reference="torch.nn.functional.poisson_nll_loss",
)


# ---------------------------------------------------------------------------
# gaussian_nll


class GaussianNLLParams(Reduced):
    full: bool = False
    eps: float = Field(1e-6, ge=0.0)


def gaussian_nll(
    input: torch.Tensor,
    target: torch.Tensor,
    var: torch.Tensor,
    *,
    full: bool = False,
    eps: float = 1e-6,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Gaussian negative log likelihood, exactly ``torch.nn.functional.gaussian_nll_loss``.

    ``0.5 * (log(max(var, eps)) + (x - y)^2 / max(var, eps))`` (+ ``0.5*log(2*pi)`` when
    ``full``); the clamp passes the gradient through as torch's does. A 0-d ``var`` is one
    variance for every element (torch's float ``var``).
    """
    if var.dim() == 0:
        var = var.expand(input.shape)
    return F.gaussian_nll_loss(input, target, var, full=full, eps=eps, reduction=reduction)


def _check_gaussian_nll(inputs: Mapping[str, Any], _p: Any) -> None:
    x, t, v = inputs["input"], inputs["target"], inputs["var"]
    require_broadcastable(t, "target", x.shape)
    if v.dim() != 0 and v.shape != x.shape and v.shape != x.shape[:-1]:
        differ = [i for i in range(v.dim()) if v.dim() == x.dim() and v.shape[i] != x.shape[i]]
        if v.dim() != x.dim() or len(differ) != 1 or v.shape[differ[0]] != 1:
            raise InputError(
                loc("var"),
                f"expected var shaped like input {shape_str(x)}, or input's shape without its last dim, "
                f"or input's shape with one dim of size 1, or a scalar; got {shape_str(v)}",
            )
    _require_positive(v, "var", "variances")


GAUSSIAN_NLL = LossSpec(
    name="gaussian_nll",
    summary="Gaussian NLL 0.5*(log max(var,eps) + (x-y)^2/max(var,eps)) per element, +0.5*log(2pi) when full "
    "(torch.nn.functional.gaussian_nll_loss).",
    fn=gaussian_nll,
    inputs=(
        Input("input", "float", "any", "predicted mean", differentiable=True),
        Input("target", "float", "broadcastable to input", "observations", differentiable=True),
        Input(
            "var",
            "float",
            "as input, input without its last dim, one dim of size 1, or ()",
            "predicted variance > 0",
            differentiable=True,
        ),
    ),
    params=GaussianNLLParams,
    check=_check_gaussian_nll,
    reference="torch.nn.functional.gaussian_nll_loss",
)


SPECS: tuple[LossSpec, ...] = (
    CROSS_ENTROPY,
    NLL,
    BINARY_CROSS_ENTROPY,
    BINARY_CROSS_ENTROPY_WITH_LOGITS,
    BALANCED_BINARY_CROSS_ENTROPY,
    FOCAL,
    SIGMOID_FOCAL,
    KL_DIV,
    JS_DIV,
    POISSON_NLL,
    GAUSSIAN_NLL,
)

__all__ = [
    "SPECS",
    "balanced_binary_cross_entropy",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "focal",
    "gaussian_nll",
    "js_div",
    "kl_div",
    "nll",
    "poisson_nll",
    "require_ndim",
    "sigmoid_focal",
]
