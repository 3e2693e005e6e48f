"""The learning rate at each optimizer step: linear warm-up, then constant or cosine decay."""

from __future__ import annotations

import math

from bigmodel.api.job import TrainingSpec


def learning_rate_at(step: int, *, peak: float, total_steps: int, training: TrainingSpec) -> float:
    """The rate for the optimizer step after `step` steps; a pure function of the step, so a resumed run goes on with
    the rate it left off at without keeping a scheduler's state."""
    warmup = training.warmup_steps
    if step < warmup:
        return peak * (step + 1) / warmup
    if training.learning_rate_decay == "constant":
        return peak
    floor = peak * training.min_learning_rate_ratio
    done = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * done))
