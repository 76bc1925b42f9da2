"""Metric-learning losses: contrastive, triplet_margin, cosine_embedding, margin_ranking, info_nce."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lossd.engine import parse_params
from lossd.errors import Problem
from lossd.losses import metric as M
from lossd.spec import InputError

REDUCTIONS = ("mean", "sum", "none")
SPECS = {s.name: s for s in M.SPECS}

ROWS = {
    "contrastive": (("siamese",), ("x1", "x2")),
    "triplet_margin": (("triplet",), ("anchor", "positive", "negative")),
    "cosine_embedding": ((), ("input1", "input2")),
    "margin_ranking": ((), ("input1", "input2")),
    "info_nce": (("nt_xent",), ("z1", "z2")),
}


def _randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)


def _grads(fn, *xs):
    xs = tuple(x.clone().requires_grad_(True) for x in xs)
    v = fn(*xs)
    return (v.detach(), *torch.autograd.grad(v.sum(), xs))


def _np_reduce(v, reduction):
    return {"mean": np.mean, "sum": np.sum}.get(reduction, lambda a: a)(v)


def test_catalogue_rows_and_aliases():
    assert set(SPECS) == set(ROWS)
    for name, (aliases, diff) in ROWS.items():
        spec = SPECS[name]
        assert spec.aliases == aliases
        assert spec.differentiable == diff
        assert spec.reductions == REDUCTIONS
        assert spec.summary and spec.reference


@pytest.mark.parametrize("name", sorted(ROWS))
def test_params_reject_unknown_and_bad_reduction(name):
    model = SPECS[name].params
    assert model().reduction == "mean"
    with pytest.raises(ValidationError):
        model(nope=1)
    with pytest.raises(ValidationError):
        model(reduction="batchmean")


# ---------------------------------------------------------------------------
# contrastive against a float64 numpy implementation


def _np_contrastive(x1, x2, y, margin):
    d = np.sqrt(((x1 - x2) ** 2).sum(axis=1))
    return 0.5 * y * d**2 + 0.5 * (1 - y) * np.maximum(0.0, margin - d) ** 2


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [1.0, 3.0, 0.0])
def test_contrastive_matches_numpy(margin, reduction):
    x1, x2 = _randn(8, 3, seed=1), _randn(8, 3, seed=2)
    y = torch.tensor([1, 0, 1, 0, 0, 1, 0, 0], dtype=torch.float64)
    params = M.ContrastiveParams(margin=margin, reduction=reduction)
    v = M.contrastive(x1, x2, y, **dict(params))
    ref = _np_contrastive(x1.numpy(), x2.numpy(), y.numpy(), margin)
    if margin == 3.0:  # the hinge is active for some dissimilar pairs and not for others
        assert (ref[y.numpy() == 0] > 0).any() and (ref[y.numpy() == 0] == 0).any()
    np.testing.assert_allclose(v.numpy(), _np_reduce(ref, reduction), rtol=1e-12)


def test_contrastive_default_margin_and_gradients():
    assert M.ContrastiveParams().margin == 1.0
    x1, x2 = _randn(6, 4, seed=3) * 0.3, _randn(6, 4, seed=4) * 0.3
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    _, g1, g2 = _grads(lambda a, b: M.contrastive(a, b, y, reduction="sum"), x1, x2)
    diff = (x1 - x2).numpy()
    d = np.sqrt((diff**2).sum(1, keepdims=True))
    assert (d[y.numpy() == 0] < 1.0).all()  # dissimilar pairs inside the margin
    yy = y.numpy()[:, None]
    ref = yy * diff - (1 - yy) * np.maximum(0, 1.0 - d) * diff / d
    np.testing.assert_allclose(g1.numpy(), ref, rtol=1e-12)
    np.testing.assert_allclose(g2.numpy(), -ref, rtol=1e-12)


def test_contrastive_gradcheck():
    x1, x2 = _randn(5, 3, seed=5) * 0.5, _randn(5, 3, seed=6) * 0.5
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0])
    x1.requires_grad_(True)
    x2.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: M.contrastive(a, b, y, margin=1.5), (x1, x2))


def test_contrastive_gradient_finite_at_zero_distance():
    x1 = _randn(4, 3, seed=7)
    x2 = x1.clone()
    x2[2:] += 0.5  # rows 0, 1 at distance 0
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])
    v, g1, g2 = _grads(lambda a, b: M.contrastive(a, b, y, reduction="none"), x1, x2)
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    torch.testing.assert_close(v[:2], torch.tensor([0.0, 0.5], dtype=torch.float64))
    torch.testing.assert_close(g1[:2], torch.zeros(2, 3, dtype=torch.float64))
    # a similar pair at d=0 is differentiable (d^2): gradcheck there
    a = x1[:1].clone().requires_grad_(True)
    b = x1[:1].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p, q: M.contrastive(p, q, torch.ones(1, dtype=torch.float64)), (a, b))


def test_contrastive_float32_and_labels():
    x1, x2 = _randn(4, 2, seed=8, dtype=torch.float32), _randn(4, 2, seed=9, dtype=torch.float32)
    # the engine converts int/bool labels (kind "mask") to the compute dtype
    assert SPECS["contrastive"].input("label").kind == "mask"
    y_bool = torch.tensor([True, False, False, True]).to(torch.float32)
    v = M.contrastive(x1, x2, y_bool)
    assert v.dtype == torch.float32
    ref = _np_contrastive(x1.double().numpy(), x2.double().numpy(), y_bool.double().numpy(), 1.0).mean()
    np.testing.assert_allclose(v.item(), ref, rtol=1e-6)


def test_contrastive_check():
    check, p = SPECS["contrastive"].check, M.ContrastiveParams()
    x = torch.zeros(3, 2)
    check({"x1": x, "x2": x, "label": torch.tensor([1.0, 0.0, 1.0])}, p)
    cases = [
        ({"x1": torch.zeros(3), "x2": torch.zeros(3), "label": torch.zeros(3)}, "x1"),
        ({"x1": x, "x2": torch.zeros(3, 3), "label": torch.zeros(3)}, "x2"),
        ({"x1": x, "x2": x, "label": torch.zeros(2)}, "label"),
        ({"x1": x, "x2": x, "label": torch.zeros(3, 1)}, "label"),
        ({"x1": x, "x2": x, "label": torch.tensor([1.0, 0.5, 0.0])}, "label"),
        ({"x1": x, "x2": x, "label": torch.tensor([1.0, 2.0, 0.0])}, "label"),
    ]
    for inputs, bad in cases:
        with pytest.raises(InputError) as e:
            check(inputs, p)
        assert e.value.loc == ("inputs", bad)
    with pytest.raises(ValidationError):
        M.ContrastiveParams(margin=-1.0)


# ---------------------------------------------------------------------------
# triplet_margin against torch.nn.functional.triplet_margin_loss


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    "kw", [{}, {"margin": 2.0}, {"p": 1.0}, {"p": 3.0}, {"eps": 1e-3}, {"swap": True}, {"swap": True, "p": 1.0}]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_triplet_matches_functional(kw, reduction, dtype):
    a, p, n = (_randn(7, 4, seed=s, dtype=dtype) for s in (10, 11, 12))
    params = M.TripletMarginParams(**kw, reduction=reduction)
    got = _grads(lambda x, y, z: M.triplet_margin(x, y, z, **dict(params)), a, p, n)
    ref = _grads(lambda x, y, z: F.triplet_margin_loss(x, y, z, reduction=reduction, **kw), a, p, n)
    assert got[0].dtype == dtype
    assert got[0].shape == ((7,) if reduction == "none" else ())
    assert (ref[0] > 0).any()
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_triplet_defaults_unbatched_gradcheck():
    p = M.TripletMarginParams()
    assert (p.margin, p.p, p.eps, p.swap) == (1.0, 2.0, 1e-6, False)
    a, q, n = _randn(4, seed=13), _randn(4, seed=14), _randn(4, seed=15)
    torch.testing.assert_close(M.triplet_margin(a, q, n), F.triplet_margin_loss(a, q, n))
    xs = tuple(_randn(3, 4, seed=s).requires_grad_(True) for s in (16, 17, 18))
    assert torch.autograd.gradcheck(lambda x, y, z: M.triplet_margin(x, y, z, margin=2.0, swap=True), xs)


def test_triplet_check_and_params():
    check, p = SPECS["triplet_margin"].check, M.TripletMarginParams()
    x = torch.zeros(3, 2)
    check({"anchor": x, "positive": x, "negative": x}, p)
    cases = [
        ({"anchor": torch.zeros(3, 2, 2), "positive": x, "negative": x}, "anchor"),
        ({"anchor": torch.tensor(0.0), "positive": x, "negative": x}, "anchor"),
        ({"anchor": x, "positive": torch.zeros(1, 2), "negative": x}, "positive"),
        ({"anchor": x, "positive": x, "negative": torch.zeros(3)}, "negative"),
    ]
    for inputs, bad in cases:
        with pytest.raises(InputError) as e:
            check(inputs, p)
        assert e.value.loc == ("inputs", bad)
    bad_params = [{"margin": 0.0}, {"margin": -1.0}, {"p": 0.0}, {"p": 0}, {"p": -1.0}, {"p": -math.inf}]
    bad_params += [{"p": math.nan}, {"p": "-Infinity"}, {"p": "NaN"}, {"p": "2"}, {"p": "INF"}, {"p": True}]
    bad_params += [{"eps": math.nan}, {"eps": math.inf}, {"eps": "-inf"}, {"eps": "1e-6"}]
    triplet = M.TRIPLET_MARGIN
    for bad in bad_params:
        with pytest.raises(Problem) as e:
            parse_params(triplet, bad)  # as the engine reads a call's JSON params
        assert e.value.status == 422 and e.value.errors and e.value.errors[0]["loc"][:2] == ["params", next(iter(bad))]
    # torch's range: any p > 0, infinity (also as the JSON spellings) included, and any finite eps
    for good, want in [({"p": 0.5}, 0.5), ({"p": 3}, 3.0), ({"p": math.inf}, math.inf)]:
        assert parse_params(triplet, good).p == want  # type: ignore[attr-defined]
    assert parse_params(triplet, {"p": "Infinity"}).p == math.inf  # type: ignore[attr-defined]
    assert parse_params(triplet, {"p": "inf"}).p == math.inf  # type: ignore[attr-defined]
    assert M.TripletMarginParams(eps=-0.25).eps == -0.25


TRIPLET_P = [0.5, 1.0, 1.5, 2.0, 3.0, math.inf]
TRIPLET_EPS = [-1e-3, -0.3, 0.0, 1e-6, 0.2]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("swap", [False, True])
@pytest.mark.parametrize("eps", TRIPLET_EPS)
@pytest.mark.parametrize("p", TRIPLET_P)
def test_triplet_any_p_and_eps_match_functional(p, eps, swap, reduction):
    # the params come as a JSON object would carry them (infinity as its string), then the call as the engine makes it
    params = parse_params(
        M.TRIPLET_MARGIN, {"p": "Infinity" if p == math.inf else p, "eps": eps, "swap": swap, "reduction": reduction}
    )
    assert (params.p, params.eps) == (p, eps)
    a, q, n = (_randn(9, 5, seed=s) for s in (40, 41, 42))
    got = _grads(lambda x, y, z: M.triplet_margin(x, y, z, **dict(params)), a, q, n)
    ref = _grads(lambda x, y, z: F.triplet_margin_loss(x, y, z, p=p, eps=eps, swap=swap, reduction=reduction), a, q, n)
    assert (ref[0] > 0).any() and all(g.abs().sum() > 0 for g in ref[1:])
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [0.5, 1.5, 3.0, math.inf])
@pytest.mark.parametrize("eps", [-0.05, 0.05])
def test_triplet_fractional_and_max_norm_against_float64_formula(p, eps):
    # an independent float64 numpy formula of ||x - y + eps||_p and its derivative, away from ties and zeros
    a, q, n = (_randn(6, 4, seed=s) for s in (50, 51, 52))
    params = M.TripletMarginParams(p=p, eps=eps, margin=100.0, reduction="none")
    v, ga, gq, gn = _grads(lambda x, y, z: M.triplet_margin(x, y, z, **dict(params)), a, q, n)

    def dist(x, y):
        d = x - y + eps
        if p == math.inf:
            k = np.abs(d).argmax(axis=1)
            g = np.zeros_like(d)
            g[np.arange(len(d)), k] = np.sign(d[np.arange(len(d)), k])
            return np.abs(d).max(axis=1), g
        r = (np.abs(d) ** p).sum(axis=1) ** (1 / p)
        return r, np.sign(d) * np.abs(d) ** (p - 1) * r[:, None] ** (1 - p)

    dp, gp = dist(a.numpy(), q.numpy())
    dn, gneg = dist(a.numpy(), n.numpy())
    loss = np.maximum(0.0, dp - dn + 100.0)
    assert (loss > 0).all()  # every triplet active: the gradient is the difference of the distances' gradients
    np.testing.assert_allclose(v.numpy(), loss, rtol=1e-12)
    np.testing.assert_allclose(ga.numpy(), gp - gneg, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gq.numpy(), -gp, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gn.numpy(), gneg, rtol=1e-10, atol=1e-12)


def test_triplet_max_norm_and_negative_eps_through_the_json_api():
    # over the API's JSON (orjson has no Infinity literal): p as the string "Infinity", eps negative
    import orjson

    from lossd.errors import Problem
    from lossd.service import Service
    from lossd.settings import Settings

    a, q, n = (_randn(5, 3, seed=s) for s in (60, 61, 62))
    svc = Service(Settings(warmup=False, device="cpu"))
    try:

        def call(params):
            body = {"inputs": {"anchor": a.tolist(), "positive": q.tolist(), "negative": n.tolist()}, "grad": True}
            raw = orjson.dumps({**body, "params": params})
            c, b64 = svc.decode_call(svc.spec("triplet"), memoryview(raw), False)
            return orjson.loads(svc.encode_result(svc.engines[0].run(c), b64, False))

        for p_json, p in [("Infinity", math.inf), ("inf", math.inf), (0.5, 0.5)]:
            out = call({"p": p_json, "eps": -1e-3, "swap": True})
            assert out["loss"] == "triplet_margin"
            a32, q32, n32 = (t.float().requires_grad_(True) for t in (a, q, n))
            ref = F.triplet_margin_loss(a32, q32, n32, p=p, eps=-1e-3, swap=True)
            refg = torch.autograd.grad(ref, (a32, q32, n32))
            assert out["value"] == ref.item()  # float32, printed exactly
            for name, r in zip(("anchor", "positive", "negative"), refg):
                got = torch.tensor(out["grads"][name]["data"], dtype=torch.float32).reshape(r.shape)
                torch.testing.assert_close(got, r, rtol=0, atol=0)
        for bad in [0, 0.0, -1, "-Infinity", "NaN", "2", None]:
            with pytest.raises(Problem) as e:
                call({"p": bad})
            assert e.value.status == 422 and "params.p" in e.value.detail
    finally:
        svc.close()


# ---------------------------------------------------------------------------
# cosine_embedding and margin_ranking against torch.nn.functional


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [0.0, 0.3, -0.2])
def test_cosine_embedding_matches_functional(margin, reduction):
    x1, x2 = _randn(8, 5, seed=20), _randn(8, 5, seed=21)
    y = torch.tensor([1.0, -1, -1, 1, -1, 1, -1, -1])
    got = _grads(lambda a, b: M.cosine_embedding(a, b, y, margin=margin, reduction=reduction), x1, x2)
    ref = _grads(lambda a, b: F.cosine_embedding_loss(a, b, y, margin=margin, reduction=reduction), x1, x2)
    assert got[0].shape == ((8,) if reduction == "none" else ())
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)


def test_cosine_embedding_default_unbatched_gradcheck():
    assert M.MarginParams().margin == 0.0
    a, b = _randn(5, seed=22), _randn(5, seed=23)
    for t in (1.0, -1.0):
        y = torch.tensor(t, dtype=torch.float64)
        torch.testing.assert_close(M.cosine_embedding(a, b, y), F.cosine_embedding_loss(a, b, y))
    x1 = _randn(6, 3, seed=24).requires_grad_(True)
    x2 = _randn(6, 3, seed=25).requires_grad_(True)
    y = torch.tensor([1.0, -1, 1, -1, -1, 1])
    assert torch.autograd.gradcheck(lambda a, b: M.cosine_embedding(a, b, y, margin=-0.5), (x1, x2))


def test_cosine_embedding_check():
    check, p = SPECS["cosine_embedding"].check, M.MarginParams()
    x = torch.zeros(3, 2)
    check({"input1": x, "input2": x, "target": torch.tensor([1.0, -1.0, 1.0])}, p)
    check({"input1": torch.zeros(2), "input2": torch.zeros(2), "target": torch.tensor(-1.0)}, p)
    cases = [
        ({"input1": torch.zeros(3, 2, 2), "input2": x, "target": torch.ones(3)}, "input1"),
        ({"input1": x, "input2": torch.zeros(3, 3), "target": torch.ones(3)}, "input2"),
        ({"input1": x, "input2": x, "target": torch.ones(2)}, "target"),
        ({"input1": torch.zeros(2), "input2": torch.zeros(2), "target": torch.ones(1)}, "target"),
        ({"input1": x, "input2": x, "target": torch.tensor([1.0, 0.0, -1.0])}, "target"),
    ]
    for inputs, bad in cases:
        with pytest.raises(InputError) as e:
            check(inputs, p)
        assert e.value.loc == ("inputs", bad)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("margin", [0.0, 0.5])
def test_margin_ranking_matches_functional(margin, reduction):
    x1, x2 = _randn(9, seed=30), _randn(9, seed=31)
    y = torch.tensor([1.0, -1, -1, 1, -1, 1, -1, 1, 1])
    got = _grads(lambda a, b: M.margin_ranking(a, b, y, margin=margin, reduction=reduction), x1, x2)
    ref = _grads(lambda a, b: F.margin_ranking_loss(a, b, y, margin=margin, reduction=reduction), x1, x2)
    assert (ref[0] > 0).any() and (ref[0] == 0).any() if reduction == "none" else True
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r)
    x1.requires_grad_(True)
    x2.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: M.margin_ranking(a, b, y, margin=margin), (x1, x2))


def test_margin_ranking_check():
    check, p = SPECS["margin_ranking"].check, M.MarginParams()
    x = torch.zeros(3)
    check({"input1": x, "input2": x, "target": torch.tensor([1.0, -1.0, 1.0])}, p)
    cases = [
        ({"input1": x, "input2": torch.zeros(4), "target": torch.ones(3)}, "input2"),
        ({"input1": x, "input2": x, "target": torch.ones(1)}, "target"),
        ({"input1": x, "input2": x, "target": torch.tensor([1.0, 0.0, -1.0])}, "target"),
    ]
    for inputs, bad in cases:
        with pytest.raises(InputError) as e:
            check(inputs, p)
        assert e.value.loc == ("inputs", bad)


# ---------------------------------------------------------------------------
# info_nce against a float64 numpy NT-Xent written from the formula


def _np_nt_xent(z1: np.ndarray, z2: np.ndarray, t: float) -> np.ndarray:
    n = z1.shape[0]
    z = np.concatenate([z1, z2])
    out = np.empty(2 * n)
    for i in range(2 * n):
        j = i + n if i < n else i - n
        sims = np.array([z[i] @ z[k] / (np.linalg.norm(z[i]) * np.linalg.norm(z[k])) for k in range(2 * n)]) / t
        others = [k for k in range(2 * n) if k != i]
        m = sims[others].max()
        out[i] = -sims[j] + m + np.log(np.exp(sims[others] - m).sum())
    return out


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("temperature", [0.1, 0.5, 2.0])
def test_info_nce_matches_numpy(temperature, reduction):
    z1, z2 = _randn(5, 4, seed=40), _randn(5, 4, seed=41)
    z2[0] = z1[0] * 3.0  # a perfectly aligned pair
    params = M.InfoNCEParams(temperature=temperature, reduction=reduction)
    v = M.info_nce(z1, z2, **dict(params))
    ref = _np_nt_xent(z1.numpy(), z2.numpy(), temperature)
    assert v.shape == ((10,) if reduction == "none" else ())
    np.testing.assert_allclose(v.numpy(), _np_reduce(ref, reduction), rtol=1e-10)


def test_info_nce_views_order_default_and_invariances():
    assert M.InfoNCEParams().temperature == 0.1
    z1, z2 = _randn(3, 4, seed=42), _randn(3, 4, seed=43)
    v = M.info_nce(z1, z2, reduction="none")
    # swapping the views swaps the halves: z1's views come first
    torch.testing.assert_close(M.info_nce(z2, z1, reduction="none"), torch.cat([v[3:], v[:3]]))
    assert not torch.allclose(v[:3], v[3:])
    # cosine similarity: invariant to the scale of each embedding
    torch.testing.assert_close(M.info_nce(z1 * 7.0, z2 * 0.2, reduction="none"), v)
    # one pair: no negatives, the loss is 0
    torch.testing.assert_close(M.info_nce(z1[:1], z2[:1]), torch.tensor(0.0, dtype=torch.float64))


def test_info_nce_float32_stable_at_low_temperature():
    z1, z2 = _randn(6, 8, seed=44, dtype=torch.float32), _randn(6, 8, seed=45, dtype=torch.float32)
    v, g1, g2 = _grads(lambda a, b: M.info_nce(a, b, temperature=0.01, reduction="none"), z1, z2)
    assert v.dtype == torch.float32
    assert torch.isfinite(g1).all() and torch.isfinite(g2).all()
    ref = _np_nt_xent(z1.double().numpy(), z2.double().numpy(), 0.01)
    np.testing.assert_allclose(v.double().numpy(), ref, rtol=1e-4, atol=1e-4)


def test_info_nce_gradcheck():
    z1 = _randn(4, 3, seed=46).requires_grad_(True)
    z2 = _randn(4, 3, seed=47).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: M.info_nce(a, b, temperature=0.5), (z1, z2))
    assert torch.autograd.gradcheck(lambda a, b: M.info_nce(a, b, reduction="none"), (z1, z2))


def test_info_nce_check_and_params():
    check, p = SPECS["info_nce"].check, M.InfoNCEParams()
    check({"z1": torch.zeros(2, 3), "z2": torch.zeros(2, 3)}, p)
    cases = [
        ({"z1": torch.zeros(3), "z2": torch.zeros(3)}, "z1"),
        ({"z1": torch.zeros(2, 3), "z2": torch.zeros(3, 3)}, "z2"),
        ({"z1": torch.zeros(0, 3), "z2": torch.zeros(0, 3)}, "z1"),
    ]
    for inputs, bad in cases:
        with pytest.raises(InputError) as e:
            check(inputs, p)
        assert e.value.loc == ("inputs", bad)
    for bad in [0.0, -0.1]:
        with pytest.raises(ValidationError):
            M.InfoNCEParams(temperature=bad)


def test_info_nce_similarity_matrix_is_bounded() -> None:
    from lossd.losses.metric import INFO_NCE, MAX_SIMILARITIES, InfoNCEParams
    from lossd.spec import InputError

    n = int(MAX_SIMILARITIES**0.5) // 2
    assert INFO_NCE.check is not None
    INFO_NCE.check({"z1": torch.zeros(n, 1), "z2": torch.zeros(n, 1)}, InfoNCEParams())
    with pytest.raises(InputError) as e:
        INFO_NCE.check({"z1": torch.zeros(n + 1, 1), "z2": torch.zeros(n + 1, 1)}, InfoNCEParams())
    assert e.value.status == 413 and e.value.loc == ("inputs", "z1")
