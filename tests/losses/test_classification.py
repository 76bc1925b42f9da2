"""Classification and probabilistic losses against independent references.

torch rows are checked against ``torch.nn.functional`` (values and autograd gradients);
the others against float64 formulas written here (numpy), scipy where it matches exactly,
plus ``torch.autograd.gradcheck`` on the service's function.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from scipy.spatial.distance import jensenshannon

from lossd.losses import Catalogue
from lossd.losses import classification as C
from lossd.spec import InputError, LossSpec

D = torch.float64
REDUCTIONS = ("mean", "sum", "none")

EXPECTED_ALIASES = {
    "cross_entropy": {
        "softmax_cross_entropy",
        "softmax_loss",
        "categorical_cross_entropy",
        "sparse_categorical_cross_entropy",
    },
    "nll": {"negative_log_likelihood"},
    "binary_cross_entropy": {"bce"},
    "binary_cross_entropy_with_logits": {"sigmoid_cross_entropy", "logistic"},
    "balanced_binary_cross_entropy": {"balanced_sigmoid_cross_entropy"},
    "focal": {"softmax_focal"},
    "sigmoid_focal": {"binary_focal", "retinanet_focal"},
    "kl_div": {"kl_divergence"},
    "js_div": {"jensen_shannon"},
    "poisson_nll": set(),
    "gaussian_nll": set(),
}

EXPECTED_DIFFERENTIABLE = {
    "cross_entropy": ("input",),
    "nll": ("input",),
    "binary_cross_entropy": ("input",),
    "binary_cross_entropy_with_logits": ("input",),
    "balanced_binary_cross_entropy": ("input",),
    "focal": ("input",),
    "sigmoid_focal": ("input",),
    "kl_div": ("input", "target"),
    "js_div": ("input", "target"),
    "poisson_nll": ("input",),
    "gaussian_nll": ("input", "target", "var"),
}


def spec(name: str) -> LossSpec:
    for s in C.SPECS:
        if s.name == name:
            return s
    raise KeyError(name)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=D)


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(*shape, generator=gen(seed), dtype=D)


def randint(high: int, *shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=gen(seed))


def grads(fn: Any, tensors: dict[str, torch.Tensor], diff: tuple[str, ...], **kw: Any) -> tuple[Any, ...]:
    """(value, grad of each name in diff) of fn(**tensors, **kw), sum-reduced when the value is not a scalar."""
    leaves = {
        k: (v.detach().clone().requires_grad_(k in diff) if v.is_floating_point() else v) for k, v in tensors.items()
    }
    out = fn(**leaves, **kw)
    g = torch.autograd.grad(out.sum(), [leaves[k] for k in diff], allow_unused=False)
    return (out.detach(), *g)


def assert_matches(fn: Any, ref: Any, tensors: dict[str, torch.Tensor], diff: tuple[str, ...], **kw: Any) -> None:
    got = grads(fn, tensors, diff, **kw)
    want = grads(ref, tensors, diff, **kw)
    assert got[0].shape == want[0].shape
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-12, equal_nan=True)
    for a, b in zip(got[1:], want[1:]):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def np_reduce(x: np.ndarray, reduction: str) -> np.ndarray:
    if reduction == "mean":
        return np.asarray(x.mean())
    if reduction == "sum":
        return np.asarray(x.sum())
    return x


def check(name: str, inputs: dict[str, Any], params: dict[str, Any] | None = None) -> None:
    s = spec(name)
    assert s.check is not None
    s.check(inputs, s.params(**(params or {})))


def assert_check_fails(name: str, inputs: dict[str, Any], loc: tuple[str, str], params: dict[str, Any] | None = None):
    with pytest.raises(InputError) as ei:
        check(name, inputs, params)
    assert ei.value.loc == loc, ei.value.msg
    return ei.value


# ---------------------------------------------------------------------------
# Catalogue declarations


def test_specs_cover_the_rows_with_their_aliases() -> None:
    assert {s.name: set(s.aliases) for s in C.SPECS} == EXPECTED_ALIASES
    cat = Catalogue(C.SPECS)
    for name, aliases in EXPECTED_ALIASES.items():
        for a in aliases:
            got = cat.get(a)
            assert got is not None and got.name == name


@pytest.mark.parametrize("name", sorted(EXPECTED_ALIASES))
def test_spec_declarations(name: str) -> None:
    s = spec(name)
    assert s.differentiable == EXPECTED_DIFFERENTIABLE[name]
    assert s.summary and "\n" not in s.summary
    assert s.reference
    assert s.check is not None
    if name == "kl_div":
        assert set(s.reductions) == {"batchmean", "mean", "sum", "none"}
        assert s.params().reduction == "batchmean"  # type: ignore[attr-defined]
    else:
        assert set(s.reductions) == set(REDUCTIONS)
        assert s.params().reduction == "mean"  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", sorted(EXPECTED_ALIASES))
def test_unknown_param_rejected(name: str) -> None:
    with pytest.raises(ValidationError):
        spec(name).params(no_such_param=1)
    with pytest.raises(ValidationError):
        spec(name).params(reduction="max")


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("cross_entropy", {"label_smoothing": 1.5}),
        ("cross_entropy", {"label_smoothing": -0.1}),
        ("focal", {"gamma": -1.0}),
        ("nll", {"reduction": "batchmean"}),
        ("nll", {"ignore_index": "x"}),
        ("balanced_binary_cross_entropy", {"beta": 1.5}),
        ("balanced_binary_cross_entropy", {"beta": -0.1}),
        ("sigmoid_focal", {"alpha": 1.5}),
        ("sigmoid_focal", {"alpha": -0.5}),
        ("sigmoid_focal", {"alpha": -2}),
        ("sigmoid_focal", {"gamma": -1.0}),
        ("kl_div", {"reduction": "max"}),
        ("kl_div", {"log_target": "maybe"}),
        ("js_div", {"base": 0}),
        ("js_div", {"base": -2}),
        ("js_div", {"base": 1}),
        ("js_div", {"input_is": "probabilities"}),
        ("js_div", {"reduction": "batchmean"}),
        ("poisson_nll", {"eps": -1.0}),
        ("gaussian_nll", {"eps": -1.0}),
        ("binary_cross_entropy", {"weight": 1.0}),
    ],
)
def test_bad_params_rejected(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        spec(name).params(**params)


def test_good_params_accepted() -> None:
    assert spec("sigmoid_focal").params(alpha=-1).alpha == -1  # type: ignore[attr-defined]
    assert spec("sigmoid_focal").params(alpha=0).alpha == 0  # type: ignore[attr-defined]
    assert spec("sigmoid_focal").params(alpha=1).alpha == 1  # type: ignore[attr-defined]
    assert spec("js_div").params(base=2).base == 2  # type: ignore[attr-defined]
    assert spec("js_div").params(base=0.5).base == 0.5  # type: ignore[attr-defined]
    assert spec("focal").params(alpha=[0.1, 0.2]).alpha == [0.1, 0.2]  # type: ignore[attr-defined]
    assert spec("kl_div").params(reduction="mean").reduction == "mean"  # type: ignore[attr-defined]
    assert spec("balanced_binary_cross_entropy").params().beta is None  # type: ignore[attr-defined]
    p = spec("poisson_nll").params()
    assert (p.log_input, p.full, p.eps) == (True, False, 1e-8)  # type: ignore[attr-defined]
    g = spec("gaussian_nll").params()
    assert (g.full, g.eps) == (False, 1e-6)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------------
# check functions: every wrong input is an InputError naming it


def _x(*shape: int) -> torch.Tensor:
    return randn(*shape)


CHECK_FAILURES: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, str]]] = [
    # cross_entropy
    ("cross_entropy", {"input": _x(3, 4), "target": torch.tensor([0, 4, 1])}, {}, ("inputs", "target")),
    ("cross_entropy", {"input": _x(3, 4), "target": torch.tensor([0, -1, 1])}, {}, ("inputs", "target")),
    ("cross_entropy", {"input": _x(3, 4), "target": torch.tensor([0, 1])}, {}, ("inputs", "target")),
    ("cross_entropy", {"input": _x(3, 4), "target": torch.full((3, 4), 1.5, dtype=D)}, {}, ("inputs", "target")),
    ("cross_entropy", {"input": _x(3, 4), "target": rand(3, 5)}, {}, ("inputs", "target")),
    (
        "cross_entropy",
        {"input": _x(3, 4), "target": torch.tensor([0, 1, 2]), "weight": torch.ones(3, dtype=D)},
        {},
        ("inputs", "weight"),
    ),
    ("cross_entropy", {"input": torch.tensor(1.0, dtype=D), "target": torch.tensor(0)}, {}, ("inputs", "input")),
    (
        "cross_entropy",
        {"input": _x(3, 4), "target": torch.softmax(_x(3, 4), 1)},
        {"ignore_index": 0},
        ("params", "ignore_index"),
    ),
    # focal
    ("focal", {"input": _x(3, 4), "target": torch.tensor([0, 4, 1])}, {}, ("inputs", "target")),
    ("focal", {"input": _x(3, 4), "target": rand(3, 4)}, {}, ("inputs", "target")),
    ("focal", {"input": _x(3, 4), "target": torch.tensor([0, 1, 2])}, {"alpha": [0.5, 0.5]}, ("params", "alpha")),
    ("focal", {"input": _x(2, 4, 5), "target": torch.zeros(2, 4, dtype=torch.long)}, {}, ("inputs", "target")),
    # nll
    ("nll", {"input": _x(3, 4), "target": torch.tensor([0, 9, 1])}, {}, ("inputs", "target")),
    ("nll", {"input": _x(3, 4), "target": torch.tensor([0, 1, -100])}, {"ignore_index": 2}, ("inputs", "target")),
    ("nll", {"input": _x(2, 4, 5), "target": torch.zeros(2, 4, dtype=torch.long)}, {}, ("inputs", "target")),
    (
        "nll",
        {"input": _x(3, 4), "target": torch.tensor([0, 1, 2]), "weight": torch.ones(4, 1, dtype=D)},
        {},
        ("inputs", "weight"),
    ),
    # binary_cross_entropy
    ("binary_cross_entropy", {"input": torch.tensor([0.5, 1.5], dtype=D), "target": rand(2)}, {}, ("inputs", "input")),
    ("binary_cross_entropy", {"input": torch.tensor([-0.1, 0.5], dtype=D), "target": rand(2)}, {}, ("inputs", "input")),
    (
        "binary_cross_entropy",
        {"input": torch.tensor([math.nan, 0.5], dtype=D), "target": rand(2)},
        {},
        ("inputs", "input"),
    ),
    ("binary_cross_entropy", {"input": rand(2), "target": torch.tensor([0.0, 1.1], dtype=D)}, {}, ("inputs", "target")),
    ("binary_cross_entropy", {"input": rand(2, 3), "target": rand(3, 2)}, {}, ("inputs", "target")),
    ("binary_cross_entropy", {"input": rand(2, 3), "target": rand(2, 3), "weight": rand(2)}, {}, ("inputs", "weight")),
    (
        "binary_cross_entropy",
        {"input": rand(2, 3), "target": rand(2, 3), "weight": rand(4, 2, 3)},
        {},
        ("inputs", "weight"),
    ),
    # binary_cross_entropy_with_logits
    ("binary_cross_entropy_with_logits", {"input": _x(2, 3), "target": rand(2, 1)}, {}, ("inputs", "target")),
    (
        "binary_cross_entropy_with_logits",
        {"input": _x(2, 3), "target": rand(2, 3), "weight": rand(3, 3)},
        {},
        ("inputs", "weight"),
    ),
    (
        "binary_cross_entropy_with_logits",
        {"input": _x(2, 3), "target": rand(2, 3), "pos_weight": rand(4)},
        {},
        ("inputs", "pos_weight"),
    ),
    # balanced_binary_cross_entropy
    (
        "balanced_binary_cross_entropy",
        {"input": _x(2, 3), "target": torch.tensor([[0, 1, 0.5], [0, 0, 1]], dtype=D)},
        {},
        ("inputs", "target"),
    ),
    (
        "balanced_binary_cross_entropy",
        {"input": _x(2, 3), "target": torch.zeros(2, 4, dtype=D)},
        {},
        ("inputs", "target"),
    ),
    (
        "balanced_binary_cross_entropy",
        {"input": torch.tensor(0.3, dtype=D), "target": torch.tensor(1.0, dtype=D)},
        {},
        ("inputs", "input"),
    ),
    # sigmoid_focal
    ("sigmoid_focal", {"input": _x(4), "target": torch.tensor([0, 1, 2, 0], dtype=D)}, {}, ("inputs", "target")),
    ("sigmoid_focal", {"input": _x(4), "target": torch.zeros(5, dtype=D)}, {}, ("inputs", "target")),
    # kl_div
    ("kl_div", {"input": _x(2, 3), "target": torch.tensor([0.5, -0.1, 0.6], dtype=D)}, {}, ("inputs", "target")),
    ("kl_div", {"input": _x(2, 3), "target": torch.tensor([0.5, 1.1, 0.6], dtype=D)}, {}, ("inputs", "target")),
    ("kl_div", {"input": _x(2, 3), "target": rand(2, 4)}, {"log_target": True}, ("inputs", "target")),
    ("kl_div", {"input": _x(2, 3), "target": rand(3, 2, 3)}, {}, ("inputs", "target")),
    # js_div
    ("js_div", {"input": torch.tensor([0.5, 0.6, -0.1], dtype=D), "target": rand(3)}, {}, ("inputs", "input")),
    ("js_div", {"input": torch.tensor([1.5, 0.0, 0.0], dtype=D), "target": rand(3)}, {}, ("inputs", "input")),
    ("js_div", {"input": rand(3), "target": torch.tensor([0.5, 0.6, -0.1], dtype=D)}, {}, ("inputs", "target")),
    (
        "js_div",
        {"input": _x(3), "target": torch.tensor([0.5, 0.6, -0.1], dtype=D)},
        {"input_is": "logits"},
        ("inputs", "target"),
    ),
    (
        "js_div",
        {"input": torch.tensor([-1.0, 0.2, -3.0], dtype=D), "target": rand(3)},
        {"input_is": "log_probs"},
        ("inputs", "input"),
    ),
    ("js_div", {"input": rand(2, 3), "target": rand(2, 4)}, {}, ("inputs", "target")),
    ("js_div", {"input": rand(3), "target": rand(1, 3)}, {}, ("inputs", "target")),
    ("js_div", {"input": torch.tensor(0.5, dtype=D), "target": torch.tensor(0.5, dtype=D)}, {}, ("inputs", "input")),
    # poisson_nll
    ("poisson_nll", {"input": _x(2, 3), "target": rand(2, 2)}, {}, ("inputs", "target")),
    ("poisson_nll", {"input": _x(3), "target": rand(2, 3)}, {}, ("inputs", "target")),
    # gaussian_nll
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": torch.zeros(2, 3, dtype=D)}, {}, ("inputs", "var")),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": -rand(2, 3)}, {}, ("inputs", "var")),
    (
        "gaussian_nll",
        {"input": _x(2, 3), "target": _x(2, 3), "var": torch.tensor(-1.0, dtype=D)},
        {},
        ("inputs", "var"),
    ),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": rand(3) + 0.1}, {}, ("inputs", "var")),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": rand(2, 2) + 0.1}, {}, ("inputs", "var")),
    ("gaussian_nll", {"input": _x(2, 3, 4), "target": _x(2, 3, 4), "var": rand(1, 1, 4) + 0.1}, {}, ("inputs", "var")),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 4), "var": rand(2, 3) + 0.1}, {}, ("inputs", "target")),
]


@pytest.mark.parametrize(("name", "inputs", "params", "loc"), CHECK_FAILURES)
def test_check_rejects(name: str, inputs: dict[str, Any], params: dict[str, Any], loc: tuple[str, str]) -> None:
    err = assert_check_fails(name, inputs, loc, params)
    assert len(err.msg) > 10


CHECK_PASSES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("cross_entropy", {"input": _x(3, 4), "target": torch.tensor([0, -100, 3])}, {}),
    ("cross_entropy", {"input": _x(2, 4, 5), "target": randint(4, 2, 5)}, {}),
    ("cross_entropy", {"input": _x(3, 4), "target": torch.softmax(_x(3, 4), 1)}, {}),
    ("cross_entropy", {"input": _x(4), "target": torch.tensor(2)}, {}),
    ("focal", {"input": _x(3, 4), "target": torch.tensor([0, 7, 3])}, {"ignore_index": 7, "alpha": [1, 2, 3, 4]}),
    ("nll", {"input": _x(3, 4), "target": torch.tensor([0, -100, 3], dtype=torch.int32)}, {}),
    ("nll", {"input": _x(3, 4), "target": torch.tensor([0, 1, 3]), "weight": rand(4)}, {}),
    (
        "binary_cross_entropy",
        {"input": torch.tensor([0.0, 1.0], dtype=D), "target": torch.tensor([1.0, 0.0], dtype=D)},
        {},
    ),
    ("binary_cross_entropy", {"input": rand(2, 3), "target": rand(2, 3), "weight": rand(3)}, {}),
    ("binary_cross_entropy", {"input": rand(2, 3), "target": rand(2, 3), "weight": rand(2, 1)}, {}),
    ("binary_cross_entropy_with_logits", {"input": _x(2, 3), "target": 3 * _x(2, 3), "pos_weight": rand(3)}, {}),
    ("balanced_binary_cross_entropy", {"input": _x(2, 3), "target": torch.tensor([[0, 1, 1], [0, 0, 0]], dtype=D)}, {}),
    ("sigmoid_focal", {"input": _x(4), "target": torch.tensor([0, 1, 1, 0], dtype=D)}, {"alpha": -1}),
    ("kl_div", {"input": _x(2, 3), "target": _x(2, 3)}, {"log_target": True}),
    ("kl_div", {"input": _x(2, 3), "target": rand(1, 3)}, {}),
    ("js_div", {"input": _x(2, 3), "target": rand(2, 3)}, {"input_is": "logits"}),
    ("js_div", {"input": torch.log(rand(2, 3)), "target": rand(2, 3)}, {"input_is": "log_probs"}),
    ("js_div", {"input": torch.tensor([1.0, 0.0], dtype=D), "target": torch.tensor([0.0, 1.0], dtype=D)}, {}),
    ("poisson_nll", {"input": _x(2, 3), "target": rand(3)}, {}),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": rand(2, 3) + 0.1}, {}),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": rand(2) + 0.1}, {}),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": rand(2, 1) + 0.1}, {}),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": rand(1, 3) + 0.1}, {}),
    ("gaussian_nll", {"input": _x(2, 3), "target": _x(2, 3), "var": torch.tensor(0.5, dtype=D)}, {}),
]


@pytest.mark.parametrize(("name", "inputs", "params"), CHECK_PASSES)
def test_check_accepts_and_fn_runs(name: str, inputs: dict[str, Any], params: dict[str, Any]) -> None:
    s = spec(name)
    p = s.params(**params)
    # as the engine does: integer (index) inputs become int64 before the check
    inputs = {k: (v if v.is_floating_point() else v.long()) for k, v in inputs.items()}
    check(name, inputs, params)
    out = s.fn(**inputs, **dict(p))
    assert isinstance(out, torch.Tensor)
    if p.reduction != "none":  # type: ignore[attr-defined]
        assert out.dim() == 0


# ---------------------------------------------------------------------------
# cross_entropy (torch)


def _ce_inputs(shape: tuple[int, ...], probs: bool, seed: int = 0) -> dict[str, torch.Tensor]:
    x = randn(*shape, seed=seed)
    if probs:
        t = torch.softmax(randn(*shape, seed=seed + 1), dim=1)
    else:
        c = shape[1]
        t = randint(c, shape[0], *shape[2:], seed=seed + 1)
        t.view(-1)[::3] = -100
    return {"input": x, "target": t}


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 4), (3, 4, 6)])
@pytest.mark.parametrize("probs", [False, True])
@pytest.mark.parametrize("with_weight", [False, True])
def test_cross_entropy_vs_torch(reduction: str, shape: tuple[int, ...], probs: bool, with_weight: bool) -> None:
    t = _ce_inputs(shape, probs)
    if with_weight:
        t["weight"] = rand(shape[1], seed=5) + 0.5
    assert_matches(C.cross_entropy, F.cross_entropy, t, ("input",), reduction=reduction)


@pytest.mark.parametrize("probs", [False, True])
def test_cross_entropy_label_smoothing_and_ignore_index(probs: bool) -> None:
    t = _ce_inputs((6, 5), probs)
    ignore_index = -1 if probs else 2  # torch takes only negative ignore_index values with probability targets
    if not probs:
        t["target"] = torch.tensor([0, 2, 4, 2, 1, 3])
    for reduction in REDUCTIONS:
        assert_matches(
            C.cross_entropy,
            F.cross_entropy,
            t,
            ("input",),
            label_smoothing=0.2,
            ignore_index=ignore_index,
            reduction=reduction,
        )
    default = C.cross_entropy(**t)
    smoothed = C.cross_entropy(**t, label_smoothing=0.2)
    assert not torch.allclose(default, smoothed)


def test_bool_targets_over_json_cross_entropy_refuses_binary_losses_take() -> None:
    # cross_entropy is a torch row and torch refuses a bool target, as indices and as probabilities; so does lossd
    # (422). The binary-target losses (sigmoid_focal, binary_cross_entropy_with_logits) take a bool target as 0/1.
    import orjson

    from lossd.errors import Problem
    from lossd.service import Service
    from lossd.settings import Settings

    x = torch.tensor([[0.2, -1.0, 0.4], [1.5, 0.3, -2.0]])
    onehot = torch.tensor([[True, False, False], [False, False, True]])
    for t in (onehot, onehot[:, 0]):
        with pytest.raises(RuntimeError):
            F.cross_entropy(x, t)
    svc = Service(Settings(warmup=False, device="cpu"))
    try:

        def call(name: str, target: Any) -> Any:
            raw = orjson.dumps({"inputs": {"input": x.tolist(), "target": target}, "grad": True})
            c, b64 = svc.decode_call(svc.spec(name), memoryview(raw), False)
            return orjson.loads(svc.encode_result(svc.engines[0].run(c), b64, False))

        for t in (onehot, onehot[:, 0]):
            with pytest.raises(Problem) as e:
                call("cross_entropy", t.tolist())
            assert e.value.status == 422 and "bool" in e.value.detail
        y = onehot.double().numpy()
        refs = {
            "sigmoid_focal": np_sigmoid_focal(x.double().numpy(), y, 0.25, 2.0, "mean"),
            "binary_cross_entropy_with_logits": F.binary_cross_entropy_with_logits(x, onehot.float()).item(),
        }
        for name, ref in refs.items():
            got = call(name, onehot.tolist())
            assert got == call(name, onehot.float().tolist())  # the same bits as the float 0/1 target
            assert got["value"] == pytest.approx(float(ref), rel=1e-6)
    finally:
        svc.close()


def test_cross_entropy_formula_and_defaults() -> None:
    x, y = randn(4, 3), torch.tensor([0, 2, 1, -100])
    logp = x.numpy() - np.log(np.exp(x.numpy()).sum(1, keepdims=True))
    want = -np.mean([logp[i, y[i]] for i in range(3)])
    assert float(C.cross_entropy(x, y)) == pytest.approx(want, rel=1e-12)
    assert C.cross_entropy(x, y, reduction="none")[3] == 0


# ---------------------------------------------------------------------------
# focal (float64 formula)


def np_focal(x: np.ndarray, y: np.ndarray, gamma: float, alpha: Any, ignore_index: int, reduction: str) -> np.ndarray:
    xm = np.moveaxis(x, 1, -1)  # (N, d.., C)
    logp = xm - xm.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = y != ignore_index
    ys = np.where(valid, y, 0)
    logp_t = np.take_along_axis(logp, ys[..., None], -1)[..., 0]
    p_t = np.exp(logp_t)
    if alpha is None:
        a = np.ones_like(p_t)
    elif isinstance(alpha, list):
        a = np.asarray(alpha, dtype=np.float64)[ys]
    else:
        a = np.full_like(p_t, alpha)
    loss = np.where(valid, -a * (1 - p_t) ** gamma * logp_t, 0.0)
    if reduction == "mean":
        return np.asarray(loss.sum() / valid.sum())
    return np_reduce(loss, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(
    ("gamma", "alpha"), [(2.0, None), (0.5, 0.25), (3.0, [0.1, 0.5, 2.0, 1.0]), (0.0, [0.3, 0.2, 0.1, 4.0])]
)
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 5)])
def test_focal_vs_formula(reduction: str, gamma: float, alpha: Any, shape: tuple[int, ...]) -> None:
    x = 2 * randn(*shape, seed=1)
    y = randint(4, shape[0], *shape[2:], seed=2)
    y.view(-1)[1::4] = -100
    got = C.focal(x, y, gamma=gamma, alpha=alpha, reduction=reduction)  # type: ignore[arg-type]
    want = np_focal(x.numpy(), y.numpy(), gamma, alpha, -100, reduction)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-14)


def test_focal_per_class_alpha_mean_divides_by_count_not_weights() -> None:
    x, y = randn(5, 3, seed=3), torch.tensor([0, 1, 2, 2, -100])
    alpha = [0.1, 10.0, 2.0]
    per = C.focal(x, y, alpha=alpha, reduction="none")
    assert per[4] == 0
    torch.testing.assert_close(C.focal(x, y, alpha=alpha), per.sum() / 4)
    # the weighted mean (cross_entropy's convention) would differ
    assert not torch.isclose(C.focal(x, y, alpha=alpha), per.sum() / sum(alpha[i] for i in [0, 1, 2, 2]))


def test_focal_custom_ignore_index_and_defaults() -> None:
    x, y = randn(6, 4, seed=4), torch.tensor([0, 3, 3, 1, 2, 3])
    got = C.focal(x, y, ignore_index=3)
    want = np_focal(x.numpy(), y.numpy(), 2.0, None, 3, "mean")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert C.focal(x, y, ignore_index=3, reduction="none")[1] == 0
    # defaults: gamma=2, no alpha, ignore -100
    np.testing.assert_allclose(C.focal(x, y).numpy(), np_focal(x.numpy(), y.numpy(), 2.0, None, -100, "mean"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(6, 4), (2, 4, 5)])
def test_focal_gamma0_equals_cross_entropy(reduction: str, shape: tuple[int, ...]) -> None:
    x = randn(*shape, seed=5)
    y = randint(4, shape[0], *shape[2:], seed=6)
    y.view(-1)[::3] = -100
    got = grads(C.focal, {"input": x, "target": y}, ("input",), gamma=0.0, alpha=None, reduction=reduction)
    want = grads(F.cross_entropy, {"input": x, "target": y}, ("input",), reduction=reduction)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_focal_all_ignored() -> None:
    x, y = randn(3, 4), torch.full((3,), -100)
    xr = x.clone().requires_grad_()
    v = C.focal(xr, y)
    assert torch.isnan(v) and torch.isnan(F.cross_entropy(x, y))  # mean over no element, as cross_entropy
    (g,) = torch.autograd.grad(v, xr)
    assert torch.equal(g, torch.zeros_like(x))
    assert C.focal(x, y, reduction="sum") == 0
    assert torch.equal(C.focal(x, y, reduction="none"), torch.zeros(3, dtype=D))


def test_focal_unbatched_and_gradcheck() -> None:
    x = randn(5, seed=7)
    np.testing.assert_allclose(
        C.focal(x, torch.tensor(3)).numpy(), np_focal(x[None].numpy(), np.array([3]), 2.0, None, -100, "mean")
    )
    xg = randn(3, 4, 2, seed=8).requires_grad_()
    y = torch.tensor([[0, 1], [3, -100], [2, 2]])
    for alpha in (None, 0.3, [0.5, 1.0, 2.0, 0.1]):
        assert torch.autograd.gradcheck(lambda v, a=alpha: C.focal(v, y, gamma=1.5, alpha=a), (xg,))


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.9, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_focal_confident_rows_have_zero_not_nan_gradients(gamma: float, dtype: torch.dtype) -> None:
    """Where p_t rounds to 1, (1-p_t)**gamma has an infinite derivative for gamma < 1; the loss
    term and its true derivative are 0 there (central differences in float64 agree)."""
    x = torch.tensor([[50.0, 0.0, 0.0], [0.3, 0.1, -0.2], [40.0, 0.0, 0.0]], dtype=dtype)
    y = torch.tensor([0, 1, -100])  # the third row is confident and ignored
    xr = x.clone().requires_grad_()
    (g,) = torch.autograd.grad(C.focal(xr, y, gamma=gamma), xr)
    assert torch.isfinite(g).all()
    x64 = x.double()
    fd = torch.zeros_like(x64)
    for i in range(3):
        for j in range(3):
            e = torch.zeros_like(x64)
            e[i, j] = 1e-6
            fd[i, j] = (C.focal(x64 + e, y, gamma=gamma) - C.focal(x64 - e, y, gamma=gamma)) / 2e-6
    torch.testing.assert_close(g.double(), fd, rtol=1e-5, atol=1e-7)
    assert torch.equal(g[0], torch.zeros(3, dtype=dtype)) and torch.equal(g[2], torch.zeros(3, dtype=dtype))


@pytest.mark.parametrize("gamma", [0.0, 0.25, 0.5, 0.9, 1.0, 2.0])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sigmoid_focal_saturated_logits_have_zero_not_nan_gradients(gamma: float, dtype: torch.dtype) -> None:
    """Where 1 - p_t underflows to 0 (|x| > ~104 in float32, ~745 in float64), the term and its true
    derivative are 0; for 0 < gamma < 1 the derivative of (1-p_t)**gamma there is infinite and a
    direct transcription gives NaN. Elsewhere the gradient is the float64 central difference."""
    x = torch.tensor([1000.0, -1000.0, 3.0, -0.5, 2.0], dtype=dtype)
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0], dtype=dtype)
    xr = x.clone().requires_grad_()
    value = C.sigmoid_focal(xr, y, gamma=gamma, reduction="sum")
    (g,) = torch.autograd.grad(value, xr)
    assert torch.isfinite(g).all(), g
    assert torch.equal(g[:2], torch.zeros(2, dtype=dtype))
    x64, y64 = x.double(), y.double()

    def ref(z: torch.Tensor) -> torch.Tensor:  # the formula, float64; saturated terms are 0 in it
        p = torch.sigmoid(z)
        ce = -(y64 * torch.log(p) + (1 - y64) * torch.log1p(-p))
        a = 0.25 * y64 + 0.75 * (1 - y64)
        return (a * (1 - (p * y64 + (1 - p) * (1 - y64))) ** gamma * ce)[2:].sum()

    fd = torch.zeros(3, dtype=torch.float64)
    for i in range(3):
        e = torch.zeros_like(x64)
        e[i + 2] = 1e-6
        fd[i] = (ref(x64 + e) - ref(x64 - e)) / 2e-6
    torch.testing.assert_close(g[2:].double(), fd, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(value.double(), ref(x64), rtol=1e-6, atol=0)


# ---------------------------------------------------------------------------
# nll (torch)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 4), (2, 4, 3, 2)])
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("ignore_index", [-100, 1])
def test_nll_vs_torch(reduction: str, shape: tuple[int, ...], with_weight: bool, ignore_index: int) -> None:
    x = torch.log_softmax(randn(*shape, seed=1), dim=1)
    y = randint(4, shape[0], *shape[2:], seed=2)
    y.view(-1)[::4] = ignore_index
    t = {"input": x, "target": y}
    if with_weight:
        t["weight"] = rand(4, seed=3) + 0.5
    assert_matches(C.nll, F.nll_loss, t, ("input",), reduction=reduction, ignore_index=ignore_index)


def test_nll_formula_and_unbatched() -> None:
    x, y = randn(3, 4), torch.tensor([1, 3, -100])
    assert float(C.nll(x, y)) == pytest.approx(-(x[0, 1] + x[1, 3]).item() / 2, rel=1e-12)
    w = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=D)
    assert float(C.nll(x, y, w)) == pytest.approx(-(2 * x[0, 1] + 4 * x[1, 3]).item() / 6, rel=1e-12)
    assert float(C.nll(randn(4), torch.tensor(2))) == pytest.approx(-randn(4)[2].item())


# ---------------------------------------------------------------------------
# binary_cross_entropy (torch)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weight_shape", [None, (3,), (4, 1), (4, 3)])
def test_bce_vs_torch(reduction: str, weight_shape: tuple[int, ...] | None) -> None:
    t = {"input": rand(4, 3, seed=1).clamp(0.01, 0.99), "target": rand(4, 3, seed=2)}
    if weight_shape is not None:
        t["weight"] = rand(*weight_shape, seed=3) + 0.1
    assert_matches(C.binary_cross_entropy, F.binary_cross_entropy, t, ("input",), reduction=reduction)


def test_bce_log_clamped_at_minus_100() -> None:
    x = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.3], dtype=D)
    y = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0], dtype=D)
    got = C.binary_cross_entropy(x, y, reduction="none")
    torch.testing.assert_close(got, torch.tensor([100.0, 100.0, 0.0, 0.0, -math.log(0.3)], dtype=D))
    torch.testing.assert_close(got, F.binary_cross_entropy(x, y, reduction="none"))
    assert float(C.binary_cross_entropy(x, y)) == pytest.approx((200 - math.log(0.3)) / 5)


# ---------------------------------------------------------------------------
# binary_cross_entropy_with_logits (torch)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("with_weight", [False, True])
@pytest.mark.parametrize("pos_weight_shape", [None, (3,), (2, 4, 3)])
def test_bce_with_logits_vs_torch(reduction: str, with_weight: bool, pos_weight_shape: tuple[int, ...] | None) -> None:
    x = 5 * randn(2, 4, 3, seed=1)
    x.view(-1)[0] = 60.0
    x.view(-1)[1] = -60.0
    t = {"input": x, "target": rand(2, 4, 3, seed=2)}
    if with_weight:
        t["weight"] = rand(4, 1, seed=3)
    if pos_weight_shape is not None:
        t["pos_weight"] = rand(*pos_weight_shape, seed=4) * 3
    assert_matches(
        C.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits, t, ("input",), reduction=reduction
    )


def test_bce_with_logits_formula() -> None:
    x, y = torch.tensor([100.0, -2.0, 0.5], dtype=D), torch.tensor([0.0, 1.0, 0.3], dtype=D)
    pw = torch.tensor(2.0, dtype=D)
    log_s, log_1ms = -np.logaddexp(0.0, -x.numpy()), -np.logaddexp(0.0, x.numpy())
    want = -(2.0 * y.numpy() * log_s + (1 - y.numpy()) * log_1ms)
    assert want[0] == pytest.approx(100.0)
    got = C.binary_cross_entropy_with_logits(x, y, pos_weight=pw, reduction="none")
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)


# ---------------------------------------------------------------------------
# balanced_binary_cross_entropy (float64 formula)


def np_balanced_bce(x: np.ndarray, y: np.ndarray, beta: float | None, reduction: str) -> np.ndarray:
    log_s = -np.logaddexp(0.0, -x)  # log sigmoid(x)
    log_1ms = -np.logaddexp(0.0, x)  # log(1 - sigmoid(x))
    if beta is None:
        n = x.shape[0]
        b = np.array([(y[i] == 0).sum() / y[i].size for i in range(n)]).reshape((n,) + (1,) * (x.ndim - 1))
    else:
        b = np.full((1,) * x.ndim, beta)
    loss = -b * y * log_s - (1 - b) * (1 - y) * log_1ms
    return np_reduce(loss, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("beta", [None, 0.3, 0.0, 1.0])
@pytest.mark.parametrize("shape", [(4, 6), (3, 2, 5, 4)])
def test_balanced_bce_vs_formula(reduction: str, beta: float | None, shape: tuple[int, ...]) -> None:
    x = 4 * randn(*shape, seed=1)
    y = (rand(*shape, seed=2) < 0.3).to(D)
    got = C.balanced_binary_cross_entropy(x, y, beta=beta, reduction=reduction)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.numpy(), np_balanced_bce(x.numpy(), y.numpy(), beta, reduction), rtol=1e-12)


def test_balanced_bce_weights_per_sample() -> None:
    x = randn(2, 4, seed=3)
    y = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=D)
    per = C.balanced_binary_cross_entropy(x, y, reduction="none")
    # sample 0: b = 3/4, positives weighted 3/4, negatives 1/4; sample 1: b = 1, negatives weight 0
    assert torch.equal(per[1], torch.zeros(4, dtype=D))
    torch.testing.assert_close(per[0, 0], 0.75 * F.softplus(-x[0, 0]))
    torch.testing.assert_close(per[0, 1:], 0.25 * F.softplus(x[0, 1:]))
    torch.testing.assert_close(C.balanced_binary_cross_entropy(x, y), per.mean())
    # beta=0.5 is half the plain sigmoid cross entropy
    torch.testing.assert_close(
        C.balanced_binary_cross_entropy(x, y, beta=0.5), 0.5 * F.binary_cross_entropy_with_logits(x, y)
    )


def test_balanced_bce_edge_shapes() -> None:
    # 1-D input: one element per sample, so b = 1 - y and every element's loss is 0
    x1, y1 = randn(4, seed=6), torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=D)
    assert torch.equal(C.balanced_binary_cross_entropy(x1, y1, reduction="none"), torch.zeros(4, dtype=D))
    np.testing.assert_allclose(
        C.balanced_binary_cross_entropy(x1, y1, beta=0.3, reduction="none").numpy(),
        np_balanced_bce(x1.numpy(), y1.numpy(), 0.3, "none"),
    )
    # empty batch: no error
    assert C.balanced_binary_cross_entropy(randn(0, 3), torch.zeros(0, 3, dtype=D), reduction="sum") == 0


def test_balanced_bce_stable_and_gradcheck() -> None:
    x = torch.tensor([[200.0, -200.0, 0.0]], dtype=D)
    y = torch.tensor([[0.0, 1.0, 1.0]], dtype=D)
    got = C.balanced_binary_cross_entropy(x, y, reduction="none")
    assert torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), np_balanced_bce(x.numpy(), y.numpy(), None, "none"), rtol=1e-12)
    xg = randn(3, 2, 4, seed=4).requires_grad_()
    yg = (rand(3, 2, 4, seed=5) < 0.4).to(D)
    for beta in (None, 0.2):
        assert torch.autograd.gradcheck(lambda v, b=beta: C.balanced_binary_cross_entropy(v, yg, beta=b), (xg,))


# ---------------------------------------------------------------------------
# sigmoid_focal (float64 transcription of torchvision.ops.sigmoid_focal_loss)


def np_sigmoid_focal(x: np.ndarray, y: np.ndarray, alpha: float, gamma: float, reduction: str) -> np.ndarray:
    # torchvision: p = sigmoid(inputs); ce_loss = BCEWithLogits(inputs, targets, "none");
    # p_t = p * targets + (1 - p) * (1 - targets); loss = ce_loss * ((1 - p_t) ** gamma);
    # if alpha >= 0: loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    p = 1 / (1 + np.exp(-x))
    ce = y * np.logaddexp(0.0, -x) + (1 - y) * np.logaddexp(0.0, x)
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return np_reduce(loss, reduction)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (-1, 2.0), (0.9, 0.5), (0.0, 1.0), (1.0, 3.0)])
def test_sigmoid_focal_vs_formula(reduction: str, alpha: float, gamma: float) -> None:
    x = 3 * randn(4, 3, 5, seed=1)
    y = (rand(4, 3, 5, seed=2) < 0.3).to(D)
    got = C.sigmoid_focal(x, y, alpha=alpha, gamma=gamma, reduction=reduction)  # type: ignore[arg-type]
    np.testing.assert_allclose(
        got.numpy(), np_sigmoid_focal(x.numpy(), y.numpy(), alpha, gamma, reduction), rtol=1e-10, atol=1e-15
    )


def test_sigmoid_focal_defaults_and_special_cases() -> None:
    x = 2 * randn(6, 4, seed=3)
    y = (rand(6, 4, seed=4) < 0.5).to(D)
    np.testing.assert_allclose(C.sigmoid_focal(x, y).numpy(), np_sigmoid_focal(x.numpy(), y.numpy(), 0.25, 2.0, "mean"))
    # gamma=0 and no alpha: plain sigmoid cross entropy
    torch.testing.assert_close(C.sigmoid_focal(x, y, alpha=-1, gamma=0.0), F.binary_cross_entropy_with_logits(x, y))
    # large logits stay finite
    big = torch.tensor([80.0, -80.0, 80.0, -80.0], dtype=D)
    assert torch.isfinite(C.sigmoid_focal(big, torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=D), reduction="none")).all()


def test_sigmoid_focal_gradcheck() -> None:
    xg = (2 * randn(3, 5, seed=5)).requires_grad_()
    y = (rand(3, 5, seed=6) < 0.4).to(D)
    for alpha, gamma in ((0.25, 2.0), (-1, 1.5), (0.7, 0.0)):
        assert torch.autograd.gradcheck(lambda v, a=alpha, g=gamma: C.sigmoid_focal(v, y, alpha=a, gamma=g), (xg,))


# ---------------------------------------------------------------------------
# kl_div (torch values and gradients; own implementation)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("reduction", [*REDUCTIONS, "batchmean"])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("target_shape", [(4, 5), (1, 5)])
def test_kl_div_vs_torch(reduction: str, log_target: bool, target_shape: tuple[int, ...]) -> None:
    x = torch.log_softmax(randn(4, 5, seed=1), dim=1)
    q = torch.softmax(randn(*target_shape, seed=2), dim=1)
    t = {"input": x, "target": torch.log(q) if log_target else q}
    assert_matches(C.kl_div, F.kl_div, t, ("input", "target"), reduction=reduction, log_target=log_target)


def test_kl_div_default_is_batchmean_and_formula() -> None:
    x = torch.log_softmax(randn(3, 4, seed=3), dim=1)
    q = torch.softmax(randn(3, 4, seed=4), dim=1)
    want = (q.numpy() * (np.log(q.numpy()) - x.numpy())).sum() / 3
    assert float(C.kl_div(x, q)) == pytest.approx(want, rel=1e-12)
    assert float(C.kl_div(x, q, reduction="mean")) == pytest.approx(want * 3 / 12, rel=1e-12)
    # a 1-D input's batchmean divides by its size, as torch does
    assert float(C.kl_div(x[0], q[0])) == pytest.approx(float(F.kl_div(x[0], q[0], reduction="batchmean")), rel=1e-12)
    assert float(C.kl_div(x[0], q[0])) == pytest.approx(float(C.kl_div(x[:1], q[:1])) / 4, rel=1e-12)


def test_kl_div_zero_target() -> None:
    x = torch.log_softmax(randn(2, 4, seed=5), dim=1)
    q = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.25, 0.25, 0.5, 0.0]], dtype=D)
    got = grads(C.kl_div, {"input": x, "target": q}, ("input", "target"), reduction="sum")
    want = grads(F.kl_div, {"input": x, "target": q}, ("input", "target"), reduction="sum")
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    assert torch.isfinite(got[2]).all()  # torch gives NaN here
    zero = q == 0
    assert torch.equal(got[2][zero], torch.zeros(3, dtype=D))
    torch.testing.assert_close(got[2][~zero], want[2][~zero])
    # a zero target with a -inf log-probability: torch's value (0 * inf is NaN)...
    xi = torch.tensor([[-math.inf, 0.0]], dtype=D)
    ti = torch.tensor([[0.0, 1.0]], dtype=D)
    assert torch.equal(C.kl_div(xi, ti, reduction="none").isnan(), F.kl_div(xi, ti, reduction="none").isnan())
    assert math.isnan(float(C.kl_div(xi, ti, reduction="sum")))
    # ...but gradients 0 there, not NaN, for the input and the target
    xg = torch.tensor([[-math.inf, -0.5, -0.9]], dtype=D).requires_grad_()
    tg = torch.tensor([[0.0, 0.6, 0.4]], dtype=D).requires_grad_()
    gx, gt = torch.autograd.grad(C.kl_div(xg, tg, reduction="sum"), (xg, tg))
    assert gx.tolist() == [[0.0, -0.6, -0.4]]
    assert gt[0, 0] == 0 and torch.allclose(gt[0, 1:], torch.log(tg[0, 1:]) + 1 - xg[0, 1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_values_are_bitwise_torch(dtype: torch.dtype, log_target: bool) -> None:
    """Exact, reproducible: the same bits as torch's kernel, zero targets included."""
    g = torch.Generator().manual_seed(11)
    x = torch.log_softmax(torch.randn(64, 50, generator=g, dtype=dtype), 1)
    t = torch.softmax(torch.randn(64, 50, generator=g, dtype=dtype), 1)
    t[::3, ::4] = 0
    t = t.log() if log_target else t
    for reduction in ("none", "sum", "batchmean"):
        got = C.kl_div(x, t, log_target=log_target, reduction=reduction)  # type: ignore[arg-type]
        want = F.kl_div(x, t, log_target=log_target, reduction=reduction)
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_kl_div_gradcheck() -> None:
    x = torch.log_softmax(randn(3, 4, seed=6), dim=1).requires_grad_()
    q = (torch.softmax(randn(3, 4, seed=7), dim=1)).requires_grad_()
    for log_target in (False, True):
        tq = torch.log(q.detach()).requires_grad_() if log_target else q
        for reduction in ("batchmean", "none"):
            assert torch.autograd.gradcheck(
                lambda a, b, lt=log_target, r=reduction: C.kl_div(a, b, log_target=lt, reduction=r), (x, tq)
            )


