"""Tests for lossd.losses.margins: hinge family, exponential and torch's margin losses.

Formula rows are checked against float64 numpy references written here from losses.md;
torch rows against ``torch.nn.functional`` called directly. Gradients: against the
reference's gradient (analytic, or torch's autograd for torch rows) and ``gradcheck``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lossd.losses import margins
from lossd.spec import InputError, LossSpec

SPECS = {s.name: s for s in margins.SPECS}
REDUCTIONS = ("mean", "sum", "none")


def _spec(name: str) -> LossSpec:
    return SPECS[name]


def run(name: str, inputs: dict[str, Any], **params: Any) -> torch.Tensor:
    """What the engine does: params model, host check, then the function."""
    spec = _spec(name)
    p = spec.params(**params)
    if spec.check is not None:
        spec.check(inputs, p)
    out = spec.fn(**inputs, **dict(p))
    assert isinstance(out, torch.Tensor)
    return out


def check_error(name: str, inputs: dict[str, Any], loc: tuple[str, str], **params: Any) -> InputError:
    spec = _spec(name)
    p = spec.params(**params)
    assert spec.check is not None
    with pytest.raises(InputError) as ei:
        spec.check(inputs, p)
    assert ei.value.loc == loc
    assert ei.value.msg
    return ei.value


def np_reduce(v: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        return np.asarray(v.mean())
    if reduction == "sum":
        return np.asarray(v.sum())
    return v


def assert_close(got: torch.Tensor, want: np.ndarray | torch.Tensor, rtol: float = 1e-10, atol: float = 1e-12) -> None:
    w = torch.as_tensor(np.asarray(want) if not isinstance(want, torch.Tensor) else want, dtype=got.dtype)
    assert tuple(got.shape) == tuple(w.shape)
    torch.testing.assert_close(got.detach(), w, rtol=rtol, atol=atol, equal_nan=True)


def rng(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=rng(seed), dtype=torch.float64)


def pm1(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=rng(seed)).double() * 2 - 1


# ---------------------------------------------------------------------------
# Catalogue entries


EXPECTED_ALIASES = {
    "hinge": (),
    "squared_hinge": (),
    "categorical_hinge": (),
    "multi_margin": ("multiclass_hinge",),
    "exponential": ("adaboost",),
    "soft_margin": (),
    "multilabel_soft_margin": (),
    "multilabel_margin": (),
    "hinge_embedding": (),
}


def test_specs_and_aliases() -> None:
    assert set(SPECS) == set(EXPECTED_ALIASES)
    for name, aliases in EXPECTED_ALIASES.items():
        spec = SPECS[name]
        assert tuple(spec.aliases) == aliases
        assert spec.summary and "\n" not in spec.summary
        assert spec.reference
        assert spec.check is not None
        assert spec.reductions == REDUCTIONS
        assert spec.differentiable == ("input",)


def test_param_defaults() -> None:
    assert dict(_spec("hinge").params()) == {"reduction": "mean", "margin": 1.0, "squared": False}
    assert dict(_spec("squared_hinge").params()) == {"reduction": "mean", "margin": 1.0}
    assert dict(_spec("multi_margin").params()) == {"reduction": "mean", "p": 1, "margin": 1.0}
    assert dict(_spec("hinge_embedding").params()) == {"reduction": "mean", "margin": 1.0}
    for name in ("categorical_hinge", "exponential", "soft_margin", "multilabel_soft_margin", "multilabel_margin"):
        assert dict(_spec(name).params()) == {"reduction": "mean"}


@pytest.mark.parametrize("name", sorted(EXPECTED_ALIASES))
def test_params_reject_unknown_and_bad_reduction(name: str) -> None:
    model = _spec(name).params
    with pytest.raises(ValidationError):
        model(bogus=1)
    with pytest.raises(ValidationError):
        model(reduction="batchmean")


@pytest.mark.parametrize(
    ("name", "field", "value"),
    [
        ("hinge", "margin", float("nan")),
        ("hinge", "margin", float("inf")),
        ("hinge", "squared", "maybe"),
        ("squared_hinge", "margin", float("-inf")),
        ("squared_hinge", "squared", True),  # not a param of squared_hinge
        ("multi_margin", "p", 3),
        ("multi_margin", "p", 0),
        ("multi_margin", "p", 1.5),
        ("multi_margin", "margin", float("nan")),
        ("hinge_embedding", "margin", float("inf")),
        ("exponential", "margin", 1.0),  # exponential takes no margin
    ],
)
def test_params_reject_bad_values(name: str, field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        _spec(name).params(**{field: value})


def test_multi_margin_p_values() -> None:
    assert _spec("multi_margin").params(p=2).p == 2
    assert _spec("multi_margin").params(p=1).p == 1
    for bad in (3, True, "1"):  # 1 or 2: true == 1 and "1" are not
        with pytest.raises(ValidationError):
            _spec("multi_margin").params(p=bad)


# ---------------------------------------------------------------------------
# hinge / squared_hinge / exponential (formula rows)


def ref_hinge(f: np.ndarray, y: np.ndarray, margin: float, squared: bool) -> np.ndarray:
    v = np.maximum(0.0, margin - y * f)
    return v * v if squared else v


def ref_hinge_grad(f: np.ndarray, y: np.ndarray, margin: float, squared: bool, reduction: str) -> np.ndarray:
    m = margin - y * f
    g = -y * (m > 0) * (2 * m if squared else 1.0)
    return g / f.size if reduction == "mean" else g


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("margin", "squared"), [(1.0, False), (0.5, False), (1.0, True), (2.5, True), (-0.3, False)])
def test_hinge_values_and_grads(reduction: str, margin: float, squared: bool) -> None:
    f = randn(4, 5, seed=3) * 2
    y = pm1(4, 5, seed=4)
    x = f.clone().requires_grad_(True)
    out = run("hinge", {"input": x, "target": y}, margin=margin, squared=squared, reduction=reduction)
    assert out.dtype == torch.float64
    want = np_reduce(ref_hinge(f.numpy(), y.numpy(), margin, squared), reduction)
    assert_close(out, want)
    out.sum().backward()
    assert x.grad is not None
    assert_close(x.grad, ref_hinge_grad(f.numpy(), y.numpy(), margin, squared, reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.25])
def test_squared_hinge_is_hinge_squared(reduction: str, margin: float) -> None:
    f = randn(3, 7, seed=5)
    y = pm1(3, 7, seed=6)
    out = run("squared_hinge", {"input": f, "target": y}, margin=margin, reduction=reduction)
    assert_close(out, np_reduce(ref_hinge(f.numpy(), y.numpy(), margin, True), reduction))
    again = run("hinge", {"input": f, "target": y}, margin=margin, squared=True, reduction=reduction)
    assert_close(out, again)


def ref_exponential(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.exp(-y * f)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_exponential_values_and_grads(reduction: str) -> None:
    f = randn(6, 3, seed=7)
    y = pm1(6, 3, seed=8)
    x = f.clone().requires_grad_(True)
    out = run("exponential", {"input": x, "target": y}, reduction=reduction)
    assert_close(out, np_reduce(ref_exponential(f.numpy(), y.numpy()), reduction))
    out.sum().backward()
    g = -y.numpy() * np.exp(-y.numpy() * f.numpy())
    assert x.grad is not None
    assert_close(x.grad, g / f.numel() if reduction == "mean" else g)


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "exponential"])
def test_zero_one_targets_are_mapped(name: str) -> None:
    f = randn(10, seed=9)
    y01 = torch.tensor([0, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=torch.float64)
    ypm = 2 * y01 - 1
    ref = {
        "hinge": lambda y: ref_hinge(f.numpy(), y, 1.0, False),
        "squared_hinge": lambda y: ref_hinge(f.numpy(), y, 1.0, True),
        "exponential": lambda y: ref_exponential(f.numpy(), y),
    }[name]
    got = run(name, {"input": f, "target": y01}, reduction="none")
    assert_close(got, ref(ypm.numpy()))
    # all zeros: every one becomes -1
    got0 = run(name, {"input": f, "target": torch.zeros(10, dtype=torch.float64)}, reduction="none")
    assert_close(got0, ref(-np.ones(10)))
    # all ones: taken as {-1,1} (and identical under either reading)
    got1 = run(name, {"input": f, "target": torch.ones(10, dtype=torch.float64)}, reduction="none")
    assert_close(got1, ref(np.ones(10)))
    # {-1,1} untouched
    gotpm = run(name, {"input": f, "target": ypm}, reduction="none")
    assert_close(gotpm, ref(ypm.numpy()))


def test_zero_one_mapping_in_float32_and_int_targets() -> None:
    f = torch.tensor([0.5, -0.25, 2.0], dtype=torch.float32)
    y = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float32)  # the engine converts int targets to float
    out = run("hinge", {"input": f, "target": y}, reduction="none")
    assert out.dtype == torch.float32
    assert_close(out, np.array([0.5, 0.75, 3.0]), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "exponential"])
@pytest.mark.parametrize(
    "target",
    [
        [-1.0, 0.0, 1.0],  # mixes both conventions
        [0.0, 2.0, 1.0],
        [0.5, 1.0, -1.0],
        [float("nan"), 1.0, -1.0],
        [-1.0, 0.0, 0.0],
    ],
)
def test_signed_targets_rejected(name: str, target: list[float]) -> None:
    check_error(name, {"input": randn(3), "target": torch.tensor(target, dtype=torch.float64)}, ("inputs", "target"))


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "exponential", "soft_margin", "hinge_embedding"])
def test_elementwise_shape_mismatch(name: str) -> None:
    check_error(name, {"input": randn(3, 4), "target": torch.ones(4, 3, dtype=torch.float64)}, ("inputs", "target"))
    # a target larger than the input (it would broadcast the input) is rejected too
    check_error(name, {"input": randn(4), "target": torch.ones(3, 4, dtype=torch.float64)}, ("inputs", "target"))


@pytest.mark.parametrize("name", ["hinge", "squared_hinge", "exponential"])
def test_signed_target_broadcast_and_scalar(name: str) -> None:
    f = randn(3, 4, seed=10)
    y = torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    got = run(name, {"input": f, "target": y}, reduction="none")
    full = run(name, {"input": f, "target": y.expand(3, 4).clone()}, reduction="none")
    assert got.shape == (3, 4)
    assert_close(got, full)
    scalar = run(
        name, {"input": torch.tensor(0.3, dtype=torch.float64), "target": torch.tensor(-1.0)}, reduction="mean"
    )
    assert scalar.shape == ()


def test_hinge_values_by_hand() -> None:
    f = torch.tensor([2.0, 0.5, -0.5, 0.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=torch.float64)
    assert_close(run("hinge", {"input": f, "target": y}, reduction="none"), np.array([0.0, 0.5, 1.5, 1.0]))
    assert_close(run("squared_hinge", {"input": f, "target": y}, reduction="sum"), np.array(0.25 + 2.25 + 1.0))
    assert_close(run("exponential", {"input": f, "target": y}, reduction="none"), np.exp([-2.0, -0.5, 0.5, 0.0]))


def test_empty_elementwise() -> None:
    e = torch.zeros(0, dtype=torch.float64)
    for name in ("hinge", "squared_hinge", "exponential"):
        assert torch.isnan(run(name, {"input": e, "target": e}))
        assert run(name, {"input": e, "target": e}, reduction="sum").item() == 0.0
        assert run(name, {"input": e, "target": e}, reduction="none").shape == (0,)


def test_exponential_large_margin_is_finite_or_inf_not_nan() -> None:
    f = torch.tensor([800.0, -800.0], dtype=torch.float64)
    y = torch.tensor([1.0, 1.0], dtype=torch.float64)
    out = run("exponential", {"input": f, "target": y}, reduction="none")
    assert out[0].item() == 0.0
    assert out[1].item() == float("inf")


# ---------------------------------------------------------------------------
# categorical_hinge (Keras 3 formula)


def ref_categorical_hinge(f: np.ndarray, t: np.ndarray) -> np.ndarray:
    pos = np.sum(t * f, axis=-1)
    neg = np.max((1.0 - t) * f, axis=-1)
    return np.maximum(neg - pos + 1.0, 0.0)


def one_hot(n: int, c: int, seed: int = 2) -> torch.Tensor:
    idx = torch.randint(0, c, (n,), generator=rng(seed))
    return F.one_hot(idx, c).double()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_categorical_hinge_values_and_grads(reduction: str) -> None:
    f = randn(8, 5, seed=11)
    t = one_hot(8, 5, seed=12)
    x = f.clone().requires_grad_(True)
    out = run("categorical_hinge", {"input": x, "target": t}, reduction=reduction)
    assert out.shape == ((8,) if reduction == "none" else ())
    assert_close(out, np_reduce(ref_categorical_hinge(f.numpy(), t.numpy()), reduction))
    out.sum().backward()
    # reference gradient: per active sample, +1 at the argmax of (1-t)*f (unless the true class' 0 wins), -1 at the true
    fn, tn = f.numpy(), t.numpy()
    g = np.zeros_like(fn)
    for i in range(fn.shape[0]):
        if ref_categorical_hinge(fn[i : i + 1], tn[i : i + 1])[0] > 0:
            masked = (1 - tn[i]) * fn[i]
            j = int(np.argmax(masked))
            g[i, j] += 1 - tn[i, j]
            g[i] -= tn[i]
    if reduction == "mean":
        g /= fn.shape[0]
    assert x.grad is not None
    assert_close(x.grad, g)


def test_categorical_hinge_max_never_below_zero() -> None:
    # every wrong-class score is negative: Keras' max over (1-t)*f is the true class' 0, not the largest wrong score
    f = torch.tensor([[-3.0, -2.0, 0.5], [-1.0, -4.0, -0.5]], dtype=torch.float64)
    t = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    out = run("categorical_hinge", {"input": f, "target": t}, reduction="none")
    assert_close(out, np.array([max(0.0, 1 + 0 - 0.5), max(0.0, 1 + 0 - (-0.5))]))
    assert_close(out, ref_categorical_hinge(f.numpy(), t.numpy()))
    # a clear margin gives 0
    f2 = torch.tensor([[0.0, 3.0, 1.5]], dtype=torch.float64)
    t2 = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
    assert run("categorical_hinge", {"input": f2, "target": t2}).item() == 0.0


def test_categorical_hinge_float32_and_single_class() -> None:
    f = torch.tensor([[0.25], [-1.0]], dtype=torch.float32)
    t = torch.ones(2, 1, dtype=torch.float32)
    out = run("categorical_hinge", {"input": f, "target": t}, reduction="none")
    assert out.dtype == torch.float32
    assert_close(out, np.array([0.75, 2.0]), rtol=1e-6, atol=1e-7)


def test_categorical_hinge_empty_batch() -> None:
    e = torch.zeros(0, 4, dtype=torch.float64)
    assert run("categorical_hinge", {"input": e, "target": e}, reduction="none").shape == (0,)
    assert run("categorical_hinge", {"input": e, "target": e}, reduction="sum").item() == 0.0


@pytest.mark.parametrize(
    ("x", "t", "loc"),
    [
        (randn(4), torch.tensor([0.0, 1.0, 0.0, 0.0]), "input"),  # (C) not (N,C)
        (randn(2, 3, 4), torch.zeros(2, 3, 4), "input"),
        (randn(2, 0), torch.zeros(2, 0), "input"),
        (randn(2, 3), torch.zeros(2, 4), "target"),
        (randn(2, 3), torch.tensor([[0.0, 1.0, 0.0], [0.5, 0.5, 0.0]]), "target"),  # soft labels
        (randn(2, 3), torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0]]), "target"),  # two ones
        (randn(2, 3), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]), "target"),  # no one
        (randn(2, 3), torch.tensor([[0.0, 1.0, 0.0], [-1.0, 1.0, 1.0]]), "target"),  # sums to 1, not one-hot
        (randn(2, 3), torch.tensor([[0.0, 1.0, float("nan")], [1.0, 0.0, 0.0]]), "target"),
    ],
)
def test_categorical_hinge_check(x: torch.Tensor, t: torch.Tensor, loc: str) -> None:
    check_error("categorical_hinge", {"input": x, "target": t.double()}, ("inputs", loc))


# ---------------------------------------------------------------------------
# gradcheck on the service's functions (float64), away from the kinks


def _away_from_kinks(t: torch.Tensor) -> torch.Tensor:
    return t + 0.05 * torch.sign(t)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("hinge", {}),
        ("hinge", {"margin": 0.5, "squared": True, "reduction": "sum"}),
        ("squared_hinge", {"reduction": "none"}),
        ("exponential", {}),
        ("exponential", {"reduction": "none"}),
        ("soft_margin", {}),
        ("hinge_embedding", {"margin": 0.7}),
    ],
)
def test_gradcheck_elementwise(name: str, params: dict[str, Any]) -> None:
    y = pm1(3, 4, seed=13)
    f = randn(3, 4, seed=14)
    margin = params.get("margin", 1.0)
    if name in ("hinge", "squared_hinge"):
        f = y * (margin - _away_from_kinks(margin - y * f))
    if name == "hinge_embedding":
        f = margin - _away_from_kinks(margin - f)
    x = f.clone().requires_grad_(True)
    p = dict(_spec(name).params(**params))
    assert torch.autograd.gradcheck(lambda v: _spec(name).fn(v, y, **p), (x,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradcheck_categorical_hinge(reduction: str) -> None:
    x = randn(5, 4, seed=15).requires_grad_(True)
    t = one_hot(5, 4, seed=16)
    assert torch.autograd.gradcheck(lambda v: margins.categorical_hinge(v, t, reduction=reduction), (x,))


@pytest.mark.parametrize(("p", "weighted"), [(1, False), (2, True)])
def test_gradcheck_multi_margin(p: int, weighted: bool) -> None:
    x = randn(4, 5, seed=17).requires_grad_(True)
    t = torch.tensor([0, 3, 4, 1])
    w = torch.rand(5, generator=rng(18), dtype=torch.float64) if weighted else None
    assert torch.autograd.gradcheck(lambda v: margins.multi_margin(v, t, w, p=p, margin=0.8), (x,))


def test_gradcheck_multilabel_losses() -> None:
    x = randn(3, 5, seed=19).requires_grad_(True)
    t01 = torch.randint(0, 2, (3, 5), generator=rng(20)).double()
    w = torch.rand(5, generator=rng(21), dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda v: margins.multilabel_soft_margin(v, t01, w), (x,))
    tm = torch.tensor([[3, 0, -1, 1, 1], [1, -1, 0, 0, 0], [4, 2, 0, 1, -1]])
    assert torch.autograd.gradcheck(lambda v: margins.multilabel_margin(v, tm, reduction="sum"), (x,))


# ---------------------------------------------------------------------------
# torch rows: values and gradients against torch.nn.functional


def _compare_torch(name: str, inputs: dict[str, Any], ref: Any, **params: Any) -> None:
    """Service value and input gradient equal torch.nn.functional's."""
    x = inputs["input"].detach().clone().requires_grad_(True)
    xr = inputs["input"].detach().clone().requires_grad_(True)
    got = run(name, {**inputs, "input": x}, **params)
    want = ref(xr)
    assert got.dtype == want.dtype
    assert_close(got, want.detach())
    got.sum().backward()
    want.sum().backward()
    assert x.grad is not None and xr.grad is not None
    assert_close(x.grad, xr.grad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("p", "margin", "weighted"), [(1, 1.0, False), (2, 1.0, False), (1, 0.3, True), (2, 2.0, True)]
)
def test_multi_margin_matches_torch(reduction: str, p: int, margin: float, weighted: bool) -> None:
    x = randn(6, 4, seed=22)
    t = torch.tensor([0, 1, 2, 3, 3, 0])
    w = torch.rand(4, generator=rng(23), dtype=torch.float64) + 0.5 if weighted else None
    inputs: dict[str, Any] = {"input": x, "target": t}
    if w is not None:
        inputs["weight"] = w
    _compare_torch(
        "multi_margin",
        inputs,
        lambda v: F.multi_margin_loss(v, t, p=p, margin=margin, weight=w, reduction=reduction),
        p=p,
        margin=margin,
        reduction=reduction,
    )


