"""Sequence losses: CTC and edit distance."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from rapidfuzz.distance import Levenshtein

from lossd.spec import (
    Input,
    InputError,
    LossSpec,
    Reduced,
    Reduction,
    require_ndim,
    require_shape,
    shape_str,
)

# ---------------------------------------------------------------------------
# ctc


class CTCParams(Reduced):
    blank: int = Field(0, ge=0)
    zero_infinity: bool = False
    input_is: Literal["log_probs", "logits"] = "log_probs"


class _CTCTrueGrad(torch.autograd.Function):
    """Per-sample CTC negative log-likelihood with the true derivative w.r.t. the log-probabilities.

    The value is ``F.ctc_loss(..., reduction="none")``. ``p(l|x) = sum_paths prod_t exp(x[t, pi_t])``
    for an arbitrary (not necessarily normalised) tensor ``x``, so ``d(-log p)/dx[t,n,c]`` is minus the
    posterior occupancy ``gamma[t,n,c] = sum_{s: l'_s = c} alpha_t(s) beta_t(s) / (p * exp(x[t,c]))``,
    for ``t < input_lengths[n]`` (0 beyond). torch's own backward returns ``exp(x) - gamma`` (it assumes a
    log_softmax before it; pytorch issue 52241). The occupancy does not change when a constant is added to
    every class at one time step (each path crosses every step once), so it is read off torch's backward
    at ``z = log_softmax(x)``: ``gamma = exp(z) - grad_torch(z)``, where ``exp(z) <= 1`` keeps it accurate
    even for large entries of ``x``. Samples whose loss is infinite (no valid alignment) or zeroed by
    ``zero_infinity`` get a zero gradient (torch gives NaN for the former).
    """

    @staticmethod
    def forward(
        ctx: Any,
        log_probs: torch.Tensor,
        targets: torch.Tensor,
        input_lengths: torch.Tensor,
        target_lengths: torch.Tensor,
        blank: int,
        zero_infinity: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(log_probs, targets, input_lengths, target_lengths)
        ctx.blank = blank
        return F.ctc_loss(
            log_probs,
            targets,
            input_lengths,
            target_lengths,
            blank=blank,
            reduction="none",
            zero_infinity=zero_infinity,
        )

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        log_probs, targets, input_lengths, target_lengths = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 6
        with torch.enable_grad():
            z = F.log_softmax(log_probs.detach(), dim=2).requires_grad_(True)
            lz = F.ctc_loss(
                z, targets, input_lengths, target_lengths, blank=ctx.blank, reduction="none", zero_infinity=False
            )
            (g_torch,) = torch.autograd.grad(lz, z, grad_out)
        z = z.detach()
        gr = grad_out.reshape(1, -1, 1)
        occupancy = z.exp() * gr - g_torch  # gamma * grad_out
        steps = torch.arange(log_probs.shape[0], device=log_probs.device).unsqueeze(1)
        # Live: inside the sample's input length, the sample has a valid alignment (finite loss;
        # infinite or zero_infinity-zeroed samples get 0), and the entry is not log(0) = -inf (no
        # path can use it: occupancy 0, where torch's formula gives NaN).
        live = (steps < input_lengths.unsqueeze(0)) & torch.isfinite(lz.detach()).unsqueeze(0)
        live = live.unsqueeze(2) & ~torch.isneginf(z)
        grad = torch.where(live, -occupancy, torch.zeros_like(occupancy))
        return grad, None, None, None, None, None


def ctc(
    input: torch.Tensor,
    targets: torch.Tensor,
    input_lengths: torch.Tensor,
    target_lengths: torch.Tensor,
    *,
    blank: int = 0,
    zero_infinity: bool = False,
    input_is: Literal["log_probs", "logits"] = "log_probs",
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Connectionist temporal classification loss, values as ``torch.nn.functional.ctc_loss``.

    ``loss_n = -log sum_{paths pi -> targets_n} prod_{t < input_lengths[n]} exp(x[t, n, pi_t])`` with
    ``x = input`` (``input_is="log_probs"``) or ``x = log_softmax(input, dim=2)`` (``"logits"``).
    ``mean`` divides each loss by its target length (at least 1) and averages over the batch, as torch.
    The gradient is the true derivative w.r.t. ``input`` (see :class:`_CTCTrueGrad`), not torch's, which
    is only right after a log_softmax. Impossible alignments give ``inf`` (0 with ``zero_infinity``) and a
    zero gradient for that sample.
    """
    x = F.log_softmax(input, dim=2) if input_is == "logits" else input
    loss = _CTCTrueGrad.apply(x, targets, input_lengths, target_lengths, blank, zero_infinity)
    if reduction == "mean":
        return (loss / target_lengths.clamp_min(1).to(loss.dtype)).mean()
    if reduction == "sum":
        return loss.sum()
    return loss


