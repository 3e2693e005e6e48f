"""What a BigModelJob becomes in Kubernetes: names, labels, pods and the head Service, checked as plain dicts."""

from __future__ import annotations

import ast
import re
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import annotated_types
import kubernetes_validate
import pytest
from kubernetes.utils import parse_quantity

from bigmodel.api import wire
from bigmodel.api.common import EnvFromSource, EnvVar, ObjectMeta, Toleration
from bigmodel.api.job import BigModelJob, BigModelJobStatus, WorkerGroup
from bigmodel.api.manifests import load_manifest
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import OWNER_UID_LABEL, PROGRESS_PORT, RAY_DASHBOARD_PORT
from bigmodel.builders import naming, ray_cluster
from bigmodel.builders.network_policy import OperatorPeer, network_policy
from bigmodel.builders.ray_cluster import checkpoint_claim, head_pod, head_service, worker_pod
from bigmodel.builders.ray_token import token_secret
from bigmodel.builders.serve_app import deployment_options
from bigmodel.reconcile.cluster import Clusters
from bigmodel.reconcile.observed import ClusterObservation
from bigmodel.reconcile.plans import Plan

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
BUILDERS = ROOT / "operator" / "bigmodel" / "builders"
UID = "6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f"
NAMESPACE = "research"
KUBERNETES_VERSION = "1.37"
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def example_job(file: str, generation: int = 3) -> BigModelJob:
    """An example as the API server returns it: with a namespace, uid and spec generation."""
    job = load_manifest(EXAMPLES / file)
    assert isinstance(job, BigModelJob)
    job.metadata.namespace = NAMESPACE
    job.metadata.uid = UID
    job.metadata.generation = generation
    return job


def job_head_pod(job: BigModelJob, generation: int) -> dict[str, Any]:
    """A job's head pod, with its checkpoint volume as the job's cluster mounts it."""
    return head_pod(job, generation, checkpoint_claim(job))


def job_worker_pod(job: BigModelJob, generation: int, index: int) -> dict[str, Any]:
    return worker_pod(job, generation, index, checkpoint_claim(job))


def cluster_objects(job: BigModelJob, generation: int) -> list[dict[str, Any]]:
    """Everything one generation of a job's cluster is made of, as the shared cluster decision creates it."""
    plan: Plan[Any] = Plan(status=BigModelJobStatus())
    seen = ClusterObservation(now=datetime.now(timezone.utc))
    clusters = Clusters(job, seen, plan, claim=checkpoint_claim(job), stamp={}, operator=OperatorPeer())
    clusters.build(generation, job.spec.workers.replicas)
    return plan.create


@pytest.fixture
def digits() -> BigModelJob:
    return example_job("digits.yaml")


@pytest.fixture
def gpt() -> BigModelJob:
    return example_job("gpt-gpu.yaml")


