"""The wire contract: every name and number that crosses a process boundary, in one place.

The operator writes these into pods, Services, Ray job submissions and Serve configs; the runtime inside a Ray pod
reads them back; the chart, dashboards and tests select on them. Changing one here changes it for all of them, so
this module imports nothing (no pydantic, no Kubernetes client, no Ray): any process can afford it.

To add a label to every Ray pod of both kinds, change `builders.naming.labels`, which builds them from these keys.
"""

from __future__ import annotations

from typing import Literal

# The API.
GROUP = "bigmodel.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
JOB_KIND = "BigModelJob"
SERVICE_KIND = "BigModelService"
OwnerKind = Literal["BigModelJob", "BigModelService"]
PLURALS: dict[OwnerKind, str] = {"BigModelJob": "bigmodeljobs", "BigModelService": "bigmodelservices"}
# Kopf's finalizer and its progress annotations live under the API group too.
FINALIZER = f"{GROUP}/finalizer"

# Labels of every child object. The `app.kubernetes.io` ones are the recommended labels dashboards group by.
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
APP_NAME = "bigmodel"
OPERATOR_NAME = "bigmodel-operator"
JOB_LABEL = f"{GROUP}/job"
SERVICE_LABEL = f"{GROUP}/service"
OWNER_LABEL: dict[OwnerKind, str] = {"BigModelJob": JOB_LABEL, "BigModelService": SERVICE_LABEL}
CLUSTER_LABEL = f"{GROUP}/cluster"
GENERATION_LABEL = f"{GROUP}/generation"
ROLE_LABEL = f"{GROUP}/role"
WORKER_INDEX_LABEL = f"{GROUP}/worker-index"
OWNER_UID_LABEL = f"{GROUP}/owner-uid"
"""The owner's uid on every pod: a cluster's NetworkPolicy selects its own pods by it, so a later resource of the
same name (whose old pods may still be terminating) is never let into the cluster, nor lets them in."""
SERVE_PROXY_LABEL = f"{GROUP}/serve-proxy"
""""true" on every pod of a BigModelService's cluster (head and workers): each may run a Serve proxy, and the
Service clients call selects them by it; their readiness (the proxy's health) decides which take traffic."""
Role = Literal["head", "worker"]

# Annotations on child objects: what they were built from.
SPEC_GENERATION_ANNOTATION = f"{GROUP}/spec-generation"
MODEL_SPEC_ANNOTATION = f"{GROUP}/model-spec"
"""A job's pods: digest of what shapes the model, which cannot change under a job that started."""
RUN_SPEC_ANNOTATION = f"{GROUP}/run-spec"
"""A job's pods: digest of what shapes the run; a change rebuilds the cluster."""
CLUSTER_SPEC_ANNOTATION = f"{GROUP}/cluster-spec"
"""A service's pods: digest of what only a new cluster can change."""
GCS_FAULT_TOLERANCE_ANNOTATION = f"{GROUP}/gcs-fault-tolerance"
"""A service's pods built with GCS fault tolerance ("redis"): the cluster's state outlives its head, so a lost head is
re-created in place instead of rebuilding the cluster. Read from the pods, not the operator's settings: a cluster made
before Redis was configured has no state to come back to."""
RESTARTS_ANNOTATION = f"{GROUP}/restarts"
"""A job's pods: its restarts when the pod was made. With the next, a status write that failed (or an operator killed
mid-pass) loses no count: the next pass reads them back from the pods."""
WORKERS_REPLACED_ANNOTATION = f"{GROUP}/workers-replaced"
"""A job's pods: its worker replacements when the pod was made."""
REPLACES_ANNOTATION = f"{GROUP}/replaces"
"""A job's replacement worker pod: the failed pod it replaces, which is deleted only once its replacement exists."""

