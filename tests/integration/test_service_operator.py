"""The BigModelService operator against a real HTTP Kubernetes API (the emulator), Ray replaced at its seam."""

from __future__ import annotations

import base64
from typing import Any

from bigmodel.api.traffic import ArmOutcomes
from bigmodel.api.training_report import TrainingReport
from bigmodel.builders.naming import submission_id
from tests.integration.test_job_operator import JOBS, _free_port, job_manifest, mark, scrape, start_running
from tests.support.emulator import Emulator, KubeClient, wait_for
from tests.support.fake_ray import FakeRay
from tests.support.operator import running_operator
from tests.support.status import status_of, wait_events_of, wait_status_of

SERVICES = ("bigmodel.dev/v1alpha1", "bigmodelservices")
WAIT_S = 20.0
HEAD_IPS = {0: "10.1.0.1", 1: "10.1.0.2", 2: "10.1.0.3"}


def service_manifest(name: str = "demo", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "bigmodel.dev/v1alpha1",
        "kind": "BigModelService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "/models/demo", "volumeClaimName": "models"},
            "replicas": {"min": 1, "max": 4},
            "replicaResources": {"cpu": 1},
            "workers": {"minReplicas": 1, "maxReplicas": 2, "idleTimeoutSeconds": 10, "resources": {"cpu": "1"}},
            **spec,
        },
    }


async def service_pods(kube: KubeClient, name: str = "demo") -> dict[str, dict[str, Any]]:
    found = await kube.list("v1", "pods", label_selector=f"bigmodel.dev/service={name}")
    return {pod["metadata"]["name"]: pod for pod in found if not pod["metadata"].get("deletionTimestamp")}


async def status(kube: KubeClient, name: str = "demo") -> dict[str, Any]:
    return await status_of(kube, SERVICES, name)


def slot(status: dict[str, Any], name: str) -> int | None:
    """The generation of the cluster in one of the status's slots: serving, pending or retiring."""
    return (status.get(name) or {}).get("generation")


async def wait_status(kube: KubeClient, check: Any, message: str, name: str = "demo") -> dict[str, Any]:
    return await wait_status_of(kube, SERVICES, name, check, message, WAIT_S)


async def wait_pods(kube: KubeClient, names: set[str], name: str = "demo") -> dict[str, dict[str, Any]]:
    async def probe() -> dict[str, dict[str, Any]] | None:
        found = await service_pods(kube, name)
        return found if set(found) == names else None

    return await wait_for(probe, WAIT_S, f"the service's pods never were exactly {sorted(names)}")


async def start_cluster(kube: KubeClient, ray: FakeRay, generation: int, workers: int = 1, name: str = "demo") -> None:
    """Play the kubelet and Ray for one cluster: its pods run, and its workers joined Ray."""
    prefix = f"{name}-s{generation}"
    pod_names = {f"{prefix}-head", *(f"{prefix}-w{i}" for i in range(workers))}
    await wait_for(lambda: _has(service_pods(kube, name), pod_names), WAIT_S, f"pods {sorted(pod_names)} not created")
    ray.nodes[HEAD_IPS[generation]] = frozenset(n for n in pod_names if not n.endswith("-head"))
    for pod in sorted(pod_names):
        await mark(kube, pod, pod_ip=HEAD_IPS[generation] if pod.endswith("-head") else "10.2.0.9")


async def _has(found: Any, names: set[str]) -> bool:
    return names <= set(await found)


async def event_reasons(kube: KubeClient, name: str = "demo") -> list[str]:
    return [event["reason"] for event in await kube.events(involved_name=name)]


async def wait_events(kube: KubeClient, *reasons: str, name: str = "demo") -> list[str]:
    return await wait_events_of(kube, name, reasons, WAIT_S)


