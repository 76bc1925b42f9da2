"""dice, tversky, total_variation against float64 references written from losses.md's formulas."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lossd.errors import Problem
from lossd.losses import segmentation as seg
from lossd.spec import InputError, LossSpec

SPECS = {s.name: s for s in seg.SPECS}


def spec(name: str) -> LossSpec:
    return SPECS[name]


def fn_of(name: str) -> Any:
    """The loss function, typed loosely for the tests (its value is a Tensor here)."""
    return SPECS[name].fn


# ---------------------------------------------------------------------------
# Reference implementations (numpy float64, from the formulas; no code under test)


def np_activation(x: np.ndarray, activation: str) -> np.ndarray:
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return x


def np_target(t: np.ndarray, num_classes: int) -> np.ndarray:
    if np.issubdtype(t.dtype, np.integer):
        onehot = np.eye(num_classes)[t]  # (N,...,C)
        return np.moveaxis(onehot, -1, 1)
    return t.astype(np.float64)


def np_groups(p: np.ndarray, t: np.ndarray, over: str) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The (p, t) element sets of each group, as a nested list: [[all]], [[n0], [n1]..], [[n0c0, n0c1..], ..]."""
    if over == "all":
        return [[(p, t)]]
    if over == "sample":
        return [[(p[n], t[n])] for n in range(p.shape[0])]
    return [[(p[n, c], t[n, c]) for c in range(p.shape[1])] for n in range(p.shape[0])]


def ref_overlap(
    x: torch.Tensor,
    target: torch.Tensor,
    *,
    kind: str,
    activation: str = "none",
    eps: float = 1e-5,
    smooth: float = 0.0,
    over: str = "all",
    include_background: bool = True,
    reduction: str = "mean",
    alpha: float = 0.5,
    beta: float = 0.5,
) -> np.ndarray:
    xn = x.detach().double().numpy()
    tn = target.numpy() if not target.is_floating_point() else target.double().numpy()
    p = np_activation(xn, activation)
    t = np_target(tn, xn.shape[1])
    if not include_background:
        p, t = p[:, 1:], t[:, 1:]

    def one(pg: np.ndarray, tg: np.ndarray) -> float:
        if kind == "dice":
            return 1.0 - (2.0 * np.sum(pg * tg) + smooth) / (np.sum(pg) + np.sum(tg) + smooth + eps)
        tp = np.sum(pg * tg)
        fp = np.sum(pg * (1.0 - tg))
        fn = np.sum((1.0 - pg) * tg)
        return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth + eps)

    vals = np.array([[one(pg, tg) for pg, tg in row] for row in np_groups(p, t, over)], dtype=np.float64)
    if over == "all":
        return vals.reshape(())
    if over == "sample":
        vals = vals.reshape(-1)
    if reduction == "mean":
        return np.asarray(vals.mean())
    if reduction == "sum":
        return np.asarray(vals.sum())
    return vals


