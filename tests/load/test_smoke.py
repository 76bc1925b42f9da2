"""CI smoke of the load suite: a few seconds of every scenario against a server this test starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from run import SLO, Summary, check_slos
from serverutil import run_server

RUN = Path(__file__).parent / "run.py"


def load(url: str, out: Path, *args: str, seconds: float = 4.0) -> tuple[int, dict]:
    cmd = [sys.executable, str(RUN), "--url", url, "--users", "6", "--spawn-rate", "6", "--duration", str(seconds)]
    proc = subprocess.run(
        [*cmd, "--json", str(out), *args],
        env={**os.environ, "LOSSD_LOAD_MSE_ELEMENTS": "200000"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.exists(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(out.read_text())


def test_slo_checker_reports_each_miss() -> None:
    ok = Summary(requests=100, failures=0, p99_ms=20.0, status_counts={200: 90, 422: 10})
    assert check_slos(ok, SLO(p99_ms=50.0)) == []
    bad = Summary(requests=100, failures=5, p99_ms=80.0, status_counts={200: 94, 503: 1, 422: 5})
    missed = check_slos(bad, SLO(p99_ms=50.0, max_error_rate=0.01))
    assert len(missed) == 3
    assert (
        any("5xx" in m for m in missed) and any("p99" in m for m in missed) and any("error rate" in m for m in missed)
    )
    assert check_slos(Summary(0, 0, 0.0, {}), SLO(p99_ms=50.0))[0].startswith("only 0 requests")


def test_runner_refuses_a_remote_target(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(RUN), "--url", "http://192.0.2.1:8000", "--duration", "1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0 and "loopback" in proc.stderr


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with run_server() as s:
        yield s.url


def test_mixed_scenario_meets_its_slos(url: str, tmp_path: Path) -> None:
    rc, report = load(url, tmp_path / "mixed.json", "--scenario", "mixed")
    assert rc == 0, report["missed"]
    assert report["requests"] > 20
    assert report["failures"] == 0, report["failure_messages"]
    assert all(status < 500 for status in map(int, report["status_counts"])), report["status_counts"]
    names = " ".join(report["per_name"])
    # Every scenario ran, the bad requests included (and, failures being 0, each got its 4xx).
    for part in (
        "/v1/losses/cross_entropy",
        "/v1/losses/mse [safetensors]",
        "/v1/batch",
        "/v1/losses/[catalogue]",
        "bad: ",
    ):
        assert part in names, names
    assert any(400 <= int(s) < 500 for s in report["status_counts"])


def test_runner_exits_nonzero_when_an_slo_is_missed(url: str, tmp_path: Path) -> None:
    rc, report = load(url, tmp_path / "strict.json", "--scenario", "classify", "--p99-ms", "0.001", seconds=2.0)
    assert rc == 1
    assert report["requests"] > 0 and any("p99" in m for m in report["missed"])
