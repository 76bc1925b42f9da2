"""Engine and dispatcher units: conversion, inference mode, OOM and runtime failures, admission control."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from dataclasses import replace

import pytest
import torch

from lossd.engine import Composite, CompositeTerm, Dispatcher, Engine
from lossd.errors import Problem
from lossd.losses import default_catalogue
from lossd.settings import Settings

CAT = default_catalogue()


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(CAT, torch.device("cpu"), Settings(warmup=False))


def ce_inputs(dtype: torch.dtype = torch.float32) -> dict:
    return {"input": torch.randn(4, 3).to(dtype), "target": torch.tensor([0, 1, 2, 1])}


def test_half_precision_computes_in_float32_and_grads_in_input_dtype(engine: Engine) -> None:
    spec = CAT.get("cross_entropy")
    assert spec is not None
    call = engine.prepare(spec, ce_inputs(torch.float16), {}, True)
    assert call.inputs["input"].dtype == torch.float32  # type: ignore[union-attr]
    r = engine.run(call)
    assert r.value.dtype == torch.float32 and r.grads["input"].dtype == torch.float16


def test_float64_anywhere_computes_in_float64(engine: Engine) -> None:
    spec = CAT.get("mse")
    assert spec is not None
    call = engine.prepare(spec, {"input": torch.randn(3), "target": torch.randn(3, dtype=torch.float64)}, {}, ["input"])
    r = engine.run(call)
    assert r.value.dtype == torch.float64 and r.grads["input"].dtype == torch.float32


def test_calls_without_grad_run_in_inference_mode(engine: Engine) -> None:
    seen: list[bool] = []
    spec = CAT.get("mse")
    assert spec is not None

    def probe(input: torch.Tensor, target: torch.Tensor, **_: object) -> torch.Tensor:
        seen.append(torch.is_inference_mode_enabled())
        return (input - target).pow(2).mean()

    probe_spec = replace(spec, fn=probe)
    engine.run(engine.prepare(probe_spec, {"input": torch.ones(2), "target": torch.zeros(2)}, {}, False))
    engine.run(engine.prepare(probe_spec, {"input": torch.ones(2), "target": torch.zeros(2)}, {}, True))
    assert seen == [True, False]


def test_out_of_memory_is_503_and_engine_keeps_working(engine: Engine) -> None:
    spec = CAT.get("mse")
    assert spec is not None

    def oom(**_: object) -> torch.Tensor:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    with pytest.raises(Problem) as e:
        engine.run(engine.prepare(replace(spec, fn=oom), {"input": torch.ones(2), "target": torch.zeros(2)}, {}, False))
    assert e.value.status == 503 and e.value.headers["Retry-After"]
    # In the body too, for a batch's failed call (which has no headers of its own); as a bare problem
    # within a batch, as the batch keeps it.
    kept = e.value.bare().within(("calls", 3))
    assert kept.body()["retry_after"] == int(e.value.headers["Retry-After"]) and kept.body()["status"] == 503
    assert "retry_after" not in Problem(503, "perceptual needs weights").body()
    r = engine.run(engine.prepare(spec, {"input": torch.ones(2), "target": torch.zeros(2)}, {}, False))
    assert float(r.value) == 1.0


def test_unexpected_runtime_error_is_422_not_500(engine: Engine) -> None:
    spec = CAT.get("mse")
    assert spec is not None

    def broken(**_: object) -> torch.Tensor:
        raise RuntimeError("The size of tensor a (3) must match the size of tensor b (2)")

    with pytest.raises(Problem) as e:
        engine.run(
            engine.prepare(replace(spec, fn=broken), {"input": torch.ones(2), "target": torch.zeros(2)}, {}, False)
        )
    assert e.value.status == 422 and "size of tensor" in e.value.detail


def test_params_torch_cannot_hold_are_field_errors(engine: Engine) -> None:
    """An integer param outside int64, or a finite float beyond the call's dtype, is a 422 located at the
    param (torch would fail with "Overflow when unpacking long long" or "cannot be converted to float")."""
    ce, mm = CAT.get("cross_entropy"), CAT.get("multi_margin")
    assert ce is not None and mm is not None
    for spec, params, inputs in [
        (ce, {"ignore_index": 2**63}, ce_inputs()),
        (ce, {"ignore_index": -(2**63) - 1}, ce_inputs()),
        (mm, {"margin": 1e308}, ce_inputs()),
        (mm, {"margin": -3.5e38}, ce_inputs()),
    ]:
        with pytest.raises(Problem) as e:
            engine.run(engine.prepare(spec, inputs, params, False))
        assert e.value.status == 422 and e.value.errors, params
        assert e.value.errors == [{"loc": ["params", next(iter(params))], "msg": e.value.errors[0]["msg"]}]
        assert "int64" in e.value.detail or "beyond float32" in e.value.detail
    # Only where torch refuses: js_div's base stays a Python number, and 1e39 is a fine base in float32.
    js = CAT.get("js_div")
    assert js is not None
    p, q = torch.tensor([[0.2, 0.8]]), torch.tensor([[0.5, 0.5]])
    r = engine.run(engine.prepare(js, {"input": p, "target": q}, {"base": 1e39}, False))
    m = (p.double() + q.double()) / 2
    want = 0.5 * ((p * (p / m).log()).sum() + (q * (q / m).log()).sum()) / math.log(1e39)
    assert r.value.item() == pytest.approx(want.item(), rel=1e-6)
    # In range: int64's ends, float32's largest finite value, and float64 margins for float64 calls.
    x = torch.tensor([[1.0, -0.5, 0.25]])
    ce_x = {"input": x, "target": torch.tensor([0])}
    for spec, params, inputs in [
        (ce, {"ignore_index": 2**63 - 1}, ce_x),
        (ce, {"ignore_index": -(2**63)}, ce_x),
        (mm, {"margin": 3.0e38}, ce_x),
        (mm, {"margin": 1e308}, {"input": x.double(), "target": torch.tensor([0])}),
    ]:
        r = engine.run(engine.prepare(spec, inputs, params, False))
        assert r.value.dtype == (torch.float64 if inputs["input"].dtype == torch.float64 else torch.float32)
    ref = torch.nn.functional.multi_margin_loss(x.double(), torch.tensor([0]), margin=1e308)
    got = engine.run(engine.prepare(mm, {"input": x.double(), "target": torch.tensor([0])}, {"margin": 1e308}, False))
    assert torch.equal(got.value, ref)


def test_params_take_the_non_finite_spellings_and_say_where_they_must_be_finite() -> None:
    from lossd.engine import parse_params

    huber, triplet = CAT.get("huber"), CAT.get("triplet_margin")
    assert huber is not None and triplet is not None
    with pytest.raises(Problem) as e:
        parse_params(huber, {"delta": "Infinity"})
    assert e.value.errors and e.value.errors[0]["loc"] == ["params", "delta"]
    assert "finite" in e.value.errors[0]["msg"]
    for spelling in ("Infinity", "inf"):
        assert parse_params(triplet, {"p": spelling}).p == float("inf")  # type: ignore[attr-defined]
    with pytest.raises(Problem) as e:
        parse_params(huber, {"delta": "1.5"})  # a number in a string is still not a number
    assert e.value.errors and e.value.errors[0]["loc"] == ["params", "delta"]
    with pytest.raises(Problem) as e:
        parse_params(huber, {"reduction": "NaN"})
    assert e.value.errors and e.value.errors[0]["loc"] == ["params", "reduction"]


def test_integer_data_for_a_float_input_is_float32_data(engine: Engine) -> None:
    """api.md: integer data given for a float-only input converts to float32, also where another input makes
    the call float64 (2**24 + 1 is then 2**24), and its gradient is float32."""
    spec = CAT.get("mse")
    assert spec is not None
    n = 2**24 + 1
    r = engine.run(
        engine.prepare(spec, {"input": torch.tensor([n]), "target": torch.zeros(1, dtype=torch.float64)}, {}, True)
    )
    assert r.value.dtype == torch.float64 and r.value.item() == float(2**24) ** 2
    assert r.grads["input"].dtype == torch.float32 and r.grads["input"].item() == 2.0 * 2**24
    assert r.grads["target"].dtype == torch.float64


def test_a_composite_term_that_fails_on_the_device_is_named(engine: Engine) -> None:
    mse = CAT.get("mse")
    assert mse is not None

    def broken(**_: object) -> torch.Tensor:
        raise RuntimeError("value cannot be converted to type float without overflow")

    x, y = torch.ones(2), torch.zeros(2)
    terms = [
        CompositeTerm(
            engine.prepare(mse, {"input": x, "target": y}, {}, ["input"]), 1.0, {"input": "x", "target": "y"}
        ),
        CompositeTerm(
            engine.prepare(replace(mse, fn=broken), {"input": x, "target": y}, {}, ["input"]),
            0.5,
            {"input": "x", "target": "y"},
        ),
    ]
    with pytest.raises(Problem) as e:
        engine.run_composite(Composite(terms, {"x": x, "y": y}, ("x",)))
    assert e.value.status == 422 and "term 1 (mse)" in e.value.detail
    assert e.value.errors == [{"loc": ["terms", 1], "msg": "value cannot be converted to type float without overflow"}]
    ok = engine.run_composite(Composite(terms[:1], {"x": x, "y": y}, ("x",)))
    assert ok.value.item() == 1.0
    mm = CAT.get("multi_margin")
    assert mm is not None
    logits, labels = torch.randn(2, 3), torch.tensor([0, 2])
    refused = CompositeTerm(
        engine.prepare(mm, {"input": logits, "target": labels}, {"margin": 1e308}, ["input"]),
        1.0,
        {"input": "x", "target": "y"},
    )
    fine = CompositeTerm(engine.prepare(mm, {"input": logits, "target": labels}, {}, ["input"]), 1.0, refused.refs)
    with pytest.raises(Problem) as e:
        engine.run_composite(Composite([fine, refused], {"x": logits, "y": labels}, ("x",)))
    assert e.value.status == 422 and "term 1 (multi_margin)" in e.value.detail
    assert e.value.errors is not None and e.value.errors[0]["loc"] == ["terms", 1, "params", "margin"]


def test_index_dtype_rules(engine: Engine) -> None:
    spec = CAT.get("focal")
    assert spec is not None
    with pytest.raises(Problem) as e:
        engine.prepare(spec, {"input": torch.randn(2, 3), "target": torch.tensor([0.0, 1.0])}, {}, False)
    assert e.value.status == 422 and e.value.errors and e.value.errors[0]["loc"] == ["inputs", "target"]
    call = engine.prepare(
        spec, {"input": torch.randn(2, 3), "target": torch.tensor([0, 1], dtype=torch.int32)}, {}, False
    )
    assert call.inputs["target"].dtype == torch.int64  # type: ignore[union-attr]


def test_unknown_param_is_422(engine: Engine) -> None:
    spec = CAT.get("mse")
    assert spec is not None
    with pytest.raises(Problem) as e:
        engine.prepare(spec, {"input": torch.ones(1), "target": torch.ones(1)}, {"gama": 2}, False)
    assert e.value.status == 422 and e.value.errors and e.value.errors[0]["loc"] == ["params", "gama"]


def test_dispatcher_bounds_admission_and_balances() -> None:
    engines = [Engine(CAT, torch.device("cpu"), Settings(warmup=False)) for _ in range(2)]
    d = Dispatcher(engines, max_concurrency=2, retry_after_s=3)
    gate = threading.Event()
    used: list[int] = []

    def hold(engine: Engine) -> int:
        used.append(id(engine))
        gate.wait(5)
        return 1

    async def call() -> int:
        with d.slot():
            return int(await d.submit(hold, deadline=time.monotonic() + 10))

    async def scenario() -> None:
        a = asyncio.ensure_future(call())
        b = asyncio.ensure_future(call())
        await asyncio.sleep(0.05)
        assert d.admitted == 2 and [e.inflight for e in engines] == [1, 1]
        with pytest.raises(Problem) as e:
            await call()
        assert e.value.status == 503 and e.value.headers["Retry-After"] == "3"
        gate.set()
        assert await a == 1 and await b == 1
        assert d.admitted == 0 and all(e.inflight == 0 for e in engines)
        assert await call() == 1  # slots are given back

    asyncio.run(scenario())
    assert len(set(used)) == 2  # the two concurrent calls went to the two engines


def test_deadline_passed_before_run_is_504() -> None:
    d = Dispatcher([Engine(CAT, torch.device("cpu"), Settings(warmup=False))], 4, 1)

    async def scenario() -> None:
        with pytest.raises(Problem) as e:
            await d.submit(lambda engine: 1, deadline=time.monotonic() - 1)
        assert e.value.status == 504

    asyncio.run(scenario())


def test_small_requests_of_one_loop_turn_go_phase_by_phase_each_with_its_own_outcome() -> None:
    """Small requests queued in one turn of the event loop are taken at its end phase by phase: every
    body decoded, then every light call run (in arrival order), then every answer encoded. Each gets its
    own result or its own error from whichever phase failed; a cancelled one is skipped; work that is not
    light goes to the device worker; the deadline is checked when a call runs."""
    engine = Engine(CAT, torch.device("cpu"), Settings(warmup=False))
    d = Dispatcher([engine], max_concurrency=64, retry_after_s=1)
    steps: list[tuple[str, int]] = []
    loop_thread = threading.current_thread().name
    threads: dict[int, str] = {}

    def decode(i: int) -> tuple[int, str]:
        steps.append(("decode", i))
        if i == 2:
            raise Problem(400, "body 2 is bad")
        return i, f"ctx{i}"

    def run(engine: Engine, i: int) -> int:
        steps.append(("run", i))
        threads[i] = threading.current_thread().name
        if i == 3:
            raise Problem(422, "call 3 is bad")
        return i * i

    def encode(result: int, context: str) -> str:
        steps.append(("encode", result))
        if result == 16:
            raise Problem(422, "answer 4 cannot be encoded")
        return f"{context}={result}"

    def light(work: int) -> bool:
        if work == 8:
            raise RuntimeError("a bug deciding where 8 runs")
        return work != 7  # 7 is heavy work: the worker's

    def request(i: int, deadline: float | None = None) -> asyncio.Future[str]:
        return asyncio.ensure_future(
            d.small(
                lambda: decode(i),
                light,
                run,
                encode,
                time.monotonic() + 10 if deadline is None else deadline,
            )
        )

    async def scenario() -> None:
        tasks = [request(i) for i in range(9)]
        await asyncio.sleep(0)  # every task has queued its request; none has been decoded yet
        assert steps == []
        tasks[5].cancel()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert [outcomes[i] for i in (0, 1, 6, 7)] == ["ctx0=0", "ctx1=1", "ctx6=36", "ctx7=49"]
        assert [o.status for o in outcomes[2:5] if isinstance(o, Problem)] == [400, 422, 422]
        assert isinstance(outcomes[5], asyncio.CancelledError)
        assert isinstance(outcomes[8], RuntimeError)  # a bug fails its own request only
        on_loop = [0, 1, 3, 4, 6]
        assert steps[:14] == [
            *[("decode", i) for i in (0, 1, 2, 3, 4, 6, 7, 8)],  # the cancelled one skipped
            *[("run", i) for i in on_loop],
            ("encode", 0),
        ]
        assert {threads[i] for i in on_loop} == {loop_thread} and threads[7].startswith("lossd-cpu")
        assert engine.inflight == 0 and engine.calls == 6
        with pytest.raises(Problem) as e:  # the deadline is checked when the queued call runs
            await request(9, deadline=time.monotonic() - 1)
        assert e.value.status == 504 and ("run", 9) not in steps

    asyncio.run(scenario())
    engine.shutdown()


def test_worker_calls_of_one_loop_turn_make_one_trip_per_thread() -> None:
    """Calls for a worker submitted in one turn go to its threads together (split across them), each with its
    own outcome; after shutdown they are refused with 503 rather than left waiting."""
    engine = Engine(CAT, torch.device("cpu"), Settings(warmup=False), threads=2)
    d = Dispatcher([engine], max_concurrency=64, retry_after_s=1)
    threads: dict[int, str] = {}

    def work(engine: Engine, i: int) -> int:
        threads[i] = threading.current_thread().name
        time.sleep(0.01)  # long enough that one thread cannot take both halves
        if i == 4:
            raise Problem(422, "call 4 is bad")
        return -i

    async def scenario() -> None:
        outcomes = await asyncio.gather(
            *[d.submit(work, i, deadline=time.monotonic() + 10) for i in range(10)], return_exceptions=True
        )
        assert [o for i, o in enumerate(outcomes) if i != 4] == [0, -1, -2, -3, -5, -6, -7, -8, -9]
        assert isinstance(outcomes[4], Problem) and outcomes[4].status == 422
        assert all(name.startswith("lossd-cpu") for name in threads.values())
        assert {threads[i] for i in range(0, 10, 2)} != {threads[i] for i in range(1, 10, 2)}  # both threads ran
        assert engine.inflight == 0 and engine.calls == 10
        engine.shutdown()
        with pytest.raises(Problem) as e:
            await d.submit(work, 11, deadline=time.monotonic() + 10)
        assert e.value.status == 503 and 11 not in threads

    asyncio.run(scenario())


def test_only_small_linear_work_runs_on_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A small body is not enough to run on the loop: superlinear losses (ctc, info_nce...) and calls of
    many elements (a compact b64 body) go to the device worker, where they cannot stall health checks."""
    import base64

    import orjson

    from lossd.service import INLINE_MAX_CALLS, INLINE_MAX_ELEMENTS, Service

    svc = Service(Settings(warmup=False, device="cpu"))
    seen: list[bool] = []
    submit = svc.dispatcher.submit

    async def recording(fn: object, *args: object, deadline: float) -> object:
        seen[-1] = False  # handed to the device worker
        return await submit(fn, *args, deadline=deadline)

    monkeypatch.setattr(svc.dispatcher, "submit", recording)
    n = INLINE_MAX_ELEMENTS + 1
    many = {"dtype": "uint8", "shape": [n], "b64": base64.b64encode(bytes(n)).decode()}
    calls = [
        ("cross_entropy", {"inputs": {"input": [[1.0, 2.0]], "target": [1]}, "grad": True}, True),
        ("mse", {"inputs": {"input": many, "target": many}}, False),
        ("info_nce", {"inputs": {"z1": [[1.0, 0.0], [0.0, 1.0]], "z2": [[1.0, 0.1], [0.1, 1.0]]}}, False),
        (
            "ctc",
            {
                "inputs": {
                    "input": torch.randn(6, 1, 3).log_softmax(2).tolist(),
                    "targets": [[1, 2]],
                    "input_lengths": [6],
                    "target_lengths": [2],
                }
            },
            False,
        ),
    ]

    async def scenario() -> None:
        for name, body, _ in calls:
            raw = orjson.dumps(body)
            assert len(raw) <= svc.settings.inline_max_bytes  # every body is small
            seen.append(True)
            out = orjson.loads(await svc.compute(svc.spec(name), memoryview(raw), False, False, time.monotonic() + 5))
            assert out["loss"] == name

    async def batches() -> None:
        one = {"loss": "mse", "inputs": {"input": [1.0], "target": [0.0]}}
        for n in (INLINE_MAX_CALLS, INLINE_MAX_CALLS + 1):
            seen.append(True)
            out = orjson.loads(
                await svc.batch(memoryview(orjson.dumps({"calls": [one] * n})), None, time.monotonic() + 5)
            )
            assert [r["value"] for r in out["results"]] == [1.0] * n

    svc.ready = True
    asyncio.run(scenario())
    asyncio.run(batches())
    svc.close()
    # A batch of many tiny calls is not light either: each call has its fixed cost (on a GPU, its copies).
    assert seen == [inline for *_, inline in calls] + [True, False]


