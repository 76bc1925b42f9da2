"""ctc and edit_distance: values against torch / a DP reference, true gradients, checks."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from lossd.losses.sequences import CTC, EDIT_DISTANCE, SPECS, CTCParams, EditDistanceParams, ctc, edit_distance
from lossd.spec import InputError

REDUCTIONS = ("mean", "sum", "none")


def test_specs_and_aliases() -> None:
    assert {s.name for s in SPECS} == {"ctc", "edit_distance"}
    assert CTC.aliases == ("connectionist_temporal_classification",)
    assert EDIT_DISTANCE.aliases == ("levenshtein",)
    assert CTC.differentiable == ("input",)
    assert EDIT_DISTANCE.differentiable == ()
    assert EDIT_DISTANCE.host_only
    assert CTC.reductions == ("mean", "sum", "none")
    assert EDIT_DISTANCE.reductions == ("mean", "sum", "none")
    assert [i.kind for i in EDIT_DISTANCE.inputs] == ["text", "text", "index", "index"]


# ---------------------------------------------------------------------------
# ctc


def _ctc_case(padded: bool = True, seed: int = 0, scale: float = 1.0, dtype: torch.dtype = torch.float64) -> dict:
    g = torch.Generator().manual_seed(seed)
    T, N, C = 7, 3, 5
    x = torch.randn(T, N, C, generator=g, dtype=dtype) * scale
    tl = torch.tensor([3, 1, 2])
    il = torch.tensor([7, 4, 5])
    labels = [[1, 2, 2], [3], [4, 1]]
    if padded:
        tg = torch.zeros(N, 4, dtype=torch.int64)
        for n, lab in enumerate(labels):
            tg[n, : len(lab)] = torch.tensor(lab)
    else:
        tg = torch.tensor([v for lab in labels for v in lab])
    return {"input": x, "targets": tg, "input_lengths": il, "target_lengths": tl}


@pytest.mark.parametrize("padded", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ctc_values_match_torch(padded: bool, reduction: str, dtype: torch.dtype) -> None:
    case = _ctc_case(padded, dtype=dtype)
    lp = case["input"].log_softmax(2)
    got = ctc(lp, case["targets"], case["input_lengths"], case["target_lengths"], reduction=reduction)  # type: ignore[arg-type]
    want = F.ctc_loss(lp, case["targets"], case["input_lengths"], case["target_lengths"], reduction=reduction)
    assert got.dtype == dtype
    assert got.shape == want.shape
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ctc_values_unnormalised_log_probs_match_torch(reduction: str) -> None:
    # Values follow torch for any tensor, not only normalised log-probabilities.
    case = _ctc_case(scale=3.0)
    x = case["input"]
    got = ctc(x, case["targets"], case["input_lengths"], case["target_lengths"], reduction=reduction)  # type: ignore[arg-type]
    want = F.ctc_loss(x, case["targets"], case["input_lengths"], case["target_lengths"], reduction=reduction)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ctc_logits_value_is_torch_on_log_softmax(reduction: str) -> None:
    case = _ctc_case(padded=False, scale=2.0)
    x = case["input"]
    got = ctc(
        x,
        case["targets"],
        case["input_lengths"],
        case["target_lengths"],
        input_is="logits",
        reduction=reduction,  # type: ignore[arg-type]
    )
    want = F.ctc_loss(
        x.log_softmax(2), case["targets"], case["input_lengths"], case["target_lengths"], reduction=reduction
    )
    torch.testing.assert_close(got, want)


def test_ctc_blank_param() -> None:
    case = _ctc_case()
    tg = case["targets"].clone()
    tg[tg == 4] = 0  # label 4 becomes 0, and 4 is the blank
    lp = case["input"].log_softmax(2)
    got = ctc(lp, tg, case["input_lengths"], case["target_lengths"], blank=4, reduction="none")
    want = F.ctc_loss(lp, tg, case["input_lengths"], case["target_lengths"], blank=4, reduction="none")
    torch.testing.assert_close(got, want)
    default = ctc(lp, case["targets"], case["input_lengths"], case["target_lengths"], reduction="none")
    assert not torch.allclose(got, default)


@pytest.mark.parametrize("input_is", ["log_probs", "logits"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("padded", [True, False])
def test_ctc_gradcheck_true_derivative(input_is: str, reduction: str, padded: bool) -> None:
    # Arbitrary (unnormalised) tensors for log_probs: torch's own backward is wrong there.
    case = _ctc_case(padded, seed=1, scale=2.0)
    x = case["input"].clone().requires_grad_(True)

    def f(t: torch.Tensor) -> torch.Tensor:
        return ctc(
            t,
            case["targets"],
            case["input_lengths"],
            case["target_lengths"],
            input_is=input_is,  # type: ignore[arg-type]
            reduction=reduction,  # type: ignore[arg-type]
        )

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-6)


def _central_difference(f: Any, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    g = torch.zeros_like(x)
    flat, gflat = x.view(-1), g.view(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + eps
        up = f(x).sum().item()
        flat[i] = old - eps
        down = f(x).sum().item()
        flat[i] = old
        gflat[i] = (up - down) / (2 * eps)
    return g


def test_ctc_log_probs_grad_differs_from_torch_and_matches_finite_differences() -> None:
    case = _ctc_case(seed=2, scale=1.5)
    x = case["input"].clone()
    args = (case["targets"], case["input_lengths"], case["target_lengths"])
    xr = x.clone().requires_grad_(True)
    (ours,) = torch.autograd.grad(ctc(xr, *args, reduction="sum"), xr)
    xt = x.clone().requires_grad_(True)
    (theirs,) = torch.autograd.grad(F.ctc_loss(xt, *args, reduction="sum"), xt)
    fd = _central_difference(lambda t: F.ctc_loss(t, *args, reduction="sum"), x.clone())
    torch.testing.assert_close(ours, fd, atol=1e-6, rtol=1e-5)
    assert not torch.allclose(theirs, fd, atol=1e-3)  # pytorch issue 52241
    # frames beyond a sample's input length do not affect the loss
    assert bool((ours[5:, 1] == 0).all()) and bool((ours[4:, 1] == 0).all())


def test_ctc_grad_large_entries_is_accurate() -> None:
    # exp(x) is huge here; the occupancy is still read accurately (it is in [0, 1] and sums to 1 per frame).
    case = _ctc_case(seed=3, scale=1.0)
    x = (case["input"] + 60.0).requires_grad_(True)
    loss = ctc(x, case["targets"], case["input_lengths"], case["target_lengths"], reduction="none")
    (g,) = torch.autograd.grad(loss.sum(), x)
    il = case["input_lengths"]
    for n in range(3):
        torch.testing.assert_close(g[: il[n], n].sum(dim=1), torch.full((int(il[n]),), -1.0, dtype=x.dtype))
    assert bool((g <= 1e-12).all())  # minus an occupancy (up to rounding)


def test_ctc_log_minus_inf_entries_give_zero_not_nan() -> None:
    case = _ctc_case(seed=4)
    x = case["input"].log_softmax(2).clone()
    x[:, :, 3] = -math.inf  # class 3 impossible: only sample 1 (label 3) becomes infeasible
    xr = x.requires_grad_(True)
    loss = ctc(xr, case["targets"], case["input_lengths"], case["target_lengths"], reduction="none")
    assert math.isinf(loss[1].item()) and math.isfinite(loss[0].item())
    (g,) = torch.autograd.grad(loss.sum(), xr)
    assert not bool(g.isnan().any())
    assert bool((g[:, :, 3] == 0).all())
    assert bool((g[:, 1] == 0).all())
    assert bool((g[:, 0] != 0).any())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_ctc_infinite_loss(reduction: str) -> None:
    # Sample 2: input length 3 cannot emit [1, 1, 1] (needs 5 frames with blanks between repeats).
    T, N, C = 6, 3, 4
    x = torch.randn(T, N, C, dtype=torch.float64, generator=torch.Generator().manual_seed(5)).log_softmax(2)
    tg = torch.tensor([[1, 2, 2], [3, 0, 0], [1, 1, 1]])
    il, tl = torch.tensor([6, 4, 3]), torch.tensor([3, 1, 3])
    for zero_inf in (False, True):
        xr = x.clone().requires_grad_(True)
        got = ctc(xr, tg, il, tl, zero_infinity=zero_inf, reduction=reduction)  # type: ignore[arg-type]
        want = F.ctc_loss(x, tg, il, tl, zero_infinity=zero_inf, reduction=reduction)
        torch.testing.assert_close(got.detach(), want)
        (g,) = torch.autograd.grad(got.sum(), xr)
        assert not bool(g.isnan().any())  # torch gives NaN here without zero_infinity
        assert bool((g[:, 2] == 0).all())
        assert bool((g[:, 0] != 0).any())
        if zero_inf:
            assert math.isfinite(got.sum().item())
        else:
            assert math.isinf(got.sum().item())
    # The feasible samples' gradients equal the finite-difference gradient of their own losses.
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(ctc(xr, tg, il, tl, zero_infinity=True, reduction="sum"), xr)
    fd = _central_difference(lambda t: ctc(t, tg, il, tl, zero_infinity=True, reduction="sum"), x.clone())
    torch.testing.assert_close(g, fd, atol=1e-6, rtol=1e-5)


def test_ctc_empty_target_and_zero_input_length() -> None:
    x = torch.randn(4, 2, 3, dtype=torch.float64).log_softmax(2)
    tg = torch.tensor([[1, 2], [0, 0]])
    il, tl = torch.tensor([4, 0]), torch.tensor([2, 0])
    got = ctc(x, tg, il, tl, reduction="none")
    torch.testing.assert_close(got, F.ctc_loss(x, tg, il, tl, reduction="none"))
    assert got[1].item() == 0.0


def test_ctc_params_model() -> None:
    p = CTCParams()
    assert (p.blank, p.zero_infinity, p.input_is, p.reduction) == (0, False, "log_probs", "mean")
    with pytest.raises(ValidationError):
        CTCParams(blank=-1)
    with pytest.raises(ValidationError):
        CTCParams(input_is="probs")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CTCParams(reduction="batchmean")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        CTCParams(unknown=1)  # type: ignore[call-arg]


def _ctc_check(inputs: dict, **params: Any) -> None:
    assert CTC.check is not None
    CTC.check(inputs, CTCParams(**params))


def _bad(inputs: dict, key: str, value: Any) -> dict:
    out = dict(inputs)
    out[key] = value
    return out


def test_ctc_check_accepts_valid() -> None:
    _ctc_check(_ctc_case(True))
    _ctc_check(_ctc_case(False))


@pytest.mark.parametrize(
    ("key", "value", "loc"),
    [
        ("input", torch.zeros(7, 3), ("inputs", "input")),
        ("input", torch.zeros(0, 3, 5), ("inputs", "input")),
        ("input_lengths", torch.tensor([7, 4]), ("inputs", "input_lengths")),
        ("input_lengths", torch.tensor([8, 4, 5]), ("inputs", "input_lengths")),
        ("input_lengths", torch.tensor([-1, 4, 5]), ("inputs", "input_lengths")),
        ("target_lengths", torch.tensor([3, 1]), ("inputs", "target_lengths")),
        ("target_lengths", torch.tensor([5, 1, 2]), ("inputs", "target_lengths")),  # > S=4
        ("target_lengths", torch.tensor([3, -1, 2]), ("inputs", "target_lengths")),
        ("targets", torch.zeros(2, 4, dtype=torch.int64), ("inputs", "targets")),  # wrong N
        ("targets", torch.zeros(3, 4, 1, dtype=torch.int64), ("inputs", "targets")),
        ("targets", torch.tensor([[1, 2, 5, 0], [3, 0, 0, 0], [4, 1, 0, 0]]), ("inputs", "targets")),  # 5 >= C
        ("targets", torch.tensor([[1, -2, 2, 0], [3, 0, 0, 0], [4, 1, 0, 0]]), ("inputs", "targets")),
        ("targets", torch.tensor([[1, 0, 2, 0], [3, 0, 0, 0], [4, 1, 0, 0]]), ("inputs", "targets")),  # blank
    ],
)
def test_ctc_check_rejects(key: str, value: torch.Tensor, loc: tuple) -> None:
    with pytest.raises(InputError) as e:
        _ctc_check(_bad(_ctc_case(True), key, value))
    assert e.value.loc == loc


def test_ctc_check_padding_beyond_length_is_ignored() -> None:
    case = _ctc_case(True)
    case["targets"][1, 1:] = 99  # padding past target_lengths[1] = 1
    _ctc_check(case)


def test_ctc_check_concatenated() -> None:
    case = _ctc_case(False)
    with pytest.raises(InputError) as e:
        _ctc_check(_bad(case, "targets", case["targets"][:-1]))
    assert e.value.loc == ("inputs", "target_lengths")
    with pytest.raises(InputError) as e:
        _ctc_check(_bad(case, "targets", torch.tensor([1, 2, 2, 3, 4, 0])))
    assert e.value.loc == ("inputs", "targets")


def test_ctc_check_blank_range() -> None:
    with pytest.raises(InputError) as e:
        _ctc_check(_ctc_case(True), blank=5)
    assert e.value.loc == ("params", "blank")
    case = _ctc_case(True)
    case["targets"][case["targets"] == 4] = 0
    _ctc_check(case, blank=4)


# ---------------------------------------------------------------------------
# edit_distance


def _lev(a: Any, b: Any) -> int:
    """Textbook dynamic-programming Levenshtein distance."""
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
        prev = cur
    return prev[-1]


def _norm(d: int, n_truth: int) -> float:
    if n_truth == 0:
        return 0.0 if d == 0 else math.inf
    return d / n_truth


HYP = ["kitten", "flaw", "", "héllo wörld", "日本語", "abc", ""]
TRU = ["sitting", "lawn", "abc", "hello world", "日本", "abc", ""]


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_edit_distance_strings(normalize: bool, reduction: str) -> None:
    ref = [_lev(h, t) for h, t in zip(HYP, TRU)]
    per = torch.tensor([_norm(d, len(t)) if normalize else float(d) for d, t in zip(ref, TRU)], dtype=torch.float32)
    got = edit_distance(HYP, TRU, normalize=normalize, reduction=reduction)  # type: ignore[arg-type]
    assert got.dtype == torch.float32
    want = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    torch.testing.assert_close(got, want)


def test_edit_distance_code_points_and_empty_truth() -> None:
    got = edit_distance(["é", "x", "", "ab"], ["é", "y", "", ""], reduction="none")
    assert got.tolist() == [0.0, 1.0, 0.0, math.inf]
    # precomposed é vs e + combining acute: compared by code point, not by grapheme
    assert edit_distance(["\u00e9"], ["e\u0301"], normalize=False).item() == 2.0
    assert math.isinf(edit_distance(["ab", "a"], ["", "a"], reduction="mean").item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_edit_distance_int_tensors_with_lengths(reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    hyp = torch.randint(0, 4, (6, 9), generator=g, dtype=torch.int32)
    tru = torch.randint(0, 4, (6, 7), generator=g, dtype=torch.int64)
    hl = torch.tensor([9, 0, 3, 5, 9, 1])
    tl = torch.tensor([7, 2, 0, 7, 4, 1])
    d = [_lev(hyp[n, : hl[n]].tolist(), tru[n, : tl[n]].tolist()) for n in range(6)]
    per = torch.tensor([_norm(x, int(t)) for x, t in zip(d, tl)], dtype=torch.float32)
    got = edit_distance(hyp, tru, hl, tl, reduction=reduction)  # type: ignore[arg-type]
    want = {"none": per, "sum": per.sum(), "mean": per.mean()}[reduction]
    torch.testing.assert_close(got, want)
    # without lengths every element counts
    full = edit_distance(hyp, tru, normalize=False, reduction="none")
    assert full.tolist() == [float(_lev(hyp[n].tolist(), tru[n].tolist())) for n in range(6)]
    # only one side cut
    half = edit_distance(hyp, tru, hypothesis_lengths=hl, normalize=False, reduction="none")
    assert half.tolist() == [float(_lev(hyp[n, : hl[n]].tolist(), tru[n].tolist())) for n in range(6)]


def test_edit_distance_int_tokens_whose_hashes_collide() -> None:
    """Distinct tokens are distinct even where Python's hash() says otherwise (-1 and -2; ints mod 2**61-1)."""
    assert hash(-1) == hash(-2) and hash(0) == hash(2**61 - 1)
    hyp = torch.tensor([[-1, 5], [0, 7], [-1, -1]])
    tru = torch.tensor([[-2, 5], [2**61 - 1, 7], [-2, -2]], dtype=torch.int64)
    got = edit_distance(hyp, tru, normalize=False, reduction="none")  # type: ignore[arg-type]
    assert got.tolist() == [float(_lev(h, t)) for h, t in zip(hyp.tolist(), tru.tolist())] == [1.0, 1.0, 2.0]


