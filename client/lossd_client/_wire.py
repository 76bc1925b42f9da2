"""Tensors on the wire: client values -> JSON tensor objects or safetensors bodies, and back.

numpy has no bfloat16: a bfloat16 torch tensor travels as its raw 16-bit patterns and comes
back as float32 arrays (an exact widening) whose wire dtype is remembered for ``to_torch``.
torch is never imported here; a tensor is recognised only when the caller already imported it.
"""

from __future__ import annotations

import base64
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

#: Anything the client accepts as a tensor: numpy arrays and scalars, torch tensors, nested lists, numbers.
TensorLike: TypeAlias = npt.ArrayLike
#: ``grad`` as in api.md: False, True (every differentiable input) or the names of inputs (one name alone too).
Grad: TypeAlias = bool | str | Sequence[str]
NDArray: TypeAlias = npt.NDArray[Any]

# wire dtype name -> safetensors code
ST_CODES = {
    "bool": "BOOL",
    "uint8": "U8",
    "int8": "I8",
    "int16": "I16",
    "int32": "I32",
    "int64": "I64",
    "float16": "F16",
    "bfloat16": "BF16",
    "float32": "F32",
    "float64": "F64",
}
ST_NAMES = {v: k for k, v in ST_CODES.items()}
# how each wire dtype is stored in numpy (bfloat16 as its bit patterns)
NP_STORAGE = {k: np.dtype("uint16" if k == "bfloat16" else k) for k in ST_CODES}
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


@dataclass(frozen=True)
class WireTensor:
    """A contiguous little-endian array and its wire dtype name (bfloat16 arrays hold uint16 bits)."""

    array: NDArray
    dtype: str

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def values(self) -> NDArray:
        """The numbers, with bfloat16 widened to float32."""
        return bf16_to_f32(self.array) if self.dtype == "bfloat16" else self.array


def bf16_to_f32(bits: NDArray) -> NDArray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _torch_tensor_type() -> Any:
    torch = sys.modules.get("torch")
    return getattr(torch, "Tensor", None)


def _is_python_data(x: Any) -> bool:
    """Python numbers and bools, and lists and tuples of them: what api.md's dtype inference is for.
    A list is judged by its first element (a list of numpy arrays keeps numpy's dtype), so that
    nothing walks a million numbers before numpy reads them."""
    while isinstance(x, list | tuple) and x:
        x = x[0]
    if isinstance(x, np.generic | np.ndarray):  # np.float64 is a float subclass, with a dtype of its own
        return False
    return isinstance(x, bool | int | float | list | tuple)


TEXT_HINT = "text inputs (edit_distance's) are a list of str, e.g. hypothesis=['kitten']"


def to_wire(x: Any) -> WireTensor | list[str]:
    """One client value -> a wire tensor, or a list of strings (text inputs such as edit_distance's).

    Python numbers and (nested) lists and tuples follow api.md's inference (any non-integer: float32,
    all integers: int64); anything else with a dtype of its own (numpy arrays and scalars, torch
    tensors, objects with ``__array__`` or the buffer protocol) keeps it. Shapes are kept, 0-d
    included: a number is a 0-d tensor, as in torch (``[5]`` for a batch of one).
    """
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(x, tensor_type):
        t = x.detach().cpu().contiguous()
        if str(t.dtype) == "torch.bfloat16":
            return WireTensor(t.view(sys.modules["torch"].int16).numpy().view(np.uint16), "bfloat16")
        arr = t.numpy()
    elif isinstance(x, str | bytes):
        raise TypeError(f"{TEXT_HINT}, not a bare {type(x).__name__}")
    elif isinstance(x, list | tuple) and x and all(isinstance(s, str) for s in x):
        return list(x)
    elif _is_python_data(x):
        arr = np.asarray(x)
        if arr.dtype.kind == "f":
            arr = arr.astype(np.float32)
        elif arr.dtype.kind in "iu":
            arr = arr.astype(np.int64)
    else:
        arr = np.asarray(x)
    if arr.dtype.kind in "USO":
        raise TypeError(f"unsupported dtype {arr.dtype}: {TEXT_HINT} (a numpy array of strings: .tolist())")
    if arr.dtype.name not in ST_CODES:
        raise TypeError(f"unsupported dtype {arr.dtype} (supported: {', '.join(ST_CODES)})")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # not np.ascontiguousarray: it turns a 0-d array into a 1-d one
    return WireTensor(arr if arr.flags.c_contiguous else arr.copy(order="C"), arr.dtype.name)


def plain(v: Any) -> Any:
    """numpy and torch values (scalars, arrays, tensors) as the Python numbers and lists JSON carries."""
    if isinstance(v, np.generic | np.ndarray):
        return v.tolist()
    tensor_type = _torch_tensor_type()
    if tensor_type is not None and isinstance(v, tensor_type):
        return v.detach().cpu().tolist()
    if isinstance(v, Mapping):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [plain(x) for x in v]
    return v


