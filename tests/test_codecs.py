"""Wire codecs: every dtype through every JSON form and safetensors, limits, non-finite floats."""

from __future__ import annotations

import base64
import math

import numpy as np
import orjson
import pytest
import safetensors.torch
import torch

from lossd import codecs
from lossd.codecs import DTYPES, Limits, decode_tensor, encode_tensor, read_safetensors
from lossd.codecs import write_safetensors as write_chunks
from lossd.errors import Problem

LIMITS = Limits(max_elements=1000, max_tensors=4)
LIMITS_BIG = Limits(max_elements=10**7, max_tensors=64)


def sample(dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if dtype == torch.bool:
        return torch.rand(2, 3, generator=g) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(2, 3, generator=g) * 3).to(dtype)
    info = torch.iinfo(dtype)
    return torch.randint(max(info.min, -100), min(info.max, 100), (2, 3), generator=g, dtype=torch.int64).to(dtype)


def write_safetensors(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    return b"".join(bytes(c) for c in write_chunks(tensors, metadata))


def wire(obj: object) -> object:
    """Through real JSON bytes, as a client would send it."""
    return orjson.loads(codecs.dumps(obj))


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("b64", [False, True])
def test_object_forms_round_trip_every_dtype(name: str, b64: bool) -> None:
    t = sample(DTYPES[name])
    enc = wire(encode_tensor(t, b64=b64))
    assert isinstance(enc, dict) and enc["dtype"] == name and enc["shape"] == [2, 3]
    assert ("b64" in enc) == b64
    back = decode_tensor(enc, ("x",), LIMITS)
    assert isinstance(back, torch.Tensor)
    assert back.dtype == t.dtype and torch.equal(back, t)


@pytest.mark.parametrize("name", list(DTYPES))
@pytest.mark.parametrize("b64", [False, True])
def test_zero_dim_tensors_round_trip(name: str, b64: bool) -> None:
    """Scalars as tensor objects (a 0-d gradient, a reduction "none" value of shape [])."""
    t = sample(DTYPES[name])[0, 0].clone()
    assert t.dim() == 0
    enc = wire(encode_tensor(t, b64=b64))
    assert isinstance(enc, dict) and enc["shape"] == []
    back = decode_tensor(enc, ("x",), LIMITS)
    assert isinstance(back, torch.Tensor) and back.dtype == t.dtype and back.shape == () and torch.equal(back, t)


@pytest.mark.parametrize("name", list(DTYPES))
def test_object_form_nested_data(name: str) -> None:
    t = sample(DTYPES[name])
    data = t.float().tolist() if t.dtype == torch.bfloat16 else t.tolist()
    back = decode_tensor({"dtype": name, "shape": [2, 3], "data": data}, ("x",), LIMITS)
    assert isinstance(back, torch.Tensor) and back.dtype == t.dtype and torch.equal(back, t)


@pytest.mark.parametrize("name", list(DTYPES))
def test_safetensors_round_trip_every_dtype(name: str) -> None:
    t = sample(DTYPES[name])
    body = write_safetensors({"a": t, "scalar": torch.tensor(1.5)}, {"params": "{}"})
    # Independent check: the safetensors library reads what we wrote.
    ref = safetensors.torch.load(body)
    assert torch.equal(ref["a"], t) and ref["scalar"].shape == ()
    tensors, meta = read_safetensors(bytearray(body), LIMITS)
    assert meta == {"params": "{}"}
    assert tensors["a"].dtype == t.dtype and torch.equal(tensors["a"], t)
    assert tensors["scalar"].shape == () and float(tensors["scalar"]) == 1.5


def test_safetensors_reads_library_output_zero_copy() -> None:
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    body = bytearray(safetensors.torch.save({"x": t}))
    tensors, _ = read_safetensors(body, LIMITS)
    assert torch.equal(tensors["x"], t)
    body[-4:] = np.float32(99.0).tobytes()  # the tensor is a view over the body: no copy was made
    assert float(tensors["x"][2, 3]) == 99.0


def test_inference_rules() -> None:
    assert decode_tensor([[1, 2], [3, 4]], ("x",), LIMITS).dtype == torch.int64  # type: ignore[union-attr]
    assert decode_tensor([1, 2.5], ("x",), LIMITS).dtype == torch.float32  # type: ignore[union-attr]
    assert decode_tensor([True, False], ("x",), LIMITS).dtype == torch.bool  # type: ignore[union-attr]
    s = decode_tensor(3, ("x",), LIMITS)
    assert isinstance(s, torch.Tensor) and s.shape == () and s.dtype == torch.int64
    assert decode_tensor(["a", "b"], ("x",), LIMITS, text_ok=True) == ["a", "b"]


def test_nonfinite_both_ways() -> None:
    t = decode_tensor([1.0, "NaN", "Infinity", "-Infinity"], ("x",), LIMITS)
    assert isinstance(t, torch.Tensor)
    assert t[0] == 1.0 and math.isnan(t[1]) and t[2] == math.inf and t[3] == -math.inf
    out = codecs.dumps(encode_tensor(t))
    assert b"NaN" in out and b"null" not in out
    assert orjson.loads(out)["data"] == [1.0, "NaN", "Infinity", "-Infinity"]
    assert codecs.encode_value(torch.tensor(float("nan"))) == "NaN"
    assert codecs.encode_value(torch.tensor(float("-inf"))) == "-Infinity"


@pytest.mark.parametrize(
    "obj",
    [
        [[1, 2], [3]],  # ragged
        {"dtype": "float32", "shape": [2, 2], "data": [1, 2, 3]},  # data/shape mismatch
        {"dtype": "float99", "shape": [1], "data": [1]},
        {"dtype": "int64", "shape": [2], "data": [1.5, 2]},  # not integral
        {"dtype": "uint8", "shape": [1], "data": [300]},  # out of range
        {"dtype": "bool", "shape": [1], "data": [2]},
        {"dtype": "float32", "shape": [2], "b64": "!!notbase64"},
        {"dtype": "float32", "shape": [2], "b64": base64.b64encode(b"\x00" * 4).decode()},  # too few bytes
        {"dtype": "float32", "shape": [2], "data": [1, 2], "b64": ""},
        {"dtype": "float32", "shape": [-1], "data": []},
        {"dtype": "float32", "shape": [1], "data": ["abc"]},
        None,
        "hello",
        [1.0, None],  # null is not a number, wherever it stands
        [None, 1.0],
        [1.0, "1.5"],  # nor is a numeric string: only NaN/Infinity/-Infinity
        [1.0, " 7 "],
        [[1.0, 2.0], [3.0, "+inf"]],
        {"dtype": "float32", "shape": [2], "data": [None, 1]},
        [2**64 - 100],  # integers of 2**63 and over do not fit int64 (numpy would wrap them)
        [2**63, 5],
        2**63,
        [1e39, 1.0],  # overflows float32, the inferred dtype
        {"dtype": "float16", "shape": [1], "data": [1e6]},  # overflows the declared dtype
        {"dtype": "bfloat16", "shape": [1], "data": [3.4e38]},
        {"dtype": [], "shape": [1], "data": [1]},  # unhashable dtype
        {"dtype": {"a": 1}, "shape": [1], "b64": ""},
        {"dtype": "float32", "shape": [1, True], "data": [1.0]},
        {"dtype": "float16", "shape": [1], "data": [70000]},  # integer data overflows a float dtype too
        {"dtype": "float16", "shape": [2], "data": [[1], [1000000]]},
        [[1.0, 2.0]] * 2048 + [5.0],  # big and ragged, a number where a row belongs
        [[1.0, 2.0]] * 2048 + [None],
    ],
)
def test_malformed_tensors_are_400(obj: object) -> None:
    with pytest.raises(Problem) as e:
        decode_tensor(obj, ("inputs", "x"), LIMITS)
    assert e.value.status == 400


def test_big_arrays_with_nonfinite_strings() -> None:
    """Big arrays holding "NaN"/"Infinity" take their own path (numpy would first build an array of
    strings); the answers and the errors are those of small arrays."""
    rows = [[1.5] * 100 for _ in range(60)]
    rows[59][99] = "NaN"
    rows[0][0] = "-Infinity"
    t = decode_tensor(rows, ("x",), LIMITS_BIG)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (60, 100)
    assert math.isnan(t[59, 99]) and t[0, 0] == -math.inf and float(t[1:59].sum()) == 1.5 * 5800
    # the object form takes the same path
    obj = decode_tensor({"dtype": "float64", "shape": [60, 100], "data": rows}, ("x",), LIMITS_BIG)
    assert isinstance(obj, torch.Tensor) and obj.dtype == torch.float64 and math.isnan(obj[59, 99])
    for bad in ("1.5", None):
        rows[30][30] = bad
        with pytest.raises(Problem) as e:
            decode_tensor(rows, ("x",), LIMITS_BIG)
        assert e.value.status == 400


def test_declared_nonfinite_and_extreme_values_are_kept() -> None:
    """What the overflow checks must not refuse: non-finite floats sent as such, and the largest finite values."""
    t = decode_tensor({"dtype": "float16", "shape": [3], "data": ["NaN", "-Infinity", 65504.0]}, ("x",), LIMITS)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float16
    assert math.isnan(t[0]) and t[1] == -math.inf and t[2] == 65504.0
    t = decode_tensor([3.0e38, "Infinity"], ("x",), LIMITS)
    assert isinstance(t, torch.Tensor) and t.tolist() == [pytest.approx(3.0e38), math.inf]
    assert decode_tensor([2**63 - 1], ("x",), LIMITS).tolist() == [2**63 - 1]  # type: ignore[union-attr]


def _nested(depth: int) -> list:
    out: list = [1.0]
    for _ in range(depth - 1):
        out = [out]
    return out


def _nested_strings(depth: int) -> list:
    out: list = ["NaN"] * 4096
    for _ in range(depth - 1):
        out = [out]
    return out


@pytest.mark.parametrize(
    "obj",
    [
        {"dtype": "float32", "shape": [1] * 17, "data": [1.0]},
        {"dtype": "float32", "shape": [1] * 70, "b64": base64.b64encode(b"\x00" * 4).decode()},
        [[[[[[[[[[[[[[[[[1.0]]]]]]]]]]]]]]]]],  # 17 levels
        _nested_strings(600),  # deep around many strings: no recursion error
        _nested(100),  # deeper than numpy goes
    ],
)
def test_more_than_max_dims_is_422(obj: object) -> None:
    with pytest.raises(Problem) as e:
        decode_tensor(obj, ("inputs", "x"), LIMITS)
    assert e.value.status == 422 and "dimensions" in e.value.detail


def test_declared_shape_over_limit_is_413_before_data() -> None:
    with pytest.raises(Problem) as e:
        decode_tensor({"dtype": "float32", "shape": [10**6, 10**6], "data": []}, ("x",), LIMITS)
    assert e.value.status == 413
    with pytest.raises(Problem) as e:
        decode_tensor({"dtype": "float32", "shape": [10**12], "b64": ""}, ("x",), LIMITS)
    assert e.value.status == 413
    with pytest.raises(Problem) as e:
        decode_tensor(list(range(1001)), ("x",), LIMITS)
    assert e.value.status == 413
    # Empty, but with dimensions no kernel should be handed.
    for form in ({"data": []}, {"b64": ""}):
        with pytest.raises(Problem) as e:
            decode_tensor({"dtype": "float32", "shape": [2**40, 2**40, 0], **form}, ("x",), LIMITS)
        assert e.value.status == 413
    header = orjson.dumps({"x": {"dtype": "F32", "shape": [2**40, 0], "data_offsets": [0, 0]}})
    with pytest.raises(Problem) as e:
        read_safetensors(bytearray(len(header).to_bytes(8, "little") + header), LIMITS)
    assert e.value.status == 413
    assert decode_tensor({"dtype": "float32", "shape": [1000, 0], "data": []}, ("x",), LIMITS).shape == (1000, 0)  # type: ignore[union-attr]


def test_safetensors_header_limits_and_garbage() -> None:
    header = orjson.dumps({"x": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]}})
    body = bytearray(len(header).to_bytes(8, "little") + header + b"\x00" * 4)
    with pytest.raises(Problem) as e:
        read_safetensors(body, LIMITS)
    assert e.value.status == 413
    for bad in (b"", b"\xff" * 16, (5).to_bytes(8, "little") + b"notjs"):
        with pytest.raises(Problem) as e:
            read_safetensors(bytearray(bad), LIMITS)
        assert e.value.status == 400
    many = write_safetensors({f"t{i}": torch.zeros(1) for i in range(5)}, {})
    with pytest.raises(Problem) as e:
        read_safetensors(bytearray(many), LIMITS)
    assert e.value.status == 413
    # Not the format: data that overlap, leave a gap or stop before the end; dtypes that are not names.
    for entries, data in [
        ({"a": ("F32", [2], [0, 8]), "b": ("F32", [2], [0, 8])}, 8),  # overlap
        ({"a": ("F32", [1], [0, 4]), "b": ("F32", [1], [8, 12])}, 12),  # gap
        ({"a": ("F32", [1], [0, 4])}, 8),  # trailing bytes
        ({"a": ("F32", [2], [0, 8.0])}, 8),  # offsets must be integers
        ({"a": (["F32"], [2], [0, 8])}, 8),
        ({"a": ({}, [2], [0, 8])}, 8),
    ]:
        header = orjson.dumps({k: {"dtype": d, "shape": s, "data_offsets": o} for k, (d, s, o) in entries.items()})
        with pytest.raises(Problem) as e:
            read_safetensors(bytearray(len(header).to_bytes(8, "little") + header + b"\x00" * data), LIMITS)
        assert e.value.status == 400, entries
    # Offsets past the end of the body.
    header = orjson.dumps({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})
    with pytest.raises(Problem) as e:
        read_safetensors(bytearray(len(header).to_bytes(8, "little") + header + b"\x00" * 8), LIMITS)
    assert e.value.status == 400


