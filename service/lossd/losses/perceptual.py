"""Perceptual losses: distances between VGG16 features (Johnson et al. 2016)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, field_validator, model_validator

from lossd.losses.vgg import RELU_INDEX, VGG16Features, load_vgg16, pools_before
from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Reduced,
    Reduction,
    require_ndim,
    require_same_shape,
    require_unit_interval,
    shape_str,
)

VGGLayer = Literal[
    "relu1_1",
    "relu1_2",
    "relu2_1",
    "relu2_2",
    "relu3_1",
    "relu3_2",
    "relu3_3",
    "relu4_1",
    "relu4_2",
    "relu4_3",
    "relu5_1",
    "relu5_2",
    "relu5_3",
]
DEFAULT_LAYERS: tuple[str, ...] = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")


class PerceptualParams(Reduced):
    layers: list[VGGLayer] = Field(default=list(DEFAULT_LAYERS), min_length=1)  # type: ignore[arg-type]
    layer_weights: list[Annotated[float, Field(allow_inf_nan=False)]] | None = Field(None, min_length=1)
    distance: Literal["l2", "l1"] = "l2"
    normalize: bool = True

    @field_validator("layers")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"layers must be distinct; repeated: {', '.join(dup)}")
        return v

    @model_validator(mode="after")
    def _weights_match(self) -> PerceptualParams:
        if self.layer_weights is not None and len(self.layer_weights) != len(self.layers):
            raise ValueError(
                f"layer_weights has {len(self.layer_weights)} values but layers has {len(self.layers)} "
                "(one weight per layer)"
            )
        return self


def perceptual(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    layers: list[str] | tuple[str, ...] = DEFAULT_LAYERS,
    layer_weights: list[float] | None = None,
    distance: Literal["l2", "l1"] = "l2",
    normalize: bool = True,
    reduction: Reduction = "mean",
    resource: VGG16Features,
) -> torch.Tensor:
    """VGG16 perceptual loss: ``sum_l w_l * mean_{c,h,w} dist(phi_l(x_n), phi_l(y_n))`` per image ``n``.

    ``phi_l`` the VGG16 ReLU activations of layer ``l`` (torchvision's indices), computed on
    ``(x - mean) / std`` with ImageNet's statistics when ``normalize``; ``dist`` squared (``l2``) or absolute
    (``l1``) differences; ``w_l`` 1 unless ``layer_weights``. ``none`` gives per image (N); ``mean`` averages
    over images (= per layer the mean over all its elements, Johnson et al. 2016); ``sum`` adds them.
    Only ``input`` is differentiated; the target's features are computed without a graph.
    """
    names = list(layers)
    weights = list(layer_weights) if layer_weights is not None else [1.0] * len(names)
    indices = sorted({RELU_INDEX[n] for n in names})

    def prep(x: torch.Tensor) -> torch.Tensor:
        if not normalize:
            return x
        return resource.normalize(x)

    fx = resource.features(prep(input), indices)
    with torch.no_grad():
        fy = resource.features(prep(target.to(input.dtype)), indices)
    per_image = input.new_zeros(input.shape[0])
    for name, w in zip(names, weights):
        i = RELU_INDEX[name]
        diff = fx[i] - fy[i]
        d = diff.square() if distance == "l2" else diff.abs()
        per_image = per_image + w * d.flatten(1).mean(dim=1)
    if reduction == "mean":
        return per_image.mean()
    if reduction == "sum":
        return per_image.sum()
    return per_image


def _check_perceptual(inputs: Mapping[str, Any], p: PerceptualParams) -> None:
    x, y = inputs["input"], inputs["target"]
    require_ndim(x, "input", 4, "of images (N,3,H,W)")
    if x.shape[1] != 3:
        raise InputError(("inputs", "input"), f"expected RGB images (N,3,H,W), got shape {shape_str(x)}")
    if x.shape[0] == 0:
        raise InputError(("inputs", "input"), "expected at least one image")
    require_same_shape(x, y, "input", "target")
    require_unit_interval(x, "input", "pixel values")
    require_unit_interval(y, "target", "pixel values")
    deepest = max(p.layers, key=lambda n: RELU_INDEX[n])
    side = 2 ** pools_before(RELU_INDEX[deepest])
    if x.shape[2] < side or x.shape[3] < side:
        raise InputError(
            ("inputs", "input"),
            f"images of {x.shape[2]}x{x.shape[3]} are too small for layer {deepest}: "
            f"height and width must be at least {side}",
        )
    pixels = _pixels(inputs)
    if pixels > MAX_PERCEPTUAL_PIXELS:
        raise InputError(
            ("inputs", "input"),
            f"{pixels} pixels (N*H*W) is over the limit of {MAX_PERCEPTUAL_PIXELS} per call; split the call",
            status=413,
        )


# Input and target both go through VGG16 (about 0.3 MFLOP per pixel to relu4_3, activations of some
# 260 float32 channels per pixel): 4M pixels is tens of ms on a datacenter GPU, tens of seconds on a CPU core.
MAX_PERCEPTUAL_PIXELS = 1 << 22


def _pixels(inputs: Mapping[str, Any]) -> int:
    x = inputs["input"]
    return int(x.shape[0] * x.shape[2] * x.shape[3])


PERCEPTUAL = LossSpec(
    name="perceptual",
    aliases=("vgg_perceptual",),
    summary="VGG16 perceptual loss: sum over layers of weight * mean (squared or absolute) difference of the "
    "VGG16 ReLU features of input and target (Johnson et al. 2016); needs the vgg16_weights setting.",
    fn=perceptual,
    inputs=(
        Input("input", "float", "(N,3,H,W)", "images in [0, 1]", differentiable=True),
        Input("target", "float", "(N,3,H,W)", "images in [0, 1]"),
    ),
    params=PerceptualParams,
    check=_check_perceptual,
    reference="float64 F.conv2d/relu/max_pool2d chain written in the tests, and gradcheck",
    requires="vgg16_weights",
    load=load_vgg16,
    work=lambda inputs: _pixels(inputs) / MAX_PERCEPTUAL_PIXELS,
)

SPECS: tuple[LossSpec, ...] = (PERCEPTUAL,)

__all__ = ["SPECS", "perceptual"]
