"""What the client sends: 0-d inputs, array-likes' dtypes, params of numpy and torch types, defaults,
``grad`` spellings, term weights and text, against a real lossd; and value types on both transports.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lossd_client import AsyncLossClient, Call, LossClient, LossResult, Term, ValidationError
from lossd_client._wire import to_wire


def sent_json(client: LossClient) -> list[dict[str, Any]]:
    """Record each JSON request body the client sends."""
    seen: list[dict[str, Any]] = []

    def hook(request: httpx.Request) -> None:
        if request.headers.get("content-type") == "application/json":
            seen.append(json.loads(request.content))

    client._http.event_hooks["request"] = [hook]
    return seen


# -- 0-d inputs stay 0-d ------------------------------------------------------------------

FLOATS: dict[str, Callable[[float], Any]] = {
    "python": lambda v: v,
    "numpy_scalar": lambda v: np.float32(v),
    "numpy_0d": lambda v: np.array(v, np.float32),
    "torch": lambda v: torch.tensor(v),
    "torch_bf16": lambda v: torch.tensor(v, dtype=torch.bfloat16),
}
INTS: dict[str, Callable[[int], Any]] = {
    "python": lambda v: v,
    "numpy_scalar": lambda v: np.int64(v),
    "numpy_0d": lambda v: np.array(v, np.int32),
    "torch": lambda v: torch.tensor(v),
}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("kind", FLOATS)
def test_zero_d_float_inputs_and_their_grads(url: str, kind: str, binary: bool) -> None:
    x, t = FLOATS[kind](3.0), FLOATS[kind](0.5)
    with LossClient(url, binary=binary) as c:
        r = c.huber(x, t, delta=1.0, grad=True)
    assert r.value == 2.0  # |3 - 0.5| = 2.5 -> delta * (2.5 - delta / 2)
    assert r.grads["input"].shape == () and r.grads["input"] == 1.0
    assert r.grads["target"].shape == () and r.grads["target"] == -1.0
    if kind.startswith("torch"):
        _, grads = r.to_torch()
        assert grads["input"].shape == torch.Size([]) and grads["input"].dtype == x.dtype


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("kind", INTS)
def test_zero_d_class_index(url: str, kind: str, binary: bool) -> None:
    """cross_entropy of one (C,) row takes a 0-d target: a (1,) one is a 422."""
    logits = np.array([2.0, 0.5, -1.0], np.float32)
    with LossClient(url, binary=binary) as c:
        r = c.cross_entropy(logits, INTS[kind](0), grad=True)
    lt = torch.from_numpy(logits).requires_grad_(True)
    ref = F.cross_entropy(lt, torch.tensor(0))
    (g,) = torch.autograd.grad(ref, lt)
    assert r.value == pytest.approx(ref.item(), rel=1e-6)
    np.testing.assert_allclose(r.grads["input"], g.numpy(), rtol=1e-5)


@pytest.mark.parametrize("threshold", [1 << 20, 0])  # tensors as data, then as base64
def test_zero_d_in_batch_and_composite(url: str, threshold: int) -> None:
    with LossClient(url, binary_threshold=threshold) as c:
        (b,) = c.batch([Call("huber", {"input": np.float32(3.0), "target": 0.5}, grad=["input"])])
        comp = c.composite(
            {"x": np.array(3.0, np.float32), "t": torch.tensor(0.5)},
            [Term("huber", {"input": "x", "target": "t"})],
            grad=["x"],
        )
    assert isinstance(b, LossResult) and b.value == 2.0 and b.grads["input"].shape == ()
    assert comp.value == 2.0 and comp.grads["x"].shape == ()


# -- dtypes of array-likes ----------------------------------------------------------------


class WithArray:
    """An array-like that is not an ndarray (pandas-like): only ``__array__``."""

    def __init__(self, a: np.ndarray) -> None:
        self._a = a

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self._a if dtype is None else self._a.astype(dtype)


class WithInterface:
    def __init__(self, a: np.ndarray) -> None:
        self._a = a  # keeps the memory alive
        self.__array_interface__ = a.__array_interface__


ARRAY_LIKES: dict[str, Callable[[np.ndarray], Any]] = {
    "__array__": WithArray,
    "__array_interface__": WithInterface,
    "memoryview": memoryview,
    "list_of_arrays": list,  # not Python numbers: numpy's dtype, not the JSON inference
}


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("kind", ARRAY_LIKES)
def test_array_likes_keep_float64(url: str, kind: str, binary: bool) -> None:
    x = np.array([[1.0, 2.0, 4.0]])
    t = np.array([[1.0, 2.0, 2.0]])
    with LossClient(url, binary=binary) as c:
        r = c.mse(ARRAY_LIKES[kind](x), ARRAY_LIKES[kind](t), grad=["input"])
    assert r.dtypes["value"] == "float64" and r.grads["input"].dtype == np.float64
    assert r.value == 4.0 / 3.0  # exact in float64, not in float32


@pytest.mark.parametrize("kind", ARRAY_LIKES)
@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.float16, np.bool_])
def test_array_likes_keep_their_dtype_on_the_wire(kind: str, dtype: Any) -> None:
    a = np.array([[1, 0, 1]], dtype=dtype)
    w = to_wire(ARRAY_LIKES[kind](a))
    assert not isinstance(w, list) and w.dtype == np.dtype(dtype).name and w.array.shape == (1, 3)


def test_python_numbers_follow_the_json_inference() -> None:
    cases: list[tuple[Any, str, tuple[int, ...]]] = [
        (1.5, "float32", ()),
        (2, "int64", ()),
        (True, "bool", ()),
        ([[1.0, 2.0]], "float32", (1, 2)),
        ((1, 2, 3), "int64", (3,)),
        ([1, 2.5], "float32", (2,)),
        ([np.float64(1.0), np.float64(2.0)], "float64", (2,)),  # numpy scalars keep their dtype
        (np.float64(1.0), "float64", ()),
    ]
    for value, dtype, shape in cases:
        w = to_wire(value)
        assert not isinstance(w, list) and (w.dtype, w.array.shape) == (dtype, shape), value


# -- the value with reduction "none" ------------------------------------------------------


@pytest.mark.parametrize("binary", [False, True])
def test_reduction_none_value_is_an_array_even_0d(url: str, binary: bool) -> None:
    x = np.array([[0.2, 0.8], [0.6, 0.4]], np.float32)
    y = np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    with LossClient(url, binary=binary) as c:
        none = c.dice(x, y, over="all", reduction="none")
        by_name = c.compute("dice", input=x, target=y, over="all", reduction="none")
        mean = c.dice(x, y, over="all")
        (batched,) = c.batch([Call("dice", {"input": x, "target": y}, {"over": "all", "reduction": "none"})])
    for r in (none, by_name, batched):
        assert isinstance(r, LossResult) and isinstance(r.value, np.ndarray) and r.value.shape == ()
        assert r.value.dtype == np.float32 and r.array.shape == () and r.scalar == pytest.approx(float(mean.value))
    assert isinstance(mean.value, float) and mean.scalar == mean.value and mean.array.dtype == np.float32


def test_scalar_of_an_array_value_says_why(url: str) -> None:
    with LossClient(url) as c:
        r = c.l1([1.0, -2.0], [0.0, 0.0], reduction="none")
    assert r.array.tolist() == [1.0, 2.0]
    with pytest.raises(TypeError, match="reduction='none'"):
        r.scalar  # noqa: B018


# -- params -------------------------------------------------------------------------------


def test_numpy_and_torch_params(url: str) -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.1, 0.2, 0.3]], np.float32)
    target = np.array([0, 2, -1])
    alpha = [0.2, 0.3, 0.5]
    with LossClient(url) as c:
        ref = c.focal(logits, target, gamma=1.5, alpha=alpha, ignore_index=-1)
        got = [
            c.focal(logits, target, gamma=np.float32(1.5), alpha=np.array(alpha), ignore_index=np.int64(-1)),
            c.focal(logits, target, gamma=torch.tensor(1.5), alpha=torch.tensor(alpha), ignore_index=torch.tensor(-1)),
            c.compute(
                "focal", input=logits, target=target, gamma=np.float64(1.5), alpha=np.array(alpha), ignore_index=-1
            ),
        ]
        (b,) = c.batch(
            [
                Call(
                    "focal",
                    {"input": logits, "target": target},
                    {"alpha": np.array(alpha), "gamma": 1.5, "ignore_index": np.int8(-1)},
                )
            ]
        )
        comp = c.composite(
            {"x": logits, "y": target},
            [
                Term(
                    "focal",
                    {"input": "x", "target": "y"},
                    np.float32(0.5),
                    {"alpha": torch.tensor(alpha), "gamma": np.float16(1.5), "ignore_index": -1},
                )
            ],
        )
    for r in [*got, b]:
        assert isinstance(r, LossResult) and r.value == pytest.approx(ref.value, rel=1e-6)
    assert comp.value == pytest.approx(0.5 * ref.value, rel=1e-6) and comp.terms[0].weight == 0.5


def test_params_left_out_only_at_their_default_json(url: str) -> None:
    """A param equal to its default in value and type is left to the server; ``p=True`` is not ``p=1``."""
    logits = np.array([[0.1, 0.9]], np.float32)
    with LossClient(url) as c:
        seen = sent_json(c)
        c.multi_margin(logits, [0], p=1, margin=1.0)
        c.focal(logits, [0], gamma=2, alpha=None)
        with pytest.raises(ValidationError) as e:
            c.multi_margin(logits, [0], p=True)
    assert seen[0]["params"] == {} and seen[1]["params"] == {"gamma": 2}
    assert seen[2]["params"] == {"p": True} and e.value.errors[0].loc == ("params", "p")


def test_nonfinite_term_weight_is_refused_early() -> None:
    for w in (math.inf, -math.inf, math.nan, np.float32("inf")):
        with pytest.raises(ValueError, match="weight must be finite"):
            Term("mse", {"input": "a", "target": "b"}, w)
    assert Term("mse", {"input": "a", "target": "b"}, np.float64(2.0)).weight == 2.0


# -- compute's None inputs, grad spellings, text ------------------------------------------


def test_compute_leaves_out_none_inputs(url: str) -> None:
    logits = [[2.0, 0.5, -1.0]]

    async def run() -> float:
        async with AsyncLossClient(url) as a:
            return (await a.compute("cross_entropy", input=logits, target=[0], weight=None)).scalar

    with LossClient(url) as c:
        with_none = c.compute("cross_entropy", input=logits, target=[0], weight=None)
        without = c.compute("cross_entropy", input=logits, target=[0])
        (in_batch,) = c.batch([Call("cross_entropy", {"input": logits, "target": [0], "weight": None})])
    assert with_none.value == without.value == asyncio.run(run())
    assert isinstance(in_batch, LossResult) and in_batch.value == without.value


def test_grad_as_one_name(url: str) -> None:
    x, t = [1.0, -2.0], [0.0, 0.0]

    async def run() -> LossResult:
        async with AsyncLossClient(url) as a:
            return await a.l1(x, t, grad="input")

    with LossClient(url) as c:
        one = c.l1(x, t, grad="input")
        by_name = c.compute("l1", input=x, target=t, grad="input")
        (b,) = c.batch([Call("l1", {"input": x, "target": t}, grad="input")])
        comp = c.composite({"input": x, "t": t}, [Term("l1", {"input": "input", "target": "t"})], grad="input")
    for r in (one, by_name, b, asyncio.run(run())):
        assert isinstance(r, LossResult) and set(r.grads) == {"input"} and r.grads["input"].tolist() == [0.5, -0.5]
    assert set(comp.grads) == {"input"}


@pytest.mark.parametrize("text", ["kitten", np.array(["kitten"]), ["kitten", 1.0]], ids=["str", "numpy_str", "mixed"])
def test_text_must_be_a_list_of_str(text: Any) -> None:
    with LossClient("http://127.0.0.1:9") as c, pytest.raises(TypeError, match="list of str"):
        c.edit_distance(text, ["sitting"])
