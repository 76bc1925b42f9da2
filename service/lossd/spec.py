"""Declarative loss specs: the single source of truth for validation, the catalogue and the docs.

A loss is a plain function over tensors (``fn(**inputs, **params) -> Tensor``) plus a
:class:`LossSpec` that says which inputs it takes, what dtypes they accept, which are
differentiable, and which params (a pydantic model) it has. The engine derives input
conversion and validation from the spec; the HTTP layer derives the catalogue from it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Union, get_args

import torch
from pydantic import BaseModel, ConfigDict, model_validator

# How the engine treats an input's dtype before the loss sees it:
#   float           any numeric or bool; converted to the call's compute dtype (float32/float64)
#   index           integer dtypes only; converted to int64 (class indices, lengths, flat indices)
#   float_or_index  integer -> int64 indices, floating -> compute dtype (cross_entropy's target)
#   onehot_or_index as float_or_index, and bool (a one-hot) -> compute dtype (dice's target)
#   mask            bool, integer or float; converted to the compute dtype
#   text            a list of strings (JSON only) or an integer tensor, passed through untouched
Kind = Literal["float", "index", "float_or_index", "onehot_or_index", "mask", "text"]

KIND_DTYPES: dict[str, tuple[str, ...]] = {
    "float": ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8", "bool"),
    "index": ("int8", "int16", "int32", "int64", "uint8"),
    "float_or_index": ("float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8"),
    "mask": ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"),
    "text": ("list[str]", "int8", "int16", "int32", "int64", "uint8"),
}
KIND_DTYPES["onehot_or_index"] = (*KIND_DTYPES["float_or_index"], "bool")

Reduction = Literal["mean", "sum", "none"]
InputValue = Union[torch.Tensor, list[str]]
LossOutput = Union[torch.Tensor, tuple[torch.Tensor, dict[str, torch.Tensor]]]


class InputError(Exception):
    """A client's inputs or params break a loss's rules (HTTP 422).

    ``loc`` follows api.md: ``("inputs", "target")`` or ``("params", "gamma")``.
    """

    def __init__(self, loc: Sequence[str | int], msg: str, status: int = 422) -> None:
        super().__init__(msg)
        self.loc = tuple(loc)
        self.msg = msg
        self.status = status  # 413 for work over a size limit, else 422


class Params(BaseModel):
    """Base of every loss's params model: unknown params are errors, not ignored."""

    # strict: "2" is not a number and true is not an index (JSON numbers still fill float fields).
    # allow_inf_nan=False: a float param is finite unless its field says otherwise (triplet_margin's p).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _whole_floats_fill_int_fields(cls, data: Any) -> Any:
        """A whole float is an integer (``1.0`` for ``ignore_index``: C++ and Java clients print whole
        doubles so, and JSON does not tell the two apart); ``1.5`` stays a 422."""
        if not isinstance(data, dict):
            return data
        ints = _int_fields(cls)
        whole = {k: int(v) for k, v in data.items() if k in ints and type(v) is float and v.is_integer()}
        return {**data, **whole} if whole else data


@functools.cache
def _int_fields(model: type[BaseModel]) -> frozenset[str]:
    """Fields that take an integer and no float (``int``, ``int | None``)."""
    return frozenset(
        name
        for name, f in model.model_fields.items()
        if int in (get_args(f.annotation) or (f.annotation,)) and float not in get_args(f.annotation)
    )


class Reduced(Params):
    """Params of a loss that takes the standard ``reduction``."""

    reduction: Reduction = "mean"


@dataclass(frozen=True)
class Input:
    name: str
    kind: Kind
    shape: str
    doc: str = ""
    differentiable: bool = False
    required: bool = True

    @property
    def dtypes(self) -> tuple[str, ...]:
        return KIND_DTYPES[self.kind]


CheckFn = Callable[[Mapping[str, Any], Any], None]


@dataclass(frozen=True)
class LossSpec:
    """Everything the service knows about one loss.

    ``fn`` is called as ``fn(**inputs, **params)`` with tensors already converted per
    their :class:`Input` kind and already on the device; it returns the (reduced) value,
    or ``(value, terms)`` for losses made of named terms.
    ``check`` runs on the host, on converted CPU tensors, before any device work, and
    raises :class:`InputError` for anything the function would choke on (shapes, index
    and probability ranges): a bad index must never reach a CUDA kernel.
    """

    name: str
    summary: str
    fn: Callable[..., LossOutput]
    inputs: tuple[Input, ...]
    params: type[Params] = Reduced
    aliases: tuple[str, ...] = ()
    check: CheckFn | None = None
    reference: str = ""
    host_only: bool = False
    # A loss whose work grows faster than its inputs (pairwise similarities, alignment lattices,
    # a network) is bounded per call: ``work`` gives the share of that bound a call takes (checked
    # inputs -> 0..1; the check refuses more with 413). Such a loss never runs on the event loop,
    # however small its body, and a batch or composite takes at most one call's bound in all.
    work: Callable[[Mapping[str, Any]], float] | None = None
    # A loss that needs operator configuration (perceptual's weights) names the setting in
    # ``requires`` and gives ``load(setting_value, device)``, called once per device engine at
    # start-up; what it returns is passed to ``fn`` as the keyword ``resource``. Without the
    # setting the loss is listed as unavailable and answers 503.
    requires: str | None = None
    load: Callable[[Any, torch.device], Any] | None = None
    # For the common case of a loss, its value and gradients computed with the very kernels
    # autograd would run, in the same order (so the same bits), without recording a graph:
    # ``value_and_grad(grad, **inputs, **params)`` -> (value, {input: gradient}), or None where
    # it does not apply (then autograd computes them). Worth it only for small, frequent calls.
    value_and_grad: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]] | None] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def reductions(self) -> tuple[str, ...]:
        f = self.params.model_fields.get("reduction")
        if f is None:
            return ()
        return tuple(get_args(f.annotation))

    @property
    def superlinear(self) -> bool:
        return self.work is not None

    @property
    def differentiable(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs if i.differentiable)

    @functools.cached_property
    def _inputs_by_name(self) -> dict[str, Input]:
        return {i.name: i for i in self.inputs}

    def input(self, name: str) -> Input | None:
        return self._inputs_by_name.get(name)


