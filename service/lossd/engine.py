"""The engine: validates calls on the host, then runs them on one device.

Split in two on purpose: :meth:`Engine.prepare` runs on the host and refuses anything
bad (unknown inputs, wrong dtypes, shapes, index ranges) before a tensor reaches the device,
so a client's class index of 10**9 is a 422 rather than a CUDA device-side assert that
would take the process down for every tenant. :meth:`Engine.run` does the device work, on the
device's worker thread, except small, linear calls, which run on the event loop (see
:meth:`Dispatcher.small`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pydantic
import torch

from lossd.codecs import NONFINITE_IN, JSONTensor
from lossd.errors import Problem, field_error
from lossd.losses import Catalogue
from lossd.spec import Input, InputError, LossSpec, Params

log = logging.getLogger("lossd.engine")

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda:N checked against the devices present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:  # torch's message lists every device type it knows; lossd runs on two
        raise ValueError(f"unsupported device {name!r} (auto, cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA devices exist")
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device {name!r} (auto, cpu, cuda, cuda:N)")
    return dev


@dataclass
class Call:
    """One validated loss call, its tensors converted and still on the host."""

    spec: LossSpec
    params: Params
    inputs: dict[str, JSONTensor]
    grad: tuple[str, ...]
    grad_dtypes: dict[str, torch.dtype]
    # The params as keyword arguments, read off the pydantic model once.
    param_kwargs: dict[str, Any] = field(default_factory=dict)

    def elements(self) -> int:
        """How many elements (or strings) its inputs hold."""
        n = 0
        for t in self.inputs.values():
            n += t.numel() if isinstance(t, torch.Tensor) else len(t)
        return n


@dataclass
class Result:
    loss: str
    value: torch.Tensor
    grads: dict[str, torch.Tensor] = field(default_factory=dict)
    terms: dict[str, float] | None = None
    # reduction "none": the value goes out as a tensor even when it has no dimensions (dice over "all")
    unreduced: bool = False


@dataclass
class CompositeTerm:
    call: Call
    weight: float
    refs: dict[str, str]  # loss input name -> shared tensor name


@dataclass
class Composite:
    terms: list[CompositeTerm]
    shared: dict[str, torch.Tensor]
    grad: tuple[str, ...]


@dataclass
class CompositeResult:
    value: torch.Tensor
    terms: list[tuple[str, float, torch.Tensor]]
    grads: dict[str, torch.Tensor]


def _compute_dtype(tensors: Sequence[Any]) -> torch.dtype:
    """float64 if any floating input is float64, else float32 (float16/bfloat16 compute in float32)."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.dtype == torch.float64:
            return torch.float64
    return torch.float32


_INT64 = (-(2**63), 2**63 - 1)
# What torch says when a Python number does not fit the C type it converts a param to.
_OVERFLOW = ("cannot be converted to type", "Overflow when unpacking", "too big to convert", "negative int to unsigned")


def param_overflow(call: Call, e: Exception) -> Problem | None:
    """The 422 located at the params that torch could not hold, when ``e`` is torch refusing a param
    (an ``ignore_index`` of 2**63, a ``margin`` of 1e308 in a float32 call); else None. Only looked
    for once torch has refused: a param beyond float32 that stays in Python (js_div's ``base``) is fine."""
    msg = str(e)
    if not any(s in msg for s in _OVERFLOW):
        return None
    dtype = _compute_dtype(list(call.inputs.values()))
    top = torch.finfo(dtype).max
    errors = []
    for name, value in call.param_kwargs.items():
        for v in value if isinstance(value, list) else (value,):
            if isinstance(v, bool):
                continue
            if isinstance(v, int) and not _INT64[0] <= v <= _INT64[1]:
                errors.append({"loc": ["params", name], "msg": f"{v} is outside the int64 range"})
                break
            if isinstance(v, float) and math.isfinite(v) and abs(v) > top:
                where = str(dtype).removeprefix("torch.")
                errors.append({"loc": ["params", name], "msg": f"{v} is beyond {where} (max {top:.4g})"})
                break
    if not errors:
        return None
    first = errors[0]
    return Problem(422, f"params.{first['loc'][1]}: {first['msg']}", errors=errors)


