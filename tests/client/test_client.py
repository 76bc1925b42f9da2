"""LossClient and AsyncLossClient against a real lossd: values, gradients, dtypes, transports, multi-call endpoints.

References are float64 numpy formulas or torch.nn.functional, never the client.
"""

from __future__ import annotations

import asyncio
import doctest
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clientutil import DOC_URL, README

import lossd_client
from lossd_client import AsyncLossClient, Call, LossClient, LossInfo, LossNotFound, Term, Unavailable, ValidationError
from lossd_client._generated import LOSSES

RNG = np.random.default_rng(7)


def mse_ref(x: np.ndarray, t: np.ndarray) -> tuple[float, np.ndarray]:
    d = x.astype(np.float64) - t.astype(np.float64)
    return float(np.mean(d * d)), 2.0 * d / d.size


def content_types(client: LossClient | AsyncLossClient) -> list[str]:
    """Record each request's Content-Type (the transport the client picked)."""
    seen: list[str] = []

    def hook(request: httpx.Request) -> None:
        seen.append(request.headers.get("content-type", ""))

    async def ahook(request: httpx.Request) -> None:
        hook(request)

    client._http.event_hooks["request"] = [ahook if isinstance(client, AsyncLossClient) else hook]
    return seen


# -- compute: values, gradients, dtypes ---------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtypes_value_and_grad(url: str, dtype: Any) -> None:
    x = RNG.standard_normal((4, 5)).astype(dtype)
    t = RNG.standard_normal((4, 5)).astype(dtype)
    with LossClient(url) as c:
        r = c.mse(x, t, grad=["input"])
    ref, gref = mse_ref(x, t)
    tol = 1e-12 if dtype == np.float64 else 1e-5
    assert r.value == pytest.approx(ref, rel=tol)
    assert r.grads["input"].dtype == dtype  # gradients come back in the input's dtype
    np.testing.assert_allclose(r.grads["input"], gref, rtol=1e-3 if dtype == np.float16 else 1e-5)
    assert r.dtypes["value"] == ("float64" if dtype == np.float64 else "float32")


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8])
def test_int_inputs(url: str, dtype: Any) -> None:
    logits = RNG.standard_normal((6, 4)).astype(np.float32)
    target = np.array([0, 3, 1, 2, 2, 0], dtype=dtype)
    with LossClient(url) as c:
        ce = c.cross_entropy(logits, target)
        m = c.mse(np.array([1, 2, 3], dtype=dtype), np.array([1, 1, 1], dtype=dtype))
    ref = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(target.astype(np.int64))).item()
    assert ce.value == pytest.approx(ref, rel=1e-6)
    assert m.value == pytest.approx(5.0 / 3.0, rel=1e-6)


def test_lists_scalars_and_reduction_none(url: str) -> None:
    with LossClient(url) as c:
        r = c.l1([1.0, -2.0, 3.5], [0, 0, 0], reduction="none", grad=True)
        s = c.compute("huber", input=3.0, target=0.0, delta=2.0)
    assert isinstance(r.value, np.ndarray) and r.value.tolist() == [1.0, 2.0, 3.5]
    # with reduction "none" the gradient is that of the sum of the values
    assert r.grads["input"].tolist() == [1.0, -1.0, 1.0] and r.grads["target"].tolist() == [-1.0, 1.0, -1.0]
    assert isinstance(s.value, float) and s.value == pytest.approx(2.0 * (3.0 - 1.0))  # delta*(|r| - delta/2)


def test_focal_keywords_and_alias(url: str) -> None:
    logits = RNG.standard_normal((5, 3)).astype(np.float64)
    target = np.array([0, 2, 1, 1, 0])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pt = p[np.arange(5), target]
    alpha = [0.2, 0.3, 0.5]
    ref = float(np.mean(-np.array(alpha)[target] * (1 - pt) ** 1.5 * np.log(pt)))
    with LossClient(url) as c:
        r = c.focal(logits, target, gamma=1.5, alpha=alpha)
        a = c.compute("softmax_focal", input=logits, target=target, gamma=1.5, alpha=alpha)
    assert r.value == pytest.approx(ref, rel=1e-10)
    assert a.loss == "focal" and a.value == r.value


