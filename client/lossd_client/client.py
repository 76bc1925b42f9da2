"""LossClient and AsyncLossClient: the same methods over one pooled httpx client each.

Request building and response parsing are shared (``_Core``); only sending differs.

>>> import numpy as np
>>> from lossd_client import LossClient
>>> with LossClient("http://127.0.0.1:8000") as client:
...     r = client.mse(np.array([1.0, 2.0, 4.0]), np.array([1.0, 2.0, 2.0]), grad=True)
>>> round(r.value, 4), r.grads["input"].dtype, r.grads["input"].tolist()  # float64 in, float64 out
(1.3333, dtype('float64'), [0.0, 0.0, 1.3333333333333333])
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import httpx
import numpy as np

from lossd_client import _wire
from lossd_client._generated import ALIASES, LOSSES, AsyncLossMethods, LossMethods
from lossd_client._wire import Grad, TensorLike, WireTensor
from lossd_client.errors import (
    LossdError,
    Overloaded,
    RateLimited,
    RequestTimeout,
    ServerError,
    TransportError,
    from_problem,
    from_response,
    unexpected_response,
)
from lossd_client.models import (
    Call,
    CompositeResult,
    CompositeTermValue,
    LossInfo,
    LossResult,
    Retry,
    Term,
)

__all__ = ["AsyncLossClient", "LossClient"]

JSON = "application/json"
SAFETENSORS = "application/x-safetensors"
DEFAULT_URL = "http://127.0.0.1:8000"
# Above this many bytes of tensor data a call goes as safetensors (batch/composite: base64 in JSON).
DEFAULT_BINARY_THRESHOLD = 256 * 1024
T = TypeVar("T")


@dataclass
class _Request:
    method: str
    path: str
    content: bytes | None = None
    content_type: str | None = None
    accept: str = JSON
    loss_path: bool = False


def _retryable(e: LossdError) -> bool:
    """429, lossd's 503 with Retry-After, a proxy's 503 (with or without it) and connection failures."""
    if isinstance(e, TransportError):
        return not isinstance(e, RequestTimeout)  # a read timeout may be a long call: do not double the load
    return isinstance(e, RateLimited | Overloaded) or (type(e) is ServerError and e.status == 503)


def _transport_error(e: httpx.TransportError) -> TransportError:
    if isinstance(e, httpx.TimeoutException) and not isinstance(e, httpx.ConnectTimeout | httpx.PoolTimeout):
        return RequestTimeout(f"{type(e).__name__}: {e}")
    return TransportError(f"{type(e).__name__}: {e}")


def _value(v: Any, fallback_dtype: str, array: bool = False) -> tuple[float | _wire.NDArray, str]:
    """A result's value; ``array``: reduction "none", whose value is an array even with no dimensions."""
    if isinstance(v, dict):
        t = _wire.tensor_from_json(v)
        return t.values(), t.dtype
    x = _wire.number_from_json(v)
    return (np.asarray(x, dtype=fallback_dtype) if array else x), fallback_dtype


def _same_json(a: Any, b: Any) -> bool:
    """Whether two JSON values print the same: ``True`` is not ``1`` and ``2`` is not ``2.0``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return bool(a == b)


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must start with http:// or https://, got {url!r}")
    return url


def _sent_id(resp: httpx.Response) -> str | None:
    """The response's X-Request-ID, else the one the client sent."""
    rid: str | None = resp.headers.get("x-request-id") or resp.request.headers.get("x-request-id")
    return rid


def _json(resp: httpx.Response) -> Any:
    ctype = resp.headers.get("content-type", "")
    if not (ctype.startswith(JSON) or "+json" in ctype):
        raise ValueError(f"expected {JSON}")
    return resp.json()


def _decode(resp: httpx.Response, parse: Callable[[httpx.Response], T]) -> T:
    """Parse a 2xx response; a body that is not a valid answer is an UnexpectedResponse, not a raw exception."""
    try:
        return parse(resp)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, OverflowError) as e:
        raise unexpected_response(resp, f"{type(e).__name__}: {e}", _sent_id(resp)) from e


