"""Operator settings, from flags or BIGMODEL_* environment variables (the Helm chart sets the latter)."""

from __future__ import annotations

import os

from pydantic import BaseModel, Field, model_validator

from bigmodel.builders.gcs_fault_tolerance import GcsFaultTolerance
from bigmodel.builders.network_policy import DEFAULT_OPERATOR_NAMESPACE, DEFAULT_OPERATOR_POD_LABELS, OperatorPeer


class OperatorSettings(BaseModel):
    namespaces: list[str] = Field(default_factory=list, description="Namespaces to watch; empty watches all.")
    default_storage: str | None = Field(
        None,
        description="Checkpoint storage for jobs that name none: a URI or shared path; <namespace>/<name> is appended.",
    )
    poll_running_s: float = Field(3.0, gt=0, description="How often a running job's Ray state is polled.")
    liveness_port: int | None = Field(8080, description="Port of the /healthz liveness endpoint; None disables it.")
    metrics_port: int | None = Field(9090, description="Port of the Prometheus /metrics endpoint; None disables it.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    peering: str | None = Field(None, description="Kopf peering name for several replicas; None runs standalone.")
    peering_priority: int | None = Field(
        None, description="This replica's peering priority; random when unset, since Kopf pauses replicas that tie."
    )
    allowed_service_accounts: list[str] = Field(
        default_factory=list,
        description="ServiceAccounts a spec may name in serviceAccountName; empty allows any. Whoever can create a "
        "job gets its account's permissions (and cloud credentials) in the Ray pods.",
    )

    volcano: bool = Field(
        False,
        description="Whether jobs may set schedulerName volcano: the chart grants the operator Volcano's PodGroups "
        "only with gangScheduling.volcano, and a job refused here is better than one that fails on a 403.",
    )

    def service_account_errors(self, name: str | None) -> list[str]:
        """Why a spec may not run under ServiceAccount `name` here; [] when it may (or names none: no token)."""
        if name is None or not self.allowed_service_accounts or name in self.allowed_service_accounts:
            return []
        allowed = ", ".join(self.allowed_service_accounts)
        return [f"spec.serviceAccountName: {name!r} is not allowed by this operator (allowed: {allowed})"]

    namespace: str = Field(
        DEFAULT_OPERATOR_NAMESPACE,
        description="The operator's own namespace: its token key's Secret is there, and the clusters' NetworkPolicies "
        "let in its pods from there.",
    )
    pod_labels: dict[str, str] = Field(
        default_factory=lambda: dict(DEFAULT_OPERATOR_POD_LABELS),
        description="Labels of the operator's own pods, which the clusters' NetworkPolicies let in.",
    )
    token_key_secret: str = Field(
        "bigmodel-operator-token-key",
        description="Name of the Secret, in the operator's namespace, holding the key every cluster's Ray token is "
        "derived from; made by the operator on first start.",
    )

    gcs_redis_address: str | None = Field(
        None,
        description="GCS fault tolerance of the services' Ray clusters: the Redis (host:port, redis:// or rediss:// "
        "for TLS) where each cluster's GCS keeps its state, so that a lost head is re-created in place while the "
        "workers serve. None: a lost head rebuilds the cluster.",
    )
    gcs_redis_password_secret: str | None = Field(
        None,
        description="Name of the Secret, in the operator's namespace, holding that Redis's password; required with "
        "gcs_redis_address. The operator copies it into a Secret per cluster, which the head reads.",
    )
    gcs_redis_password_key: str = Field("password", description="The key of the password in that Secret.")

    @model_validator(mode="after")
    def _redis_has_a_password(self) -> OperatorSettings:
        if self.gcs_redis_address and not self.gcs_redis_password_secret:
            raise ValueError(
                "BIGMODEL_GCS_REDIS_PASSWORD_SECRET: required with BIGMODEL_GCS_REDIS_ADDRESS (a Redis without a "
                "password lets whoever reaches it read and rewrite every cluster's state)"
            )
        return self

    def gcs_fault_tolerance(self) -> GcsFaultTolerance | None:
        return GcsFaultTolerance(self.gcs_redis_address) if self.gcs_redis_address else None

    def operator_peer(self) -> OperatorPeer:
        return OperatorPeer(self.namespace, dict(self.pod_labels))

    def storage_for(self, namespace: str, name: str, storage: str | None) -> str | None:
        """A job's checkpoint storage: its own, or <default>/<namespace>/<name>; None when neither exists."""
        if storage is not None or self.default_storage is None:
            return storage
        return f"{self.default_storage.rstrip('/')}/{namespace}/{name}"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> OperatorSettings:
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if env.get("BIGMODEL_NAMESPACES"):
            values["namespaces"] = [n.strip() for n in env["BIGMODEL_NAMESPACES"].split(",") if n.strip()]
        if env.get("BIGMODEL_DEFAULT_STORAGE"):
            values["default_storage"] = env["BIGMODEL_DEFAULT_STORAGE"]
        if env.get("BIGMODEL_POLL_RUNNING_S"):
            values["poll_running_s"] = float(env["BIGMODEL_POLL_RUNNING_S"])
        if env.get("BIGMODEL_LIVENESS_PORT"):
            port = env["BIGMODEL_LIVENESS_PORT"]
            values["liveness_port"] = None if port in ("", "0", "off") else int(port)
        if env.get("BIGMODEL_METRICS_PORT"):
            port = env["BIGMODEL_METRICS_PORT"]
            values["metrics_port"] = None if port in ("0", "off") else int(port)
        if env.get("BIGMODEL_LOG_LEVEL"):
            values["log_level"] = env["BIGMODEL_LOG_LEVEL"].upper()
        if env.get("BIGMODEL_PEERING"):
            values["peering"] = env["BIGMODEL_PEERING"]
        if env.get("BIGMODEL_OPERATOR_NAMESPACE"):
            values["namespace"] = env["BIGMODEL_OPERATOR_NAMESPACE"]
        if env.get("BIGMODEL_OPERATOR_POD_LABELS"):
            pairs = (item.split("=", 1) for item in env["BIGMODEL_OPERATOR_POD_LABELS"].split(",") if "=" in item)
            values["pod_labels"] = {key.strip(): value.strip() for key, value in pairs}
        if env.get("BIGMODEL_TOKEN_KEY_SECRET"):
            values["token_key_secret"] = env["BIGMODEL_TOKEN_KEY_SECRET"]
        if env.get("BIGMODEL_PEERING_PRIORITY"):
            values["peering_priority"] = int(env["BIGMODEL_PEERING_PRIORITY"])
        if env.get("BIGMODEL_VOLCANO"):
            values["volcano"] = env["BIGMODEL_VOLCANO"].lower() in ("true", "1")
        for name, field in (
            ("BIGMODEL_GCS_REDIS_ADDRESS", "gcs_redis_address"),
            ("BIGMODEL_GCS_REDIS_PASSWORD_SECRET", "gcs_redis_password_secret"),
            ("BIGMODEL_GCS_REDIS_PASSWORD_KEY", "gcs_redis_password_key"),
        ):
            if env.get(name):
                values[field] = env[name]
        if env.get("BIGMODEL_ALLOWED_SERVICE_ACCOUNTS"):
            accounts = env["BIGMODEL_ALLOWED_SERVICE_ACCOUNTS"].split(",")
            values["allowed_service_accounts"] = [a.strip() for a in accounts if a.strip()]
        return cls.model_validate(values)
