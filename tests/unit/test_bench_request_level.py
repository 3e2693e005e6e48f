"""Baseline (b) of bench.serve_generation: request-level generation computes what the engine computes, and its Serve
config is the operator's with only the application swapped, one that Serve accepts and builds (no Ray started)."""

from __future__ import annotations

import importlib

import pytest
import ray
import torch
from ray.serve import Application
from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
from ray.serve.schema import ServeDeploySchema

from bench.serving.generation_runs import request_level_config
from bench.serving.request_level import (
    REQUEST_LEVEL_IMPORT_PATH,
    GenerationRequest,
    generate_batch,
    parse_request,
)
from bigmodel.api.service import BigModelServiceSpec
from bigmodel.builders.serve_app import app_args, serve_deploy_config
from bigmodel.runtime.generation.engine import Engine
from bigmodel.runtime.generation.engine import GenerationRequest as EngineRequest
from bigmodel.runtime.generation.loop import EngineLoop
from bigmodel.runtime.generation.models import BuiltinGpt
from bigmodel.runtime.tasks.gpt_model import GPT

CPU = torch.device("cpu")


def _model(context: int = 32) -> GPT:
    torch.manual_seed(0)
    return GPT(vocab_size=256, layers=2, heads=2, embed_dim=32, context_length=context, dropout=0.0).eval()


def test_request_level_generation_matches_the_engine_for_a_mixed_batch() -> None:
    model = _model()
    # Equal and unequal prompt lengths, different max_tokens, and one that outgrows the context and slides.
    requests = [
        GenerationRequest(b"hello", 7),
        GenerationRequest(b"world", 3),
        GenerationRequest(b"a longer prompt", 5),
        GenerationRequest(b"x" * 30, 10),
    ]
    baseline = generate_batch(model, requests, CPU)
    assert [len(continuation) for continuation in baseline] == [7, 3, 5, 10]
    loop = EngineLoop(Engine(BuiltinGpt(model, CPU), max_sequences=8, max_cached_tokens=1024))
    engine = loop.run([EngineRequest(tuple(request.prompt), request.max_new_tokens) for request in requests], 60)
    assert [bytes(tokens) for tokens in engine] == baseline


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "JSON object"),
        ({"prompt": "", "max_tokens": 4}, "prompt"),
        ({"prompt": 3, "max_tokens": 4}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "max_tokens": True}, "max_tokens"),
        ({"prompt": "a"}, "max_tokens"),
    ],
)
def test_a_bad_request_says_what_is_wrong(body: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_request(body)


def test_a_request_is_its_prompts_bytes() -> None:
    assert parse_request({"prompt": "hé", "max_tokens": 4}) == GenerationRequest("hé".encode(), 4)


def test_the_baseline_is_deployed_with_the_operators_options_and_serve_builds_it() -> None:
    spec = BigModelServiceSpec.model_validate(
        {
            "model": {"uri": "/models/bench", "name": "bench"},
            "replicas": {"min": 1, "max": 1},
            "replicaResources": {"cpu": 1},
            "batching": {"maxBatchSize": 64, "waitTimeoutMs": 10},
            "limits": {"timeoutSeconds": 180},
        }
    )
    args = app_args("bench-request-level", spec, "/models/bench", "v1")
    product = serve_deploy_config("bench-request-level", spec, args)
    config = request_level_config(product, args)

    (application,) = config["applications"]
    (original,) = product["applications"]
    assert application["import_path"] == REQUEST_LEVEL_IMPORT_PATH != original["import_path"]
    assert application["args"] == {"model_uri": "/models/bench", "max_batch_size": 64, "batch_wait_timeout_s": 0.01}
    assert application["deployments"] == original["deployments"]
    assert config["http_options"] == product["http_options"]

    schema = ServeDeploySchema.model_validate(config)
    ray_before = ray.is_initialized()
    module, name = schema.applications[0].import_path.split(":")
    builder = getattr(importlib.import_module(module), name)
    built = call_user_app_builder_with_args_if_necessary(builder, schema.applications[0].args)
    assert isinstance(built, Application)
    assert ray.is_initialized() == ray_before, "building the application started Ray"
