"""perceptual over HTTP with a configured weights file: warmed up, available, values as the float64 reference."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import torch
from losses.test_perceptual import _images, _random_weights, _ref_loss
from safetensors.torch import save_file
from serverutil import run_server

from lossd.codecs import dumps, encode_tensor


def test_perceptual_served_with_weights(tmp_path: Path) -> None:
    sd = _random_weights(3)
    path = tmp_path / "vgg16.safetensors"
    save_file(sd, str(path))
    x, y = _images(2, 16, seed=4)
    with run_server({"LOSSD_VGG16_WEIGHTS": str(path)}) as s:  # /readyz 200 means its warm-up ran
        info = httpx.get(s.url + "/v1/losses/vgg_perceptual").json()
        assert info["available"] is True and info["unavailable_reason"] is None
        body = {
            "inputs": {"input": encode_tensor(x), "target": encode_tensor(y)},
            "params": {"reduction": "none"},
            "grad": True,
        }
        r = httpx.post(
            s.url + "/v1/losses/perceptual",
            content=dumps(body),
            headers={"content-type": "application/json"},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        out = r.json()
    ref = _ref_loss(x, y, sd, ["relu1_2", "relu2_2", "relu3_3", "relu4_3"], None, "l2", True, "none")
    got = torch.tensor(out["value"]["data"], dtype=torch.float64)
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    assert out["grads"]["input"]["shape"] == [2, 3, 16, 16]
    assert "target" not in out["grads"]


def test_bad_weights_file_fails_start_with_clear_error(tmp_path: Path) -> None:
    sd = _random_weights(3)
    sd.pop("0.weight")
    path = tmp_path / "broken.safetensors"
    save_file(sd, str(path))
    with pytest.raises(RuntimeError, match="exited"):
        with run_server({"LOSSD_VGG16_WEIGHTS": str(path)}, ready_timeout=60):
            pass
