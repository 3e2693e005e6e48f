"""What the training driver on the Ray head tells the operator: the wire format of its progress endpoint."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bigmodel.api.job import CheckpointRef


class TrainingReport(BaseModel):
    """A run as its driver sees it, across worker-group restarts."""

    # NaN and infinities travel as the strings "NaN" and "Infinity" (JSON has no such numbers; pydantic's default,
    # null, would say "no value" where the truth is "the loss diverged"). Older drivers sent null: read it the same.
    model_config = ConfigDict(extra="ignore", ser_json_inf_nan="strings")

    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    epochs: int = 0
    metrics: dict[str, float | None] = Field(default_factory=dict)
    worker_restarts: int = Field(0, description="Restarts of the worker group inside this run.")
    resumed_from_step: int = Field(0, description="The checkpoint step the current attempt started from.")
    steps_redone: int = Field(0, description="Steps trained again after failures: work lost since the checkpoints.")
    world_size: int = Field(0, description="Workers of the current attempt; an elastic run may have fewer than asked.")
    checkpoint: CheckpointRef | None = None
    model_uri: str | None = None
    done: bool = False
    skipped_checkpoints: dict[str, str] = Field(
        default_factory=dict, description="Checkpoints that would not load when the run resumed: URI -> why."
    )
