"""One exception hierarchy, mapped from the server's problem+json (RFC 9457) answers.

Every error carries ``status`` (None for transport failures), ``detail``, ``request_id``
(the ``X-Request-ID`` that identifies the call in the server's log: the answer's, else the one the
client sent) and the problem body. 503 and 504 are lossd's (:class:`Unavailable`,
:class:`DeadlineExceeded`) only when they come as ``application/problem+json``; a proxy's are
:class:`ServerError`.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import httpx


@dataclass(frozen=True)
class FieldError:
    """One entry of a problem's ``errors``: where (``("inputs", "target")``) and what."""

    loc: tuple[str | int, ...]
    msg: str


class LossdError(Exception):
    """Base of every error this client raises."""

    def __init__(
        self,
        detail: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        problem: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status}: {detail}" if status is not None else detail)
        self.status = status
        self.detail = detail
        self.request_id = request_id
        self.problem = problem or {}
        self.retry_after = retry_after
        self.errors = _field_errors(self.problem.get("errors"))

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))


def _field_errors(raw: Any) -> list[FieldError]:
    """A problem's ``errors``; entries that are not ``{"loc": [...], "msg": ...}`` objects are skipped."""
    out: list[FieldError] = []
    for e in raw if isinstance(raw, list) else ():
        if not isinstance(e, dict):
            continue
        loc = e.get("loc", ())
        parts = loc if isinstance(loc, list | tuple) else [loc]
        out.append(FieldError(tuple(x if isinstance(x, str | int) else str(x) for x in parts), str(e.get("msg", ""))))
    return out


class TransportError(LossdError):
    """No HTTP answer: the connection failed or was dropped."""


class RequestTimeout(TransportError):
    """The HTTP client's own timeout passed (see ``timeout``)."""


class BadRequest(LossdError):
    """400: the body is not valid JSON or safetensors, or a tensor's data does not match its shape."""


class AuthError(LossdError):
    """401: a key is required and was missing or wrong; base of :class:`Forbidden`."""


class Forbidden(AuthError):
    """403: the key may not call this loss."""


class NotFound(LossdError):
    """404 on a path that is not a loss."""


class LossNotFound(NotFound):
    """404: unknown loss; ``detail`` names the closest catalogue names."""


class BodyTimeout(LossdError):
    """408: the request body did not reach the server within its body timeout (a stalled upload)."""


class PayloadTooLarge(LossdError):
    """413: the body, or a tensor's element count, is over the server's limit."""


class UnsupportedMediaType(LossdError):
    """415."""


class ValidationError(LossdError):
    """422: wrong shapes, dtypes, params or indices; ``errors`` lists the fields."""


class RateLimited(LossdError):
    """429: over a rate limit or quota; ``retry_after`` in seconds."""


class Unavailable(LossdError):
    """lossd's 503 without Retry-After: the loss needs server configuration it lacks (not retried).

    A failed call of a batch has no headers: its 503 is an ``Unavailable`` unless its problem
    carries a ``retry_after`` member (then :class:`Overloaded`); ``except Unavailable`` catches both.
    """


class Overloaded(Unavailable):
    """503 with Retry-After: not ready, busy (calls or request bytes in flight) or out of device memory; retried."""


class DeadlineExceeded(LossdError):
    """lossd's 504: the call's deadline passed before it ran."""


class ServerError(LossdError):
    """Any other 5xx, and 503 / 504 that are not lossd's problem+json (a proxy's, say).

    A proxy's 503 (no healthy upstream, maintenance) is retried like lossd's 503 with Retry-After,
    honouring its Retry-After if any, else with backoff; a proxy's 504 is not (the call may still run).
    """


class UnexpectedResponse(ServerError):
    """An answer that is not lossd's: a redirect (``detail`` names its Location), or a 2xx whose body is
    not a valid result (a proxy's page, a truncated body); ``problem["body"]`` holds the start of the body."""


_BY_STATUS: dict[int, type[LossdError]] = {
    400: BadRequest,
    401: AuthError,
    403: Forbidden,
    408: BodyTimeout,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    422: ValidationError,
    429: RateLimited,
    504: DeadlineExceeded,
}


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP date."""
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import datetime as dt

        return max(0.0, (parsedate_to_datetime(value) - dt.datetime.now(dt.UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


PROBLEM_JSON = "application/problem+json"


def error_class(status: int, retry_after: float | None, loss_path: bool, lossd: bool = True) -> type[LossdError]:
    """The exception for an error status; ``lossd``: the answer is lossd's own problem+json (not a proxy's)."""
    if 300 <= status < 400:
        return UnexpectedResponse
    if status == 404:
        return LossNotFound if loss_path and lossd else NotFound
    if status in (503, 504) and not lossd:
        return ServerError
    if status == 503:
        return Overloaded if retry_after is not None else Unavailable
    if status in _BY_STATUS:
        return _BY_STATUS[status]
    return ServerError if status >= 500 else LossdError


def from_problem(
    problem: dict[str, Any],
    *,
    status: int | None = None,
    request_id: str | None = None,
    retry_after: float | None = None,
) -> LossdError:
    """A problem body (a whole response's, or one batch result's ``error``) -> its exception."""
    st = int(problem.get("status", status or 500))
    if retry_after is None and isinstance(problem.get("retry_after"), int | float):
        retry_after = max(0.0, float(problem["retry_after"]))
    cls = error_class(st, retry_after, loss_path=True)
    return cls(
        str(problem.get("detail", problem.get("title", ""))),
        status=st,
        request_id=request_id,
        problem=problem,
        retry_after=retry_after,
    )


def _snippet(resp: httpx.Response) -> str:
    return resp.content[:500].decode("utf-8", "replace")


def from_response(resp: httpx.Response, loss_path: bool, request_id: str | None = None) -> LossdError:
    """A non-2xx response -> its exception; ``request_id``: the id sent, when the response has none."""
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    rid = resp.headers.get("x-request-id") or request_id
    status = resp.status_code
    if 300 <= status < 400:
        where = resp.headers.get("location", "(no Location)")
        detail = f"unexpected redirect to {where}: lossd does not redirect (check base_url)"
        return UnexpectedResponse(detail, status=status, request_id=rid, problem={"body": _snippet(resp)})
    lossd = resp.headers.get("content-type", "").startswith(PROBLEM_JSON)
    try:
        problem = resp.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"status": status, "detail": _snippet(resp) or resp.reason_phrase}
    cls = error_class(status, retry_after, loss_path, lossd)
    detail = str(problem.get("detail", problem.get("title", resp.reason_phrase)))
    return cls(detail, status=status, request_id=rid, problem=problem, retry_after=retry_after)


def unexpected_response(resp: httpx.Response, why: str, request_id: str | None = None) -> UnexpectedResponse:
    """A 2xx response whose body is not a valid result."""
    ctype = resp.headers.get("content-type", "no content type")
    return UnexpectedResponse(
        f"unexpected response ({ctype}): {why}",
        status=resp.status_code,
        request_id=resp.headers.get("x-request-id") or request_id,
        problem={"body": _snippet(resp)},
    )