@pytest.mark.parametrize("binary", [False, True])
def test_nonfinite_round_trip(url: str, binary: bool) -> None:
    x = np.array([np.nan, 1.0, -np.inf, 2.0], dtype=np.float32)
    t = np.array([0.0, np.inf, 0.0, 1.0], dtype=np.float32)
    with LossClient(url, binary=binary) as c:
        seen = content_types(c)
        r = c.mse(x, t, reduction="none", grad=["input"])
        m = c.mse(x, t)
    assert seen[0] == ("application/x-safetensors" if binary else "application/json")
    v = r.value
    assert isinstance(v, np.ndarray)
    assert np.isnan(v[0]) and v[1] == np.inf and v[2] == np.inf and v[3] == 1.0
    g = r.grads["input"]
    assert np.isnan(g[0]) and g[1] == -np.inf and g[2] == -np.inf and g[3] == 2.0
    assert isinstance(m.value, float) and np.isnan(m.value)


@pytest.mark.parametrize("binary", [False, True])
def test_nonfinite_params_travel_as_json_allows(url: str, binary: bool) -> None:
    """p=math.inf (the max norm) cannot be a JSON number: the client sends it as "Infinity"."""
    a, q, n = (RNG.standard_normal((5, 4)).astype(np.float32) for _ in range(3))
    ref = F.triplet_margin_loss(*(torch.from_numpy(v) for v in (a, q, n)), p=float("inf"))
    with LossClient(url, binary=binary) as c:
        r = c.triplet_margin(a, q, n, p=float("inf"))
        spelled = c.triplet_margin(a, q, n, p="Infinity")  # as the catalogue's schema allows it
        schema = c.loss_info("triplet_margin").params["properties"]["p"]
        (b,) = c.batch([Call("triplet_margin", {"anchor": a, "positive": q, "negative": n}, params={"p": np.inf})])
        comp = c.composite(
            {"a": a, "q": q, "n": n},
            [Term("triplet_margin", {"anchor": "a", "positive": "q", "negative": "n"}, params={"p": float("inf")})],
        )
        with pytest.raises(ValidationError) as e:
            c.huber(a, q, delta=float("inf"))  # huber's delta must be finite: the server says so
    # The same bits for both spellings; the reference's within an ulp (the server may be on a GPU).
    assert r.value == spelled.value == b.value == pytest.approx(ref.item(), rel=1e-6)
    assert {"const": "Infinity"} in schema["anyOf"]
    assert isinstance(b, lossd_client.LossResult)
    assert comp.value == pytest.approx(ref.item(), rel=1e-6)
    assert "finite" in str(e.value)


@pytest.mark.parametrize("binary", [False, True])
def test_nonfinite_terms_round_trip(url: str, binary: bool) -> None:
    """centernet's terms: NaN and infinity come back as floats over JSON and over safetensors alike."""
    hm = np.full((1, 1, 4, 4), -3.0, dtype=np.float32)
    hm[0, 0, 0, 0] = np.nan
    hm_target = np.zeros((1, 1, 4, 4), dtype=np.float32)
    hm_target[0, 0, 1, 1] = 1.0
    wh = np.zeros((1, 2, 4, 4), dtype=np.float32)
    wh[0, 0, 1, 1] = np.inf
    with LossClient(url, binary=binary) as c:
        r = c.compute(
            "centernet",
            hm=hm,
            hm_target=hm_target,
            wh=wh,
            wh_target=np.zeros((1, 1, 2), dtype=np.float32),
            offset=np.zeros((1, 2, 4, 4), dtype=np.float32),
            offset_target=np.zeros((1, 1, 2), dtype=np.float32),
            ind=np.array([[5]]),
            mask=np.array([[1.0]], dtype=np.float32),
        )
    assert r.terms is not None
    assert np.isnan(r.terms["hm"]) and r.terms["wh"] == np.inf and r.terms["offset"] == 0.0