def _reduction_none(name: str, params: Mapping[str, Any]) -> bool:
    """Whether a call's value is an array: its reduction (the catalogue default if not sent) is "none"."""
    entry = LOSSES.get(ALIASES.get(name, name))
    default = entry.defaults.get("reduction") if entry is not None else None
    return bool(_wire.plain(params.get("reduction", default)) == "none")


class _Core:
    """Settings, request building and response parsing shared by both clients."""

    def __init__(
        self,
        base_url: str | None,
        api_key: str | None,
        retry: Retry | None,
        binary: bool | None,
        binary_threshold: int,
        deadline_ms: int | None,
    ) -> None:
        self.base_url = _check_base_url((base_url or os.environ.get("LOSSD_URL") or DEFAULT_URL).rstrip("/"))
        self.api_key = api_key if api_key is not None else os.environ.get("LOSSD_API_KEY")
        self.retry = retry if retry is not None else Retry()
        self.binary = binary
        self.binary_threshold = binary_threshold
        self.deadline_ms = deadline_ms
        self._infos: dict[str, LossInfo] = {}

    def _headers(self) -> dict[str, str]:
        h = {"User-Agent": "lossd-client/0.1"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        if self.deadline_ms is not None:
            h["X-Deadline-Ms"] = str(self.deadline_ms)
        return h

    def _attempt_headers(self, req: _Request, request_id: str) -> dict[str, str]:
        h = {**self._headers(), "Accept": req.accept, "X-Request-ID": request_id}
        if req.content_type:
            h["Content-Type"] = req.content_type
        return h

    def _next_delay(self, err: LossdError, attempt: int, started: float) -> float | None:
        """Seconds to wait before retrying, or None to give up and raise ``err``."""
        if not _retryable(err) or attempt >= self.retry.max_retries:
            return None
        d = self.retry.delay(attempt, err.retry_after)
        return None if time.monotonic() - started + d > self.retry.max_total else d

    # -- splitting compute()'s keywords ------------------------------------------------

    def _split_known(self, loss: str, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """Inputs and params by the generated catalogue; None when a name is unknown to it."""
        info = self._infos.get(loss)
        if info is not None:
            names = {i.name for i in info.inputs}
        else:
            entry = LOSSES.get(ALIASES.get(loss, loss))
            if entry is None or not set(kwargs) <= {*entry.inputs, *entry.params}:
                return None
            names = set(entry.inputs)
        return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}

    def _split_with(self, info: LossInfo, kwargs: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        names = {i.name for i in info.inputs}
        return {k: v for k, v in kwargs.items() if k in names}, {k: v for k, v in kwargs.items() if k not in names}

    @staticmethod
    def _drop_defaults(
        name: str, inputs: Mapping[str, Any], params: Mapping[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """For per-loss methods: leave out absent optional inputs and params left at their defaults.

        A param is left out only when its JSON is the default's (the server applies that same default):
        ``p=True`` is not ``p=1`` and ``gamma=2`` is not ``gamma=2.0``, so both are sent.
        """
        entry = LOSSES[name]
        ins = {k: v for k, v in inputs.items() if v is not None}
        sent = _wire.params_to_json(params)
        ps = {
            k: v
            for k, v in sent.items()
            if not (_same_json(v, entry.defaults[k]) if k in entry.defaults else v is None)
        }
        return ins, ps

    # -- one loss --------------------------------------------------------------------------

    def _loss_request(
        self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad, binary: bool | None
    ) -> tuple[_Request, str, bool]:
        """The request, the dtype of a number value, and whether the value is an array (reduction "none")."""
        wire = {k: _wire.to_wire(v) for k, v in inputs.items() if v is not None}
        grad_json = _wire.grad_to_json(grad)
        tensors = {k: t for k, t in wire.items() if isinstance(t, WireTensor)}
        has_text = len(tensors) < len(wire)
        if binary is None:
            binary = self.binary
        if binary is None:
            binary = sum(t.nbytes for t in tensors.values()) > self.binary_threshold
        path = f"/v1/losses/{quote(name, safe='')}"
        value_dtype = _wire.float_dtype(wire)
        array = _reduction_none(name, params)
        if binary and not has_text:
            meta = {
                "params": _wire.dumps(_wire.params_to_json(params)).decode(),
                "grad": _wire.dumps(grad_json).decode(),
            }
            body = _wire.write_safetensors(tensors, meta)
            return _Request("POST", path, body, SAFETENSORS, SAFETENSORS, loss_path=True), value_dtype, array
        obj = {
            "inputs": {k: _wire.tensor_to_json(t) for k, t in wire.items()},
            "params": _wire.params_to_json(params),
            "grad": grad_json,
        }
        # Text cannot travel in safetensors; a large call with text still gets a binary answer.
        accept = SAFETENSORS if binary else JSON
        return _Request("POST", path, _wire.dumps(obj), JSON, accept, loss_path=True), value_dtype, array

    @staticmethod
    def _loss_result(resp: httpx.Response, value_dtype: str, array: bool) -> LossResult:
        return _decode(resp, lambda r: _Core._parse_loss_result(r, value_dtype, array))

    @staticmethod
    def _parse_loss_result(resp: httpx.Response, value_dtype: str, array: bool) -> LossResult:
        rid = _sent_id(resp)
        if resp.headers.get("content-type", "").startswith(SAFETENSORS):
            tensors, meta = _wire.read_safetensors(resp.content)
            if "value" not in tensors:
                raise ValueError("no tensor 'value' in the safetensors answer")
            v = tensors.pop("value")
            value: float | _wire.NDArray = float(v.values()) if v.array.ndim == 0 and not array else v.values()
            dtypes = {"value": v.dtype}
            grads = {}
            for k, t in tensors.items():
                name = k.removeprefix("grad.")
                grads[name] = t.values()
                dtypes[name] = t.dtype
            terms = json.loads(meta["terms"]) if "terms" in meta else None
            if terms is not None:
                terms = {k: _wire.number_from_json(x) for k, x in terms.items()}
            return LossResult(str(meta.get("loss", "")), value, grads, terms, rid, dtypes)
        return _Core._loss_result_json(_json(resp), rid, value_dtype, array)

    @staticmethod
    def _loss_result_json(obj: Any, rid: str | None, value_dtype: str, array: bool) -> LossResult:
        if not isinstance(obj, dict) or "value" not in obj:
            raise ValueError("not a loss result (no 'value')")
        value, vdtype = _value(obj["value"], value_dtype, array)
        dtypes = {"value": vdtype}
        grads = {}
        for k, g in (obj.get("grads") or {}).items():
            t = _wire.tensor_from_json(g)
            grads[k] = t.values()
            dtypes[k] = t.dtype
        raw_terms = obj.get("terms")
        terms = {k: _wire.number_from_json(x) for k, x in raw_terms.items()} if raw_terms is not None else None
        return LossResult(str(obj.get("loss", "")), value, grads, terms, rid, dtypes)

    # -- batch and composite -----------------------------------------------------------

    def _b64(self, wire: Mapping[str, WireTensor | list[str]]) -> bool:
        return sum(t.nbytes for t in wire.values() if isinstance(t, WireTensor)) > self.binary_threshold

    def _batch_request(self, calls: Sequence[Call]) -> tuple[_Request, list[tuple[str, bool]]]:
        wires = [{k: _wire.to_wire(v) for k, v in c.inputs.items() if v is not None} for c in calls]
        b64 = self.binary is not False and self._b64({f"{i}.{k}": t for i, w in enumerate(wires) for k, t in w.items()})
        body: dict[str, Any] = {
            "calls": [
                {
                    "loss": c.loss,
                    "inputs": {k: _wire.tensor_to_json(t, b64) for k, t in w.items()},
                    "params": _wire.params_to_json(c.params),
                    "grad": _wire.grad_to_json(c.grad),
                }
                for c, w in zip(calls, wires)
            ]
        }
        if b64:
            body["encoding"] = "b64"
        expect = [(_wire.float_dtype(w), _reduction_none(c.loss, c.params)) for c, w in zip(calls, wires)]
        return _Request("POST", "/v1/batch", _wire.dumps(body), JSON), expect

    @staticmethod
    def _batch_result(resp: httpx.Response, expect: list[tuple[str, bool]]) -> list[LossResult | LossdError]:
        def parse(resp: httpx.Response) -> list[LossResult | LossdError]:
            rid = _sent_id(resp)
            results = _json(resp)["results"]
            if not isinstance(results, list) or len(results) != len(expect):
                raise ValueError(f"expected a list of {len(expect)} results")
            out: list[LossResult | LossdError] = []
            for r, (vd, array) in zip(results, expect):
                if isinstance(r, dict) and "error" in r:
                    out.append(from_problem(r["error"], request_id=rid))
                else:
                    out.append(_Core._loss_result_json(r, rid, vd, array))
            return out

        return _decode(resp, parse)

    def _composite_request(
        self, inputs: Mapping[str, TensorLike], terms: Sequence[Term], grad: Grad
    ) -> tuple[_Request, str]:
        wire = {k: _wire.to_wire(v) for k, v in inputs.items()}
        b64 = self.binary is not False and self._b64(wire)
        body: dict[str, Any] = {
            "inputs": {k: _wire.tensor_to_json(t, b64) for k, t in wire.items()},
            "terms": [
                {
                    "loss": t.loss,
                    "weight": _wire.plain(t.weight),
                    "inputs": dict(t.inputs),
                    "params": _wire.params_to_json(t.params),
                }
                for t in terms
            ],
            "grad": _wire.grad_to_json(grad),
        }
        if b64:
            body["encoding"] = "b64"
        return _Request("POST", "/v1/composite", _wire.dumps(body), JSON), _wire.float_dtype(wire)

    @staticmethod
    def _composite_result(resp: httpx.Response, value_dtype: str) -> CompositeResult:
        return _decode(resp, lambda r: _Core._parse_composite_result(r, value_dtype))

    @staticmethod
    def _parse_composite_result(resp: httpx.Response, value_dtype: str) -> CompositeResult:
        obj = _json(resp)
        value, vdtype = _value(obj["value"], value_dtype)
        terms = [
            CompositeTermValue(t["loss"], float(t["weight"]), _value(t["value"], value_dtype)[0]) for t in obj["terms"]
        ]
        dtypes = {"value": vdtype}
        grads = {}
        for k, g in (obj.get("grads") or {}).items():
            t = _wire.tensor_from_json(g)
            grads[k] = t.values()
            dtypes[k] = t.dtype
        return CompositeResult(value, terms, grads, _sent_id(resp), dtypes)

    def _infos_result(self, resp: httpx.Response) -> list[LossInfo]:
        infos = _decode(resp, lambda r: [LossInfo.model_validate(x) for x in _json(r)["losses"]])
        self._infos.update({i.name: i for i in infos})
        return infos

    @staticmethod
    def _info_result(resp: httpx.Response) -> LossInfo:
        return _decode(resp, lambda r: LossInfo.model_validate(_json(r)))

    @staticmethod
    def _dict_result(resp: httpx.Response) -> dict[str, Any]:
        def parse(r: httpx.Response) -> dict[str, Any]:
            out = _json(r)
            if not isinstance(out, dict):
                raise TypeError("expected a JSON object")
            return out

        return _decode(resp, parse)


class LossClient(_Core, LossMethods):
    """Synchronous client: one pooled ``httpx.Client``; use as a context manager or call :meth:`close`.

    ``base_url`` defaults to ``$LOSSD_URL`` (else http://127.0.0.1:8000), ``api_key`` to
    ``$LOSSD_API_KEY`` (sent as ``Authorization: Bearer``). ``binary``: None picks safetensors
    above ``binary_threshold`` bytes of tensor data, True always, False never. ``deadline_ms``
    sets ``X-Deadline-Ms``. ``retry`` bounds retries (:class:`Retry`; ``NO_RETRY`` turns them off).

    Every catalogue loss is a method with its inputs positional and its params as keywords:

    >>> import numpy as np
    >>> client = LossClient("http://127.0.0.1:8000")
    >>> logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype=np.float32)
    >>> r = client.focal(logits, np.array([0, 2]), gamma=0.0, grad=True)
    >>> ce = client.compute("cross_entropy", input=logits, target=[0, 2])
    >>> abs(r.value - ce.value) < 1e-6, r.grads["input"].shape
    (True, (2, 3))
    >>> client.close()
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        retry: Retry | None = None,
        binary: bool | None = None,
        binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
        deadline_ms: int | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retry, binary, binary_threshold, deadline_ms)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, limits=limits or httpx.Limits())

    def __enter__(self) -> LossClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, req: _Request) -> httpx.Response:
        rid = uuid.uuid4().hex  # one id across retries: the server log ties the attempts together
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                resp = self._http.request(
                    req.method, req.path, content=req.content, headers=self._attempt_headers(req, rid)
                )
                if 200 <= resp.status_code < 300:
                    return resp
                err: LossdError = from_response(resp, req.loss_path, rid)
            except httpx.TransportError as e:
                err = _transport_error(e)
                err.__cause__ = e
                err.request_id = rid
            delay = self._next_delay(err, attempt, started)
            if delay is None:
                raise err
            time.sleep(delay)
            attempt += 1

    def _info(self, loss: str) -> LossInfo:
        if loss not in self._infos:
            self._infos[loss] = self.loss_info(loss)
        return self._infos[loss]

    def _call_loss(self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad) -> LossResult:
        ins, ps = self._drop_defaults(name, inputs, params)
        return self._compute(name, ins, ps, grad, None)

    def _compute(
        self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad, binary: bool | None
    ) -> LossResult:
        req, value_dtype, array = self._loss_request(name, inputs, params, grad, binary)
        return self._loss_result(self._send(req), value_dtype, array)

    def compute(
        self, loss: str, *, grad: Grad = False, binary: bool | None = None, **inputs_and_params: Any
    ) -> LossResult:
        """One loss by name or alias, inputs and params by their catalogue names (None inputs are left out).

        >>> with LossClient("http://127.0.0.1:8000") as c:
        ...     c.compute("l1", input=[1.0, -2.0], target=[0.0, 0.0], reduction="none").value.tolist()
        [1.0, 2.0]
        """
        split = self._split_known(loss, inputs_and_params)
        if split is None:
            split = self._split_with(self._info(loss), inputs_and_params)
        return self._compute(loss, *split, grad, binary)

    def batch(self, calls: Sequence[Call]) -> list[LossResult | LossdError]:
        """Several calls in one request; a failed call's entry is its exception (not raised)."""
        req, expect = self._batch_request(calls)
        return self._batch_result(self._send(req), expect)

    def composite(
        self, inputs: Mapping[str, TensorLike], terms: Sequence[Term], *, grad: Grad = False
    ) -> CompositeResult:
        """A weighted sum of losses over shared named tensors; gradients of the sum per tensor."""
        req, value_dtype = self._composite_request(inputs, terms, grad)
        return self._composite_result(self._send(req), value_dtype)

    def losses(self) -> list[LossInfo]:
        """The catalogue."""
        return self._infos_result(self._send(_Request("GET", "/v1/losses")))

    def loss_info(self, name: str) -> LossInfo:
        """One catalogue entry, by name or alias (:class:`LossNotFound` when unknown)."""
        return self._info_result(self._send(_Request("GET", f"/v1/losses/{quote(name, safe='')}", loss_path=True)))

    def info(self) -> dict[str, Any]:
        """Server version, devices and the limits in force."""
        return self._dict_result(self._send(_Request("GET", "/v1/info")))


class AsyncLossClient(_Core, AsyncLossMethods):
    """The asynchronous twin of :class:`LossClient`: the same arguments and methods, awaited.

    >>> import asyncio, numpy as np
    >>> async def main() -> float:
    ...     async with AsyncLossClient("http://127.0.0.1:8000") as client:
    ...         r = await client.huber(np.array([0.0, 3.0]), np.array([0.0, 0.0]), delta=1.0)
    ...     return r.value
    >>> asyncio.run(main())
    1.25
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float | httpx.Timeout = 60.0,
        retry: Retry | None = None,
        binary: bool | None = None,
        binary_threshold: int = DEFAULT_BINARY_THRESHOLD,
        deadline_ms: int | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        super().__init__(base_url, api_key, retry, binary, binary_threshold, deadline_ms)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits or httpx.Limits())

    async def __aenter__(self) -> AsyncLossClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, req: _Request) -> httpx.Response:
        rid = uuid.uuid4().hex
        started = time.monotonic()
        attempt = 0
        while True:
            try:
                resp = await self._http.request(
                    req.method, req.path, content=req.content, headers=self._attempt_headers(req, rid)
                )
                if 200 <= resp.status_code < 300:
                    return resp
                err: LossdError = from_response(resp, req.loss_path, rid)
            except httpx.TransportError as e:
                err = _transport_error(e)
                err.__cause__ = e
                err.request_id = rid
            delay = self._next_delay(err, attempt, started)
            if delay is None:
                raise err
            await asyncio.sleep(delay)
            attempt += 1

    async def _info(self, loss: str) -> LossInfo:
        if loss not in self._infos:
            self._infos[loss] = await self.loss_info(loss)
        return self._infos[loss]

    async def _call_loss(
        self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad
    ) -> LossResult:
        ins, ps = self._drop_defaults(name, inputs, params)
        return await self._compute(name, ins, ps, grad, None)

    async def _compute(
        self, name: str, inputs: Mapping[str, Any], params: Mapping[str, Any], grad: Grad, binary: bool | None
    ) -> LossResult:
        req, value_dtype, array = self._loss_request(name, inputs, params, grad, binary)
        return self._loss_result(await self._send(req), value_dtype, array)

    async def compute(
        self, loss: str, *, grad: Grad = False, binary: bool | None = None, **inputs_and_params: Any
    ) -> LossResult:
        """See :meth:`LossClient.compute`."""
        split = self._split_known(loss, inputs_and_params)
        if split is None:
            split = self._split_with(await self._info(loss), inputs_and_params)
        return await self._compute(loss, *split, grad, binary)

    async def batch(self, calls: Sequence[Call]) -> list[LossResult | LossdError]:
        """See :meth:`LossClient.batch`."""
        req, expect = self._batch_request(calls)
        return self._batch_result(await self._send(req), expect)

    async def composite(
        self, inputs: Mapping[str, TensorLike], terms: Sequence[Term], *, grad: Grad = False
    ) -> CompositeResult:
        """See :meth:`LossClient.composite`."""
        req, value_dtype = self._composite_request(inputs, terms, grad)
        return self._composite_result(await self._send(req), value_dtype)

    async def losses(self) -> list[LossInfo]:
        """The catalogue."""
        return self._infos_result(await self._send(_Request("GET", "/v1/losses")))

    async def loss_info(self, name: str) -> LossInfo:
        """One catalogue entry, by name or alias."""
        resp = await self._send(_Request("GET", f"/v1/losses/{quote(name, safe='')}", loss_path=True))
        return self._info_result(resp)

    async def info(self) -> dict[str, Any]:
        """Server version, devices and the limits in force."""
        return self._dict_result(await self._send(_Request("GET", "/v1/info")))