def test_body_bytes_in_flight_are_bounded() -> None:
    """Request bodies are counted together: past the budget a new body is refused (503, reason "memory"),
    a chunked body as it grows; one body alone is never refused for its size; exits give the bytes back."""
    refused: list[str] = []
    d = Dispatcher(
        [Engine(CAT, torch.device("cpu"), Settings(warmup=False))],
        8,
        2,
        on_refused=refused.append,
        max_inflight_bytes=100,
    )
    with d.slot(500):  # alone, larger than the budget: admitted
        assert d.body_bytes == 500
        with pytest.raises(Problem) as e, d.slot(1):
            pass
        assert e.value.status == 503 and e.value.headers["Retry-After"] == "2" and "bytes" in e.value.detail
    assert d.body_bytes == 0 and d.admitted == 0
    with d.slot(60):
        with d.slot(40):
            assert d.body_bytes == 100
        with d.slot(0) as chunked:  # no Content-Length: counted as it arrives
            chunked.grow(30)
            with pytest.raises(Problem) as e:
                chunked.grow(20)
            assert e.value.status == 503
            assert d.body_bytes == 90
    assert d.body_bytes == 0 and d.admitted == 0
    with d.slot(0) as lone:
        lone.grow(1000)  # alone: grows past the budget
    assert refused == ["memory", "memory"]


