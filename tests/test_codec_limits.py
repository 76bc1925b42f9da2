"""Wire codecs at their edges: size limits decided before data is allocated and before any tensor's data
is judged, huge declared dimensions, duplicated JSON keys on both parsers, bool bytes, error messages."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from serverutil import Server

from lossd import codecs
from lossd.codecs import Limits, decode_tensor, decode_tensors, read_safetensors
from lossd.errors import Problem

SMALL = Limits(max_elements=100, max_tensors=8)
BIG = Limits(max_elements=10**7, max_tensors=64)


def status(fn: Callable[[], object]) -> int:
    try:
        fn()
    except Problem as p:
        return p.status
    return 200


def problem(fn: Callable[[], object]) -> Problem:
    with pytest.raises(Problem) as e:
        fn()
    return e.value


def peak_bytes(fn: Callable[[], object]) -> tuple[int, int]:
    """(status, bytes allocated at the peak while ``fn`` ran, beyond what was held before)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        code = status(fn)
        return code, tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def fill(template: str, *parts: str) -> str:
    """JSON text with each "@" replaced by the next part (no %-formatting around JSON's braces)."""
    for part in parts:
        template = template.replace("@", part, 1)
    return template


def st_body(entries: dict[str, tuple[Any, Any, Any]], data: bytes) -> bytearray:
    """A safetensors body written by hand (entries in the given order, anything in them)."""
    header = orjson.dumps({k: {"dtype": d, "shape": s, "data_offsets": o} for k, (d, s, o) in entries.items()})
    return bytearray(len(header).to_bytes(8, "little") + header + data)


# ---------------------------------------------------------------------------
# 1. An inferred array over the limit is a 413 before numpy builds it


@pytest.mark.parametrize(
    "make",
    [
        lambda: [0.5] * 2_000_000,  # the float fast path
        lambda: [3] * 2_000_000,  # integers: the general path
        lambda: [True] * 2_000_000,
        lambda: [[0.5] * 1000] * 2000,
        lambda: [[[0.25] * 10] * 100] * 2000,
        lambda: [0.5] * 1_999_999 + ["NaN"],  # would be copied with "NaN" replaced first
    ],
)
def test_inferred_array_over_the_limit_is_413_before_allocation(make: Callable[[], list]) -> None:
    data = make()
    code, peak = peak_bytes(lambda: decode_tensor(data, ("x",), SMALL))
    assert code == 413 and peak < 100_000, (code, peak)  # 16 MB as float64 had it been built
    code, peak = peak_bytes(lambda: decode_tensors({"a": [1.0], "x": data}, ("inputs",), SMALL))
    assert code == 413 and peak < 100_000, (code, peak)


def test_inferred_arrays_at_the_limit_and_ragged_ones() -> None:
    assert decode_tensor([[0.5] * 10] * 10, ("x",), SMALL).shape == (10, 10)  # type: ignore[union-attr]
    assert status(lambda: decode_tensor([[0.5] * 10] * 10 + [[0.5] * 10], ("x",), SMALL)) == 413
    # Ragged arrays stay 400 whether their first row alone is over the limit or not, and are not built either.
    for ragged in (
        [[0.5] * 2_000_000, [1.0]],
        [[0.5] * 60, [1.0]],
        [[0.5] * 60, 5.0, 5.0],
        [[1.0, 2.0]] * 100 + [None],
    ):
        code, peak = peak_bytes(lambda r=ragged: decode_tensor(r, ("x",), SMALL))
        assert code == 400 and peak < 100_000, (code, peak)
    assert "rectangular" in problem(lambda: decode_tensor([[0.5] * 2000, [1.0]], ("x",), SMALL)).detail


def test_object_form_data_far_larger_than_its_shape_is_400_without_allocation() -> None:
    data = [0.5] * 2_000_000
    code, peak = peak_bytes(lambda: decode_tensor({"dtype": "float32", "shape": [4], "data": data}, ("x",), SMALL))
    assert code == 400 and peak < 100_000, (code, peak)
    # ...and a declared shape over the limit is a 413 whatever the data, as before
    code, peak = peak_bytes(lambda: decode_tensor({"dtype": "float32", "shape": [200], "data": data}, ("x",), SMALL))
    assert code == 413 and peak < 100_000, (code, peak)
    # small mismatches keep their message
    p = problem(lambda: decode_tensor({"dtype": "float32", "shape": [2, 2], "data": [1, 2, 3, 4, 5]}, ("x",), SMALL))
    assert p.status == 400 and "5 elements" in p.detail