# ---------------------------------------------------------------------------
# js_div (scipy; float64 formula)


def np_js(p: np.ndarray, q: np.ndarray, base: float | None) -> np.ndarray:
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        kp = np.where(p > 0, p * np.log(p / m), 0.0).sum(-1)
        kq = np.where(q > 0, q * np.log(q / m), 0.0).sum(-1)
    js = 0.5 * kp + 0.5 * kq
    return js / np.log(base) if base is not None else js


def _rows(shape: tuple[int, ...], seed: int, zeros: bool = False) -> torch.Tensor:
    p = rand(*shape, seed=seed)
    if zeros:
        p = torch.where(rand(*shape, seed=seed + 100) < 0.3, torch.zeros_like(p), p)
        p[..., 0] += 0.1
    return p / p.sum(-1, keepdim=True)


@pytest.mark.parametrize("base", [None, 2.0, 10.0])
@pytest.mark.parametrize("input_is", ["probs", "logits", "log_probs"])
@pytest.mark.parametrize("zeros", [False, True])
def test_js_div_vs_scipy(base: float | None, input_is: str, zeros: bool) -> None:
    p, q = _rows((3, 4, 6), 1, zeros), _rows((3, 4, 6), 2, zeros)
    if input_is == "probs":
        x = p
    elif input_is == "log_probs":
        x = torch.log(p)
    else:
        x = torch.log(p) + 3.0  # softmax(log p + c) == p
        if zeros:
            x = torch.where(p > 0, x, torch.full_like(x, -1e4))
    got = C.js_div(x, q, input_is=input_is, base=base, reduction="none")  # type: ignore[arg-type]
    assert got.shape == (3, 4)
    want = jensenshannon(p.numpy(), q.numpy(), axis=-1, base=base) ** 2
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_js_div_reductions_and_unnormalised_rows(reduction: str) -> None:
    # probabilities are used as given, never renormalised (scipy would renormalise)
    p, q = rand(5, 3, seed=3), rand(5, 3, seed=4)
    p[0] = torch.tensor([0.0, 0.0, 0.7])
    q[0] = torch.tensor([0.0, 0.2, 0.0])
    got = C.js_div(p, q, reduction=reduction)  # type: ignore[arg-type]
    np.testing.assert_allclose(got.numpy(), np_reduce(np_js(p.numpy(), q.numpy(), None), reduction), rtol=1e-12)
    got2 = C.js_div(p, q, base=2.0, reduction=reduction)  # type: ignore[arg-type]
    np.testing.assert_allclose(got2.numpy(), np_reduce(np_js(p.numpy(), q.numpy(), 2.0), reduction), rtol=1e-12)