def convert(inp: Input, t: JSONTensor, dtype: torch.dtype) -> JSONTensor:
    """Convert one decoded input per its kind; 422 for dtypes the kind does not accept."""
    where = ("inputs", inp.name)
    if isinstance(t, list):
        if inp.kind == "text":
            return t
        raise field_error(where, "expected a tensor, got a list of strings")
    if inp.kind == "text":
        if t.is_floating_point() or t.dtype == torch.bool:
            raise field_error(where, "expected a list of strings or an integer tensor")
        return _as(t, torch.int64)
    if inp.kind == "index":
        if t.is_floating_point() or t.dtype == torch.bool:
            raise field_error(where, f"expected an integer dtype, got {str(t.dtype).removeprefix('torch.')}")
        return _as(t, torch.int64)
    if inp.kind in ("float_or_index", "onehot_or_index"):
        if t.dtype == torch.bool:
            if inp.kind == "float_or_index":
                raise field_error(where, "expected integer indices or floating probabilities, got bool")
            return _as(t, dtype)  # a one-hot, 0/1 in the compute dtype
        return _as(t, dtype) if t.is_floating_point() else _as(t, torch.int64)
    if inp.kind == "float" and not t.is_floating_point():
        # api.md: integer data for a float-only input converts to float32 (then computes in the
        # call's dtype, float64 when another input is float64).
        return _as(_as(t, torch.float32), dtype)
    return _as(t, dtype)  # float, mask


def _host(t: torch.Tensor) -> torch.Tensor:
    # Tensor.cpu() of a CPU tensor returns it, but only after a dispatch (half a microsecond each).
    return t if t.is_cpu else t.cpu()


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # Tensor.to is a no-op for the same dtype but still a microsecond of dispatch.
    return t if t.dtype == dtype else t.to(dtype)


def parse_grad(spec: LossSpec, grad: Any, given: Mapping[str, Any]) -> tuple[str, ...]:
    if grad is False or grad is None:
        return ()
    if grad is True:
        names = [n for n in spec.differentiable if n in given]
        if not names:
            raise field_error(("grad",), f"{spec.name} has no differentiable input")
        return tuple(names)
    if not isinstance(grad, list) or not all(isinstance(g, str) for g in grad):
        raise field_error(("grad",), "expected false, true or a list of input names")
    for g in grad:
        inp = spec.input(g)
        if inp is None:
            raise field_error(("grad", g), f"{spec.name} has no input {g!r}")
        if not inp.differentiable:
            raise field_error(("grad", g), f"input {g!r} of {spec.name} is not differentiable")
        if g not in given:
            raise field_error(("grad", g), f"input {g!r} was not given")
    return tuple(dict.fromkeys(grad))


# JSON has no infinity: params take the spellings tensor data takes (decisions.md, Numbers). Where a
# param must be finite, its model says so ("Input should be a finite number").
def _nonfinite(v: Any) -> Any:
    if isinstance(v, str):
        return NONFINITE_IN.get(v, v)
    if isinstance(v, list):
        return [NONFINITE_IN.get(x, x) if isinstance(x, str) else x for x in v]
    return v


def parse_params(spec: LossSpec, params: Any) -> Params:
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise field_error(("params",), "expected an object")
    for v in params.values():
        if (type(v) is str and v in NONFINITE_IN) or type(v) is list:
            params = {k: _nonfinite(v) for k, v in params.items()}
            break
    try:
        return spec.params.model_validate(params)
    except pydantic.ValidationError as e:
        errors = [{"loc": ["params", *map(str, err["loc"])], "msg": err["msg"]} for err in e.errors()]
        first = errors[0]
        raise Problem(422, f"{'.'.join(first['loc'])}: {first['msg']}", errors=errors) from None