# ---------------------------------------------------------------------------
# 2. Duplicated keys: the last value wins on both parsers


def as_lists(x: Any) -> Any:
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, dict):
        return {k: as_lists(v) for k, v in x.items()}
    if isinstance(x, list):
        return [as_lists(v) for v in x]
    return x


BIG_A = "[" + ",".join(["0.5"] * 5000) + "]"
BIG_B = "[" + ",".join(["1.5"] * 5000) + "]"


@pytest.mark.parametrize(
    "doc",
    [
        fill('{"inputs": {"input": @, "target": @}, "grad": false, "grad": true}', BIG_A, BIG_B),
        fill('{"inputs": {"input": @, "input": @, "target": [1.0]}}', BIG_A, BIG_B),  # a duplicated tensor
        fill('{"inputs": {"input": @}, "params": {"reduction": "sum", "reduction": "mean"}}', BIG_A),
        fill('{"inputs": {"input": {"dtype": "float32", "dtype": "float64", "shape": [5000], "data": @}}}', BIG_A),
        fill('{"inputs": {"input": {"dtype": "float64", "shape": [5000], "data": @, "data": @}}}', BIG_A, BIG_B),
        fill('{"calls": [{"loss": "mse", "loss": "l1", "inputs": {"x": @}}]}', BIG_A),  # inside a batch's call
        fill('{"inputs": {"x": @}, "params": {"w": [1, {"a": 1, "a": 2}]}}', BIG_A),  # in an object inside an array
        fill('{"inputs": {"x": @}, "inputs": {"y": @}}', BIG_A, BIG_B),
    ],
)
def test_duplicated_keys_same_on_both_parsers(doc: str) -> None:
    body = memoryview(doc.encode() + b" " * (codecs.LARGE_BODY + 1))
    plain, fast = codecs.loads(body), codecs.loads_large(body)
    assert as_lists(fast) == plain == json.loads(doc)  # the last value wins, as in Python's json


def test_loads_large_still_takes_its_fast_path_without_duplicates() -> None:
    doc = fill('{"inputs": {"input": @, "target": @}, "params": {"reduction": "sum"}}', BIG_A, BIG_B)
    fast = codecs.loads_large(memoryview(doc.encode()))
    assert isinstance(fast, dict) and isinstance(fast["inputs"]["input"], np.ndarray)


# ---------------------------------------------------------------------------
# 3. Declared dimensions of 2**64 and more (which JSON parsers read as floats) are 413