def test_64mb_tensor_goes_binary(url: str) -> None:
    n = 16 * 1024 * 1024  # 64 MB of float32
    x = RNG.standard_normal(n, dtype=np.float32)
    t = np.zeros(n, dtype=np.float32)
    with LossClient(url) as c:
        seen = content_types(c)
        r = c.mse(x, t, grad=["input"])
    assert seen == ["application/x-safetensors"]
    assert r.value == pytest.approx(float(np.mean(x.astype(np.float64) ** 2)), rel=1e-5)
    g = r.grads["input"]
    assert g.shape == (n,) and g.dtype == np.float32 and g.flags.writeable
    np.testing.assert_allclose(g[:1000], 2.0 * x[:1000] / n, rtol=1e-6)


def test_transport_threshold_and_text(url: str) -> None:
    small, big = np.ones(10, np.float32), np.ones(100_000, np.float32)
    with LossClient(url, binary_threshold=100_000) as c:
        seen = content_types(c)
        c.mse(small, small)
        c.mse(big, big)
        c.mse(big, big, reduction="sum")
        # text cannot travel in safetensors: JSON in, binary answer requested
        r = c.compute("edit_distance", hypothesis=["kitten"], truth=["sitting"], binary=True)
    assert seen == ["application/json", "application/x-safetensors", "application/x-safetensors", "application/json"]
    assert r.value == pytest.approx(3.0 / 7.0, rel=1e-6)


def test_torch_tensors_in_and_out(url: str) -> None:
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64)
    with LossClient(url) as c, LossClient(url, binary=True) as cb:
        r = c.smooth_l1(x, t, beta=0.5, grad=["input"])
        b = c.mse(x.detach().to(torch.bfloat16), t.to(torch.bfloat16), grad=["input"])
        b_bin = cb.mse(x.detach().to(torch.bfloat16), t.to(torch.bfloat16), grad=["input"])
    ref = F.smooth_l1_loss(x, t, beta=0.5)
    (gref,) = torch.autograd.grad(ref, x)
    value, grads = r.to_torch()
    assert value.dtype == torch.float64 and value.item() == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(grads["input"], gref)
    xb, tb = x.detach().to(torch.bfloat16).double(), t.to(torch.bfloat16).double()
    for res in (b, b_bin):
        tv, tg = res.to_torch()
        assert tg["input"].dtype == torch.bfloat16 and tv.dtype == torch.float32
        assert tv.item() == pytest.approx(F.mse_loss(xb, tb).item(), rel=1e-5)
        torch.testing.assert_close(tg["input"].double(), (2 * (xb - tb) / xb.numel()).to(torch.bfloat16).double())


