"""Pydantic models of the request and response bodies, for the OpenAPI schema.

The hot path does not validate through these (it parses with orjson and the codecs, which is
several times faster); they document exactly what the codecs accept and produce.
"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64"]
Number = Union[float, int, bool, Literal["NaN", "Infinity", "-Infinity"]]
# A value the server sends: always a JSON number or a non-finite spelling, never a bool.
Value = Union[float, Literal["NaN", "Infinity", "-Infinity"]]


class TensorData(BaseModel):
    """A tensor with an explicit dtype: data flat (row-major) or nested."""

    model_config = ConfigDict(extra="forbid")
    dtype: DType
    shape: list[int]
    data: list[Any] = Field(description="Numbers (flat row-major, or nested to the shape); non-finite as strings.")


class TensorB64(BaseModel):
    """A tensor as raw little-endian bytes, base64-encoded."""

    model_config = ConfigDict(extra="forbid")
    dtype: DType
    shape: list[int]
    b64: str = Field(
        description="The standard base64 alphabet with padding (RFC 4648 section 4), no line breaks: "
        "Go's base64.StdEncoding, Rust's STANDARD engine, JavaScript's btoa.",
        json_schema_extra={"contentEncoding": "base64"},
    )


Tensor = Union[Number, list[Any], TensorData, TensorB64]
Tensor.__doc__ = "A number, a rectangular nested array (dtype inferred), or a tensor object."

Grad = Union[bool, list[str]]


class LossRequest(BaseModel):
    inputs: dict[str, Tensor] = Field(description="Named input tensors (a list of strings for text inputs).")
    params: dict[str, Any] = Field(default_factory=dict, description="Loss params; unknown params are errors.")
    grad: Grad = Field(False, description="false, true (every differentiable input given) or a list of input names.")
    encoding: Literal["data", "b64"] = Field("data", description='"b64": tensors in the response as base64.')

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "inputs": {"input": [[2.0, 0.5, -1.0], [0.1, 1.5, 0.3]], "target": [0, 1]},
                    "params": {"reduction": "mean"},
                    "grad": ["input"],
                }
            ]
        }
    )


class LossResponse(BaseModel):
    loss: str = Field(description="Canonical loss name (also when called through an alias).")
    value: Union[Value, TensorData, TensorB64] = Field(description='A number, or a tensor for reduction "none".')
    grads: dict[str, Union[TensorData, TensorB64]] = Field(description="One per input asked for; {} without grad.")
    terms: dict[str, Value] | None = Field(None, description="Unweighted named terms (centernet).")


class ProblemError(BaseModel):
    """Where in the request a problem is, and what."""

    loc: list[Union[str, int]] = Field(description='Path into the body, e.g. ["inputs", "target"] or ["calls", 2].')
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    errors: list[ProblemError] | None = Field(None, description="At most 50; detail gives the count beyond.")
    retry_after: int | None = Field(
        None, description="Seconds, as the Retry-After header: present when retrying later can succeed."
    )


class BatchCall(BaseModel):
    loss: str
    inputs: dict[str, Tensor]
    params: dict[str, Any] = Field(default_factory=dict)
    grad: Grad = False


class BatchRequest(BaseModel):
    calls: list[BatchCall]
    encoding: Literal["data", "b64"] = "data"


class BatchError(BaseModel):
    error: Problem


class BatchResponse(BaseModel):
    results: list[Union[LossResponse, BatchError]]


class CompositeTermIn(BaseModel):
    loss: str
    weight: float = 1.0
    inputs: dict[str, str] = Field(description="Loss input name -> name of a shared tensor.")
    params: dict[str, Any] = Field(default_factory=dict)


class CompositeRequest(BaseModel):
    inputs: dict[str, Tensor]
    terms: list[CompositeTermIn]
    grad: Grad = False
    encoding: Literal["data", "b64"] = "data"


class CompositeTermOut(BaseModel):
    loss: str
    weight: float
    value: Value


class CompositeResponse(BaseModel):
    value: Value
    terms: list[CompositeTermOut]
    grads: dict[str, Union[TensorData, TensorB64]] = Field(description="One per shared tensor asked for.")


class InputInfo(BaseModel):
    name: str
    required: bool
    dtypes: list[str]
    shape: str
    differentiable: bool
    doc: str


class LossInfo(BaseModel):
    name: str
    aliases: list[str]
    summary: str
    inputs: list[InputInfo]
    params: dict[str, Any] = Field(description="JSON Schema of the params; each property carries its default.")
    reductions: list[str]
    available: bool
    reference: str
    unavailable_reason: str | None = None


class LossList(BaseModel):
    losses: list[LossInfo]


class DeviceInfo(BaseModel):
    device: str
    name: str
    inflight: int
    calls: int


class Numerics(BaseModel):
    """What a value's bits depend on besides the inputs, the device kind and the torch version."""

    torch_threads: int = Field(description="torch intra-op threads: CPU reductions split their sums by it")
    tf32: bool = Field(description="TF32 matmuls/convolutions allowed on CUDA (lossd turns them off)")
    deterministic_algorithms: bool


class Info(BaseModel):
    version: str
    torch: str
    devices: list[DeviceInfo]
    limits: dict[str, Any]
    losses: int
    numerics: Numerics