def make_case(
    target_kind: str, shape: tuple[int, ...] = (3, 4, 5, 2), seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    n, c, *rest = shape
    if target_kind == "index":
        t = torch.randint(0, c, (n, *rest), generator=g)
    elif target_kind == "onehot":
        idx = torch.randint(0, c, (n, *rest), generator=g)
        t = torch.nn.functional.one_hot(idx, c).movedim(-1, 1).double()
    else:  # soft probabilities
        t = torch.rand(shape, generator=g, dtype=torch.float64)
    return x, t


def probs_for(x: torch.Tensor, activation: str) -> torch.Tensor:
    """With activation "none", feed probabilities in [0,1] (the usual use); else logits."""
    return torch.sigmoid(x).detach() if activation == "none" else x


# ---------------------------------------------------------------------------
# Specs


def test_names_and_aliases() -> None:
    assert set(SPECS) == {"dice", "tversky", "total_variation"}
    assert spec("dice").aliases == ()
    assert spec("tversky").aliases == ()
    assert spec("total_variation").aliases == ("tv",)
    for s in SPECS.values():
        assert s.reductions == ("mean", "sum", "none")
    assert spec("dice").differentiable == ("input",)
    assert spec("tversky").differentiable == ("input",)
    assert spec("total_variation").differentiable == ("input",)
    assert spec("dice").input("target").kind == "onehot_or_index"  # type: ignore[union-attr]
    assert spec("total_variation").input("target") is None


def test_default_params() -> None:
    d = seg.DiceParams()
    assert dict(d) == {
        "reduction": "mean",
        "activation": "none",
        "eps": 1e-5,
        "smooth": 0.0,
        "over": "all",
        "include_background": True,
    }
    t = seg.TverskyParams()
    assert t.alpha == 0.5 and t.beta == 0.5
    assert {k: v for k, v in dict(t).items() if k not in ("alpha", "beta")} == dict(d)
    assert dict(seg.TotalVariationParams()) == {"reduction": "mean", "norm": "l1"}


@pytest.mark.parametrize(
    ("model", "params"),
    [
        (seg.DiceParams, {"gamma": 1.0}),
        (seg.DiceParams, {"eps": -1e-3}),
        (seg.DiceParams, {"smooth": -1.0}),
        (seg.DiceParams, {"activation": "relu"}),
        (seg.DiceParams, {"over": "batch"}),
        (seg.DiceParams, {"reduction": "avg"}),
        (seg.DiceParams, {"include_background": "maybe"}),
        (seg.TverskyParams, {"alpha": -0.1}),
        (seg.TverskyParams, {"beta": -0.1}),
        (seg.TverskyParams, {"gamma": 1.0}),
        (seg.TotalVariationParams, {"norm": "l3"}),
        (seg.TotalVariationParams, {"weight": 1.0}),
        (seg.TotalVariationParams, {"reduction": "max"}),
    ],
)
def test_bad_params(model: Any, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model(**params)


# ---------------------------------------------------------------------------
# dice / tversky values


GRID = list(itertools.product(["none", "sigmoid", "softmax"], ["all", "sample", "sample_class"], [True, False]))


@pytest.mark.parametrize("target_kind", ["index", "onehot", "soft"])
@pytest.mark.parametrize(("activation", "over", "include_background"), GRID)
@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_values(name: str, target_kind: str, activation: str, over: str, include_background: bool) -> None:
    x, t = make_case(target_kind)
    x = probs_for(x, activation)
    fn = fn_of(name)
    extra: dict[str, Any] = {"alpha": 0.3, "beta": 0.7} if name == "tversky" else {}
    for reduction in ("mean", "sum", "none"):
        kw = dict(activation=activation, over=over, include_background=include_background, reduction=reduction)
        got = fn(x, t, **kw, **extra)
        want = ref_overlap(x, t, kind=name, **kw, **extra)  # type: ignore[arg-type]
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
        assert tuple(got.shape) == want.shape
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_none_shapes(name: str) -> None:
    x, t = make_case("index", shape=(3, 4, 5, 2))
    fn = fn_of(name)
    assert fn(x, t, over="all", reduction="none").shape == ()
    assert fn(x, t, over="sample", reduction="none").shape == (3,)
    assert fn(x, t, over="sample_class", reduction="none").shape == (3, 4)
    assert fn(x, t, over="sample_class", reduction="none", include_background=False).shape == (3, 3)
    # "all" is one group: every reduction returns the same scalar
    a = fn(x, t, over="all", reduction="mean")
    assert torch.equal(a, fn(x, t, over="all", reduction="sum"))
    # mean / sum of the per-sample groups
    per = fn(x, t, over="sample", reduction="none")
    torch.testing.assert_close(fn(x, t, over="sample", reduction="mean"), per.mean())
    torch.testing.assert_close(fn(x, t, over="sample", reduction="sum"), per.sum())


@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_defaults_and_nondefault_eps_smooth(name: str) -> None:
    x, t = make_case("soft", shape=(2, 3, 4))
    p = torch.sigmoid(x)
    fn = fn_of(name)
    torch.testing.assert_close(fn(p, t), torch.from_numpy(ref_overlap(p, t, kind=name)), rtol=1e-12, atol=0)
    got = fn(p, t, eps=0.1, smooth=2.0)
    want = ref_overlap(p, t, kind=name, eps=0.1, smooth=2.0)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    # the non-default settings change the value
    assert abs(float(got) - float(fn(p, t))) > 1e-3


def test_dice_hand_computed() -> None:
    # p = [0.5, 1, 0, 0.25] (one sample, two channels, two pixels), t = [1, 1, 0, 0]
    p = torch.tensor([[[0.5, 1.0], [0.0, 0.25]]], dtype=torch.float64)
    t = torch.tensor([[[1.0, 1.0], [0.0, 0.0]]], dtype=torch.float64)
    # 2*1.5 / (1.75 + 2) = 0.8
    torch.testing.assert_close(seg.dice(p, t, eps=0.0), torch.tensor(1 - 3.0 / 3.75, dtype=torch.float64))
    # same target as indices: class 0 at both pixels
    idx = torch.tensor([[0, 0]])
    torch.testing.assert_close(seg.dice(p, idx, eps=0.0), torch.tensor(1 - 3.0 / 3.75, dtype=torch.float64))
    # tversky: TP=1.5, FP=0.25, FN=0.5; alpha=1, beta=0 -> 1 - 1.5/1.75
    torch.testing.assert_close(
        seg.tversky(p, t, alpha=1.0, beta=0.0, eps=0.0), torch.tensor(1 - 1.5 / 1.75, dtype=torch.float64)
    )


def test_dice_perfect_and_empty() -> None:
    idx = torch.tensor([[0, 1, 2, 1]])
    onehot = torch.nn.functional.one_hot(idx, 3).movedim(-1, 1).double()
    assert float(seg.dice(onehot, idx)) == pytest.approx(0.0, abs=1e-5)
    assert float(seg.tversky(onehot, idx, alpha=0.9, beta=0.1)) == pytest.approx(0.0, abs=1e-5)
    # nothing predicted, nothing present: 1 - 0/eps = 1 without smoothing, 1 - s/s = 0 with it
    z = torch.zeros(1, 2, 3, dtype=torch.float64)
    assert float(seg.dice(z, z)) == 1.0
    assert float(seg.dice(z, z, smooth=1.0)) == pytest.approx(0.0, abs=1e-4)
    assert float(seg.tversky(z, z, smooth=1.0)) == pytest.approx(0.0, abs=1e-4)


def test_tversky_equals_dice_at_half() -> None:
    x, t = make_case("index")
    for over in ("all", "sample", "sample_class"):
        d = seg.dice(x, t, activation="softmax", over=over, reduction="none", eps=0.0)
        tv = seg.tversky(x, t, activation="softmax", over=over, reduction="none", eps=0.0)
        torch.testing.assert_close(tv, d, rtol=1e-12, atol=1e-12)


def test_overlap_2d_input_and_int32_indices() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    t64 = torch.tensor([0, 1, 2, 2, 1, 0])
    for over in ("all", "sample", "sample_class"):
        got = seg.dice(x, t64, activation="softmax", over=over, reduction="none")
        want = ref_overlap(x, t64, kind="dice", activation="softmax", over=over, reduction="none")
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert seg.dice(x, t64, over="sample_class", reduction="none").shape == (6, 3)
    # int32 indices pass the check and give the same one-hot
    seg._check_overlap({"input": x, "target": t64.int()}, seg.DiceParams())
    torch.testing.assert_close(seg.dice(x, t64.int(), activation="softmax"), seg.dice(x, t64, activation="softmax"))


def test_overlap_float32() -> None:
    x, t = make_case("index")
    got = seg.dice(x.float(), t, activation="softmax", over="sample_class")
    assert got.dtype == torch.float32
    want = ref_overlap(x.float(), t, kind="dice", activation="softmax", over="sample_class")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize(("activation", "over", "include_background"), [*GRID[::2], ("softmax", "sample", False)])
@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_gradcheck(name: str, activation: str, over: str, include_background: bool) -> None:
    x, t = make_case("soft", shape=(2, 3, 4))
    x = probs_for(x, activation).clone().requires_grad_(True)
    kw: dict[str, Any] = dict(activation=activation, over=over, include_background=include_background, smooth=0.5)
    if name == "tversky":
        kw.update(alpha=0.3, beta=0.8)
    fn = fn_of(name)
    assert torch.autograd.gradcheck(lambda inp: fn(inp, t, **kw, reduction="none"), (x,))
    assert torch.autograd.gradcheck(lambda inp: fn(inp, t, **kw, reduction="mean"), (x,))
    ti = make_case("index", shape=(2, 3, 4))[1]
    assert torch.autograd.gradcheck(lambda inp: fn(inp, ti, **kw, reduction="sum"), (x,))


# ---------------------------------------------------------------------------
# dice / tversky check


def check_overlap(inputs: dict[str, torch.Tensor], **params: Any) -> None:
    spec("dice").check(inputs, seg.DiceParams(**params))  # type: ignore[misc]


@pytest.mark.parametrize(
    ("x", "t", "params", "loc"),
    [
        (torch.rand(4), torch.rand(4), {}, "input"),
        (torch.rand(2, 0, 3), torch.rand(2, 0, 3), {}, "input"),
        (torch.rand(2, 1, 3), torch.zeros(2, 3, dtype=torch.long), {"include_background": False}, "input"),
        (torch.rand(2, 3, 4), torch.rand(2, 3, 5), {}, "target"),
        (torch.rand(2, 3, 4), torch.rand(2, 4), {}, "target"),
        (torch.rand(2, 3, 4), torch.full((2, 3, 4), 1.5), {}, "target"),
        (torch.rand(2, 3, 4), torch.full((2, 3, 4), -0.1), {}, "target"),
        (torch.rand(2, 3, 4), torch.full((2, 3, 4), float("nan")), {}, "target"),
        (torch.rand(2, 3, 4), torch.zeros(2, 5, dtype=torch.long), {}, "target"),
        (torch.rand(2, 3, 4), torch.zeros(2, 3, 4, dtype=torch.long), {}, "target"),
        (torch.rand(2, 3, 4), torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]]), {}, "target"),
        (torch.rand(2, 3, 4), torch.tensor([[0, 1, 2, -1], [0, 0, 0, 0]], dtype=torch.int32), {}, "target"),
    ],
)
def test_overlap_check_errors(x: torch.Tensor, t: torch.Tensor, params: dict[str, Any], loc: str) -> None:
    for name in ("dice", "tversky"):
        with pytest.raises(InputError) as e:
            spec(name).check({"input": x, "target": t}, spec(name).params(**params))  # type: ignore[misc]
        assert e.value.loc == ("inputs", loc)