def grad_to_json(grad: Grad) -> bool | list[str]:
    """``grad`` as JSON carries it: a bool, or a list of input names (one name alone counts as a list)."""
    g = plain(grad)
    if isinstance(g, bool):
        return g
    if isinstance(g, str):
        return [g]
    return [str(x) for x in g]


def float_dtype(tensors: Mapping[str, WireTensor | list[str]]) -> str:
    """The dtype a loss computes in (api.md): float64 if any input is float64, else float32."""
    return "float64" if any(isinstance(t, WireTensor) and t.dtype == "float64" for t in tensors.values()) else "float32"


# -- JSON ------------------------------------------------------------------------------


def _spelling(v: float) -> str:
    """A non-finite float as JSON carries it (api.md)."""
    return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")


def _finite_or_str(values: list[Any]) -> list[Any]:
    return [v if math.isfinite(v) else _spelling(v) for v in values]


def tensor_to_json(t: WireTensor | list[str], b64: bool = False) -> Any:
    """A JSON tensor object (api.md) with an explicit dtype; non-finite floats as strings."""
    if isinstance(t, list):
        return t
    shape = list(t.array.shape)
    if b64:
        return {"dtype": t.dtype, "shape": shape, "b64": base64.b64encode(t.array.tobytes()).decode("ascii")}
    data = t.values().reshape(-1).tolist()
    if t.array.dtype.kind == "f" or t.dtype == "bfloat16":
        if not bool(np.isfinite(t.values()).all()):
            data = _finite_or_str(data)
    return {"dtype": t.dtype, "shape": shape, "data": data}


def tensor_from_json(obj: Any) -> WireTensor:
    """A tensor object of a response (``data`` or ``b64``) -> a wire tensor."""
    dtype = obj["dtype"]
    storage = NP_STORAGE[dtype]
    shape = tuple(obj["shape"])
    if "b64" in obj:
        raw = base64.b64decode(obj["b64"])
        return WireTensor(np.frombuffer(raw, dtype=storage).reshape(shape).copy(), dtype)
    if dtype == "bfloat16":  # data holds the float32 values of bfloat16 numbers: keep their bit patterns
        f32 = np.asarray(obj["data"], dtype=np.float32).reshape(shape)
        return WireTensor((f32.view(np.uint32) >> 16).astype(np.uint16), dtype)
    # numpy parses the strings "NaN", "Infinity" and "-Infinity" itself when given a float dtype.
    return WireTensor(np.asarray(obj["data"], dtype=storage).reshape(shape), dtype)


def params_to_json(params: Mapping[str, Any]) -> dict[str, Any]:
    """Params as JSON carries them: numpy and torch values as Python ones (``alpha=np.array([...])``),
    infinity and NaN as the strings tensors use (``p=math.inf``)."""
    return {k: _nonfinite_to_str(plain(v)) for k, v in params.items()}


def _nonfinite_to_str(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return _spelling(v)
    if isinstance(v, list | tuple):
        return [_nonfinite_to_str(x) for x in v]
    if isinstance(v, Mapping):
        return {k: _nonfinite_to_str(x) for k, x in v.items()}
    return v


def number_from_json(x: Any) -> float:
    """A JSON number or one of the strings "NaN", "Infinity", "-Infinity"."""
    if isinstance(x, str):
        return NONFINITE[x]
    return float(x)


def dumps(obj: Any) -> bytes:
    # allow_nan=False: a bare NaN token is invalid JSON for the server; tensors already carry strings.
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


# -- safetensors -----------------------------------------------------------------------


def write_safetensors(tensors: Mapping[str, WireTensor], metadata: Mapping[str, str]) -> bytes:
    """A safetensors file, with the header padded so that every tensor's data is 8-byte aligned."""
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    for name, t in tensors.items():
        header[name] = {
            "dtype": ST_CODES[t.dtype],
            "shape": list(t.array.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-(8 + len(head)) % 8)
    chunks: list[Any] = [len(head).to_bytes(8, "little"), head]
    chunks += [t.array.reshape(-1).view(np.uint8).data for t in tensors.values()]
    return b"".join(chunks)


def read_safetensors(body: bytes) -> tuple[dict[str, WireTensor], dict[str, str]]:
    """Parse a safetensors file into (writable) arrays and its ``__metadata__``."""
    if len(body) < 8:
        raise ValueError("response is not a safetensors file")
    n = int.from_bytes(body[:8], "little")
    header = json.loads(body[8 : 8 + n])
    meta = header.pop("__metadata__", None) or {}
    base = 8 + n
    out: dict[str, WireTensor] = {}
    for name, info in header.items():
        dtype = ST_NAMES[info["dtype"]]
        begin, end = info["data_offsets"]
        arr = np.frombuffer(body, dtype=np.uint8, count=end - begin, offset=base + begin)
        out[name] = WireTensor(arr.view(NP_STORAGE[dtype]).reshape(info["shape"]).copy(), dtype)
    return out, meta
