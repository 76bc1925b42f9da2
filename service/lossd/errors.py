"""Problem details (RFC 9457): the one error type the HTTP layer turns into responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    408: "Request Timeout",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


MAX_ERRORS = 50


class Problem(Exception):
    """An error answer: status, a human ``detail``, optional field ``errors`` and headers."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        type_: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = list(errors[:MAX_ERRORS]) if errors else None
        if errors and len(errors) > MAX_ERRORS:
            # A body with 20,000 unknown params should not get a megabyte of errors back.
            self.detail = f"{detail} (the first {MAX_ERRORS} of {len(errors)} errors are listed)"
        self.headers = headers or {}
        self.type = type_ or "about:blank"  # RFC 9457: the title is then the status phrase

    @property
    def title(self) -> str:
        return TITLES.get(self.status, "Error")

    def within(self, prefix: Sequence[str | int]) -> Problem:
        """The same problem about a part of something larger (a call of a batch): locations prefixed."""
        where = ".".join(str(p) for p in prefix)
        errors = [{**e, "loc": [*prefix, *e["loc"]]} for e in self.errors or []]
        return Problem(self.status, f"{where}: {self.detail}", errors=errors, headers=self.headers, type_=self.type)

    def bare(self) -> Problem:
        """This problem without its traceback and context, to be kept (as a batch's failed call)."""
        self.__traceback__ = self.__context__ = self.__cause__ = None
        return self

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "title": self.title, "status": self.status, "detail": self.detail}
        if self.errors:
            out["errors"] = self.errors
        retry = self.headers.get("Retry-After")
        if retry is not None and retry.isdigit():
            # Also in the body (an RFC 9457 extension member): a batch's failed call has no headers of
            # its own, and a device out of memory (retry) must read differently from a loss the
            # server is not configured for (no retry).
            out["retry_after"] = int(retry)
        return out


def field_error(loc: Sequence[str | int], msg: str, status: int = 422) -> Problem:
    return Problem(status, f"{'.'.join(str(p) for p in loc)}: {msg}", errors=[{"loc": list(loc), "msg": msg}])
