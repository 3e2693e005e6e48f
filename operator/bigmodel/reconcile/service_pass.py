"""The frame of one pass over a BigModelService, shared by the pieces of its decision.

A service has up to three Ray clusters, each in a slot of its status: `serving` (behind the Kubernetes Service),
`pending` (built for a cluster-shape change, not yet taking traffic) and `retiring` (the previous serving cluster,
kept a little while for the requests in flight). The pieces that fill the plan:

    service_app.py      the model to serve and the Serve application on each cluster
    service_scaling.py  worker pods that follow Serve's demand
    service_upgrade.py  the slots: the serving cluster kept up, cluster-shape upgrades, traffic, retirement
    service_canary.py   a new model version on trial beside the serving one, its share, its verdict
    service_status.py   replicas, workers, URL, conditions, phase and message
"""

from __future__ import annotations

from datetime import datetime

from bigmodel.api.service import (
    BigModelService,
    BigModelServiceSpec,
    BigModelServiceStatus,
    ServiceCluster,
    ServiceLimits,
)
from bigmodel.api.wire import CLUSTER_SPEC_ANNOTATION, SERVICE_KIND
from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance
from bigmodel.builders.naming import cluster_name
from bigmodel.builders.network_policy import OperatorPeer
from bigmodel.builders.pod import ClaimMount
from bigmodel.reconcile.decision import Decision, digest
from bigmodel.reconcile.plans import Plan
from bigmodel.reconcile.service_observed import ModelSourceView, ServiceObservation

POLL_BUSY_S = 2.0
POLL_READY_S = 3.0
HEAD_RESTARTING = "HeadRestarting"
"""The reason of the Degraded condition while the serving cluster's head is re-created in place."""

ServicePlan = Plan[BigModelServiceStatus]


def cluster_digest(spec: BigModelServiceSpec, claim: ClaimMount | None) -> str:
    """What only a new cluster can change: the pods' image, environment, sizes, identity, volumes and network
    policy."""
    wire = spec.to_wire()
    workers = {
        k: v for k, v in wire["workers"].items() if k not in ("minReplicas", "maxReplicas", "idleTimeoutSeconds")
    }
    shape = {key: wire.get(key) for key in ("image", "env", "serviceAccountName", "imagePullSecrets", "head")}
    # The API keys and the proxy's limits are in the pods' environment, and who may call the inference port is in the
    # cluster's NetworkPolicy. Each counts only when set (limits: when not the defaults), so that services made
    # before these fields keep their digest and are not rebuilt by an operator upgrade.
    optional = {
        "envFrom": bool(spec.env_from),
        "auth": spec.auth is not None,
        "servingFrom": spec.serving_from is not None,
        "limits": spec.limits != ServiceLimits(),
    }
    shape |= {key: wire[key] for key, is_set in optional.items() if is_set}
    return digest(shape | {"workers": workers, "claim": claim})


def model_claim(source: ModelSourceView | None) -> ClaimMount | None:
    """The volume the model is on, mounted read-only where its path says."""
    if source is None or source.claim is None:
        return None
    claim_name, path = source.claim
    return ClaimMount("model", claim_name, path, read_only=True)


class ServicePass(Decision[BigModelService, ServiceObservation, BigModelServiceStatus]):
    """One pass over one service. `busy` asks for the next pass soon: something is starting or changing.
    `head_restart` says why, while the serving cluster's head is being re-created in place (head_recovery.py)."""

    def __init__(
        self,
        service: BigModelService,
        seen: ServiceObservation,
        timers: dict[str, datetime] | None,
        poll_s: float,
        operator: OperatorPeer,
        gcs: GcsFaultTolerance | None = None,
    ) -> None:
        self.source = seen.source if isinstance(seen.source, ModelSourceView) else None
        claim = model_claim(self.source)
        self.digest = cluster_digest(service.spec, claim)
        status = service.status or BigModelServiceStatus()
        super().__init__(
            service,
            seen,
            status,
            claim=claim,
            stamp={CLUSTER_SPEC_ANNOTATION: self.digest},
            timers=timers,
            operator=operator,
            gcs=gcs,
        )
        self.service = service
        self.spec = service.spec
        self.poll_s = poll_s
        self.busy = False
        self.head_restart: str | None = None

    @property
    def busy_poll_s(self) -> float:
        """A service that is changing is looked at every POLL_BUSY_S, and never less often than a Ready one."""
        return min(POLL_BUSY_S, self.poll_s)

    @property
    def active(self) -> int:
        """The serving cluster's generation; the first cluster is generation 0."""
        return self.status.serving.generation if self.status.serving else 0

    @property
    def pending(self) -> int | None:
        return self.status.pending.generation if self.status.pending else None

    @property
    def retiring(self) -> int | None:
        return self.status.retiring.generation if self.status.retiring else None

    def cluster_ref(self, generation: int) -> ServiceCluster:
        return ServiceCluster(
            name=cluster_name(self.service.metadata.name, generation, SERVICE_KIND), generation=generation
        )