def test_js_div_properties() -> None:
    p, q = _rows((4, 5), 5), _rows((4, 5), 6)
    torch.testing.assert_close(C.js_div(p, q, reduction="none"), C.js_div(q, p, reduction="none"))
    assert torch.equal(C.js_div(p, p, reduction="none"), torch.zeros(4, dtype=D))
    disjoint = C.js_div(torch.tensor([1.0, 0.0], dtype=D), torch.tensor([0.0, 1.0], dtype=D), base=2.0)
    assert float(disjoint) == pytest.approx(1.0, rel=1e-14)  # the maximum, 1 bit
    assert torch.equal(
        C.js_div(torch.zeros(2, 0, dtype=D), torch.zeros(2, 0, dtype=D), reduction="none"), torch.zeros(2, dtype=D)
    )


def test_js_div_float32_near_equal_rows() -> None:
    p = _rows((3, 8), 7)
    q = p * (1 + 1e-3 * randn(3, 8, seed=8))
    want = np_js(p.numpy(), q.numpy(), None)
    got = C.js_div(p.float(), q.float(), reduction="none")
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want, rtol=2e-3)


@pytest.mark.parametrize("input_is", ["probs", "logits", "log_probs"])
def test_js_div_gradcheck(input_is: str) -> None:
    p, q = _rows((2, 3, 4), 9), _rows((2, 3, 4), 10)
    x = {"probs": p, "log_probs": torch.log(p), "logits": 2 * randn(2, 3, 4, seed=11)}[input_is]
    xg, qg = x.clone().requires_grad_(), q.clone().requires_grad_()
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda a, b, r=reduction: C.js_div(a, b, input_is=input_is, base=2.0, reduction=r), (xg, qg)
        )


