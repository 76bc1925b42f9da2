"""The service: turns request bodies into engine calls and results into response bodies.

Everything here is transport-level glue between the codecs and the engine; the compute
endpoints in :mod:`lossd.endpoints` only read the request and send the bytes back.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
import torch

import lossd
from lossd import codecs
from lossd.auth import Keys, RateLimiter
from lossd.codecs import Limits
from lossd.devices import expand_devices
from lossd.engine import Call, Composite, CompositeResult, CompositeTerm, Dispatcher, Engine, Result, resolve_device
from lossd.errors import Problem, field_error
from lossd.examples import EXAMPLES
from lossd.losses import Catalogue, default_catalogue
from lossd.metrics import Metrics
from lossd.settings import Settings
from lossd.spec import LossSpec

log = logging.getLogger("lossd")

JSON = "application/json"
SAFETENSORS = "application/x-safetensors"
# A small body is not always small work: besides fitting LOSSD_INLINE_MAX_BYTES, a call run on
# the event loop holds at most this many elements, for losses whose work is linear in them
# (tens to hundreds of microseconds).
INLINE_MAX_ELEMENTS = 16384
# ... and at most this many calls (a batch's, a composite's terms): each call has a fixed cost, some
# 40 µs on the CPU and several copies to and from a GPU, so 256 tiny calls held the loop for 10 ms.
INLINE_MAX_CALLS = 16
# Shares of the work bound are fractions: calls that add up to exactly one bound must not fail on rounding.
WORK_SLACK = 1e-9


def wants_b64(body: Mapping[str, Any]) -> bool:
    enc = body.get("encoding", "data")
    if enc not in ("data", "b64"):
        raise field_error(("encoding",), 'expected "data" or "b64"')
    return enc == "b64"


class Service:
    """One lossd node: its catalogue, its device engines and its admission control."""

    def __init__(self, settings: Settings, catalogue: Catalogue | None = None) -> None:
        self.settings = settings
        self.catalogue = catalogue or default_catalogue()
        self.limits = Limits(settings.max_tensor_elements, settings.max_tensors)
        self.metrics = Metrics()
        self.keys = Keys(settings.api_keys)
        self.limiter = RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst, settings.retry_after_s)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        devices = [resolve_device(d) for d in expand_devices(settings.device, settings.cpu_engines)]
        self.engines = [Engine(self.catalogue, d, settings, settings.compute_threads) for d in devices]
        for engine in self.engines:
            self.metrics.add_device(str(engine.device))
        if settings.device in ("auto", "all") and all(e.device.type == "cpu" for e in self.engines):
            # A GPU image on a host without the NVIDIA runtime still works, slowly: say so.
            log.warning("no CUDA device is visible: computing on the CPU (LOSSD_DEVICE=%s)", settings.device)
        self.dispatcher = Dispatcher(
            self.engines,
            settings.max_concurrency,
            settings.retry_after_s,
            on_refused=lambda reason: self.metrics.rejected.labels(reason).inc(),
            on_ran=lambda engine, seconds: self.metrics.observe_compute(str(engine.device), seconds),
            max_inflight_bytes=settings.max_inflight_body_bytes,
            max_per_client=settings.max_concurrency_per_client,
        )
        # Decoding and encoding large bodies (a 45 MB JSON body takes 250 ms to parse) happens
        # here, off the event loop and off the device workers.
        self.host_pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="lossd-host")
        self.ready = False
        self.draining = False
        self.failed: str | None = None  # why the server cannot work (warm-up failed)
        self._infos: dict[str, dict[str, Any]] = {}
        self._catalogue_json: bytes | None = None
        self._text_inputs = {s.name: frozenset(i.name for i in s.inputs if i.kind == "text") for s in self.catalogue}

    # -- lifecycle ----------------------------------------------------------------------

    def warmup(self) -> None:
        """Run every available loss once, with gradients, on every device (blocking)."""
        if self.settings.warmup:
            for engine in self.engines:
                for spec in self.catalogue:
                    if self.draining:  # stopped while warming up: never becomes ready
                        return
                    ex = EXAMPLES.get(spec.name)
                    if ex is None or spec.name in engine.unavailable:
                        continue
                    try:
                        inputs = codecs.decode_tensors(
                            ex["inputs"], ("inputs",), self.limits, self._text_inputs[spec.name]
                        )
                        call = engine.prepare(spec, inputs, ex.get("params"), bool(spec.differentiable))
                        engine.run(call)
                    except Problem as p:
                        log.error("warm-up of %s on %s failed: %s", spec.name, engine.device, p.detail)
                if engine.device.type == "cuda":
                    torch.cuda.synchronize(engine.device)
        # torch, pydantic and the catalogue leave some 200,000 long-lived objects: move them out of
        # the collector's sight so that full collections stop walking them under load. Before ready:
        # the collection holds the interpreter for about 0.1 s.
        gc.collect()
        gc.freeze()
        self.ready = True
        self.metrics.ready.set(1)

    def drain(self) -> None:
        """Take no new work: /readyz and new calls answer 503 with Retry-After; calls admitted go on."""
        self.draining = True
        self.metrics.ready.set(0)

    def close(self) -> None:
        self.ready = False
        self.metrics.ready.set(0)
        for e in self.engines:
            e.shutdown()
        self.host_pool.shutdown(wait=True)

    # -- admission ----------------------------------------------------------------------

    def spec(self, name: str) -> LossSpec:
        spec = self.catalogue.get(name)
        if spec is None:
            raise Problem(404, self.unknown_loss(name))
        return spec

    def unknown_loss(self, name: str) -> str:
        """The detail for a name not in the catalogue: the name (its start, if long) and the closest ones."""
        shown = repr(name) if len(name) <= 80 else f"{name[:80]!r}... ({len(name)} characters)"
        close = self.catalogue.closest(name)
        return f"unknown loss {shown}" + (f"; closest: {', '.join(close)}" if close else "")

    def admit(self, client: str) -> None:
        """Whether this server takes work now, and ``client`` (its key, or its address) under its rate."""
        if self.draining or not self.ready:
            self.metrics.rejected.labels("not_ready").inc()
            if self.failed:  # not worth retrying here: another instance may serve it
                raise Problem(503, f"the server cannot work: {self.failed}")
            raise Problem(
                503,
                "the server is not ready (warming up or shutting down)",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        self.limiter.check(client)

    def deadline(self, header: str | None) -> float:
        ms = self.settings.deadline_ms
        if header:
            try:
                ms = min(ms, max(0, int(header)))
            except ValueError:
                raise Problem(400, "X-Deadline-Ms must be an integer count of milliseconds") from None
        return time.monotonic() + ms / 1000.0

    # -- one loss ------------------------------------------------------------------------

    def parse_json_call(
        self, spec: LossSpec, body: Any, where: tuple[str | int, ...] = ()
    ) -> tuple[dict[str, Any], Any, Any]:
        """``where`` locates a call of a batch (whose calls name their loss; the batch has the encoding)."""
        if not isinstance(body, dict):
            raise Problem(400, "body must be a JSON object")
        allowed = {"inputs", "params", "grad", "loss"} if where else {"inputs", "params", "grad", "encoding"}
        extra = set(body) - allowed
        if extra:
            k = sorted(extra)[0]
            raise field_error((*where, k), "unknown field")
        if "inputs" not in body:
            raise field_error((*where, "inputs"), "required field is missing")
        inputs = codecs.decode_tensors(body["inputs"], (*where, "inputs"), self.limits, self._text_inputs[spec.name])
        return inputs, body.get("params"), body.get("grad", False)

    def parse_safetensors_call(self, body: memoryview) -> tuple[dict[str, Any], Any, Any]:
        tensors, meta = codecs.read_safetensors(body, self.limits)
        extra = set(meta) - {"params", "grad", "format"}
        if extra:
            raise field_error(("__metadata__", sorted(extra)[0]), "unknown metadata key (params, grad)")
        try:
            params = orjson.loads(meta.get("params", "{}"))
            grad = orjson.loads(meta.get("grad", "false"))
        except orjson.JSONDecodeError:
            raise Problem(400, "safetensors __metadata__ params and grad must be JSON strings") from None
        return tensors, params, grad

    def _loads(self, body: memoryview) -> Any:
        """JSON bodies; large ones read their big numeric arrays straight into numpy."""
        if len(body) > codecs.LARGE_BODY:
            return codecs.loads_large(body)
        return codecs.loads(body)

    def _small(self, body: memoryview) -> bool:
        """Whether a body is small enough to be decoded and encoded on the event loop (LOSSD_INLINE_MAX_BYTES)."""
        return len(body) <= self.settings.inline_max_bytes

    @staticmethod
    def _light(calls: list[Call]) -> bool:
        """Whether calls of a small body are also little work, so that they may run on the event loop."""
        return (
            len(calls) <= INLINE_MAX_CALLS
            and not any(c.spec.superlinear for c in calls)
            and sum(c.elements() for c in calls) <= INLINE_MAX_ELEMENTS
        )

    async def _on_host(self, fn: Any, *args: Any) -> Any:
        """Host-side work for a large body (decoding, encoding), on the host pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.host_pool, fn, *args)

    async def _serve(
        self,
        body: memoryview,
        decode: Callable[[], tuple[Any, Any]],
        light: Callable[[Any], bool],
        run: Callable[..., Any],
        encode: Callable[[Any, Any], Any],
        deadline: float,
    ) -> Any:
        """One request of any endpoint: ``decode()`` -> (work, context), ``run(engine, work)`` -> result,
        ``encode(result, context)`` -> the answer. A small body goes with the others of its turn of the
        event loop (:meth:`Dispatcher.small`: decoded and encoded on the loop, computed there too when
        ``light(work)`` and the engine allows: :meth:`Dispatcher._on_loop`); a large one is decoded and
        encoded on the host pool and computed on a device worker."""
        if self._small(body):
            return await self.dispatcher.small(decode, light, run, encode, deadline)
        work, context = await self._on_host(decode)
        result = await self.dispatcher.submit(run, work, deadline=deadline)
        return await self._on_host(encode, result, context)

    def decode_call(self, spec: LossSpec, body: memoryview, binary_in: bool) -> tuple[Call, bool]:
        """A request body -> a validated call (host side), and whether tensors go back as base64."""
        if binary_in:
            inputs, params, grad = self.parse_safetensors_call(body)
            b64 = False
        else:
            obj = self._loads(body)
            inputs, params, grad = self.parse_json_call(spec, obj)
            b64 = wants_b64(obj)
        return self.engines[0].prepare(spec, inputs, params, grad), b64

    def encode_result(self, result: Result, b64: bool, binary_out: bool) -> bytes | list[memoryview]:
        if binary_out:
            return self.result_safetensors(result)
        return codecs.dumps(self.result_json(result, b64))

    async def compute(
        self, spec: LossSpec, body: memoryview, binary_in: bool, binary_out: bool, deadline: float
    ) -> bytes | list[memoryview]:
        """One loss call: the response body (safetensors chunks when ``binary_out``); where each
        step runs: :meth:`_serve`."""
        return await self._serve(
            body,
            lambda: self.decode_call(spec, body, binary_in),
            lambda call: self._light([call]),
            Engine.run,
            lambda result, b64: self.encode_result(result, b64, binary_out),
            deadline,
        )

    def result_json(self, r: Result, b64: bool) -> dict[str, Any]:
        out: dict[str, Any] = {
            "loss": r.loss,
            "value": codecs.encode_tensor(r.value, b64) if r.unreduced else codecs.encode_value(r.value, b64),
            "grads": {k: codecs.encode_tensor(v, b64) for k, v in r.grads.items()},
        }
        if r.terms is not None:
            out["terms"] = {k: codecs.float_out(v) for k, v in r.terms.items()}
        return out

    @staticmethod
    def result_safetensors(r: Result) -> list[memoryview]:
        tensors = {"value": r.value, **{f"grad.{k}": v for k, v in r.grads.items()}}
        meta = {"loss": r.loss}
        if r.terms is not None:
            meta["terms"] = orjson.dumps({k: codecs.float_out(v) for k, v in r.terms.items()}).decode()
        return codecs.write_safetensors(tensors, meta)

    # -- batch ---------------------------------------------------------------------------

    async def batch(self, body: memoryview, key: str | None, deadline: float) -> bytes:
        """Many calls in one request, run together in one trip (:meth:`_serve`); a failing call fails alone."""
        return await self._serve(
            body,
            lambda: self._prepare_batch(body, key),
            lambda calls: self._light([c for c in calls if isinstance(c, Call)]),
            Engine.run_many,
            self._encode_batch,
            deadline,
        )

    def _prepare_batch(self, body: memoryview, key: str | None) -> tuple[list[Call | Problem], bool]:
        obj = self._loads(body)
        if not isinstance(obj, dict) or not isinstance(obj.get("calls"), list):
            raise field_error(("calls",), "expected an object with a list of calls")
        extra = set(obj) - {"calls", "encoding"}
        if extra:
            raise field_error((sorted(extra)[0],), "unknown field")
        b64 = wants_b64(obj)
        raw_calls = obj["calls"]
        if len(raw_calls) > self.settings.max_batch_calls:
            raise Problem(413, f"{len(raw_calls)} calls is over the limit of {self.settings.max_batch_calls} per batch")
        calls: list[Call | Problem] = []
        for i, c in enumerate(raw_calls):
            try:
                if not isinstance(c, dict) or not isinstance(c.get("loss"), str):
                    raise field_error(("calls", i, "loss"), "each call needs a loss name")
                spec = self.spec(c["loss"])
                self.keys.authorize(key, spec.name)
                inputs, params, grad = self.parse_json_call(spec, c, ("calls", i))
                try:
                    calls.append(self.engines[0].prepare(spec, inputs, params, grad))
                except Problem as p:
                    raise p.within(("calls", i)) from None
            except Problem as p:
                # Without its traceback: kept, it would hold every frame of the failure (and their
                # tensors) until the batch is answered, and leave cycles for the collector.
                calls.append(p.bare())
        # Superlinear losses are bounded per call; a batch may not take more than one call's bound in all.
        left = 1.0 + WORK_SLACK
        for i, c in enumerate(calls):
            share = _work(c) if isinstance(c, Call) else 0.0
            if share > left:
                calls[i] = Problem(
                    413,
                    f"calls.{i}: with the calls before it, over the work bound of one request "
                    f"(this call takes {share:.0%} of it); send it in another request",
                )
            else:
                left -= share
        return calls, b64

    def _encode_batch(self, results: list[Result | Problem], b64: bool) -> bytes:
        out = [{"error": r.body()} if isinstance(r, Problem) else self.result_json(r, b64) for r in results]
        return codecs.dumps({"results": out})

    # -- composite -----------------------------------------------------------------------

    async def composite(self, body: memoryview, key: str | None, deadline: float) -> bytes:
        return await self._serve(
            body,
            lambda: self._prepare_composite(body, key),
            lambda comp: self._light([t.call for t in comp.terms]),
            Engine.run_composite,
            self._encode_composite,
            deadline,
        )

    def _prepare_composite(self, body: memoryview, key: str | None) -> tuple[Composite, bool]:
        obj = self._loads(body)
        if not isinstance(obj, dict):
            raise Problem(400, "body must be a JSON object")
        extra = set(obj) - {"inputs", "terms", "grad", "encoding"}
        if extra:
            raise field_error((sorted(extra)[0],), "unknown field")
        b64 = wants_b64(obj)
        terms_in = obj.get("terms")
        if not isinstance(terms_in, list) or not terms_in:
            raise field_error(("terms",), "expected a non-empty list of terms")
        if len(terms_in) > self.settings.max_batch_calls:
            raise Problem(413, f"{len(terms_in)} terms is over the limit of {self.settings.max_batch_calls}")
        # Text inputs never take gradients; decode shared lists of strings as text.
        shared = codecs.decode_tensors(obj.get("inputs"), ("inputs",), self.limits, frozenset(_text_refs(obj, self)))
        terms: list[CompositeTerm] = []
        differentiable_refs: set[str] = set()
        used: set[str] = set()
        for i, t in enumerate(terms_in):
            where: tuple[str | int, ...] = ("terms", i)
            if not isinstance(t, dict) or not isinstance(t.get("loss"), str):
                raise field_error((*where, "loss"), "each term needs a loss name")
            unknown = set(t) - {"loss", "weight", "inputs", "params"}
            if unknown:
                raise field_error((*where, sorted(unknown)[0]), "unknown field")
            spec = self.catalogue.get(t["loss"])
            if spec is None:
                raise field_error((*where, "loss"), self.unknown_loss(t["loss"]))
            self.keys.authorize(key, spec.name)
            weight = t.get("weight", 1.0)
            if not isinstance(weight, (int, float)) or isinstance(weight, bool):
                raise field_error((*where, "weight"), "expected a number")
            refs = t.get("inputs")
            if not isinstance(refs, dict) or not all(isinstance(v, str) for v in refs.values()):
                raise field_error((*where, "inputs"), "expected an object mapping loss inputs to shared tensor names")
            for k, ref in refs.items():
                if ref not in shared:
                    raise field_error((*where, "inputs", k), f"no shared tensor named {ref!r}")
                inp = spec.input(k)
                if inp is not None and inp.differentiable:
                    differentiable_refs.add(ref)
            try:
                call = self.engines[0].prepare(spec, {k: shared[v] for k, v in refs.items()}, t.get("params"), False)
            except Problem as p:
                errors = [{"loc": [*where, *e["loc"]], "msg": e["msg"]} for e in (p.errors or [])]
                # Limits keep their status (413 over a work bound, 503 unavailable); the rest is a 422.
                status = p.status if p.status in (413, 503) else 422
                raise Problem(status, f"term {i} ({spec.name}): {p.detail}", errors=errors or None) from None
            terms.append(CompositeTerm(call, float(weight), dict(refs)))
            used.update(refs.values())
        share = sum(_work(t.call) for t in terms)
        if share > 1 + WORK_SLACK:
            raise Problem(
                413, f"the terms together take {share:.0%} of the work bound of one request; split the composite"
            )
        unused = [k for k in shared if k not in used]
        if unused:
            raise field_error(("inputs", unused[0]), "no term uses this tensor")
        grad = obj.get("grad", False)
        if grad is True:
            names = tuple(n for n in shared if n in differentiable_refs)
            if not names:
                raise field_error(("grad",), "no shared tensor feeds a differentiable input")
        elif grad is False or grad is None:
            names = ()
        elif isinstance(grad, list) and all(isinstance(g, str) for g in grad):
            for g in grad:
                if g not in shared:
                    raise field_error(("grad", g), f"no shared tensor named {g!r}")
                if g not in differentiable_refs:
                    raise field_error(("grad", g), f"{g!r} feeds no differentiable input of any term")
            names = tuple(dict.fromkeys(grad))
        else:
            raise field_error(("grad",), "expected false, true or a list of tensor names")
        for n in names:
            t = shared[n]
            if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.dtype != torch.bool):
                raise field_error(("grad", n), "not a numeric tensor")
        comp = Composite(terms, {k: v for k, v in shared.items() if isinstance(v, torch.Tensor)}, names)
        return comp, b64

    @staticmethod
    def _encode_composite(res: CompositeResult, b64: bool) -> bytes:
        return codecs.dumps(
            {
                "value": codecs.encode_value(res.value),
                "terms": [{"loss": n, "weight": w, "value": codecs.encode_value(v)} for n, w, v in res.terms],
                "grads": {k: codecs.encode_tensor(v, b64) for k, v in res.grads.items()},
            }
        )

    # -- catalogue and info ------------------------------------------------------------

    def loss_info(self, spec: LossSpec) -> dict[str, Any]:
        """The catalogue entry of one loss (built once: specs and availability are fixed at start-up)."""
        info = self._infos.get(spec.name)
        if info is None:
            info = self._infos[spec.name] = self._build_info(spec)
        return info

    def catalogue_json(self) -> bytes:
        if self._catalogue_json is None:
            self._catalogue_json = orjson.dumps({"losses": [self.loss_info(s) for s in self.catalogue]})
        return self._catalogue_json

    def _build_info(self, spec: LossSpec) -> dict[str, Any]:
        unavailable = self.engines[0].unavailable.get(spec.name)
        return {
            "name": spec.name,
            "aliases": list(spec.aliases),
            "summary": spec.summary,
            "inputs": [
                {
                    "name": i.name,
                    "required": i.required,
                    "dtypes": list(i.dtypes),
                    "shape": i.shape,
                    "differentiable": i.differentiable,
                    "doc": i.doc,
                }
                for i in spec.inputs
            ],
            "params": spec.params.model_json_schema(),
            "reductions": list(spec.reductions),
            "available": unavailable is None,
            "reference": spec.reference,
            "unavailable_reason": unavailable,
        }

    def info(self) -> dict[str, Any]:
        s = self.settings
        return {
            "version": lossd.__version__,
            "torch": torch.__version__,
            "devices": [
                {"device": str(e.device), "name": _device_name(e.device), "inflight": e.inflight, "calls": e.calls}
                for e in self.engines
            ],
            "limits": {
                "max_body_bytes": s.max_body_bytes,
                "max_tensor_elements": s.max_tensor_elements,
                "max_tensors": s.max_tensors,
                "max_batch_calls": s.max_batch_calls,
                "max_concurrency": s.max_concurrency,
                "max_inflight_body_bytes": s.max_inflight_body_bytes,
                "deadline_ms": s.deadline_ms,
                "rate_limit_per_s": s.rate_limit_per_s,
                "auth": self.keys.enabled,
            },
            "losses": len(self.catalogue),
            # What the bits of a value depend on besides the inputs: CPU reductions split their sums
            # by the number of intra-op threads, so nodes agree bit for bit only when these agree.
            "numerics": {
                "torch_threads": torch.get_num_threads(),
                "tf32": any(e.device.type == "cuda" for e in self.engines)
                and (torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            },
        }

    def update_gauges(self) -> None:
        for e in self.engines:
            self.metrics.inflight.labels(str(e.device)).set(e.inflight)
        self.metrics.admitted.set(self.dispatcher.admitted)
        self.metrics.body_bytes.set(self.dispatcher.body_bytes)


def _work(call: Call) -> float:
    """The share of one request's work bound that a call takes (0 for losses linear in their inputs)."""
    work = call.spec.work
    return work(call.inputs) if work is not None else 0.0


def _text_refs(obj: Mapping[str, Any], service: Service) -> set[str]:
    refs: set[str] = set()
    for t in obj.get("terms") or []:
        if isinstance(t, dict) and isinstance(t.get("loss"), str) and isinstance(t.get("inputs"), dict):
            spec = service.catalogue.get(t["loss"])
            if spec is not None:
                for k, v in t["inputs"].items():
                    inp = spec.input(k)
                    if inp is not None and inp.kind == "text" and isinstance(v, str):
                        refs.add(v)
    return refs


def _device_name(d: torch.device) -> str:
    if d.type == "cuda":
        return torch.cuda.get_device_name(d)
    return "cpu"


async def warmup_async(service: Service) -> None:
    await asyncio.to_thread(service.warmup)
