"""The README's shell examples run against a real server and do what they say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from serverutil import Server

from lossd.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"


def curl_blocks() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [b for b in blocks if "curl " in b]


def test_readme_has_examples() -> None:
    assert len(curl_blocks()) >= 5


@pytest.mark.parametrize("index", range(len(curl_blocks())))
def test_readme_example_runs(server: Server, index: int, tmp_path: Path) -> None:
    script = (
        curl_blocks()[index].replace("http://127.0.0.1:8000", server.url).replace(".venv/bin/python", sys.executable)
    )
    r = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    if "1000000000" in script:
        assert '"status":422' in out and "out of range" in out
    elif "composite" in script:
        assert '"terms"' in out and '"logits"' in out
    elif "safetensors" in script:
        value, shape = out.strip().split(" ", 1)
        assert float(value) > 0 and shape == "torch.Size([1000, 1000])"
    else:
        assert '"value"' in out and '"loss"' in out


def test_readme_lists_every_setting() -> None:
    text = README.read_text()
    for name in Settings.model_fields:
        assert f"LOSSD_{name.upper()}" in text, name


def test_readme_settings_table_is_generated() -> None:
    """Regenerate with: python -c 'from lossd.settings import markdown_table; print(markdown_table())'."""
    from lossd.settings import markdown_table

    assert markdown_table() in README.read_text()


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(server: Server, index: int, tmp_path: Path) -> None:
    code = python_blocks()[index].replace("http://127.0.0.1:8000", server.url)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip(), "the example prints its result"