def test_work_bounds_hold_per_request_not_only_per_call() -> None:
    """Superlinear losses are bounded per call; a batch or composite takes at most one call's bound in all."""
    import base64

    import orjson

    from lossd.losses.metric import MAX_SIMILARITIES, MAX_SIMILARITY_WORK
    from lossd.losses.sequences import MAX_CTC_CELLS
    from lossd.service import Service

    svc = Service(Settings(warmup=False, device="cpu"))

    def b64(t: torch.Tensor) -> dict:
        return {"dtype": "float32", "shape": list(t.shape), "b64": base64.b64encode(t.numpy().tobytes()).decode()}

    T, S = 13_000, 1024  # 40% of the ctc bound per call
    assert 0.35 < T * (2 * S + 1) / MAX_CTC_CELLS < 0.45
    ctc = {
        "loss": "ctc",
        "inputs": {
            "input": b64(torch.zeros(T, 1, 3)),
            "targets": [[1] * S],
            "input_lengths": [T],
            "target_lengths": [S],
        },
    }
    mse = {"loss": "mse", "inputs": {"input": [1.0], "target": [0.0]}}
    calls, _ = svc._prepare_batch(memoryview(orjson.dumps({"calls": [ctc, mse, ctc, ctc, mse]})), None)
    assert [c.status if isinstance(c, Problem) else "ok" for c in calls] == ["ok", "ok", "ok", 413, "ok"]
    assert isinstance(calls[3], Problem) and "calls.3" in calls[3].detail

    # Shares that add up to exactly one bound pass (no rounding against them): 3 edit_distance
    # calls of 1e6 + 13e6 + 186e6 cells, and 20 of 1e7.
    def ed(h: int) -> dict:
        return {"loss": "edit_distance", "inputs": {"hypothesis": ["a" * h], "truth": ["b" * 10_000]}}

    for batch in ([ed(100), ed(1300), ed(18_600)], [ed(1000)] * 20):
        calls, _ = svc._prepare_batch(memoryview(orjson.dumps({"calls": batch})), None)
        assert not any(isinstance(c, Problem) for c in calls)
    calls, _ = svc._prepare_batch(memoryview(orjson.dumps({"calls": [ed(1000)] * 21})), None)
    assert [isinstance(c, Problem) for c in calls] == [False] * 20 + [True]

    n = 3000  # (2N)^2 is 54% of the similarity bound: one term fits, two do not
    z = b64(torch.randn(n, 1))
    terms = [{"loss": "info_nce", "inputs": {"z1": "a", "z2": "b"}}]
    body = {"inputs": {"a": z, "b": z}, "terms": terms}
    svc._prepare_composite(memoryview(orjson.dumps(body)), None)
    with pytest.raises(Problem) as e:
        svc._prepare_composite(memoryview(orjson.dumps({**body, "terms": terms * 2})), None)
    assert e.value.status == 413 and "split the composite" in e.value.detail
    # One term over its own bound: 413 as well (a limit, not a malformed term), naming the term.
    zbig = b64(torch.randn(4097, 1))
    with pytest.raises(Problem) as e:
        svc._prepare_composite(memoryview(orjson.dumps({"inputs": {"a": zbig, "b": zbig}, "terms": terms})), None)
    assert e.value.status == 413 and e.value.detail.startswith("term 0 (info_nce)")
    svc.close()

    # info_nce's own bound counts D: (2N)^2 within the matrix bound, but (2N)^2*D over the work bound
    from lossd.losses.metric import INFO_NCE, InfoNCEParams
    from lossd.spec import InputError

    assert INFO_NCE.check is not None
    n, d = 2048, MAX_SIMILARITY_WORK // (4096**2)
    assert (2 * n) ** 2 <= MAX_SIMILARITIES
    INFO_NCE.check({"z1": torch.zeros(n, d), "z2": torch.zeros(n, d)}, InfoNCEParams())
    with pytest.raises(InputError) as ie:
        INFO_NCE.check({"z1": torch.zeros(n, d + 1), "z2": torch.zeros(n, d + 1)}, InfoNCEParams())
    assert ie.value.status == 413 and "reduce D" in ie.value.msg


