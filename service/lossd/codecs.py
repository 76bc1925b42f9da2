"""Wire codecs: tensors in JSON (every form of api.md) and safetensors bodies, both ways.

Limits are enforced here, before data is allocated: a declared shape whose element count is
over the limit is a 413 whatever its data.
"""

from __future__ import annotations

import base64
import binascii
import functools
import itertools
import math
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import simdjson
import torch

from lossd.errors import Problem

DTYPES: dict[str, torch.dtype] = {
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}
# numpy has no bfloat16: its JSON data travels through float32.
NP_DTYPES: dict[str, Any] = {k: np.dtype(k) for k in DTYPES if k != "bfloat16"} | {"bfloat16": np.dtype("float32")}

# safetensors header dtype codes.
ST_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}

NONFINITE_IN = {
    "NaN": math.nan,
    "Infinity": math.inf,
    "-Infinity": -math.inf,
    "nan": math.nan,
    "inf": math.inf,
    "-inf": -math.inf,
}

ST_CODES: dict[torch.dtype, str] = {v: k for k, v in ST_DTYPES.items()}

# _to_float finds overflowing casts itself (np.errstate around every cast would cost a microsecond).
# Likewise one reduction over +inf and -inf (both sent as such) is NaN, which is all that is asked of it.
warnings.filterwarnings("ignore", "overflow encountered in cast", RuntimeWarning, r"lossd\.codecs")
warnings.filterwarnings("ignore", "invalid value encountered in reduce", RuntimeWarning, r"lossd\.codecs")

# No loss takes more; numpy stops at 64 and some torch kernels at 25.
MAX_DIMS = 16

JSONTensor = torch.Tensor | list[str]


@dataclass(frozen=True)
class Limits:
    max_elements: int
    max_tensors: int


def _where(loc: Sequence[str | int]) -> str:
    return ".".join(str(p) for p in loc)


def _bad(loc: Sequence[str | int], msg: str) -> Problem:
    return Problem(400, f"{_where(loc)}: {msg}", errors=[{"loc": list(loc), "msg": msg}])


def _too_large(loc: Sequence[str | int], n: int, limits: Limits) -> Problem:
    # Past 2**64 a power of two: str() of a declared (1e300,) * 16 would be refused (4300 digits at most).
    count = str(n) if n < 2**64 else f"at least 2^{n.bit_length() - 1}"
    msg = f"{count} elements is over the limit of {limits.max_elements} per tensor"
    return Problem(413, f"{_where(loc)}: {msg}", errors=[{"loc": list(loc), "msg": msg}])


def _too_many_dims(loc: Sequence[str | int], ndim: int) -> Problem:
    msg = f"{ndim} dimensions is over the limit of {MAX_DIMS}"
    return Problem(422, f"{_where(loc)}: {msg}", errors=[{"loc": list(loc), "msg": msg}])


# JSON parsers (orjson, simdjson) read integer literals of 2**64 and over as floats.
HUGE_INT = 2.0**64


def _numel(shape: Any, loc: Sequence[str | int], limits: Limits) -> int:
    """The element count of a declared shape; 413 when it, or any dimension, is over the limit
    (a (2**40, 2**40, 0) tensor holds nothing, but no kernel should see such sizes)."""
    if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
        huge = isinstance(shape, list) and all(
            (type(s) is int and s >= 0) or (type(s) is float and HUGE_INT <= s < math.inf) for s in shape
        )
        if not huge:
            raise _bad(loc, "shape must be a list of non-negative integers")
        # A dimension of 2**64 or more (read as a float; every such float is an integer): over any limit.
        if len(shape) > MAX_DIMS:
            raise _too_many_dims(loc, len(shape))
        raise _too_large(loc, math.prod(max(int(s), 1) for s in shape), limits)
    if len(shape) > MAX_DIMS:
        raise _too_many_dims(loc, len(shape))
    extent = math.prod(max(s, 1) for s in shape)
    if extent > limits.max_elements:
        raise _too_large(loc, extent, limits)
    return math.prod(shape)


