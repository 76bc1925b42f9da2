"""Generative adversarial training: gan (every role and mode)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from lossd.losses import adversarial as A
from lossd.spec import InputError

SPEC = A.SPECS[0]
MODES = ("minimax", "non_saturating", "least_squares", "hinge", "wasserstein")
ROLES = ("discriminator", "generator")


def _randn(*shape, seed=0, scale=2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _log_s(x):  # naive log(sigmoid(x)) in float64: fine for moderate logits
    return np.log(1.0 / (1.0 + np.exp(-x)))


def _np_gan(fake, real, role, mode, a=0.0, b=1.0, c=1.0):
    if role == "discriminator":
        if mode in ("minimax", "non_saturating"):
            return -np.mean(_log_s(real)) - np.mean(np.log(1.0 - 1.0 / (1.0 + np.exp(-fake))))
        if mode == "least_squares":
            return 0.5 * np.mean((real - b) ** 2) + 0.5 * np.mean((fake - a) ** 2)
        if mode == "hinge":
            return np.mean(np.maximum(0, 1 - real)) + np.mean(np.maximum(0, 1 + fake))
        return np.mean(fake) - np.mean(real)
    if mode == "minimax":
        return np.mean(np.log(1.0 - 1.0 / (1.0 + np.exp(-fake))))
    if mode == "non_saturating":
        return -np.mean(_log_s(fake))
    if mode == "least_squares":
        return 0.5 * np.mean((fake - c) ** 2)
    return -np.mean(fake)


def _np_grads(fake, real, role, mode, a=0.0, b=1.0, c=1.0):
    """Analytic gradients (w.r.t. fake, real) of the formulas above."""
    s_f, s_r = 1 / (1 + np.exp(-fake)), 1 / (1 + np.exp(-real))
    nf, nr = fake.size, real.size
    zr = np.zeros_like(real)
    if role == "discriminator":
        if mode in ("minimax", "non_saturating"):
            return s_f / nf, -(1 - s_r) / nr
        if mode == "least_squares":
            return (fake - a) / nf, (real - b) / nr
        if mode == "hinge":
            return (fake > -1).astype(float) / nf, -(real < 1).astype(float) / nr
        return np.ones_like(fake) / nf, -np.ones_like(real) / nr
    if mode == "minimax":
        return -s_f / nf, zr
    if mode == "non_saturating":
        return -(1 - s_f) / nf, zr
    if mode == "least_squares":
        return (fake - c) / nf, zr
    return -np.ones_like(fake) / nf, zr


def test_catalogue_row():
    assert SPEC.name == "gan"
    assert SPEC.aliases == ()
    assert SPEC.differentiable == ("fake", "real")
    assert SPEC.input("real").required is False
    assert SPEC.reductions == ()  # reduction is not taken
    assert SPEC.summary and SPEC.reference


def test_params():
    p = A.GANParams()
    assert (p.role, p.mode, p.a, p.b, p.c) == ("discriminator", "minimax", 0.0, 1.0, 1.0)
    for bad in [{"reduction": "mean"}, {"nope": 1}, {"role": "critic"}, {"mode": "relativistic"}, {"a": "x"}]:
        with pytest.raises(ValidationError):
            A.GANParams(**bad)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("abc", [(0.0, 1.0, 1.0), (-1.0, 1.0, 0.0), (0.3, 0.7, 0.5)])
def test_values_and_gradients(role, mode, abc):
    a, b, c = abc
    fake, real = _randn(5, 1, seed=1), _randn(7, 1, seed=2)  # batch sizes may differ
    params = A.GANParams(role=role, mode=mode, a=a, b=b, c=c)
    f, r = fake.clone().requires_grad_(True), real.clone().requires_grad_(True)
    v = A.gan(f, r, **dict(params))
    assert v.shape == () and v.dtype == torch.float64
    gf, gr = torch.autograd.grad(v, (f, r), allow_unused=True)
    ref = _np_gan(fake.numpy(), real.numpy(), role, mode, a, b, c)
    np.testing.assert_allclose(v.item(), ref, rtol=1e-12, atol=1e-14)
    rgf, rgr = _np_grads(fake.numpy(), real.numpy(), role, mode, a, b, c)
    np.testing.assert_allclose(gf.numpy(), rgf, rtol=1e-12, atol=1e-14)
    assert gr is not None  # real given: always part of the graph, zero for the generator
    np.testing.assert_allclose(gr.numpy(), rgr, rtol=1e-12, atol=1e-14)


def test_non_saturating_discriminator_is_minimax_and_hinge_generator_is_wasserstein():
    fake, real = _randn(6, seed=3), _randn(6, seed=4)
    torch.testing.assert_close(A.gan(fake, real, mode="non_saturating"), A.gan(fake, real, mode="minimax"))
    torch.testing.assert_close(
        A.gan(fake, role="generator", mode="hinge"), A.gan(fake, role="generator", mode="wasserstein")
    )
    # the lsgan targets matter
    assert A.gan(fake, real, mode="least_squares", a=-1.0) != A.gan(fake, real, mode="least_squares")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("role", ROLES)
def test_gradcheck(role, mode):
    fake = _randn(4, 2, seed=5).requires_grad_(True)
    real = _randn(3, 2, seed=6).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda f, r: A.gan(f, r, role=role, mode=mode, a=0.2, b=0.9, c=0.8), (fake, real))
    if role == "generator":
        assert torch.autograd.gradcheck(lambda f: A.gan(f, role=role, mode=mode, c=0.8), (fake,))


@pytest.mark.parametrize("mode", ["minimax", "non_saturating"])
@pytest.mark.parametrize("role", ROLES)
def test_stable_for_extreme_logits_float32(role, mode):
    fake = torch.tensor([200.0, -200.0, 0.0], dtype=torch.float32, requires_grad=True)
    real = torch.tensor([-200.0, 200.0, 0.0], dtype=torch.float32, requires_grad=True)
    v = A.gan(fake, real, role=role, mode=mode)
    gf, gr = torch.autograd.grad(v, (fake, real))
    assert v.dtype == torch.float32
    assert torch.isfinite(v) and torch.isfinite(gf).all() and torch.isfinite(gr).all()
    # log s(x) = -softplus(-x): exact values at +-200 and 0
    log_s = {200.0: 0.0, -200.0: -200.0, 0.0: -np.log(2.0)}
    lf = np.array([log_s[-x] for x in (200.0, -200.0, 0.0)])  # log(1 - s(fake)) = log s(-fake)
    if role == "discriminator":
        ref = -np.mean([log_s[x] for x in (-200.0, 200.0, 0.0)]) - lf.mean()
    elif mode == "minimax":
        ref = lf.mean()
    else:
        ref = -np.mean([log_s[x] for x in (200.0, -200.0, 0.0)])
    np.testing.assert_allclose(v.item(), ref, rtol=1e-6)


def test_generator_ignores_real_with_zero_gradient_even_if_not_finite():
    fake = _randn(4, seed=7)
    real = torch.tensor([float("inf"), float("nan"), 1.0], dtype=torch.float64, requires_grad=True)
    for mode in MODES:
        v = A.gan(fake, real, role="generator", mode=mode)
        torch.testing.assert_close(v, A.gan(fake, role="generator", mode=mode))
        (g,) = torch.autograd.grad(v, (real,))
        torch.testing.assert_close(g, torch.zeros(3, dtype=torch.float64))


def test_check():
    fake, real = torch.zeros(4), torch.zeros(2, 3)
    SPEC.check({"fake": fake, "real": real}, A.GANParams())
    SPEC.check({"fake": fake}, A.GANParams(role="generator"))
    SPEC.check({"fake": fake, "real": real}, A.GANParams(role="generator"))
    cases = [
        ({"fake": fake}, A.GANParams(), "real"),
        ({"fake": fake}, A.GANParams(mode="wasserstein"), "real"),
        ({"fake": torch.zeros(0), "real": real}, A.GANParams(), "fake"),
        ({"fake": fake, "real": torch.zeros(0, 2)}, A.GANParams(mode="hinge"), "real"),
        ({"fake": torch.zeros(0)}, A.GANParams(role="generator"), "fake"),
    ]
    for inputs, p, bad in cases:
        with pytest.raises(InputError) as e:
            SPEC.check(inputs, p)
        assert e.value.loc == ("inputs", bad)
        if bad == "real" and "real" not in inputs:
            assert "discriminator" in e.value.msg
