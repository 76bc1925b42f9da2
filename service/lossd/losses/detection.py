"""Detection losses: CenterNet's heatmap focal loss and the full CenterNet objective."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from pydantic import Field

from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Params,
    require_ndim,
    require_same_shape,
    require_shape,
    require_unit_interval,
    require_values_in,
    shape_str,
)

_P_MIN = 1e-4
_P_MAX = 1 - 1e-4

# ---------------------------------------------------------------------------
# centernet_focal


class CenterNetFocalParams(Params):
    alpha: float = Field(2.0, ge=0.0)
    beta: float = Field(4.0, ge=0.0)
    from_logits: bool = True


def centernet_focal(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 2.0,
    beta: float = 4.0,
    from_logits: bool = True,
) -> torch.Tensor:
    """CenterNet / CornerNet penalty-reduced pixel-wise focal loss (``_neg_loss``).

    ``p = sigmoid(input)`` (``from_logits``) or ``input``, clamped to ``[1e-4, 1-1e-4]``;
    positives are the elements where ``target == 1`` exactly, negatives the rest:
    ``-(sum_pos (1-p)^alpha log p + sum_neg (1-y)^beta p^alpha log(1-p)) / num_pos``,
    or ``-sum_neg`` when there is no positive. One value over the whole batch, shape ().
    """
    p = torch.sigmoid(input) if from_logits else input
    p = p.clamp(_P_MIN, _P_MAX)
    y = target.to(p.dtype)
    pos = y == 1
    zero = torch.zeros((), dtype=p.dtype, device=p.device)
    pos_loss = torch.where(pos, (1 - p).pow(alpha) * torch.log(p), zero).sum()
    # (1-y)^beta only where y < 1, so a negative exponent could never meet 0^beta.
    neg_w = torch.where(pos, zero, (1 - y).clamp(min=0).pow(beta))
    neg_loss = (neg_w * p.pow(alpha) * torch.log1p(-p)).sum()
    num_pos = pos.sum().to(p.dtype)
    # Both branches are computed (no host sync); the unused one is finite, so no NaN leaks into gradients.
    return torch.where(num_pos > 0, -(pos_loss + neg_loss) / num_pos.clamp(min=1), -neg_loss)


def _check_heatmaps(
    inputs: Mapping[str, Any], input_name: str, target_name: str, probabilities: bool
) -> tuple[int, int, int, int]:
    x, t = inputs[input_name], inputs[target_name]
    require_ndim(x, input_name, 4, "heatmap (N,C,H,W)")
    require_same_shape(x, t, input_name, target_name)
    if probabilities:
        require_unit_interval(x, input_name, "probabilities (from_logits=false)")
    require_unit_interval(t, target_name, "heatmap values")
    n, c, h, w = x.shape
    return n, c, h, w


def _check_centernet_focal(inputs: Mapping[str, Any], p: CenterNetFocalParams) -> None:
    _check_heatmaps(inputs, "input", "target", probabilities=not p.from_logits)


CENTERNET_FOCAL = LossSpec(
    name="centernet_focal",
    aliases=("cornernet_focal",),
    summary="CenterNet heatmap focal loss: -(sum_pos (1-p)^a log p + sum_neg (1-y)^b p^a log(1-p)) / num_pos, "
    "p = sigmoid(input) clamped to [1e-4, 1-1e-4].",
    fn=centernet_focal,
    inputs=(
        Input(
            "input",
            "float",
            "(N,C,H,W)",
            "heatmap logits, or probabilities when from_logits=false",
            differentiable=True,
        ),
        Input("target", "float", "(N,C,H,W)", "ground-truth heatmap in [0,1], peaks exactly 1"),
    ),
    params=CenterNetFocalParams,
    check=_check_centernet_focal,
    reference="float64 formula in the tests (CenterNet _neg_loss); gradcheck on input",
)


# ---------------------------------------------------------------------------
# centernet


class CenterNetParams(Params):
    hm_weight: float = Field(1.0, ge=0.0)
    wh_weight: float = Field(0.1, ge=0.0)
    off_weight: float = Field(1.0, ge=0.0)


def _reg_l1(pred: torch.Tensor, ind: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CenterNet ``RegL1Loss``: ``sum(|gather(pred,ind)-target| * mask) / (sum(mask (N,K,2)) + 1e-4)``."""
    n, c = pred.shape[0], pred.shape[1]
    feat = pred.permute(0, 2, 3, 1).reshape(n, -1, c)  # (N, H*W, C)
    gathered = feat.gather(1, ind.unsqueeze(2).expand(-1, -1, c))  # (N, K, C)
    m = mask.to(pred.dtype).unsqueeze(2).expand_as(gathered)
    return ((gathered - target).abs() * m).sum() / (m.sum() + 1e-4)