def test_multi_margin_defaults_float32_and_unbatched() -> None:
    x = torch.randn(5, 3, generator=rng(24))
    t = torch.tensor([2, 0, 1, 1, 0])
    _compare_torch("multi_margin", {"input": x, "target": t}, lambda v: F.multi_margin_loss(v, t))
    x1 = torch.randn(4, generator=rng(25), dtype=torch.float64)
    for t1 in (torch.tensor(2), torch.tensor([2])):
        for red in REDUCTIONS:
            _compare_torch(
                "multi_margin",
                {"input": x1, "target": t1},
                lambda v, t1=t1, red=red: F.multi_margin_loss(v, t1, reduction=red),
                reduction=red,
            )


def test_multi_margin_empty_batch() -> None:
    x = torch.zeros(0, 3, dtype=torch.float64)
    t = torch.zeros(0, dtype=torch.long)
    assert torch.isnan(run("multi_margin", {"input": x, "target": t}))  # a mean over no sample (torch's is garbage)
    assert run("multi_margin", {"input": x, "target": t}, reduction="sum").item() == 0.0
    assert run("multi_margin", {"input": x, "target": t}, reduction="none").shape == (0,)


@pytest.mark.parametrize(
    ("inputs", "loc"),
    [
        ({"input": randn(3, 4), "target": torch.tensor([0, 1, 4])}, "target"),
        ({"input": randn(3, 4), "target": torch.tensor([0, -1, 2])}, "target"),
        ({"input": randn(3, 4), "target": torch.tensor([-100, 1, 2])}, "target"),  # no ignore_index
        ({"input": randn(3, 4), "target": torch.tensor([0, 1])}, "target"),
        ({"input": randn(3, 4), "target": torch.tensor([[0, 1, 2]])}, "target"),
        ({"input": randn(4), "target": torch.tensor([0, 1])}, "target"),
        ({"input": randn(4), "target": torch.tensor(4)}, "target"),
        ({"input": randn(2, 3, 4), "target": torch.tensor([0, 1])}, "input"),
        ({"input": randn(()), "target": torch.tensor(0)}, "input"),
        ({"input": randn(2, 0), "target": torch.tensor([0, 0])}, "input"),
        ({"input": randn(3, 4), "target": torch.tensor([0, 1, 2]), "weight": torch.ones(3)}, "weight"),
        ({"input": randn(3, 4), "target": torch.tensor([0, 1, 2]), "weight": torch.ones(1, 4)}, "weight"),
    ],
)
def test_multi_margin_check(inputs: dict[str, Any], loc: str) -> None:
    check_error("multi_margin", inputs, ("inputs", loc))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_soft_margin_matches_torch(reduction: str) -> None:
    x = randn(4, 3, seed=26)
    y = pm1(4, 3, seed=27)
    _compare_torch(
        "soft_margin",
        {"input": x, "target": y},
        lambda v: F.soft_margin_loss(v, y, reduction=reduction),
        reduction=reduction,
    )


