"""A BigModelJob and a BigModelService as the operator reads them from the API server, for tests that need any one of
each."""

from __future__ import annotations

from typing import Any

from bigmodel.api.job import BigModelJob
from bigmodel.api.service import BigModelService

UID = "0123456789abcdef"


def job_model(name: str = "train", namespace: str = "team", **spec: Any) -> BigModelJob:
    """A digits job; `spec` (wire names) overrides or adds fields."""
    metadata = {"name": name, "namespace": namespace, "uid": UID}
    body = {"metadata": metadata, "spec": {"workload": {"builtin": {"task": "digits"}}, **spec}}
    return BigModelJob.model_validate(body, by_alias=True)


def service_model(name: str = "serve", namespace: str = "team") -> BigModelService:
    """A service of the model a job named `train` exports."""
    body = {"metadata": {"name": name, "namespace": namespace, "uid": UID}, "spec": {"model": {"jobName": "train"}}}
    return BigModelService.model_validate(body, by_alias=True)
