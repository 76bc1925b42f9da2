"""Generative adversarial training losses."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from lossd.spec import Input, InputError, LossSpec, Params, require_nonempty

Role = Literal["discriminator", "generator"]
Mode = Literal["minimax", "non_saturating", "least_squares", "hinge", "wasserstein"]


class GANParams(Params):
    role: Role = "discriminator"
    mode: Mode = "minimax"
    a: float = Field(0.0, allow_inf_nan=False)
    b: float = Field(1.0, allow_inf_nan=False)
    c: float = Field(1.0, allow_inf_nan=False)


def _unused(t: torch.Tensor) -> torch.Tensor:
    """A zero that depends on ``t`` with a zero gradient (never NaN, whatever ``t`` holds)."""
    return torch.where(
        torch.zeros((), dtype=torch.bool, device=t.device), t.sum(), torch.zeros((), dtype=t.dtype, device=t.device)
    )


def gan(
    fake: torch.Tensor,
    real: torch.Tensor | None = None,
    *,
    role: Role = "discriminator",
    mode: Mode = "minimax",
    a: float = 0.0,
    b: float = 1.0,
    c: float = 1.0,
) -> torch.Tensor:
    """GAN objectives from the discriminator's outputs on generated (``fake``) and real samples.

    Outputs are logits for minimax and non_saturating (``log s(x) = logsigmoid(x)``,
    ``log(1 - s(x)) = logsigmoid(-x)``, so nothing overflows):

    - minimax D (also non_saturating D): ``-mean(log s(real)) - mean(log(1 - s(fake)))``;
      minimax G: ``mean(log(1 - s(fake)))``; non_saturating G: ``-mean(log s(fake))``
    - least_squares (LSGAN) D: ``0.5*mean((real-b)^2) + 0.5*mean((fake-a)^2)``; G: ``0.5*mean((fake-c)^2)``
    - hinge D: ``mean(relu(1-real)) + mean(relu(1+fake))``; G: ``-mean(fake)``
    - wasserstein D: ``mean(fake) - mean(real)``; G: ``-mean(fake)``

    ``real`` is required for the discriminator; the generator's objectives do not use it (when given it is
    ignored, and its gradient is 0).
    """
    if role == "generator":
        if mode == "minimax":
            loss = F.logsigmoid(-fake).mean()
        elif mode == "non_saturating":
            loss = -F.logsigmoid(fake).mean()
        elif mode == "least_squares":
            loss = 0.5 * (fake - c).square().mean()
        else:  # hinge, wasserstein
            loss = -fake.mean()
        return loss + _unused(real) if real is not None else loss
    if real is None:
        raise ValueError("real is required for the discriminator")
    if mode in ("minimax", "non_saturating"):
        return -F.logsigmoid(real).mean() - F.logsigmoid(-fake).mean()
    if mode == "least_squares":
        return 0.5 * (real - b).square().mean() + 0.5 * (fake - a).square().mean()
    if mode == "hinge":
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return fake.mean() - real.mean()


def _check_gan(inputs: Mapping[str, Any], p: GANParams) -> None:
    require_nonempty(inputs["fake"], "fake")
    real = inputs.get("real")
    if real is None:
        if p.role == "discriminator":
            raise InputError(
                ("inputs", "real"), "real (discriminator outputs on real samples) is required for role 'discriminator'"
            )
        return
    require_nonempty(real, "real")


GAN = LossSpec(
    name="gan",
    summary="GAN objectives (minimax, non_saturating, least_squares, hinge, wasserstein) for the discriminator "
    "or the generator, from discriminator outputs on fake and real samples (logits for minimax/non_saturating).",
    fn=gan,
    inputs=(
        Input("fake", "float", "any", "discriminator outputs on generated samples", differentiable=True),
        Input(
            "real",
            "float",
            "any",
            "discriminator outputs on real samples; required for the discriminator, ignored by the generator",
            differentiable=True,
            required=False,
        ),
    ),
    params=GANParams,
    check=_check_gan,
    reference="float64 formulas in the tests (naive log(sigmoid) where it does not overflow), gradcheck",
)


SPECS: tuple[LossSpec, ...] = (GAN,)