# Gang schedulers: what a job's pods and PodGroup say to Kueue or Volcano (README, "Gang scheduling").
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
"""Kueue: the LocalQueue a pod is admitted through."""
KUEUE_POD_GROUP_LABEL = "kueue.x-k8s.io/pod-group-name"
"""Kueue: the pod group (and the name of its Workload) a pod belongs to; admitted all together or not at all."""
KUEUE_POD_GROUP_TOTAL_COUNT_ANNOTATION = "kueue.x-k8s.io/pod-group-total-count"
"""Kueue: how many pods the group has; Kueue creates its Workload only once that many exist."""
KUEUE_RETRIABLE_IN_GROUP_ANNOTATION = "kueue.x-k8s.io/retriable-in-group"
"""Kueue: "false" ends the group (quota and the pods' finalizers released) once none of its pods runs or waits."""
KUEUE_ADMISSION_GATE = "kueue.x-k8s.io/admission"
"""Kueue's webhook puts this scheduling gate on each pod of a queue; Kueue removes it when the group is admitted."""
VOLCANO_SCHEDULER = "volcano"
"""schedulerName of the pods Volcano schedules."""
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"
"""Volcano: the PodGroup a pod belongs to; its pods are scheduled once the group's minMember fit."""
VOLCANO_GROUP = "scheduling.volcano.sh"
VOLCANO_VERSION = "v1beta1"
VOLCANO_API_VERSION = f"{VOLCANO_GROUP}/{VOLCANO_VERSION}"
"""Volcano's PodGroup API."""

# Ports of a Ray pod.
RAY_GCS_PORT = 6379
RAY_DASHBOARD_PORT = 8265
RAY_CLIENT_PORT = 10001
RAY_AGENT_PORT = 52365
PROGRESS_PORT = 8270
"""A job's driver serves its training progress here, on the head."""
SERVE_PORT = 8000
"""A service's Serve proxies answer inference requests here, on the head and on every worker pod with a replica."""
SERVE_HEALTH_PATH = "/-/healthz"
"""A Serve proxy's own health route: 200 once it knows the routes (and, off the head, a running replica), 503 while
its node drains (ray/serve/_private/proxy.py, proxy_router.py)."""

# Environment of every Ray container.
POD_IP_ENV = "POD_IP"
POD_NAME_ENV = "POD_NAME"
RAY_HEAD_ADDRESS_ENV = "RAY_HEAD_ADDRESS"
OWNER_ENV: dict[OwnerKind, str] = {"BigModelJob": "BIGMODEL_JOB", "BigModelService": "BIGMODEL_SERVICE"}
RAY_USAGE_STATS_ENV = "RAY_USAGE_STATS_ENABLED"
RAY_AUTH_MODE_ENV = "RAY_AUTH_MODE"
RAY_AUTH_TOKEN_ENV = "RAY_AUTH_TOKEN"
RAY_AUTH_TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
# How the GCS of a cluster the operator makes notices a lost node: a health check every second, and five misses (a
# busy node may lag a few) in a row.
RAY_HEALTH_CHECK_PERIOD_MS = 1000
RAY_HEALTH_CHECK_FAILURES = 5
RAY_DRAIN_TIMEOUT_ENV = "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"
"""How long `ray start` keeps its node draining on SIGTERM before it kills the node's processes."""
RAY_TRAIN_PREEMPTION_POLL_ENV = "RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"
"""How often Ray Train looks for draining nodes under its workers."""
SERVE_WORKER_PROXY_PORT_ENV = "RAY_SERVE_WORKER_PROXY_HTTP_PORT"
"""The port a Serve proxy on a worker node binds (ray/serve/_private/constants.py; proxy.py applies it off the head
only). A service's workers set it to SERVE_PORT, which their pods declare."""

