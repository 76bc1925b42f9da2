"""Load scenarios for lossd, the traffic a shared evaluation cluster sees.

User classes (one scenario each; ``Mixed`` runs them all at once, weighted):

- ``Classify``: small cross_entropy / focal calls with gradients over JSON;
- ``Regress``: a large mse call (``LOSSD_LOAD_MSE_ELEMENTS``, default 2,000,000) over safetensors;
- ``Catalogue``: the catalogue endpoints and a call to every available loss with its example;
- ``Batch``: ``/v1/batch`` with 16 small calls, one of them bad on purpose;
- ``BadRequests``: malformed or invalid calls that must get their 4xx, never a 5xx.

In ``Mixed`` the weights (2:1:1:1:1) give each class a user from 6 users on; a regression
user makes far fewer, far larger requests than a classification user. Every response is checked (status, and the value against a float64 reference where there is
one); a 5xx is always a failure. Run with ``tests/load/run.py`` (SLO checks, exit code) or plain
``locust -f tests/load/locustfile.py --host http://127.0.0.1:8000``.
"""

from __future__ import annotations

import math
import os
from typing import Any, ClassVar

import numpy as np
import orjson
import safetensors.numpy
from locust import FastHttpUser, constant, task
from locust.contrib.fasthttp import ResponseContextManager

JSON = {"Content-Type": "application/json"}
ST = {"Content-Type": "application/x-safetensors"}
MSE_ELEMENTS = int(os.environ.get("LOSSD_LOAD_MSE_ELEMENTS", "2000000"))
RNG = np.random.default_rng(7)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True))


def _ce_call(n: int, c: int) -> tuple[bytes, float, np.ndarray, bytes, float]:
    """(cross_entropy body, its reference value and gradient, focal body, its reference value), in float64."""
    x = RNG.standard_normal((n, c), dtype=np.float32)
    y = RNG.integers(0, c, n)
    full = _log_softmax(x)
    logp = full[np.arange(n), y]
    ce = float(-logp.mean())
    ce_grad = np.exp(full)
    ce_grad[np.arange(n), y] -= 1.0
    ce_grad /= n  # d mean(-log softmax(x)[y]) / dx
    focal = float((-((1 - np.exp(logp)) ** 2.0) * logp).mean())
    inputs = {"input": x.tolist(), "target": y.tolist()}
    ce_body = orjson.dumps({"inputs": inputs, "grad": ["input"]})
    focal_body = orjson.dumps({"inputs": inputs, "params": {"gamma": 2.0}, "grad": ["input"]})
    return ce_body, ce, ce_grad, focal_body, focal


CE_BODY, CE_VALUE, CE_GRAD, FOCAL_BODY, FOCAL_VALUE = _ce_call(32, 10)