class Engine:
    """Loss execution on one device, with resources (weights) loaded at start-up."""

    def __init__(self, catalogue: Catalogue, device: torch.device, settings: Any, threads: int = 1) -> None:
        self.catalogue = catalogue
        self.device = device
        if device.type == "cuda":
            # Exact, reproducible values: TF32 convolutions and matmuls are off by 1e-3 relative.
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        self.threads = threads
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=f"lossd-{device}")
        self.inflight = 0
        self.calls = 0
        self.resources: dict[str, Any] = {}
        self.unavailable: dict[str, str] = {}
        # Params are frozen models: a call without params shares its loss's default instance
        # (and keyword arguments), which saves a pydantic validation per call.
        self._defaults: dict[str, tuple[Params, dict[str, Any]]] = {}
        for spec in catalogue:
            with contextlib.suppress(pydantic.ValidationError):  # a loss with required params has none
                default = spec.params()
                self._defaults[spec.name] = (default, dict(default))
        for spec in catalogue:
            if spec.requires is None:
                continue
            value = getattr(settings, spec.requires, None)
            if value is None or spec.load is None:
                self.unavailable[spec.name] = (
                    f"{spec.name} needs the setting {spec.requires} (env LOSSD_{spec.requires.upper()}), "
                    "which this server was started without"
                )
            else:
                self.resources[spec.name] = spec.load(value, device)

    # -- host side -----------------------------------------------------------------------

    def prepare(self, spec: LossSpec, inputs: Mapping[str, JSONTensor], params: Any, grad: Any) -> Call:
        """Validate one call on the host: params, inputs, dtypes, the loss's own checks."""
        if spec.name in self.unavailable:
            raise Problem(503, self.unavailable[spec.name])
        default = self._defaults.get(spec.name) if params is None or params == {} else None
        p, kwargs = default if default is not None else (parse_params(spec, params), None)
        for name in inputs:
            if spec.input(name) is None:
                expected = ", ".join(i.name for i in spec.inputs)
                raise field_error(("inputs", name), f"unknown input for {spec.name} (inputs: {expected})")
        for inp in spec.inputs:
            if inp.required and inp.name not in inputs:
                raise field_error(("inputs", inp.name), f"required input of {spec.name} is missing")
        g = parse_grad(spec, grad, inputs)
        dtype = _compute_dtype([v for k, v in inputs.items() if self._floating_kind(spec, k)])
        converted: dict[str, JSONTensor] = {}
        for name, t in inputs.items():
            spec_in = spec.input(name)
            assert spec_in is not None
            converted[name] = convert(spec_in, t, dtype)
        grad_dtypes: dict[str, torch.dtype] = {}
        for name in g:
            orig = inputs[name]
            assert isinstance(orig, torch.Tensor)
            grad_dtypes[name] = orig.dtype if orig.dtype in FLOATS else torch.float32  # integer data: float32
        if spec.check is not None:
            try:
                spec.check(converted, p)
            except InputError as e:
                raise field_error(e.loc, e.msg, e.status) from None
            except (RuntimeError, ValueError, IndexError, ArithmeticError) as e:
                # A check that trips over inputs it did not foresee: still the client's inputs, not a 500.
                log.warning("the checks of %s raised: %s", spec.name, e)
                raise Problem(422, f"{spec.name} cannot take these inputs: {e}") from None
        return Call(spec, p, converted, g, grad_dtypes, dict(p) if kwargs is None else kwargs)

    @staticmethod
    def _floating_kind(spec: LossSpec, name: str) -> bool:
        inp = spec.input(name)
        return inp is not None and inp.kind in ("float", "float_or_index", "onehot_or_index", "mask")

    # -- device side (the worker thread; small calls on the event loop) --------------------

    def run(self, call: Call) -> Result:
        """Run one prepared call on the device; OOM becomes 503, other runtime errors 422."""
        try:
            return self._run(call)
        except (RuntimeError, ValueError, IndexError, ArithmeticError) as e:
            raise param_overflow(call, e) or self._device_problem(
                e, f"this {call.spec.name} call", call.spec.name
            ) from None

    def _device_problem(self, e: Exception, what: str, name: str) -> Problem:
        """A device failure as a problem: out of memory is 503 (and the cache is freed), anything else 422."""
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e):
            self._recover()
            return Problem(503, f"the device ran out of memory for {what}", headers={"Retry-After": "1"})
        # The host checks should have caught it; a client-caused failure is still not a 500.
        log.warning("%s raised on %s: %s", name, self.device, e)
        return Problem(422, f"{name} could not be computed for these inputs: {e}")

    def _recover(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _to_device(self, t: JSONTensor) -> JSONTensor:
        if isinstance(t, list) or self.device.type == "cpu":
            return t
        return t.to(self.device, non_blocking=True)

    def _kwargs(self, call: Call, tensors: Mapping[str, JSONTensor]) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(tensors)
        kwargs.update(call.param_kwargs)
        if call.spec.name in self.resources:
            kwargs["resource"] = self.resources[call.spec.name]
        return kwargs

    def _run(self, call: Call) -> Result:
        spec = call.spec
        # A host-only loss (edit_distance) computes where its inputs already are.
        tensors = dict(call.inputs) if spec.host_only else {k: self._to_device(v) for k, v in call.inputs.items()}
        kwargs = self._kwargs(call, tensors)
        if not call.grad:
            with torch.inference_mode():
                value, terms = _value_and_terms(spec.fn(**kwargs))
            return Result(spec.name, _host(value), {}, _terms(terms), _unreduced(call))
        if spec.value_and_grad is not None:
            closed = spec.value_and_grad(call.grad, **kwargs)
            if closed is not None:
                value, closed_grads = closed
                grads = {name: _host(_as(closed_grads[name], call.grad_dtypes[name])) for name in call.grad}
                return Result(spec.name, _host(value), grads, None, _unreduced(call))
        leaves = []
        for name in call.grad:
            t = kwargs[name]
            assert isinstance(t, torch.Tensor)
            leaf = t.detach().requires_grad_(True)
            kwargs[name] = leaf
            leaves.append(leaf)
        value, terms = _value_and_terms(spec.fn(**kwargs))
        total = value if value.dim() == 0 else value.sum()
        gs = grad(total, leaves) if total.requires_grad else [None] * len(leaves)
        grads = {}
        for name, leaf, g in zip(call.grad, leaves, gs):
            g = torch.zeros_like(leaf) if g is None else g
            grads[name] = _host(_as(g, call.grad_dtypes[name]))  # not part of a graph (create_graph is off)
        return Result(spec.name, _host(value.detach()), grads, _terms(terms), _unreduced(call))

    def run_many(self, calls: Sequence[Call | Problem]) -> list[Result | Problem]:
        """Run a batch in one trip to the worker; a failing call fails alone."""
        out: list[Result | Problem] = []
        for c in calls:
            if isinstance(c, Problem):
                out.append(c)
                continue
            try:
                out.append(self.run(c))
            except Problem as p:
                out.append(p.bare())
        return out

    def run_composite(self, comp: Composite) -> CompositeResult:
        try:
            return self._run_composite(comp)
        except _TermFailed as f:
            call = comp.terms[f.index].call
            refused = param_overflow(call, f.error)
            if refused is not None:
                raise Problem(
                    422,
                    f"term {f.index} ({call.spec.name}): {refused.detail}",
                    errors=refused.within(("terms", f.index)).errors,
                ) from None
            problem = self._device_problem(f.error, "this composite call", f"term {f.index} ({call.spec.name})")
            if problem.status == 422:
                problem.errors = [{"loc": ["terms", f.index], "msg": str(f.error)}]
            raise problem from None
        except (RuntimeError, ValueError, IndexError, ArithmeticError) as e:
            raise self._device_problem(e, "this composite call", "the composite") from None

    def _run_composite(self, comp: Composite) -> CompositeResult:
        leaves: dict[str, torch.Tensor] = {}
        for name in comp.grad:
            src = comp.shared[name]
            dtype = torch.float64 if src.dtype == torch.float64 else torch.float32
            # detach(): .to() may return ``src`` itself, which the terms' other uses also hold.
            leaves[name] = src.to(self.device, dtype).detach().requires_grad_(True)
        ctx = torch.inference_mode() if not leaves else contextlib.nullcontext()
        with ctx:
            total: torch.Tensor | None = None
            values: list[tuple[str, float, torch.Tensor]] = []
            for i, term in enumerate(comp.terms):
                tensors: dict[str, JSONTensor] = {}
                for name, t in term.call.inputs.items():
                    ref = term.refs[name]
                    inp = term.call.spec.input(name)
                    # Only differentiable uses carry the gradient: where the same tensor is also a
                    # label or a target, that use is a constant, as it is in a single call.
                    if ref in leaves and inp is not None and inp.differentiable and isinstance(t, torch.Tensor):
                        tensors[name] = leaves[ref].to(t.dtype)
                    else:
                        tensors[name] = self._to_device(t)
                try:
                    value, _ = _value_and_terms(term.call.spec.fn(**self._kwargs(term.call, tensors)))
                except (RuntimeError, ValueError, IndexError, ArithmeticError) as e:
                    raise _TermFailed(i, e) from None
                if value.dim() != 0:
                    value = value.sum()
                values.append((term.call.spec.name, term.weight, value.detach().cpu()))
                weighted = value * term.weight
                total = (
                    weighted if total is None else total + weighted.to(torch.promote_types(total.dtype, weighted.dtype))
                )
            assert total is not None
            grads: dict[str, torch.Tensor] = {}
            if leaves:
                names = list(leaves)
                gs = grad(total, [leaves[n] for n in names]) if total.requires_grad else [None] * len(names)
                for n, g in zip(names, gs):
                    g = torch.zeros_like(leaves[n]) if g is None else g
                    orig = comp.shared[n].dtype
                    grads[n] = g.detach().to(orig if orig in FLOATS else g.dtype).cpu()
            return CompositeResult(total.detach().cpu(), values, grads)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)


