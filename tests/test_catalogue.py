"""The served catalogue against losses.md, and every loss's gradient over HTTP against finite differences."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import torch
from serverutil import Server

from lossd.codecs import Limits, decode_tensor, dumps, encode_tensor
from lossd.examples import EXAMPLES
from lossd.losses import default_catalogue

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "losses.md"


def spec_rows() -> dict[str, set[str]]:
    """name -> aliases, read from the tables of losses.md."""
    rows: dict[str, set[str]] = {}
    for line in SPEC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 5 or cells[0] in ("name", "") or set(cells[0]) <= {"-"}:
            continue
        if not re.fullmatch(r"[a-z0-9_]+", cells[0]):
            continue
        rows[cells[0]] = {a.strip() for a in cells[1].split(",") if a.strip()}
    return rows


@pytest.mark.skipif(not SPEC.exists(), reason="shared/spec/losses.md is not beside the checkout")
def test_catalogue_is_exactly_losses_md() -> None:
    rows = spec_rows()
    assert len(rows) == 41
    served = {s.name: set(s.aliases) for s in default_catalogue()}
    assert served == rows


def test_every_loss_has_a_warmup_example() -> None:
    assert set(EXAMPLES) == {s.name for s in default_catalogue()}


def test_every_loss_listed_over_http(server: Server) -> None:
    losses = httpx.get(server.url + "/v1/losses").json()["losses"]
    assert len(losses) == len(default_catalogue())
    for info in losses:
        assert info["summary"] and info["inputs"]
        assert info["params"]["type"] == "object"
        for prop in info["params"].get("properties", {}).values():
            assert "default" in prop
        assert info["available"] is (info["name"] != "perceptual")
        for alias in info["aliases"]:
            assert httpx.get(f"{server.url}/v1/losses/{alias}").json()["name"] == info["name"]


def as64(obj: object) -> torch.Tensor | object:
    """An example input in float64 (floating and integer-valued float inputs), text untouched."""
    if isinstance(obj, list) and obj and all(isinstance(s, str) for s in obj):
        return obj
    t = decode_tensor(obj, ("x",), Limits(10**6, 64))
    assert isinstance(t, torch.Tensor)
    return t


SMOOTH_PARAMS = {"tukey_biweight": {"scale": "none"}}  # "mad" holds the scale constant for the gradient


@pytest.mark.parametrize("name", sorted(n for n in EXAMPLES if n not in ("perceptual", "edit_distance")))
def test_gradients_match_finite_differences_over_http(server: Server, name: str) -> None:
    """The engine's gradient path (dtype handling, leaves, reduction) for every loss, in float64."""
    spec = default_catalogue().get(name)
    assert spec is not None
    ex = EXAMPLES[name]
    params = {**ex.get("params", {}), **SMOOTH_PARAMS.get(name, {})}
    inputs = {k: as64(v) for k, v in ex["inputs"].items()}
    diff = [i.name for i in spec.inputs if i.differentiable and i.name in inputs]
    for k in diff:
        inputs[k] = inputs[k].to(torch.float64)  # type: ignore[union-attr]

    def wire(ins: dict) -> dict:
        return {k: (encode_tensor(v) if isinstance(v, torch.Tensor) else v) for k, v in ins.items()}

    def post(path: str, body: dict) -> dict:
        r = httpx.post(server.url + path, content=dumps(body), headers={"content-type": "application/json"}, timeout=60)
        assert r.status_code == 200, r.text
        return r.json()

    out = post(f"/v1/losses/{name}", {"inputs": wire(inputs), "params": params, "grad": diff})
    h = 1e-6
    calls, where = [], []
    for k in diff:
        x = inputs[k]
        assert isinstance(x, torch.Tensor)
        for j in range(min(x.numel(), 6)):
            for sign in (1, -1):
                x2 = x.clone()
                x2.view(-1)[j] += sign * h
                calls.append({"loss": name, "inputs": wire({**inputs, k: x2}), "params": params})
            where.append((k, j))
    results = post("/v1/batch", {"calls": calls})["results"]

    def total(v: object) -> float:
        if isinstance(v, dict):
            t = decode_tensor(v, ("v",), Limits(10**6, 64))
            assert isinstance(t, torch.Tensor)
            return float(t.double().sum())
        return float(v)  # type: ignore[arg-type]

    for i, (k, j) in enumerate(where):
        plus, minus = total(results[2 * i]["value"]), total(results[2 * i + 1]["value"])
        fd = (plus - minus) / (2 * h)
        g = decode_tensor(out["grads"][k], ("g",), Limits(10**6, 64))
        assert isinstance(g, torch.Tensor) and g.dtype == torch.float64
        assert float(g.view(-1)[j]) == pytest.approx(fd, rel=1e-4, abs=1e-6), (k, j)