# ---------------------------------------------------------------------------
# loads_large: big numeric arrays straight into numpy, everything else as loads


def both_ways(doc: object) -> tuple[object, object]:
    body = memoryview(codecs.dumps(doc))
    return codecs.loads(body), codecs.loads_large(body)


def test_loads_large_matches_loads_on_tensors() -> None:
    g = np.random.default_rng(0)
    floats = g.standard_normal((70, 90)).astype(np.float32)
    ints = g.integers(-5, 5, size=(3, 40, 50))
    doc = {
        "inputs": {
            "input": floats,
            "target": ints,
            "mixed": [[1, 2.5] * 2500],  # ints and floats: float32 by inference
            "small": [1.0, 2.0],
            "obj": {"dtype": "float64", "shape": [80, 60], "data": g.standard_normal(4800)},
            "text": ["a[b", "c"] * 3000,
        },
        "params": {"alpha": list(range(5000))},
        "grad": ["input"],
    }
    plain, fast = both_ways(doc)
    assert isinstance(fast, dict) and isinstance(plain, dict)
    assert isinstance(fast["inputs"]["input"], np.ndarray) and fast["inputs"]["input"].shape == (70, 90)
    assert fast["params"] == plain["params"] and isinstance(fast["params"]["alpha"], list)
    assert fast["inputs"]["text"] == plain["inputs"]["text"]
    for name in ("input", "target", "mixed", "small", "obj"):
        a = decode_tensor(plain["inputs"][name], ("x",), LIMITS_BIG)
        b = decode_tensor(fast["inputs"][name], ("x",), LIMITS_BIG)
        assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert decode_tensor(fast["inputs"]["target"], ("x",), LIMITS_BIG).dtype == torch.int64  # type: ignore[union-attr]
    assert decode_tensor(fast["inputs"]["mixed"], ("x",), LIMITS_BIG).dtype == torch.float32  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "tensor",
    [
        [[1.5] * 3000, [2.5] * 2999],  # ragged
        [[1.5] * 3000, [*([2.5] * 2999), [3.0]]],  # an array where a number belongs (simdjson would flatten it)
        [[1.5] * 3000, [2.5] * 2999 + [3.0], [5.0]],  # ragged in the last row
        [1.5] * 5000 + ["NaN"],  # strings: the general path reads them
        [True] * 5000,  # booleans
    ],
)
def test_loads_large_falls_back_to_the_general_path(tensor: list) -> None:
    plain, fast = both_ways({"inputs": {"x": tensor}})
    assert fast == plain  # the fallback is loads itself
    assert isinstance(fast, dict) and isinstance(fast["inputs"]["x"], list)


