"""Generate ``_generated.py``, the typed per-loss methods, from a lossd catalogue.

    python -m lossd_client.generate                       # in-process, from the installed lossd package
    python -m lossd_client.generate --url http://127.0.0.1:8000 [--api-key KEY]

Each loss becomes a method named after it: its inputs positional in catalogue order, then its
params as keywords with their JSON Schema types and defaults, then ``grad`` (typed with the
loss's differentiable inputs, one name or several; absent when it has none). The output is formatted with ruff when
ruff is available.
"""

from __future__ import annotations

import argparse
import json
import keyword
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

OUT = Path(__file__).with_name("_generated.py")
RESERVED = {"compute", "batch", "composite", "losses", "loss_info", "info", "close", "aclose"}


def catalogue_from_url(url: str, api_key: str | None = None) -> list[dict[str, Any]]:
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    resp = httpx.get(url.rstrip("/") + "/v1/losses", headers=headers, timeout=60.0)
    resp.raise_for_status()
    losses: list[dict[str, Any]] = resp.json()["losses"]
    return losses


def catalogue_from_lossd() -> list[dict[str, Any]]:
    """The JSON the server's GET /v1/losses emits, built in-process (needs the lossd package)."""
    from lossd.service import Service
    from lossd.settings import Settings

    svc = Service(Settings.model_validate({"device": "cpu", "warmup": False}))
    try:
        return [json.loads(json.dumps(svc.loss_info(s))) for s in svc.catalogue]
    finally:
        svc.close()


def literal(v: Any) -> str:
    """A JSON value as Python source; lists as tuples (immutable defaults)."""
    if v is None or isinstance(v, bool):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "(" + "".join(literal(x) + ", " for x in v) + ")"
    raise ValueError(f"unsupported default {v!r}")