def test_engine_gradients_are_torch_autograd_grad_bit_for_bit() -> None:
    """lossd.engine.grad calls autograd's engine without torch.autograd.grad's Python wrapper:
    for every loss of the catalogue (its example call, every differentiable input), the same bits."""
    from lossd import codecs
    from lossd.engine import grad
    from lossd.examples import EXAMPLES

    engine = Engine(CAT, torch.device("cpu"), Settings(warmup=False))
    limits = codecs.Limits(10**7, 64)
    checked = 0
    for spec in CAT:
        ex = EXAMPLES.get(spec.name)
        if ex is None or not spec.differentiable or spec.name in engine.unavailable:
            continue
        text = frozenset(i.name for i in spec.inputs if i.kind == "text")
        inputs = codecs.decode_tensors(ex["inputs"], ("inputs",), limits, text)
        call = engine.prepare(spec, inputs, ex.get("params"), True)

        def forward(call: object = call, spec: object = spec) -> tuple[torch.Tensor, list[torch.Tensor]]:
            tensors = dict(call.inputs)  # type: ignore[attr-defined]
            leaves = []
            for name in call.grad:  # type: ignore[attr-defined]
                tensors[name] = tensors[name].detach().requires_grad_(True)
                leaves.append(tensors[name])
            out = spec.fn(**engine._kwargs(call, tensors))  # type: ignore[attr-defined, arg-type]
            value = out[0] if isinstance(out, tuple) else out
            return (value if value.dim() == 0 else value.sum()), leaves

        ours = grad(*forward())
        theirs = torch.autograd.grad(*forward(), allow_unused=True)
        for a, b in zip(ours, theirs, strict=True):
            assert (a is None) == (b is None), spec.name
            if a is not None and b is not None:
                torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True, msg=spec.name)
        checked += 1
    assert checked >= 35
    engine.shutdown()