class _TermFailed(Exception):
    """A composite's term raised: which one, and what."""

    def __init__(self, index: int, error: Exception) -> None:
        self.index = index
        self.error = error


def _value_and_terms(out: Any) -> tuple[torch.Tensor, Mapping[str, torch.Tensor] | None]:
    """A loss function returns its value, or (value, named terms)."""
    return out if isinstance(out, tuple) else (out, None)


def _terms(terms: Mapping[str, torch.Tensor] | None) -> dict[str, float] | None:
    if terms is None:
        return None
    return {k: float(v.detach().cpu().item()) for k, v in terms.items()}


@dataclass(slots=True, eq=False)
class _Queued:
    """A call for a device worker: queued until the end of a turn of the event loop, then on the worker."""

    fn: Any
    args: tuple[Any, ...]
    deadline: float
    done: asyncio.Future[Any]
    expiry: asyncio.TimerHandle | None = None  # answers 504 at the deadline (Dispatcher._expire)
    started: bool = False  # set by the worker, under Dispatcher._claim


# (ok, the result or the exception, whether the call ran: a call past its deadline did not)
_Outcome = tuple[bool, Any, bool]


@dataclass(slots=True, eq=False)
class _Small:
    """A request with a small body, waiting for the end of a turn of the event loop (:meth:`Dispatcher.small`)."""

    decode: Callable[[], tuple[Any, Any]]
    light: Callable[[Any], bool]
    run: Callable[..., Any]
    encode: Callable[[Any, Any], Any]
    deadline: float
    done: asyncio.Future[Any]


