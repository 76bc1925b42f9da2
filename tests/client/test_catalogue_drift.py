"""The generated per-loss methods must match the live server's catalogue.

When this fails, regenerate: ``python client/lossd_client/generate.py`` (or ``--url`` a running server).
"""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from lossd_client import AsyncLossClient, LossClient, _generated
from lossd_client._generated import ALIASES, LOSSES
from lossd_client.generate import ident, ordered_params, py_type, render


@pytest.fixture(scope="module")
def catalogue(url: str) -> dict[str, dict[str, Any]]:
    return {x["name"]: x for x in httpx.get(url + "/v1/losses", timeout=30).json()["losses"]}


def _definitions(tree: ast.Module) -> dict[str, str]:
    """Each top-level statement and each method, by name (or its source's start), as a syntax-tree dump."""
    out: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            out.update({f"{node.name}.{getattr(m, 'name', '')}": ast.dump(m) for m in node.body})
        else:
            out[ast.unparse(node).split(" =", 1)[0].split(":", 1)[0][:60]] = ast.dump(node)
    return out


def test_generated_file_is_the_rendered_catalogue(catalogue: dict[str, dict[str, Any]]) -> None:
    """The whole file, docstrings included, is what the generator renders from the server's catalogue.

    Compared as syntax trees: the generator's ruff formatting is the only difference allowed.
    """
    assert _generated.__file__
    text = Path(_generated.__file__).read_text(encoding="utf-8")
    source = re.search(r"from (.+?)\.\n", text)
    assert source, "the generated file's docstring names its source"
    have, want = ast.parse(text), ast.parse(render(list(catalogue.values()), source.group(1)))
    if ast.dump(have) != ast.dump(want):
        a, b = _definitions(have), _definitions(want)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        pytest.fail(f"regenerate lossd_client/_generated.py; these differ: {', '.join(differ) or 'order'}")


def _same_type(annotation: Any, expected: str) -> bool:
    return ast.dump(ast.parse(str(annotation), mode="eval")) == ast.dump(ast.parse(expected, mode="eval"))


def _tuples_to_lists(v: Any) -> Any:
    return [_tuples_to_lists(x) for x in v] if isinstance(v, tuple | list) else v


def test_same_losses_and_aliases(catalogue: dict[str, dict[str, Any]]) -> None:
    assert set(LOSSES) == set(catalogue), "regenerate lossd_client/_generated.py"
    assert ALIASES == {a: n for n, x in catalogue.items() for a in x["aliases"]}


@pytest.mark.parametrize("cls", [LossClient, AsyncLossClient])
def test_methods_match_catalogue(catalogue: dict[str, dict[str, Any]], cls: type) -> None:
    problems: list[str] = []
    for name, info in sorted(catalogue.items()):
        method = getattr(cls, name, None)
        if method is None:
            problems.append(f"{name}: no method")
            continue
        if inspect.iscoroutinefunction(method) != (cls is AsyncLossClient):
            problems.append(f"{name}: sync/async mismatch")
        params = list(inspect.signature(method).parameters.values())[1:]
        positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
        if positional != [ident(i["name"]) for i in info["inputs"]]:
            problems.append(f"{name}: inputs {positional} != {[i['name'] for i in info['inputs']]}")
        for p, i in zip(params, info["inputs"]):
            if not i["required"] and p.default is not None:
                problems.append(f"{name}: optional input {i['name']} needs a None default")
        keywords = {p.name: p for p in params if p.kind is p.KEYWORD_ONLY}
        diff = [i["name"] for i in info["inputs"] if i["differentiable"]]
        grad = keywords.pop("grad", None)
        if bool(diff) != (grad is not None):
            problems.append(f"{name}: grad keyword present={grad is not None}, differentiable inputs {diff}")
        elif grad is not None and not _same_type(
            grad.annotation,
            f"bool | Literal[{', '.join(map(repr, diff))}] | Sequence[Literal[{', '.join(map(repr, diff))}]]",
        ):
            problems.append(f"{name}: grad annotation {grad.annotation}")
        server_params = dict(ordered_params(info))
        if set(keywords) != {ident(p) for p in server_params}:
            problems.append(f"{name}: params {sorted(keywords)} != {sorted(server_params)}")
            continue
        defs = info["params"].get("$defs", {})
        for pname, schema in server_params.items():
            kw = keywords[ident(pname)]
            want = schema.get("default")  # None also where the server computes the default
            got = _tuples_to_lists(kw.default)
            if got != want or type(got) is not type(want):
                problems.append(f"{name}.{pname}: default {kw.default!r} != server {want!r}")
            t = py_type(schema, defs)
            expected = t if "default" in schema or "None" in t.split(" | ") else f"{t} | None"
            if not _same_type(kw.annotation, expected):
                problems.append(f"{name}.{pname}: type {kw.annotation} != {expected}")
            if LOSSES[name].defaults.get(pname, None) != want:
                problems.append(f"{name}.{pname}: table default {LOSSES[name].defaults.get(pname)!r} != {want!r}")
        if LOSSES[name].inputs != tuple(i["name"] for i in info["inputs"]):
            problems.append(f"{name}: table inputs differ")
    assert not problems, "regenerate lossd_client/_generated.py:\n" + "\n".join(problems)
