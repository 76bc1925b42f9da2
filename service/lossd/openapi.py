"""The OpenAPI schema: the real request and response bodies of every endpoint.

Handlers read raw bytes (JSON or safetensors) for speed, so FastAPI cannot infer their
bodies; the models of :mod:`lossd.schemas` are added here instead.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from lossd import schemas
from lossd.examples import EXAMPLES

REF = "#/components/schemas/{model}"
MODELS: tuple[type[BaseModel], ...] = (
    schemas.LossRequest,
    schemas.LossResponse,
    schemas.Problem,
    schemas.BatchRequest,
    schemas.BatchResponse,
    schemas.CompositeRequest,
    schemas.CompositeResponse,
    schemas.LossInfo,
    schemas.LossList,
    schemas.Info,
)
ERRORS = {
    "400": "Body is not valid JSON / safetensors, or a tensor's data does not match its shape and dtype",
    "401": "A key is required and missing or wrong",
    "403": "The key may not do this",
    "404": "Unknown loss; detail names the closest catalogue names",
    "408": "The body did not arrive within LOSSD_BODY_TIMEOUT_S of admission (the connection is closed)",
    "413": "Body, or a tensor's element count, over the configured limit",
    "415": "Unsupported Content-Type",
    "422": "Wrong shapes, dtypes, params, out-of-range indices or probabilities; a gradient of an input that has none",
    "429": "Over a rate limit; Retry-After set",
    "503": "Not ready, busy (calls or body bytes in flight), or out of device memory (Retry-After); "
    "or a loss that lacks its configuration",
    "504": "The call's deadline passed before it ran",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json_body(name: str, example: Any = None) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": _ref(name)}
    if example is not None:
        content["example"] = example
    return content


REQUEST_ID = {
    "description": "The request's X-Request-ID (the last one given), or one the server made",
    "schema": {"type": "string"},
}
RETRY_AFTER = {"description": "Seconds to wait before retrying", "schema": {"type": "integer", "minimum": 0}}


def _errors() -> dict[str, Any]:
    return {
        code: {
            "description": d,
            "headers": {"X-Request-ID": REQUEST_ID, **({"Retry-After": RETRY_AFTER} if code in ("429", "503") else {})},
            "content": {"application/problem+json": {"schema": _ref("Problem")}},
        }
        for code, d in ERRORS.items()
    }


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in MODELS:
        js = model.model_json_schema(ref_template=REF)
        components.update(js.pop("$defs", {}))
        components[model.__name__] = js
    binary = {"schema": {"type": "string", "format": "binary", "description": "A safetensors file (see api.md)"}}
    paths = schema["paths"]
    ce = EXAMPLES["cross_entropy"]
    name_param = {
        "name": "name",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "Loss name or alias (GET /v1/losses lists them)",
    }
    deadline_param = {
        "name": "X-Deadline-Ms",
        "in": "header",
        "required": False,
        "schema": {"type": "integer", "minimum": 0},
        "description": "Answer 504 if the call has not started within this many milliseconds",
    }
    # The compute endpoints are plain ASGI (lossd.endpoints), outside FastAPI's routes: describe them here.
    posts = {
        "/v1/losses/{name}": ("compute", "Compute one loss", "LossRequest", "LossResponse", True),
        "/v1/batch": (
            "batch",
            "Several loss calls at once; one bad call fails alone",
            "BatchRequest",
            "BatchResponse",
            False,
        ),
        "/v1/composite": (
            "composite",
            "A weighted sum of losses over shared tensors, with the gradients of the sum",
            "CompositeRequest",
            "CompositeResponse",
            False,
        ),
    }
    for path, (op_id, summary, req, resp, st) in posts.items():
        example = {"inputs": ce["inputs"], "params": {"reduction": "mean"}, "grad": ["input"]} if st else None
        content = {"application/json": _json_body(req, example)}
        ok: dict[str, Any] = {"application/json": {"schema": _ref(resp)}}
        if st:
            content["application/x-safetensors"] = binary
            ok["application/x-safetensors"] = binary
        paths.setdefault(path, {})["post"] = {
            "tags": ["losses"],
            "summary": summary,
            "operationId": op_id,
            "parameters": ([name_param] if st else []) + [deadline_param],
            "requestBody": {"required": True, "content": content},
            "responses": {
                "200": {"description": "Success", "headers": {"X-Request-ID": REQUEST_ID}, "content": ok},
                **_errors(),
            },
        }
    gets = {"/v1/losses": "LossList", "/v1/losses/{name}": "LossInfo", "/v1/info": "Info"}
    for path, resp in gets.items():
        op = paths[path]["get"]
        op["responses"] = {"200": {"description": "Success", "content": {"application/json": {"schema": _ref(resp)}}}}
    paths["/v1/losses/{name}"]["get"]["responses"]["404"] = _errors()["404"]
    paths["/readyz"]["get"]["responses"]["503"] = _errors()["503"]
    paths["/metrics"]["get"]["responses"]["200"] = {
        "description": "Prometheus text format",
        "content": {"text/plain": {"schema": {"type": "string"}}},
    }
    # FastAPI's own 422 bodies: lossd answers problem+json instead. With those 422s gone nothing refers
    # to the two schemas (ValidationError only from HTTPValidationError).
    for item in paths.values():
        for op in item.values():
            if _is_fastapi_422(op):
                del op["responses"]["422"]
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    return schema


def _is_fastapi_422(op: dict[str, Any]) -> bool:
    schema = op.get("responses", {}).get("422", {}).get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def install_openapi(app: FastAPI) -> None:
    cache: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if "schema" not in cache:
            cache["schema"] = build_openapi(app)
        return cache["schema"]

    app.openapi = openapi  # type: ignore[method-assign]