def test_body_timeouts_cancel_only_stalled_readers_on_each_loop() -> None:
    """One timer serves all readers; a reader past the timeout is cancelled and told so, a quick one is not.
    An app served by a second event loop (as tests do) gets a timer on that loop."""
    from lossd.endpoints import BodyTimeouts

    timeouts = BodyTimeouts(0.05)

    async def reader(delay: float) -> str:
        task: asyncio.Task[object] = asyncio.current_task()  # type: ignore[assignment]
        timeouts.start(task, asyncio.get_running_loop())
        try:
            await asyncio.sleep(delay)
            return "read"
        except asyncio.CancelledError:
            return "timed out" if timeouts.done(task) else "cancelled"
        finally:
            timeouts.done(task)

    async def scenario() -> list[str]:
        return list(await asyncio.gather(reader(5), reader(0.01), reader(5)))

    for _ in range(2):  # two loops, one after the other
        t0 = time.monotonic()
        assert asyncio.run(scenario()) == ["timed out", "read", "timed out"]
        assert time.monotonic() - t0 < 1


def test_failed_batch_calls_leave_no_garbage_cycles() -> None:
    """A batch's failed calls are kept until it is answered: without their tracebacks, so that a
    batch of bad calls frees everything by reference counting, not through collector passes."""
    import gc

    import orjson

    from lossd.service import Service

    svc = Service(Settings(warmup=False, device="cpu"))
    bad = [
        {"loss": "mse", "inputs": {"input": [1.0], "target": [2.0]}, "params": {"reduction": "bogus"}},
        {"loss": "no_such_loss", "inputs": {}},
        {"loss": "mse", "inputs": {"input": [[1.0], [2.0, 3.0]], "target": [2.0]}},
        {"loss": "cross_entropy", "inputs": {"input": [[0.0, 1.0]], "target": [5]}},
    ]
    body = memoryview(orjson.dumps({"calls": bad * 8}))
    gc.collect()
    gc.disable()
    try:
        calls, _ = svc._prepare_batch(body, None)
        assert all(isinstance(c, Problem) for c in calls) and len(calls) == 32
        del calls
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_small_calls_of_one_turn_spread_over_cpu_engines() -> None:
    """With several CPU engines (LOSSD_CPU_ENGINES), the light calls of one turn are shared out, as calls
    for the workers are (the engines' counters and device metrics), and none stays counted in flight."""
    engines = [Engine(CAT, torch.device("cpu"), Settings(warmup=False)) for _ in range(2)]
    d = Dispatcher(engines, max_concurrency=64, retry_after_s=1)

    async def scenario() -> list[int]:
        deadline = time.monotonic() + 10
        return await asyncio.gather(
            *(
                d.small(lambda i=i: (i, None), lambda w: True, lambda e, w: w, lambda r, c: r, deadline)
                for i in range(4)
            )
        )

    assert asyncio.run(scenario()) == [0, 1, 2, 3]
    assert [e.calls for e in engines] == [2, 2] and [e.inflight for e in engines] == [0, 0]
    for e in engines:
        e.shutdown()


