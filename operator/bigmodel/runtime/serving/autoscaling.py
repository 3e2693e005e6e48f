"""Serve's autoscaling policy of a BigModelService: replicas for the requests in flight and, for a generative model,
for the tokens its replicas have yet to generate.

One generation request may ask for 10 tokens or 2,000, so requests in flight say little about how busy a generative
model's replicas are: four long generations keep a replica busy for minutes while looking like four requests. Each
replica of a generative model reports the tokens its engine has yet to generate (wire.PENDING_TOKENS_METRIC, from
ModelServer.record_autoscaling_stats); this policy asks for as many replicas as those tokens need at
spec.replicas.targetPendingTokens each, or as many as Serve's own policy asks for the requests, whichever is more. A
model that does not generate reports no tokens, and its replicas scale exactly as under Serve's default policy.

What Serve 2.60 does around any policy, custom or its own (ray/serve/autoscaling_policy.py _apply_autoscaling_config
and autoscaling_state.py apply_bounds), so that this one keeps no state and returns the raw count: the metrics reach
it averaged over the deployment's look_back_period_s (each replica's series on its own); a replica with no report
yet is missing from them; the decision is then damped by upscaling_factor/downscaling_factor, held back until it has
stood for upscale_delay_s or downscale_delay_s (spec.replicas.upscaleDelaySeconds, downscaleDelaySeconds), skipped
straight to a first replica when there are none and requests wait, and clipped to min_replicas..max_replicas.

Serve's controller imports this module by wire.AUTOSCALING_POLICY_IMPORT_PATH and pickles it by value, so it imports
nothing but Ray and the wire contract: no torch, no engine.
"""

from __future__ import annotations

import math
from typing import Any

from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext

from bigmodel.api.wire import PENDING_TOKENS_METRIC


def pending_tokens(ctx: AutoscalingContext) -> float:
    """Tokens the deployment's running replicas have yet to generate, each replica's averaged over the look-back."""
    return sum((ctx.aggregated_metrics or {}).get(PENDING_TOKENS_METRIC, {}).values())


class TokenAutoscalingPolicy:
    """Serve instantiates it once per deployment config with the config's policy_kwargs, then calls it every
    control-loop tick."""

    def __init__(self, target_pending_tokens: float) -> None:
        if target_pending_tokens <= 0:
            raise ValueError(f"target_pending_tokens must be above 0, not {target_pending_tokens}")
        self.target_pending_tokens = target_pending_tokens

    def __call__(self, ctx: AutoscalingContext) -> tuple[float, dict[str, Any]]:
        by_requests, state = replica_queue_length_autoscaling_policy(ctx)
        by_tokens = math.ceil(pending_tokens(ctx) / self.target_pending_tokens)
        return max(by_requests, by_tokens), state