def test_edit_distance_default_params() -> None:
    p = EditDistanceParams()
    assert (p.normalize, p.reduction) == (True, "mean")
    got = edit_distance(["kitten"], ["sitting"])
    assert got.item() == pytest.approx(3 / 7)
    with pytest.raises(ValidationError):
        EditDistanceParams(normalise=True)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        EditDistanceParams(reduction="max")  # type: ignore[arg-type]


def _ed_check(inputs: dict) -> None:
    assert EDIT_DISTANCE.check is not None
    EDIT_DISTANCE.check(inputs, EditDistanceParams())


def test_edit_distance_check_accepts_valid() -> None:
    _ed_check({"hypothesis": ["a", "b"], "truth": ["a", ""]})
    _ed_check(
        {
            "hypothesis": torch.zeros(2, 3, dtype=torch.int64),
            "truth": torch.zeros(2, 5, dtype=torch.int64),
            "hypothesis_lengths": torch.tensor([0, 3]),
            "truth_lengths": torch.tensor([5, 1]),
        }
    )


I2x3 = torch.zeros(2, 3, dtype=torch.int64)


@pytest.mark.parametrize(
    ("inputs", "loc"),
    [
        ({"hypothesis": ["a", "b"], "truth": ["a"]}, ("inputs", "truth")),
        ({"hypothesis": ["a", 3], "truth": ["a", "b"]}, ("inputs", "hypothesis")),
        ({"hypothesis": ["a"], "truth": torch.zeros(1, 2, dtype=torch.int64)}, ("inputs", "truth")),
        ({"hypothesis": torch.zeros(2, 3), "truth": torch.zeros(2, 3)}, ("inputs", "hypothesis")),
        ({"hypothesis": torch.zeros(3, dtype=torch.int64), "truth": I2x3}, ("inputs", "hypothesis")),
        ({"hypothesis": I2x3, "truth": torch.zeros(3, 3, dtype=torch.int64)}, ("inputs", "truth")),
        (
            {"hypothesis": I2x3, "truth": I2x3, "hypothesis_lengths": torch.tensor([4, 1])},
            ("inputs", "hypothesis_lengths"),
        ),
        ({"hypothesis": I2x3, "truth": I2x3, "truth_lengths": torch.tensor([-1, 1])}, ("inputs", "truth_lengths")),
        ({"hypothesis": I2x3, "truth": I2x3, "truth_lengths": torch.tensor([1, 1, 1])}, ("inputs", "truth_lengths")),
        ({"hypothesis": ["a"], "truth": ["b"], "truth_lengths": torch.tensor([1])}, ("inputs", "truth_lengths")),
    ],
)
def test_edit_distance_check_rejects(inputs: dict, loc: tuple) -> None:
    with pytest.raises(InputError) as e:
        _ed_check(inputs)
    assert e.value.loc == loc