def test_loads_large_sees_arrays_hidden_by_escaped_brackets() -> None:
    """The structure check counts "[": a "\\u005b" in a string must not cancel out a hidden array."""
    xs: list = [1.5] * 5000
    xs[1] = [2.0]
    body = memoryview(b'{"loss":"\\u005b","inputs":{"x":' + codecs.dumps(xs) + b"}}")
    fast = codecs.loads_large(body)
    assert isinstance(fast, dict) and isinstance(fast["inputs"]["x"], list)  # fell back
    with pytest.raises(Problem) as e:
        decode_tensor(fast["inputs"]["x"], ("x",), LIMITS_BIG)
    assert e.value.status == 400
    xs[1] = 2.0  # and an escaped bracket alone does not stop the fast path
    fast = codecs.loads_large(memoryview(b'{"loss":"\\u005B[","inputs":{"x":' + codecs.dumps(xs) + b"}}"))
    assert isinstance(fast, dict) and fast["loss"] == "[[" and isinstance(fast["inputs"]["x"], np.ndarray)


def test_loads_large_keeps_the_dtype_checks() -> None:
    """The fast path's arrays meet the same checks: float32 overflow, integers past int64."""
    floats = [1.5] * 5000
    floats[7] = 1e39
    ints = [3] * 5000
    ints[9] = 2**63 + 5
    for data in (floats, ints):
        doc = codecs.loads_large(memoryview(codecs.dumps({"inputs": {"x": data}})))
        assert isinstance(doc, dict)
        with pytest.raises(Problem) as e:
            decode_tensor(doc["inputs"]["x"], ("x",), LIMITS_BIG)
        assert e.value.status == 400


