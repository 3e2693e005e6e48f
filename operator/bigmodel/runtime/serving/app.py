"""The Ray Serve application of a BigModelService: one deployment, KServe's v1 and v2 HTTP APIs, dynamic batching.

Ray imports this module by wire.SERVE_APP_IMPORT_PATH and calls build() with the `args` of the Serve config. Replicas, autoscaling
and resources are not set here: they come from that config (builders/serve_app.py), so the operator alone decides them.
"""

# No `from __future__ import annotations`: FastAPI reads the route parameters' types (Request) from the methods that
# serve.ingress rebinds, where string annotations would no longer resolve.
import asyncio
import os
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from ray.serve import Application
from starlette.exceptions import HTTPException

from bigmodel.api.serve_app import ServeAppArgs
from bigmodel.api.wire import (
    OPENAI_PATHS,
    PENDING_TOKENS_METRIC,
    RUNNING_SEQUENCES_METRIC,
    SERVE_DEPLOYMENT_NAME,
    WAITING_SEQUENCES_METRIC,
)
from bigmodel.runtime.serving.asgi_guard import ReplicaGuard
from bigmodel.runtime.serving.binary_tensors import (
    EXTENSION,
    HEADER_LENGTH,
    OCTET_STREAM,
    check_content_encoding,
    decode_request,
    encode_response,
)
from bigmodel.runtime.serving.guard import GATEWAY_TIMEOUT, Policy, api_keys_from_env, no_answer_within
from bigmodel.runtime.serving.openai_api import Answer, OpenAIEndpoints
from bigmodel.runtime.serving.openai_protocol import (
    SSE_MEDIA_TYPE,
    OpenAIError,
    error_document,
    error_document_for,
    model_card,
    model_list,
)
from bigmodel.runtime.serving.predictor import Predictor, TextPredictor, load_predictor
from bigmodel.runtime.serving.protocol import (
    NOT_FOUND,
    ProtocolError,
    check_model_name,
    model_metadata,
    parse_json,
    parse_v1_request,
    parse_v2_request,
    select_outputs,
    v1_location,
    v1_response,
    v2_location,
    v2_response,
)
from bigmodel.version import VERSION

api = FastAPI(title="bigmodel model server", docs_url=None, redoc_url=None, openapi_url=None)


def _replica_policy() -> Policy:
    return serve.get_replica_context().servable_object.policy


# Around the whole app: API keys and body size are checked for every path, including any added later.
api.add_middleware(ReplicaGuard, policy=_replica_policy)


def _error(request: Request, status: int, message: str) -> JSONResponse:
    """An error in the shape the path's protocol has: OpenAI's on its endpoints, KServe's elsewhere."""
    if request.url.path in OPENAI_PATHS:
        return JSONResponse(error_document_for(status, message), status_code=status)
    return JSONResponse({"error": message}, status_code=status)


@api.exception_handler(ProtocolError)
async def _protocol_error(request: Request, error: ProtocolError) -> JSONResponse:
    return _error(request, error.status, error.message)