def test_edit_distance_work_is_bounded() -> None:
    from lossd.losses.sequences import MAX_EDIT_CELLS

    assert EDIT_DISTANCE.check is not None
    long = "a" * 20_000
    with pytest.raises(InputError) as e:
        EDIT_DISTANCE.check({"hypothesis": [long], "truth": [long]}, EditDistanceParams())
    assert e.value.status == 413 and str(MAX_EDIT_CELLS) in e.value.msg
    EDIT_DISTANCE.check({"hypothesis": ["a" * 1000], "truth": ["b" * 1000]}, EditDistanceParams())


def test_ctc_work_is_bounded() -> None:
    from lossd.losses.sequences import MAX_CTC_CELLS

    assert CTC.check is not None
    T = 1 << 16
    x = torch.zeros(T, 1, 3)
    inputs = {
        "input": x,
        "targets": torch.ones(1, 1024, dtype=torch.int64),
        "input_lengths": torch.tensor([T]),
        "target_lengths": torch.tensor([1024]),
    }
    assert T * (2 * 1024 + 1) > MAX_CTC_CELLS
    with pytest.raises(InputError) as e:
        CTC.check(inputs, CTCParams())
    assert e.value.status == 413 and e.value.loc == ("inputs", "target_lengths")
    CTC.check({**inputs, "target_lengths": torch.tensor([100])}, CTCParams())