async def test_service_becomes_a_ray_cluster_serving_its_model(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        created = await kube.create(*SERVICES, service_manifest())
        found = await wait_pods(kube, {"demo-s0-head", "demo-s0-w0"})
        worker = found["demo-s0-w0"]
        assert worker["metadata"]["ownerReferences"][0]["uid"] == created["metadata"]["uid"]
        volume = next(v for v in worker["spec"]["volumes"] if "persistentVolumeClaim" in v)
        assert volume["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}
        head = found["demo-s0-head"]["spec"]["containers"][0]
        assert {"name": "serve", "containerPort": 8000, "protocol": "TCP"} in head["ports"]
        serving = await wait_for(lambda: kube.get("v1", "services", "demo-serve"), WAIT_S, "no serving Service")
        assert serving["spec"]["type"] == "ClusterIP"
        assert serving["spec"]["selector"]["bigmodel.dev/cluster"] == "demo-s0"

        await start_cluster(kube, ray, 0)
        ready = await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")
        ((head_ip, config),) = ray.deploys
        assert head_ip == HEAD_IPS[0]
        application = config["applications"][0]
        assert application["args"]["model_uri"] == "/models/demo"
        assert application["deployments"][0]["autoscaling_config"]["max_replicas"] == 4
        assert ready["url"] == "http://demo-serve.default.svc:8000"
        assert ready["replicasReady"] == "1/1" and ready["workersReady"] == "1/1"
        assert ready["model"] == {"source": "/models/demo", "version": application["args"]["model_version"]}
        conditions = {c["type"]: c["status"] for c in ready["conditions"]}
        assert conditions == {"Ready": "True", "ModelLoaded": "True", "UpgradeInProgress": "False"}
        await wait_events(kube, "Ready")

        await kube.delete(*SERVICES, "demo")
        await wait_for(lambda: _none(service_pods(kube)), WAIT_S, "the pods were not removed with the service")
        await wait_for(lambda: _gone(kube, "demo-serve"), WAIT_S, "the serving Service was not removed")


async def _none(found: Any) -> bool:
    return not await found


async def _gone(kube: KubeClient, service: str) -> bool:
    return await kube.get("v1", "services", service) is None


async def test_service_waits_for_its_job_and_serves_what_it_exported(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await kube.create(*SERVICES, service_manifest(model={"jobName": "demo"}))
        waiting = await wait_status(kube, lambda s: s.get("phase") == "Pending", "no Pending phase without the job")
        loaded = next(c for c in waiting["conditions"] if c["type"] == "ModelLoaded")
        assert loaded["reason"] == "SourceJobNotFound" and "spec.model.jobName" in loaded["message"]
        assert await service_pods(kube) == {}, "nothing is built before there is a model"

        job = await kube.create(*JOBS, job_manifest())
        uid = job["metadata"]["uid"]
        await start_running(kube, ray, uid)
        await wait_status(kube, lambda s: "SourceJobNotFinished" in str(s.get("conditions")), "not waiting on the job")
        report = TrainingReport(
            step=100, total_steps=100, epoch=1, epochs=2, model_uri="/checkpoints/demo/model", done=True
        )
        ray.succeed(submission_id(uid, 1), report)

        found = await wait_pods(kube, {"demo-s0-head", "demo-s0-w0"})
        mount = next(m for m in found["demo-s0-w0"]["spec"]["containers"][0]["volumeMounts"] if m["name"] == "model")
        assert mount == {"name": "model", "mountPath": "/checkpoints/demo", "readOnly": True}
        await start_cluster(kube, ray, 0)
        ready = await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")
        assert ready["model"]["source"] == "/checkpoints/demo/model"


async def test_unplaced_replicas_add_a_worker_and_idle_ones_are_removed(emulator: Emulator, kube: KubeClient) -> None:
    ray, port = FakeRay(), _free_port()
    with running_operator(emulator, ray, poll_running_s=0.5, metrics_port=port):
        await kube.create(*SERVICES, service_manifest())
        await start_cluster(kube, ray, 0)
        await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")

        head_ip = HEAD_IPS[0]
        ray.set_replicas(head_ip, running=1, unplaced=1)
        await wait_pods(kube, {"demo-s0-head", "demo-s0-w0", "demo-s0-w1"})
        await wait_events(kube, "WorkerAdded")
        await mark(kube, "demo-s0-w1", pod_ip="10.2.0.10")
        ray.nodes[head_ip] = frozenset({"demo-s0-w0", "demo-s0-w1"})
        ray.set_replicas(head_ip, running=2)
        two = await wait_status(kube, lambda s: s.get("replicasReady") == "2/2", "the second replica never counted")
        assert two["workersReady"] == "2/2"
        samples = await wait_for(
            lambda: (found := scrape(port)).get('bigmodel_service_replicas{state="running"}') == 2 and found,
            WAIT_S, "the metrics never showed 2 running replicas",
        )  # fmt: skip
        assert samples['bigmodel_services{phase="Ready"}'] == 1 and samples["bigmodel_service_workers_ready"] == 2
        assert samples['bigmodel_service_worker_changes_total{change="added"}'] == 1

        # Load gone: Serve scaled down to the replica on w1; w0 holds nothing and goes after idleTimeoutSeconds (10 s).
        ray.set_replicas(head_ip, running=1)
        ray.busy[head_ip] = frozenset({"demo-s0-w1"})
        found = await wait_for(
            lambda: _exactly(service_pods(kube), {"demo-s0-head", "demo-s0-w1"}),
            WAIT_S,
            "the idle worker w0 was not removed (w1 hosts the replica and must stay)",
        )
        assert found
        await wait_events(kube, "WorkerRemoved")
        await wait_for(
            lambda: scrape(port).get('bigmodel_service_worker_changes_total{change="removed"}') == 1,
            WAIT_S,
            "the removal was not counted",
        )


async def _exactly(found: Any, names: set[str]) -> bool:
    return set(await found) == names


async def test_model_change_is_rolled_in_place_and_shape_change_moves_traffic(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        # On object storage: a new model is a new URI, nothing to mount (a claim's mount path would be a pod change).
        await kube.create(*SERVICES, service_manifest(model={"uri": "s3://models/demo"}))
        await start_cluster(kube, ray, 0)
        first = await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")

        await kube.patch(*SERVICES, "demo", {"spec": {"model": {"uri": "s3://models/demo-v2"}}})
        updated = await wait_status(
            kube, lambda s: s.get("model", {}).get("source") == "s3://models/demo-v2", "the new model was never served"
        )
        assert updated["model"]["version"] != first["model"]["version"]
        assert [ip for ip, _ in ray.deploys] == [HEAD_IPS[0], HEAD_IPS[0]], "a model change rebuilt the cluster"
        assert set(await service_pods(kube)) == {"demo-s0-head", "demo-s0-w0"}

        await kube.patch(*SERVICES, "demo", {"spec": {"image": "registry.example/bigmodel-runtime:2"}})
        upgrading = await wait_status(kube, lambda s: slot(s, "pending") == 1, "no new cluster was started")
        assert upgrading["phase"] == "Upgrading"
        serving = await kube.get("v1", "services", "demo-serve")
        assert serving is not None and serving["spec"]["selector"]["bigmodel.dev/cluster"] == "demo-s0"

        await start_cluster(kube, ray, 1)
        switched = await wait_status(kube, lambda s: slot(s, "serving") == 1, "traffic never moved")
        assert switched["serving"] == {"name": "demo-s1", "generation": 1, "application": "RUNNING"}
        assert slot(switched, "retiring") == 0 and "pending" not in switched
        serving = await kube.get("v1", "services", "demo-serve")
        assert serving is not None and serving["spec"]["selector"]["bigmodel.dev/cluster"] == "demo-s1"
        await wait_events(kube, "UpgradeStarted", "UpgradeComplete")


async def test_a_new_cluster_that_fails_never_takes_traffic(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await kube.create(*SERVICES, service_manifest())
        await start_cluster(kube, ray, 0)
        await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")

        ray.deploy_outcome = "DEPLOY_FAILED"
        await kube.patch(*SERVICES, "demo", {"spec": {"image": "registry.example/bigmodel-runtime:broken"}})
        await start_cluster(kube, ray, 1)
        failed = await wait_status(
            kube, lambda s: "UpgradeFailed" in str(s.get("conditions")), "the failed upgrade was not reported"
        )
        assert slot(failed, "serving") == 0 and failed["phase"] == "Ready"
        await wait_pods(kube, {"demo-s0-head", "demo-s0-w0"})
        serving = await kube.get("v1", "services", "demo-serve")
        assert serving is not None and serving["spec"]["selector"]["bigmodel.dev/cluster"] == "demo-s0"
        await wait_events(kube, "UpgradeFailed")


async def test_invalid_service_is_reported_and_builds_nothing(emulator: Emulator, kube: KubeClient) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        too_big = service_manifest(replicaResources={"cpu": 4})
        await kube.create(*SERVICES, too_big)
        failed = await wait_status(kube, lambda s: s.get("phase") == "Failed", "the invalid spec was not reported")
        condition = next(c for c in failed["conditions"] if c["type"] == "ValidationFailed")
        assert condition["message"].startswith("spec.replicaResources.cpu: 4 CPUs per replica do not fit")
        assert await service_pods(kube) == {}
        assert (await wait_events(kube, "ValidationFailed")).count("ValidationFailed") == 1


REDIS_ADDRESS = "redis.bigmodel-system.svc:6379"
REDIS_PASSWORD = "not-in-any-pod-spec"


async def redis_password_secret(kube: KubeClient) -> None:
    """The Redis password, in the operator's namespace, where the chart puts it."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "gcs-redis"},
        "data": {"password": base64.b64encode(REDIS_PASSWORD.encode()).decode()},
    }
    await kube.create("v1", "secrets", secret, namespace="bigmodel-system")


def condition_of(status: dict[str, Any], type_: str) -> tuple[str, str] | None:
    found = next((c for c in status.get("conditions") or [] if c["type"] == type_), None)
    return (found["status"], found["reason"]) if found else None


async def test_with_gcs_fault_tolerance_a_lost_head_comes_back_in_place(emulator: Emulator, kube: KubeClient) -> None:
    """The head pod of a Ready service is deleted: it stays Terminating a while, then a head of the same name and
    generation is made; the workers and the Service's selector are never touched, and the service says it is
    degraded but serving meanwhile."""
    ray = FakeRay()
    await redis_password_secret(kube)
    with running_operator(emulator, ray, gcs_redis_address=REDIS_ADDRESS, gcs_redis_password_secret="gcs-redis"):
        await kube.create(*SERVICES, service_manifest())
        await start_cluster(kube, ray, 0)
        await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")
        pods = await service_pods(kube)
        head_env = {e["name"]: e for e in pods["demo-s0-head"]["spec"]["containers"][0]["env"]}
        assert head_env["RAY_REDIS_ADDRESS"]["value"] == REDIS_ADDRESS
        assert REDIS_PASSWORD not in str(pods), "the password is in no pod spec"
        copied = await kube.get("v1", "secrets", "demo-s0-gcs-redis")
        assert copied is not None and base64.b64decode(copied["data"]["password"]).decode() == REDIS_PASSWORD
        workers = {name: pod["metadata"]["uid"] for name, pod in pods.items() if name != "demo-s0-head"}
        old_head = pods["demo-s0-head"]["metadata"]["uid"]
        before = await kube.get("v1", "services", "demo-serve")
        assert before is not None

        await kube.bind("demo-s0-head", "node-a")
        await kube.delete("v1", "pods", "demo-s0-head")
        degraded = await wait_status(
            kube, lambda s: condition_of(s, "Degraded") == ("True", "HeadRestarting"), "the head's loss was not said"
        )
        assert degraded["phase"] == "Ready" and condition_of(degraded, "Ready") == ("True", "Serving")
        assert condition_of(degraded, "ReconcileFailed") in (None, ("False", "Recovered")), "no early create"
        assert set(await service_pods(kube)) == set(workers), "no new head while the old one is Terminating"

        emulator.finish_termination("default", "demo-s0-head")
        found = await wait_pods(kube, {"demo-s0-head", *workers})
        assert found["demo-s0-head"]["metadata"]["uid"] != old_head
        assert {name: found[name]["metadata"]["uid"] for name in workers} == workers, "the workers were kept"
        await wait_events(kube, "HeadRestarted")
        await mark(kube, "demo-s0-head", pod_ip=HEAD_IPS[0])
        back = await wait_status(
            kube, lambda s: condition_of(s, "Degraded") == ("False", "HeadRecovered"), "the head never came back"
        )
        assert back["phase"] == "Ready" and back["serving"]["generation"] == 0
        after = await kube.get("v1", "services", "demo-serve")
        assert after is not None and after["spec"]["selector"] == before["spec"]["selector"]
        assert "ClusterLost" not in await event_reasons(kube)
        assert not any(name.startswith("demo-s1") for name in await service_pods(kube))


async def test_without_gcs_fault_tolerance_a_lost_head_rebuilds_the_cluster(
    emulator: Emulator, kube: KubeClient
) -> None:
    ray = FakeRay()
    with running_operator(emulator, ray):
        await kube.create(*SERVICES, service_manifest())
        await start_cluster(kube, ray, 0)
        await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")
        await kube.delete("v1", "pods", "demo-s0-head")
        await wait_events(kube, "ClusterLost")
        await start_cluster(kube, ray, 1)
        await wait_status(
            kube, lambda s: slot(s, "serving") == 1 and s.get("phase") == "Ready", "the rebuilt cluster never served"
        )
        serving = await kube.get("v1", "services", "demo-serve")
        assert serving is not None and serving["spec"]["selector"]["bigmodel.dev/generation"] == "1"
        assert "bigmodel.dev/role" not in serving["spec"]["selector"]
        assert "HeadRestarted" not in await event_reasons(kube)


def answers(requests: int, errors: int = 0) -> ArmOutcomes:
    arm = ArmOutcomes()
    for index in range(requests):
        arm.record(500 if index < errors else 200, 0.01)
    return arm


async def test_a_canary_that_fails_is_rolled_back_and_a_good_one_promoted(emulator: Emulator, kube: KubeClient) -> None:
    ray, port = FakeRay(), _free_port()
    head = HEAD_IPS[0]
    rollout = {"canaryPercent": 20, "minRequests": 5, "analysisSeconds": 5}
    # Polled every second, as a Ready service: the canary's steps follow one another no slower.
    with running_operator(emulator, ray, metrics_port=port, poll_running_s=1.0):
        await kube.create(*SERVICES, service_manifest(model={"uri": "s3://models/demo"}, rollout=rollout))
        await start_cluster(kube, ray, 0)
        first = await wait_status(kube, lambda s: s.get("phase") == "Ready", "the service never became Ready")
        served = first["model"]["version"]

        await kube.patch(*SERVICES, "demo", {"spec": {"model": {"uri": "s3://models/demo-bad"}}})
        trial = await wait_status(
            kube, lambda s: (s.get("canary") or {}).get("phase") == "Analyzing", "the canary never took its share"
        )
        version = trial["canary"]["version"]
        assert trial["traffic"] == f"{served} 80%, {version} 20%" and trial["phase"] == "Upgrading"
        assert ray.traffic_settings[head].canary is not None and ray.traffic_settings[head].canary.percent == 20
        assert [a["name"] for a in ray.deploys[-1][1]["applications"]] == ["demo", "demo-canary"]
        ray.outcomes[head] = (answers(50), answers(10, errors=10))
        rolled = await wait_status(
            kube,
            lambda s: "canary" not in s and s.get("rolledBackVersion") == version,
            "the canary was not rolled back",
        )
        assert rolled["model"]["version"] == served and rolled["traffic"] == f"{served} 100%"
        assert rolled["phase"] == "Ready" and condition_of(rolled, "UpgradeInProgress") == ("False", "CanaryRolledBack")
        assert [a["name"] for a in ray.deploys[-1][1]["applications"]] == ["demo"]
        assert ray.traffic_settings[head].canary is None
        await wait_events(kube, "CanaryStarted", "CanaryRolledBack")

        await kube.patch(*SERVICES, "demo", {"spec": {"model": {"uri": "s3://models/demo-v2"}}})
        await wait_status(kube, lambda s: (s.get("canary") or {}).get("phase") == "Analyzing", "no second canary")
        ray.outcomes[head] = (answers(50), answers(10))
        promoted = await wait_status(
            kube,
            lambda s: "canary" not in s and s.get("model", {}).get("source") == "s3://models/demo-v2",
            "the good canary was not promoted",
        )
        assert promoted["phase"] == "Ready" and promoted["traffic"] == f"{promoted['model']['version']} 100%"
        assert [a["args"]["model_uri"] for a in ray.deploys[-1][1]["applications"]] == ["s3://models/demo-v2"]
        await wait_events(kube, "CanaryPromoted")
        samples = scrape(port)
        assert samples['bigmodel_service_canaries_total{result="rolled_back"}'] == 1
        assert samples['bigmodel_service_canaries_total{result="promoted"}'] == 1
