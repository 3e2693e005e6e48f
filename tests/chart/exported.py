"""The Prometheus series the operator really exports, read from a real registry: the dashboard and the alerts may
use these and no others.

The registry first sees a new job (Starting, with a startup deadline), a service and a failed pass, so that every
per-resource family has a sample whose labels can be read.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

from prometheus_client import Metric

from bigmodel.api.service import BigModelServiceStatus
from bigmodel.controller.metrics import OperatorMetrics
from bigmodel.reconcile.job import decide_job
from bigmodel.reconcile.job_observed import JobObservation
from bigmodel.reconcile.plans import Plan
from tests.support.resources import job_model, service_model


def _families() -> list[Metric]:
    metrics, job, now = OperatorMetrics(), job_model(), datetime.now(timezone.utc)
    metrics.observe_job(job, decide_job(job, JobObservation(now=now)), now, None)
    metrics.observe_service(service_model(), Plan(status=BigModelServiceStatus()))
    metrics.reconcile_failed("BigModelJob", "team", "train")
    return list(metrics.registry.collect())


def _label_names(families: list[Metric]) -> dict[str, frozenset[str]]:
    """Series name (as scraped: <counter>_total, <histogram>_bucket, ...) -> the label names its samples carry."""
    labels: defaultdict[str, set[str]] = defaultdict(set)
    for family in families:
        for sample in family.samples:
            labels[sample.name].update(sample.labels)
    return {name: frozenset(names) for name, names in labels.items()}


FAMILIES = _families()
# Counters are scraped as <name>_total; histograms also as <name>_bucket, <name>_sum and <name>_count.
METRIC_NAMES = tuple(sorted(f"{f.name}_total" if f.type == "counter" else f.name for f in FAMILIES))
HISTOGRAMS = tuple(sorted(f.name for f in FAMILIES if f.type == "histogram"))
SERIES_LABELS = _label_names(FAMILIES)