def test_js_div_gradient_formula_and_zero_probabilities() -> None:
    # d JS / d P_i = 0.5 * log(P_i / M_i) (natural log), independently of the other entries
    p, q = _rows((2, 4), 12), _rows((2, 4), 13)
    _, gp, gq = grads(C.js_div, {"input": p, "target": q}, ("input", "target"), reduction="sum")
    m = (p + q) / 2
    torch.testing.assert_close(gp, 0.5 * torch.log(p / m))
    torch.testing.assert_close(gq, 0.5 * torch.log(q / m))
    # zero probabilities: finite gradients (the infinite derivative of 0 log 0 is not propagated)
    pz = torch.tensor([[0.0, 0.5, 0.5], [0.0, 0.0, 1.0]], dtype=D)
    qz = torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], dtype=D)
    out = grads(C.js_div, {"input": pz, "target": qz}, ("input", "target"))
    assert all(torch.isfinite(g).all() for g in out[1:])
    # with logits the limit is exact: an underflowed probability gets gradient 0
    xl = torch.tensor([[-1e4, 0.0, 0.0]], dtype=D)
    _, gx = grads(
        C.js_div, {"input": xl, "target": torch.tensor([[0.2, 0.4, 0.4]], dtype=D)}, ("input",), input_is="logits"
    )
    assert gx[0, 0] == 0 and torch.isfinite(gx).all()


