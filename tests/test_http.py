"""The HTTP contract against a real server: every status of api.md's error table, headers, ops endpoints."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import time

import httpx
import pytest
import safetensors.torch
import torch
from serverutil import Server, run_server

from lossd.examples import EXAMPLES

PROBLEM = "application/problem+json"
CE = {"inputs": {"input": [[1.0, 2.0, 0.5], [0.3, -1.0, 2.0]], "target": [1, 2]}}


def post(server: Server, path: str, **kw: object) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kw)  # type: ignore[arg-type]


def assert_problem(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["title"] and body["detail"] and body["type"]
    assert "x-request-id" in r.headers
    return body


def test_ok_and_request_id(server: Server) -> None:
    r = post(server, "/v1/losses/cross_entropy", json=CE, headers={"X-Request-ID": "abc-123"})
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-123"
    ref = torch.nn.functional.cross_entropy(torch.tensor(CE["inputs"]["input"]), torch.tensor(CE["inputs"]["target"]))
    assert r.json()["loss"] == "cross_entropy"
    assert r.json()["value"] == pytest.approx(float(ref), rel=1e-6)
    r2 = post(server, "/v1/losses/cross_entropy", json=CE)
    assert len(r2.headers["x-request-id"]) >= 16 and r2.headers["x-request-id"] != r.headers["x-request-id"]


def test_alias_answers_canonical_name(server: Server) -> None:
    r = post(server, "/v1/losses/sparse_categorical_cross_entropy", json=CE)
    assert r.status_code == 200 and r.json()["loss"] == "cross_entropy"


def test_400_bad_json_and_bad_data(server: Server) -> None:
    assert_problem(
        post(server, "/v1/losses/mse", content=b"{not json", headers={"content-type": "application/json"}), 400
    )
    bad = {"inputs": {"input": {"dtype": "float32", "shape": [3], "data": [1, 2]}, "target": [1.0, 2.0]}}
    body = assert_problem(post(server, "/v1/losses/mse", json=bad), 400)
    assert body["errors"][0]["loc"] == ["inputs", "input"]
    assert_problem(
        post(server, "/v1/losses/mse", json={"inputs": {"input": [[1.0], [2.0, 3.0]], "target": [1.0]}}), 400
    )


def test_400_bad_safetensors(server: Server) -> None:
    r = post(
        server, "/v1/losses/mse", content=b"\x00\x01garbage", headers={"content-type": "application/x-safetensors"}
    )
    assert_problem(r, 400)


def test_body_framing_chunked_and_streamed(server: Server) -> None:
    """Bodies without Content-Length (chunked) and bodies that arrive in many pieces give the same answer."""
    raw = json.dumps(CE).encode()
    ref = post(server, "/v1/losses/cross_entropy", content=raw).json()

    def pieces() -> object:
        for i in range(0, len(raw), 7):
            yield raw[i : i + 7]

    r = post(server, "/v1/losses/cross_entropy", content=pieces())  # httpx sends an iterator chunked
    assert r.status_code == 200, r.text
    assert r.json() == ref
    # A large safetensors body arrives in many receive() messages and is gathered into one buffer.
    x = torch.randn(512, 1000)
    y = torch.randint(0, 1000, (512,))
    body = safetensors.torch.save({"input": x, "target": y}, metadata={"grad": "true"})
    r = post(server, "/v1/losses/cross_entropy", content=body, headers={"Content-Type": "application/x-safetensors"})
    assert r.status_code == 200
    xr = x.clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(xr, y).backward()
    assert torch.allclose(safetensors.torch.load(r.content)["grad.input"], xr.grad)
    # A chunked body over the limit is refused once the limit is passed.
    big = (b"x" * 65536 for _ in range(5000))  # 327 MB, over the default 256 MiB limit
    assert_problem(post(server, "/v1/losses/mse", content=big), 413)


def test_methods_on_compute_paths(server: Server) -> None:
    r = httpx.get(server.url + "/v1/batch")
    assert_problem(r, 405)
    assert r.headers["allow"] == "POST"
    for method in ("PUT", "DELETE", "PATCH"):
        r = httpx.request(method, server.url + "/v1/losses/mse")
        assert_problem(r, 405)
        assert r.headers["allow"] == "GET, POST"
    r = httpx.head(server.url + "/v1/losses/mse")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"
    assert httpx.get(server.url + "/v1/losses/mse").json()["name"] == "mse"
    assert_problem(post(server, "/v1/losses/a/b", json=CE), 404)


def test_404_names_closest(server: Server) -> None:
    body = assert_problem(post(server, "/v1/losses/crossentropy", json=CE), 404)
    assert "cross_entropy" in body["detail"]
    body = assert_problem(post(server, "/v1/losses/CROSS_ENTROPY", json=CE), 404)  # names are exact...
    assert "closest: cross_entropy" in body["detail"]  # ...suggestions ignore case
    assert "closest: " in assert_problem(post(server, "/v1/losses/zzzzzzzz", json=CE), 404)["detail"]
    # A long unknown name is compared by its start: still named, and the detail does not echo all of it back.
    body = assert_problem(post(server, "/v1/losses/cross_entropy" + "x" * 20000, json=CE), 404)
    assert "closest: cross_entropy" in body["detail"] and len(body["detail"]) < 300
    assert_problem(httpx.get(server.url + "/v1/losses/nope_nope"), 404)
    assert_problem(httpx.get(server.url + "/no/such/route"), 404)


def test_413_declared_shape_and_body(server: Server) -> None:
    huge = {"inputs": {"input": {"dtype": "float32", "shape": [10**6, 10**6], "data": []}, "target": [1.0]}}
    body = assert_problem(post(server, "/v1/losses/mse", json=huge), 413)
    assert body["errors"][0]["loc"] == ["inputs", "input"]


def test_415_content_type(server: Server) -> None:
    assert_problem(post(server, "/v1/losses/mse", content=b"a,b", headers={"content-type": "text/csv"}), 415)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"inputs": {"input": [[1.0, 2.0]], "target": [10**9]}}, ["inputs", "target"]),  # index out of range
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0, 1]}}, ["inputs", "target"]),  # wrong shape
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0.5]}}, ["inputs", "target"]),  # probs need input's shape
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "params": {"gamma": 1}}, ["params", "gamma"]),
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "params": {"reduction": "max"}}, ["params", "reduction"]),
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0], "extra": [1]}}, ["inputs", "extra"]),
        ({"inputs": {"input": [[1.0, 2.0]]}}, ["inputs", "target"]),
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "grad": ["target"]}, ["grad", "target"]),
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "grad": ["weight"]}, ["grad", "weight"]),
        ({"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "loss": "focal"}, ["loss"]),  # not a field of one call
        # params are typed strictly: a string is not a number, a boolean not an index
        (
            {"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "params": {"label_smoothing": "0.1"}},
            ["params", "label_smoothing"],
        ),
        (
            {"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "params": {"ignore_index": True}},
            ["params", "ignore_index"],
        ),
        (
            {"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "params": {"ignore_index": "0"}},
            ["params", "ignore_index"],
        ),
        (
            {"inputs": {"input": [[1.0, 2.0]], "target": [0]}, "params": {"ignore_index": 1.5}},
            ["params", "ignore_index"],
        ),
    ],
)
def test_422_field_errors(server: Server, body: dict, loc: list) -> None:
    problem = assert_problem(post(server, "/v1/losses/cross_entropy", json=body), 422)
    assert problem["errors"][0]["loc"] == loc
    assert problem["errors"][0]["msg"]


def test_a_whole_float_fills_an_integer_param(server: Server) -> None:
    """C++ and Java clients print whole doubles as 1.0: for an integer param it is the integer."""
    x = torch.tensor([[1.0, 2.0, 0.5], [0.3, -1.0, 2.0], [0.0, 0.1, 0.2]])
    t = torch.tensor([1, 2, 0])
    body = {"inputs": {"input": x.tolist(), "target": t.tolist()}}
    for given in (1, 1.0):
        out = post(server, "/v1/losses/cross_entropy", json={**body, "params": {"ignore_index": given}}).json()
        assert out["value"] == pytest.approx(torch.nn.functional.cross_entropy(x, t, ignore_index=1).item(), rel=1e-6)
    ctc = EXAMPLES["ctc"]
    whole = post(server, "/v1/losses/ctc", json={**ctc, "params": {**ctc.get("params", {}), "blank": 0.0}})
    assert (
        whole.status_code == 200 and whole.json()["value"] == post(server, "/v1/losses/ctc", json=ctc).json()["value"]
    )


def test_process_still_serves_after_bad_index(server: Server) -> None:
    for _ in range(3):
        assert (
            post(
                server, "/v1/losses/cross_entropy", json={"inputs": {"input": [[1.0, 2.0]], "target": [-5]}}
            ).status_code
            == 422
        )
    assert post(server, "/v1/losses/cross_entropy", json=CE).status_code == 200


def test_503_loss_without_configuration(server: Server) -> None:
    body = assert_problem(
        post(server, "/v1/losses/perceptual", json={"inputs": {"input": [[[[0.5]]]], "target": [[[[0.5]]]]}}), 503
    )
    assert "vgg16_weights" in body["detail"].lower() or "LOSSD_VGG16_WEIGHTS" in body["detail"]
    info = httpx.get(server.url + "/v1/losses/perceptual").json()
    assert info["available"] is False


def test_504_deadline(server: Server) -> None:
    r = post(server, "/v1/losses/cross_entropy", json=CE, headers={"X-Deadline-Ms": "0"})
    assert_problem(r, 504)


def test_binary_round_trip_and_accept(server: Server) -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    y = torch.randn(5, 4, dtype=torch.float64)
    body = safetensors.torch.save(
        {"input": x, "target": y}, metadata={"params": '{"reduction": "sum"}', "grad": '["input"]'}
    )
    r = post(server, "/v1/losses/l2", content=body, headers={"content-type": "application/x-safetensors"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-safetensors"
    out = safetensors.torch.load(r.content)
    ref = torch.nn.functional.mse_loss(x, y, reduction="sum")
    assert out["value"].shape == () and out["value"].dtype == torch.float64
    torch.testing.assert_close(out["value"], ref)
    torch.testing.assert_close(out["grad.input"], 2 * (x - y))
    import tempfile

    from safetensors import safe_open  # metadata check through the library

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(r.content)
        f.flush()
        with safe_open(f.name, "pt") as st:
            assert st.metadata()["loss"] == "mse"
    # A JSON request asking for a binary answer.
    r = post(
        server,
        "/v1/losses/mse",
        json={"inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}},
        headers={"accept": "application/x-safetensors"},
    )
    assert r.headers["content-type"] == "application/x-safetensors"
    assert float(safetensors.torch.load(r.content)["value"]) == pytest.approx(2.5)
    # Accept's q-values count: q=0 means "not this", and a JSON preferred over it is JSON.
    r = post(
        server,
        "/v1/losses/mse",
        json={"inputs": {"input": [1.0], "target": [0.0]}},
        headers={"accept": "Application/X-Safetensors"},
    )
    assert r.headers["content-type"] == "application/x-safetensors"  # media types ignore case
    for accept in ("application/x-safetensors;q=0", "application/json, application/x-safetensors;q=0.5"):
        r = post(
            server, "/v1/losses/mse", json={"inputs": {"input": [1.0], "target": [0.0]}}, headers={"accept": accept}
        )
        assert r.headers["content-type"] == "application/json" and r.json()["value"] == pytest.approx(1.0)


def test_binary_terms_carry_nonfinite_values_as_strings(server: Server) -> None:
    """The terms metadata of a safetensors answer spells NaN and Infinity as JSON responses do."""
    hm = torch.full((1, 1, 4, 4), -3.0)
    hm[0, 0, 0, 0] = float("nan")
    hm_target = torch.zeros(1, 1, 4, 4)
    hm_target[0, 0, 1, 1] = 1.0
    wh = torch.zeros(1, 2, 4, 4)
    wh[0, 0, 1, 1] = float("inf")
    tensors = {
        "hm": hm,
        "hm_target": hm_target,
        "wh": wh,
        "wh_target": torch.zeros(1, 1, 2),
        "offset": torch.zeros(1, 2, 4, 4),
        "offset_target": torch.zeros(1, 1, 2),
        "ind": torch.tensor([[5]]),
        "mask": torch.tensor([[1.0]]),
    }
    body = safetensors.torch.save(tensors)
    r = post(server, "/v1/losses/centernet", content=body, headers={"content-type": "application/x-safetensors"})
    assert r.status_code == 200, r.text
    with safe_open_bytes(r.content) as st:
        terms = json.loads(st.metadata()["terms"])
    assert terms["hm"] == "NaN" and terms["wh"] == "Infinity" and terms["offset"] == 0.0


@contextlib.contextmanager
def safe_open_bytes(content: bytes):  # type: ignore[no-untyped-def]
    import tempfile

    from safetensors import safe_open

    with tempfile.NamedTemporaryFile(suffix=".safetensors") as f:
        f.write(content)
        f.flush()
        with safe_open(f.name, "pt") as st:
            yield st


def test_reduction_none_value_is_always_a_tensor(server: Server) -> None:
    """api.md: the value is a tensor when reduction is "none", also where it has no dimensions (dice over "all")."""
    x = torch.rand(2, 3, 4, dtype=torch.float64)
    t = (torch.rand(2, 3, 4, dtype=torch.float64) > 0.5).double()
    body = {
        "inputs": {
            "input": {"dtype": "float64", "shape": [2, 3, 4], "data": x.flatten().tolist()},
            "target": {"dtype": "float64", "shape": [2, 3, 4], "data": t.flatten().tolist()},
        },
        "params": {"over": "all", "reduction": "none"},
    }
    out = post(server, "/v1/losses/dice", json=body).json()
    want = 1 - (2 * (x * t).sum()) / (x.sum() + t.sum() + 1e-5)
    assert out["value"]["shape"] == [] and out["value"]["dtype"] == "float64"
    assert out["value"]["data"] == [pytest.approx(want.item(), rel=1e-12)]
    out = post(server, "/v1/losses/dice", json={**body, "params": {"over": "all"}}).json()
    assert out["value"] == pytest.approx(want.item(), rel=1e-12)  # reduced: a number


def test_b64_answers_with_zero_dim_tensors(server: Server) -> None:
    """0-d gradients and 0-d "none" values go out as b64 tensor objects too, single and in a batch."""
    call = {"inputs": {"input": 1.0, "target": 0.5}, "grad": ["input"]}
    out = post(server, "/v1/losses/mse", json={**call, "encoding": "b64"}).json()
    g = out["grads"]["input"]
    assert g["shape"] == [] and base64.b64decode(g["b64"]) == torch.tensor([1.0]).numpy().tobytes()  # d/dx (x-t)^2
    res = post(server, "/v1/batch", json={"calls": [{"loss": "mse", **call}], "encoding": "b64"}).json()["results"]
    assert res[0]["grads"]["input"] == g


def test_nan_travels_as_string(server: Server) -> None:
    r = post(
        server,
        "/v1/losses/mse",
        json={"inputs": {"input": [1.0, "NaN"], "target": [0.0, 0.0]}, "params": {"reduction": "none"}, "grad": True},
    )
    assert r.status_code == 200
    assert b"NaN" in r.content and b"null" not in r.content
    body = r.json()
    assert body["value"]["data"] == [1.0, "NaN"]
    r = post(server, "/v1/losses/mse", json={"inputs": {"input": ["Infinity"], "target": [0.0]}})
    assert r.json()["value"] == "Infinity"


def test_b64_encoding_response(server: Server) -> None:
    r = post(
        server,
        "/v1/losses/mse",
        json={
            "inputs": {"input": [1.0, 3.0], "target": [0.0, 0.0]},
            "params": {"reduction": "none"},
            "encoding": "b64",
        },
    )
    v = r.json()["value"]
    assert v["dtype"] == "float32" and "b64" in v
    import base64

    assert torch.equal(
        torch.frombuffer(bytearray(base64.b64decode(v["b64"])), dtype=torch.float32), torch.tensor([1.0, 9.0])
    )


def test_compressed_bodies_are_415(server: Server) -> None:
    """A content coding lossd does not take is a 415 naming it (RFC 9110), not a 400 about garbled JSON."""
    import gzip

    body = gzip.compress(json.dumps(CE).encode())
    for coding in ("gzip", "br", "deflate, gzip"):
        r = post(
            server,
            "/v1/losses/cross_entropy",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": coding},
        )
        assert "Content-Encoding" in assert_problem(r, 415)["detail"]
    r = post(server, "/v1/losses/cross_entropy", json=CE, headers={"Content-Encoding": "identity"})
    assert r.status_code == 200


def test_error_lists_are_bounded(server: Server) -> None:
    params = {f"p{i}": i for i in range(5000)}
    r = post(server, "/v1/losses/mse", json={"inputs": {"input": [1.0], "target": [0.0]}, "params": params})
    problem = assert_problem(r, 422)
    assert len(problem["errors"]) == 50 and "first 50 of 5000" in problem["detail"]
    assert len(r.content) < 20_000
    assert {tuple(e["loc"]) for e in problem["errors"]} <= {("params", f"p{i}") for i in range(5000)}


def test_a_repeated_request_id_header_is_read_the_same_everywhere(server: Server) -> None:
    headers = [("X-Request-ID", "first"), ("X-Request-ID", "second")]
    for method, path in (("POST", "/v1/losses/mse"), ("GET", "/v1/info"), ("GET", "/v1/losses/nope")):
        r = httpx.request(
            method, server.url + path, json={"inputs": {"input": [1.0], "target": [0.0]}}, headers=headers
        )
        assert r.headers.get_list("x-request-id") == ["second"], (path, r.headers)


def test_ops_endpoints(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").status_code == 200
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready"}
    info = httpx.get(server.url + "/v1/info").json()
    assert info["torch"] == torch.__version__
    assert info["devices"][0]["device"].startswith(os.environ.get("LOSSD_TEST_DEVICE", "cpu"))
    assert info["limits"]["max_tensor_elements"] > 0
    post(server, "/v1/losses/cross_entropy", json=CE)
    httpx.get(server.url + "/v1/losses/mse")
    m = httpx.get(server.url + "/metrics")
    assert m.status_code == 200
    assert (
        'lossd_requests_total{endpoint="/v1/losses/{name}",loss="cross_entropy",method="POST",status="200"}' in m.text
    )
    # Reading a catalogue entry is told apart from calling the loss.
    assert 'lossd_requests_total{endpoint="/v1/losses/{name}",loss="",method="GET",status="200"}' in m.text
    assert "lossd_request_duration_seconds_bucket" in m.text


def test_catalogue(server: Server) -> None:
    losses = httpx.get(server.url + "/v1/losses").json()["losses"]
    by_name = {x["name"]: x for x in losses}
    focal = by_name["focal"]
    assert focal["aliases"] == ["softmax_focal"]
    assert focal["params"]["properties"]["gamma"]["default"] == 2.0
    assert focal["params"]["properties"]["reduction"]["default"] == "mean"
    assert [i["name"] for i in focal["inputs"]] == ["input", "target"]
    assert focal["inputs"][0]["differentiable"] is True and focal["inputs"][1]["differentiable"] is False
    assert set(focal["reductions"]) == {"mean", "sum", "none"}
    assert httpx.get(server.url + "/v1/losses/l2").json()["name"] == "mse"


def test_openapi_describes_real_bodies_and_docs_are_offline(server: Server) -> None:
    spec = httpx.get(server.url + "/openapi.json").json()
    from openapi_spec_validator import validate

    validate(spec)  # a valid OpenAPI 3.1 document, so generators in other languages can use it
    op = spec["paths"]["/v1/losses/{name}"]["post"]
    assert op["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/LossRequest")
    assert "application/x-safetensors" in op["requestBody"]["content"]
    assert "inputs" in spec["components"]["schemas"]["LossRequest"]["properties"]
    assert op["responses"]["422"]["content"]["application/problem+json"]
    for page in ("/docs", "/redoc"):
        html = httpx.get(server.url + page).text
        assert "cdn" not in html.lower() and "unpkg" not in html.lower()
        for src in [s.split('"')[1] for s in html.split("src=")[1:]]:
            assert httpx.get(server.url + src).status_code == 200


def test_real_answers_validate_against_the_openapi_schemas(server: Server) -> None:
    """What a generated client in another language would parse: every kind of answer, checked against the
    component schema the OpenAPI document gives it (JSON Schema 2020-12, as OpenAPI 3.1 uses)."""
    import jsonschema

    spec = httpx.get(server.url + "/openapi.json").json()
    schemas = spec["components"]["schemas"]
    assert not {"HTTPValidationError", "ValidationError"} & set(schemas)  # FastAPI's 422 bodies: never sent

    def check(name: str, body: dict) -> None:
        root = {"$ref": f"#/components/schemas/{name}", "components": spec["components"]}
        jsonschema.Draft202012Validator(root).validate(body)

    assert "grads" in schemas["LossResponse"]["required"]
    assert {"loc", "msg"} <= set(schemas["ProblemError"]["required"])
    nan_in = {"inputs": {"input": [1.0, "NaN"], "target": [0.0, 0.0]}, "params": {"reduction": "none"}}
    check("LossResponse", post(server, "/v1/losses/mse", json=nan_in).json())
    check("LossResponse", post(server, "/v1/losses/cross_entropy", json={**CE, "grad": True, "encoding": "b64"}).json())
    check("LossResponse", post(server, "/v1/losses/centernet", json=EXAMPLES["centernet"]).json())
    batch = {"calls": [{"loss": "mse", "inputs": {"input": [1.0], "target": [0.0]}}, {"loss": "nope", "inputs": {}}]}
    check("BatchResponse", post(server, "/v1/batch", json=batch).json())
    comp = {
        "inputs": {"x": [[1.0, 2.0]], "t": [1]},
        "terms": [{"loss": "cross_entropy", "inputs": {"input": "x", "target": "t"}}],
        "grad": ["x"],
    }
    check("CompositeResponse", post(server, "/v1/composite", json=comp).json())
    bad = post(server, "/v1/losses/cross_entropy", json={"inputs": {"input": [[1.0, 2.0]], "target": [9]}})
    assert bad.status_code == 422
    check("Problem", bad.json())
    check("Problem", {**bad.json(), "retry_after": 1})
    op = spec["paths"]["/v1/losses/{name}"]["post"]["responses"]
    assert "X-Request-ID" in op["200"]["headers"] and "Retry-After" in op["503"]["headers"]


def test_batch_one_bad_call_fails_alone(server: Server) -> None:
    calls = [
        {"loss": "mse", "inputs": {"input": [1.0, 2.0], "target": [0.0, 0.0]}},
        {"loss": "nope", "inputs": {}},
        {"loss": "cross_entropy", "inputs": {"input": [[1.0, 2.0]], "target": [7]}},
        {"loss": "focal", "inputs": CE["inputs"], "grad": True},
    ]
    r = post(server, "/v1/batch", json={"calls": calls})
    assert r.status_code == 200
    res = r.json()["results"]
    assert res[0]["value"] == pytest.approx(2.5)
    assert res[1]["error"]["status"] == 404
    assert res[2]["error"]["status"] == 422
    assert res[2]["error"]["errors"][0]["loc"] == ["calls", 2, "inputs", "target"]  # located in the batch
    assert res[3]["loss"] == "focal" and res[3]["grads"]["input"]["shape"] == [2, 3]
    # A call whose tensor is refused by the limits fails alone too.
    huge = {
        "loss": "mse",
        "inputs": {"input": {"dtype": "float32", "shape": [2**40, 2**40, 0], "data": []}, "target": [0.0]},
    }
    res = post(server, "/v1/batch", json={"calls": [huge, calls[0]]}).json()["results"]
    assert res[0]["error"]["status"] == 413 and res[1]["value"] == pytest.approx(2.5)
    # The encoding is the batch's: a call that names one is told so.
    bad = {"loss": "mse", "inputs": {"input": [1.0], "target": [0.0]}, "encoding": "garbage"}
    res = post(server, "/v1/batch", json={"calls": [bad, calls[0]]}).json()["results"]
    assert res[0]["error"]["status"] == 422 and res[0]["error"]["errors"][0]["loc"] == ["calls", 0, "encoding"]
    assert res[1]["value"] == pytest.approx(2.5)


def test_large_batch_goes_through_the_workers(server: Server) -> None:
    """A batch body over the inline limit is decoded on the host pool and run on a device worker:
    same answers, each against torch, b64 encoding honoured, a bad call still failing alone."""
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(20_000, generator=gen) for _ in range(3)]
    ys = [torch.randn(20_000, generator=gen) for _ in range(3)]
    calls: list[dict] = [
        {"loss": "mse", "inputs": {"input": x.tolist(), "target": y.tolist()}, "grad": ["input"]}
        for x, y in zip(xs, ys)
    ]
    calls.insert(1, {"loss": "mse", "inputs": {"input": [1.0, 2.0], "target": [1.0]}})
    body = {"calls": calls, "encoding": "b64"}
    assert len(json.dumps(body)) > 256 * 1024
    r = post(server, "/v1/batch", json=body)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert res[1]["error"]["status"] == 422
    for out, x, y in zip([res[0], res[2], res[3]], xs, ys):
        xr = x.clone().requires_grad_(True)
        ref = torch.nn.functional.mse_loss(xr, y)
        ref.backward()
        assert out["value"] == pytest.approx(ref.item(), rel=1e-6)
        g = out["grads"]["input"]
        assert g["shape"] == [20_000] and "b64" in g
        got = torch.frombuffer(bytearray(base64.b64decode(g["b64"])), dtype=torch.float32)
        assert torch.allclose(got, xr.grad, rtol=1e-5, atol=1e-9)


def test_composite_sums_weighted_terms(server: Server) -> None:
    logits = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 2, 1, 1])
    body = {
        "inputs": {
            "logits": {"dtype": "float64", "shape": [4, 3], "data": logits.flatten().tolist()},
            "target": target.tolist(),
        },
        "terms": [
            {"loss": "cross_entropy", "weight": 0.5, "inputs": {"input": "logits", "target": "target"}},
            {
                "loss": "focal",
                "weight": 2.0,
                "inputs": {"input": "logits", "target": "target"},
                "params": {"gamma": 1.0},
            },
        ],
        "grad": ["logits"],
    }
    r = post(server, "/v1/composite", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    x = logits.clone().requires_grad_(True)
    ce = torch.nn.functional.cross_entropy(x, target)
    logp = torch.log_softmax(x, 1).gather(1, target[:, None]).squeeze(1)
    fl = (-(1 - logp.exp()) * logp).mean()
    total = 0.5 * ce + 2.0 * fl
    total.backward()
    assert out["terms"][0]["value"] == pytest.approx(ce.item()) and out["terms"][1]["value"] == pytest.approx(fl.item())
    assert out["value"] == pytest.approx(float(total))
    g = torch.tensor(out["grads"]["logits"]["data"], dtype=torch.float64).reshape(4, 3)
    torch.testing.assert_close(g, x.grad)
    bad = dict(body, terms=[*body["terms"], {"loss": "mse", "inputs": {"input": "logits", "target": "nothere"}}])
    problem = assert_problem(post(server, "/v1/composite", json=bad), 422)
    assert problem["errors"][0]["loc"][:2] == ["terms", 2]
    # A tensor that is one term's differentiable input and another's target: only the first use carries the gradient.
    p = torch.softmax(torch.randn(4, 3, dtype=torch.float64), 1)
    mixed = {
        "inputs": {
            "logits": body["inputs"]["logits"],
            "p": {"dtype": "float64", "shape": [4, 3], "data": p.flatten().tolist()},
            "zeros": {"dtype": "float64", "shape": [4, 3], "data": [0.0] * 12},
        },
        "terms": [
            {"loss": "cross_entropy", "inputs": {"input": "logits", "target": "p"}},
            {"loss": "mse", "weight": 3.0, "inputs": {"input": "p", "target": "zeros"}},
        ],
        "grad": ["logits", "p"],
    }
    r = post(server, "/v1/composite", json=mixed)
    assert r.status_code == 200, r.text
    x, pr = logits.clone().requires_grad_(True), p.clone().requires_grad_(True)
    ref = torch.nn.functional.cross_entropy(x, pr.detach()) + 3.0 * torch.nn.functional.mse_loss(
        pr, torch.zeros(4, 3, dtype=torch.float64)
    )
    ref.backward()
    got = r.json()["grads"]
    assert r.json()["value"] == pytest.approx(ref.item(), rel=1e-12)
    torch.testing.assert_close(torch.tensor(got["p"]["data"], dtype=torch.float64).reshape(4, 3), pr.grad)
    torch.testing.assert_close(torch.tensor(got["logits"]["data"], dtype=torch.float64).reshape(4, 3), x.grad)
    # A shared tensor that no term uses is a mistake, not something to ignore.
    unused = dict(body, inputs={**body["inputs"], "spare": [1.0]})
    problem = assert_problem(post(server, "/v1/composite", json=unused), 422)
    assert problem["errors"][0]["loc"] == ["inputs", "spare"]


def test_401_403_429_with_keys_and_rate_limit() -> None:
    env = {
        "LOSSD_API_KEYS": json.dumps({"full": ["*"], "mse-only": ["mse"]}),
        "LOSSD_RATE_LIMIT_PER_S": "0.5",
        "LOSSD_RATE_LIMIT_BURST": "3",
        "LOSSD_WARMUP": "false",
        "LOSSD_MAX_BODY_BYTES": "4096",
    }
    mse = {"inputs": {"input": [1.0], "target": [0.0]}}
    with run_server(env) as s:
        assert_problem(post(s, "/v1/losses/mse", json=mse), 401)
        assert_problem(post(s, "/v1/losses/mse", json=mse, headers={"Authorization": "Bearer wrong"}), 401)
        assert_problem(post(s, "/v1/losses/cross_entropy", json=CE, headers={"X-API-Key": "mse-only"}), 403)
        assert post(s, "/v1/losses/mse", json=mse, headers={"X-API-Key": "mse-only"}).status_code == 200
        big = {"inputs": {"input": [1.0] * 2000, "target": [0.0] * 2000}}
        assert_problem(post(s, "/v1/losses/mse", json=big, headers={"X-API-Key": "mse-only"}), 413)
        statuses = [post(s, "/v1/losses/mse", json=mse, headers={"Authorization": "Bearer full"}) for _ in range(5)]
        limited = [r for r in statuses if r.status_code == 429]
        assert statuses[0].status_code == 200 and limited
        assert int(limited[0].headers["retry-after"]) >= 1
        assert_problem(limited[0], 429)
        assert httpx.get(s.url + "/healthz").status_code == 200  # ops endpoints stay open


def test_503_when_overloaded() -> None:
    """Past max_concurrency admitted calls the server refuses at once with 503 + Retry-After."""
    n = 2_000_000
    x = torch.randn(n)
    body = safetensors.torch.save({"input": x, "target": torch.zeros(n)}, metadata={"grad": "true"})
    with run_server({"LOSSD_MAX_CONCURRENCY": "1", "LOSSD_WARMUP": "false"}) as s:

        async def fire() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as c:
                return await asyncio.gather(
                    *[
                        c.post(
                            s.url + "/v1/losses/mse",
                            content=body,
                            headers={"content-type": "application/x-safetensors"},
                        )
                        for _ in range(8)
                    ]
                )

        rs = asyncio.run(fire())
        codes = [r.status_code for r in rs]
        assert 200 in codes and 503 in codes, codes
        busy = next(r for r in rs if r.status_code == 503)
        assert_problem(busy, 503)
        assert busy.headers["retry-after"] == "1"
        assert post(s, "/v1/losses/mse", json={"inputs": {"input": [2.0], "target": [0.0]}}).json()["value"] == 4.0


def test_client_gone_mid_body_frees_its_slot() -> None:
    """A client that disconnects before sending its whole body gets nothing, and its slot is given back."""
    import socket

    with run_server({"LOSSD_MAX_CONCURRENCY": "1", "LOSSD_WARMUP": "false"}) as s:
        host, port = s.url.removeprefix("http://").split(":")
        for _ in range(3):
            with socket.create_connection((host, int(port)), timeout=10) as sock:
                sock.sendall(
                    b"POST /v1/losses/mse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 100000\r\n\r\n" + b'{"inputs": {"input": [1.0, '
                )
        # With one slot, a slot kept by any of those would make this a 503.
        deadline = 50
        while deadline:
            r = post(s, "/v1/losses/mse", json={"inputs": {"input": [2.0], "target": [0.0]}})
            if r.status_code == 200:
                break
            assert r.status_code == 503  # the server may not have seen the disconnects yet
            deadline -= 1
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["value"] == 4.0
        metrics = httpx.get(s.url + "/metrics").text
        assert 'status="500"' not in metrics


def test_stalled_uploads_time_out_with_408_and_give_their_slots_back() -> None:
    """Clients that send headers and then stall cannot hold the admission slots: past
    LOSSD_BODY_TIMEOUT_S they get 408 on a closed connection, and the slots serve others again."""
    import socket

    env = {"LOSSD_MAX_CONCURRENCY": "2", "LOSSD_WARMUP": "false", "LOSSD_BODY_TIMEOUT_S": "1"}
    with run_server(env) as s:
        host, port = s.url.removeprefix("http://").split(":")
        socks = []
        for path in ("/v1/losses/mse", "/v1/batch"):
            sock = socket.create_connection((host, int(port)), timeout=10)
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n".encode()
                + b'Content-Length: 1000\r\n\r\n{"inp'
            )
            socks.append(sock)
        ok = {"inputs": {"input": [2.0], "target": [0.0]}}
        time.sleep(0.3)
        assert_problem(post(s, "/v1/losses/mse", json=ok), 503)  # both slots held by the stalled uploads
        for sock in socks:
            answer = b""
            while chunk := sock.recv(65536):  # read until the server closes the connection
                answer += chunk
            sock.close()
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408") and b"connection: close" in head.lower()
            assert json.loads(body)["status"] == 408
        r = post(s, "/v1/losses/mse", json=ok)
        assert r.status_code == 200 and r.json()["value"] == 4.0
        assert 'status="500"' not in httpx.get(s.url + "/metrics").text


def test_body_bytes_in_flight_are_bounded() -> None:
    """LOSSD_MAX_INFLIGHT_BODY_BYTES counts the bodies of admitted requests together: a body that would
    pass it while another is in flight gets 503 with Retry-After; a small one still fits."""
    import socket

    env = {"LOSSD_WARMUP": "false", "LOSSD_MAX_INFLIGHT_BODY_BYTES": "5000", "LOSSD_BODY_TIMEOUT_S": "30"}
    with run_server(env) as s:
        host, port = s.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/losses/mse HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 4000\r\n\r\n{"
            )
            time.sleep(0.3)
            big = {"inputs": {"input": [1.0] * 300, "target": [0.0] * 300}}
            problem = assert_problem(post(s, "/v1/losses/mse", json=big), 503)
            assert "bytes" in problem["detail"] and "retry-after" in post(s, "/v1/losses/mse", json=big).headers
            r = post(s, "/v1/losses/mse", json={"inputs": {"input": [2.0], "target": [0.0]}})
            assert r.status_code == 200 and r.json()["value"] == 4.0
        time.sleep(0.3)  # the stalled upload is gone: the big body fits again
        r = post(s, "/v1/losses/mse", json=big)
        assert r.status_code == 200 and r.json()["value"] == 1.0
        assert 'lossd_rejected_total{reason="memory"} 2.0' in httpx.get(s.url + "/metrics").text


def test_concurrent_small_calls_each_get_their_own_answer(server: Server) -> None:
    """Small calls that arrive together are computed together on the loop: answers must not mix."""
    gen = torch.Generator().manual_seed(3)
    cases = [(torch.randn(4, 5, generator=gen), torch.randint(0, 5, (4,), generator=gen)) for _ in range(48)]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:

            def body(i: int) -> dict:
                x, y = cases[i]
                target = [0, 1, 2, 99] if i == 17 else y.tolist()  # one bad call among them
                return {"inputs": {"input": x.tolist(), "target": target}, "grad": True}

            return await asyncio.gather(*[c.post("/v1/losses/cross_entropy", json=body(i)) for i in range(48)])

    for i, r in enumerate(asyncio.run(fire())):
        if i == 17:
            assert_problem(r, 422)
            continue
        assert r.status_code == 200, r.text
        x, y = cases[i]
        xr = x.clone().requires_grad_(True)
        ref = torch.nn.functional.cross_entropy(xr, y)
        ref.backward()
        out = r.json()
        assert out["value"] == pytest.approx(ref.item(), rel=1e-6)
        assert torch.allclose(torch.tensor(out["grads"]["input"]["data"]).reshape(4, 5), xr.grad, atol=1e-7)


@pytest.mark.parametrize("front", [False, True], ids=["fastapi-app", "served"])
def test_unexpected_errors_are_500_problems_with_one_request_id(monkeypatch: pytest.MonkeyPatch, front: bool) -> None:
    """A bug (not a client error) answers 500 as problem+json, once, carrying the request id, on both paths:
    inside FastAPI's stack (as Ray Serve runs it) and in front of it (as ``lossd serve`` does)."""
    from lossd.app import create_app, served
    from lossd.settings import Settings

    fastapi_app = create_app(Settings(warmup=False))
    app = served(fastapi_app) if front else fastapi_app
    assert (app is fastapi_app) != front
    svc = fastapi_app.state.service
    svc.ready = True

    async def broken(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(svc, "compute", broken)
    monkeypatch.setattr(svc, "info", lambda: 1 / 0)

    async def scenario() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            return [
                await c.post("/v1/losses/mse", json=CE, headers={"X-Request-ID": "r1"}),
                await c.get("/v1/info", headers={"X-Request-ID": "r2"}),
            ]

    for r, rid in zip(asyncio.run(scenario()), ["r1", "r2"]):
        assert_problem(r, 500)
        assert r.headers.get_list("x-request-id") == [rid]
    metrics = svc.metrics.render().decode()
    assert 'endpoint="/v1/losses/{name}",loss="mse",method="POST",status="500"} 1.0' in metrics
    assert 'endpoint="/v1/info",loss="",method="GET",status="500"} 1.0' in metrics  # counted once, not twice
    svc.close()


def test_served_app_keeps_compute_inside_fastapi_when_tracing() -> None:
    """With LOSSD_OTEL on, FastAPI's tracing must see compute requests: ``served`` is then the app itself."""
    from lossd.app import create_app, served
    from lossd.settings import Settings

    app = create_app(Settings(warmup=False, otel=True))
    assert served(app) is app
    app.state.service.close()


def test_browsers_on_a_configured_origin_may_call_and_others_get_no_cors_headers(server: Server) -> None:
    """LOSSD_CORS_ORIGINS: a preflight and a call from that origin get their CORS headers, once each (on a
    compute route and on a FastAPI route); another origin gets none. Off by default."""
    origin = "http://app.example"
    plain = post(
        server, "/v1/losses/mse", json={"inputs": {"input": [1.0], "target": [0.0]}}, headers={"Origin": origin}
    )
    assert "access-control-allow-origin" not in plain.headers
    with run_server({"LOSSD_CORS_ORIGINS": f'["{origin}"]', "LOSSD_WARMUP": "false"}) as s:
        pre = httpx.options(
            s.url + "/v1/losses/mse",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, x-request-id",
            },
        )
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == origin
        assert "POST" in pre.headers["access-control-allow-methods"]
        for r in (
            httpx.post(
                s.url + "/v1/losses/mse", json={"inputs": {"input": [1.0], "target": [0.0]}}, headers={"Origin": origin}
            ),
            httpx.get(s.url + "/v1/info", headers={"Origin": origin}),
        ):
            assert r.status_code == 200
            assert r.headers.get_list("access-control-allow-origin") == [origin]
            assert "x-request-id" in r.headers["access-control-expose-headers"].lower()
        other = httpx.post(
            s.url + "/v1/losses/mse",
            json={"inputs": {"input": [1.0], "target": [0.0]}},
            headers={"Origin": "http://evil.example"},
        )
        assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


