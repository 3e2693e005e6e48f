"""Types shared by both resources: resources, scheduling, conditions, object metadata."""

from __future__ import annotations

import re
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.alias_generators import to_camel

from bigmodel.api import wire
from bigmodel.version import RUNTIME_IMAGE

# Kubernetes resource.Quantity as the API server's own schema spells it, minus the sign: a pod never asks for a
# negative amount, and leaving "-" out lets the CRD reject what the Python model rejects.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)
_SUFFIX_FACTORS = {
    **{
        suffix: Decimal(1000) ** power
        for power, suffix in zip((-3, -2, -1, 1, 2, 3, 4, 5, 6), "numkMGTPE", strict=True)
    },
    **{f"{suffix}i": Decimal(1024) ** power for power, suffix in enumerate("KMGTPE", start=1)},
}
_NUMBER_AND_SUFFIX = re.compile(r"^\+?(?P<number>[0-9.]+(?:[eE][+-]?[0-9.]+)?)(?P<suffix>[KMGTPE]i|[numkMGTPE])?$")


def quantity_value(value: int | str) -> Decimal:
    """The number a Kubernetes quantity stands for: 500m -> 0.5, 8Gi -> 8589934592, 1e3 -> 1000.

    Here rather than the Kubernetes client's parser, so that code in a Ray pod needs no Kubernetes client to size itself.
    """
    match = _NUMBER_AND_SUFFIX.match(str(value))
    if match is None or not _QUANTITY.match(str(value)):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 2, 500m, 8Gi)")
    return Decimal(match["number"]) * _SUFFIX_FACTORS.get(match["suffix"] or "", Decimal(1))


