"""The BigModelJob operator against a real HTTP Kubernetes API (the emulator), Ray replaced at its seam."""

from __future__ import annotations

import json
import socket
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bigmodel.api.job import CheckpointRef
from bigmodel.api.training_report import TrainingReport
from bigmodel.builders.naming import submission_id
from bigmodel.reconcile.observed import RayHead
from tests.support.emulator import ApiError, Emulator, KubeClient, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.operator import running_operator
from tests.support.status import status_of, wait_events_of, wait_status_of

JOBS = ("bigmodel.dev/v1alpha1", "bigmodeljobs")
WAIT_S = 20.0


def job_manifest(name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelJob",
        "metadata": {"name": name},
        "spec": {
            "workload": {"builtin": {"task": "digits", "epochs": 2}},
            "workers": {"replicas": 2, "resources": {"cpu": "2", "memory": "4Gi", "gpu": 1}},
            "checkpoint": {"storage": "/checkpoints/demo", "volumeClaimName": "shared", "everySteps": 10},
            "failurePolicy": {"maxRestarts": 1},
            **spec,
        },
    }


async def pods(kube: KubeClient, job: str = "demo") -> dict[str, dict[str, Any]]:
    found = await kube.list("v1", "pods", label_selector=f"bigmodel.dev/job={job}")
    return {pod["metadata"]["name"]: pod for pod in found if not pod["metadata"].get("deletionTimestamp")}


