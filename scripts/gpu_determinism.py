"""Which losses give different bits from one run to the next on this device, and which refuse to run
under torch.use_deterministic_algorithms(True): the data for deciding on a deterministic-CUDA setting
(docs/decisions.md, "Same bits on every node").

Each catalogue example is tiled along its batch dim (x4096, where the loss still takes it) so that
kernels that sum with atomics have something to race over, then run with every gradient, five times.

    python scripts/gpu_determinism.py [--device cuda] [--tile 4096] [--runs 5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
from typing import Any

# cuBLAS needs a fixed workspace to be deterministic (set before CUDA starts).
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

import torch

from lossd import codecs
from lossd.engine import Engine
from lossd.errors import Problem
from lossd.examples import EXAMPLES
from lossd.losses import default_catalogue
from lossd.settings import Settings


def tiled(inputs: dict[str, Any], n: int) -> dict[str, Any]:
    return {
        k: v.repeat(n, *([1] * (v.dim() - 1))) if isinstance(v, torch.Tensor) and v.dim() else v
        for k, v in inputs.items()
    }


def bits(result: Any) -> list[torch.Tensor]:
    return [result.value.detach().cpu(), *(g.detach().cpu() for g in result.grads.values())]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tile", type=int, default=4096)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    catalogue = default_catalogue()
    engine = Engine(catalogue, torch.device(args.device), Settings(warmup=False))
    limits = codecs.Limits(1 << 30, 64)
    rows = []
    for spec in catalogue:
        ex = EXAMPLES.get(spec.name)
        if ex is None or spec.name in engine.unavailable:
            continue
        text = frozenset(i.name for i in spec.inputs if i.kind == "text")
        base = codecs.decode_tensors(ex["inputs"], ("inputs",), limits, text)
        grad = bool(spec.differentiable)
        call, tile = None, args.tile
        with contextlib.suppress(Problem):
            call = engine.prepare(spec, tiled(base, tile), ex.get("params"), grad)
            engine.run(call)
        if call is None:
            call, tile = engine.prepare(spec, base, ex.get("params"), grad), 1
        outs = [bits(engine.run(call)) for _ in range(args.runs)]
        same = all(torch.equal(a, b) for out in outs[1:] for a, b in zip(outs[0], out))
        torch.use_deterministic_algorithms(True)
        try:
            engine.run(call)
            strict = "runs"
        except Problem as p:
            strict = "refuses: " + p.detail[:120]
        finally:
            torch.use_deterministic_algorithms(False)
        rows.append((spec.name, tile, "same bits" if same else "DIFFERENT BITS", strict))
    for name, tile, same, strict in rows:
        print(f"{name:34s} x{tile:<5d} {same:15s} deterministic mode: {strict}")


if __name__ == "__main__":
    main()