@dataclass(slots=True)
class _Handoff:
    """A decoded small request that is not for the loop: its work and context, for a device worker."""

    work: Any
    context: Any


class Dispatcher:
    """Admission control and placement: a bounded number of calls in flight across engines.

    A request takes a slot before its body is read and gives it back when its answer is
    ready, so ``max_concurrency`` bounds both the work queued for the devices and the request
    bodies held in memory; ``max_inflight_bytes`` bounds those bodies' bytes together (a body
    alone may exceed it: one request is never refused for its size here). Past either the
    server answers 503 with Retry-After instead of queueing without limit. Each call goes to
    the engine with the fewest calls in flight.
    """

    def __init__(
        self,
        engines: Sequence[Engine],
        max_concurrency: int,
        retry_after_s: int,
        on_refused: Callable[[str], None] | None = None,
        on_ran: Callable[[Engine, float], None] | None = None,
        max_inflight_bytes: int | None = None,
        max_per_client: int = 0,
    ) -> None:
        self.engines = list(engines)
        self.max_concurrency = max_concurrency
        self.retry_after_s = retry_after_s
        self.max_inflight_bytes = max_inflight_bytes
        # Slots one client may hold (0: no bound), so that one tenant's stalled uploads or flood cannot
        # take every slot; the calls each client holds now.
        self.max_per_client = max_per_client
        self.per_client: dict[str, int] = {}
        self.body_bytes = 0
        # Accounting hooks: a request refused ("busy": no slot; "memory": no byte budget; "deadline": 504)
        # and a call run (its device seconds).
        self.on_refused = on_refused
        self.on_ran = on_ran
        self.admitted = 0
        # Calls for the device workers waiting for the end of this turn of the event loop, per engine;
        # small requests waiting for it (all engines).
        self._queued: dict[Engine, list[_Queued]] = {}
        # Whether a queued call starts (its worker) or is answered 504 (the loop, at its deadline): one or
        # the other, decided under this lock.
        self._claim = threading.Lock()
        self._small: list[_Small] = []

    def _least_loaded(self) -> Engine:
        return min(self.engines, key=lambda e: e.inflight)

    def busy(self, held: str | None = None) -> Problem:
        """503 with Retry-After: the server's calls in flight are at their bound, or what ``held`` says is."""
        held = held or f"{self.admitted} calls in flight (limit {self.max_concurrency})"
        return Problem(503, f"server busy: {held}; retry later", headers={"Retry-After": str(self.retry_after_s)})

    def slot(self, nbytes: int = 0, client: str | None = None) -> Slot:
        """One of the ``max_concurrency`` slots, held (``with``) for the duration of a request, with
        ``nbytes`` of body (more with :meth:`Slot.grow`); 503 if no slot or byte budget is free, or if
        ``client`` holds ``max_per_client`` slots already."""
        return Slot(self, nbytes, client)

    def _refuse(self, reason: str, problem: Problem) -> Problem:
        if self.on_refused is not None:
            self.on_refused(reason)
        return problem

    def _refuse_over_budget(self, nbytes: int, own: int = 0) -> Problem | None:
        """The 503 (counted as refused) if ``nbytes`` more, for a request already holding ``own``,
        would pass the byte budget while other requests' bodies are in flight; else None."""
        limit = self.max_inflight_bytes
        if limit is None or self.body_bytes == own or self.body_bytes + nbytes <= limit:
            return None
        return self._refuse(
            "memory",
            Problem(
                503,
                f"server busy: {self.body_bytes} bytes of request bodies in flight (limit {limit}); retry later",
                headers={"Retry-After": str(self.retry_after_s)},
            ),
        )

    async def submit(self, fn: Any, *args: Any, deadline: float) -> Any:
        """Run ``fn(engine, *args)`` on the least-loaded engine, on its worker thread.

        Calls are not handed over one by one: those submitted in one turn of the event loop are
        queued and make one trip to the worker's thread (one per thread of the engine) at its
        end; each answer goes back to the loop as soon as it is ready.
        """
        if time.monotonic() > deadline:
            raise self._past_deadline()
        engine = self._least_loaded()
        # In flight until the worker is done with the call (:meth:`_finished`), not until this coroutine
        # ends: a cancelled request's call may still be running (Ray cancels on client disconnect), and
        # placement and :meth:`_on_loop` must see it.
        engine.inflight += 1
        loop = asyncio.get_running_loop()
        item = _Queued(fn, args, deadline, loop.create_future())
        del args  # the item holds them alone, so that _expire can let go of them (a 504's traceback holds this frame)
        queue = self._queued.setdefault(engine, [])
        queue.append(item)
        if len(queue) == 1:
            loop.call_soon(self._run_queued, engine, loop)
        # A call still queued behind others when its deadline passes is answered 504 then, not when its
        # worker reaches it (and skips it).
        item.expiry = loop.call_later(deadline - time.monotonic(), self._expire, item, loop)
        try:
            return await item.done
        finally:
            item.expiry.cancel()

    def _past_deadline(self) -> Problem:
        if self.on_refused is not None:
            self.on_refused("deadline")
        return Problem(504, "the call's deadline passed before it ran")

    def _finished(self, engine: Engine, done: asyncio.Future[Any], outcome: _Outcome | None) -> None:
        """A worker is done with a call (``outcome`` None: skipped, its request gone or answered 504). The
        engine's ``calls`` counts the calls it ran, as /metrics' lossd_device_calls_total does."""
        engine.inflight -= 1
        if outcome is not None:
            ok, value, ran = outcome
            engine.calls += ran
            _settle(done, (ok, value))

    def _expire(self, item: _Queued, loop: asyncio.AbstractEventLoop) -> None:
        left = item.deadline - time.monotonic()
        if left > 0:  # uvloop's timers can fire a millisecond early
            item.expiry = loop.call_later(left, self._expire, item, loop)
            return
        with self._claim:
            if item.done.done() or item.started:  # a call that started in time runs to its end
                return
            # Its slot is given back with the 504: its tensors (views of the request body) go with it,
            # not when the worker reaches the call and skips it.
            item.fn, item.args = None, ()
            item.done.set_exception(self._past_deadline())

    def _run_queued(self, engine: Engine, loop: asyncio.AbstractEventLoop) -> None:
        """Hand the calls submitted in the last turn of the event loop to the engine's threads."""
        queued = self._queued.pop(engine)

        def on_worker(part: list[_Queued]) -> None:
            for item in part:
                # Skipped if its request is gone, or was answered 504 at its deadline (:meth:`_expire`).
                with self._claim:
                    item.started = not item.done.done()
                outcome = self._outcome(item.fn, engine, item.args, item.deadline) if item.started else None
                loop.call_soon_threadsafe(self._finished, engine, item.done, outcome)

        threads = engine.threads
        for part in (queued[i::threads] for i in range(min(threads, len(queued)))):
            try:
                engine.executor.submit(on_worker, part)
            except RuntimeError:  # the engine has been shut down
                for item in part:
                    shutting_down = Problem(503, "the server is shutting down", headers={"Retry-After": "1"})
                    self._finished(engine, item.done, (False, shutting_down, False))

    async def small(
        self,
        decode: Callable[[], tuple[Any, Any]],
        light: Callable[[Any], bool],
        run: Callable[..., Any],
        encode: Callable[[Any, Any], Any],
        deadline: float,
    ) -> Any:
        """A request whose body is small: ``decode()`` gives (work, context); ``run(engine, work)``
        computes, on the event loop when ``light(work)`` says it is little work and the least-loaded
        engine can take it there (:meth:`_on_loop`), else on a device worker (:meth:`submit`);
        ``encode(result, context)`` is the answer.

        Requests that arrive in one turn of the event loop are taken together at its end, phase by
        phase: every body is decoded, then every light call computed, then every answer encoded.
        Each is computed exactly as it would be alone, in arrival order, with its own outcome; what
        changes is that the code of each phase stays in the CPU's caches across requests rather
        than being evicted by the next phase and by the HTTP layer. (32,10) cross_entropy with
        gradients, 16 calls in-process: 150 µs a call from body to answer one after another, 115
        phase by phase; served on one core with wrk on the other at 32 connections, 1.2x the
        requests per second of handling each request from body to answer in its own task.
        """
        loop = asyncio.get_running_loop()
        job = _Small(decode, light, run, encode, deadline, loop.create_future())
        self._small.append(job)
        if len(self._small) == 1:
            loop.call_soon(self._run_small)
        out = await job.done
        if isinstance(out, _Handoff):
            result = await self.submit(run, out.work, deadline=deadline)
            return encode(result, out.context)
        return out

    def _run_small(self) -> None:
        """Take the small requests of the last turn of the event loop phase by phase (:meth:`small`)."""
        jobs, self._small = self._small, []
        try:
            self._phases(jobs)
        finally:
            # Whatever happened, no request is left waiting (its handler answers 500 for this).
            for job in jobs:
                if not job.done.done():
                    job.done.set_exception(RuntimeError("a small request was left unanswered"))

    def _phases(self, jobs: list[_Small]) -> None:
        decoded: list[tuple[_Small, Any, Any]] = []
        for job in jobs:
            if job.done.cancelled():
                continue
            try:
                work, context = job.decode()
            except Exception as e:
                job.done.set_exception(e)
                continue
            decoded.append((job, work, context))
        computed: list[tuple[_Small, Any, tuple[bool, Any]]] = []
        # Counted in flight until the phase ends, so that the calls of a turn spread over the engines
        # (their metrics and counters; on the loop they all run on its thread).
        placed: dict[Engine, int] = {}
        try:
            for job, work, context in decoded:
                try:
                    engine = self._loop_engine(placed) if job.light(work) else None
                    if engine is None:
                        job.done.set_result(_Handoff(work, context))
                        continue
                    engine.inflight += 1
                    placed[engine] = placed.get(engine, 0) + 1
                    ok, value, ran = self._outcome(job.run, engine, (work,), job.deadline)
                    engine.calls += ran
                except Exception as e:
                    job.done.set_exception(e)
                    continue
                computed.append((job, context, (ok, value)))
        finally:
            for engine, n in placed.items():
                engine.inflight -= n
        for job, context, (ok, value) in computed:
            if not ok:
                job.done.set_exception(value)
                continue
            try:
                job.done.set_result(job.encode(value, context))
            except Exception as e:
                job.done.set_exception(e)

    def _loop_engine(self, placed: dict[Engine, int]) -> Engine | None:
        """The least-loaded engine that may take a light call on the event loop now, if any
        (``placed``: this turn's calls on the loop so far, per engine)."""
        if len(self.engines) == 1:  # the common case, on every small call
            only = self.engines[0]
            return only if self._on_loop(only, placed.get(only, 0)) else None
        engines = [e for e in self.engines if self._on_loop(e, placed.get(e, 0))]
        return min(engines, key=lambda e: e.inflight) if engines else None

    @staticmethod
    def _on_loop(engine: Engine, on_loop: int) -> bool:
        """Whether a light call may run on the event loop on ``engine``: a hand-off to a worker thread
        and back costs more than such a call. Always on the CPU. On a GPU only while the engine's
        worker has nothing (its calls in flight are the ``on_loop`` ones of this turn, finished): the
        call then waits for its own few kernels alone, never behind another call's work. Handed to
        the worker, each of its CUDA calls gives up the GIL and must win it back from the busy loop,
        which under load costs milliseconds a call (H100, (32,10) cross_entropy at 32 connections:
        about 1,800 requests/s on the worker, 3,200 on the loop)."""
        return engine.device.type == "cpu" or engine.inflight == on_loop

    def _outcome(self, fn: Any, engine: Engine, args: tuple[Any, ...], deadline: float) -> _Outcome:
        """Run one call if its deadline has not passed: (True, result, ran) or (False, the exception: a
        Problem, or a bug that the request's handler reports, ran); ``ran`` is False for a 504."""
        if time.monotonic() > deadline:
            return False, self._past_deadline(), False
        t0 = time.perf_counter()
        try:
            return True, fn(engine, *args), True
        except Exception as e:
            return False, e, True
        finally:
            if self.on_ran is not None:
                self.on_ran(engine, time.perf_counter() - t0)


