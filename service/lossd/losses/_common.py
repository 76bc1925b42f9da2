"""Small helpers shared by the loss families."""

from __future__ import annotations

import torch

from lossd.spec import Reduction


def reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """Apply the catalogue's standard reduction to per-element (or per-sample) values."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    return values
