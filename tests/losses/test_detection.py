"""centernet_focal and centernet against float64 references written from losses.md (CenterNet _neg_loss, RegL1Loss)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lossd.losses import detection as det
from lossd.spec import InputError, LossSpec

SPECS = {s.name: s for s in det.SPECS}


def spec(name: str) -> LossSpec:
    return SPECS[name]


centernet: Any = det.centernet  # typed loosely: the tests call it with **dicts of tensors


# ---------------------------------------------------------------------------
# References (numpy float64)


def ref_neg_loss(
    x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0, beta: float = 4.0, from_logits: bool = True
) -> float:
    pred = x.detach().double().numpy()
    gt = y.detach().double().numpy()
    if from_logits:
        pred = 0.5 * (1.0 + np.tanh(0.5 * pred))  # sigmoid, without overflow
    pred = np.clip(pred, 1e-4, 1 - 1e-4)
    pos = gt == 1
    neg = gt < 1
    pos_loss = np.sum(np.log(pred[pos]) * (1 - pred[pos]) ** alpha)
    neg_loss = np.sum(np.log(1 - pred[neg]) * pred[neg] ** alpha * (1 - gt[neg]) ** beta)
    num_pos = int(pos.sum())
    if num_pos == 0:
        return float(-neg_loss)
    return float(-(pos_loss + neg_loss) / num_pos)


def ref_reg_l1(pred: torch.Tensor, ind: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    p = pred.detach().double().numpy()
    t = target.detach().double().numpy()
    m = mask.detach().double().numpy()
    n_, _, _, w = p.shape
    num = 0.0
    for n in range(n_):
        for k in range(ind.shape[1]):
            flat = int(ind[n, k])
            yy, xx = divmod(flat, w)
            num += float(np.sum(np.abs(p[n, :, yy, xx] - t[n, k]))) * m[n, k]
    return num / (2 * m.sum() + 1e-4)


def heatmap_case(n: int = 2, c: int = 3, h: int = 5, w: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2
    y = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 0.95
    y[0, 0, 1 % h, 2 % w] = 1.0
    y[-1, -1, h - 2, 0] = 1.0
    y[-1, 0, 0, 0] = 1.0
    return x, y


def centernet_case(seed: int = 0, k: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    n, c, h, w = 2, 3, 5, 4
    hm, hm_t = heatmap_case(n, c, h, w, seed)
    return {
        "hm": hm,
        "hm_target": hm_t,
        "wh": torch.randn(n, 2, h, w, generator=g, dtype=torch.float64) * 3,
        "wh_target": torch.rand(n, k, 2, generator=g, dtype=torch.float64) * 3,
        "offset": torch.randn(n, 2, h, w, generator=g, dtype=torch.float64),
        "offset_target": torch.rand(n, k, 2, generator=g, dtype=torch.float64),
        "ind": torch.randint(0, h * w, (n, k), generator=g),
        "mask": torch.tensor([[1.0, 1.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)[:, :k],
    }


# ---------------------------------------------------------------------------
# Specs and params


def test_names_aliases_inputs() -> None:
    assert set(SPECS) == {"centernet_focal", "centernet"}
    assert spec("centernet_focal").aliases == ("cornernet_focal",)
    assert spec("centernet").aliases == ()
    assert spec("centernet_focal").differentiable == ("input",)
    assert spec("centernet").differentiable == ("hm", "wh", "offset")
    names = tuple(i.name for i in spec("centernet").inputs)
    assert names == ("hm", "hm_target", "wh", "wh_target", "offset", "offset_target", "ind", "mask")
    assert all(i.required for i in spec("centernet").inputs)
    assert spec("centernet").input("ind").kind == "index"  # type: ignore[union-attr]
    assert spec("centernet").input("mask").kind == "mask"  # type: ignore[union-attr]
    # "reduction is not taken"
    assert spec("centernet_focal").reductions == ()
    assert spec("centernet").reductions == ()


def test_default_params() -> None:
    assert dict(det.CenterNetFocalParams()) == {"alpha": 2.0, "beta": 4.0, "from_logits": True}
    assert dict(det.CenterNetParams()) == {"hm_weight": 1.0, "wh_weight": 0.1, "off_weight": 1.0}


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (det.CenterNetFocalParams, {"reduction": "mean"}),
        (det.CenterNetFocalParams, {"reduction": "sum"}),
        (det.CenterNetFocalParams, {"gamma": 2.0}),
        (det.CenterNetFocalParams, {"alpha": -1.0}),
        (det.CenterNetFocalParams, {"beta": -0.5}),
        (det.CenterNetFocalParams, {"from_logits": "perhaps"}),
        (det.CenterNetParams, {"reduction": "mean"}),
        (det.CenterNetParams, {"hm_weight": -1.0}),
        (det.CenterNetParams, {"wh_weight": -0.1}),
        (det.CenterNetParams, {"off_weight": -2.0}),
        (det.CenterNetParams, {"alpha": 2.0}),
    ],
)
def test_bad_params(model: Any, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model(**params)


# ---------------------------------------------------------------------------
# centernet_focal values


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 4.0), (1.0, 2.0), (3.5, 0.0), (0.0, 1.0)])
def test_focal_from_logits(alpha: float, beta: float) -> None:
    x, y = heatmap_case()
    got = det.centernet_focal(x, y, alpha=alpha, beta=beta)
    assert got.shape == () and got.dtype == torch.float64
    assert float(got) == pytest.approx(ref_neg_loss(x, y, alpha, beta), rel=1e-12)


def test_focal_defaults() -> None:
    x, y = heatmap_case(seed=5)
    assert float(det.centernet_focal(x, y)) == pytest.approx(ref_neg_loss(x, y), rel=1e-12)
    # the default is from_logits=true: feeding probabilities as if logits changes the value
    p = torch.sigmoid(x)
    assert float(det.centernet_focal(p, y, from_logits=False)) == pytest.approx(ref_neg_loss(x, y), rel=1e-12)
    assert abs(float(det.centernet_focal(p, y)) - float(det.centernet_focal(x, y))) > 1e-3


@pytest.mark.parametrize(("alpha", "beta"), [(2.0, 4.0), (1.5, 3.0)])
def test_focal_probabilities(alpha: float, beta: float) -> None:
    x, y = heatmap_case(seed=1)
    p = torch.sigmoid(x)
    got = det.centernet_focal(p, y, alpha=alpha, beta=beta, from_logits=False)
    assert float(got) == pytest.approx(ref_neg_loss(p, y, alpha, beta, from_logits=False), rel=1e-12)


def test_focal_clamping() -> None:
    x, y = heatmap_case(seed=2)
    # probabilities exactly 0 and 1 are clamped to [1e-4, 1-1e-4]: finite, like the reference
    p = (torch.sigmoid(x) > 0.5).double()
    got = det.centernet_focal(p, y, from_logits=False)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(ref_neg_loss(p, y, from_logits=False), rel=1e-12)
    # huge logits saturate to the clamp
    big = x * 1e4
    got = det.centernet_focal(big, y)
    assert torch.isfinite(got)
    assert float(got) == pytest.approx(ref_neg_loss(big, y), rel=1e-12)
    # in float32 too
    got32 = det.centernet_focal(big.float(), y.float())
    assert got32.dtype == torch.float32 and torch.isfinite(got32)
    # a confident, right prediction at a peak: the clamped loss there is -(1e-4)^2*log(1-1e-4) per positive
    one = torch.full((1, 1, 1, 1), 50.0, dtype=torch.float64)
    want = -((1e-4) ** 2) * np.log(1 - 1e-4)
    assert float(det.centernet_focal(one, torch.ones(1, 1, 1, 1, dtype=torch.float64))) == pytest.approx(want, rel=1e-6)


def test_focal_no_positive() -> None:
    x, y = heatmap_case(seed=3)
    y = y.clamp(max=0.99)
    got = det.centernet_focal(x, y)
    assert float(got) == pytest.approx(ref_neg_loss(x, y), rel=1e-12)
    p = torch.sigmoid(x).clamp(1e-4, 1 - 1e-4)
    assert float(got) == pytest.approx(-float(((1 - y) ** 4 * p**2 * torch.log(1 - p)).sum()), rel=1e-12)
    # gradients stay finite on the no-positive branch
    xg = x.clone().requires_grad_(True)
    det.centernet_focal(xg, y).backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_focal_peaks_exactly_one() -> None:
    x, y = heatmap_case(seed=4)
    # 0.9999 is a (heavily down-weighted) negative, not a positive
    y2 = y.clone()
    y2[y2 == 1] = 0.9999
    got = det.centernet_focal(x, y2)
    assert float(got) == pytest.approx(ref_neg_loss(x, y2), rel=1e-12)
    assert float(got) != pytest.approx(float(det.centernet_focal(x, y)), rel=1e-3)
    # num_pos divides: duplicating the batch keeps the value
    xx, yy = torch.cat([x, x]), torch.cat([y, y])
    assert float(det.centernet_focal(xx, yy)) == pytest.approx(float(det.centernet_focal(x, y)), rel=1e-12)


@pytest.mark.parametrize("positives", [True, False])
@pytest.mark.parametrize(("from_logits", "alpha", "beta"), [(True, 2.0, 4.0), (False, 2.0, 4.0), (True, 1.5, 2.5)])
def test_focal_gradcheck(positives: bool, from_logits: bool, alpha: float, beta: float) -> None:
    x, y = heatmap_case(n=1, c=2, h=3, w=3, seed=6)
    if not positives:
        y = y.clamp(max=0.9)
    if not from_logits:
        x = torch.sigmoid(x).clamp(0.05, 0.95)  # off the clamp bounds
    x = x.clone().requires_grad_(True)
    fn: Any = spec("centernet_focal").fn
    assert torch.autograd.gradcheck(lambda i: fn(i, y, alpha=alpha, beta=beta, from_logits=from_logits), (x,))


# ---------------------------------------------------------------------------
# centernet_focal check


def focal_check(x: torch.Tensor, y: torch.Tensor, **params: Any) -> None:
    spec("centernet_focal").check({"input": x, "target": y}, det.CenterNetFocalParams(**params))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("x", "y", "params", "loc"),
    [
        (torch.rand(3, 4, 5), torch.rand(3, 4, 5), {}, "input"),
        (torch.rand(1, 3, 4, 5, 6), torch.rand(1, 3, 4, 5, 6), {}, "input"),
        (torch.rand(2, 3, 4, 5), torch.rand(2, 3, 4, 4), {}, "target"),
        (torch.rand(2, 3, 4, 5), torch.full((2, 3, 4, 5), 1.01), {}, "target"),
        (torch.rand(2, 3, 4, 5), torch.full((2, 3, 4, 5), -0.01), {}, "target"),
        (torch.rand(2, 3, 4, 5), torch.full((2, 3, 4, 5), float("nan")), {}, "target"),
        (torch.full((2, 3, 4, 5), 1.5), torch.rand(2, 3, 4, 5), {"from_logits": False}, "input"),
        (torch.full((2, 3, 4, 5), -0.5), torch.rand(2, 3, 4, 5), {"from_logits": False}, "input"),
        (torch.full((2, 3, 4, 5), float("nan")), torch.rand(2, 3, 4, 5), {"from_logits": False}, "input"),
    ],
)
def test_focal_check_errors(x: torch.Tensor, y: torch.Tensor, params: dict[str, Any], loc: str) -> None:
    with pytest.raises(InputError) as e:
        focal_check(x, y, **params)
    assert e.value.loc == ("inputs", loc)


def test_focal_check_accepts() -> None:
    y = torch.rand(2, 3, 4, 5)
    focal_check(torch.randn(2, 3, 4, 5) * 10, y)  # logits: any real
    focal_check(torch.rand(2, 3, 4, 5), y, from_logits=False)
    focal_check(torch.zeros(2, 3, 4, 5), torch.ones(2, 3, 4, 5), from_logits=False)  # bounds included
    with pytest.raises(InputError) as e:
        focal_check(torch.full((2, 3, 4, 5), 1.5), y, from_logits=False)
    assert "[0, 1]" in e.value.msg and "from_logits" in e.value.msg


# ---------------------------------------------------------------------------
# centernet values


def ref_centernet(case: dict[str, torch.Tensor], hm_w: float = 1.0, wh_w: float = 0.1, off_w: float = 1.0) -> dict:
    hm = ref_neg_loss(case["hm"], case["hm_target"])
    wh = ref_reg_l1(case["wh"], case["ind"], case["wh_target"], case["mask"])
    off = ref_reg_l1(case["offset"], case["ind"], case["offset_target"], case["mask"])
    return {"value": hm_w * hm + wh_w * wh + off_w * off, "hm": hm, "wh": wh, "offset": off}


def test_centernet_defaults() -> None:
    case = centernet_case()
    value, terms = centernet(**case)
    want = ref_centernet(case)
    assert value.shape == () and value.dtype == torch.float64
    assert set(terms) == {"hm", "wh", "offset"}
    assert float(value) == pytest.approx(want["value"], rel=1e-12)
    for k in ("hm", "wh", "offset"):
        assert terms[k].shape == ()
        assert float(terms[k]) == pytest.approx(want[k], rel=1e-12)
    # the focal term is centernet_focal with its defaults
    assert float(terms["hm"]) == pytest.approx(float(det.centernet_focal(case["hm"], case["hm_target"])), rel=1e-14)


@pytest.mark.parametrize(("hm_w", "wh_w", "off_w"), [(2.0, 0.5, 0.0), (0.0, 1.0, 3.0)])
def test_centernet_weights(hm_w: float, wh_w: float, off_w: float) -> None:
    case = centernet_case(seed=1)
    value, terms = centernet(**case, hm_weight=hm_w, wh_weight=wh_w, off_weight=off_w)
    want = ref_centernet(case, hm_w, wh_w, off_w)
    assert float(value) == pytest.approx(want["value"], rel=1e-12)
    # terms are unweighted whatever the weights
    for k in ("hm", "wh", "offset"):
        assert float(terms[k]) == pytest.approx(want[k], rel=1e-12)


def test_centernet_mask_dtypes_and_empty_mask() -> None:
    case = centernet_case(seed=2)
    v_float, _ = centernet(**case)
    for dtype in (torch.bool, torch.int32, torch.uint8, torch.int64):
        v, _ = centernet(**{**case, "mask": case["mask"].to(dtype)})
        assert float(v) == pytest.approx(float(v_float), rel=1e-14)
    # int32 indices as well as int64
    v, _ = centernet(**{**case, "ind": case["ind"].int()})
    assert float(v) == pytest.approx(float(v_float), rel=1e-14)
    # no object at all: both regression terms are 0 / 1e-4 = 0
    _, terms = centernet(**{**case, "mask": torch.zeros_like(case["mask"])})
    assert float(terms["wh"]) == 0.0 and float(terms["offset"]) == 0.0
    # masked-out objects do not count, whatever their targets
    t2 = case["wh_target"].clone()
    t2[case["mask"] == 0] = 1e6
    _, terms2 = centernet(**{**case, "wh_target": t2})
    _, terms1 = centernet(**case)
    assert float(terms2["wh"]) == pytest.approx(float(terms1["wh"]), rel=1e-14)


def test_centernet_hand_computed_reg() -> None:
    # one image, H=2, W=3; object at (y=1, x=2): flat index 5
    wh = torch.zeros(1, 2, 2, 3, dtype=torch.float64)
    wh[0, 0, 1, 2], wh[0, 1, 1, 2] = 4.0, 6.0
    case = {
        "hm": torch.zeros(1, 1, 2, 3, dtype=torch.float64),
        "hm_target": torch.zeros(1, 1, 2, 3, dtype=torch.float64),
        "wh": wh,
        "wh_target": torch.tensor([[[3.0, 8.0], [0.0, 0.0]]], dtype=torch.float64),
        "offset": torch.zeros(1, 2, 2, 3, dtype=torch.float64),
        "offset_target": torch.zeros(1, 2, 2, dtype=torch.float64),
        "ind": torch.tensor([[5, 0]]),
        "mask": torch.tensor([[1.0, 0.0]], dtype=torch.float64),
    }
    _, terms = centernet(**case)
    assert float(terms["wh"]) == pytest.approx((1.0 + 2.0) / (2.0 + 1e-4), rel=1e-14)
    assert float(terms["offset"]) == 0.0


def test_centernet_gradcheck() -> None:
    case = centernet_case(seed=3, k=3)
    diff = ("hm", "wh", "offset")
    tensors = tuple(case[k].clone().requires_grad_(True) for k in diff)
    rest = {k: v for k, v in case.items() if k not in diff}

    def f(hm: torch.Tensor, wh: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
        value, _ = centernet(hm=hm, wh=wh, offset=offset, **rest, hm_weight=1.3, wh_weight=0.7, off_weight=0.4)
        return value

    assert torch.autograd.gradcheck(f, tensors)
    # gradients of wh land only where ind points (for unmasked objects)
    hm, wh, off = tensors
    f(hm, wh, off).backward()
    assert wh.grad is not None
    flat = wh.grad.abs().sum(dim=1).reshape(2, -1)
    for n in range(2):
        hit = {int(i) for i, m in zip(case["ind"][n], case["mask"][n]) if m}
        assert {int(i) for i in torch.nonzero(flat[n]).flatten()} <= hit


# ---------------------------------------------------------------------------
# centernet check


def centernet_check(case: dict[str, torch.Tensor]) -> None:
    spec("centernet").check(case, det.CenterNetParams())  # type: ignore[misc]


def test_centernet_check_accepts() -> None:
    case = centernet_case()
    centernet_check(case)
    centernet_check({**case, "ind": torch.full((2, 4), 19, dtype=torch.int32)})  # H*W-1
    centernet_check({**case, "mask": case["mask"].bool().double()})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("hm", torch.randn(2, 3, 5)),
        ("hm_target", torch.rand(2, 3, 5, 3)),
        ("hm_target", torch.full((2, 3, 5, 4), 1.2)),
        ("hm_target", torch.full((2, 3, 5, 4), float("nan"))),
        ("wh", torch.randn(2, 3, 5, 4)),
        ("wh", torch.randn(2, 2, 4, 5)),
        ("offset", torch.randn(1, 2, 5, 4)),
        ("ind", torch.full((2, 4), 20)),
        ("ind", torch.tensor([[0, 1, 2, -1], [0, 0, 0, 0]])),
        ("ind", torch.zeros(3, 4, dtype=torch.long)),
        ("ind", torch.zeros(8, dtype=torch.long)),
        ("wh_target", torch.rand(2, 4, 3)),
        ("wh_target", torch.rand(2, 5, 2)),
        ("offset_target", torch.rand(2, 4)),
        ("mask", torch.ones(2, 5)),
        ("mask", torch.tensor([[1.0, 2.0, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])),
        ("mask", torch.tensor([[1.0, 0.5, 0.0, 1.0], [0.0, 0.0, 0.0, 0.0]])),
    ],
)
def test_centernet_check_errors(name: str, value: torch.Tensor) -> None:
    case = centernet_case()
    case[name] = value
    with pytest.raises(InputError) as e:
        centernet_check(case)
    assert e.value.loc == ("inputs", name)


def test_centernet_ind_message() -> None:
    case = {**centernet_case(), "ind": torch.full((2, 4), 20)}
    with pytest.raises(InputError) as e:
        centernet_check(case)
    assert "20" in e.value.msg and "[0, H*W=20)" in e.value.msg