async def mark(
    kube: KubeClient,
    name: str,
    phase: str = "Running",
    ready: bool = True,
    exit_code: int = 0,
    pod_ip: str = "127.0.0.1",
) -> None:
    status: dict[str, Any] = {
        "phase": phase,
        "podIP": pod_ip,
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    if phase == "Failed":
        status["containerStatuses"] = [
            {"name": "ray-worker", "state": {"terminated": {"reason": "Error", "exitCode": exit_code}}}
        ]
    await kube.patch_status("v1", "pods", name, status)


async def mark_all_ready(kube: KubeClient, job: str = "demo") -> None:
    for name in await pods(kube, job):
        await mark(kube, name)


async def status(kube: KubeClient, name: str = "demo") -> dict[str, Any]:
    return await status_of(kube, JOBS, name)


async def wait_status(kube: KubeClient, check: Any, message: str, name: str = "demo") -> dict[str, Any]:
    return await wait_status_of(kube, JOBS, name, check, message, WAIT_S)


async def event_reasons(kube: KubeClient, name: str = "demo") -> list[str]:
    return [event["reason"] for event in await kube.events(involved_name=name)]


GENERATION_1 = ["demo-g1-head", "demo-g1-w0", "demo-g1-w1"]
GENERATION_2 = ["demo-g2-head", "demo-g2-w0", "demo-g2-w1"]


async def all_pods(kube: KubeClient, names: list[str]) -> dict[str, dict[str, Any]]:
    """The job's pods once exactly `names` exist (they are created one request at a time)."""
    found = await wait_for(lambda: _keys(pods(kube), names), WAIT_S, f"the pods {names} were not all created")
    return found


async def start_running(kube: KubeClient, ray: FakeRay, uid: str) -> None:
    await all_pods(kube, GENERATION_1)
    await mark_all_ready(kube)
    await wait_for(lambda: submission_id(uid, 1) in ray.submitted_ids(), WAIT_S, "the training was never submitted")
    await wait_status(kube, lambda s: s.get("phase") == "Running", "the job never reached Running")


async def test_job_becomes_a_ray_cluster_that_trains_and_succeeds(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        uid = created["metadata"]["uid"]
        found = await all_pods(kube, GENERATION_1)
        worker = found["demo-g1-w0"]
        container = worker["spec"]["containers"][0]
        assert str(container["resources"]["limits"]["nvidia.com/gpu"]) == "1"
        assert worker["metadata"]["ownerReferences"][0]["uid"] == uid
        assert any(v.get("persistentVolumeClaim", {}).get("claimName") == "shared" for v in worker["spec"]["volumes"])
        assert "/checkpoints/demo" in [mount["mountPath"] for mount in container["volumeMounts"]]
        service = await kube.get("v1", "services", "demo-g1-head")
        assert service is not None and service["spec"]["type"] == "ClusterIP"
        starting = await wait_status(kube, lambda s: s.get("phase") == "Starting", "no Starting phase")
        assert starting["workersReady"] == "0/2"

        await mark_all_ready(kube)
        await wait_for(lambda: ray.submitted_ids() == [submission_id(uid, 1)], WAIT_S, "the run was not submitted")
        checkpoint = CheckpointRef(path="/checkpoints/demo/checkpoints/step-0000000020", step=20, epoch=0)
        ray.reports[submission_id(uid, 1)] = TrainingReport(
            step=25, total_steps=100, epoch=0, epochs=2, metrics={"loss": 0.7}, checkpoint=checkpoint
        )
        running = await wait_status(
            kube, lambda s: s.get("phase") == "Running" and s.get("progress", {}).get("step") == 25, "no progress"
        )
        assert running["workersReady"] == "2/2" and running["progress"]["percent"] == 25
        assert running["lastCheckpoint"]["step"] == 20 and running["metrics"]["loss"] == 0.7
        assert running["dashboardUrl"] == "http://127.0.0.1:8265"

        ray.succeed(
            submission_id(uid, 1),
            TrainingReport(
                step=100, total_steps=100, epoch=1, epochs=2, model_uri="/checkpoints/demo/model", done=True
            ),
        )
        done = await wait_status(kube, lambda s: s.get("phase") == "Succeeded", "the job never Succeeded")
        assert done["modelUri"] == "/checkpoints/demo/model" and done["completionTime"]
        await wait_for(lambda: _no(pods(kube)), WAIT_S, "the pods were not removed after success")
        await wait_events_of(kube, "demo", ("Created", "TrainingSubmitted", "Running", "Succeeded"), WAIT_S)


async def _no(awaitable: Any) -> bool:
    return not await awaitable


async def test_failed_worker_pod_is_recreated_with_an_event(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        await start_running(kube, ray, created["metadata"]["uid"])
        await mark(kube, "demo-g1-w1", phase="Failed", exit_code=137)

        async def replaced() -> bool:
            current = await pods(kube)
            return "demo-g1-w1" not in current and "demo-g1-w2" in current

        await wait_for(replaced, WAIT_S, "the failed worker pod was not replaced by one under a fresh name")
        current = await wait_status(kube, lambda s: s["workers"]["replaced"] == 1, "the replacement was not counted")
        assert current["restarts"] == 0, "a worker replacement is not a cluster restart"
        await wait_for(lambda: _has(event_reasons(kube), "WorkerReplaced"), WAIT_S, "no WorkerReplaced event")
        assert len(ray.submitted_ids()) == 1, "a worker replacement must not resubmit the run"


async def _has(awaitable: Any, item: str) -> bool:
    return item in await awaitable


async def test_failed_run_rebuilds_the_cluster_then_fails_past_the_budget(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)
        checkpoint = CheckpointRef(path="/checkpoints/demo/checkpoints/step-0000000030", step=30, epoch=0)
        ray.reports[submission_id(uid, 1)] = TrainingReport(step=34, total_steps=100, checkpoint=checkpoint)
        await wait_status(kube, lambda s: (s.get("lastCheckpoint") or {}).get("step") == 30, "checkpoint not seen")

        ray.fail(submission_id(uid, 1), "NCCL timeout")
        restarting = await wait_status(kube, lambda s: s.get("restarts") == 1, "the failed run did not restart")
        assert "resuming from checkpoint step 30" in restarting["message"]
        assert "NCCL timeout" in restarting["message"]
        await all_pods(kube, GENERATION_2)
        await mark_all_ready(kube)
        await wait_for(
            lambda: submission_id(uid, 2) in ray.submitted_ids(), WAIT_S, "the rebuilt run was not submitted"
        )

        ray.fail(submission_id(uid, 2), "NCCL timeout again")
        failed = await wait_status(kube, lambda s: s.get("phase") == "Failed", "the job did not fail past its budget")
        assert failed["restarts"] == 1 and "no restarts left (maxRestarts: 1)" in failed["message"]
        await wait_events_of(kube, "demo", ("Restarting", "RestartLimitExceeded"), WAIT_S)


async def _keys(awaitable: Any, names: list[str]) -> dict[str, dict[str, Any]] | None:
    found = await awaitable
    return found if sorted(found) == names else None


async def test_suspend_deletes_pods_and_resume_continues(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)

        await kube.patch(*JOBS, "demo", {"spec": {"suspend": True}})
        await wait_status(kube, lambda s: s.get("phase") == "Suspended", "the job was not Suspended")
        await wait_for(lambda: _no(pods(kube)), WAIT_S, "the pods of a suspended job were not deleted")
        # Its pods' SIGTERM stops the run, after a checkpoint; stopping it through Ray would lose the steps since the
        # last one.
        assert submission_id(uid, 1) not in ray.stops, "the run of a suspended job was stopped without a checkpoint"

        await kube.patch(*JOBS, "demo", {"spec": {"suspend": False}})
        await all_pods(kube, GENERATION_2)
        current = await status(kube)
        assert current["restarts"] == 0
        await wait_events_of(kube, "demo", ("Resumed",), WAIT_S)


@pytest.mark.parametrize(
    ("spec", "cause"),
    [
        (
            {"workers": {"replicas": 0}},
            "spec.workers.replicas: Invalid value: 0: spec.workers.replicas in body should be greater than or equal to 1",
        ),
        (
            {"workload": {"builtin": {"task": "resnet"}}},
            'spec.workload.builtin.task: Unsupported value: "resnet": supported values: "digits", "gpt"',
        ),
    ],
    ids=["zero-workers", "unknown-task"],
)
async def test_the_api_server_refuses_what_the_crd_schema_forbids(
    kube: KubeClient, spec: dict[str, Any], cause: str
) -> None:
    """The CRD's schema stops these before the operator sees them: `kubectl apply` fails with the field."""
    with pytest.raises(ApiError) as refused:
        await kube.create(*JOBS, job_manifest(**spec))
    assert refused.value.status == 422 and cause in json.loads(refused.value.body)["message"]


# What the schema cannot say (a checkpoint without storage) the operator reports; the server lets it through.
@pytest.mark.parametrize(("spec", "field"), [({"checkpoint": {}}, "spec.checkpoint.storage")], ids=["no-storage"])
async def test_invalid_spec_is_reported_without_children(
    emulator: Emulator, kube: KubeClient, spec: dict[str, Any], field: str
) -> None:
    with running_operator(emulator, FakeRay()):
        await kube.create(*JOBS, job_manifest(**spec))
        current = await wait_status(
            kube,
            lambda s: any(c["type"] == "ValidationFailed" and c["status"] == "True" for c in s.get("conditions", [])),
            "no ValidationFailed condition",
        )
        assert field in current["message"], current["message"]

        async def warnings() -> list[dict[str, Any]]:
            # Kopf posts Events from a queue of its own, after the status write the test saw.
            return [e for e in await kube.events(involved_name="demo") if e["reason"] == "ValidationFailed"]

        posted = await wait_for(warnings, WAIT_S, "no ValidationFailed Event was posted")
        assert posted[0]["type"] == "Warning" and field in posted[0]["message"]
        assert await pods(kube) == {}, "an invalid job got pods"

        await kube.patch(*JOBS, "demo", {"spec": job_manifest()["spec"]})
        await wait_for(lambda: pods(kube), WAIT_S, "fixing the spec did not start the job")
        assert len([e for e in await kube.events(involved_name="demo") if e["reason"] == "ValidationFailed"]) == 1


async def test_env_from_a_secret_reaches_the_pods_and_not_the_ray_submission(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    env = [
        {"name": "PLAIN_SETTING", "value": "literal-7f3a"},
        {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-credentials", "key": "token"}}},
    ]
    env_from = [{"secretRef": {"name": "db-credentials"}, "prefix": "DB_"}]
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest(env=env, envFrom=env_from))
        for pod in (await all_pods(kube, GENERATION_1)).values():
            container = pod["spec"]["containers"][0]
            assert env[1] in container["env"] and env[0] in container["env"]
            assert container["envFrom"] == env_from
        await start_running(kube, ray, created["metadata"]["uid"])
        body = json.dumps(ray.submissions)
        for secret in ("literal-7f3a", "PLAIN_SETTING", "HF_TOKEN", "hf-credentials", "db-credentials"):
            assert secret not in body, f"{secret} went to Ray's job API"


async def test_a_service_account_the_operator_does_not_allow_is_a_validation_failure(
    emulator: Emulator, kube: KubeClient
) -> None:
    with running_operator(emulator, FakeRay(), allowed_service_accounts=["trainer"]):
        await kube.create(*JOBS, job_manifest(serviceAccountName="cluster-admin"))
        current = await wait_status(
            kube,
            lambda s: any(c["type"] == "ValidationFailed" and c["status"] == "True" for c in s.get("conditions", [])),
            "no ValidationFailed condition",
        )
        assert "spec.serviceAccountName: 'cluster-admin' is not allowed" in current["message"], current
        assert await pods(kube) == {}, "a job with a disallowed service account got pods"

        await kube.patch(*JOBS, "demo", {"spec": {"serviceAccountName": "trainer"}})
        found = await all_pods(kube, GENERATION_1)
        assert all(pod["spec"]["serviceAccountName"] == "trainer" for pod in found.values())


async def test_operator_restart_mid_flight_creates_no_duplicates(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)
    before = sorted(await pods(kube))
    with running_operator(emulator, ray):
        await wait_status(kube, lambda s: s.get("phase") == "Running", "the restarted operator lost the job")
        await mark(kube, "demo-g1-head")  # any pod event wakes the reconcile loop
        await wait_for(lambda: len(ray.submissions) >= 1, WAIT_S, "no submission")
        assert sorted(await pods(kube)) == before, "the restarted operator made new pods"
        assert set(ray.submitted_ids()) == {submission_id(uid, 1)}, "the restarted operator started a second run"
        assert (await status(kube))["clusterGeneration"] == 1


async def squat(kube: KubeClient, plural: str, name: str) -> None:
    """Take a name the operator is about to use with a pod or Service of nobody's (no labels, no owner)."""
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "app"}]} if plural == "pods" else {}
    await kube.create("v1", plural, {"metadata": {"name": name}, "spec": spec})


async def wait_conflict(kube: KubeClient, name: str, step: str) -> str:
    """The message of the job's ReconcileFailed condition once it says that `step` met a name taken."""

    def says(s: dict[str, Any]) -> str | None:
        failed = [c for c in s.get("conditions", []) if c["type"] == "ReconcileFailed" and c["status"] == "True"]
        return next((c["message"] for c in failed if c["message"].startswith(step)), None)

    found = await wait_status(kube, says, f"{name}: no failure of {step!r} was reported", name=name)
    return str(says(found))


async def test_a_name_taken_by_someone_else_stops_the_job_until_it_is_free(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    await squat(kube, "services", "demo-g1-head")
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        message = await wait_conflict(kube, "demo", "creating Service demo-g1-head")
        assert "already exists and belongs to no owner" in message
        assert await pods(kube) == {}, "the job went on past a Service it could not make"
        await kube.delete("v1", "services", "demo-g1-head")
        await all_pods(kube, GENERATION_1)
        service = await kube.get("v1", "services", "demo-g1-head")
        assert service is not None and service["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]


async def test_deleting_the_job_removes_everything_it_created(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*JOBS, job_manifest())
        await start_running(kube, ray, created["metadata"]["uid"])
        await kube.delete(*JOBS, "demo")
        await wait_for(lambda: _no(pods(kube)), WAIT_S, "pods survived the job's deletion")
        await wait_for(lambda: _no(kube.list("v1", "services")), WAIT_S, "the head service survived")
        await wait_for(lambda: _gone(kube), WAIT_S, "the job's finalizer was never released")


async def _gone(kube: KubeClient) -> bool:
    return await kube.get(*JOBS, "demo") is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[str, float]:
    """Sample name{labels} -> value from the operator's /metrics endpoint."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def test_prometheus_metrics_follow_the_jobs(emulator: Emulator, kube: KubeClient) -> None:
    ray, port = FakeRay(), _free_port()
    with running_operator(emulator, ray, metrics_port=port):
        created = await kube.create(*JOBS, job_manifest())
        uid = created["metadata"]["uid"]
        await start_running(kube, ray, uid)

        def running_metrics() -> dict[str, float] | None:
            samples = scrape(port)
            # A job runs once its head is ready: its last worker may be counted ready a pass later.
            running = samples.get('bigmodel_jobs{phase="Running"}') == 1 and samples.get("bigmodel_gpus_in_use") == 2
            return samples if running else None

        samples = await wait_for(running_metrics, WAIT_S, "bigmodel_jobs{phase=Running} and 2 GPUs in use never")
        assert samples["bigmodel_job_time_to_running_seconds_count"] == 1
        assert samples["bigmodel_gpus_requested"] == 2
        assert samples["bigmodel_reconcile_duration_seconds_count"] > 0

        await mark(kube, "demo-g1-w0", phase="Failed", exit_code=1)
        await wait_for(
            lambda: scrape(port).get("bigmodel_worker_replacements_total") == 1, WAIT_S, "replacement not counted"
        )
        ray.fail(submission_id(uid, 1), "driver crashed")
        await wait_for(lambda: scrape(port).get("bigmodel_job_restarts_total") == 1, WAIT_S, "restart not counted")
        after = scrape(port)
        assert after['bigmodel_jobs{phase="Running"}'] == 0 and after['bigmodel_jobs{phase="Restarting"}'] == 1


async def test_per_job_series_name_the_job_and_go_with_it(emulator: Emulator, kube: KubeClient) -> None:
    """What the chart's alerts read: the job's own series, its failed passes, and nothing left once it is deleted."""
    ray, port = FakeRay(), _free_port()
    demo = 'name="demo",namespace="default"'
    with running_operator(emulator, ray, metrics_port=port):
        created = await kube.create(*JOBS, job_manifest())
        await start_running(kube, ray, created["metadata"]["uid"])

        def says_running() -> dict[str, float] | None:
            samples = scrape(port)
            return samples if samples.get(f'bigmodel_job_status_phase{{{demo},phase="Running"}}') == 1 else None

        samples = await wait_for(says_running, WAIT_S, "the job's own phase series never said Running")
        assert samples[f"bigmodel_job_spec_max_restarts{{{demo}}}"] == 1
        assert samples[f"bigmodel_job_spec_startup_deadline_seconds{{{demo}}}"] == 1800
        assert f"bigmodel_job_status_starting_timestamp_seconds{{{demo}}}" not in samples

        async def garbled(head: RayHead) -> None:
            raise RuntimeError("the progress endpoint answered garbage")

        ray.report = garbled  # type: ignore[method-assign]
        failed = f'bigmodel_resource_reconcile_errors_total{{kind="BigModelJob",{demo}}}'
        await wait_for(lambda: scrape(port).get(failed, 0) >= 1, WAIT_S, "the failed pass was not counted for the job")
        del ray.report

        await kube.delete(*JOBS, "demo")
        await wait_for(lambda: _gone(kube), WAIT_S, "the job was never deleted")
        left = [series for series in scrape(port) if 'name="demo"' in series]
        assert not left, f"series of the deleted job remain: {left}"