def test_soft_margin_torch_target_rules() -> None:
    # torch's own rules: {0,1} targets are NOT mapped (0 gives log 2), unlike hinge
    x = randn(5, seed=28)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0], dtype=torch.float64)
    _compare_torch(
        "soft_margin", {"input": x, "target": y}, lambda v: F.soft_margin_loss(v, y, reduction="none"), reduction="none"
    )
    out = run("soft_margin", {"input": x, "target": y}, reduction="none")
    assert abs(out[0].item() - np.log(2)) < 1e-12
    # a broadcast target, float32, and a reference from the formula log(1+exp(-y*x))
    x32 = torch.randn(2, 3, generator=rng(29))
    yb = torch.tensor([1.0, -1.0, 1.0])
    out32 = run("soft_margin", {"input": x32, "target": yb}, reduction="none")
    assert out32.dtype == torch.float32 and out32.shape == (2, 3)
    assert_close(out32, np.log1p(np.exp(-yb.numpy() * x32.numpy().astype(np.float64))), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_multilabel_soft_margin_matches_torch(reduction: str, weighted: bool) -> None:
    x = randn(5, 4, seed=30)
    t = torch.randint(0, 2, (5, 4), generator=rng(31)).double()
    w = torch.rand(4, generator=rng(32), dtype=torch.float64) if weighted else None
    inputs: dict[str, Any] = {"input": x, "target": t}
    if w is not None:
        inputs["weight"] = w
    _compare_torch(
        "multilabel_soft_margin",
        inputs,
        lambda v: F.multilabel_soft_margin_loss(v, t, weight=w, reduction=reduction),
        reduction=reduction,
    )
    if reduction == "none":
        assert run("multilabel_soft_margin", inputs, reduction="none").shape == (5,)


def test_multilabel_soft_margin_unbatched_and_float32() -> None:
    x = torch.randn(6, generator=rng(33))
    t = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    _compare_torch("multilabel_soft_margin", {"input": x, "target": t}, lambda v: F.multilabel_soft_margin_loss(v, t))


@pytest.mark.parametrize(
    ("inputs", "loc"),
    [
        ({"input": randn(3, 4), "target": torch.zeros(3, 5)}, "target"),
        ({"input": randn(3, 4), "target": torch.zeros(4)}, "target"),
        ({"input": randn(2, 3, 4), "target": torch.zeros(2, 3, 4)}, "input"),
        ({"input": randn(3, 0), "target": torch.zeros(3, 0)}, "input"),
        ({"input": randn(3, 4), "target": torch.zeros(3, 4), "weight": torch.ones(3)}, "weight"),
        ({"input": randn(3, 4), "target": torch.zeros(3, 4), "weight": torch.ones(3, 4)}, "weight"),
    ],
)
def test_multilabel_soft_margin_check(inputs: dict[str, Any], loc: str) -> None:
    check_error("multilabel_soft_margin", inputs, ("inputs", loc))


MLM_TARGET = torch.tensor(
    [
        [3, 0, -1, 1],  # {3, 0}; values after the first -1 are ignored
        [-1, 1, 2, 3],  # no label
        [0, 1, 2, 3],  # every class
        [2, 2, -1, -1],  # duplicate
        [1, -1, -1, -1],
    ]
)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_multilabel_margin_matches_torch(reduction: str) -> None:
    x = randn(5, 4, seed=34)
    _compare_torch(
        "multilabel_margin",
        {"input": x, "target": MLM_TARGET},
        lambda v: F.multilabel_margin_loss(v, MLM_TARGET, reduction=reduction),
        reduction=reduction,
    )


def test_multilabel_margin_by_hand_unbatched_and_empty() -> None:
    # C=3, Y={0}: sum over i in {1,2} of max(0, 1 - (x0 - xi)) / 3
    x = torch.tensor([0.5, 0.0, 1.0], dtype=torch.float64)
    out = run("multilabel_margin", {"input": x, "target": torch.tensor([0, -1, 2])})
    assert_close(out, np.array((0.5 + 1.5) / 3))
    x32 = torch.randn(4, generator=rng(35))
    t = torch.tensor([1, 2, -1, 0])
    _compare_torch("multilabel_margin", {"input": x32, "target": t}, lambda v: F.multilabel_margin_loss(v, t))
    e = torch.zeros(0, 4, dtype=torch.float64)
    et = torch.zeros(0, 4, dtype=torch.long)
    assert torch.isnan(run("multilabel_margin", {"input": e, "target": et}))  # torch's own mean is garbage here
    assert run("multilabel_margin", {"input": e, "target": et}, reduction="sum").item() == 0.0


@pytest.mark.parametrize(
    ("inputs", "loc"),
    [
        ({"input": randn(2, 4), "target": torch.tensor([[4, -1, 0, 0], [0, -1, 0, 0]])}, "target"),
        ({"input": randn(2, 4), "target": torch.tensor([[1, -1, 9, 0], [0, -1, 0, 0]])}, "target"),  # after padding
        ({"input": randn(2, 4), "target": torch.tensor([[1, -2, 0, 0], [0, -1, 0, 0]])}, "target"),
        ({"input": randn(2, 4), "target": torch.zeros(2, 3, dtype=torch.long)}, "target"),
        ({"input": randn(2, 4), "target": torch.zeros(4, dtype=torch.long)}, "target"),
        ({"input": randn(2, 3, 4), "target": torch.zeros(2, 3, 4, dtype=torch.long)}, "input"),
        ({"input": randn(2, 0), "target": torch.zeros(2, 0, dtype=torch.long)}, "input"),
    ],
)
def test_multilabel_margin_check(inputs: dict[str, Any], loc: str) -> None:
    check_error("multilabel_margin", inputs, ("inputs", loc))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 0.4, 2.0])
