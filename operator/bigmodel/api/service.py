"""BigModelService: a trained model served over HTTP by Ray Serve, autoscaled in replicas and in worker pods."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field, model_validator

from bigmodel.api.common import Model, NodeGroup, ObjectMeta, ObservedStatus, RayClusterSpec
from bigmodel.api.wire import API_VERSION


class ModelSource(Model):
    """Which model to serve: exactly one of jobName or uri."""

    job_name: str | None = Field(
        None,
        min_length=1,
        description="A BigModelJob in the same namespace; its exported model is served once the job Succeeded.",
    )
    uri: str | None = Field(
        None,
        min_length=1,
        description=(
            "A model directory exported by a job, or a Hugging Face causal LM (config.json, *.safetensors weights, "
            "tokenizer files): an object-store URI (s3://, gs://) or a path."
        ),
    )
    volume_claim_name: str | None = Field(
        None,
        min_length=1,
        description=(
            "A PersistentVolumeClaim that holds uri (an absolute path), mounted read-only there. A jobName source "
            "mounts its job's checkpoint volume by itself."
        ),
    )
    name: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description="The model name in request URLs (/v2/models/<name>/infer); defaults to the resource name.",
    )

    # `name` may accompany either source, so minProperties/maxProperties cannot express the rule; oneOf with
    # `required` branches is the structural-schema way to say "exactly one of", and CEL gives the readable message.
    model_config = Model.model_config | {
        "json_schema_extra": {
            "oneOf": [{"required": ["jobName"]}, {"required": ["uri"]}],
            "x-kubernetes-validations": [
                {"rule": "has(self.jobName) != has(self.uri)", "message": "set exactly one of jobName or uri"},
                {
                    "rule": "!has(self.volumeClaimName) || (has(self.uri) && self.uri.startsWith('/'))",
                    "message": "volumeClaimName needs uri to be an absolute path on that volume",
                },
            ],
        }
    }

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        if (self.job_name is None) == (self.uri is None):
            found = "both" if self.job_name is not None else "neither"
            raise ValueError(f"set exactly one of jobName or uri (found: {found})")
        if self.volume_claim_name is not None and not (self.uri or "").startswith("/"):
            raise ValueError("volumeClaimName needs uri to be an absolute path on that volume")
        return self


# A full batch (Batching.max_batch_size's default, 32 sequences) with 128 tokens left to generate each.
DEFAULT_TARGET_PENDING_TOKENS = 32 * 128


class ReplicaScaling(Model):
    """How Ray Serve scales the model's replicas with load."""

    min: int = Field(1, ge=0, le=1024, description="Fewest replicas; 0 lets an idle service scale to zero.")
    max: int = Field(4, ge=1, le=1024, description="Most replicas.")
    target_ongoing_requests: float = Field(
        2.0, gt=0, le=10000, description="Requests in flight per replica that the autoscaler aims for."
    )
    target_pending_tokens: int = Field(
        DEFAULT_TARGET_PENDING_TOKENS,
        ge=1,
        le=1 << 30,
        description=(
            "Generative models: tokens a replica has yet to generate, for the requests it runs and queues, that the "
            "autoscaler aims for; each request counts its max_tokens less what it has generated (prompts do not "
            "count: a prompt is prefilled in one pass). The service gets as many replicas as these tokens ask for or "
            "as targetOngoingRequests asks for, whichever is more, so that a few long generations add replicas that "
            f"counting requests would not. The default, {DEFAULT_TARGET_PENDING_TOKENS}, is a full batch of 32 "
            "sequences with 128 tokens left each: seconds of work for a replica on a GPU. Models that do not generate "
            "scale on requests alone."
        ),
    )
    upscale_delay_seconds: float = Field(
        5.0, ge=0, le=3600, description="How long load must stay above the target before replicas are added."
    )
    downscale_delay_seconds: float = Field(
        60.0, ge=0, le=86400, description="How long load must stay below the target before replicas are removed."
    )
    look_back_seconds: float = Field(
        30.0,
        ge=1,
        le=3600,
        description=(
            "The window of load the autoscaler averages (Serve's look_back_period_s, like Knative's stable window): "
            "shorter follows a burst and its end sooner, longer rides out spikes."
        ),
    )

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [{"rule": "self.min <= self.max", "message": "min must not exceed max"}]
        }
    }

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ReplicaScaling:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class ReplicaResources(Model):
    """Ray resources of one Serve replica. Fractions are allowed: several replicas may share one GPU or core."""

    cpu: float = Field(1.0, gt=0, le=1024, description="CPU cores reserved by each replica in Ray.")
    gpu: float = Field(0.0, ge=0, le=16, description="GPUs reserved by each replica in Ray; 0.5 shares a GPU.")