# ---------------------------------------------------------------------------
# Host-side check helpers, for use in LossSpec.check functions.
# Each raises InputError naming the input and what was expected.


def loc(name: str) -> tuple[str, str]:
    return ("inputs", name)


def shape_str(t: torch.Tensor) -> str:
    return "(" + ",".join(str(s) for s in t.shape) + ")"


def require_ndim(t: torch.Tensor, name: str, ndims: int | Sequence[int], what: str = "") -> None:
    allowed = (ndims,) if isinstance(ndims, int) else tuple(ndims)
    if t.dim() not in allowed:
        exp = " or ".join(f"{d}-D" for d in allowed)
        raise InputError(loc(name), f"expected a {exp} tensor{(' ' + what) if what else ''}, got shape {shape_str(t)}")


def require_min_ndim(t: torch.Tensor, name: str, n: int, what: str = "") -> None:
    if t.dim() < n:
        raise InputError(
            loc(name), f"expected at least {n} dimensions{(' ' + what) if what else ''}, got shape {shape_str(t)}"
        )


def require_same_shape(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise InputError(loc(b_name), f"expected the shape of {a_name} {shape_str(a)}, got {shape_str(b)}")


def require_shape(t: torch.Tensor, name: str, shape: Sequence[int], what: str = "") -> None:
    if tuple(t.shape) != tuple(shape):
        want = "(" + ",".join(str(s) for s in shape) + ")"
        raise InputError(loc(name), f"expected shape {want}{(' ' + what) if what else ''}, got {shape_str(t)}")


def require_broadcastable(t: torch.Tensor, name: str, to: Sequence[int]) -> None:
    """``t`` broadcasts to exactly ``to`` (it may not grow the result's shape)."""
    want = "(" + ",".join(str(s) for s in to) + ")"
    try:
        shape = torch.broadcast_shapes(tuple(t.shape), tuple(to))
    except RuntimeError:
        raise InputError(loc(name), f"shape {shape_str(t)} does not broadcast to {want}") from None
    if shape != torch.Size(to):
        raise InputError(loc(name), f"shape {shape_str(t)} does not broadcast to {want}")


def require_indices(t: torch.Tensor, name: str, num_classes: int, ignore_index: int | None = None) -> None:
    """Class indices in [0, num_classes), other than ignore_index."""
    if t.numel() == 0:
        return
    lo, hi = torch.aminmax(t)
    if lo.item() >= 0 and hi.item() < num_classes:  # the common case, in one pass
        return
    valid = (t >= 0) & (t < num_classes)
    if ignore_index is not None:
        valid |= t == ignore_index
    if not bool(valid.all()):
        bad = t[~valid][0].item()
        extra = f" or ignore_index={ignore_index}" if ignore_index is not None else ""
        raise InputError(loc(name), f"class index {bad} out of range [0, {num_classes}){extra}")


def require_unit_interval(t: torch.Tensor, name: str, what: str = "probabilities") -> None:
    """Values in [0, 1] (NaN rejected too)."""
    if t.numel() and not bool(((t >= 0) & (t <= 1)).all()):
        raise InputError(loc(name), f"expected {what} in [0, 1]")


def require_values_in(t: torch.Tensor, name: str, allowed: Sequence[float]) -> None:
    if t.numel() == 0:
        return
    ok = torch.zeros(t.shape, dtype=torch.bool)
    for v in allowed:
        ok |= t == v
    if not bool(ok.all()):
        vals = ", ".join(str(v) for v in allowed)
        raise InputError(loc(name), f"expected values in {{{vals}}}, got {t[~ok][0].item()}")


def require_nonempty(t: torch.Tensor, name: str) -> None:
    if t.numel() == 0:
        raise InputError(loc(name), "expected a non-empty tensor")


def signed_labels(t: torch.Tensor, name: str) -> torch.Tensor:
    """{-1,1} targets as they are; {0,1} targets (at least one 0) mapped to 2t-1; else 422."""
    if t.numel() == 0:
        return t
    is_pm1 = bool(((t == -1) | (t == 1)).all())
    if is_pm1:
        return t
    is_01 = bool(((t == 0) | (t == 1)).all())
    if is_01:
        return 2 * t - 1
    raise InputError(loc(name), "expected targets in {-1, 1} or {0, 1}")