class Blocker:
    """A worker call that holds its worker until released, and tells when it has started."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, e: Engine) -> str:
        self.started.set()
        self.release.wait(10)
        return "slow"

    async def running(self) -> None:
        while not self.started.is_set():
            await asyncio.sleep(0.01)


def posing_as_gpus(n: int) -> list[Engine]:
    """CPU engines relabelled cuda:0, cuda:1, ...: the dispatcher's rules read only the device type."""
    engines = [Engine(CAT, torch.device("cpu"), Settings(warmup=False)) for _ in range(n)]
    for i, e in enumerate(engines):
        e.device = torch.device("cuda", i)
    return engines


def test_light_calls_on_a_gpu_engine_run_on_the_loop_only_while_its_worker_is_idle() -> None:
    """A GPU engine (its device relabelled: the rule reads only the device type) takes a light call on the
    event loop when nothing of it is on its worker, as the CPU does; with a call on the worker, light calls
    go to the worker behind it, so that the loop never waits for another call's kernels."""
    (engine,) = posing_as_gpus(1)
    d = Dispatcher([engine], max_concurrency=64, retry_after_s=1)
    loop_thread = threading.get_ident()
    slow = Blocker()

    def where(e: Engine, w: int) -> tuple[int, bool]:
        return w, threading.get_ident() == loop_thread

    async def scenario() -> tuple[list[tuple[int, bool]], list[tuple[int, bool]]]:
        deadline = time.monotonic() + 10
        light = [d.small(lambda i=i: (i, None), lambda w: True, where, lambda r, c: r, deadline) for i in range(3)]
        idle = await asyncio.gather(*light)
        worker = asyncio.ensure_future(d.submit(slow, deadline=deadline))
        await asyncio.sleep(0.05)
        assert engine.inflight == 1
        light = [d.small(lambda i=i: (i, None), lambda w: True, where, lambda r, c: r, deadline) for i in range(3, 5)]
        pending = asyncio.gather(*light)
        await asyncio.sleep(0.05)
        assert not pending.done()  # queued behind the worker's call, not run on the loop
        slow.release.set()
        busy = await pending
        assert await worker == "slow"
        return idle, busy

    idle, busy = asyncio.run(scenario())
    assert idle == [(0, True), (1, True), (2, True)]
    assert busy == [(3, False), (4, False)]
    assert engine.inflight == 0 and engine.calls == 6
    engine.shutdown()