class ServiceWorkerGroup(NodeGroup):
    """The Ray worker pods that host the replicas; the operator scales them between minReplicas and maxReplicas."""

    min_replicas: int = Field(1, ge=0, le=1024, description="Fewest worker pods.")
    max_replicas: int = Field(4, ge=1, le=1024, description="Most worker pods.")
    idle_timeout_seconds: int = Field(
        300, ge=10, le=86400, description="How long a worker pod with no replicas is kept before it is removed."
    )
    max_surge: int = Field(
        1,
        ge=0,
        le=64,
        description=(
            "Worker pods allowed above maxReplicas while Serve rolls the replicas to a new model or starts a canary's "
            "(spec.rollout), so that new replicas start before old ones stop (no dropped requests at full size). 0: "
            "old replicas stop first, and a canary at full size waits for room."
        ),
    )

    model_config = NodeGroup.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "self.minReplicas <= self.maxReplicas", "message": "minReplicas must not exceed maxReplicas"}
            ]
        }
    }

    @model_validator(mode="after")
    def _min_not_above_max(self) -> ServiceWorkerGroup:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"minReplicas ({self.min_replicas}) must not exceed maxReplicas ({self.max_replicas})")
        return self


class Batching(Model):
    """Requests grouped into one forward pass, trading a little latency for throughput."""

    max_batch_size: int = Field(
        32,
        ge=1,
        le=65536,
        description=(
            "Most requests in one batch. For a generative model, the most sequences one replica generates together: "
            "requests join its running batch at the next token and leave it when done (continuous batching)."
        ),
    )
    wait_timeout_ms: int = Field(
        10,
        ge=0,
        le=60000,
        description=(
            "Longest wait for a batch to fill, in milliseconds; 0 disables waiting. Generative models never wait: a "
            "request joins the running batch at once."
        ),
    )
    max_cached_tokens: int = Field(
        65536,
        ge=64,
        le=1 << 24,
        description=(
            "Generative models: tokens the KV cache of one replica may hold. A request reserves its prompt and "
            "max_tokens when it joins the batch and waits while they do not fit; one that could never fit is "
            "answered 400."
        ),
    )


_PRESERVED: dict[str, Any] = {"x-kubernetes-preserve-unknown-fields": True}


class NetworkPeer(Model):
    """A NetworkPolicyPeer, passed through to the service's NetworkPolicy."""

    pod_selector: dict[str, Any] | None = Field(
        None,
        description="A LabelSelector of pods (of the service's namespace, unless with namespaceSelector).",
        json_schema_extra=_PRESERVED,
    )
    namespace_selector: dict[str, Any] | None = Field(
        None, description="A LabelSelector of namespaces; {} is every namespace.", json_schema_extra=_PRESERVED
    )
    ip_block: dict[str, Any] | None = Field(
        None, description="An IPBlock: cidr and except, for callers outside the cluster.", json_schema_extra=_PRESERVED
    )

    @model_validator(mode="after")
    def _names_someone(self) -> NetworkPeer:
        if self.pod_selector is None and self.namespace_selector is None and self.ip_block is None:
            raise ValueError("a peer needs podSelector, namespaceSelector or ipBlock")
        return self


class ServiceAuth(Model):
    """API-key authentication of the model endpoints; the health endpoints stay open for probes."""

    secret_name: str = Field(
        ...,
        min_length=1,
        max_length=253,
        pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$",
        description=(
            "A Secret in the service's namespace whose value holds the accepted keys, one a line. Clients send "
            "`Authorization: Bearer <key>`. The keys reach the Ray pods when they start: a changed key applies to the "
            "next cluster of the service."
        ),
    )
    key: str = Field(
        "api-keys",
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="The data key in that Secret that holds the API keys.",
    )


# A request body is JSON of a few instances; 16 MiB is thousands of 64-value rows or a long prompt, while a body this
# size is still cheap to hold for each request the proxy has in flight.
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024


class ServiceLimits(Model):
    """Bounds on each request and on the queue, so that overload is answered with errors instead of crashes."""

    max_body_bytes: int = Field(
        DEFAULT_MAX_BODY_BYTES,
        ge=1024,
        le=1024**3,
        description=(
            "Largest request body in bytes; a larger one is answered 413 before it is read (chunked bodies when they "
            "pass it). The default, 16 MiB, holds thousands of instances; a Serve proxy (on the head, and on each "
            "worker pod with a replica) holds each body in memory while its request is in flight, so this times "
            "the requests one proxy lets in (maxQueuedRequests plus the room of replicas.max replicas) bounds its "
            "memory."
        ),
    )
    timeout_seconds: float = Field(
        60.0,
        gt=0,
        le=3600,
        description=(
            "Longest a request may take, counted from the Serve proxy receiving it, queueing included; a longer one "
            "is answered 504 and its request cancelled."
        ),
    )
    max_queued_requests: int = Field(
        100,
        ge=1,
        le=100000,
        description=(
            "Requests that may wait for a free replica in each Serve proxy (beyond those the replicas are already "
            "running); more are answered 503 with Retry-After at once. Per proxy: the service runs one on the head "
            "and one on each worker pod with a replica, and the Service spreads connections over them, so the whole "
            "service queues up to this times its proxies."
        ),
    )


