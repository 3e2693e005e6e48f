"""Baseline (b) of `python -m bench.serve_generation`: request-level batching, the pre-engine serving path kept as
the baseline.

Before the generation engine (bigmodel.runtime.generation), a replica generated text with generate_batch() below,
removed from the product and kept here unchanged: no KV cache, so every new token re-runs the model over the whole
window; a batch of requests, grouped by prompt length, runs until its longest member ends. The replica wrapped it in
Serve's @serve.batch (maxBatchSize, waitTimeoutMs) and ran it with asyncio.to_thread, as RequestLevelServer does.

Ray imports this module by its import path (REQUEST_LEVEL_IMPORT_PATH) and calls build() with the application's
`args` (RequestLevelArgs: model_uri, max_batch_size, batch_wait_timeout_s). Replicas find the `bench` package because Ray puts the
driver's working directory (the repository root, where the bench runs) on its workers' path.

    POST /v1/completions  {"prompt": str, "max_tokens": int}  ->  {"text": str, "completion_tokens": int}
"""

# No `from __future__ import annotations`: FastAPI reads the route parameters' types (Request) from the methods that
# serve.ingress rebinds, where string annotations would no longer resolve.
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from bigmodel.api.wire import SERVE_DEPLOYMENT_NAME
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.tasks.gpt_model import GPT

REQUEST_LEVEL_IMPORT_PATH = "bench.serving.request_level:build"
BAD_REQUEST = 400
# The old predictor's bound on the new tokens of one request.
MAX_NEW_TOKENS = 256


class RequestLevelArgs(BaseModel):
    """The `args` of the application in its Serve config; Serve validates them before build() runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(..., min_length=1)
    max_batch_size: int = Field(..., ge=1)
    batch_wait_timeout_s: float = Field(..., ge=0)


@dataclass(frozen=True)
class GenerationRequest:
    prompt: bytes
    max_new_tokens: int


@torch.no_grad()
def generate_batch(model: GPT, requests: Sequence[GenerationRequest], device: torch.device) -> list[bytes]:
    """The pre-engine serving path, kept as the baseline: greedy continuations, each equal to tasks.generate() of its
    prompt alone.

    The model has no attention mask and absolute positions, so padding would change what a short prompt sees; instead
    prompts whose windows (the last context_length bytes) have equal length share every forward pass, since they stay
    equal in length step after step. Within a group, rows wanting the most tokens come first, so the rows still
    generating are always a prefix and finished ones leave the pass.
    """
    context = model.context_length
    groups: dict[int, list[int]] = {}
    for index, request in enumerate(requests):
        groups.setdefault(min(len(request.prompt), context), []).append(index)
    continuations: list[bytes] = [b""] * len(requests)
    for indices in groups.values():
        indices.sort(key=lambda index: -requests[index].max_new_tokens)
        wanted = [requests[index].max_new_tokens for index in indices]
        # Only the last context_length bytes are ever attended to, so older ones need not travel to the device.
        tokens = torch.tensor([list(requests[index].prompt[-context:]) for index in indices], device=device)
        generated = torch.zeros((len(indices), wanted[0]), dtype=torch.int64, device=device)
        for step in range(wanted[0]):
            active = sum(1 for count in wanted if count > step)
            next_tokens = model(tokens[:active])[:, -1].float().argmax(dim=-1)
            generated[:active, step] = next_tokens
            tokens = torch.cat([tokens[:active], next_tokens.unsqueeze(1)], dim=1)[:, -context:]
        for row, index in enumerate(indices):
            continuations[index] = bytes(generated[row, : wanted[row]].tolist())
    return continuations


def parse_request(document: Any) -> GenerationRequest:
    """{"prompt", "max_tokens"} checked; raises ValueError saying what is wrong."""
    if not isinstance(document, dict):
        raise ValueError("the body must be a JSON object with prompt and max_tokens")
    prompt, max_tokens = document.get("prompt"), document.get("max_tokens")
    if not isinstance(prompt, str) or not prompt:
        raise ValueError("prompt must be a non-empty string")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_NEW_TOKENS:
        raise ValueError(f"max_tokens must be a whole number from 1 to {MAX_NEW_TOKENS}")
    return GenerationRequest(prompt.encode("utf-8"), max_tokens)


api = FastAPI(title="bench request-level generation", docs_url=None, redoc_url=None, openapi_url=None)


@serve.deployment(name=SERVE_DEPLOYMENT_NAME)
@serve.ingress(api)
class RequestLevelServer:
    """One replica: the exported GPT on the replica's device, generating whole batches of requests at a time."""

    def __init__(self, args: RequestLevelArgs) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, _ = load_model(args.model_uri)
        if not isinstance(model, GPT):
            raise TypeError(f"request-level generation serves the built-in GPT, not a {type(model).__name__}")
        self.model = model.to(self.device).eval()
        self.generate.set_max_batch_size(args.max_batch_size)
        self.generate.set_batch_wait_timeout_s(args.batch_wait_timeout_s)

    @serve.batch
    async def generate(self, requests: list[GenerationRequest]) -> list[bytes]:
        # In a thread: a long generation must not stall the event loop that answers health checks and queues requests.
        return await asyncio.to_thread(generate_batch, self.model, requests, self.device)

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, Any]:
        return {"ready": True}

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> JSONResponse:
        try:
            parsed = parse_request(json.loads(await request.body()))
        except ValueError as error:
            return JSONResponse({"error": str(error)}, status_code=BAD_REQUEST)
        continuation = await self.generate(parsed)
        return JSONResponse(
            {"text": continuation.decode("utf-8", errors="replace"), "completion_tokens": len(continuation)}
        )


def build(args: RequestLevelArgs) -> Application:
    """The application Ray builds from the Serve config's `args` (RequestLevelArgs, validated by Serve)."""
    return RequestLevelServer.bind(args)