# ---------------------------------------------------------------------------
# poisson_nll (torch)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True])
@pytest.mark.parametrize("eps", [1e-8, 0.1])
def test_poisson_nll_vs_torch(reduction: str, log_input: bool, full: bool, eps: float) -> None:
    x = randn(4, 5, seed=1) if log_input else rand(4, 5, seed=1) * 3
    y = torch.poisson(rand(4, 5, seed=2) * 4, generator=gen(3))
    assert_matches(
        C.poisson_nll,
        F.poisson_nll_loss,
        {"input": x, "target": y},
        ("input",),
        reduction=reduction,
        log_input=log_input,
        full=full,
        eps=eps,
    )


def test_poisson_nll_formula_and_broadcast() -> None:
    x, y = randn(3, 4, seed=4), torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=D)
    want = (np.exp(x.numpy()) - y.numpy() * x.numpy()).mean()
    assert float(C.poisson_nll(x, y)) == pytest.approx(want, rel=1e-12)
    stirling = np.where(
        y.numpy() > 1,
        y.numpy() * np.log(np.maximum(y.numpy(), 1)) - y.numpy() + 0.5 * np.log(2 * np.pi * np.maximum(y.numpy(), 1)),
        0.0,
    )
    want_full = (np.exp(x.numpy()) - y.numpy() * x.numpy() + stirling).mean()
    assert float(C.poisson_nll(x, y, full=True)) == pytest.approx(want_full, rel=1e-12)
    assert C.poisson_nll(x, y, reduction="none").shape == (3, 4)


