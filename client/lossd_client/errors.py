"""One exception hierarchy, mapped from the server's problem+json (RFC 9457) answers.

Every error carries ``status`` (None for transport failures), ``detail``, ``request_id``
(the ``X-Request-ID`` that identifies the call in the server's log) and the problem body.
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
        self.errors = [
            FieldError(tuple(e.get("loc", ())), str(e.get("msg", ""))) for e in self.problem.get("errors") or []
        ]

    @property
    def title(self) -> str:
        return str(self.problem.get("title", ""))


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
    """503 without Retry-After: the loss needs server configuration it lacks (not retried)."""


class Overloaded(Unavailable):
    """503 with Retry-After: not ready, busy (calls or request bytes in flight) or out of device memory; retried."""


class DeadlineExceeded(LossdError):
    """504: the call's deadline passed before it ran."""


class ServerError(LossdError):
    """Any other 5xx."""


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


def error_class(status: int, retry_after: float | None, loss_path: bool) -> type[LossdError]:
    if status == 404:
        return LossNotFound if loss_path else NotFound
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
    cls = error_class(st, retry_after, loss_path=True)
    return cls(
        str(problem.get("detail", problem.get("title", ""))),
        status=st,
        request_id=request_id,
        problem=problem,
        retry_after=retry_after,
    )


def from_response(resp: httpx.Response, loss_path: bool) -> LossdError:
    retry_after = parse_retry_after(resp.headers.get("retry-after"))
    rid = resp.headers.get("x-request-id")
    try:
        problem = resp.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"status": resp.status_code, "detail": resp.text[:500] or resp.reason_phrase}
    cls = error_class(resp.status_code, retry_after, loss_path)
    detail = str(problem.get("detail", problem.get("title", resp.reason_phrase)))
    return cls(detail, status=resp.status_code, request_id=rid, problem=problem, retry_after=retry_after)
