"""Regression losses: mse, l1, smooth_l1, huber, tukey_biweight, log_cosh, quantile."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lossd.losses import regression as R
from lossd.spec import InputError

REDUCTIONS = ("mean", "sum", "none")
SPECS = {s.name: s for s in R.SPECS}

ROWS = {
    "mse": ("l2", "mean_squared_error"),
    "l1": ("mae", "mean_absolute_error"),
    "smooth_l1": (),
    "huber": (),
    "tukey_biweight": ("tukey",),
    "log_cosh": (),
    "quantile": ("pinball",),
}


def _pair(shape=(5, 3), seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    y = (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)
    return x, y


def _grads(fn, x, y, **kw):
    x = x.clone().requires_grad_(True)
    y = y.clone().requires_grad_(True)
    v = fn(x, y, **kw)
    gx, gy = torch.autograd.grad(v.sum(), (x, y))
    return v.detach(), gx, gy


def _np_reduce(v: np.ndarray, reduction: str):
    if reduction == "mean":
        return v.mean()
    if reduction == "sum":
        return v.sum()
    return v


def test_catalogue_rows_and_aliases():
    assert set(SPECS) == set(ROWS)
    for name, aliases in ROWS.items():
        spec = SPECS[name]
        assert spec.aliases == aliases
        assert spec.reductions == REDUCTIONS
        assert spec.differentiable == ("input", "target")
        assert spec.summary and spec.reference


# ---------------------------------------------------------------------------
# torch rows: values and gradients against torch.nn.functional called directly

TORCH_CASES = [
    ("mse", lambda x, y, r: F.mse_loss(x, y, reduction=r), {}),
    ("mse", lambda x, y, r: 0.5 * F.mse_loss(x, y, reduction=r), {"half": True}),
    ("l1", lambda x, y, r: F.l1_loss(x, y, reduction=r), {}),
    ("smooth_l1", lambda x, y, r: F.smooth_l1_loss(x, y, reduction=r), {}),
    ("smooth_l1", lambda x, y, r: F.smooth_l1_loss(x, y, beta=0.5, reduction=r), {"beta": 0.5}),
    ("smooth_l1", lambda x, y, r: F.smooth_l1_loss(x, y, beta=0.0, reduction=r), {"beta": 0.0}),
    ("huber", lambda x, y, r: F.huber_loss(x, y, reduction=r), {}),
    ("huber", lambda x, y, r: F.huber_loss(x, y, delta=2.5, reduction=r), {"delta": 2.5}),
]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "ref", "kw"), TORCH_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_rows_match_functional(name, ref, kw, reduction, dtype):
    spec = SPECS[name]
    params = spec.params(**kw, reduction=reduction)
    x, y = _pair((4, 3, 2), seed=1, dtype=dtype)
    v, gx, gy = _grads(lambda a, b: spec.fn(a, b, **dict(params)), x, y)
    rv, rgx, rgy = _grads(lambda a, b: ref(a, b, reduction), x, y)
    assert v.dtype == dtype
    assert v.shape == rv.shape == (() if reduction != "none" else x.shape)
    torch.testing.assert_close(v, rv)
    torch.testing.assert_close(gx, rgx)
    torch.testing.assert_close(gy, rgy)


def test_mse_half_is_half_and_default_is_full():
    x, y = _pair()
    assert R.MSEParams().half is False
    full = R.mse(x, y)
    torch.testing.assert_close(R.mse(x, y, half=True), 0.5 * full)
    torch.testing.assert_close(full, ((x - y) ** 2).mean())


@pytest.mark.parametrize(
    ("name", "kw"),
    [("mse", {}), ("mse", {"half": True}), ("l1", {}), ("smooth_l1", {"beta": 0.7}), ("huber", {"delta": 0.8})],
)
def test_torch_rows_gradcheck(name, kw):
    x, y = _pair((3, 4), seed=2)
    x.requires_grad_(True)
    y.requires_grad_(True)
    fn = SPECS[name].fn
    assert torch.autograd.gradcheck(lambda a, b: fn(a, b, **kw), (x, y))


def test_defaults():
    assert R.SmoothL1Params().beta == 1.0
    assert R.HuberParams().delta == 1.0
    assert R.QuantileParams().q == 0.5
    p = R.TukeyParams()
    assert p.c == 4.6851 and p.scale == "mad" and p.reduction == "mean"


# ---------------------------------------------------------------------------
# tukey_biweight against a numpy float64 implementation


def _np_median0(a: np.ndarray) -> np.ndarray:
    return np.median(a, axis=0)


def _np_tukey(x: np.ndarray, y: np.ndarray, c: float, scale):
    r = x - y
    if scale == "mad":
        mad = _np_median0(np.abs(r - _np_median0(r)))
        s = np.where(mad == 0, 1.0, 1.4826 * mad)
    elif scale == "none":
        s = np.ones(r.shape[1:]) if r.ndim else 1.0
    else:
        s = scale
    u = r / s
    inside = np.abs(u) <= c
    rho = np.where(inside, c**2 / 6 * (1 - (1 - (u / c) ** 2) ** 3), c**2 / 6)
    # d rho / d u = u * (1 - (u/c)^2)^2 inside, 0 outside; the scale is constant for the gradient
    psi = np.where(inside, u * (1 - (u / c) ** 2) ** 2, 0.0)
    # a NaN residual (or a NaN scale, numpy.median's answer for a column with a NaN) gives NaN, not c^2/6
    nan = np.isnan(u)
    return np.where(nan, np.nan, rho), np.where(nan, np.nan, psi / s)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("c", "scale"), [(4.6851, "mad"), (2.0, "mad"), (4.6851, "none"), (1.5, "none"), (4.6851, 0.7), (3.0, 2.5)]
)
@pytest.mark.parametrize("n", [6, 7])
def test_tukey_matches_numpy(c, scale, reduction, n):
    x, y = _pair((n, 3, 2), seed=3, scale=3.0)
    x[0] += 60.0  # outliers beyond c in every coordinate
    x[1, 0] -= 40.0
    params = R.TukeyParams(c=c, scale=scale, reduction=reduction)
    v, gx, gy = _grads(lambda a, b: R.tukey_biweight(a, b, **dict(params)), x, y)
    rho, drho = _np_tukey(x.numpy(), y.numpy(), c, scale)
    # some residuals are beyond c and some inside, so both branches are exercised
    assert 0 < (rho == c**2 / 6).sum() < rho.size
    np.testing.assert_allclose(v.numpy(), _np_reduce(rho, reduction), rtol=1e-12, atol=1e-12)
    k = rho.size if reduction == "mean" else 1
    np.testing.assert_allclose(gx.numpy(), drho / k, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gy.numpy(), -drho / k, rtol=1e-10, atol=1e-12)


def test_tukey_even_count_median_is_numpys_not_torchs():
    # column residuals 0,1,2,10: numpy median 1.5 (torch.median would say 1); |r-1.5| = 1.5,.5,.5,8.5 -> MAD 1.0
    r = torch.tensor([0.0, 1.0, 2.0, 10.0], dtype=torch.float64).reshape(4, 1)
    s = R.mad_scale(r)
    torch.testing.assert_close(s, torch.tensor([1.4826], dtype=torch.float64))
    v = R.tukey_biweight(r, torch.zeros_like(r), reduction="none")
    rho, _ = _np_tukey(r.numpy(), np.zeros((4, 1)), 4.6851, "mad")
    np.testing.assert_allclose(v.numpy(), rho, rtol=1e-12)
    torch.testing.assert_close(v, R.tukey_biweight(r, torch.zeros_like(r), scale=1.4826, reduction="none"))


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("nan", [False, True])
def test_median0_is_numpys_nan_included(n, nan):
    g = np.random.default_rng(n)
    a = g.normal(size=(n, 4, 3))
    a[:, 0, 0] = a[0, 0, 0]  # a constant column
    a[1, 2, 1] = np.inf
    a[2, 3, 2] = -np.inf
    if nan:
        a[n - 1, 1, 0] = np.nan  # sorted last by torch: a middle value would still come out
        a[0, 2, 2] = np.nan
        a[:, 3, 0] = np.nan  # all NaN
    ref = np.median(a, axis=0)
    assert np.isnan(ref).any() == nan
    got = R._median0(torch.from_numpy(a)).numpy()
    np.testing.assert_array_equal(got, ref)  # NaN where numpy has NaN, the same numbers elsewhere


@pytest.mark.parametrize("n", [6, 7])
@pytest.mark.parametrize("where", ["input", "target"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_tukey_mad_nan_residual_makes_its_coordinate_nan_as_numpy(n, where, reduction):
    # numpy.median of a column with a NaN is NaN, so that coordinate's scale and every element are NaN
    x, y = _pair((n, 3), seed=11, scale=3.0)
    (x if where == "input" else y)[n - 1, 1] = math.nan
    v, gx, gy = _grads(lambda a, b: R.tukey_biweight(a, b, reduction=reduction), x, y)
    rho, drho = _np_tukey(x.numpy(), y.numpy(), 4.6851, "mad")
    assert np.isnan(rho[:, 1]).all() and np.isfinite(rho[:, [0, 2]]).all()
    s = R.mad_scale(x - y)
    assert torch.isnan(s[1]) and torch.isfinite(s[[0, 2]]).all()
    np.testing.assert_allclose(v.numpy(), _np_reduce(rho, reduction), rtol=1e-12, atol=1e-12)
    k = rho.size if reduction == "mean" else 1
    np.testing.assert_allclose(gx.numpy(), drho / k, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gy.numpy(), -drho / k, rtol=1e-10, atol=1e-12)
    assert torch.isnan(gx[:, 1]).all() and torch.isfinite(gx[:, [0, 2]]).all()


def test_tukey_mad_nan_is_not_zero_for_the_fallback():
    # coordinate 0 has MAD 0 (fallback 1), coordinate 1 a NaN: its MAD stays NaN, not the fallback
    x = torch.tensor([[1.0, 0.0], [1.0, math.nan], [1.0, 2.0], [4.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
    y = torch.zeros_like(x)
    s = R.mad_scale(x - y)
    assert s[0].item() == 1.0 and math.isnan(s[1].item())
    v = R.tukey_biweight(x, y, reduction="none")
    rho, _ = _np_tukey(x.numpy(), y.numpy(), 4.6851, "mad")
    np.testing.assert_allclose(v.numpy(), rho, rtol=1e-12)
    assert torch.isnan(v[:, 1]).all()


def test_tukey_mad_zero_falls_back_to_one_per_coordinate():
    # coordinate 0: most residuals equal -> MAD 0 -> scale 1; coordinate 1: MAD 2 -> scale 2.9652
    x = torch.tensor([[1.0, 0.0], [1.0, 2.0], [1.0, 4.0], [5.0, 6.0], [1.0, 8.0]], dtype=torch.float64)
    y = torch.zeros_like(x)
    s = R.mad_scale(x - y)
    torch.testing.assert_close(s, torch.tensor([1.0, 1.4826 * 2.0], dtype=torch.float64))
    v = R.tukey_biweight(x, y, reduction="none")
    rho, _ = _np_tukey(x.numpy(), y.numpy(), 4.6851, "mad")
    np.testing.assert_allclose(v.numpy(), rho, rtol=1e-12)
    # a single sample: MAD 0 everywhere, scale 1 -> same as scale="none"
    one = torch.tensor([[0.5, -3.0, 9.0]], dtype=torch.float64)
    torch.testing.assert_close(R.tukey_biweight(one, 0 * one), R.tukey_biweight(one, 0 * one, scale="none"))


def test_tukey_scale_is_held_constant_for_the_gradient():
    x, y = _pair((8, 4), seed=4)
    s = R.mad_scale(x - y)
    _, gx, gy = _grads(lambda a, b: R.tukey_biweight(a, b), x, y)
    # same gradient as with that scale given as a constant tensor per coordinate
    _, fx, fy = _grads(lambda a, b: R.tukey_biweight(a / s, b / s, scale="none"), x, y)
    torch.testing.assert_close(gx, fx)
    torch.testing.assert_close(gy, fy)


@pytest.mark.parametrize("scale", ["none", 1.3])
def test_tukey_gradcheck(scale):
    x, y = _pair((5, 3), seed=5, scale=2.0)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: R.tukey_biweight(a, b, c=2.5, scale=scale), (x, y))


def test_tukey_gradcheck_mad_at_fixed_scale():
    # with "mad" finite differences would move the scale; gradcheck the function of the residual at that scale
    x, y = _pair((6, 2), seed=6)
    s = R.mad_scale(x - y)
    xr = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: R.tukey_biweight(a / s, y / s, scale="none"), (xr,))


def test_tukey_float32():
    x, y = _pair((6, 3), seed=7, dtype=torch.float32)
    v = R.tukey_biweight(x, y)
    assert v.dtype == torch.float32
    rho, _ = _np_tukey(x.double().numpy(), y.double().numpy(), 4.6851, "mad")
    np.testing.assert_allclose(v.item(), rho.mean(), rtol=1e-5)


def test_tukey_params():
    assert R.TukeyParams(scale=2).scale == 2.0
    assert R.TukeyParams(scale="none").scale == "none"
    for bad in ["MAD", "std", 0, -1.0, True, None, float("inf"), float("nan"), "2.0"]:
        with pytest.raises(ValidationError):
            R.TukeyParams(scale=bad)
    for bad in [0, -1.0, float("nan")]:
        with pytest.raises(ValidationError):
            R.TukeyParams(c=bad)
    with pytest.raises(ValidationError):
        R.TukeyParams(k=1.0)


def test_tukey_check():
    spec = SPECS["tukey_biweight"]
    x = torch.zeros(4, 3)
    spec.check({"input": x, "target": x.clone()}, R.TukeyParams())
    with pytest.raises(InputError) as e:
        spec.check({"input": x, "target": torch.zeros(4, 2)}, R.TukeyParams())
    assert e.value.loc == ("inputs", "target")
    with pytest.raises(InputError) as e:
        spec.check({"input": torch.tensor(1.0), "target": torch.tensor(0.0)}, R.TukeyParams())
    assert e.value.loc == ("inputs", "input")
    # without "mad" a scalar is fine
    spec.check({"input": torch.tensor(1.0), "target": torch.tensor(0.0)}, R.TukeyParams(scale="none"))


# ---------------------------------------------------------------------------
# log_cosh


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_log_cosh_matches_numpy(reduction):
    x, y = _pair((4, 5), seed=8, scale=3.0)
    v, gx, gy = _grads(lambda a, b: R.log_cosh(a, b, reduction=reduction), x, y)
    r = x.numpy() - y.numpy()
    np.testing.assert_allclose(v.numpy(), _np_reduce(np.log(np.cosh(r)), reduction), rtol=1e-12, atol=1e-14)
    k = r.size if reduction == "mean" else 1
    np.testing.assert_allclose(gx.numpy(), np.tanh(r) / k, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(gy.numpy(), -np.tanh(r) / k, rtol=1e-12, atol=1e-14)


def test_log_cosh_stable_for_large_residuals_and_zero():
    x = torch.tensor([1e4, -1e4, 100.0, 0.0, 1e-4], dtype=torch.float32)
    v, gx, _ = _grads(lambda a, b: R.log_cosh(a, b, reduction="none"), x, torch.zeros_like(x))
    assert torch.isfinite(v).all() and torch.isfinite(gx).all()
    expected = torch.tensor([1e4 - math.log(2), 1e4 - math.log(2), 100 - math.log(2), 0.0, 0.5e-8])
    torch.testing.assert_close(v, expected, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(gx, torch.tensor([1.0, -1.0, 1.0, 0.0, 1e-4]), rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_log_cosh_across_the_switch_and_tiny(dtype):
    r = np.concatenate([np.linspace(-30, 30, 241), [14.999, 15.0, 15.001, -15.0, 1e-3, -1e-5, 1e-9]])
    x = torch.tensor(r, dtype=dtype)
    v, gx, _ = _grads(lambda a, b: R.log_cosh(a, b, reduction="none"), x, torch.zeros_like(x))
    rr = x.double().numpy()
    tol = 1e-11 if dtype == torch.float64 else 2e-6
    # reference: Taylor series for tiny residuals (where log(cosh) itself loses digits), log(cosh) elsewhere
    taylor = rr**2 / 2 - rr**4 / 12 + rr**6 / 45 - 17 * rr**8 / 2520
    ref = np.where(np.abs(rr) < 0.01, taylor, np.log(np.cosh(rr)))
    # relative accuracy also for tiny residuals (no cancellation against log 2)
    np.testing.assert_allclose(v.double().numpy(), ref, rtol=tol, atol=0)
    np.testing.assert_allclose(gx.double().numpy(), np.tanh(rr), rtol=tol, atol=0)


def test_log_cosh_gradcheck():
    x, y = _pair((3, 3), seed=9)
    x[0, 0] = y[0, 0] + 20.0  # the far branch too
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(R.log_cosh, (x, y))


# ---------------------------------------------------------------------------
# quantile


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("q", [0.5, 0.1, 0.9, 0.0, 1.0])
def test_quantile_matches_numpy(q, reduction):
    x, y = _pair((6, 2), seed=10)
    v, gx, gy = _grads(lambda a, b: R.quantile(a, b, q=q, reduction=reduction), x, y)
    d = y.numpy() - x.numpy()
    assert (d > 0).any() and (d < 0).any()
    np.testing.assert_allclose(v.numpy(), _np_reduce(np.maximum(q * d, (q - 1) * d), reduction), rtol=1e-12)
    k = d.size if reduction == "mean" else 1
    dd = np.where(d > 0, q, q - 1)  # derivative w.r.t. the target; the input's is its negative
    np.testing.assert_allclose(gy.numpy(), dd / k, rtol=1e-12)
    np.testing.assert_allclose(gx.numpy(), -dd / k, rtol=1e-12)


def test_quantile_default_is_half_l1():
    x, y = _pair()
    torch.testing.assert_close(R.quantile(x, y), 0.5 * F.l1_loss(x, y))


def test_quantile_gradcheck_and_params():
    x, y = _pair((4, 2), seed=11)
    x.requires_grad_(True)
    y.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: R.quantile(a, b, q=0.3), (x, y))
    for bad in [-0.1, 1.1, float("nan")]:
        with pytest.raises(ValidationError):
            R.QuantileParams(q=bad)


# ---------------------------------------------------------------------------
# checks and params shared by the rows


@pytest.mark.parametrize("name", sorted(ROWS))
def test_check_requires_same_shape(name):
    spec = SPECS[name]
    p = spec.params()
    spec.check({"input": torch.zeros(3, 2), "target": torch.ones(3, 2)}, p)
    for bad in [torch.zeros(3), torch.zeros(2, 3), torch.zeros(1, 2)]:
        with pytest.raises(InputError) as e:
            spec.check({"input": torch.zeros(3, 2), "target": bad}, p)
        assert e.value.loc == ("inputs", "target")
        assert "shape" in e.value.msg


@pytest.mark.parametrize("name", sorted(ROWS))
def test_params_reject_unknown_and_bad_reduction(name):
    model = SPECS[name].params
    with pytest.raises(ValidationError):
        model(nope=1)
    with pytest.raises(ValidationError):
        model(reduction="batchmean")
    assert model().reduction == "mean"


def test_params_ranges():
    with pytest.raises(ValidationError):
        R.SmoothL1Params(beta=-0.1)
    for bad in [0.0, -1.0]:
        with pytest.raises(ValidationError):
            R.HuberParams(delta=bad)
    assert R.SmoothL1Params(beta=0).beta == 0.0