def _to_float(arr: np.ndarray, target: Any, loc: Sequence[str | int], name: str | None = None) -> np.ndarray:
    """An array cast to a float dtype; 400 where a finite value overflows to infinity (1e39 as
    float32, 70000 as float16). ``name``: the declared dtype, when it is not ``target`` (bfloat16,
    which travels through float32)."""
    out = arr.astype(target)  # numpy's overflow warning is silenced at the top of this module
    # One float64 sum tells whether anything is infinite (or NaN); only then look closer.
    if not math.isfinite(np.add.reduce(out, dtype=np.float64, axis=None)) and bool(
        np.any(np.isinf(out) & np.isfinite(arr))
    ):
        raise _bad(loc, f"data out of range for dtype {name or np.dtype(target).name}")
    return out


def _replace_nonfinite(obj: Any, loc: Sequence[str | int]) -> Any:
    """Nested lists with "NaN"/"Infinity"/"-Infinity" strings -> floats (slow path, rare)."""
    if isinstance(obj, list):
        # One comprehension per innermost list, not a call per number.
        return [
            _nonfinite(x, loc) if type(x) is str else _replace_nonfinite(x, loc) if type(x) is list else x for x in obj
        ]
    if isinstance(obj, str):
        return _nonfinite(obj, loc)
    return obj


def _nonfinite(s: str, loc: Sequence[str | int]) -> float:
    try:
        return NONFINITE_IN[s]
    except KeyError:
        raise _bad(loc, f"unexpected string {s[:20]!r} in numeric data") from None


def _checked_list(obj: list[Any], loc: Sequence[str | int], limits: Limits | None) -> tuple[list[Any], Any, int]:
    """A nested list checked to be no deeper than MAX_DIMS (else 422), not to hold more than
    ``limits`` allows (else 413, before anything is allocated; None: the caller checks the count)
    and, if it is big, with "NaN" and "Infinity" already replaced: numpy's inference would otherwise
    build an array of strings (128 bytes per number) first. Also its first leaf (the first number,
    for the float fast path) and its element count as read off its first elements."""
    size, depth, leaf = _size_hint(obj)
    if depth > MAX_DIMS:
        raise _too_many_dims(loc, depth)
    if limits is not None and size > limits.max_elements:
        if _rectangular_rows(obj):
            raise _too_large(loc, size, limits)
        raise _bad(loc, "data is not a rectangular array of numbers")  # as numpy would say, after a copy
    if size >= LARGE_ARRAY and _has_strings(obj):
        replaced: list[Any] = _replace_nonfinite(obj, loc)
        return replaced, _size_hint(replaced)[2], size
    return obj, leaf, size


def _to_numpy(data: Any, loc: Sequence[str | int], int64: bool = True, checked: bool = False) -> np.ndarray:
    """Numbers, booleans or rectangular nested lists -> ndarray with numpy's inferred dtype.

    ``int64``: integer data must fit int64, its inferred dtype (not so where a float dtype is declared).
    ``checked``: the list has been through :func:`_checked_list` already.
    """
    if isinstance(data, list) and not checked:
        data, _, _ = _checked_list(data, loc, None)
    try:
        arr = np.asarray(data)
    except (ValueError, OverflowError):
        raise _bad(loc, "data is not a rectangular array of numbers") from None
    if arr.dtype.kind in "US":
        arr = _to_numpy(_replace_nonfinite(data, loc), loc)
    if arr.dtype.kind not in "biuf":
        raise _bad(loc, "data is not a rectangular array of numbers or booleans")
    if int64 and (arr.dtype.kind == "u" or (arr.dtype.kind == "f" and arr.size and _all_ints_over_int64(data, arr))):
        # numpy reads integers of 2**63 and over as uint64, or as float64 beside smaller ones
        raise _bad(loc, "integer data out of range for int64")
    if arr.ndim > MAX_DIMS:
        raise _too_many_dims(loc, arr.ndim)
    return arr


def _all_ints_over_int64(data: Any, arr: np.ndarray) -> bool:
    """Whether float64 ``arr`` came from integers only, one of them past int64 (then its dtype is int64)."""
    if float(np.abs(arr).max()) < 2.0**63:
        return False
    leaves = [data]
    while leaves and isinstance(leaves[0], list):
        leaves = [x for sub in leaves for x in sub]
    return all(type(x) is int for x in leaves)


def _size_hint(obj: list[Any]) -> tuple[int, int, Any]:
    """(element count, depth, first leaf) of a nested list if it is rectangular (read off its first
    elements; the leaf of an empty list is that list)."""
    n, depth = 1, 0
    while isinstance(obj, list):
        n *= len(obj)
        depth += 1
        if not obj:
            break
        obj = obj[0]
    return n, depth, obj