@pytest.mark.parametrize("dim", ["9223372036854775808", "18446744073709551616", "1180591620717411303424", "1e300"])
@pytest.mark.parametrize("form", ['"data": []', '"b64": ""', '"data": [1.0, "x"]'])
def test_huge_declared_dimensions_are_413(dim: str, form: str) -> None:
    raw = fill('{"dtype": "float32", "shape": [@, 0], @}', dim, form)
    for obj in (
        orjson.loads(raw),
        codecs.loads_large(memoryview(fill('{"inputs": {"x": @}}', raw).encode()))["inputs"]["x"],
    ):
        assert status(lambda o=obj: decode_tensor(o, ("x",), BIG)) == 413
    header = fill('{"x": {"dtype": "F32", "shape": [@], "data_offsets": [0, 4]}}', dim).encode()
    body = bytearray(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    assert status(lambda: read_safetensors(body, BIG)) == 413


def test_huge_dimension_messages_and_what_stays_400() -> None:
    p = problem(lambda: decode_tensor(orjson.loads('{"dtype":"float32","shape":[1e300],"data":[]}'), ("x",), BIG))
    assert p.status == 413 and "2^996" in p.detail
    sixteen = orjson.loads(fill('{"dtype":"float32","shape":[@],"data":[]}', ",".join(["1e300"] * 16)))
    assert status(lambda: decode_tensor(sixteen, ("x",), BIG)) == 413  # no 4300-digit count in the message
    seventeen = orjson.loads(fill('{"dtype":"float32","shape":[@],"data":[]}', ",".join(["1e300"] * 17)))
    assert status(lambda: decode_tensor(seventeen, ("x",), BIG)) == 422  # as for integer dimensions
    for shape in ("[-18446744073709551616]", "[2.0]", "[1e3]", "[true]", "[1.5e19]", "[-1]", '["1e30"]'):
        obj = orjson.loads(fill('{"dtype":"float32","shape":@,"data":[]}', shape))
        assert status(lambda o=obj: decode_tensor(o, ("x",), BIG)) == 400, shape


# ---------------------------------------------------------------------------
# 4. Overflow messages name the declared dtype


@pytest.mark.parametrize(
    ("dtype", "data"),
    [("bfloat16", [1e39]), ("bfloat16", [3.4e38]), ("float16", [1e39]), ("float16", [70000]), ("bfloat16", [-1e39])],
)
def test_overflow_names_the_declared_dtype(dtype: str, data: list) -> None:
    p = problem(lambda: decode_tensor({"dtype": dtype, "shape": [1], "data": data}, ("x",), SMALL))
    assert p.status == 400 and p.detail.endswith(f"out of range for dtype {dtype}"), p.detail
    assert problem(lambda: decode_tensor([1e39], ("x",), SMALL)).detail.endswith("dtype float32")


# ---------------------------------------------------------------------------
# 5. Text inputs that mix strings and numbers say so


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (["a", 1], "mixes strings and numbers (item 1 is a number)"),
        ([1, "a"], "mixes strings and numbers (item 0 is a number)"),
        (["a", 2.5, "b"], "mixes strings and numbers"),
        (["a", None], "mixes strings and other values (item 1 is null)"),
        (["a", ["b"]], "mixes strings and other values (item 1 is an array)"),
    ],
)
def test_text_mixed_with_numbers(data: list, says: str) -> None:
    p = problem(lambda: decode_tensors({"hypothesis": data}, ("inputs",), SMALL, frozenset({"hypothesis"})))
    assert p.status == 400 and says in p.detail and p.errors and p.errors[0]["loc"] == ["inputs", "hypothesis"]


def test_text_inputs_still_take_strings_and_token_tensors() -> None:
    text = frozenset({"t"})
    assert decode_tensors({"t": ["a", "NaN"]}, ("inputs",), SMALL, text) == {"t": ["a", "NaN"]}
    assert decode_tensors({"t": []}, ("inputs",), SMALL, text) == {"t": []}
    tokens = decode_tensors({"t": [[1, 2], [3, 4]]}, ("inputs",), SMALL, text)["t"]
    assert isinstance(tokens, torch.Tensor) and tokens.dtype == torch.int64
    nan = decode_tensors({"t": [1.0, "NaN"]}, ("inputs",), SMALL, text)["t"]  # numbers, spelled as JSON must
    assert isinstance(nan, torch.Tensor) and nan.dtype == torch.float32
    # where text is not allowed, a string is what is wrong
    assert "unexpected string 'a'" in problem(lambda: decode_tensor(["a", 1], ("x",), SMALL)).detail


# ---------------------------------------------------------------------------
# 6. Bool tensors sent as bytes hold 0 or 1


@pytest.mark.parametrize("raw", [b"\x05", b"\x00\x01\x02", b"\xff", b"\x01" * 63 + b"\x80"])
def test_bool_bytes_other_than_0_and_1_are_400(raw: bytes) -> None:
    b64 = {"dtype": "bool", "shape": [len(raw)], "b64": base64.b64encode(raw).decode()}
    p = problem(lambda: decode_tensor(b64, ("x",), SMALL))
    assert p.status == 400 and "boolean" in p.detail
    assert (
        status(lambda: decode_tensor({"dtype": "bool", "shape": [len(raw)], "data": list(raw)}, ("x",), SMALL)) == 400
    )
    body = st_body({"pad": ("F32", [1], [0, 4]), "m": ("BOOL", [len(raw)], [4, 4 + len(raw)])}, b"\x00" * 4 + raw)
    p = problem(lambda: read_safetensors(body, SMALL))
    assert p.status == 400 and p.errors and p.errors[0]["loc"] == ["inputs", "m"]


