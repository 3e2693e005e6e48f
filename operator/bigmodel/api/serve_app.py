"""What the operator (or `bigmodel serve`) hands the Serve application: its arguments in Ray's Serve config."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class ServeAppArgs(BaseModel):
    """The `args` of the Serve application; snake_case, since only our own code reads them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_uri: str = Field(..., min_length=1, description="The exported model directory (runtime.artifacts).")
    model_name: str = Field(..., min_length=1, description="The name in request URLs.")
    model_version: str = Field(..., min_length=1, description="Changes with every update of the served model.")
    max_batch_size: int = Field(32, ge=1)
    batch_wait_timeout_s: float = Field(0.01, ge=0)
    # Generative models' KV cache bound per replica (spec.batching.maxCachedTokens, whose default lives there).
    max_cached_tokens: int = Field(..., ge=1)
    # Whether the replicas require an API key; the keys themselves come from the pod environment (wire.API_KEYS_ENV),
    # since this config is readable through Ray's Serve REST API.
    auth_required: bool
    # The defaults of these live in the BigModelService spec (api/service.py ServiceLimits).
    max_body_bytes: int = Field(..., ge=1)
    timeout_s: float = Field(..., gt=0)