@pytest.mark.parametrize("value", [1e38, -1e300, 2**70, -(2**70)])
def test_an_index_param_beyond_int64_is_a_422_at_the_param_alone_and_in_a_batch(server: Server, value: float) -> None:
    """focal compares targets with ignore_index in Python: a value no int64 holds made torch raise
    OverflowError, which was a 500 (and failed a whole batch)."""
    call = {"inputs": {"input": [[2.0, 0.5, -1.0]], "target": [0]}, "params": {"ignore_index": value}}
    problem = assert_problem(post(server, "/v1/losses/focal", json=call), 422)
    assert problem["errors"][0]["loc"] == ["params", "ignore_index"] and "int64" in problem["detail"]
    good = {"loss": "mse", "inputs": {"input": [1.0], "target": [0.0]}}
    r = post(server, "/v1/batch", json={"calls": [good, {"loss": "focal", **call}]})
    assert r.status_code == 200
    first, second = r.json()["results"]
    assert first["value"] == 1.0 and second["error"]["status"] == 422


def test_stalled_uploads_of_one_key_leave_slots_for_the_others() -> None:
    """LOSSD_MAX_CONCURRENCY_PER_CLIENT: a tenant whose uploads stall holds at most its share of the slots
    (its next call is a 503 naming the bound), and another tenant's calls go through meanwhile."""
    import socket

    keys = '{"attacker": ["*"], "victim": ["*"]}'
    env = {"LOSSD_MAX_CONCURRENCY": "4", "LOSSD_MAX_CONCURRENCY_PER_CLIENT": "2", "LOSSD_API_KEYS": keys}
    with run_server({**env, "LOSSD_WARMUP": "false"}) as s:
        host, port = s.url.removeprefix("http://").split(":")
        stalled = []
        for _ in range(2):
            c = socket.create_connection((host, int(port)), timeout=10)
            c.sendall(
                b"POST /v1/losses/mse HTTP/1.1\r\nHost: t\r\nX-API-Key: attacker\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            stalled.append(c)
        try:
            time.sleep(0.5)
            body = {"inputs": {"input": [1.0], "target": [0.0]}}
            third = httpx.post(s.url + "/v1/losses/mse", json=body, headers={"X-API-Key": "attacker"}, timeout=10)
            problem = assert_problem(third, 503)
            assert "limit 2" in problem["detail"] and "Retry-After" in third.headers
            for _ in range(3):
                r = httpx.post(s.url + "/v1/losses/mse", json=body, headers={"X-API-Key": "victim"}, timeout=10)
                assert r.status_code == 200 and r.json()["value"] == 1.0
            metrics = httpx.get(s.url + "/metrics").text
            assert "lossd_admitted_requests 2.0" in metrics  # the stalled two, seen from outside
            assert 'lossd_rejected_total{reason="client"} 1.0' in metrics
        finally:
            for c in stalled:
                c.close()