# Each bad request with the status it must get.
BAD: list[tuple[str, str, bytes, dict[str, str], int]] = [
    ("unknown loss", "/v1/losses/no_such_loss", CE_BODY, JSON, 404),
    ("not JSON", "/v1/losses/cross_entropy", b'{"inputs": {"input": [1, 2', JSON, 400),
    (
        "wrong target length",
        "/v1/losses/cross_entropy",
        b'{"inputs": {"input": [[1.0, 2.0]], "target": [0, 1, 1]}}',
        JSON,
        422,
    ),
    (
        "class index out of range",
        "/v1/losses/cross_entropy",
        b'{"inputs": {"input": [[1.0, 2.0]], "target": [7]}}',
        JSON,
        422,
    ),
    (
        "unknown param",
        "/v1/losses/mse",
        b'{"inputs": {"input": [1.0], "target": [2.0]}, "params": {"gamma": 1}}',
        JSON,
        422,
    ),
    ("unknown input", "/v1/losses/mse", b'{"inputs": {"input": [1.0], "target": [2.0], "extra": [1.0]}}', JSON, 422),
    (
        "grad of a target",
        "/v1/losses/cross_entropy",
        b'{"inputs": {"input": [[1.0, 2.0]], "target": [1]}, "grad": ["target"]}',
        JSON,
        422,
    ),
    (
        "declared shape too large",
        "/v1/losses/mse",
        b'{"inputs": {"input": {"dtype": "float32", "shape": [100000, 100000], "data": []}, "target": [1.0]}}',
        JSON,
        413,
    ),
    (
        "data does not match shape",
        "/v1/losses/mse",
        b'{"inputs": {"input": {"dtype": "float32", "shape": [3], "data": [1, 2]}, "target": [1.0, 2.0, 3.0]}}',
        JSON,
        400,
    ),
    ("unsupported content type", "/v1/losses/mse", b"input=1", {"Content-Type": "text/plain"}, 415),
    ("broken safetensors", "/v1/losses/mse", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}", ST, 400),
    ("batch not a list", "/v1/batch", b'{"calls": 3}', JSON, 422),
    # Inputs that once gave 500s or wrong answers (session 3's audit): each must stay a clean 4xx.
    ("null in numeric data", "/v1/losses/mse", b'{"inputs": {"input": [1.0, null], "target": [0.0, 0.0]}}', JSON, 400),
    (
        "integer past int64",
        "/v1/losses/cross_entropy",
        b'{"inputs": {"input": [[1.0, 2.0]], "target": [18446744073709551516]}}',
        JSON,
        400,
    ),
    (
        "huge dimensions, no data",
        "/v1/losses/mse",
        b'{"inputs": {"input": {"dtype": "float32", "shape": [1099511627776, 1099511627776, 0], "data": []},'
        b' "target": [1.0]}}',
        JSON,
        413,
    ),
    (
        "dtype not a name",
        "/v1/losses/mse",
        b'{"inputs": {"input": {"dtype": [], "shape": [1], "data": [1]}, "target": [1.0]}}',
        JSON,
        400,
    ),
    (
        "string param",
        "/v1/losses/mse",
        b'{"inputs": {"input": [1.0], "target": [2.0]}, "params": {"half": "yes"}}',
        JSON,
        422,
    ),
]


def expect(resp: ResponseContextManager, status: int) -> bool:
    """Mark the response failed unless it has ``status``; the message starts with the status seen."""
    if resp.status_code != status:
        resp.failure(f"HTTP {resp.status_code}, expected {status}: {(resp.text or '')[:200]}")
        return False
    resp.success()  # an expected 4xx is a success; a later check may still fail it
    return True


def check_value(
    resp: ResponseContextManager, reference: float, grad_shape: list[int], grad: np.ndarray | None = None
) -> None:
    if not expect(resp, 200):
        return
    body = orjson.loads(resp.content or b"")
    g = body["grads"]["input"]
    if not math.isclose(body["value"], reference, rel_tol=1e-4, abs_tol=1e-6):
        resp.failure(f"value {body['value']} differs from the reference {reference}")
    elif g["shape"] != grad_shape:
        resp.failure(f"gradient shape {g['shape']}, expected {grad_shape}")
    elif grad is not None and not np.allclose(np.asarray(g["data"]).reshape(grad_shape), grad, rtol=1e-4, atol=1e-6):
        resp.failure("gradient differs from the reference")
    else:
        resp.success()


class LossdUser(FastHttpUser):
    abstract = True
    wait_time = constant(0)  # closed loop; the runner bounds the run by time and request count
    network_timeout = 120.0
    connection_timeout = 10.0

    def post(self, path: str, body: bytes, headers: dict[str, str], name: str | None = None) -> Any:
        # FastHttpSession sends bytes as they are; its annotation names only str and dict.
        return self.client.post(path, data=body, headers=headers, catch_response=True, name=name)  # type: ignore[arg-type]


class Classify(LossdUser):
    weight = 2

    @task(3)
    def cross_entropy(self) -> None:
        with self.post("/v1/losses/cross_entropy", CE_BODY, JSON) as r:
            check_value(r, CE_VALUE, [32, 10], CE_GRAD)

    @task(1)
    def focal(self) -> None:
        with self.post("/v1/losses/focal", FOCAL_BODY, JSON) as r:
            check_value(r, FOCAL_VALUE, [32, 10])


