"""The Ray job that runs a BigModelJob's training on its cluster, as the Ray Job Submission API takes it."""

from __future__ import annotations

import json
from typing import Any

from bigmodel.api import wire
from bigmodel.api.job import BigModelJob
from bigmodel.builders.naming import submission_id


def job_manifest_json(job: BigModelJob) -> str:
    """The job as the driver needs it: name, namespace, uid and spec (no status, no server-side metadata)."""
    meta = job.metadata
    return json.dumps(
        {
            "apiVersion": job.api_version,
            "kind": job.kind,
            "metadata": {"name": meta.name, "namespace": meta.namespace, "uid": meta.uid},
            "spec": job.spec.to_wire(),
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