MAX_CTC_CELLS = 1 << 26  # about 3 s of the recursion on one CPU core (measured: ~25M cells/s)


def _check_ctc(inputs: Mapping[str, Any], p: CTCParams) -> None:
    x = inputs["input"]
    require_ndim(x, "input", 3, "(T,N,C)")
    T, N, C = x.shape
    if T == 0 or N == 0 or C == 0:
        raise InputError(("inputs", "input"), f"expected a non-empty (T,N,C) tensor, got shape {shape_str(x)}")
    if p.blank >= C:
        raise InputError(("params", "blank"), f"blank index {p.blank} out of range [0, {C}) (C={C} classes)")
    il, tl, tg = inputs["input_lengths"], inputs["target_lengths"], inputs["targets"]
    require_shape(il, "input_lengths", (N,), "(one length per sample)")
    require_shape(tl, "target_lengths", (N,), "(one length per sample)")
    if bool((il < 0).any()) or bool((il > T).any()):
        bad = il[(il < 0) | (il > T)][0].item()
        raise InputError(("inputs", "input_lengths"), f"input length {bad} out of range [0, {T}] (T={T})")
    if bool((tl < 0).any()):
        raise InputError(("inputs", "target_lengths"), f"target length {tl[tl < 0][0].item()} is negative")
    require_ndim(tg, "targets", (1, 2), "(N,S) padded or 1-D concatenated")
    if tg.dim() == 2:
        require_shape(tg, "targets", (N, tg.shape[1]), "(N,S) padded")
        S = tg.shape[1]
        if bool((tl > S).any()):
            bad = tl[tl > S][0].item()
            raise InputError(("inputs", "target_lengths"), f"target length {bad} larger than S={S} of targets (N,S)")
        used = torch.arange(S).unsqueeze(0) < tl.unsqueeze(1)
        labels = tg[used]
    else:
        total = int(tl.sum().item())
        if total != tg.shape[0]:
            raise InputError(
                ("inputs", "target_lengths"),
                f"target lengths sum to {total} but the concatenated targets have {tg.shape[0]} labels",
            )
        labels = tg
    cells = _ctc_cells(inputs)
    if cells > MAX_CTC_CELLS:
        raise InputError(
            ("inputs", "target_lengths"),
            f"{cells} alignment cells (sum of input_length*(2*target_length+1)) is over the limit of "
            f"{MAX_CTC_CELLS} per call; split the call",
            status=413,
        )
    if labels.numel():
        bad_range = (labels < 0) | (labels >= C)
        if bool(bad_range.any()):
            raise InputError(("inputs", "targets"), f"label {labels[bad_range][0].item()} out of range [0, {C})")
        if bool((labels == p.blank).any()):
            raise InputError(("inputs", "targets"), f"label {p.blank} is the blank index; targets must not contain it")


def _ctc_cells(inputs: Mapping[str, Any]) -> int:
    """The forward-backward recursion visits T_n * (2*S_n + 1) cells per sample: the call's work."""
    il, tl = inputs["input_lengths"], inputs["target_lengths"]
    return int((il.to(torch.int64) * (2 * tl.to(torch.int64) + 1)).sum().item())