def _rectangular_rows(obj: list[Any]) -> bool:
    """Whether every level of a nested list above its numbers holds lists of one length (those of its
    first elements), so that _size_hint's count is the count of its numbers: a big array is then a 413
    before numpy allocates it, while a ragged one stays a 400. Only for arrays over the limit: it walks
    every row (not every number), without building a list of them."""
    dims: list[int] = []
    first: Any = obj
    while isinstance(first, list) and first:
        dims.append(len(first))
        first = first[0]
    # Level k: lists, all of length dims[k] (the levels above are); one pass, stopping at the first that is not.
    return all(type(row) is list and len(row) == dims[k] for k in range(1, len(dims)) for row in _level(obj, k))


def _level(obj: list[Any], k: int) -> Any:
    """An iterator over the items k levels down a nested list, built lazily."""
    level: Any = iter([obj])
    for _ in range(k):
        level = itertools.chain.from_iterable(level)
    return level


def _has_strings(obj: list[Any]) -> bool:
    """Whether a nested list holds strings anywhere, without building anything per number."""
    level: list[Any] = obj
    try:
        while level and isinstance(level[0], list) and level[0] and isinstance(level[0][0], list):
            level = list(itertools.chain.from_iterable(level))
        leaves = itertools.chain.from_iterable(level) if level and isinstance(level[0], list) else level
        return str in set(map(type, leaves))
    except TypeError:  # ragged (a number where a list belongs): the general path says so
        return False


def _cast(arr: np.ndarray, dtype: str, loc: Sequence[str | int]) -> np.ndarray:
    """Cast to a declared dtype, refusing silent truncation (1.5 as int, 300 as uint8)."""
    target = NP_DTYPES[dtype]
    if arr.dtype == target:
        return arr
    if target.kind in "iu":
        if arr.dtype.kind == "f":
            if arr.size and not bool(np.all(np.isfinite(arr) & (arr == np.round(arr)))):
                raise _bad(loc, f"data is not integral, declared dtype {dtype}")
        if arr.size and arr.dtype.kind in "iuf":
            info = np.iinfo(target)
            # For floats the top is exclusive: float(2**63 - 1) is 2**63, which int64 cannot hold.
            over = arr.max() >= float(info.max) + 1 if arr.dtype.kind == "f" else arr.max() > info.max
            if bool(arr.min() < info.min) or bool(over):
                raise _bad(loc, f"data out of range for dtype {dtype}")
    elif target.kind == "b" and arr.dtype.kind != "b":
        if arr.size and not bool(np.all((arr == 0) | (arr == 1))):
            raise _bad(loc, "data is not boolean (0/1, true/false), declared dtype bool")
    elif target.kind == "f" and (arr.dtype.kind in "iu" or target.itemsize < arr.dtype.itemsize):
        return _to_float(arr, target, loc, dtype)  # 70000 is no float16, 1e39 no bfloat16
    return arr.astype(target)


def _from_numpy(arr: np.ndarray, dtype: str | None, loc: Sequence[str | int]) -> torch.Tensor:
    # np.ascontiguousarray would turn a 0-d array into 1-d.
    t = torch.from_numpy(arr if arr.flags.c_contiguous else arr.copy())
    if dtype == "bfloat16":
        b = t.to(torch.bfloat16)
        if bool((b.isinf() & t.isfinite()).any()):
            raise _bad(loc, "data out of range for dtype bfloat16")
        t = b
    return t