def centernet(
    hm: torch.Tensor,
    hm_target: torch.Tensor,
    wh: torch.Tensor,
    wh_target: torch.Tensor,
    offset: torch.Tensor,
    offset_target: torch.Tensor,
    ind: torch.Tensor,
    mask: torch.Tensor,
    *,
    hm_weight: float = 1.0,
    wh_weight: float = 0.1,
    off_weight: float = 1.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CenterNet objective (Zhou et al. 2019, ``CtdetLoss`` with one stack).

    ``hm_weight*centernet_focal(hm, hm_target) + wh_weight*RegL1(wh) + off_weight*RegL1(offset)``,
    ``RegL1(pred) = sum(|pred[n,:,ind[n,k]] - target[n,k,:]| * mask[n,k]) / (2*sum(mask) + 1e-4)``,
    ``ind`` the flat index ``y*W + x``. Returns the value and the unweighted terms
    ``{"hm", "wh", "offset"}`` (detached).
    """
    hm_loss = centernet_focal(hm, hm_target)
    wh_loss = _reg_l1(wh, ind, wh_target, mask)
    off_loss = _reg_l1(offset, ind, offset_target, mask)
    value = hm_weight * hm_loss + wh_weight * wh_loss + off_weight * off_loss
    return value, {"hm": hm_loss.detach(), "wh": wh_loss.detach(), "offset": off_loss.detach()}


def _check_centernet(inputs: Mapping[str, Any], _p: CenterNetParams) -> None:
    n, _c, h, w = _check_heatmaps(inputs, "hm", "hm_target", probabilities=False)
    for name in ("wh", "offset"):
        require_shape(inputs[name], name, (n, 2, h, w), "(N,2,H,W) like hm")
    ind = inputs["ind"]
    require_ndim(ind, "ind", 2, "of flat indices (N,K)")
    if ind.shape[0] != n:
        raise InputError(("inputs", "ind"), f"expected {n} rows (N of hm), got shape {shape_str(ind)}")
    k = ind.shape[1]
    if ind.numel() and not bool(((ind >= 0) & (ind < h * w)).all()):
        bad = ind[(ind < 0) | (ind >= h * w)][0].item()
        raise InputError(("inputs", "ind"), f"flat index {bad} out of range [0, H*W={h * w})")
    for name in ("wh_target", "offset_target"):
        require_shape(inputs[name], name, (n, k, 2), "(N,K,2)")
    require_shape(inputs["mask"], "mask", (n, k), "(N,K) like ind")
    require_values_in(inputs["mask"], "mask", (0, 1))


CENTERNET = LossSpec(
    name="centernet",
    summary="CenterNet: hm_weight*centernet_focal(hm) + wh_weight*RegL1(wh) + off_weight*RegL1(offset); "
    "terms hm, wh, offset.",
    fn=centernet,
    inputs=(
        Input("hm", "float", "(N,C,H,W)", "heatmap logits", differentiable=True),
        Input("hm_target", "float", "(N,C,H,W)", "ground-truth heatmap in [0,1], peaks exactly 1"),
        Input("wh", "float", "(N,2,H,W)", "predicted box sizes", differentiable=True),
        Input("wh_target", "float", "(N,K,2)", "box sizes of the K objects"),
        Input("offset", "float", "(N,2,H,W)", "predicted sub-pixel center offsets", differentiable=True),
        Input("offset_target", "float", "(N,K,2)", "center offsets of the K objects"),
        Input("ind", "index", "(N,K)", "flat center index y*W+x in [0, H*W)"),
        Input("mask", "mask", "(N,K)", "1 for real objects, 0 for padding"),
    ),
    params=CenterNetParams,
    check=_check_centernet,
    reference="float64 formulas in the tests (CenterNet _neg_loss and RegL1Loss); gradcheck on hm, wh, offset",
)


SPECS: tuple[LossSpec, ...] = (CENTERNET_FOCAL, CENTERNET)