class Model(BaseModel):
    """Base of every API type: camelCase on the wire, unknown fields rejected, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The manifest form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def _check_quantity(value: int | float | str) -> int | str:
    if isinstance(value, bool):
        raise ValueError("must be a Kubernetes quantity such as 2, 500m or 8Gi, not a boolean")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        # The CRD types a quantity as integer-or-string, so the API server refuses 0.5; say how to write it.
        if isinstance(value, float):
            if not value.is_integer():
                raise ValueError(
                    f'a fractional quantity must be a string, such as "{value}" or "{round(value * 1000)}m"'
                )
            return int(value)
        return value
    if value.startswith("-"):
        raise ValueError("must not be negative")
    if not _QUANTITY.match(value):
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 2, 500m, 8Gi)")
    return value


Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN}),
]

_GPU_KEYS = ("nvidia.com/gpu", "gpus", "nvidia.com/gpus", "amd.com/gpu")


class Resources(Model):
    """Compute for one pod (one Ray node). Requests equal limits so GPU nodes are not overcommitted."""

    cpu: Quantity = Field("1", description="CPU cores for the pod, as a Kubernetes quantity (2, 500m).")
    memory: Quantity = Field("4Gi", description="Memory for the pod, as a Kubernetes quantity (8Gi).")
    gpu: int = Field(
        0,
        ge=0,
        le=16,
        description="Whole GPUs for the pod, requested as nvidia.com/gpu. 0 trains on CPU.",
    )

    @model_validator(mode="before")
    @classmethod
    def _gpu_has_one_name(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in _GPU_KEYS:
                if key in data:
                    raise ValueError(f"GPUs are requested with the field 'gpu' (an integer), not {key!r}")
        return data

    @field_validator("cpu", "memory", mode="before")
    @classmethod
    def _quantity(cls, value: Any) -> Any:
        if isinstance(value, (int, float, str)):
            return _check_quantity(value)
        raise ValueError(f"must be a Kubernetes quantity such as 2, 500m or 8Gi, not {type(value).__name__}")

    def ray_cpus(self) -> int:
        """The CPUs Ray is told the pod has: Ray schedules whole CPUs, and a pod with less than one core still runs
        one worker."""
        return max(1, int(quantity_value(self.cpu)))

    @field_validator("gpu", mode="before")
    @classmethod
    def _whole_gpus(cls, value: Any) -> Any:
        if isinstance(value, str) or isinstance(value, float):
            raise ValueError("must be a whole number of GPUs (0, 1, 8), not a quantity string or fraction")
        return value


class Toleration(Model):
    """A Kubernetes toleration, passed to the pods as written."""

    key: str | None = Field(None, description="Taint key the toleration applies to; empty matches all keys.")
    operator: Literal["Exists", "Equal"] | None = Field(None, description="Exists or Equal (default Equal).")
    value: str | None = Field(None, description="Taint value to match when the operator is Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(None, ge=0, description="How long a NoExecute taint is tolerated.")


class Scheduling(Model):
    """Where the pods may run; passed through to the pod specs."""

    node_selector: dict[str, str] = Field(default_factory=dict, description="Node labels the pods require.")
    tolerations: list[Toleration] = Field(default_factory=list, description="Taints the pods tolerate.")
    affinity: dict[str, Any] | None = Field(
        None,
        description="A Kubernetes Affinity object (nodeAffinity, podAffinity, podAntiAffinity), passed through.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    priority_class_name: str | None = Field(None, description="PriorityClass of the pods.")


class NodeGroup(Scheduling):
    """Pods of one role in the Ray cluster."""

    resources: Resources = Field(default_factory=Resources, description="Compute for each pod of this group.")


ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
_OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
# One message each, said alike by the Python models and the CRD's CEL rules.
_ONE_KEY_REF = "set exactly one of secretKeyRef or configMapKeyRef"
_ONE_OBJECT_REF = "set exactly one of secretRef or configMapRef"
_VALUE_OR_SOURCE = "set value or valueFrom, not both"
_RefT = TypeVar("_RefT")


def _secret_or_config_map(secret: _RefT | None, config_map: _RefT | None, message: str) -> tuple[_RefT, str]:
    """The one reference that is set, and the kind of object it names; ValueError(message) unless exactly one is."""
    if secret is not None and config_map is None:
        return secret, "Secret"
    if config_map is not None and secret is None:
        return config_map, "ConfigMap"
    raise ValueError(message)


class KeySelector(Model):
    """One key of a Secret or ConfigMap in the resource's namespace, as Kubernetes' SecretKeySelector spells it."""

    name: str = Field(..., min_length=1, max_length=253, pattern=_OBJECT_NAME_PATTERN, description="Object name.")
    key: str = Field(..., min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$", description="Key in its data.")
    optional: bool | None = Field(
        None, description="Start the pods even when the object or key is missing (the variable is then unset)."
    )


class EnvVarSource(Model):
    """Where a variable's value comes from: a Secret or ConfigMap key, read by the kubelet when the pod starts."""

    secret_key_ref: KeySelector | None = Field(None, description="A key of a Secret.")
    config_map_key_ref: KeySelector | None = Field(None, description="A key of a ConfigMap.")

    model_config = Model.model_config | {
        "json_schema_extra": {
            "minProperties": 1,
            "maxProperties": 1,
            "x-kubernetes-validations": [
                {"rule": "has(self.secretKeyRef) != has(self.configMapKeyRef)", "message": _ONE_KEY_REF}
            ],
        }
    }

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvVarSource:
        _secret_or_config_map(self.secret_key_ref, self.config_map_key_ref, _ONE_KEY_REF)
        return self

    def describe(self) -> str:
        """`Secret 'db' key 'password'`, for messages."""
        ref, kind = _secret_or_config_map(self.secret_key_ref, self.config_map_key_ref, _ONE_KEY_REF)
        return f"{kind} {ref.name!r} key {ref.key!r}"


def _reserved_env_rule() -> dict[str, str]:
    names = ", ".join(f"'{name}'" for name in sorted(wire.RESERVED_ENV))
    return {"rule": f"!(self in [{names}])", "message": "the operator sets this variable itself in every Ray container"}