class Slot:
    # A plain class rather than @contextmanager: this is on every request's path.
    __slots__ = ("client", "dispatcher", "nbytes")

    def __init__(self, dispatcher: Dispatcher, nbytes: int, client: str | None) -> None:
        self.dispatcher = dispatcher
        self.nbytes = nbytes
        self.client = client if dispatcher.max_per_client else None

    def __enter__(self) -> Slot:
        d = self.dispatcher
        if d.admitted >= d.max_concurrency:
            raise d._refuse("busy", d.busy())
        held = 0
        if self.client is not None:
            held = d.per_client.get(self.client, 0)
            if held >= d.max_per_client:
                who = f"this client (API key, or address without keys) has {held} calls in flight"
                raise d._refuse("client", d.busy(f"{who} (limit {d.max_per_client})"))
        if self.nbytes and (p := d._refuse_over_budget(self.nbytes)) is not None:
            raise p
        d.admitted += 1
        d.body_bytes += self.nbytes
        if self.client is not None:
            d.per_client[self.client] = held + 1
        return self

    def grow(self, nbytes: int) -> None:
        """Count ``nbytes`` more of body (a chunked body, as it arrives); 503 past the byte budget."""
        d = self.dispatcher
        p = d._refuse_over_budget(nbytes, self.nbytes)
        if p is not None:
            raise p
        d.body_bytes += nbytes
        self.nbytes += nbytes

    def __exit__(self, *exc: object) -> None:
        d = self.dispatcher
        d.admitted -= 1
        d.body_bytes -= self.nbytes
        if self.client is not None:
            left = d.per_client[self.client] - 1
            if left:
                d.per_client[self.client] = left
            else:  # bounded by the clients in flight, not by every client ever seen
                del d.per_client[self.client]


_AUTOGRAD_ENGINE = torch.autograd.Variable._execution_engine


def grad(total: torch.Tensor, leaves: Sequence[torch.Tensor]) -> tuple[torch.Tensor | None, ...]:
    """``torch.autograd.grad(total, leaves, allow_unused=True)`` for a scalar ``total``, without the
    Python wrapper around the engine call it ends in.

    The wrapper's argument handling (torch-function dispatch, ``_make_grads``, a context copy for
    compiled graphs) costs about 15 µs, as much as a (32,10) cross_entropy's whole backward pass;
    the engine call is the same, so the gradients are the same bits (tests/test_engine.py).
    """
    return tuple(
        _AUTOGRAD_ENGINE.run_backward((total,), (torch.ones_like(total),), False, False, tuple(leaves), True, False)
    )


def _unreduced(call: Call) -> bool:
    return call.param_kwargs.get("reduction") == "none"


def _settle(done: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if done.done():  # cancelled while it ran
        return
    ok, value = outcome
    if ok:
        done.set_result(value)
    else:
        done.set_exception(value)
