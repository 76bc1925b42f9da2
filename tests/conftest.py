from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from serverutil import Server, run_server


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """One real lossd server (CPU, default settings) shared by the session's HTTP tests."""
    with run_server() as s:
        yield s