def test_bool_bytes_0_and_1_are_read() -> None:
    raw = b"\x00\x01\x01\x00"
    t = decode_tensor({"dtype": "bool", "shape": [2, 2], "b64": base64.b64encode(raw).decode()}, ("x",), SMALL)
    assert isinstance(t, torch.Tensor) and t.tolist() == [[False, True], [True, False]]
    tensors, _ = read_safetensors(st_body({"m": ("BOOL", [4], [0, 4]), "e": ("BOOL", [0], [4, 4])}, raw), SMALL)
    assert tensors["m"].tolist() == [False, True, True, False] and tensors["e"].shape == (0,)


# ---------------------------------------------------------------------------
# 7. A tensor over the limits is a 413 whatever the key order and the other tensors' data

BAD = {  # each a problem of its own data or form, never of its size
    "mismatch": {"dtype": "float32", "shape": [3], "data": [1.0, 2.0]},
    "ragged": [[1.0], [2.0, 3.0]],
    "bad b64": {"dtype": "float32", "shape": [2], "b64": "!!"},
    "bool bytes": {"dtype": "bool", "shape": [1], "b64": "BQ=="},
    "unknown dtype": {"dtype": "float99", "shape": [1], "data": [1.0]},
    "null": None,
    "string": [1.0, "x"],
    "deep": {"dtype": "float32", "shape": [1] * 17, "data": [1.0]},  # 422
    "deep list": [[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]],  # 422
}
HUGE = {  # each over the limit of 100 elements
    "declared": {"dtype": "float32", "shape": [10**6], "data": [1.0]},
    "declared b64": {"dtype": "float32", "shape": [10, 11], "b64": ""},
    "declared 2**64": orjson.loads('{"dtype": "float32", "shape": [18446744073709551616], "data": []}'),
    "declared empty": {"dtype": "float32", "shape": [2**40, 0], "data": []},
    "inferred": [[0.5] * 20] * 20,
    "from loads_large": np.zeros((20, 20)),
}


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("huge", list(HUGE))
def test_size_limits_come_before_other_tensors_data(bad: str, huge: str) -> None:
    for inputs in ({"b": BAD[bad], "h": HUGE[huge]}, {"h": HUGE[huge], "b": BAD[bad]}):
        p = problem(lambda i=inputs: decode_tensors(i, ("inputs",), SMALL))
        assert p.status == 413 and p.errors and p.errors[0]["loc"] == ["inputs", "h"], (list(inputs), p.detail)
    # and with a good tensor between them
    p = problem(lambda: decode_tensors({"b": BAD[bad], "ok": [1.0], "h": HUGE[huge]}, ("inputs",), SMALL))
    assert p.status == 413


def test_without_a_tensor_over_the_limits_the_first_problem_stands() -> None:
    p = problem(lambda: decode_tensors({"a": BAD["mismatch"], "b": BAD["deep"], "c": [1.0]}, ("inputs",), SMALL))
    assert p.status == 400 and p.errors and p.errors[0]["loc"] == ["inputs", "a"]
    p = problem(lambda: decode_tensors({"b": BAD["deep"], "a": BAD["mismatch"]}, ("inputs",), SMALL))
    assert p.status == 422
    # text may be long (its bound is the loss's own); a list of strings is not a tensor over the limit
    p = problem(lambda: decode_tensors({"a": BAD["null"], "t": ["w"] * 500}, ("inputs",), SMALL, frozenset({"t"})))
    assert p.status == 400
    # numbers in a text input ("NaN" included) are a tensor like any other
    numbers = [0.5] * 200 + ["NaN"]
    p = problem(lambda: decode_tensors({"a": BAD["null"], "t": numbers}, ("inputs",), SMALL, frozenset({"t"})))
    assert p.status == 413 and p.errors and p.errors[0]["loc"] == ["inputs", "t"]
    # two over the limit: the first in key order
    p = problem(lambda: decode_tensors({"x": HUGE["inferred"], "y": HUGE["declared"]}, ("inputs",), SMALL))
    assert p.errors and p.errors[0]["loc"] == ["inputs", "x"]