def test_hinge_embedding_matches_torch(reduction: str, margin: float) -> None:
    x = randn(4, 5, seed=36).abs() * 1.5
    y = pm1(4, 5, seed=37)
    _compare_torch(
        "hinge_embedding",
        {"input": x, "target": y},
        lambda v: F.hinge_embedding_loss(v, y, margin=margin, reduction=reduction),
        margin=margin,
        reduction=reduction,
    )


def test_hinge_embedding_by_hand_and_broadcast() -> None:
    x = torch.tensor([[0.2, 0.5], [1.5, 0.3]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = run("hinge_embedding", {"input": x, "target": y}, reduction="none")
    assert_close(out, np.array([[0.2, 0.5], [1.5, 0.7]]))
    _compare_torch("hinge_embedding", {"input": x, "target": y}, lambda v: F.hinge_embedding_loss(v, y))


# ---------------------------------------------------------------------------
# Spec inputs


def test_input_kinds() -> None:
    kinds = {s.name: {i.name: (i.kind, i.required) for i in s.inputs} for s in margins.SPECS}
    assert kinds["multi_margin"] == {"input": ("float", True), "target": ("index", True), "weight": ("float", False)}
    assert kinds["multilabel_margin"] == {"input": ("float", True), "target": ("index", True)}
    assert kinds["multilabel_soft_margin"]["weight"] == ("float", False)
    for name in ("hinge", "squared_hinge", "exponential", "soft_margin", "hinge_embedding", "categorical_hinge"):
        assert kinds[name] == {"input": ("float", True), "target": ("float", True)}


def test_multilabel_margin_work_is_bounded() -> None:
    from lossd.losses.margins import MAX_MULTILABEL_WORK, MULTILABEL_MARGIN
    from lossd.spec import InputError as Err

    c = 1 << 17
    x = torch.zeros(1, c)
    full = torch.arange(c).reshape(1, c)  # every class a label: C*C comparisons
    assert c * c > MAX_MULTILABEL_WORK
    assert MULTILABEL_MARGIN.check is not None
    with pytest.raises(Err) as e:
        MULTILABEL_MARGIN.check({"input": x, "target": full}, MULTILABEL_MARGIN.params())
    assert e.value.status == 413
    few = torch.full((1, c), -1)
    few[0, :3] = torch.tensor([0, 1, 2])
    MULTILABEL_MARGIN.check({"input": x, "target": few}, MULTILABEL_MARGIN.params())