class Regress(LossdUser):
    weight = 1
    body: bytes = b""
    reference = 0.0
    grad_sample: np.ndarray = np.zeros(0)  # the gradient's every 1000th element: the check stays cheap

    def on_start(self) -> None:
        if not Regress.body:
            x = RNG.standard_normal(MSE_ELEMENTS, dtype=np.float32)
            y = RNG.standard_normal(MSE_ELEMENTS, dtype=np.float32)
            Regress.reference = float(((x.astype(np.float64) - y) ** 2).mean())
            Regress.grad_sample = 2 * (x[::1000].astype(np.float64) - y[::1000]) / MSE_ELEMENTS
            Regress.body = safetensors.numpy.save({"input": x, "target": y}, metadata={"grad": '["input"]'})

    @task
    def mse(self) -> None:
        with self.post("/v1/losses/mse", self.body, ST, "/v1/losses/mse [safetensors]") as r:
            if not expect(r, 200):
                return
            out = safetensors.numpy.load(r.content or b"")
            if out["grad.input"].shape != (MSE_ELEMENTS,):
                r.failure(f"gradient shape {out['grad.input'].shape}")
            elif not math.isclose(float(out["value"]), self.reference, rel_tol=1e-4):
                r.failure(f"value {float(out['value'])} differs from the reference {self.reference}")
            elif not np.allclose(out["grad.input"][::1000], self.grad_sample, rtol=1e-4, atol=1e-12):
                r.failure("gradient differs from the reference")


class Catalogue(LossdUser):
    weight = 1
    examples: ClassVar[list[tuple[str, bytes]]] = []

    def on_start(self) -> None:
        if not Catalogue.examples:
            from lossd.examples import EXAMPLES  # the documented example call of each loss

            listing = self.client.get("/v1/losses").json()["losses"]
            Catalogue.examples = [
                (
                    e["name"],
                    orjson.dumps({**EXAMPLES[e["name"]], "grad": any(i["differentiable"] for i in e["inputs"])}),
                )
                for e in listing
                if e["available"] and e["name"] in EXAMPLES
            ]

    @task(1)
    def listing(self) -> None:
        with self.client.get("/v1/losses", catch_response=True) as r:
            if expect(r, 200) and len(orjson.loads(r.content or b"")["losses"]) < len(self.examples):
                r.failure("the catalogue shrank")

    @task(8)
    def example_call(self) -> None:
        name, body = self.examples[RNG.integers(len(self.examples))]
        with self.post(f"/v1/losses/{name}", body, JSON, "/v1/losses/[catalogue]") as r:
            if expect(r, 200) and "value" not in orjson.loads(r.content or b""):
                r.failure(f"{name}: no value in the response")


class Batch(LossdUser):
    weight = 1
    calls = 16
    body = orjson.dumps(
        {
            "calls": [{"loss": "cross_entropy", **orjson.loads(CE_BODY)}] * (calls - 1)
            + [{"loss": "cross_entropy", "inputs": {"input": [[1.0, 2.0]], "target": [5]}}]
        }
    )

    @task
    def batch(self) -> None:
        with self.post("/v1/batch", self.body, JSON) as r:
            if not expect(r, 200):
                return
            results: list[dict[str, Any]] = orjson.loads(r.content or b"")["results"]
            good, bad = results[:-1], results[-1]
            if len(results) != self.calls or any(not math.isclose(g["value"], CE_VALUE, rel_tol=1e-4) for g in good):
                r.failure("batch results differ from the reference")
            elif bad.get("error", {}).get("status") != 422:
                r.failure(f"the bad call of the batch got {bad!r:.200}, expected a 422 error")


class BadRequests(LossdUser):
    weight = 1

    @task
    def bad(self) -> None:
        label, path, body, headers, status = BAD[RNG.integers(len(BAD))]
        with self.post(path, body, headers, f"bad: {label}") as r:
            if expect(r, status) and "application/problem+json" not in r.headers.get("content-type", ""):
                r.failure("an error without application/problem+json")


SCENARIOS: dict[str, list[type[LossdUser]]] = {
    "classify": [Classify],
    "regress": [Regress],
    "catalogue": [Catalogue],
    "batch": [Batch],
    "bad": [BadRequests],
    "mixed": [Classify, Regress, Catalogue, Batch, BadRequests],
}