@pytest.mark.parametrize(
    "bad",
    [
        ("F32", [2], [0, 4]),  # offsets that do not match the shape
        ("F99", [1], [0, 4]),  # unknown dtype
        ("F32", [-1], [0, 4]),  # bad shape
        ("F32", [1], [0]),  # bad offsets
        ("F32", [1] * 17, [0, 4]),  # 422
    ],
)
def test_safetensors_size_limits_come_first(bad: tuple) -> None:
    huge = ("F32", [10**6], [4, 8])
    for entries in ({"b": bad, "h": huge}, {"h": huge, "b": bad}):
        p = problem(lambda e=entries: read_safetensors(st_body(e, b"\x00" * 8), SMALL))
        assert p.status == 413 and p.errors and p.errors[0]["loc"] == ["inputs", "h"], (list(entries), p.detail)
    # bool bytes are data too
    entries = {"b": ("BOOL", [4], [0, 4]), "h": ("F32", [2**64 - 1], [4, 8])}
    assert status(lambda: read_safetensors(st_body(entries, b"\x05" * 8), SMALL)) == 413


# ---------------------------------------------------------------------------
# Over HTTP (the default limits: 64 Mi elements per tensor)


def post(server: Server, path: str, **kw: Any) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kw)


def test_http_size_limit_before_data_whatever_the_order(server: Server) -> None:
    bad = {"dtype": "float32", "shape": [3], "data": [1.0]}
    huge = {"dtype": "float32", "shape": [2**20, 2**20], "data": []}
    for inputs in ({"input": bad, "target": huge}, {"target": huge, "input": bad}):
        r = post(server, "/v1/losses/mse", json={"inputs": inputs})
        assert r.status_code == 413, r.text
        assert r.json()["errors"][0]["loc"] == ["inputs", "target"]
    r = post(
        server,
        "/v1/losses/mse",
        content=b'{"inputs": {"input": [1.0], "target": {"dtype": "float32", "shape": [18446744073709551616], "data": []}}}',
    )
    assert r.status_code == 413, r.text
    # safetensors: an entry with bad offsets before one over the limit
    header = orjson.dumps(
        {
            "input": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]},
            "target": {"dtype": "F32", "shape": [2**40], "data_offsets": [4, 8]},
        }
    )
    body = len(header).to_bytes(8, "little") + header + b"\x00" * 8
    r = post(server, "/v1/losses/mse", content=body, headers={"content-type": "application/x-safetensors"})
    assert r.status_code == 413, r.text


def test_http_bool_bytes_and_mixed_text(server: Server) -> None:
    bad = {"inputs": {"input": {"dtype": "bool", "shape": [1], "b64": "BQ=="}, "target": [1.0]}}
    r = post(server, "/v1/losses/mse", json=bad)
    assert r.status_code == 400 and "boolean" in r.json()["detail"], r.text
    r = post(server, "/v1/losses/edit_distance", json={"inputs": {"hypothesis": ["a", 1], "truth": ["a", "b"]}})
    assert r.status_code == 400 and "mixes strings and numbers" in r.json()["detail"], r.text


def test_http_large_body_with_a_duplicated_key_answers_as_a_small_one(server: Server) -> None:
    g = np.random.default_rng(0)
    first, last = g.standard_normal(60_000).tolist(), g.standard_normal(60_000).tolist()
    target = g.standard_normal(60_000).tolist()
    body = (
        b'{"inputs": {"input": %s, "target": %s, "input": %s}, "params": {"reduction": "sum", "reduction": "mean"}}'
        % (orjson.dumps(first), orjson.dumps(target), orjson.dumps(last))
    )
    assert len(body) > codecs.LARGE_BODY
    r = post(server, "/v1/losses/mse", content=body)
    ref = post(
        server, "/v1/losses/mse", json={"inputs": {"input": last, "target": target}, "params": {"reduction": "mean"}}
    )
    assert r.status_code == ref.status_code == 200, r.text
    assert r.json()["value"] == ref.json()["value"]