@api.exception_handler(OpenAIError)
async def _openai_error(request: Request, error: OpenAIError) -> JSONResponse:
    return JSONResponse(error_document(error), status_code=error.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
    # FastAPI's own checks (path parameters) answer in the same one-line form as ours, not its nested detail list.
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    return _error(request, 422, f"{where}: {first['msg']}")


@api.exception_handler(HTTPException)
async def _http_error(request: Request, error: HTTPException) -> JSONResponse:
    return _error(request, error.status_code, f"{request.method} {request.url.path}: {error.detail}")


def autoscaling_stats(predictor: Predictor[Any, Any]) -> dict[str, float]:
    """The replica's load as Serve's custom autoscaling metrics, which autoscaling.py's policy reads: a generative
    model's engine load; none for a model that does not generate, which the request count alone measures."""
    if not isinstance(predictor, TextPredictor):
        return {}
    load = predictor.generator.load()
    return {
        PENDING_TOKENS_METRIC: load.pending_tokens,
        RUNNING_SEQUENCES_METRIC: load.running,
        WAITING_SEQUENCES_METRIC: load.waiting,
    }


def _response(answer: Answer) -> Response:
    if answer.events is not None:
        # No buffering by proxies in between (nginx honours the header), so each event reaches the client as made.
        return StreamingResponse(answer.events, media_type=SSE_MEDIA_TYPE, headers={"X-Accel-Buffering": "no"})
    return JSONResponse(answer.document)


@serve.deployment(name=SERVE_DEPLOYMENT_NAME)
@serve.ingress(api)
class ModelServer:
    """One replica. The model loads in the constructor, and Serve routes no request to a replica still constructing,
    so every request that arrives finds the model ready."""

    def __init__(self, args: ServeAppArgs) -> None:
        self.args = args
        # OpenAI's `created` of the model: when this replica loaded it.
        self._created = int(time.time())
        # Before the model loads: a replica that requires keys and has none fails at once, saying so in one line.
        self.policy = Policy(
            max_body_bytes=args.max_body_bytes,
            api_keys=api_keys_from_env(os.environ, args.auth_required),
            auth_required=args.auth_required,
        )
        self.predictor = load_predictor(
            args.model_uri, max_sequences=args.max_batch_size, max_cached_tokens=args.max_cached_tokens
        )
        self._run_batch.set_max_batch_size(args.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(args.batch_wait_timeout_s)
        self.openai = (
            OpenAIEndpoints(self.predictor.generator, args.model_name, self._created, args.timeout_s)
            if isinstance(self.predictor, TextPredictor)
            else None
        )

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """Serve's hook for custom metrics: called every min(look_back_period_s / 5, metrics_interval_s) seconds (6 s
        by Serve's defaults); the samples go to its controller with the replica's push every metrics_interval_s."""
        return autoscaling_stats(self.predictor)

    @serve.batch
    async def _run_batch(self, requests: list[list[Any]]) -> list[list[Any]]:
        """Concurrent requests' checked instances in one forward pass; each request gets its own results back."""
        instances = [instance for request in requests for instance in request]
        # In a thread: a long generation must not stall the event loop that answers health checks and queues requests.
        results = await asyncio.to_thread(self.predictor.run, instances)
        split, start = [], 0
        for request in requests:
            split.append(results[start : start + len(request)])
            start += len(request)
        return split

    async def _predict(self, instances: list[Any]) -> list[Any]:
        """The model's results for one request's instances, or a 504 once it has taken longer than the limit.

        The proxy times the whole request too, but it reads its timeout only when it starts; this one follows the
        service's current spec. A request still waiting for its batch leaves it; one in a running batch is answered
        504 while the forward pass, which a thread cannot be stopped in, runs to its end."""
        # A generative model's instances join its engine's running batch one by one: no batch to wait for.
        run = (
            self.predictor.run_async(instances)
            if isinstance(self.predictor, TextPredictor)
            else self._run_batch(instances)
        )
        try:
            return await asyncio.wait_for(run, self.args.timeout_s)
        except TimeoutError:
            raise ProtocolError(
                GATEWAY_TIMEOUT,
                no_answer_within(self.args.timeout_s),
            ) from None

    @api.get("/v2/health/live")
    async def live(self) -> dict[str, Any]:
        return {"live": True}

    @api.get("/v2/health/ready")
    async def ready(self) -> dict[str, Any]:
        return {"ready": True}

    @api.get("/v2")
    async def server_metadata(self) -> dict[str, Any]:
        return {"name": "bigmodel", "version": VERSION, "extensions": [EXTENSION]}

    @api.get("/v2/models/{name}")
    async def metadata(self, name: str) -> dict[str, Any]:
        check_model_name(name, self.args.model_name)
        predictor = self.predictor
        return model_metadata(self.args.model_name, self.args.model_version, [predictor.input], predictor.outputs)

    @api.get("/v2/models/{name}/ready")
    async def model_ready(self, name: str) -> dict[str, Any]:
        check_model_name(name, self.args.model_name)
        return {"name": name, "ready": True}

    @api.post("/v2/models/{name}/infer")
    async def infer(self, name: str, request: Request) -> Response:
        check_model_name(name, self.args.model_name)
        check_content_encoding(request.headers.get("content-encoding"))
        predictor = self.predictor
        body = decode_request(await request.body(), request.headers.get(HEADER_LENGTH))
        parsed = parse_v2_request(body.document, predictor.input, predictor.outputs, predictor.max_instances)
        instances = predictor.checked(parsed.instances, parsed.parameters, v2_location)
        results = await self._predict(instances)
        outputs = select_outputs(predictor.output_tensors(results), parsed.requested_outputs)
        # The protocol makes the id optional; one is made up so that responses can still be told apart in logs.
        request_id = parsed.id if parsed.id is not None else str(uuid.uuid4())
        answer = v2_response(self.args.model_name, self.args.model_version, request_id, outputs)
        encoded = encode_response(answer, body.outputs)
        if encoded is None:
            return JSONResponse(answer)
        return Response(encoded.body, media_type=OCTET_STREAM, headers={HEADER_LENGTH: str(encoded.header_length)})

    @api.get("/v1/models/{name}")
    async def v1_model_ready(self, name: str) -> dict[str, Any]:
        """KServe v1's model readiness, which is also OpenAI's retrieve-model path: one answer holds both."""
        check_model_name(name, self.args.model_name)
        return {**model_card(name, self._created), "name": name, "ready": True}

    @api.get("/v1/models")
    async def openai_models(self) -> dict[str, Any]:
        return model_list(self.args.model_name, self._created)

    @api.post("/v1/completions")
    async def openai_completions(self, request: Request) -> Response:
        return _response(await self._openai().completions(await request.body()))

    @api.post("/v1/chat/completions")
    async def openai_chat(self, request: Request) -> Response:
        return _response(await self._openai().chat(await request.body()))

    def _openai(self) -> OpenAIEndpoints:
        if self.openai is None:
            raise OpenAIError(
                NOT_FOUND,
                f"model {self.args.model_name} does not generate text; ask it at /v2/models/{self.args.model_name}/infer",
                "model",
                "model_not_found",
            )
        return self.openai

    @api.post("/v1/models/{name}:predict")
    async def predict(self, name: str, request: Request) -> dict[str, Any]:
        check_model_name(name, self.args.model_name)
        predictor = self.predictor
        raw = parse_v1_request(parse_json(await request.body()), predictor.max_instances)
        results = await self._predict(predictor.checked(raw, {}, v1_location))
        return v1_response([predictor.prediction(result) for result in results])


def build(args: dict[str, Any]) -> Application:
    """The application Ray builds from the Serve config's `args` (ServeAppArgs, validated here)."""
    return ModelServer.bind(ServeAppArgs.model_validate(args))