class Rollout(Model):
    """How a new model version takes over: at once (Serve rolls the replicas to it), or first as a canary beside
    the version serving, judged on its answers, then promoted or rolled back by itself."""

    canary_percent: int | None = Field(
        None,
        ge=1,
        le=99,
        description=(
            "Percent of the requests a new model version takes as a canary, beside the version serving, before it "
            "replaces it. The canary runs as a second Serve application in the same cluster with replicas of its "
            "own; every Serve proxy sends it exactly this share of the requests it takes. Unset: a new version "
            "replaces the serving one at once (a rolling update). Removing it during a canary promotes the canary."
        ),
    )
    analysis_seconds: int = Field(
        300,
        ge=5,
        le=86400,
        description=(
            "How long the canary takes its share before it is promoted, if its answers were no worse than the "
            "serving version's by then and it answered at least minRequests."
        ),
    )
    min_requests: int = Field(
        100,
        ge=1,
        le=10_000_000,
        description=(
            "Requests the canary must have answered before its answers are judged: neither rolled back nor "
            "promoted on fewer."
        ),
    )
    max_error_rate_increase: float = Field(
        0.01,
        ge=0,
        le=1,
        description=(
            "How much higher the canary's share of server errors (5xx) may be than the serving version's, as a "
            "fraction (0.01: one percentage point); more rolls it back at once."
        ),
    )
    max_latency_ratio: float = Field(
        1.5,
        ge=1,
        le=1000,
        description=(
            "How many times the serving version's p99 latency (to the answer's first byte) the canary's may be; "
            "more rolls it back at once. Differences within 20 ms are not counted: a request path's own noise."
        ),
    )


class BigModelServiceSpec(RayClusterSpec):
    """The desired inference service."""

    model: ModelSource = Field(..., description="The model to serve.")
    replicas: ReplicaScaling = Field(default_factory=ReplicaScaling, description="Serve replica autoscaling.")
    replica_resources: ReplicaResources = Field(
        default_factory=ReplicaResources, description="Ray resources reserved by each replica."
    )
    workers: ServiceWorkerGroup = Field(
        default_factory=ServiceWorkerGroup, description="Ray worker pods that host the replicas."
    )
    head: NodeGroup = Field(default_factory=NodeGroup, description="The Ray head pod (Serve controller and a proxy).")
    batching: Batching = Field(default_factory=Batching, description="Dynamic request batching.")
    serving_from: list[NetworkPeer] | None = Field(
        None,
        description=(
            "Who may call the inference port (8000), as NetworkPolicy peers. Unset: every pod of the service's "
            "namespace; [{namespaceSelector: {}}] opens it to the whole cluster. Ray's own ports are never opened "
            "by it."
        ),
    )
    auth: ServiceAuth | None = Field(
        None, description="API keys the model endpoints require; without it they answer anyone who reaches them."
    )
    limits: ServiceLimits = Field(
        default_factory=ServiceLimits, description="Request size, time and queue bounds of the endpoint."
    )
    rollout: Rollout = Field(
        default_factory=Rollout, description="How a new model version takes over: at once, or as a canary first."
    )

    def uses_gpu(self) -> bool:
        return self.replica_resources.gpu > 0


ServicePhase = Literal["Pending", "Deploying", "Ready", "Upgrading", "Failed"]


class ReplicaCounts(Model):
    """Serve replica counts."""

    desired: int = Field(0, description="Replicas the autoscaler currently wants.")
    running: int = Field(0, description="Replicas running and healthy.")


class ServiceWorkerCounts(Model):
    """Worker pod counts."""

    desired: int = Field(0, description="Worker pods the operator currently wants.")
    ready: int = Field(0, description="Worker pods running and ready.")


class ServedModel(Model):
    """The model being served right now."""

    source: str | None = Field(None, description="Where it was loaded from: the model directory URI or path.")
    version: str | None = Field(None, description="Version of the served model, changed by every upgrade.")


class CanaryArm(Model):
    """One version's answers during a canary, summed over the Serve proxies."""

    requests: int = Field(0, description="Requests answered.")
    errors: int = Field(0, description="Of them, server errors (5xx).")
    p99: str | None = Field(None, description="99th percentile latency to the answer's first byte, bucketed.")