def test_a_cancelled_call_counts_in_flight_until_its_worker_is_done() -> None:
    """Ray cancels a request whose client went away, but its call may already be running on the worker: the
    engine counts it in flight until the worker is done, so a light call on a GPU engine does not start on the
    loop beside it, and placement sees the busy engine."""
    (engine,) = posing_as_gpus(1)
    d = Dispatcher([engine], max_concurrency=64, retry_after_s=1)
    loop_thread = threading.get_ident()
    slow = Blocker()

    def where(e: Engine, w: int) -> bool:
        return threading.get_ident() == loop_thread

    async def scenario() -> bool:
        deadline = time.monotonic() + 10
        worker = asyncio.ensure_future(d.submit(slow, deadline=deadline))
        await slow.running()
        worker.cancel()
        await asyncio.sleep(0.05)
        assert engine.inflight == 1 and engine.calls == 0  # still running there
        light = asyncio.ensure_future(d.small(lambda: (0, None), lambda w: True, where, lambda r, c: r, deadline))
        await asyncio.sleep(0.05)
        assert not light.done()  # behind the cancelled call's work, on the worker
        slow.release.set()
        on_loop = await light
        assert engine.inflight == 0 and engine.calls == 2
        return on_loop

    assert asyncio.run(scenario()) is False
    engine.shutdown()


def test_light_calls_go_to_a_gpu_engine_free_for_the_loop_rather_than_a_busy_one() -> None:
    """Two GPU engines, the first busy on its worker: the light calls of a turn all run on the loop on the
    second, rather than paying a hand-off or queueing behind the first one's call."""
    engines = posing_as_gpus(2)
    d = Dispatcher(engines, max_concurrency=64, retry_after_s=1)
    loop_thread = threading.get_ident()
    slow = Blocker()

    def where(e: Engine, w: int) -> tuple[str, bool]:
        return str(e.device), threading.get_ident() == loop_thread

    async def scenario() -> list[tuple[str, bool]]:
        deadline = time.monotonic() + 10
        worker = asyncio.ensure_future(d.submit(slow, deadline=deadline))
        await slow.running()
        light = [d.small(lambda i=i: (i, None), lambda w: True, where, lambda r, c: r, deadline) for i in range(3)]
        out = await asyncio.gather(*light)
        slow.release.set()
        assert await worker == "slow"
        return out

    assert asyncio.run(scenario()) == [("cuda:1", True)] * 3
    assert [e.calls for e in engines] == [1, 3] and [e.inflight for e in engines] == [0, 0]
    for e in engines:
        e.shutdown()