def decode_tensor(obj: Any, loc: Sequence[str | int], limits: Limits, text_ok: bool = False) -> JSONTensor:
    """One JSON tensor (any form of api.md) -> a CPU tensor, or a list of strings where text is allowed."""
    if isinstance(obj, dict):
        return _decode_object(obj, loc, limits)
    if text_ok and isinstance(obj, list):
        text = _text(obj, loc)
        if text is not None:
            return text
    leaf = None
    if isinstance(obj, list):
        obj, leaf, _ = _checked_list(obj, loc, limits)
    if isinstance(leaf, float):
        # The common case, numbers only. numpy's own inference decides (asking it for float32
        # directly would also read None as NaN and "1.5" as a number); anything but floats
        # (strings such as "NaN", None, ragged nesting) goes the general way, which says why.
        try:
            arr64 = np.asarray(obj)
        except (ValueError, TypeError, OverflowError):
            arr64 = None
        if arr64 is not None and arr64.dtype.kind == "f" and arr64.ndim <= MAX_DIMS:
            if arr64.size > limits.max_elements:
                raise _too_large(loc, arr64.size, limits)
            return torch.from_numpy(_to_float(arr64, np.float32, loc))
    if isinstance(obj, str):
        if obj in NONFINITE_IN:
            return torch.tensor(NONFINITE_IN[obj], dtype=torch.float32)
        raise _bad(loc, "expected a number, a nested array of numbers or a tensor object")
    if obj is None:
        raise _bad(loc, "expected a tensor, got null")
    if isinstance(obj, np.ndarray):  # from loads_large: int64 or float64, inferred as ever
        if obj.ndim > MAX_DIMS:
            raise _too_many_dims(loc, obj.ndim)
        if obj.size > limits.max_elements:
            raise _too_large(loc, obj.size, limits)
        return torch.from_numpy(_to_float(obj, np.float32, loc) if obj.dtype.kind == "f" else obj)
    arr = _to_numpy(obj, loc, checked=True)
    if arr.size > limits.max_elements:
        raise _too_large(loc, arr.size, limits)
    kind = arr.dtype.kind
    if kind == "f":
        arr = _to_float(arr, np.float32, loc)
    elif kind == "i":
        arr = arr.astype(np.int64)
    return _from_numpy(arr, None, loc)


def _json_kind(x: Any) -> str:
    if x is None:
        return "null"
    if isinstance(x, bool):
        return "a boolean"
    if isinstance(x, (int, float)):
        return "a number"
    if isinstance(x, list):
        return "an array"
    return "an object" if isinstance(x, dict) else type(x).__name__


def _text(obj: list[Any], loc: Sequence[str | int]) -> list[str] | None:
    """A list where text is allowed: itself if it is all strings (or empty); None if it is numeric data
    (a tensor of token ids; "NaN" and "Infinity" are numbers there); a 400 if it mixes strings and
    anything else."""
    strings = [s for s in obj if isinstance(s, str)]
    if len(strings) == len(obj):
        return list(obj)
    if not strings or all(s in NONFINITE_IN for s in strings):
        return None
    i, other = next((i, x) for i, x in enumerate(obj) if not isinstance(x, str))
    what = _json_kind(other)
    msg = (
        f"a list that mixes strings and {'numbers' if what == 'a number' else 'other values'} (item {i} is {what}): "
        "text is a list of strings only, token ids an integer tensor"
    )
    raise _bad(loc, msg)


