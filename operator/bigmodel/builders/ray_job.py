"""The Ray job that runs a BigModelJob's training on its cluster, as the Ray Job Submission API takes it."""

from __future__ import annotations

import json
from typing import Any

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob
from bigmodel.builders.naming import submission_id

# Anyone who can read Ray's job API (GET /api/jobs/) reads a submission whole, runtime env included. The pods carry
# these already, and every Ray process inherits its pod's environment, so the driver is better off without them.
_POD_ONLY_FIELDS = {"env", "env_from"}


def job_manifest_json(job: BigModelJob) -> str:
    """The job as the driver needs it: name, namespace, uid and spec (no status, no server-side metadata, no env)."""
    meta = job.metadata
    spec = job.spec.model_dump(by_alias=True, exclude_none=True, mode="json", exclude=_POD_ONLY_FIELDS)
    return json.dumps(
        {
            "apiVersion": job.api_version,
            "kind": job.kind,
            "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
            "spec": spec,
        },
        sort_keys=True,
    )


def ray_job_submission(job: BigModelJob, generation: int) -> dict[str, Any]:
    """POST /api/jobs/ body. The driver runs on the head, which advertises no CPUs, so it asks for none."""
    runtime_env = dict(job.spec.runtime_env or {})
    runtime_env["env_vars"] = dict(runtime_env.get("env_vars") or {}) | {wire.MANIFEST_ENV: job_manifest_json(job)}
    job_key, namespace_key, generation_key = wire.RAY_JOB_METADATA_KEYS
    return {
        "submission_id": submission_id(job.metadata.uid or "", generation),
        "entrypoint": wire.JOB_ENTRYPOINT,
        "entrypoint_num_cpus": 0,
        "runtime_env": runtime_env,
        "metadata": {
            job_key: job.metadata.name,
            namespace_key: job.metadata.namespace or "",
            generation_key: str(generation),
        },
    }