def py_type(schema: Mapping[str, Any], defs: Mapping[str, Any]) -> str:
    """A JSON Schema (as pydantic emits it) -> a Python annotation."""
    if "$ref" in schema:
        return py_type(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "anyOf" in schema:
        parts: list[str] = []
        for s in schema["anyOf"]:
            t = py_type(s, defs)
            if t not in parts:
                parts.append(t)
        return " | ".join(parts)
    if "const" in schema:
        return f"Literal[{literal(schema['const'])}]"
    if "enum" in schema:
        return "Literal[" + ", ".join(literal(v) for v in schema["enum"]) + "]"
    kind = schema.get("type")
    if isinstance(kind, list):
        return py_type({"anyOf": [{"type": x} for x in kind]}, defs)
    if kind == "array":
        return f"Sequence[{py_type(schema.get('items', {}), defs)}]"
    return {
        "number": "float",
        "integer": "int",
        "boolean": "bool",
        "string": "str",
        "null": "None",
        "object": "Mapping[str, Any]",
    }.get(str(kind), "Any")


def ident(name: str) -> str:
    return name + "_" if keyword.iskeyword(name) or name in ("self", "grad") else name


def ordered_params(info: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    props: dict[str, Any] = info["params"].get("properties", {})
    # reduction last: the loss's own params read first, as in the catalogue tables
    return sorted(props.items(), key=lambda kv: kv[0] == "reduction")


def _doc(info: Mapping[str, Any]) -> list[str]:
    lines = [info.get("summary") or info["name"], "", "Inputs:"]
    for i in info["inputs"]:
        bits = [i["shape"], i.get("doc", "")]
        flags = [*(["differentiable"] if i["differentiable"] else []), *([] if i["required"] else ["optional"])]
        lines.append(f"    {i['name']}: " + "; ".join(b for b in [*bits, ", ".join(flags)] if b))
    if info.get("aliases"):
        lines += ["", "Aliases: " + ", ".join(info["aliases"])]
    if info.get("reference"):
        lines += ["", "Reference: " + info["reference"]]
    return [ln.replace("\\", "\\\\").replace('"""', '\\"\\"\\"') for ln in lines]


def render_method(info: Mapping[str, Any], is_async: bool) -> list[str]:
    name = info["name"]
    if not name.isidentifier() or keyword.iskeyword(name) or name in RESERVED or name.startswith("_"):
        raise ValueError(f"loss name {name!r} cannot be a client method")
    defs = info["params"].get("$defs", {})
    args = ["self"]
    optional_seen = False
    for i in info["inputs"]:
        optional_seen = optional_seen or not i["required"]
        args.append(
            f"{ident(i['name'])}: TensorLike | None = None" if optional_seen else f"{ident(i['name'])}: TensorLike"
        )
    kw: list[str] = []
    for p, schema in ordered_params(info):
        t = py_type(schema, defs)
        if "default" in schema:
            kw.append(f"{ident(p)}: {t} = {literal(schema['default'])}")
        else:  # a default the server computes: None leaves it to the server
            kw.append(f"{ident(p)}: {t if 'None' in t.split(' | ') else t + ' | None'} = None")
    diff = [i["name"] for i in info["inputs"] if i["differentiable"]]
    if diff:
        names = ", ".join(json.dumps(d) for d in diff)
        kw.append(f"grad: bool | Literal[{names}] | Sequence[Literal[{names}]] = False")
    sig = ", ".join(args + (["*", *kw] if kw else []))
    inputs = "{" + ", ".join(f"{json.dumps(i['name'])}: {ident(i['name'])}" for i in info["inputs"]) + "}"
    params = "{" + ", ".join(f"{json.dumps(p)}: {ident(p)}" for p, _ in ordered_params(info)) + "}"
    call = f"self._call_loss({json.dumps(name)}, {inputs}, {params}, {'grad' if diff else 'False'})"
    doc = _doc(info)
    return [
        f"    {'async ' if is_async else ''}def {name}({sig}) -> LossResult:",
        f'        """{doc[0]}',
        *[f"        {ln}" if ln else "" for ln in doc[1:]],
        '        """',
        f"        return {'await ' if is_async else ''}{call}",
        "",
    ]


def render(losses: Sequence[Mapping[str, Any]], source: str) -> str:
    losses = sorted(losses, key=lambda x: x["name"])
    out = [
        f'"""Typed per-loss methods, generated by ``python -m lossd_client.generate`` from {source}.',
        "",
        "Do not edit: regenerate when the catalogue changes (tests/client/test_catalogue_drift.py fails until then).",
        '"""',
        "",
        "from __future__ import annotations",
        "",
        "IMPORTS",
        "",
        "from lossd_client._base import AsyncLossCaller, LossEntry, SyncLossCaller",
        "from lossd_client._wire import TensorLike",
        "from lossd_client.models import LossResult",
        "",
        "__all__ = ['ALIASES', 'LOSSES', 'AsyncLossMethods', 'LossMethods']",
        "",
        "LOSSES: dict[str, LossEntry] = {",
    ]
    for info in losses:
        ins = tuple(i["name"] for i in info["inputs"])
        ps = tuple(p for p, _ in ordered_params(info))
        defaults = {p: s["default"] for p, s in ordered_params(info) if "default" in s}
        out.append(f"    {json.dumps(info['name'])}: LossEntry({ins!r}, {ps!r}, {defaults!r}),")
    out += ["}", "ALIASES: dict[str, str] = {"]
    for info in losses:
        out += [f"    {json.dumps(a)}: {json.dumps(info['name'])}," for a in info.get("aliases", [])]
    out += ["}", "", ""]
    for cls, base, is_async in (
        ("LossMethods", "SyncLossCaller", False),
        ("AsyncLossMethods", "AsyncLossCaller", True),
    ):
        out += [
            f"class {cls}({base}):",
            f'    """One {"awaitable " if is_async else ""}method per catalogue loss."""',
            "",
        ]
        for info in losses:
            out += render_method(info, is_async)
        out += [""]
    text = "\n".join(out)
    body = text.split("IMPORTS", 1)[1]
    abc = [n for n in ("Mapping", "Sequence") if f"{n}[" in body]
    typing = [n for n in ("Any", "Literal") if f"{n}[" in body or f"{n}," in body or f"{n}]" in body]
    imports = [f"from collections.abc import {', '.join(abc)}"] if abc else []
    imports += [f"from typing import {', '.join(typing)}"] if typing else []
    return text.replace("IMPORTS", "\n".join(imports), 1)


def ruff_format(path: Path) -> None:
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if Path(ruff).exists():  # optional: the client does not depend on ruff
        subprocess.run([ruff, "format", "--quiet", "--line-length", "120", str(path)], check=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="read GET /v1/losses of a running server (default: lossd in-process)")
    ap.add_argument("--api-key")
    ap.add_argument("--out", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if a.url:
        losses, source = catalogue_from_url(a.url, a.api_key), "a server's GET /v1/losses"
    else:
        losses, source = catalogue_from_lossd(), "lossd's catalogue"
    a.out.write_text(render(losses, source))
    ruff_format(a.out)
    print(f"wrote {len(losses)} losses to {a.out}")


if __name__ == "__main__":
    main()