CanaryPhase = Literal["Deploying", "Analyzing", "Promoting", "Removing"]
CanaryResult = Literal["Promoted", "RolledBack", "Cancelled"]


class Canary(Model):
    """A model version on trial beside the serving one (spec.rollout.canaryPercent)."""

    version: str = Field(..., description="The canary's model version.")
    source: str = Field(..., description="Where the canary's model is.")
    percent: int = Field(..., description="Percent of the requests it takes.")
    phase: CanaryPhase = Field(
        ...,
        description=(
            "Deploying its replicas, Analyzing its answers, Promoting (the serving application rolls to it), or "
            "Removing (its application goes once no proxy sends it requests)."
        ),
    )
    result: CanaryResult | None = Field(None, description="Promoted, RolledBack or Cancelled, once decided.")
    reason: str | None = Field(None, description="Why it was promoted, rolled back or cancelled.")
    started: datetime = Field(..., description="When it was started.")
    analysis_started: datetime | None = Field(None, description="When it began taking its share of requests.")
    reported: datetime | None = Field(None, description="When the Serve proxies last reported its answers.")
    decided: datetime | None = Field(None, description="When it was promoted, rolled back or cancelled.")
    stable: CanaryArm = Field(default_factory=CanaryArm, description="The serving version's answers meanwhile.")
    canary: CanaryArm = Field(default_factory=CanaryArm, description="The canary's answers.")


class VersionTraffic(Model):
    """A model version serving, and its share of the requests."""

    version: str = Field(..., description="The model version.")
    source: str | None = Field(None, description="Where its model is.")
    percent: int = Field(..., description="Percent of the requests it takes.")


class ServiceCluster(Model):
    """One Ray cluster of the service (KubeRay's activeServiceStatus / pendingServiceStatus)."""

    name: str = Field(..., description="The cluster's name; its pods are <name>-head and <name>-w<i>.")
    generation: int = Field(..., ge=0, description="Its generation, the number at the end of its name.")
    application: str | None = Field(
        None,
        description="Status of the Serve application on it as Ray reports it: DEPLOYING, RUNNING, DEPLOY_FAILED...",
    )


class PendingCluster(ServiceCluster):
    """A new cluster built for a cluster-shape change; it takes the traffic once its application is RUNNING."""

    started: datetime = Field(..., description="When it was started; it is given up if not serving 15 minutes later.")


class RetiringCluster(ServiceCluster):
    """The cluster that served before an upgrade, kept so requests already routed to it complete."""

    delete_after: datetime = Field(..., description="When it is deleted.")


class BigModelServiceStatus(ObservedStatus):
    """Where the service is, computed by the operator."""

    phase: ServicePhase = Field("Pending", description="Pending, Deploying, Ready, Upgrading or Failed.")
    replicas: ReplicaCounts = Field(default_factory=ReplicaCounts, description="Serve replica counts.")
    replicas_ready: str = Field("0/0", description="running/desired replicas, for kubectl get.")
    workers: ServiceWorkerCounts = Field(default_factory=ServiceWorkerCounts, description="Worker pod counts.")
    workers_ready: str = Field("0/0", description="ready/desired worker pods, for kubectl get.")
    url: str | None = Field(None, description="In-cluster base URL of the HTTP endpoint.")
    model: ServedModel = Field(default_factory=ServedModel, description="The model being served.")
    serving: ServiceCluster | None = Field(None, description="The Ray cluster behind the Service, taking the traffic.")
    pending: PendingCluster | None = Field(
        None, description="A new cluster being built for a cluster-shape change; it takes the traffic when ready."
    )
    retiring: RetiringCluster | None = Field(
        None, description="The previous cluster, deleted at deleteAfter so that requests in flight complete."
    )
    failed_cluster_spec: str | None = Field(
        None, description="Digest of a cluster shape whose upgrade failed; it is not retried until the spec changes."
    )
    canary: Canary | None = Field(None, description="A new model version on trial beside the serving one.")
    versions: list[VersionTraffic] = Field(
        default_factory=list, description="The model versions serving and their shares of the requests."
    )
    traffic: str | None = Field(None, description="The versions serving and their shares, for kubectl get -o wide.")
    rolled_back_version: str | None = Field(
        None,
        description=(
            "A model version whose canary was rolled back: it is not tried again until spec.model names another."
        ),
    )


class BigModelService(Model):
    """A model served over HTTP."""

    api_version: Literal["bigmodel.dev/v1alpha1"] = Field(API_VERSION, description="bigmodel.dev/v1alpha1")
    kind: Literal["BigModelService"] = Field("BigModelService", description="BigModelService")
    metadata: ObjectMeta
    spec: BigModelServiceSpec
    status: BigModelServiceStatus | None = None
