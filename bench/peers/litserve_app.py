"""The LitServe peer: the same cross-entropy value and gradient behind ``litserve``.

JSON ``{"input": [[...]], "target": [...]}`` in, ``{"value", "grad"}`` out, as a LitServe user
would write it. Run: ``python -m bench.peers.litserve_app PORT``.
"""

import os
import sys
from typing import Any

import litserve as ls
import torch
import torch.nn.functional as F
from fastapi import Request


class CrossEntropyAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.device = torch.device(device)

    # Annotated as Request (a real class, no postponed annotations): LitServe then hands over the parsed JSON body.
    def decode_request(self, request: Request) -> tuple[torch.Tensor, torch.Tensor]:
        body: dict[str, Any] = request  # type: ignore[assignment]
        return torch.tensor(body["input"], device=self.device), torch.tensor(body["target"], device=self.device)

    def predict(self, x: tuple[torch.Tensor, torch.Tensor]) -> dict[str, Any]:
        logits = x[0].requires_grad_(True)
        loss = F.cross_entropy(logits, x[1])
        loss.backward()
        assert logits.grad is not None
        return {"value": loss.item(), "grad": logits.grad.tolist()}

    def encode_response(self, output: dict[str, Any]) -> dict[str, Any]:
        return output


if __name__ == "__main__":
    accelerator = "cuda" if os.environ.get("BENCH_DEVICE", "cpu").startswith("cuda") else "cpu"
    server = ls.LitServer(CrossEntropyAPI(api_path="/cross_entropy"), accelerator=accelerator, devices=1, timeout=600)
    server.run(host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", generate_client_file=False)
