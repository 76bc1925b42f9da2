"""The client where torch is not installed (.ci/client-notorch.sh runs this file in such a venv).

It imports nothing but the client, numpy and the standard library; in the main venv it runs too,
against the session's server, minus the checks that need torch to be absent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

import lossd_client
from lossd_client import AsyncLossClient, Call, LossClient, LossNotFound, Term, ValidationError

NO_TORCH = os.environ.get("LOSSD_CLIENT_NOTORCH") == "1"


def check_without_torch(url: str) -> None:
    """Calls work, torch is never imported, and asking for tensors says why it cannot."""
    with LossClient(url) as c:
        r = c.mse(np.ones(3), np.zeros(3), grad=True)
        # 0-d inputs, numpy params and one gradient by name: the paths that look for torch tensors
        f = c.focal(np.array([2.0, 0.5, -1.0]), np.int64(0), gamma=np.float32(1.0), alpha=np.ones(3), grad="input")
        h = c.huber(np.float32(3.0), 0.5, grad=True)
    assert r.value == 1.0 and np.allclose(r.grads["input"], 2 / 3)  # d mean((x-t)^2)/dx = 2(x-t)/n
    assert f.grads["input"].shape == (3,) and f.dtypes["value"] == "float64"
    assert h.scalar == 2.0 and h.grads["input"].shape == () and h.grads["target"].dtype == np.float32
    assert sys.modules.get("torch") is None
    with pytest.raises(ImportError):
        r.to_torch()


def test_torch_absent_and_never_imported(url: str) -> None:
    if NO_TORCH:  # the venv of .ci/client-notorch.sh: torch is not installed at all
        assert importlib.util.find_spec("torch") is None
        assert lossd_client.__file__ and lossd_client.__file__.startswith(sys.prefix)  # the installed package
        check_without_torch(url)
        return
    # The main venv has torch: hide it from a fresh interpreter and run the same checks there.
    code = (
        "import sys; sys.modules['torch'] = None; "
        f"sys.path.insert(0, {os.path.dirname(__file__)!r}); "
        f"import test_notorch; test_notorch.check_without_torch({url!r})"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32, np.int64])
@pytest.mark.parametrize("binary", [False, True])
def test_mse_dtypes_both_transports(url: str, dtype: type, binary: bool) -> None:
    x: np.ndarray = np.array([[1, 2, 3], [4, 5, 6]], dtype=dtype)
    t: np.ndarray = np.array([[0, 2, 5], [4, 1, 6]], dtype=dtype)
    d = x.astype(np.float64) - t.astype(np.float64)
    with LossClient(url, binary=binary) as c:
        r = c.mse(x, t, grad=["input"] if np.dtype(dtype).kind == "f" else False)
    assert r.value == pytest.approx(float(np.mean(d * d)), rel=1e-6)
    if np.dtype(dtype).kind == "f":
        assert r.grads["input"].dtype == dtype
        np.testing.assert_allclose(r.grads["input"], 2 * d / d.size, rtol=1e-3)


def test_nonfinite_and_errors(url: str) -> None:
    with LossClient(url) as c:
        r = c.l1(np.array([np.nan, np.inf, 1.0], np.float32), [0.0, 0.0, 0.0], reduction="none")
        with pytest.raises(LossNotFound):
            c.compute("msee", input=[1.0], target=[1.0])
        with pytest.raises(ValidationError) as e:
            c.cross_entropy([[0.1, 0.2]], [3])
    v = r.value
    assert isinstance(v, np.ndarray) and np.isnan(v[0]) and v[1] == np.inf and v[2] == 1.0
    assert e.value.errors and e.value.errors[0].loc == ("inputs", "target")


def test_async_batch_composite_catalogue(url: str) -> None:
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    target = np.array([0, 2])
    lse = np.log(np.exp(logits).sum(1))
    ce = float(np.mean(lse - logits[np.arange(2), target]))

    async def main() -> tuple[float, float, float, int]:
        async with AsyncLossClient(url) as c:
            one = await c.cross_entropy(logits, target)
            (b,) = await c.batch([Call("cross_entropy", {"input": logits, "target": target})])
            comp = await c.composite(
                {"x": logits, "y": target}, [Term("cross_entropy", {"input": "x", "target": "y"}, 2.0)], grad=True
            )
            infos = await c.losses()
        assert not isinstance(b, Exception) and isinstance(comp.value, float)
        return float(one.value), float(b.value), float(comp.value), len(infos)

    one, batched, comp, n = asyncio.run(main())
    assert one == pytest.approx(ce, rel=1e-12) and batched == one
    assert comp == pytest.approx(2 * ce, rel=1e-12) and n >= 41