def test_loads_large_keeps_the_dimension_limit() -> None:
    """A big array nested past MAX_DIMS comes back from the fast path as an ndarray: still a 422."""
    data: list = [1.5] * 5000
    for _ in range(20):
        data = [data]
    doc = codecs.loads_large(memoryview(codecs.dumps({"inputs": {"x": data}})))
    assert isinstance(doc, dict) and isinstance(doc["inputs"]["x"], np.ndarray)
    with pytest.raises(Problem) as e:
        decode_tensor(doc["inputs"]["x"], ("x",), LIMITS_BIG)
    assert e.value.status == 422


def test_loads_large_leaves_declared_shapes_as_lists() -> None:
    """Only a tensor object's "data" is numeric: a long "shape" stays a list, so the answer (422, too many
    dimensions) is the one a small body gets."""
    doc_in = {"inputs": {"x": {"dtype": "float32", "shape": [1] * 5000, "data": [1.0]}, "pad": "-" * (1 << 20)}}
    fast = codecs.loads_large(memoryview(codecs.dumps(doc_in)))
    assert isinstance(fast, dict) and fast["inputs"]["x"]["shape"] == [1] * 5000
    for doc in (fast, codecs.loads(memoryview(codecs.dumps(doc_in)))):
        with pytest.raises(Problem) as e:
            decode_tensor(doc["inputs"]["x"], ("x",), LIMITS_BIG)  # type: ignore[index]
        assert e.value.status == 422
    # ...while its data still takes the fast path
    big = {"inputs": {"x": {"dtype": "float64", "shape": [5000], "data": [0.5] * 5000}}}
    fast = codecs.loads_large(memoryview(codecs.dumps(big) + b" " * (1 << 20)))
    assert isinstance(fast, dict) and isinstance(fast["inputs"]["x"]["data"], np.ndarray)