def test_overlap_check_accepts_valid() -> None:
    x = torch.rand(2, 3, 4)
    check_overlap({"input": x, "target": torch.rand(2, 3, 4)})
    check_overlap({"input": x, "target": torch.tensor([[0, 1, 2, 2], [2, 1, 0, 0]])})
    check_overlap(
        {"input": torch.rand(2, 2, 4), "target": torch.ones(2, 4, dtype=torch.long)}, include_background=False
    )
    # raw logits with activation "none" are not rejected (no range rule on input)
    check_overlap({"input": x * 10 - 5, "target": torch.rand(2, 3, 4)})


def test_overlap_integer_onehot_message() -> None:
    onehot = torch.nn.functional.one_hot(torch.tensor([[0, 1, 2, 2]]), 3).movedim(-1, 1)  # int64, like JSON infers
    with pytest.raises(InputError) as e:
        check_overlap({"input": torch.rand(1, 3, 4), "target": onehot})
    assert e.value.loc == ("inputs", "target")
    assert "floating dtype" in e.value.msg
    check_overlap({"input": torch.rand(1, 3, 4), "target": onehot.float()})


# A bool one-hot target (JSON true/false arrays infer bool) is one-hot 0/1 in the input's dtype.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("activation", "over", "include_background"), GRID)
@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_bool_onehot_target(
    name: str, activation: str, over: str, include_background: bool, dtype: torch.dtype
) -> None:
    x, t = make_case("onehot", seed=5)
    x = probs_for(x, activation).to(dtype)
    tb = t.bool()
    assert tb.dtype == torch.bool and tb.shape == x.shape
    params = spec(name).params(activation=activation, over=over, include_background=include_background)
    spec(name).check({"input": x, "target": tb}, params)  # type: ignore[misc]
    extra: dict[str, Any] = {"alpha": 0.3, "beta": 0.7} if name == "tversky" else {}
    fn = fn_of(name)
    for reduction in ("mean", "sum", "none"):
        kw = dict(activation=activation, over=over, include_background=include_background, reduction=reduction)
        xb = x.clone().requires_grad_(True)
        xf = x.clone().requires_grad_(True)
        vb = fn(xb, tb, **kw, **extra)
        vf = fn(xf, t.to(dtype), **kw, **extra)
        (gb,) = torch.autograd.grad(vb.sum(), xb)
        (gf,) = torch.autograd.grad(vf.sum(), xf)
        # identical to the same one-hot as floats, values and gradients, in the input's dtype
        assert vb.dtype == dtype and gb.dtype == dtype
        assert torch.equal(vb, vf) and torch.equal(gb, gf)
        # and the float64 formula with t = 1 where true, 0 where false
        want = ref_overlap(x, tb, kind=name, **kw, **extra)  # type: ignore[arg-type]
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(vb.detach().double().numpy(), want, rtol=tol, atol=tol)