class EnvVar(Model):
    """An environment variable of every Ray container: a literal value, or one read from a Secret or ConfigMap (values
    live in the pod spec only, never in what is sent to Ray's job API)."""

    name: str = Field(
        ...,
        min_length=1,
        max_length=253,
        pattern=ENV_NAME_PATTERN,
        description="Variable name.",
        json_schema_extra={"x-kubernetes-validations": [_reserved_env_rule()]},
    )
    value: str | None = Field(None, description="Variable value; $(NAME) refers to a variable defined before.")
    value_from: EnvVarSource | None = Field(None, description="Read the value from a Secret or ConfigMap key instead.")

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {"rule": "!has(self.value) || !has(self.valueFrom)", "message": _VALUE_OR_SOURCE},
            ]
        }
    }

    @field_validator("name")
    @classmethod
    def _not_reserved(cls, name: str) -> str:
        if name in wire.RESERVED_ENV:
            raise ValueError(f"{name}: the operator sets this variable itself in every Ray container")
        return name

    @model_validator(mode="after")
    def _value_or_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(_VALUE_OR_SOURCE)
        return self


class ObjectRef(Model):
    """A whole Secret or ConfigMap in the resource's namespace."""

    name: str = Field(..., min_length=1, max_length=253, pattern=_OBJECT_NAME_PATTERN, description="Object name.")
    optional: bool | None = Field(None, description="Start the pods even when the object is missing.")


class EnvFromSource(Model):
    """Every key of a Secret or ConfigMap as a variable, as Kubernetes' EnvFromSource spells it; entries of env win."""

    prefix: str | None = Field(None, pattern=ENV_NAME_PATTERN, description="Prepended to every key.")
    secret_ref: ObjectRef | None = Field(None, description="A Secret.")
    config_map_ref: ObjectRef | None = Field(None, description="A ConfigMap.")

    # prefix may accompany either source: oneOf with required branches says "exactly one", CEL says it readably.
    model_config = Model.model_config | {
        "json_schema_extra": {
            "oneOf": [{"required": ["secretRef"]}, {"required": ["configMapRef"]}],
            "x-kubernetes-validations": [
                {"rule": "has(self.secretRef) != has(self.configMapRef)", "message": _ONE_OBJECT_REF}
            ],
        }
    }

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        _secret_or_config_map(self.secret_ref, self.config_map_ref, _ONE_OBJECT_REF)
        return self

    def describe(self) -> str:
        """`Secret 'db'`, for messages."""
        ref, kind = _secret_or_config_map(self.secret_ref, self.config_map_ref, _ONE_OBJECT_REF)
        return f"{kind} {ref.name!r}"


class RayClusterSpec(Model):
    """What both resources say about the Ray cluster they become, beside their workload."""

    image: str = Field(RUNTIME_IMAGE, description="Container image with Ray, PyTorch and the bigmodel runtime.")
    # Bounded lists: the API server estimates the cost of the items' CEL rules from their largest possible number.
    env: list[EnvVar] = Field(default_factory=list, max_length=256, description="Environment of every Ray container.")
    env_from: list[EnvFromSource] = Field(
        default_factory=list,
        max_length=64,
        description="Secrets and ConfigMaps whose keys become variables of every Ray container.",
    )
    service_account_name: str | None = Field(None, description="ServiceAccount of the Ray pods.")
    image_pull_secrets: list[str] = Field(default_factory=list, description="Secrets to pull the image with.")


class Condition(Model):
    """A standard Kubernetes condition."""

    type: str = Field(..., description="Condition type, such as Ready, Running or ValidationFailed.")
    status: Literal["True", "False", "Unknown"] = Field(..., description="True, False or Unknown.")
    reason: str = Field("", description="One CamelCase word for the last transition.")
    message: str = Field("", description="What happened, for a person.")
    last_transition_time: datetime | None = Field(None, description="When the status last changed.")
    observed_generation: int | None = Field(None, description="The spec generation the condition was computed from.")


class ObservedStatus(Model):
    """What every status carries besides its phase: conditions, the generation they describe, a message."""

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Standard conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    observed_generation: int | None = Field(None, description="The spec generation this status describes.")
    message: str = Field("", description="The latest thing that happened, for a person.")


class ObjectMeta(Model):
    """The part of Kubernetes metadata the operator reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", alias_generator=to_camel, populate_by_name=True)

    name: str = Field(
        ...,
        min_length=1,
        max_length=48,
        pattern=r"^[a-z]([-a-z0-9]*[a-z0-9])?$",
        description="Resource name: starts with a letter and is short enough that child pod and Service names stay valid DNS labels.",
    )
    namespace: str | None = Field(None, description="Namespace of the resource.")
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