def test_torch_is_never_imported_by_the_client(url: str) -> None:
    code = (
        "import sys, numpy as np, asyncio\n"
        "from lossd_client import LossClient, AsyncLossClient\n"
        f"c = LossClient({url!r}); r = c.mse(np.ones(3), np.zeros(3), grad=True); c.close()\n"
        f"async def f():\n    async with AsyncLossClient({url!r}) as a: return await a.l1([1.0], [0.0])\n"
        "assert asyncio.run(f()).value == 1.0 and r.value == 1.0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    env_path = str(Path(lossd_client.__file__).resolve().parents[1])
    # The caller's path stays (a machine may hold pydantic and httpx there), behind the client's own.
    path = os.pathsep.join(p for p in (env_path, os.environ.get("PYTHONPATH")) if p)
    out = subprocess.run([sys.executable, "-c", code], env={"PYTHONPATH": path}, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- batch, composite, catalogue ----------------------------------------------------------


def test_batch_mixed_results(url: str) -> None:
    x = RNG.standard_normal(8).astype(np.float32)
    calls = [
        Call("mse", {"input": x, "target": np.zeros(8, np.float32)}, grad=["input"]),
        Call("no_such_loss", {"input": x}),
        Call("cross_entropy", {"input": [[1.0, 2.0]], "target": [5]}),
        Call("l1", {"input": [1.0, -1.0], "target": [0.0, 0.0]}, {"reduction": "sum"}),
    ]
    for threshold in (1 << 20, 0):  # data form, then base64 form both ways
        with LossClient(url, binary_threshold=threshold) as c:
            res = c.batch(calls)
        assert len(res) == 4
        ok, missing, bad, l1 = res
        assert not isinstance(ok, Exception) and ok.value == pytest.approx(mse_ref(x, np.zeros(8))[0], rel=1e-6)
        np.testing.assert_allclose(ok.grads["input"], 2 * x / 8, rtol=1e-6)
        assert isinstance(missing, LossNotFound) and missing.status == 404
        assert isinstance(bad, ValidationError) and bad.errors and bad.errors[0].loc[-1] == "target"
        assert not isinstance(l1, Exception) and l1.value == 2.0


def test_composite(url: str) -> None:
    logits = RNG.standard_normal((2, 3, 4, 4)).astype(np.float64)
    mask = RNG.integers(0, 3, (2, 4, 4))
    terms = [
        Term("dice", {"input": "logits", "target": "mask"}, 1.0, {"activation": "softmax"}),
        Term("cross_entropy", {"input": "logits", "target": "mask"}, 0.5),
    ]
    with LossClient(url) as c:
        r = c.composite({"logits": logits, "mask": mask}, terms, grad=["logits"])
    lt = torch.from_numpy(logits).requires_grad_(True)
    p = lt.softmax(1)
    onehot = F.one_hot(torch.from_numpy(mask), 3).permute(0, 3, 1, 2).double()
    dice = 1 - 2 * (p * onehot).sum() / (p.sum() + onehot.sum() + 1e-5)
    ce = F.cross_entropy(lt, torch.from_numpy(mask))
    total = dice + 0.5 * ce
    (g,) = torch.autograd.grad(total, lt)
    assert [t.loss for t in r.terms] == ["dice", "cross_entropy"] and r.terms[1].weight == 0.5
    assert r.terms[0].value == pytest.approx(dice.item(), rel=1e-9)
    assert r.terms[1].value == pytest.approx(ce.item(), rel=1e-9)
    assert r.value == pytest.approx(total.item(), rel=1e-9)
    np.testing.assert_allclose(r.grads["logits"], g.numpy(), rtol=1e-7, atol=1e-12)


def test_catalogue(url: str) -> None:
    with LossClient(url) as c:
        infos = c.losses()
        focal = c.loss_info("softmax_focal")
        info = c.info()
        with pytest.raises(LossNotFound) as e:
            c.loss_info("focall")
    assert all(isinstance(i, LossInfo) for i in infos) and len(infos) >= 41
    assert focal.name == "focal" and "softmax_focal" in focal.aliases
    assert [i.name for i in focal.inputs] == ["input", "target"] and focal.inputs[0].differentiable
    assert focal.param_defaults["gamma"] == 2.0 and focal.param_defaults["alpha"] is None
    assert info["losses"] == len(infos) and "limits" in info
    assert "focal" in e.value.detail


def test_compute_unknown_keyword_asks_the_server(url: str) -> None:
    with LossClient(url) as c, pytest.raises(ValidationError) as e:
        c.compute("focal", input=[[1.0, 2.0]], target=[0], gamma=1.0, gama=2.0)
    assert e.value.status == 422 and any(err.loc[-1] == "gama" for err in e.value.errors)
    assert e.value.request_id


def test_context_managers_close_the_pool(url: str) -> None:
    with LossClient(url) as c:
        c.mse([1.0], [0.0])
    assert c._http.is_closed

    async def run() -> AsyncLossClient:
        async with AsyncLossClient(url) as a:
            await a.mse([1.0], [0.0])
        return a

    assert asyncio.run(run())._http.is_closed


# -- every generated method, sync and async, against the server's own answer --------------


def _examples() -> dict[str, dict[str, Any]]:
    from lossd.examples import EXAMPLES

    return EXAMPLES


def _positional(name: str, ex: dict[str, Any]) -> list[Any]:
    names = LOSSES[name].inputs
    return [ex["inputs"].get(n) for n in names]


def test_every_loss_method_sync(url: str) -> None:
    examples = _examples()
    assert set(examples) == set(LOSSES), "an example per loss (lossd.examples) is needed to test its method"
    raw = httpx.Client(base_url=url, timeout=30)
    with LossClient(url) as c:
        for name, ex in sorted(examples.items()):
            method = getattr(c, name)
            want = raw.post(f"/v1/losses/{name}", json={"inputs": ex["inputs"], "params": ex.get("params", {})})
            if want.status_code == 503:
                with pytest.raises(Unavailable):
                    method(*_positional(name, ex), **ex.get("params", {}))
                continue
            assert want.status_code == 200, (name, want.text)
            got = method(*_positional(name, ex), **ex.get("params", {}))
            expect = want.json()["value"]
            assert got.loss == name
            np.testing.assert_allclose(
                got.value, np.asarray(expect["data"] if isinstance(expect, dict) else expect), rtol=1e-6, err_msg=name
            )


@pytest.mark.asyncio
async def test_every_loss_method_async(url: str) -> None:
    examples = _examples()
    async with AsyncLossClient(url) as c, httpx.AsyncClient(base_url=url, timeout=30) as raw:
        for name, ex in sorted(examples.items()):
            want = await raw.post(f"/v1/losses/{name}", json={"inputs": ex["inputs"], "params": ex.get("params", {})})
            call = getattr(c, name)(*_positional(name, ex), **ex.get("params", {}))
            if want.status_code == 503:
                with pytest.raises(Unavailable):
                    await call
                continue
            got = await call
            expect = want.json()["value"]
            np.testing.assert_allclose(
                got.value, np.asarray(expect["data"] if isinstance(expect, dict) else expect), rtol=1e-6, err_msg=name
            )


@pytest.mark.asyncio
async def test_async_public_methods(url: str) -> None:
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    t = np.array([0, 3, 1])
    async with AsyncLossClient(url) as c:
        r, alias, infos, one, info = await asyncio.gather(
            c.cross_entropy(x, t, label_smoothing=0.1, grad=True),
            c.compute("softmax_cross_entropy", input=x, target=t, label_smoothing=0.1),
            c.losses(),
            c.loss_info("l2"),
            c.info(),
        )
        batch = await c.batch([Call("l1", {"input": [2.0], "target": [0.0]}), Call("nope", {"input": [1.0]})])
        comp = await c.composite(
            {"a": [1.0, 2.0], "b": [0.0, 0.0]}, [Term("mse", {"input": "a", "target": "b"}, 2.0)], grad=True
        )
        big = await c.mse(np.ones(200_000, np.float32), np.zeros(200_000, np.float32), grad=["input"], reduction="sum")
    xt = torch.from_numpy(x).requires_grad_(True)
    ref = F.cross_entropy(xt, torch.from_numpy(t), label_smoothing=0.1)
    (g,) = torch.autograd.grad(ref, xt)
    assert r.value == pytest.approx(ref.item(), rel=1e-6) and alias.value == r.value
    np.testing.assert_allclose(r.grads["input"], g.numpy(), rtol=1e-5, atol=1e-7)
    assert len(infos) >= 41 and one.name == "mse" and info["losses"] == len(infos)
    assert not isinstance(batch[0], Exception) and batch[0].value == 2.0 and isinstance(batch[1], LossNotFound)
    assert comp.value == pytest.approx(2 * 2.5) and comp.grads["a"].tolist() == [2.0, 4.0]
    assert big.value == 200_000.0 and big.grads["input"].shape == (200_000,)


# -- docs ---------------------------------------------------------------------------------


def test_docstring_examples_run(url: str) -> None:
    finder, runner = doctest.DocTestFinder(), doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for m in (lossd_client, lossd_client.client) for t in finder.find(m) if t.examples]
    assert len(tests) >= 4
    for t in tests:
        for ex in t.examples:
            ex.source = ex.source.replace(DOC_URL, url)
        runner.run(t)
    assert runner.summarize(verbose=False).failed == 0


def test_readme_examples_run(url: str) -> None:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    ns: dict[str, Any] = {}
    for block in blocks:
        exec(compile(block.replace(DOC_URL, url), str(README), "exec"), ns)


def test_readme_examples_typecheck(tmp_path: Path) -> None:
    """The README's examples that need no torch pass ``mypy --strict``, as a user's code would."""
    pytest.importorskip("mypy")  # a dev dependency: CI has it, a bare GPU image may not
    blocks = [b for b in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "import torch" not in b]
    assert len(blocks) >= 3
    files = []
    for i, block in enumerate(blocks):
        files.append(tmp_path / f"readme_example_{i}.py")
        files[-1].write_text(block)
    root = README.parents[1]
    # MYPYPATH: the editable install's import hook hides the package from mypy
    env = {**os.environ, "MYPYPATH": str(root / "client")}
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *map(str, files)],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout + out.stderr