CTC = LossSpec(
    name="ctc",
    aliases=("connectionist_temporal_classification",),
    summary="CTC: -log sum over alignments of prod_t exp(log_probs[t, pi_t]) per sample (torch.nn.functional.ctc_loss"
    " values; mean divides by target lengths), with the true gradient w.r.t. the input.",
    fn=ctc,
    inputs=(
        Input("input", "float", "(T,N,C)", "log-probabilities (or logits with input_is=logits)", differentiable=True),
        Input("targets", "index", "(N,S) padded or 1-D concatenated", "target labels, never the blank"),
        Input("input_lengths", "index", "(N)", "frames used per sample, at most T"),
        Input("target_lengths", "index", "(N)", "labels per sample"),
    ),
    params=CTCParams,
    check=_check_ctc,
    reference="torch.nn.functional.ctc_loss (values); central finite differences / gradcheck in float64 (gradients)",
    work=lambda inputs: _ctc_cells(inputs) / MAX_CTC_CELLS,
)

# ---------------------------------------------------------------------------
# edit_distance


class EditDistanceParams(Reduced):
    normalize: bool = True


TextInput = Sequence[str] | torch.Tensor


def _sequences(x: TextInput, lengths: torch.Tensor | None) -> list[Any]:
    """Each pair's sequence: a string (compared by code point) or a list of ints (a tensor row, cut to its length)."""
    if isinstance(x, torch.Tensor):
        rows: list[list[int]] = x.tolist()
        if lengths is not None:
            return [r[:n] for r, n in zip(rows, lengths.tolist())]
        return rows
    return list(x)


def _dense(h: Sequence[Any], t: Sequence[Any]) -> tuple[list[int], list[int]]:
    """A pair's tokens renumbered 0, 1, 2... in order of appearance. Edit-distance libraries compare
    tokens by hash(), and distinct ints can share one (hash(-1) == hash(-2); ints wrap at 2**61-1)."""
    ids: dict[Any, int] = {}
    return [ids.setdefault(x, len(ids)) for x in h], [ids.setdefault(x, len(ids)) for x in t]


def _levenshtein(h: Any, t: Any) -> int:
    if isinstance(h, str) and isinstance(t, str):
        return int(Levenshtein.distance(h, t))  # code points, compared as such
    return int(Levenshtein.distance(*_dense(h, t)))


