"""perceptual: values against an independent float64 F.conv2d chain, gradcheck, weights loading, checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file

from lossd.losses.perceptual import PERCEPTUAL, SPECS, PerceptualParams, perceptual
from lossd.losses.vgg import VGG16Features, WeightsError, load_vgg16
from lossd.spec import InputError

# torchvision vgg16().features, written out: (kind, index, in_ch, out_ch); ReLU after each conv at index+1.
CONVS = [
    (0, 3, 64),
    (2, 64, 64),
    (5, 64, 128),
    (7, 128, 128),
    (10, 128, 256),
    (12, 256, 256),
    (14, 256, 256),
    (17, 256, 512),
    (19, 512, 512),
    (21, 512, 512),
    (24, 512, 512),
    (26, 512, 512),
    (28, 512, 512),
]
POOLS = {4, 9, 16, 23, 30}
RELU = {
    "relu1_1": 1,
    "relu1_2": 3,
    "relu2_1": 6,
    "relu2_2": 8,
    "relu3_1": 11,
    "relu3_2": 13,
    "relu3_3": 15,
    "relu4_1": 18,
    "relu4_2": 20,
    "relu4_3": 22,
    "relu5_1": 25,
    "relu5_2": 27,
    "relu5_3": 29,
}
MEAN = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225], dtype=torch.float64).view(1, 3, 1, 1)
DEFAULT = ["relu1_2", "relu2_2", "relu3_3", "relu4_3"]


def _random_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for idx, cin, cout in CONVS:
        std = (2.0 / (cin * 9)) ** 0.5  # He init keeps activations O(1) through the stack
        sd[f"{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * std
        sd[f"{idx}.bias"] = torch.randn(cout, generator=g) * 0.05
    return sd


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vgg") / "vgg16_features.safetensors"
    save_file(_random_weights(), str(path))
    return path


@pytest.fixture(scope="module")
def sd(weights_file: Path) -> dict[str, torch.Tensor]:
    return load_file(str(weights_file))


@pytest.fixture(scope="module")
def vgg(weights_file: Path) -> VGG16Features:
    assert PERCEPTUAL.load is not None
    res = PERCEPTUAL.load(str(weights_file), torch.device("cpu"))
    assert isinstance(res, VGG16Features)
    return res


def _ref_features(x: torch.Tensor, sd: dict[str, torch.Tensor], upto: int) -> dict[int, torch.Tensor]:
    """Independent float64 VGG16 forward: conv/relu/pool by index, outputs of every ReLU up to ``upto``."""
    out: dict[int, torch.Tensor] = {}
    convs = {idx for idx, _, _ in CONVS}
    h = x
    for i in range(upto + 1):
        if i in convs:
            h = F.conv2d(h, sd[f"{i}.weight"].double(), sd[f"{i}.bias"].double(), padding=1)
        elif i in POOLS:
            h = F.max_pool2d(h, 2, 2)
        else:
            h = torch.clamp(h, min=0)
            out[i] = h
    return out


def _ref_loss(
    x: torch.Tensor,
    y: torch.Tensor,
    sd: dict[str, torch.Tensor],
    layers: list[str],
    weights: list[float] | None,
    distance: str,
    normalize: bool,
    reduction: str,
) -> torch.Tensor:
    x, y = x.double(), y.double()
    if normalize:
        x, y = (x - MEAN) / STD, (y - MEAN) / STD
    upto = max(RELU[n] for n in layers)
    fx, fy = _ref_features(x, sd, upto), _ref_features(y, sd, upto)
    w = weights or [1.0] * len(layers)
    per = torch.zeros(x.shape[0], dtype=torch.float64)
    for n, wl in zip(layers, w):
        d = fx[RELU[n]] - fy[RELU[n]]
        e = d * d if distance == "l2" else d.abs()
        per = per + wl * e.reshape(e.shape[0], -1).mean(1)
    return {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]


def _images(n: int = 2, hw: int = 16, seed: int = 1, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, hw, hw, generator=g, dtype=dtype), torch.rand(n, 3, hw, hw, generator=g, dtype=dtype)


def test_spec() -> None:
    assert SPECS == (PERCEPTUAL,)
    assert PERCEPTUAL.name == "perceptual"
    assert PERCEPTUAL.aliases == ("vgg_perceptual",)
    assert PERCEPTUAL.differentiable == ("input",)
    assert PERCEPTUAL.requires == "vgg16_weights"
    assert PERCEPTUAL.load is load_vgg16
    assert PERCEPTUAL.reductions == ("mean", "sum", "none")


def test_default_params() -> None:
    p = PerceptualParams()
    assert p.layers == DEFAULT
    assert (p.layer_weights, p.distance, p.normalize, p.reduction) == (None, "l2", True, "mean")


def test_values_default_params_float64_every_reduction(vgg: VGG16Features, sd: dict[str, torch.Tensor]) -> None:
    x, y = _images(hw=8)
    per = _ref_loss(x, y, sd, DEFAULT, None, "l2", True, "none")
    assert per.shape == (2,) and bool((per > 0).all())
    for reduction, want in (("none", per), ("sum", per.sum()), ("mean", per.mean())):
        got = perceptual(x, y, resource=vgg, **dict(PerceptualParams(reduction=reduction)))  # type: ignore[arg-type]
        assert got.dtype == torch.float64
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    # the default reduction is the mean over images
    torch.testing.assert_close(perceptual(x, y, resource=vgg), per.mean(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "params",
    [
        {"distance": "l1"},
        {"normalize": False},
        {"layers": ["relu4_3", "relu1_1"], "layer_weights": [0.25, 2.0]},
        {"layers": ["relu5_3", "relu2_1", "relu3_2"], "layer_weights": [1.0, 0.0, 3.0], "distance": "l1"},
    ],
)
def test_values_non_default_params(vgg: VGG16Features, sd: dict[str, torch.Tensor], params: dict[str, Any]) -> None:
    x, y = _images(hw=16 if "relu5_3" in params.get("layers", []) else 8, seed=2)
    p = PerceptualParams(reduction="none", **params)
    got = perceptual(x, y, resource=vgg, **dict(p))
    want = _ref_loss(x, y, sd, p.layers, p.layer_weights, p.distance, p.normalize, "none")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    default = perceptual(x, y, resource=vgg, reduction="none")
    assert not torch.allclose(got, default)


def test_values_float32(vgg: VGG16Features, sd: dict[str, torch.Tensor]) -> None:
    x, y = _images(hw=8, dtype=torch.float32, seed=3)
    got = perceptual(x, y, resource=vgg, reduction="none")
    assert got.dtype == torch.float32
    want = _ref_loss(x, y, sd, DEFAULT, None, "l2", True, "none")
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_identical_images_give_zero(vgg: VGG16Features) -> None:
    x, _ = _images(hw=8, seed=4)
    assert perceptual(x, x.clone(), resource=vgg).item() == 0.0


@pytest.mark.parametrize(
    ("params", "hw"),
    [({"layers": ["relu1_2"]}, 3), ({"layers": ["relu2_2", "relu1_1"], "distance": "l1", "normalize": False}, 2)],
)
def test_gradcheck(vgg: VGG16Features, params: dict[str, Any], hw: int) -> None:
    x, y = _images(n=1, hw=hw, seed=5)
    x.requires_grad_(True)
    p = dict(PerceptualParams(**params))
    assert torch.autograd.gradcheck(lambda t: perceptual(t, y, resource=vgg, **p), (x,), eps=1e-6, atol=1e-5)


def test_gradient_default_layers_matches_reference_autograd(vgg: VGG16Features, sd: dict[str, torch.Tensor]) -> None:
    x, y = _images(n=1, hw=8, seed=6)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(perceptual(xr, y, resource=vgg), xr)
    xr2 = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(_ref_loss(xr2, y, sd, DEFAULT, None, "l2", True, "mean"), xr2)
    torch.testing.assert_close(g, g_ref, rtol=1e-9, atol=1e-12)
    # a central difference on a few pixels
    flat = x.view(-1)
    for i in (37, 150):
        old = flat[i].item()
        flat[i] = old + 1e-6
        up = perceptual(x, y, resource=vgg).item()
        flat[i] = old - 1e-6
        down = perceptual(x, y, resource=vgg).item()
        flat[i] = old
        assert g.view(-1)[i].item() == pytest.approx((up - down) / 2e-6, rel=1e-4, abs=1e-8)


def test_weights_not_trained_by_the_call(vgg: VGG16Features) -> None:
    x, y = _images(n=1, hw=8, seed=7)
    x.requires_grad_(True)
    perceptual(x, y, resource=vgg).backward()
    assert all(p.grad is None and not p.requires_grad for p in vgg.net(torch.float64).parameters())


# ---------------------------------------------------------------------------
# weights loading


def test_load_full_file(vgg: VGG16Features, sd: dict[str, torch.Tensor]) -> None:
    got = vgg.net(torch.float32).state_dict()
    assert set(got) == set(sd)
    torch.testing.assert_close(got["28.weight"], sd["28.weight"])
    assert vgg.net(torch.float64).state_dict()["28.weight"].dtype == torch.float64


def test_load_errors_name_the_keys(tmp_path: Path) -> None:
    sd = _random_weights(1)
    sd.pop("12.bias")
    sd["13.weight"] = torch.zeros(3)
    sd["7.weight"] = torch.zeros(128, 64, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError) as e:
        load_vgg16(path, torch.device("cpu"))
    msg = str(e.value)
    assert "missing keys: 12.bias" in msg
    assert "unexpected keys: 13.weight" in msg
    assert "7.weight (128, 64, 1, 1) (expected (128, 128, 3, 3))" in msg
    assert isinstance(e.value, ValueError)


def test_load_whole_model_keys_hint(tmp_path: Path) -> None:
    sd = {f"features.{k}": v for k, v in _random_weights(2).items() if k.startswith(("0.", "2."))}
    path = tmp_path / "whole.safetensors"
    save_file(sd, str(path))
    with pytest.raises(WeightsError, match=r"features\.0\.weight.*vgg16\(\)\.features\.state_dict\(\)"):
        load_vgg16(path, torch.device("cpu"))


def test_load_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        load_vgg16(tmp_path / "nope.safetensors", torch.device("cpu"))
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="not a readable safetensors file"):
        load_vgg16(bad, torch.device("cpu"))


# ---------------------------------------------------------------------------
# params and checks


@pytest.mark.parametrize(
    "params",
    [
        {"layers": []},
        {"layers": ["relu6_1"]},
        {"layers": ["conv1_1"]},
        {"layers": ["relu1_2", "relu1_2"]},
        {"layer_weights": [1.0, 2.0]},
        {"layers": ["relu1_2"], "layer_weights": [float("nan")]},
        {"distance": "l3"},
        {"reduction": "batchmean"},
        {"weights": None},
    ],
)
def test_params_rejected(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PerceptualParams(**params)


def _check(inputs: dict[str, Any], **params: Any) -> None:
    assert PERCEPTUAL.check is not None
    PERCEPTUAL.check(inputs, PerceptualParams(**params))


def test_check_accepts_valid() -> None:
    x, y = _images(hw=8)
    _check({"input": x, "target": y})
    _check({"input": x[:, :, :2, :2], "target": y[:, :, :2, :2]}, layers=["relu2_1"])
    _check({"input": x[:, :, :1, :1], "target": y[:, :, :1, :1]}, layers=["relu1_2"])


@pytest.mark.parametrize(
    ("which", "make", "params"),
    [
        ("input", lambda x, y: (x[0], y[0]), {}),
        ("input", lambda x, y: (x[:, :2], y[:, :2]), {}),
        ("input", lambda x, y: (x[:0], y[:0]), {}),
        ("target", lambda x, y: (x, y[:, :, :4]), {}),
        ("input", lambda x, y: (x * 2, y), {}),
        ("target", lambda x, y: (x, y - 0.5), {}),
        ("input", lambda x, y: (x[:, :, :7], y[:, :, :7]), {}),  # relu4_3 needs 8x8
        ("input", lambda x, y: (x, y), {"layers": ["relu5_1"]}),  # needs 16x16
        ("input", lambda x, y: (x[:, :, :, :1], y[:, :, :, :1]), {"layers": ["relu2_2"]}),
    ],
)
def test_check_rejects(which: str, make: Any, params: dict[str, Any]) -> None:
    x, y = _images(hw=8)
    a, b = make(x, y)
    with pytest.raises(InputError) as e:
        _check({"input": a, "target": b}, **params)
    assert e.value.loc == ("inputs", which)


def test_float64_copy_made_in_inference_mode_still_gives_gradients(weights_file: Path) -> None:
    res = load_vgg16(weights_file, torch.device("cpu"))
    x, y = _images(n=1, hw=2, seed=8)
    with torch.inference_mode():
        first = perceptual(x, y, resource=res, layers=["relu1_2"])
    xr = x.clone().requires_grad_(True)
    again = perceptual(xr, y, resource=res, layers=["relu1_2"])
    (g,) = torch.autograd.grad(again, xr)
    assert again.item() == first.item()
    assert bool((g != 0).any())


def test_check_bounds_the_pixels_of_a_call() -> None:
    """VGG16 over N*H*W pixels is the call's work: past MAX_PERCEPTUAL_PIXELS it is 413 before any device work."""
    from lossd.losses.perceptual import MAX_PERCEPTUAL_PIXELS

    side = 1024
    n = MAX_PERCEPTUAL_PIXELS // (side * side)
    x = torch.zeros(1, 3, side, side).expand(n + 1, 3, side, side)
    # expand() keeps the test small: the check reads shapes and ranges only
    with pytest.raises(InputError) as e:
        _check({"input": x, "target": x})
    assert e.value.status == 413 and e.value.loc == ("inputs", "input")
    _check({"input": x[:n], "target": x[:n]})
