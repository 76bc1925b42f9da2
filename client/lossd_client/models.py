"""Typed results, catalogue entries and request pieces."""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict

from lossd_client._wire import Grad, NDArray, TensorLike, plain

if TYPE_CHECKING:
    import torch


def _to_torch(x: float | NDArray, dtype: str, device: Any) -> torch.Tensor:
    import torch  # only when asked for torch tensors

    t = torch.as_tensor(np.asarray(x, dtype=np.float64 if dtype == "float64" else None))
    if dtype == "float32" and t.dtype == torch.float64:
        t = t.float()
    elif dtype == "bfloat16":
        t = t.to(torch.bfloat16)  # exact: the float32 values came from bfloat16 numbers
    return t.to(device) if device is not None else t


def _scalar(value: float | NDArray) -> float:
    if isinstance(value, np.ndarray):
        if value.ndim:
            raise TypeError(f"the value is an array of shape {value.shape} (reduction='none'): use .array")
        return float(value)
    return float(value)


def _array(value: float | NDArray, dtype: str | None) -> NDArray:
    if isinstance(value, np.ndarray):
        return value
    return np.asarray(value, dtype=np.float64 if dtype in (None, "float64") else np.float32)


class TorchResult(NamedTuple):
    value: torch.Tensor
    grads: dict[str, torch.Tensor]


def _torch_result(
    value: float | NDArray, grads: Mapping[str, NDArray], dtypes: Mapping[str, str], device: Any
) -> TorchResult:
    """A result's value and gradients as torch tensors in their wire dtypes."""
    tensors = {k: _to_torch(v, dtypes.get(k, str(v.dtype)), device) for k, v in grads.items()}
    return TorchResult(_to_torch(value, dtypes.get("value", "float32"), device), tensors)


class _Valued:
    """What LossResult and CompositeResult share: a value, its gradients and their wire dtypes."""

    value: float | NDArray
    grads: dict[str, NDArray]
    dtypes: dict[str, str]

    def to_torch(self, device: Any = None) -> TorchResult:
        """The value and gradients as torch tensors in their wire dtypes (needs torch)."""
        return _torch_result(self.value, self.grads, self.dtypes, device)

    @property
    def scalar(self) -> float:
        """The value as a float; TypeError if it is an array with dimensions (``reduction="none"``)."""
        return _scalar(self.value)

    @property
    def array(self) -> NDArray:
        """The value as an array (a float becomes a 0-d array of the value's dtype)."""
        return _array(self.value, self.dtypes.get("value"))


@dataclass(frozen=True)
class LossResult(_Valued):
    """One loss's answer.

    ``value`` is a float, or an array for ``reduction="none"`` (on either transport, 0-d included);
    ``scalar`` and ``array`` are the same value typed for each case. ``grads`` maps input names to
    arrays shaped like the inputs; ``terms`` holds named terms' unweighted values (centernet).
    """

    loss: str
    value: float | NDArray
    grads: dict[str, NDArray] = field(default_factory=dict)
    terms: dict[str, float] | None = None
    request_id: str | None = None
    #: wire dtypes: "value" and each gradient's input name (bfloat16 arrives as float32 arrays)
    dtypes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CompositeTermValue:
    loss: str
    weight: float
    value: float | NDArray

    @property
    def scalar(self) -> float:
        """The term's value as a float."""
        return _scalar(self.value)


@dataclass(frozen=True)
class CompositeResult(_Valued):
    """``value`` is the weighted sum; each term's value is unweighted; ``grads`` are of the sum."""

    value: float | NDArray
    terms: list[CompositeTermValue]
    grads: dict[str, NDArray] = field(default_factory=dict)
    request_id: str | None = None
    dtypes: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Call:
    """One call of :meth:`LossClient.batch`: inputs and params by their catalogue names."""

    loss: str
    inputs: Mapping[str, TensorLike]
    params: Mapping[str, Any] = field(default_factory=dict)
    grad: Grad = False  # a bool, input names, or one input name


@dataclass(frozen=True)
class Term:
    """One term of :meth:`LossClient.composite`: ``inputs`` maps the loss's inputs to shared tensor names.

    ``weight`` must be finite (the server takes weights as JSON numbers); numpy and torch scalars are
    accepted at run time and kept as Python numbers (typed ``float``: ``float(x)`` for type checkers).
    """

    loss: str
    inputs: Mapping[str, str]
    weight: float = 1.0
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        weight = plain(self.weight)
        if isinstance(weight, float) and not math.isfinite(weight):
            raise ValueError(f"Term({self.loss!r}).weight must be finite, got {weight}")
        object.__setattr__(self, "weight", weight)


class InputInfo(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    required: bool
    dtypes: list[str]
    shape: str
    differentiable: bool
    doc: str = ""


class LossInfo(BaseModel):
    """A catalogue entry (``GET /v1/losses/{name}``); unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    aliases: list[str] = []
    summary: str = ""
    inputs: list[InputInfo]
    params: dict[str, Any]
    reductions: list[str] = []
    available: bool = True
    reference: str = ""
    unavailable_reason: str | None = None

    @property
    def param_defaults(self) -> dict[str, Any]:
        """Each param's default; params without one (a default computed by the server) are left out."""
        props: dict[str, Any] = self.params.get("properties", {})
        return {k: v["default"] for k, v in props.items() if "default" in v}

    @property
    def param_names(self) -> list[str]:
        return list(self.params.get("properties", {}))


@dataclass(frozen=True)
class Retry:
    """Retries on 429, on 503 with Retry-After, on a proxy's 503 (not problem+json) and on connection
    failures; never on other 4xx, on lossd's 503 without Retry-After (:class:`Unavailable`), nor on 504.

    Waits ``Retry-After`` (plus up to ``backoff`` of jitter) when the server sends it, else
    exponential backoff with jitter; stops after ``max_retries`` retries or when the next wait
    would end past ``max_total`` seconds since the first attempt.
    """

    max_retries: int = 3
    backoff: float = 0.2
    max_backoff: float = 5.0
    max_total: float = 30.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after + random.uniform(0.0, self.backoff)
        cap = min(self.max_backoff, self.backoff * 2.0**attempt)
        return random.uniform(cap / 2.0, cap)


NO_RETRY = Retry(max_retries=0)