def _header(obj: dict[str, Any], loc: Sequence[str | int], limits: Limits) -> tuple[str, Any, int]:
    """A tensor object's dtype, shape and element count; the size limits are decided here, from the
    declared shape alone."""
    extra = set(obj) - {"dtype", "shape", "data", "b64"}
    if extra:
        raise _bad(loc, f"unknown tensor fields {sorted(extra)}")
    dtype = obj.get("dtype")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise _bad(loc, f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
    if "shape" not in obj:
        raise _bad(loc, "a tensor object needs a shape")
    shape = obj["shape"]
    return dtype, shape, _numel(shape, loc, limits)


def _decode_object(obj: dict[str, Any], loc: Sequence[str | int], limits: Limits) -> torch.Tensor:
    dtype, shape, n = _header(obj, loc, limits)
    has_data, has_b64 = "data" in obj, "b64" in obj
    if has_data == has_b64:
        raise _bad(loc, "a tensor object needs exactly one of data or b64")
    if has_b64:
        return _decode_b64(obj["b64"], dtype, shape, n, loc)
    data = obj["data"]
    if isinstance(data, list):
        data, _, size = _checked_list(data, loc, None)
        if size > n and size > limits.max_elements:
            # Read off its first elements, more than the shape holds (or ragged): no need to build it.
            raise _bad(loc, f"data does not match shape {shape} ({n} elements)")
    # A declared float dtype takes integer literals of any size (JavaScript writes 1e19 as 10000000000000000000).
    arr = _to_numpy(data, loc, int64=NP_DTYPES[dtype].kind != "f", checked=True)
    if arr.size != n:
        raise _bad(loc, f"data has {arr.size} elements, shape {shape} needs {n}")
    if arr.shape != tuple(shape) and arr.ndim != 1:
        raise _bad(loc, f"nested data of shape {list(arr.shape)} does not match shape {shape}")
    arr = _cast(arr, dtype, loc).reshape(shape)
    return _from_numpy(arr, dtype, loc)


def _not_boolean(raw: np.ndarray, loc: Sequence[str | int]) -> Problem | None:
    """A bool tensor's bytes (``raw``, as uint8) must be 0 or 1: torch would take any byte, and compute with it."""
    if int(raw.max(initial=0)) > 1:
        return _bad(loc, "data is not boolean (bytes 0 or 1), declared dtype bool")
    return None


def _decode_b64(s: Any, dtype: str, shape: list[int], n: int, loc: Sequence[str | int]) -> torch.Tensor:
    if not isinstance(s, str):
        raise _bad(loc, "b64 must be a string")
    tdtype = DTYPES[dtype]
    itemsize = tdtype.itemsize
    if len(s) > 4 * ((n * itemsize + 2) // 3) + 4:
        raise _bad(loc, f"b64 data is longer than shape {shape} and dtype {dtype} allow")
    try:
        raw = bytearray(base64.b64decode(s, validate=True))
    except (binascii.Error, ValueError):
        raise _bad(loc, "b64 is not valid base64") from None
    if len(raw) != n * itemsize:
        raise _bad(loc, f"b64 holds {len(raw)} bytes, shape {shape} and dtype {dtype} need {n * itemsize}")
    if n == 0:
        return torch.empty(shape, dtype=tdtype)
    if tdtype == torch.bool and (problem := _not_boolean(np.frombuffer(raw, dtype=np.uint8), loc)):
        raise problem
    return torch.frombuffer(raw, dtype=tdtype).reshape(shape)


def _check_size(obj: Any, loc: Sequence[str | int], limits: Limits, text_ok: bool) -> None:
    """The 413 that decoding ``obj`` would answer before anything else, if any, without decoding its data."""
    try:
        if isinstance(obj, dict):
            _header(obj, loc, limits)
        elif isinstance(obj, list):
            if text_ok and _text(obj, loc) is not None:
                return  # text: no element limit here (the loss bounds its work)
            size, depth, _ = _size_hint(obj)
            if depth <= MAX_DIMS and size > limits.max_elements and _rectangular_rows(obj):
                raise _too_large(loc, size, limits)
        elif isinstance(obj, np.ndarray) and obj.ndim <= MAX_DIMS and obj.size > limits.max_elements:
            raise _too_large(loc, obj.size, limits)
    except Problem as p:
        if p.status == 413:
            raise
    # Any other problem is that tensor's own, answered when it is decoded.


def sizes_first(problem: Problem, rest: Iterable[Callable[[], object]]) -> Problem:
    """What to answer when a tensor of a request fails with ``problem``: the size limits are decided
    before any tensor's data (api.md: a declared shape over the limit is 413 whatever its data), so
    the first 413 among the tensors not yet looked at (``rest``: a check of each that raises its 413)
    wins over a 400 or a 422; otherwise ``problem``."""
    if problem.status != 413:
        for check in rest:
            try:
                check()
            except Problem as p:
                if p.status == 413:
                    return p
    return problem


def decode_tensors(
    obj: Any, loc: Sequence[str | int], limits: Limits, text_inputs: frozenset[str] = frozenset()
) -> dict[str, JSONTensor]:
    """The ``inputs`` object of a request -> named tensors.

    Whatever the order of the keys, a tensor over the size limits is a 413 even where another tensor's
    data is malformed (400) or its shape has too many dimensions (422): when one fails, the rest are
    checked for a 413 (their declared shapes, or the counts of their arrays) before its problem is raised.
    """
    if not isinstance(obj, dict):
        raise Problem(
            422,
            f"{_where(loc)}: expected an object of named tensors",
            errors=[{"loc": list(loc), "msg": "expected an object"}],
        )
    if len(obj) > limits.max_tensors:
        raise Problem(413, f"{len(obj)} tensors is over the limit of {limits.max_tensors} per call")
    out: dict[str, JSONTensor] = {}
    for k, v in obj.items():
        try:
            out[k] = decode_tensor(v, (*loc, k), limits, text_ok=k in text_inputs)
        except Problem as p:
            rest = itertools.islice(obj.items(), len(out) + 1, None)
            first = sizes_first(
                p, (functools.partial(_check_size, v2, (*loc, k2), limits, k2 in text_inputs) for k2, v2 in rest)
            )
            if first is p:
                raise
            raise first from None
    return out


# ---------------------------------------------------------------------------
# Encoding (responses)


def _json_array(t: torch.Tensor) -> tuple[str, Any]:
    """A CPU tensor -> (dtype name, flat data orjson can serialise) with non-finite floats as strings."""
    name = DTYPE_NAMES[t.dtype]
    if t.dtype == torch.bfloat16:
        t = t.float()
    arr = t.numpy().ravel()  # a view unless the tensor is not contiguous
    # orjson writes NaN and Infinity as null: those go out as strings instead. One sum tells
    # (NaN and infinities make it non-finite; an overflow only sends a finite array the slow way).
    if arr.dtype.kind == "f" and not math.isfinite(np.add.reduce(arr, dtype=np.float64)):
        # The finite numbers as a finite array prints them (the shortest decimal of their own dtype,
        # not of the double they widen to); orjson leaves null where the strings go.
        printed = orjson.loads(orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY))
        for i in np.flatnonzero(~np.isfinite(arr)).tolist():
            printed[i] = float_out(float(arr[i]))
        return name, printed
    return name, arr


def float_out(x: float) -> float | str:
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "NaN"
    return "Infinity" if x > 0 else "-Infinity"


def encode_tensor(t: torch.Tensor, b64: bool = False) -> dict[str, Any]:
    if t.requires_grad:
        t = t.detach()
    if not t.is_cpu:
        t = t.cpu()
    if b64:
        # reshape(-1): a 0-d tensor cannot be viewed as bytes of another size
        raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        return {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "b64": base64.b64encode(raw).decode("ascii")}
    name, data = _json_array(t)
    return {"dtype": name, "shape": list(t.shape), "data": data}


def encode_value(t: torch.Tensor, b64: bool = False) -> Any:
    """A loss value: a JSON number for a scalar (non-finite as strings), else a tensor object."""
    if t.dim() == 0:
        return float_out(float(t.item()))
    return encode_tensor(t, b64)


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(body: bytes | bytearray | memoryview) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise Problem(400, f"body is not valid JSON: {e}") from None


LARGE_ARRAY = 4096  # numbers; smaller arrays are cheap enough as Python objects
# Bodies below this go to orjson: for many small arrays (a batch of small calls) it is faster.
LARGE_BODY = 1024 * 1024


class _Fallback(Exception):
    """Something the fast path does not take: parse the body the ordinary way."""


def loads_large(body: memoryview) -> Any:
    """Parse a large JSON body with its big numeric tensors read straight into numpy arrays.

    Like :func:`loads`, but under every ``inputs`` key each rectangular array of at least
    LARGE_ARRAY numbers comes back as an ndarray (int64 if every number is an integer, else
    float64) without one Python float per number: simdjson parses and copies them out in one
    pass, about twice as fast as orjson plus numpy for a 45 MB body. Anything else (strings
    such as "NaN", booleans, ragged or irregular nesting, invalid JSON) falls back to
    :func:`loads`, whose answers and errors are the ones clients see.

    simdjson flattens nested arrays when copying numbers out, so the structure is verified
    separately: every array's length, and the count of "[" in the body against the count the
    parsed document implies (an array hidden where a number belongs would add one).
    """
    try:
        out = _parse_large(body)
    except (_Fallback, ValueError, TypeError, RuntimeError):
        return loads(body)
    return out


# A parser keeps buffers sized to the largest document it has read; reusing one per thread
# halves the parse time. Bodies over REUSE_BYTES get a fresh parser so that no thread keeps
# hundreds of megabytes after one huge request.
REUSE_BYTES = 64 * 1024 * 1024
_parsers = threading.local()


def _parse_large(body: memoryview) -> Any:
    if len(body) > REUSE_BYTES:
        parser = simdjson.Parser()
    else:
        parser = getattr(_parsers, "parser", None) or simdjson.Parser()
        _parsers.parser = parser
    brackets = [0]
    out = _convert(parser.parse(body), brackets, tensors=False)
    raw = np.frombuffer(body, dtype=np.uint8)
    # A "[" inside a string may also be written \u005b; hiding one of those would offset a
    # hidden array, so they count too (an escaped backslash before "u005b" only overcounts,
    # which falls back).
    at = np.flatnonzero(raw[:-5] == ord("\\"))
    escaped = (
        (raw[at + 1] == ord("u")) & (raw[at + 2] == ord("0")) & (raw[at + 3] == ord("0")) & (raw[at + 4] == ord("5"))
    ) & ((raw[at + 5] | 0x20) == ord("b"))
    if int(np.count_nonzero(raw == ord("["))) + int(np.count_nonzero(escaped)) != brackets[0]:
        raise _Fallback
    return out


def _convert(node: Any, brackets: list[int], tensors: bool) -> Any:
    if isinstance(node, simdjson.Object):
        out = {}
        keys = list(node.keys())  # items() would convert every value to Python objects
        if len(set(keys)) != len(keys):
            # A key given twice: node[k] is its first value, where orjson (and Python's json) keep the
            # last. Rare enough to be left to orjson.
            raise _Fallback
        # In a tensor object only "data" holds numbers; its "shape" stays a list as in loads().
        tensor_object = tensors and "dtype" in keys
        for k in keys:
            brackets[0] += k.count("[")
            out[k] = _convert(node[k], brackets, (tensors and (k == "data" or not tensor_object)) or k == "inputs")
        return out
    if isinstance(node, simdjson.Array):
        if tensors:
            arr = _numeric(node, brackets)
            if arr is not None:
                return arr
        if len(node) and isinstance(node[0], simdjson.Object):  # a batch's calls: look inside each
            brackets[0] += 1
            return [_convert(v, brackets, tensors) for v in node]
        value = node.as_list()  # small or not numeric: converted in one go
        brackets[0] += _brackets_in(value)
        return value
    if isinstance(node, str):
        brackets[0] += node.count("[")
    return node


def _brackets_in(value: Any) -> int:
    """How many "[" the JSON text of an already converted value holds."""
    if isinstance(value, list):
        return 1 + sum(_brackets_in(v) for v in value if isinstance(v, (list, str, dict)))
    if isinstance(value, str):
        return value.count("[")
    if isinstance(value, dict):
        return sum(k.count("[") + _brackets_in(v) for k, v in value.items())
    return 0


def _numeric(node: Any, brackets: list[int]) -> np.ndarray | None:
    """A big rectangular array of numbers as an ndarray; None when small; _Fallback when odd."""
    dims: list[int] = []
    leaf: Any = node
    while isinstance(leaf, simdjson.Array):
        if len(leaf) == 0:
            return None
        dims.append(len(leaf))
        leaf = leaf[0]
    if type(leaf) not in (int, float) or math.prod(dims) < LARGE_ARRAY:
        return None
    if not _lengths_match(node, dims):
        raise _Fallback
    try:
        arr = np.frombuffer(node.as_buffer(of_type="i"), dtype=np.int64) if type(leaf) is int else None
    except TypeError:  # a float further on
        arr = None
    if arr is None:
        arr = np.frombuffer(node.as_buffer(of_type="d"), dtype=np.float64)
        if type(leaf) is int and arr.size and float(np.abs(arr).max()) >= 2.0**63:
            raise _Fallback  # perhaps integers past int64, which the general path refuses
    if arr.size != math.prod(dims):
        raise _Fallback
    brackets[0] += sum(math.prod(dims[:k]) for k in range(len(dims)))
    return arr.reshape(dims)


def _lengths_match(node: Any, dims: list[int]) -> bool:
    if len(node) != dims[0]:
        return False
    if len(dims) == 1:
        return True
    return all(isinstance(child, simdjson.Array) and _lengths_match(child, dims[1:]) for child in node)


# ---------------------------------------------------------------------------
# safetensors


_Planned = tuple[str, torch.dtype, list[int], int, int]  # name, dtype, shape, offset in the body, element count


def _st_entry(name: str, info: Any, base: int, size: int, limits: Limits) -> _Planned:
    """One tensor of a safetensors header, checked against the limits and the body's ``size``."""
    loc = ("inputs", name)
    code = info.get("dtype") if isinstance(info, dict) else None
    if not isinstance(code, str) or code not in ST_DTYPES:
        raise _bad(loc, f"unsupported safetensors dtype {info.get('dtype') if isinstance(info, dict) else info!r}")
    shape: list[int] = info.get("shape")  # checked by _numel
    numel = _numel(shape, loc, limits)
    offs = info.get("data_offsets")
    if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int for o in offs)):
        raise _bad(loc, "data_offsets must be [begin, end]")
    begin, end = offs
    dtype = ST_DTYPES[code]
    if not (0 <= begin <= end and base + end <= size) or end - begin != numel * dtype.itemsize:
        raise _bad(loc, f"data_offsets {offs} do not match shape {shape} and dtype {code}")
    return name, dtype, shape, base + begin, numel


