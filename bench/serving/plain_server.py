"""Baseline (b): the same Predictor behind FastAPI and uvicorn in one process, one forward per request.

    python -m bench.serving.plain_server --model-uri URI --port PORT [--threads N]

The forward runs in a one-thread executor, as a Serve replica runs its batches, so the event loop keeps reading
requests meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request

from bench import bench_parser
from bench.serving.harness import LOOPBACK
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.serving.predictor import build_predictor


def serve(model_uri: str, port: int, threads: int) -> None:
    torch.set_num_threads(threads)
    model, config = load_model(model_uri)
    predictor = build_predictor(model, config)
    forward = ThreadPoolExecutor(max_workers=1)
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, Any]:
        return {"ready": True}

    @app.post("/v1/models/{name}:predict")
    async def predict(name: str, request: Request) -> dict[str, Any]:
        instances = json.loads(await request.body())["instances"]
        predictions = await asyncio.get_running_loop().run_in_executor(forward, predictor.predict, instances)
        return {"predictions": predictions}

    uvicorn.run(app, host=LOOPBACK, port=port, log_level="warning", access_log=False)


def main() -> None:
    parser = bench_parser("bench.serving.plain_server", __doc__)
    parser.add_argument("--model-uri", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    serve(args.model_uri, args.port, args.threads)


if __name__ == "__main__":
    main()
