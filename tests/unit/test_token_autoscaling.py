"""Replicas of a generative model follow the tokens they have yet to generate, not only the requests in flight.

The replica reports its engine's load as Serve's custom metrics (app.autoscaling_stats); the policy
(runtime/serving/autoscaling.py) asks for the larger of what Serve's own policy asks for the requests and what the
tokens ask for; the operator's Serve config names the policy, which Serve's own config model resolves and builds the
way its controller does. Contexts are built as Serve's controller builds them; no Ray is started.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ray.serve._private.common import DeploymentID, ReplicaID
from ray.serve.autoscaling_policy import _apply_autoscaling_config, replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingConfig, AutoscalingContext
from ray.serve.schema import ServeDeploySchema

from bigmodel.api import wire
from bigmodel.api.manifests import load_manifest
from bigmodel.api.service import BigModelService
from bigmodel.builders.serve_app import app_args, serve_deploy_config
from bigmodel.runtime.artifacts import load_model
from bigmodel.runtime.generation.engine import GenerationRequest, Output
from bigmodel.runtime.serving.app import autoscaling_stats
from bigmodel.runtime.serving.autoscaling import TokenAutoscalingPolicy
from bigmodel.runtime.serving.predictor import DigitsPredictor, TextPredictor, build_predictor
from tests.support.models import export_decisive, tiny_gpt_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
DEPLOYMENT = DeploymentID(name=wire.SERVE_DEPLOYMENT_NAME, app_name="coder")
WAIT_S = 30.0


def replica(index: int) -> ReplicaID:
    return ReplicaID(unique_id=f"r{index}", deployment_id=DEPLOYMENT)


def context(
    *,
    replicas: int = 1,
    requests: float = 0.0,
    pending_tokens: list[float] | None = None,
    target_ongoing_requests: float = 2.0,
    upscale_delay_s: float = 0.0,
    max_replicas: int = 8,
) -> AutoscalingContext:
    """What Serve's controller hands a policy: the running replicas, the requests in flight, and each replica's
    custom metrics averaged over the look-back (pending_tokens: one value per replica that has reported)."""
    config = AutoscalingConfig(
        min_replicas=1,
        max_replicas=max_replicas,
        target_ongoing_requests=target_ongoing_requests,
        upscale_delay_s=upscale_delay_s,
    )
    running = [replica(index) for index in range(replicas)]
    metrics: dict[str, dict[ReplicaID, float]] = {}
    if pending_tokens is not None:
        metrics[wire.PENDING_TOKENS_METRIC] = dict(zip(running, pending_tokens, strict=False))
    return AutoscalingContext(
        deployment_id=DEPLOYMENT,
        deployment_name=DEPLOYMENT.name,
        app_name=DEPLOYMENT.app_name,
        current_num_replicas=replicas,
        target_num_replicas=replicas,
        running_replicas=running,
        total_num_requests=requests,
        total_queued_requests=0.0,
        aggregated_metrics=metrics,
        raw_metrics={},
        capacity_adjusted_min_replicas=1,
        capacity_adjusted_max_replicas=max_replicas,
        policy_state={},
        last_scale_up_time=None,
        last_scale_down_time=None,
        current_time=time.time(),
        config=config,
    )


@pytest.mark.parametrize(("replicas", "requests"), [(1, 0.0), (1, 1.0), (1, 7.0), (2, 3.0), (3, 40.0), (4, 1.0)])
def test_without_tokens_the_policy_decides_exactly_as_serves_own(replicas: int, requests: float) -> None:
    # A model that does not generate reports no tokens; a generative one at rest reports none pending.
    for tokens in (None, [0.0] * replicas):
        ctx = context(replicas=replicas, requests=requests, pending_tokens=tokens)
        assert TokenAutoscalingPolicy(4096)(ctx) == replica_queue_length_autoscaling_policy(ctx)


def test_a_few_long_generations_ask_for_replicas_that_counting_requests_does_not() -> None:
    # Four requests of 1500 tokens on one replica: half the requests a replica aims for, three times its tokens.
    ctx = context(requests=4, pending_tokens=[6000.0], target_ongoing_requests=8)
    assert replica_queue_length_autoscaling_policy(ctx)[0] == 0.5
    assert TokenAutoscalingPolicy(2000)(ctx)[0] == 3


def test_the_tokens_of_every_replica_count_and_requests_still_win_when_they_ask_for_more() -> None:
    # 5500 tokens over two replicas at 2000 each: 3 replicas; 16 short requests at 2 each ask for 8.
    assert TokenAutoscalingPolicy(2000)(context(replicas=2, requests=3, pending_tokens=[3000.0, 2500.0]))[0] == 3
    assert TokenAutoscalingPolicy(2000)(context(replicas=2, requests=16, pending_tokens=[100.0, 50.0]))[0] == 8


def test_serve_holds_the_token_decision_for_the_upscale_delay_as_it_holds_its_own() -> None:
    """Serve wraps every policy, its own and custom ones, in the same delays and scaling factors (and clips the result
    to min/max afterwards): the policy keeps no state of its own for them."""
    policy = _apply_autoscaling_config(TokenAutoscalingPolicy(1000))
    at_once = context(requests=4, pending_tokens=[6000.0], target_ongoing_requests=8)
    assert policy(at_once)[0] == 6
    delayed = context(requests=4, pending_tokens=[6000.0], target_ongoing_requests=8, upscale_delay_s=3600)
    assert policy(delayed)[0] == 1, "a decision younger than upscaleDelaySeconds scaled at once"


def test_serves_config_model_builds_the_operators_policy_from_the_spec() -> None:
    service = load_manifest(ROOT / "examples" / "service-uri.yaml")
    assert isinstance(service, BigModelService)
    service.spec.replicas.target_pending_tokens = 1500
    name, spec = service.metadata.name, service.spec
    config = serve_deploy_config(name, spec, app_args(name, spec, "/models/m", "v1"))
    (deployment,) = ServeDeploySchema.model_validate(config).applications[0].deployments
    # As Serve's controller does: the policy is imported by its path, pickled by value, and built with its kwargs.
    autoscaling = AutoscalingConfig(**deployment.autoscaling_config)
    assert autoscaling.policy.policy_function == wire.AUTOSCALING_POLICY_IMPORT_PATH
    assert (autoscaling.min_replicas, autoscaling.max_replicas) == (spec.replicas.min, spec.replicas.max)
    policy = autoscaling.policy.get_policy()(**autoscaling.policy.policy_kwargs)
    assert policy(context(requests=1, pending_tokens=[4000.0]))[0] == 3


def exported(tmp_path: Path, config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    return load_model(export_decisive(tmp_path, config))


def test_a_replica_of_a_model_that_does_not_generate_reports_nothing(tmp_path: Path) -> None:
    predictor = build_predictor(*exported(tmp_path, {"task": "digits", "hidden_size": 8}), CPU)
    assert isinstance(predictor, DigitsPredictor)
    assert autoscaling_stats(predictor) == {}


def test_a_generative_replica_reports_the_tokens_its_engine_has_yet_to_generate(tmp_path: Path) -> None:
    predictor = build_predictor(*exported(tmp_path, tiny_gpt_config(context_length=64)), CPU)
    assert isinstance(predictor, TextPredictor)
    at_rest = {wire.PENDING_TOKENS_METRIC: 0, wire.RUNNING_SEQUENCES_METRIC: 0, wire.WAITING_SEQUENCES_METRIC: 0}
    assert autoscaling_stats(predictor) == at_rest
    # The sink holds the engine's thread on the request's first token: the step that admits it stands still, with the
    # request counted as it was when the step began.
    reached, release = threading.Event(), threading.Event()

    def hold(output: Output) -> None:
        reached.set()
        release.wait(WAIT_S)

    predictor.generator.loop.engine.submit(GenerationRequest(tuple(b"hello"), 40), hold)
    try:
        assert reached.wait(WAIT_S), f"the engine did not start the request within {WAIT_S:.0f} s"
        assert autoscaling_stats(predictor) == {
            **at_rest,
            wire.PENDING_TOKENS_METRIC: 40,
            wire.WAITING_SEQUENCES_METRIC: 1,
        }
    finally:
        release.set()
    deadline = time.monotonic() + WAIT_S
    while autoscaling_stats(predictor) != at_rest and time.monotonic() < deadline:
        time.sleep(0.01)
    assert autoscaling_stats(predictor) == at_rest, f"the replica still reported work {WAIT_S:.0f} s after it ended"