def test_integer_literals_and_declared_dtypes() -> None:
    """A declared float dtype takes integer literals of any size (JavaScript prints 1e19 as an integer);
    a declared int64 refuses the float 2**63, which a float64 comparison with its maximum would let wrap."""
    t = decode_tensor({"dtype": "float32", "shape": [1], "data": [10**19]}, ("x",), LIMITS)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and float(t) == pytest.approx(1e19)
    for data in ([2.0**63], [-(2.0**63) - 4096]):
        with pytest.raises(Problem) as e:
            decode_tensor({"dtype": "int64", "shape": [1], "data": data}, ("x",), LIMITS)
        assert e.value.status == 400
    low = decode_tensor({"dtype": "int64", "shape": [1], "data": [-(2.0**63)]}, ("x",), LIMITS)
    high = decode_tensor({"dtype": "int64", "shape": [1], "data": [2**63 - 1]}, ("x",), LIMITS)
    assert low.tolist() == [-(2**63)] and high.tolist() == [2**63 - 1]  # type: ignore[union-attr]


def test_loads_large_invalid_json_is_400() -> None:
    with pytest.raises(Problem) as e:
        codecs.loads_large(memoryview(b'{"inputs": {"x": [1.0, 2.0' + b", 3.0" * 5000))
    assert e.value.status == 400


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_a_non_finite_element_does_not_change_how_the_others_print(dtype: torch.dtype) -> None:
    """Finite numbers print as the shortest decimal of their dtype whether or not the tensor holds a NaN
    or an infinity (those go as strings), so a client sees one format."""
    import orjson

    finite = torch.tensor([0.1, 0.2, 0.3], dtype=dtype)
    mixed = torch.tensor([0.1, float("nan"), 0.2, float("inf"), -float("inf"), 0.3], dtype=dtype)
    plain = orjson.loads(codecs.dumps(codecs.encode_tensor(finite)))["data"]
    raw = codecs.dumps(codecs.encode_tensor(mixed))
    out = orjson.loads(raw)["data"]
    assert out == [plain[0], "NaN", plain[1], "Infinity", "-Infinity", plain[2]]
    assert codecs.dumps(plain[0]) in raw  # the same digits, not the double's