# GCS fault tolerance of a service's cluster: the head's GCS keeps its tables in an external Redis, so a re-created
# head finds the cluster (its nodes, actors, Serve's controller and applications) where it left it.
RAY_REDIS_ADDRESS_ENV = "RAY_REDIS_ADDRESS"
"""Read by `ray start --head` (ray/_private/node.py): host:port, or redis:// / rediss:// (TLS) URL."""
REDIS_PASSWORD_ENV = "BIGMODEL_REDIS_PASSWORD"
"""The Redis password on the head, from the cluster's Secret; `ray start` takes it only as --redis-password, which
the head's command gives as $(BIGMODEL_REDIS_PASSWORD) so that the pod spec never holds it."""
RAY_STORAGE_NAMESPACE_ENV = "RAY_external_storage_namespace"
"""The key prefix of one cluster's tables in Redis (RayConfig external_storage_namespace)."""
RAY_GCS_RECONNECT_TIMEOUT_ENV = "RAY_gcs_rpc_server_reconnect_timeout_s"
"""How long every Ray process of a worker pod (raylet, Serve proxy, replicas) waits for the GCS to come back before
it exits (RayConfig gcs_rpc_server_reconnect_timeout_s, 60 s by default)."""
GCS_RECONNECT_TIMEOUT_S = 600
"""A worker's wait for a re-created head: the old head pod's grace period (60 s) and Ray's stop, the new pod's
scheduling, an image pull on a fresh node (minutes for a multi-GB runtime image) and `ray start`. Until then the
workers keep serving; a head that is not back by then costs the cluster, which the operator rebuilds (KubeRay sets
600 s too)."""
GCS_REDIS_SECRET_KEY = "password"
"""The key of a cluster's Redis password Secret."""
# A cluster's Ray token: one Secret per cluster generation, owned by the resource.
TOKEN_SECRET_KEY = "token"
BEARER_PREFIX = "Bearer "

# The Ray job that trains a BigModelJob, and what its driver reads and writes.
JOB_ENTRYPOINT = "python -m bigmodel.runtime.job_entrypoint"
MANIFEST_ENV = "BIGMODEL_JOB_MANIFEST"
"""The job (name, namespace, uid, spec) as JSON, in the driver's environment."""
STORAGE_ENV = "BIGMODEL_CHECKPOINT_STORAGE"
"""Where checkpoints go, in every training process's environment (user loops read it)."""
PROGRESS_PORT_ENV = "BIGMODEL_PROGRESS_PORT"
PROGRESS_LINGER_ENV = "BIGMODEL_PROGRESS_LINGER_S"
PROGRESS_INTERVAL_ENV = "BIGMODEL_PROGRESS_INTERVAL_S"
PROGRESS_RECORDER_ENV = "BIGMODEL_PROGRESS_RECORDER"
"""The name of the run's progress actor, in every training process's environment: a user loop's
`bigmodel.runtime.user_loop.report` finds the actor by it."""
PROGRESS_RECORDER_NAMESPACE = "bigmodel"
"""The Ray namespace of the progress actors: the driver's and the workers' own namespaces need not be the same."""
# Keys of the metrics a user loop reports through `ray.train.report` that the driver reads its progress from.
STEP_METRIC = "step"
EPOCH_METRIC = "epoch"
TOTAL_STEPS_METRIC = "total_steps"
EPOCHS_METRIC = "epochs"
FAILURE_MARKER = "training failed: "
"""The driver starts the one line that says why training failed with this; the operator quotes that line."""
CANNOT_RUN_MARKER = "training cannot run: "
"""...or with this, when no rebuilt cluster could do better (storage that takes no write, a loop that cannot be
imported, a workload that does not fit its data): the operator then fails the job at once instead of spending its
restarts."""
RAY_JOB_METADATA_KEYS = (JOB_LABEL, f"{GROUP}/namespace", GENERATION_LABEL)
"""Metadata of a Ray job submission: the job, its namespace and the cluster generation it runs on."""