def test_overlap_bool_target_gradient_against_float64_formula() -> None:
    # d/dp of dice over all elements, by hand: D = 1 - (2I + s)/(P + T + s + e); dD/dp = -(2t*den - num)/den^2
    x, t = make_case("onehot", shape=(2, 3, 4), seed=6)
    p = torch.sigmoid(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(seg.dice(p, t.bool(), smooth=0.5), p)
    pn, tn = p.detach().numpy(), t.numpy()
    num = 2 * np.sum(pn * tn) + 0.5
    den = np.sum(pn) + np.sum(tn) + 0.5 + 1e-5
    np.testing.assert_allclose(g.numpy(), -(2 * tn * den - num) / den**2, rtol=1e-12)


def test_overlap_bool_target_must_be_shaped_like_input() -> None:
    x = torch.rand(2, 3, 4)
    check_overlap({"input": x, "target": torch.zeros(2, 3, 4, dtype=torch.bool)})
    for bad in [torch.zeros(2, 4, dtype=torch.bool), torch.zeros(2, 3, 5, dtype=torch.bool)]:
        for name in ("dice", "tversky"):
            with pytest.raises(InputError) as e:
                spec(name).check({"input": x, "target": bad}, spec(name).params())  # type: ignore[misc]
            assert e.value.loc == ("inputs", "target")
            assert f"got a non-integer target {tuple(bad.shape)}".replace(" ", "") in e.value.msg.replace(" ", "")


def test_overlap_bool_target_of_the_wrong_shape_over_json_names_no_float() -> None:
    """JSON booleans reach the check already in the call's float dtype: the 422 must not call them float."""
    x = torch.rand(2, 1, 2).tolist()
    with pytest.raises(Problem) as e:
        _json_call("dice", {"inputs": {"input": x, "target": [[True, False]]}})
    assert e.value.status == 422 and "float" not in e.value.detail and "(1,2)" in e.value.detail


def _json_call(name: str, body: dict[str, Any]) -> dict[str, Any]:
    """One call as the server makes it from a JSON body (orjson, the codecs' dtype inference, the engine)."""
    import orjson

    from lossd.service import Service
    from lossd.settings import Settings

    svc = Service(Settings(warmup=False, device="cpu"))
    try:
        call, b64 = svc.decode_call(svc.spec(name), memoryview(orjson.dumps(body)), False)
        out: dict[str, Any] = orjson.loads(svc.encode_result(svc.engines[0].run(call), b64, False))
        return out
    finally:
        svc.close()


@pytest.mark.parametrize("name", ["dice", "tversky"])
def test_overlap_bool_onehot_target_over_json(name: str) -> None:
    x, t = make_case("onehot", shape=(2, 3, 4), seed=7)
    p = torch.sigmoid(x).float()
    onehot = t.bool().tolist()  # JSON true/false: the codecs infer bool
    want = _json_call(name, {"inputs": {"input": p.tolist(), "target": t.tolist()}, "grad": True})
    got = _json_call(name, {"inputs": {"input": p.tolist(), "target": onehot}, "grad": True})
    assert got == want


def test_overlap_out_of_range_message() -> None:
    with pytest.raises(InputError) as e:
        check_overlap({"input": torch.rand(2, 3, 4), "target": torch.tensor([[0, 1, 2, 3], [0, 0, 0, 0]])})
    assert "3" in e.value.msg and "[0, 3)" in e.value.msg


# ---------------------------------------------------------------------------
# total_variation


def ref_tv_l1_tf(images_nchw: torch.Tensor) -> np.ndarray:
    """tf.image.total_variation's documented formula, on NHWC images (or one HWC image: a scalar)."""
    x = images_nchw.detach().double().numpy()
    if x.ndim == 3:
        img = np.transpose(x, (1, 2, 0))  # HWC
        d1 = img[1:, :, :] - img[:-1, :, :]
        d2 = img[:, 1:, :] - img[:, :-1, :]
        return np.asarray(np.sum(np.abs(d1)) + np.sum(np.abs(d2)))
    images = np.transpose(x, (0, 2, 3, 1))  # NHWC
    pixel_dif1 = images[:, 1:, :, :] - images[:, :-1, :, :]
    pixel_dif2 = images[:, :, 1:, :] - images[:, :, :-1, :]
    return np.sum(np.abs(pixel_dif1), axis=(1, 2, 3)) + np.sum(np.abs(pixel_dif2), axis=(1, 2, 3))


def ref_tv_loops(images: torch.Tensor, norm: str) -> np.ndarray:
    """Per-image total variation by explicit loops over channels and pixels."""
    x = images.detach().double().numpy()
    if x.ndim == 3:
        x = x[None]
    n, c, h, w = x.shape
    out = np.zeros(n)
    for i in range(n):
        s = 0.0
        for ch in range(c):
            for r in range(h):
                for col in range(w):
                    dv = x[i, ch, r + 1, col] - x[i, ch, r, col] if r + 1 < h else None
                    dh = x[i, ch, r, col + 1] - x[i, ch, r, col] if col + 1 < w else None
                    if norm == "isotropic":
                        if dv is not None and dh is not None:
                            s += np.sqrt(dv * dv + dh * dh + 1e-8)
                        continue
                    for d in (dv, dh):
                        if d is not None:
                            s += abs(d) if norm == "l1" else d * d
        out[i] = s
    return out


@pytest.mark.parametrize("norm", ["l1", "l2", "isotropic"])
@pytest.mark.parametrize("shape", [(3, 2, 5, 4), (2, 1, 1, 6), (2, 3, 4, 1), (1, 1, 1, 1), (2, 4, 3)])
def test_tv_values(norm: Any, shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    per = ref_tv_loops(x, norm)
    none = seg.total_variation(x, norm=norm, reduction="none")
    assert none.dtype == torch.float64
    assert tuple(none.shape) == ((shape[0],) if len(shape) == 4 else (1,))
    np.testing.assert_allclose(none.numpy(), per, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(seg.total_variation(x, norm=norm, reduction="sum").numpy(), per.sum(), rtol=1e-12)
    np.testing.assert_allclose(seg.total_variation(x, norm=norm).numpy(), per.mean(), rtol=1e-12)
    assert seg.total_variation(x, norm=norm).shape == ()


@pytest.mark.parametrize("shape", [(3, 2, 5, 4), (4, 3, 5)])
def test_tv_l1_matches_tf_formula(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    want = ref_tv_l1_tf(x)
    got = seg.total_variation(x, reduction="none")  # l1 is the default norm
    np.testing.assert_allclose(got.numpy(), np.atleast_1d(want), rtol=1e-12)
    np.testing.assert_allclose(seg.total_variation(x, reduction="sum").numpy(), want.sum(), rtol=1e-12)


def test_tv_hand_computed() -> None:
    x = torch.tensor([[[0.0, 1.0], [3.0, 6.0]]], dtype=torch.float64)  # (C,H,W) = (1,2,2)
    assert float(seg.total_variation(x)) == 12.0  # |3|+|5| + |1|+|3|
    assert float(seg.total_variation(x, norm="l2")) == 44.0  # 9+25 + 1+9
    assert float(seg.total_variation(x, norm="isotropic")) == pytest.approx(np.sqrt(10 + 1e-8), rel=1e-14)
    # a constant image: l1/l2 are 0, isotropic is the sqrt(1e-8) floor per grid point
    c = torch.full((2, 3, 4, 5), 7.0, dtype=torch.float64)
    assert float(seg.total_variation(c, reduction="sum")) == 0.0
    assert float(seg.total_variation(c, norm="isotropic", reduction="none")[0]) == pytest.approx(3 * 3 * 4 * 1e-4)


@pytest.mark.parametrize("norm", ["l1", "l2", "isotropic"])
def test_tv_gradcheck(norm: Any) -> None:
    x = torch.randn(2, 2, 4, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64).requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        assert torch.autograd.gradcheck(lambda i, r=reduction: seg.total_variation(i, norm=norm, reduction=r), (x,))
    x3 = x[0].detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda i: seg.total_variation(i, norm=norm), (x3,))
    # isotropic is differentiable at a flat image thanks to the 1e-8 inside the sqrt
    flat = torch.zeros(1, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    seg.total_variation(flat, norm=norm).backward()
    assert flat.grad is not None and torch.isfinite(flat.grad).all()


@pytest.mark.parametrize("shape", [(4,), (3, 4), (1, 2, 3, 4, 5)])
def test_tv_check_errors(shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError) as e:
        spec("total_variation").check({"input": torch.rand(shape)}, seg.TotalVariationParams())  # type: ignore[misc]
    assert e.value.loc == ("inputs", "input")
    assert "(N,C,H,W)" in e.value.msg


def test_tv_check_accepts() -> None:
    for shape in [(2, 3, 4), (1, 2, 3, 4)]:
        spec("total_variation").check({"input": torch.rand(shape)}, seg.TotalVariationParams())  # type: ignore[misc]