# ---------------------------------------------------------------------------
# gaussian_nll (torch)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("var_shape", [(3, 4, 5), (3, 4), (3, 4, 1), (3, 1, 5), (1, 4, 5)])
@pytest.mark.parametrize(("full", "eps"), [(False, 1e-6), (True, 0.3)])
def test_gaussian_nll_vs_torch(reduction: str, var_shape: tuple[int, ...], full: bool, eps: float) -> None:
    t = {"input": randn(3, 4, 5, seed=1), "target": randn(3, 4, 5, seed=2), "var": rand(*var_shape, seed=3) + 0.05}
    assert_matches(
        C.gaussian_nll, F.gaussian_nll_loss, t, ("input", "target", "var"), reduction=reduction, full=full, eps=eps
    )


def test_gaussian_nll_scalar_var_and_formula() -> None:
    x, y = randn(3, 4, seed=4), randn(3, 4, seed=5)
    v = torch.tensor(0.7, dtype=D)
    out, gv = grads(C.gaussian_nll, {"input": x, "target": y, "var": v}, ("var",), reduction="sum")
    assert torch.allclose(out, F.gaussian_nll_loss(x, y, 0.7, reduction="sum"))  # torch's float var
    _, gfull = grads(
        F.gaussian_nll_loss,
        {"input": x, "target": y, "var": torch.full((3, 4), 0.7, dtype=D)},
        ("var",),
        reduction="sum",
    )
    torch.testing.assert_close(gv, gfull.sum())
    want = 0.5 * (np.log(0.7) + (x.numpy() - y.numpy()) ** 2 / 0.7 + np.log(2 * np.pi))
    np.testing.assert_allclose(C.gaussian_nll(x, y, v, full=True, reduction="none").numpy(), want, rtol=1e-12)
    # eps clamps a tiny variance, as torch does
    tiny = torch.full((3, 4), 1e-9, dtype=D)
    torch.testing.assert_close(C.gaussian_nll(x, y, tiny), C.gaussian_nll(x, y, torch.full((3, 4), 1e-6, dtype=D)))