def container(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def flag(pod: dict[str, Any], name: str) -> str:
    values = [arg.split("=", 1)[1] for arg in container(pod)["command"] if arg.startswith(f"--{name}=")]
    assert len(values) == 1, f"--{name} appears {len(values)} times"
    return values[0]


def env(pod: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in container(pod)["env"]}


def volume(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in pod["spec"]["volumes"] if item["name"] == name)


def mounts(pod: dict[str, Any]) -> dict[str, str]:
    return {mount["name"]: mount["mountPath"] for mount in container(pod)["volumeMounts"]}


def selects(selector: dict[str, str], object_labels: dict[str, str]) -> bool:
    return selector.items() <= object_labels.items()


def model_bound(model: type[Any], field: str, kind: type[Any]) -> Any:
    return next(item for item in model.model_fields[field].metadata if isinstance(item, kind))


# Names and labels


def test_names_follow_the_generation() -> None:
    assert naming.cluster_name("digits", 1) == "digits-g1"
    assert naming.head_pod_name("digits", 1) == "digits-g1-head"
    assert naming.head_service_name("digits", 1) == "digits-g1-head"
    assert naming.worker_pod_name("digits", 1, 0) == "digits-g1-w0"
    assert naming.worker_pod_name("digits", 12, 7) == "digits-g12-w7"
    assert naming.head_pod_name("digits", 2) != naming.head_pod_name("digits", 1)


def test_submission_id_is_deterministic_per_generation() -> None:
    assert naming.submission_id(UID, 1) == "bigmodel-6f1c2d3e-g1"
    assert naming.submission_id(UID, 1) == naming.submission_id(UID, 1)
    assert naming.submission_id(UID, 2) != naming.submission_id(UID, 1)


def test_labels_of_head_and_worker() -> None:
    assert naming.labels("digits", 4, "head") == {
        "app.kubernetes.io/name": "bigmodel",
        "app.kubernetes.io/instance": "digits",
        "app.kubernetes.io/component": "ray-head",
        "app.kubernetes.io/managed-by": "bigmodel-operator",
        "app.kubernetes.io/part-of": "bigmodel-operator",
        "bigmodel.dev/job": "digits",
        "bigmodel.dev/cluster": "digits-g4",
        "bigmodel.dev/generation": "4",
        "bigmodel.dev/role": "head",
    }
    worker = naming.labels("digits", 4, "worker", 2)
    assert worker["app.kubernetes.io/component"] == "ray-worker"
    assert worker["bigmodel.dev/role"] == "worker"
    assert worker["bigmodel.dev/worker-index"] == "2"


@pytest.mark.parametrize(("role", "index"), [("head", 0), ("worker", None)])
def test_worker_index_only_for_workers(role: naming.Role, index: int | None) -> None:
    with pytest.raises(ValueError, match="worker index"):
        naming.labels("digits", 1, role, index)


def test_selectors() -> None:
    head_g1, worker_g1 = naming.labels("digits", 1, "head"), naming.labels("digits", 1, "worker", 0)
    worker_g2 = naming.labels("digits", 2, "worker", 0)
    other_job = naming.labels("digits2", 1, "head")
    assert all(selects(naming.owner_selector("digits"), item) for item in (head_g1, worker_g1, worker_g2))
    assert not selects(naming.owner_selector("digits"), other_job)
    assert selects(naming.cluster_selector("digits", 1), head_g1)
    assert selects(naming.cluster_selector("digits", 1), worker_g1)
    assert not selects(naming.cluster_selector("digits", 1), worker_g2)


def test_name_budget_matches_the_api_models() -> None:
    assert model_bound(ObjectMeta, "name", annotated_types.MaxLen).max_length == naming.MAX_JOB_NAME_LENGTH
    max_replicas = model_bound(WorkerGroup, "replicas", annotated_types.Le).le
    assert len(str(max_replicas - 1)) == naming.MAX_WORKERS_DIGITS


@pytest.mark.parametrize("generation", [0, 1, 9999, 10**naming.MAX_GENERATION_DIGITS - 1])
def test_longest_names_are_dns_labels(generation: int) -> None:
    job_name = "j" + "x" * (naming.MAX_JOB_NAME_LENGTH - 2) + "9"
    names = [
        naming.cluster_name(job_name, generation),
        naming.head_pod_name(job_name, generation),
        naming.head_service_name(job_name, generation),
        *(naming.worker_pod_name(job_name, generation, index) for index in range(10**naming.MAX_WORKERS_DIGITS)),
    ]
    too_long = [name for name in names if len(name) > naming.DNS_LABEL_MAX_LENGTH or not DNS_LABEL.match(name)]
    assert not too_long
    head, worker = naming.labels(job_name, generation, "head"), naming.labels(job_name, generation, "worker", 1023)
    for object_labels in (head, worker):
        assert all(len(value) <= 63 and LABEL_VALUE.match(value) for value in object_labels.values())


def test_names_out_of_range_are_refused() -> None:
    with pytest.raises(ValueError, match="generation"):
        naming.cluster_name("digits", 10**naming.MAX_GENERATION_DIGITS)
    with pytest.raises(ValueError, match="generation"):
        naming.cluster_name("digits", -1)
    with pytest.raises(ValueError, match="worker index"):
        naming.worker_pod_name("digits", 1, 10**naming.MAX_WORKERS_DIGITS)


# Addresses


def test_addresses() -> None:
    assert ray_cluster.head_address("digits", "research", 2) == "digits-g2-head.research.svc:6379"
    assert ray_cluster.dashboard_url("10.1.2.3") == "http://10.1.2.3:8265"
    assert ray_cluster.progress_url("10.1.2.3") == "http://10.1.2.3:8270"
    assert ray_cluster.dashboard_url("fd00::1") == "http://[fd00::1]:8265"


# Pods and Service


def test_head_pod(digits: BigModelJob) -> None:
    pod = job_head_pod(digits, 2)
    assert pod["metadata"]["name"] == "digits-g2-head"
    assert pod["metadata"]["namespace"] == NAMESPACE
    assert pod["metadata"]["labels"] == naming.labels("digits", 2, "head") | {OWNER_UID_LABEL: UID}
    head = container(pod)
    assert head["name"] == "ray-head"
    assert head["image"] == digits.spec.image
    assert head["imagePullPolicy"] == "IfNotPresent"
    assert head["command"] == [
        "ray", "start", "--head", "--block", "--port=6379", "--dashboard-host=0.0.0.0", "--dashboard-port=8265",
        "--ray-client-server-port=10001", "--dashboard-agent-listen-port=52365", "--num-cpus=0", "--num-gpus=0",
        "--node-name=$(POD_NAME)", "--temp-dir=/tmp/ray", "--disable-usage-stats",
    ]  # fmt: skip
    assert {port["name"]: port["containerPort"] for port in head["ports"]} == {
        "gcs": 6379,
        "dashboard": 8265,
        "client": 10001,
        "progress": 8270,
    }
    assert head["resources"]["requests"] == head["resources"]["limits"] == {"cpu": "1", "memory": "4Gi"}


def test_worker_pod(digits: BigModelJob) -> None:
    pod = job_worker_pod(digits, 2, 1)
    assert pod["metadata"]["name"] == "digits-g2-w1"
    assert pod["metadata"]["labels"] == naming.labels("digits", 2, "worker", 1) | {OWNER_UID_LABEL: UID}
    worker = container(pod)
    assert worker["name"] == "ray-worker"
    assert worker["command"][:3] == ["ray", "start", "--block"]
    assert flag(pod, "address") == "$(RAY_HEAD_ADDRESS)"
    assert flag(pod, "node-ip-address") == "$(POD_IP)"
    assert flag(pod, "node-name") == "$(POD_NAME)"
    assert flag(pod, "dashboard-agent-listen-port") == "52365"
    assert flag(pod, "num-cpus") == "1"
    assert flag(pod, "num-gpus") == "0"
    assert "--disable-usage-stats" in worker["command"]
    assert worker["resources"]["requests"] == worker["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


@pytest.mark.parametrize("role", ["head", "worker"])
def test_environment(digits: BigModelJob, role: str) -> None:
    digits.spec.env = [EnvVar(name="TORCH_LOGS", value="+dynamo"), EnvVar(name="DATA_DIR", value="$(POD_NAME)")]
    pod = job_head_pod(digits, 2) if role == "head" else job_worker_pod(digits, 2, 0)
    variables = env(pod)
    assert variables["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert variables["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert variables["RAY_HEAD_ADDRESS"] == "digits-g2-head.research.svc:6379"
    assert variables["BIGMODEL_JOB"] == "digits"
    assert variables["RAY_USAGE_STATS_ENABLED"] == "0"
    assert variables["TORCH_LOGS"] == "+dynamo"
    names = [entry["name"] for entry in container(pod)["env"]]
    assert names.index("DATA_DIR") > names.index("POD_NAME"), "user variables must be able to refer to ours"


SECRET_TOKEN = EnvVar.model_validate(
    {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
)
DB_FROM = EnvFromSource.model_validate({"secretRef": {"name": "db", "optional": True}, "prefix": "DB_"})


@pytest.mark.parametrize("role", ["head", "worker"])
def test_env_by_reference_is_in_every_container_for_the_kubelet_to_read(digits: BigModelJob, role: str) -> None:
    digits.spec.env = [SECRET_TOKEN, EnvVar(name="EMPTY")]
    digits.spec.env_from = [DB_FROM, EnvFromSource.model_validate({"configMapRef": {"name": "tuning"}})]
    pod = job_head_pod(digits, 2) if role == "head" else job_worker_pod(digits, 2, 0)
    entries = {entry["name"]: entry for entry in container(pod)["env"]}
    assert entries["HF_TOKEN"] == {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "token"}}}
    assert entries["EMPTY"] == {"name": "EMPTY"}
    assert container(pod)["envFrom"] == [
        {"prefix": "DB_", "secretRef": {"name": "db", "optional": True}},
        {"configMapRef": {"name": "tuning"}},
    ]


def test_no_env_from_unless_the_spec_has_some(digits: BigModelJob) -> None:
    assert "envFrom" not in container(job_head_pod(digits, 1))


def test_every_variable_the_operator_sets_is_reserved(digits: BigModelJob) -> None:
    """A spec's env may not name one of ours: it comes after them, and would win. (The head's failure-detection
    settings come after the spec's env, so they win anyway.)"""
    assert not digits.spec.env
    after_the_spec = {entry["name"] for entry in ray_cluster._NODE_FAILURE_DETECTION}
    service = BigModelService.model_validate(
        {
            "metadata": {"name": "svc", "namespace": NAMESPACE, "uid": UID},
            "spec": {"model": {"uri": "/models/x"}, "auth": {"secretName": "keys"}},
        },
        by_alias=True,
    )
    pods = (
        job_head_pod(digits, 1),
        job_worker_pod(digits, 1, 0),
        head_pod(service, 0, None),
        worker_pod(service, 0, 0, None),
    )
    for pod in pods:
        ours = {entry["name"] for entry in container(pod)["env"]} - after_the_spec
        assert ours <= wire.RESERVED_ENV, ours - wire.RESERVED_ENV


@pytest.mark.parametrize(("cpu", "expected"), [("500m", 1), ("8", 8), ("2500m", 2), (3, 3)])
def test_worker_num_cpus_are_whole_cores(digits: BigModelJob, cpu: str | int, expected: int) -> None:
    digits.spec.workers.resources.cpu = cpu
    assert flag(job_worker_pod(digits, 1, 0), "num-cpus") == str(expected)


def test_gpu_workers(gpt: BigModelJob) -> None:
    worker = container(job_worker_pod(gpt, 1, 3))
    expected = {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    assert worker["resources"] == {"requests": expected, "limits": expected}
    assert flag(job_worker_pod(gpt, 1, 3), "num-gpus") == "1"
    assert flag(job_worker_pod(gpt, 1, 3), "num-cpus") == "8"
    head = container(job_head_pod(gpt, 1))
    assert "nvidia.com/gpu" not in head["resources"]["limits"]
    assert head["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}


def test_head_gpus_follow_the_head_spec(gpt: BigModelJob) -> None:
    gpt.spec.head.resources.gpu = 1
    head = job_head_pod(gpt, 1)
    assert container(head)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert flag(head, "num-gpus") == "0", "the head trains nothing, so Ray must not place work on its GPU"


def test_scheduling_passes_through_per_group(gpt: BigModelJob) -> None:
    affinity = {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}}}
            ]
        }
    }
    gpt.spec.workers.node_selector = {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    gpt.spec.workers.affinity = affinity
    gpt.spec.workers.priority_class_name = "training-high"
    gpt.spec.head.node_selector = {"pool": "cpu"}
    gpt.spec.head.tolerations = [Toleration(key="dedicated", operator="Equal", value="ray", toleration_seconds=30)]

    worker = job_worker_pod(gpt, 1, 0)["spec"]
    assert worker["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert worker["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert worker["affinity"] == affinity
    assert worker["priorityClassName"] == "training-high"

    head = job_head_pod(gpt, 1)["spec"]
    assert head["nodeSelector"] == {"pool": "cpu"}
    assert head["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ray", "tolerationSeconds": 30}]
    assert "affinity" not in head
    assert "priorityClassName" not in head

    worker["affinity"]["podAntiAffinity"].clear()
    assert gpt.spec.workers.affinity == affinity, "a rendered pod must not share state with the model"


def test_service_account_and_pull_secrets(digits: BigModelJob) -> None:
    spec = job_worker_pod(digits, 1, 0)["spec"]
    assert "serviceAccountName" not in spec and "imagePullSecrets" not in spec
    assert spec["automountServiceAccountToken"] is False
    digits.spec.service_account_name = "trainer"
    digits.spec.image_pull_secrets = ["registry", "mirror"]
    for pod in (job_head_pod(digits, 1), job_worker_pod(digits, 1, 0)):
        assert pod["spec"]["serviceAccountName"] == "trainer"
        assert pod["spec"]["imagePullSecrets"] == [{"name": "registry"}, {"name": "mirror"}]
        assert "automountServiceAccountToken" not in pod["spec"]


def test_checkpoint_volume_on_every_pod(gpt: BigModelJob) -> None:
    for pod in (job_head_pod(gpt, 1), job_worker_pod(gpt, 1, 0), job_worker_pod(gpt, 1, 3)):
        assert volume(pod, "checkpoints") == {
            "name": "checkpoints",
            "persistentVolumeClaim": {"claimName": "training-checkpoints"},
        }
        mount = next(item for item in container(pod)["volumeMounts"] if item["name"] == "checkpoints")
        assert mount == {"name": "checkpoints", "mountPath": "/checkpoints/gpt-150m", "readOnly": False}


def test_no_checkpoint_volume_without_a_claim(digits: BigModelJob) -> None:
    pod = job_worker_pod(digits, 1, 0)
    assert {item["name"] for item in pod["spec"]["volumes"]} == {"shm", "ray-tmp"}
    assert mounts(pod) == {"shm": "/dev/shm", "ray-tmp": "/tmp/ray"}


def test_every_ray_node_keeps_its_files_on_its_own_ray_tmp_volume(digits: BigModelJob) -> None:
    for pod in (job_head_pod(digits, 1), job_worker_pod(digits, 1, 0)):
        assert "--temp-dir=" + mounts(pod)["ray-tmp"] in container(pod)["command"], pod["metadata"]["name"]


@pytest.mark.parametrize(("file", "role", "memory"), [
    ("digits.yaml", "worker", "2Gi"),
    ("digits.yaml", "head", "4Gi"),
    ("gpt-gpu.yaml", "worker", "64Gi"),
    ("gpt-gpu.yaml", "head", "16Gi"),
])  # fmt: skip
def test_shm_holds_rays_object_store(file: str, role: str, memory: str) -> None:
    job = example_job(file)
    pod = job_head_pod(job, 1) if role == "head" else job_worker_pod(job, 1, 0)
    shm = volume(pod, "shm")["emptyDir"]
    assert shm["medium"] == "Memory"
    assert Decimal(shm["sizeLimit"]) == int(parse_quantity(memory) * Decimal("0.3"))
    assert mounts(pod)["shm"] == "/dev/shm"
    assert volume(pod, "ray-tmp") == {"name": "ray-tmp", "emptyDir": {}}


@pytest.mark.parametrize("role", ["head", "worker"])
def test_security_and_lifecycle(digits: BigModelJob, role: str) -> None:
    pod = job_head_pod(digits, 1) if role == "head" else job_worker_pod(digits, 1, 0)
    spec = pod["spec"]
    assert spec["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 100,
        "fsGroup": 100,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert container(pod)["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": False,
    }
    assert spec["restartPolicy"] == "Never"
    assert spec["terminationGracePeriodSeconds"] == 120
    assert spec["enableServiceLinks"] is False


def test_a_jobs_grace_period_is_its_own_and_ray_drains_its_nodes_for_most_of_it(digits: BigModelJob) -> None:
    """On SIGTERM Ray marks the node draining for this long: the run checkpoints within it, and Ray still has the
    rest of the grace period to stop before the kubelet's SIGKILL."""
    job = digits.model_copy(update={"spec": digits.spec.model_copy(update={"termination_grace_period_seconds": 300})})
    for pod in (job_head_pod(job, 1), job_worker_pod(job, 1, 0)):
        assert pod["spec"]["terminationGracePeriodSeconds"] == 300
        env = {entry["name"]: entry.get("value") for entry in container(pod)["env"]}
        assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == "290"
        assert env["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"] == "1"


@pytest.mark.parametrize(("timeout", "grace", "drain"), [(60, 80, "70"), (5, 60, "50")])
def test_a_service_pod_drains_long_enough_for_its_longest_request(timeout: float, grace: int, drain: str) -> None:
    """A deleted serving pod's replicas finish their requests first (Serve's graceful shutdown waits the service's
    timeout); Ray's drain, and the grace period around it, leave them that long."""
    service = BigModelService.model_validate(
        {
            "metadata": {"name": "svc", "namespace": NAMESPACE, "uid": UID},
            "spec": {"model": {"uri": "/models/x"}, "limits": {"timeoutSeconds": timeout}},
        },
        by_alias=True,
    )
    for pod in (head_pod(service, 0, None), worker_pod(service, 0, 0, None)):
        assert pod["spec"]["terminationGracePeriodSeconds"] == grace
        env = {entry["name"]: entry.get("value") for entry in container(pod)["env"]}
        assert env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] == drain
        assert float(drain) >= timeout, "the drain ends before a request may"
        assert "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S" not in env


@pytest.mark.parametrize(("role", "path", "port"), [
    ("head", "/api/gcs_healthz", 8265),
    ("worker", "/api/local_raylet_healthz", 52365),
])  # fmt: skip
def test_probes(digits: BigModelJob, role: str, path: str, port: int) -> None:
    pod = job_head_pod(digits, 1) if role == "head" else job_worker_pod(digits, 1, 0)
    readiness, liveness = container(pod)["readinessProbe"], container(pod)["livenessProbe"]
    for probe in (readiness, liveness):
        assert probe["httpGet"]["path"] == path
        assert probe["httpGet"]["port"] == port
        assert 0 < probe["timeoutSeconds"] <= probe["periodSeconds"]
    assert liveness["failureThreshold"] > readiness["failureThreshold"]
    assert liveness["initialDelaySeconds"] >= readiness["initialDelaySeconds"]


def test_head_service(gpt: BigModelJob) -> None:
    service = head_service(gpt, 5)
    assert service["metadata"]["name"] == "gpt-150m-g5-head"
    spec = service["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["publishNotReadyAddresses"] is True
    head_ports = {port["name"]: port["containerPort"] for port in container(job_head_pod(gpt, 5))["ports"]}
    assert {port["name"]: port["port"] for port in spec["ports"]} == head_ports
    assert all(port["targetPort"] in head_ports for port in spec["ports"])
    assert selects(spec["selector"], job_head_pod(gpt, 5)["metadata"]["labels"])
    for index in range(gpt.spec.workers.replicas):
        assert not selects(spec["selector"], job_worker_pod(gpt, 5, index)["metadata"]["labels"])
    assert not selects(spec["selector"], job_head_pod(gpt, 4)["metadata"]["labels"])


def test_cluster_objects_in_creation_order(gpt: BigModelJob) -> None:
    objects = cluster_objects(gpt, 1)
    assert [(item["kind"], item["metadata"]["name"]) for item in objects] == [
        ("NetworkPolicy", "gpt-150m-g1"),
        ("Secret", "gpt-150m-g1-ray-token"),
        ("Service", "gpt-150m-g1-head"),
        ("Pod", "gpt-150m-g1-head"),
        *(("Pod", f"gpt-150m-g1-w{index}") for index in range(4)),
    ]


@pytest.mark.parametrize("file", ["digits.yaml", "gpt-gpu.yaml"])
def test_every_child_is_owned_by_the_job(file: str) -> None:
    job = example_job(file, generation=7)
    for item in cluster_objects(job, 1):
        metadata = item["metadata"]
        assert metadata["namespace"] == NAMESPACE
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": "bigmodel.dev/v1alpha1",
                "kind": "BigModelJob",
                "name": job.metadata.name,
                "uid": UID,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert metadata["annotations"] == {"bigmodel.dev/spec-generation": "7"}
        assert selects(naming.owner_selector(job.metadata.name), metadata["labels"])


def test_a_job_without_uid_or_namespace_is_refused(digits: BigModelJob) -> None:
    digits.metadata.uid = None
    with pytest.raises(ValueError, match="no namespace or uid"):
        job_head_pod(digits, 1)


def test_generation_annotation_needs_a_generation(digits: BigModelJob) -> None:
    digits.metadata.generation = None
    assert "annotations" not in head_service(digits, 1)["metadata"]


# Kubernetes accepts what is rendered


JOB_EXAMPLES = sorted(path.name for path in EXAMPLES.glob("*.yaml") if "kind: BigModelJob" in path.read_text())


@pytest.mark.parametrize("file", JOB_EXAMPLES)
def test_rendered_objects_pass_the_kubernetes_schema(file: str) -> None:
    job = example_job(file)
    job.spec.service_account_name = "trainer"
    job.spec.image_pull_secrets = ["registry"]
    job.spec.env = [EnvVar(name="HF_HOME", value="/tmp/hf"), SECRET_TOKEN]
    job.spec.env_from = [DB_FROM]
    job.spec.workers.affinity = {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}}
    job.spec.workers.priority_class_name = "training"
    for item in cluster_objects(job, 9999):
        kubernetes_validate.validate(item, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_is_strict(digits: BigModelJob) -> None:
    pod = job_head_pod(digits, 1)
    pod["spec"]["restartPolicyy"] = "Never"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_builders_import_no_client_and_do_no_io() -> None:
    forbidden = {
        "kubernetes", "kubernetes.client", "kubernetes.config", "kubernetes.watch", "kubernetes.dynamic",
        "kubernetes_asyncio", "kopf", "ray", "aiohttp", "httpx", "requests", "urllib", "socket", "subprocess",
        "os", "io", "pathlib", "shutil",
    }  # fmt: skip
    for module in BUILDERS.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                imported = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                imported = [node.module or ""]
            else:
                continue
            for name in imported:
                prefixes = {".".join(name.split(".")[:depth]) for depth in range(1, name.count(".") + 2)}
                assert not prefixes & forbidden, f"{module.name} imports {name}"


# A cluster's token and network policy


def test_every_ray_container_runs_token_auth_with_the_clusters_own_secret(digits: BigModelJob) -> None:
    for pod in (job_head_pod(digits, 2), job_worker_pod(digits, 2, 0)):
        variables = env(pod)
        assert variables["RAY_AUTH_MODE"] == "token"
        assert variables["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": "digits-g2-ray-token", "key": "token"}}
    secret = token_secret(digits, 2)
    assert secret["metadata"]["name"] == "digits-g2-ray-token" and "data" not in secret, "the controller adds it"
    assert secret["metadata"]["labels"][OWNER_UID_LABEL] == UID


def test_a_jobs_policy_opens_ray_to_its_own_pods_and_two_ports_to_the_operator(digits: BigModelJob) -> None:
    operator = OperatorPeer("ops", {"app": "op"})
    spec = network_policy(digits, 2, operator)["spec"]
    assert spec["policyTypes"] == ["Ingress"] and "egress" not in spec
    own = spec["podSelector"]["matchLabels"]
    assert own == naming.cluster_selector("digits", 2) | {OWNER_UID_LABEL: UID}
    assert selects(own, job_head_pod(digits, 2)["metadata"]["labels"])
    assert not selects(own, job_head_pod(digits, 3)["metadata"]["labels"]), "another generation is another cluster"
    peers, from_operator = spec["ingress"]
    assert peers == {"from": [{"podSelector": {"matchLabels": own}}]}
    assert from_operator["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchLabels": {"app": "op"}},
        }
    ]
    assert [port["port"] for port in from_operator["ports"]] == [RAY_DASHBOARD_PORT, PROGRESS_PORT]


def test_a_services_replicas_scale_on_requests_or_on_tokens_yet_to_generate_with_the_specs_delays() -> None:
    service = load_manifest(EXAMPLES / "service-uri.yaml")
    assert isinstance(service, BigModelService)
    assert deployment_options(service.spec)["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 1,
        "max_replicas": 8,
        "target_ongoing_requests": 4,
        "upscale_delay_s": 5.0,
        "downscale_delay_s": 60.0,
        "look_back_period_s": 30.0,
        "policy": {
            "policy_function": "bigmodel.runtime.serving.autoscaling:TokenAutoscalingPolicy",
            "policy_kwargs": {"target_pending_tokens": 8192},
        },
    }