def edit_distance(
    hypothesis: TextInput,
    truth: TextInput,
    hypothesis_lengths: torch.Tensor | None = None,
    truth_lengths: torch.Tensor | None = None,
    *,
    normalize: bool = True,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Unit-cost Levenshtein distance per (hypothesis, truth) pair, as float32 (runs on the host).

    ``d_n = lev(h_n, t_n)`` (insertions, deletions, substitutions, each 1), over Unicode code points for
    strings or integer tokens for tensor rows (cut to the given lengths). ``normalize`` divides by
    ``len(t_n)`` as ``tf.edit_distance``: an empty truth gives 0 when the hypothesis is empty too, else
    ``+inf``. ``none`` gives shape (N).
    """
    hyps = _sequences(hypothesis, hypothesis_lengths)
    truths = _sequences(truth, truth_lengths)
    # rapidfuzz: bit-parallel (about 64 cells per step), so the GIL is held for milliseconds, not seconds.
    dist = torch.tensor([float(_levenshtein(h, t)) for h, t in zip(hyps, truths)], dtype=torch.float64)
    if normalize:
        tlen = torch.tensor([float(len(t)) for t in truths], dtype=torch.float64)
        dist = torch.where(tlen > 0, dist / tlen.clamp_min(1), torch.where(dist > 0, torch.inf, 0.0))
    dist = dist.to(torch.float32)
    if reduction == "mean":
        return dist.mean()
    if reduction == "sum":
        return dist.sum()
    return dist


MAX_EDIT_CELLS = 200_000_000  # tens of milliseconds (bit-parallel); bounds the host-side token lists too


def _rows(x: Any) -> list[Any]:
    return list(x) if not isinstance(x, torch.Tensor) else [x.shape[1]] * int(x.shape[0])


def _length(row: Any) -> int:
    return row if isinstance(row, int) else len(row)


def _text_count(x: Any, name: str) -> int:
    """Validate one text input and return its number of sequences N."""
    if isinstance(x, torch.Tensor):
        if x.is_floating_point() or x.dtype == torch.bool or x.is_complex():
            raise InputError(("inputs", name), f"expected a list of strings or an integer tensor, got {x.dtype}")
        require_ndim(x, name, 2, "(N,L) of integer tokens")
        return int(x.shape[0])
    if isinstance(x, (list, tuple)) and all(isinstance(s, str) for s in x):
        return len(x)
    raise InputError(("inputs", name), "expected a list of strings or an integer tensor (N,L)")


def _edit_cells(inputs: Mapping[str, Any]) -> int:
    """Levenshtein costs len(h)*len(t) per pair: the work one call holds the host for."""
    return sum(_length(h) * _length(t) for h, t in zip(_rows(inputs["hypothesis"]), _rows(inputs["truth"])))


def _check_edit_distance(inputs: Mapping[str, Any], _p: EditDistanceParams) -> None:
    hyp, tru = inputs["hypothesis"], inputs["truth"]
    n_h = _text_count(hyp, "hypothesis")
    n_t = _text_count(tru, "truth")
    if isinstance(hyp, torch.Tensor) != isinstance(tru, torch.Tensor):
        raise InputError(
            ("inputs", "truth"), "hypothesis and truth must both be lists of strings or both integer tensors"
        )
    if n_h != n_t:
        raise InputError(("inputs", "truth"), f"expected {n_h} sequences (as many as hypothesis), got {n_t}")
    cells = _edit_cells(inputs)
    if cells > MAX_EDIT_CELLS:
        raise InputError(
            ("inputs", "truth"),
            f"{cells} dynamic-programming cells (sum of len(hypothesis)*len(truth)) is over the limit of "
            f"{MAX_EDIT_CELLS} per call; split the call",
            status=413,
        )
    for name, seqs in (("hypothesis", hyp), ("truth", tru)):
        lengths = inputs.get(f"{name}_lengths")
        if lengths is None:
            continue
        lname = f"{name}_lengths"
        if not isinstance(seqs, torch.Tensor):
            raise InputError(("inputs", lname), f"lengths apply to integer tensors only; {name} is a list of strings")
        require_shape(lengths, lname, (n_h,), "(one length per sequence)")
        L = seqs.shape[1]
        bad = (lengths < 0) | (lengths > L)
        if bool(bad.any()):
            raise InputError(("inputs", lname), f"length {lengths[bad][0].item()} out of range [0, {L}] (L={L})")


EDIT_DISTANCE = LossSpec(
    name="edit_distance",
    aliases=("levenshtein",),
    summary="Unit-cost Levenshtein distance per pair of sequences (strings by code point or integer rows); "
    "normalize divides by the truth's length (tf.edit_distance). Host-only, not differentiable, float32.",
    fn=edit_distance,
    inputs=(
        Input("hypothesis", "text", "list of N strings, or (N,L) integers", "predicted sequences"),
        Input("truth", "text", "list of N strings, or (N,L') integers", "reference sequences"),
        Input("hypothesis_lengths", "index", "(N)", "tokens used per hypothesis row (tensors only)", required=False),
        Input("truth_lengths", "index", "(N)", "tokens used per truth row (tensors only)", required=False),
    ),
    params=EditDistanceParams,
    check=_check_edit_distance,
    reference="a pure-Python dynamic-programming Levenshtein in the tests",
    host_only=True,
    work=lambda inputs: _edit_cells(inputs) / MAX_EDIT_CELLS,
)


SPECS: tuple[LossSpec, ...] = (CTC, EDIT_DISTANCE)

__all__ = ["SPECS", "ctc", "edit_distance"]
