"""lossd_client: a typed client for lossd, the loss-computation service. torch is optional.

>>> import numpy as np
>>> from lossd_client import LossClient
>>> with LossClient("http://127.0.0.1:8000") as client:
...     r = client.cross_entropy(np.array([[2.0, 0.0], [0.0, 2.0]]), np.array([0, 1]))
>>> round(r.value, 6)  # -log(e^2 / (e^2 + 1)), in float64 because the logits are float64
0.126928
"""

from lossd_client.client import AsyncLossClient, LossClient
from lossd_client.errors import (
    AuthError,
    BadRequest,
    BodyTimeout,
    DeadlineExceeded,
    FieldError,
    Forbidden,
    LossdError,
    LossNotFound,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServerError,
    TransportError,
    Unavailable,
    UnexpectedResponse,
    UnsupportedMediaType,
    ValidationError,
)
from lossd_client.models import (
    NO_RETRY,
    Call,
    CompositeResult,
    CompositeTermValue,
    InputInfo,
    LossInfo,
    LossResult,
    Retry,
    Term,
    TorchResult,
)

__version__ = "0.1.0"

__all__ = [
    "NO_RETRY",
    "AsyncLossClient",
    "AuthError",
    "BadRequest",
    "BodyTimeout",
    "Call",
    "CompositeResult",
    "CompositeTermValue",
    "DeadlineExceeded",
    "FieldError",
    "Forbidden",
    "InputInfo",
    "LossClient",
    "LossInfo",
    "LossNotFound",
    "LossResult",
    "LossdError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "Retry",
    "ServerError",
    "Term",
    "TorchResult",
    "TransportError",
    "Unavailable",
    "UnexpectedResponse",
    "UnsupportedMediaType",
    "ValidationError",
]
