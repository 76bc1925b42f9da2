"""VGG16 convolutional features, laid out as torchvision's ``vgg16().features`` (no torchvision needed).

The weights come from a safetensors file whose keys are those of ``torchvision.models.vgg16().features
.state_dict()``: ``"0.weight"``, ``"0.bias"``, ``"2.weight"``, ... (the index of each conv layer in the
``nn.Sequential``). Export one from torchvision with
``safetensors.torch.save_file(vgg16(weights=...).features.state_dict(), "vgg16_features.safetensors")``.
"""

from __future__ import annotations

import os
import threading

import torch
from torch import nn

# torchvision's cfg "D": conv output channels, "M" a 2x2 max pool.
VGG16_CFG: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)


def _layer_names() -> dict[str, int]:
    """relu{block}_{conv} -> index of that ReLU in the Sequential (relu1_2 -> 3, relu4_3 -> 22, ...)."""
    names: dict[str, int] = {}
    idx, block, conv = 0, 1, 0
    for v in VGG16_CFG:
        if v == "M":
            idx += 1
            block += 1
            conv = 0
        else:
            conv += 1
            names[f"relu{block}_{conv}"] = idx + 1
            idx += 2
    return names


RELU_INDEX: dict[str, int] = _layer_names()
RELU_NAMES: tuple[str, ...] = tuple(RELU_INDEX)


def pools_before(index: int) -> int:
    """How many 2x2 max pools run before layer ``index`` (the input must be at least 2**that high and wide)."""
    n, idx = 0, 0
    for v in VGG16_CFG:
        if idx >= index:
            break
        if v == "M":
            n += 1
            idx += 1
        else:
            idx += 2
    return n


def vgg16_features() -> nn.Sequential:
    """An uninitialised VGG16 feature stack with torchvision's layer indices (ReLUs not in place)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for v in VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            assert isinstance(v, int)
            layers.append(nn.Conv2d(in_ch, v, kernel_size=3, padding=1))
            layers.append(nn.ReLU(inplace=False))
            in_ch = v
    return nn.Sequential(*layers)


def expected_shapes() -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in vgg16_features().state_dict().items()}


class WeightsError(ValueError):
    """The configured VGG16 weights file is unreadable or does not match ``vgg16().features``."""


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read and validate a safetensors file of VGG16 feature weights (float32 on the CPU)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        sd = load_file(os.fspath(path), device="cpu")
    except FileNotFoundError:
        raise WeightsError(f"VGG16 weights file {os.fspath(path)!r} does not exist") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"VGG16 weights file {os.fspath(path)!r} is not a readable safetensors file: {e}") from None
    want = expected_shapes()
    missing = sorted((k for k in want if k not in sd), key=_key_order)
    unexpected = sorted(k for k in sd if k not in want)
    misshapen = [
        f"{k} {tuple(sd[k].shape)} (expected {want[k]})"
        for k in sorted(want, key=_key_order)
        if k in sd and tuple(sd[k].shape) != want[k]
    ]
    problems = []
    if missing:
        problems.append("missing keys: " + ", ".join(missing))
    if unexpected:
        hint = ""
        if any(k.startswith("features.") for k in unexpected):
            hint = " (keys look like a whole vgg16() state dict; save vgg16().features.state_dict() instead)"
        problems.append(
            "unexpected keys: " + ", ".join(unexpected[:20]) + (" ..." if len(unexpected) > 20 else "") + hint
        )
    if misshapen:
        problems.append("wrong shapes: " + ", ".join(misshapen))
    bad_dtype = [k for k in want if k in sd and not sd[k].is_floating_point()]
    if bad_dtype:
        problems.append("non-floating tensors: " + ", ".join(bad_dtype))
    if problems:
        raise WeightsError(
            f"VGG16 weights file {os.fspath(path)!r} does not match torchvision's vgg16().features: "
            + "; ".join(problems)
        )
    return {k: v.to(torch.float32) for k, v in sd.items()}


def _key_order(key: str) -> tuple[int, str]:
    idx, _, rest = key.partition(".")
    return (int(idx) if idx.isdigit() else 1 << 30, rest)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG16Features:
    """Frozen VGG16 features on one device; float32 as loaded, with a float64 copy made on first use."""

    def __init__(self, state_dict: dict[str, torch.Tensor], device: torch.device) -> None:
        self.device = device
        self._lock = threading.Lock()
        net = vgg16_features()
        net.load_state_dict(state_dict)
        self._nets: dict[torch.dtype, nn.Sequential] = {torch.float32: self._freeze(net.to(device))}
        # ImageNet's statistics, resident on the device next to the weights.
        self._stats = {torch.float32: self._imagenet(torch.float32)}

    def _imagenet(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=dtype, device=self.device).view(1, 3, 1, 1)
        return mean, std

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``(x - mean) / std`` with ImageNet's per-channel statistics."""
        self.net(x.dtype)  # makes the dtype's copy (weights and statistics) on first use
        mean, std = self._stats[x.dtype]
        return (x - mean) / std

    @staticmethod
    def _freeze(net: nn.Sequential) -> nn.Sequential:
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net

    def net(self, dtype: torch.dtype) -> nn.Sequential:
        found = self._nets.get(dtype)
        if found is not None:
            return found
        # Normal (not inference-mode) tensors, also when first asked for inside torch.inference_mode():
        # the weights are saved for backward by later calls that need gradients.
        with self._lock, torch.inference_mode(False), torch.no_grad():
            found = self._nets.get(dtype)
            if found is None:
                src = self._nets[torch.float32]
                copy = vgg16_features().to(self.device)
                copy.load_state_dict(src.state_dict())
                found = self._freeze(copy.to(dtype))
                self._stats[dtype] = self._imagenet(dtype)
                self._nets[dtype] = found
            return found

    def features(self, x: torch.Tensor, indices: list[int]) -> dict[int, torch.Tensor]:
        """The outputs of the layers at ``indices``, running the stack only as deep as needed."""
        net = self.net(x.dtype)
        wanted = set(indices)
        out: dict[int, torch.Tensor] = {}
        last = max(indices)
        for i, layer in enumerate(net):
            x = layer(x)
            if i in wanted:
                out[i] = x
            if i >= last:
                break
        return out


def load_vgg16(path: str | os.PathLike[str], device: torch.device) -> VGG16Features:
    """``LossSpec.load`` for the ``vgg16_weights`` setting: validate the file and put the network on ``device``."""
    return VGG16Features(load_state_dict(path), device)