def test_engine_calls_count_what_ran_as_metrics_do_and_every_device_has_series_from_the_start() -> None:
    """/v1/info's per-device calls and /metrics' lossd_device_calls_total agree: a call past its deadline (504)
    ran nowhere, on the loop or on a worker; each engine's series exist, at 0, before its first call."""
    import re

    from lossd.service import Service

    svc = Service(Settings(warmup=False, device="cpu,cpu"))
    text = svc.metrics.render().decode()
    for dev in ("cpu:0", "cpu:1"):
        for name in ("lossd_device_calls_total", "lossd_compute_seconds_count", "lossd_inflight_calls"):
            assert re.search(rf'^{name}\{{device="{dev}"\}} 0\.0$', text, re.M), (name, dev)
    d = svc.dispatcher

    async def scenario() -> None:
        past = time.monotonic() - 1
        for _ in range(2):
            with pytest.raises(Problem) as e:
                await d.submit(lambda e: "never", deadline=past)
            assert e.value.status == 504
            with pytest.raises(Problem) as e:
                await d.small(lambda: (0, None), lambda w: True, lambda e, w: "never", lambda r, c: r, past)
            assert e.value.status == 504
        assert await d.submit(lambda e: "ran", deadline=time.monotonic() + 5) == "ran"
        # A call answered 504 at its deadline stays in flight until its worker has skipped it.
        for _ in range(200):
            if not any(e.inflight for e in svc.engines):
                break
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert sum(e.calls for e in svc.engines) == 1 and [e.inflight for e in svc.engines] == [0, 0]
    text = svc.metrics.render().decode()
    counted = [float(v) for v in re.findall(r'^lossd_device_calls_total\{device="cpu:\d"\} (\S+)$', text, re.M)]
    assert sum(counted) == 1
    svc.close()


def test_one_client_holds_at_most_its_share_of_the_slots() -> None:
    """max_per_client: a client at its bound gets a 503 with Retry-After (counted as "client"), another
    client still gets a slot, a freed slot is the client's again, and nothing is kept of clients gone."""
    refused: list[str] = []
    d = Dispatcher(
        [Engine(CAT, torch.device("cpu"), Settings(warmup=False))],
        max_concurrency=8,
        retry_after_s=2,
        on_refused=refused.append,
        max_per_client=2,
    )
    a1, a2 = d.slot(client="a"), d.slot(client="a")
    with a1, a2:
        with pytest.raises(Problem) as e:
            with d.slot(client="a"):
                pass
        assert e.value.status == 503 and e.value.headers["Retry-After"] == "2" and "limit 2" in e.value.detail
        with d.slot(client="b"):
            assert d.per_client == {"a": 2, "b": 1} and d.admitted == 3
    assert refused == ["client"] and d.per_client == {} and d.admitted == 0
    with d.slot(client="a"), d.slot(client="a"):
        pass
    off = Dispatcher([Engine(CAT, torch.device("cpu"), Settings(warmup=False))], max_concurrency=8, retry_after_s=1)
    with off.slot(client="a"), off.slot(client="a"), off.slot(client="a"):
        assert off.per_client == {}  # no bound: nothing counted


def test_a_queued_call_is_answered_504_at_its_deadline_not_when_its_worker_gets_to_it() -> None:
    """X-Deadline-Ms bounds the wait to start: a call queued behind a long one is refused when its deadline
    passes (not a second later), is then skipped by the worker, and frees its place; a call that started in
    time runs to its end even past its deadline."""
    refused: list[str] = []
    engine = Engine(CAT, torch.device("cpu"), Settings(warmup=False))
    d = Dispatcher([engine], max_concurrency=8, retry_after_s=1, on_refused=refused.append)
    ran: list[str] = []

    def slow(e: Engine, name: str, payload: object = None) -> str:
        ran.append(name)
        time.sleep(0.6)
        return name

    async def scenario() -> tuple[float, str, str]:
        import gc
        import weakref

        now = time.monotonic()
        first = asyncio.ensure_future(d.submit(slow, "first", deadline=now + 0.1))  # starts at once
        await asyncio.sleep(0.05)
        t0 = time.monotonic()
        body = torch.zeros(1000)  # stands for the request's tensors
        held = weakref.ref(body)
        with pytest.raises(Problem) as e:
            await d.submit(slow, "late", body, deadline=time.monotonic() + 0.2)
        waited = time.monotonic() - t0
        assert e.value.status == 504
        del body, e
        gc.collect()
        assert held() is None and not first.done()  # let go with the 504, while the worker is still busy
        after = await d.submit(slow, "after", deadline=time.monotonic() + 5)
        return waited, await first, after

    waited, first, after = asyncio.run(scenario())
    assert waited < 0.45  # 0.2 s, not the 0.55 s left of the call before it
    assert (first, after) == ("first", "after") and ran == ["first", "after"]
    assert refused == ["deadline"] and engine.calls == 2 and engine.inflight == 0
    engine.shutdown()
