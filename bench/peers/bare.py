"""The HTTP ceiling: a FastAPI endpoint on uvicorn that returns a constant without reading the body.

Run: ``python -m bench.peers.bare PORT``.
"""

from __future__ import annotations

import sys

import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
CONSTANT = b'{"loss":"cross_entropy","value":2.3}'


@app.post("/cross_entropy")
async def constant() -> Response:
    return Response(CONSTANT, media_type="application/json")


@app.get("/health")
async def health() -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