def read_safetensors(body: memoryview | bytearray, limits: Limits) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Parse a safetensors body without copying tensor data (views over ``body``).

    The header is checked first (tensor count, element counts against the limits, offsets
    inside the body) so that nothing is allocated for a body that will be refused.
    """
    if len(body) < 8:
        raise Problem(400, "body is not a safetensors file (shorter than its 8-byte header length)")
    n = int.from_bytes(body[:8], "little")
    if n > len(body) - 8 or n > 100 * 1024 * 1024:
        raise Problem(400, "body is not a safetensors file (header length past the end)")
    try:
        header = orjson.loads(memoryview(body)[8 : 8 + n])
    except orjson.JSONDecodeError:
        raise Problem(400, "body is not a safetensors file (header is not JSON)") from None
    if not isinstance(header, dict):
        raise Problem(400, "body is not a safetensors file (header is not an object)")
    meta = header.pop("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise Problem(400, "safetensors __metadata__ must map names to strings")
    if len(header) > limits.max_tensors:
        raise Problem(413, f"{len(header)} tensors is over the limit of {limits.max_tensors} per call")
    base = 8 + n
    plan: list[_Planned] = []
    for name, info in header.items():
        try:
            plan.append(_st_entry(name, info, base, len(body), limits))
        except Problem as p:
            # The size limits first, whatever the order of the entries (as decode_tensors).
            rest = itertools.islice(header.items(), len(plan) + 1, None)
            first = sizes_first(p, (functools.partial(_st_entry, k, v, base, len(body), limits) for k, v in rest))
            if first is p:
                raise
            raise first from None
    # As the format requires: the tensors' data tile the byte buffer, without overlaps or holes.
    pos = base
    for _, dtype, _, offset, numel in sorted(plan, key=lambda p: (p[3], p[4] * p[1].itemsize)):
        if offset != pos:
            raise Problem(400, "body is not a safetensors file (tensor data overlap or leave a gap)")
        pos = offset + numel * dtype.itemsize
    if pos != len(body):
        raise Problem(400, "body is not a safetensors file (bytes after the last tensor)")
    tensors: dict[str, torch.Tensor] = {}
    for name, dtype, shape, offset, numel in plan:
        if dtype == torch.bool and numel:
            problem = _not_boolean(np.frombuffer(body, dtype=np.uint8, count=numel, offset=offset), ("inputs", name))
            if problem:
                raise problem
        if numel == 0:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif offset % dtype.itemsize:
            # Misaligned data (a writer that does not pad its header): copy rather than view.
            size = numel * dtype.itemsize
            tensors[name] = torch.frombuffer(bytearray(body[offset : offset + size]), dtype=dtype).reshape(shape)
        else:
            tensors[name] = torch.frombuffer(body, dtype=dtype, count=numel, offset=offset).reshape(shape)
    return tensors, meta


def write_safetensors(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> list[memoryview]:
    """A safetensors file as chunks (header, then each tensor's bytes) without copying the tensors.

    The response is sent chunk by chunk, so a 32 MB gradient goes to the socket straight from
    the tensor's memory. Tensors are laid out widest dtype first, so that with the header
    padded to 8 bytes every tensor's data is aligned for zero-copy readers.
    """
    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    order = sorted(cpu, key=lambda k: (-cpu[k].element_size(), k))
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    chunks: list[memoryview] = []
    offset = 0
    for k in order:
        t = cpu[k]
        nbytes = t.numel() * t.element_size()
        header[k] = {"dtype": ST_CODES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        chunks.append(t.reshape(-1).view(torch.uint8).numpy().data if nbytes else memoryview(b""))
    head = orjson.dumps(header)
    head += b" " * (-len(head) % 8)
    return [memoryview(len(head).to_bytes(8, "little") + head), *chunks]