# The Serve application of a BigModelService.
SERVE_APP_IMPORT_PATH = "bigmodel.runtime.serving.app:build"
SERVE_DEPLOYMENT_NAME = "Model"
AUTOSCALING_POLICY_IMPORT_PATH = "bigmodel.runtime.serving.autoscaling:TokenAutoscalingPolicy"
"""The deployment's autoscaling policy: a class, since Serve passes a config's policy_kwargs to a class only. Serve's
controller imports it, so of our code it imports this module alone."""
# The custom metrics a replica reports to Serve's autoscaler (ModelServer.record_autoscaling_stats); a replica of a
# model that does not generate reports none.
PENDING_TOKENS_METRIC = "pending_tokens"
"""Tokens the replica's engine has yet to generate for the sequences it runs and queues."""
RUNNING_SEQUENCES_METRIC = "running_sequences"
WAITING_SEQUENCES_METRIC = "waiting_sequences"
API_KEYS_ENV = "BIGMODEL_API_KEYS"
"""The API keys of a service with spec.auth, one a line, in every Ray container's environment (from its Secret)."""
MAX_BODY_BYTES_ENV = "BIGMODEL_MAX_BODY_BYTES"
"""spec.limits.maxBodyBytes, for the Serve proxy's guard, which refuses larger bodies before reading them."""
MAX_IN_FLIGHT_ENV = "BIGMODEL_MAX_IN_FLIGHT"
"""Requests each Serve proxy's guard lets in at once (its own queue and every replica's room at most); more are
answered 503 before Serve's routing spends any time on them."""
RETRY_AFTER_SECONDS = 1
"""What a 503 for a full queue tells the client to wait: about one batch's time on a busy replica, rounded up to the
whole second the header can say."""
PROXY_REQUIRES_KEYS_ENV = "BIGMODEL_PROXY_REQUIRES_KEYS"
"""1 for a service with spec.auth: the Serve proxy's guard refuses a request without a valid key before it reads a
byte of its body, so that strangers cannot fill a proxy's memory with bodies the replicas would refuse anyway."""
PROXY_CALLBACK_ENV = "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"
"""Ray Serve's hook that wraps its HTTP proxy in middlewares; read when the proxy starts."""
ROUTER_MAX_BACKOFF_ENV = "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S"
ROUTER_MAX_BACKOFF_S = 0.05
"""How long Serve's router waits at most before it looks again for a replica with room for a queued request. Ray's
0.5 s left a replica idle for up to that long after each batch whenever requests queued (bench.serve_overload: the
replica 40% busy and a third of the throughput at 10x load); a look costs the proxy next to nothing."""
PROXY_GUARD_IMPORT_PATH = "bigmodel.runtime.serving.proxy_guard:middlewares"
CANARY_ROUTE_PREFIX = "/bigmodel-canary"
"""The route of a service's canary application: a proxy sends the canary's share of requests there, the same path
behind it. Not under /-/, so that a request sent there directly counts toward capacity like any other."""
CANARY_APP_SUFFIX = "-canary"
"""A service's canary application is named <service>-canary beside the stable <service>."""
TRAFFIC_PATH = "/-/bigmodel/traffic"
"""On every Serve proxy of a service, for the operator alone (the cluster's Ray token): GET the canary traffic
setting and every proxy's outcomes, PUT a new setting (api/traffic.py)."""
HEALTH_PATHS = ("/v2/health/live", "/v2/health/ready")
"""Open without an API key: Kubernetes probes and load balancers carry none."""
OPENAI_PATHS = frozenset({"/v1/models", "/v1/completions", "/v1/chat/completions"})
"""The OpenAI-compatible endpoints: their errors are in OpenAI's shape, whoever refuses the request (the proxy's guard,
a replica's guard, the app)."""

# Set by the operator itself.
RESERVED_ENV = frozenset(
    {
        POD_IP_ENV,
        POD_NAME_ENV,
        RAY_HEAD_ADDRESS_ENV,
        *OWNER_ENV.values(),
        RAY_USAGE_STATS_ENV,
        RAY_AUTH_MODE_ENV,
        RAY_AUTH_TOKEN_ENV,
        RAY_AUTH_TOKEN_PATH_ENV,
        RAY_DRAIN_TIMEOUT_ENV,
        RAY_TRAIN_PREEMPTION_POLL_ENV,
        SERVE_WORKER_PROXY_PORT_ENV,
        RAY_REDIS_ADDRESS_ENV,
        REDIS_PASSWORD_ENV,
        RAY_STORAGE_NAMESPACE_ENV,
        RAY_GCS_RECONNECT_TIMEOUT_ENV,
        API_KEYS_ENV,
        MAX_BODY_BYTES_ENV,
        MAX_IN_FLIGHT_ENV,
        PROXY_REQUIRES_KEYS_ENV,
        PROXY_CALLBACK_ENV,
        ROUTER_MAX_BACKOFF_ENV,
    }
)
"""What the operator sets in Ray containers; a spec's env may not name them (it would override them: Ray's token
auth, every Ray process of a cluster reading the cluster's token from its Secret in RAY_AUTH_TOKEN, and a service's
API keys and the guard of its Serve proxy included)."""
