"""What the one controller loop needs to know of a kind of resource: its model, how to observe it, how to decide.

The loop (controller/loop.py) is the same for every kind: read the resource, parse it, observe its pods, Services
and Ray, decide, carry the plan out, record metrics. A kind supplies only what differs; a third kind would be a
module like job_kind.py, registered in handlers.KINDS.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from datetime import datetime
from typing import Any, Generic, TypeVar

from bigmodel.api.common import ObservedStatus
from bigmodel.api.job import BigModelJob
from bigmodel.api.manifests import validation_errors
from bigmodel.api.service import BigModelService
from bigmodel.api.wire import OwnerKind
from bigmodel.controller.clients import Clients
from bigmodel.controller.kube import OWNERS, Resource
from bigmodel.controller.settings import OperatorSettings
from bigmodel.controller.stored_status import stored_status
from bigmodel.reconcile.observed import Children, ClusterObservation
from bigmodel.reconcile.plans import Plan, RayAction

OwnerT = TypeVar("OwnerT", BigModelJob, BigModelService)
SeenT = TypeVar("SeenT", bound=ClusterObservation)
StatusT = TypeVar("StatusT", bound=ObservedStatus)


class Kind(ABC, Generic[OwnerT, SeenT, StatusT]):
    name: OwnerKind
    model: type[OwnerT]
    status_model: type[StatusT]

    @property
    def resource(self) -> Resource:
        return OWNERS[self.name]

    def parse(self, body: dict[str, Any], settings: OperatorSettings) -> tuple[OwnerT | None, list[str]]:
        """The resource with its stored status, or the spec's errors as `field: reason` lines."""
        manifest = {key: body.get(key) for key in ("apiVersion", "kind", "metadata", "spec")}
        errors = [str(error) for error in validation_errors(manifest)]
        if errors:
            return None, errors
        owner = self.model.model_validate(manifest, by_alias=True, by_name=False)
        owner.status = self.stored_status(body)
        errors = [*settings.service_account_errors(owner.spec.service_account_name), *self.check(owner, settings)]
        if errors:
            return None, errors
        return owner, []

    def stored_status(self, body: dict[str, Any]) -> StatusT | None:
        return stored_status(self.status_model, body.get("status"))

    def check(self, owner: OwnerT, settings: OperatorSettings) -> list[str]:
        """Errors the schema cannot see; the kind may also fill in operator defaults here."""
        return []

    @abstractmethod
    async def observe(self, owner: OwnerT, clients: Clients, now: datetime, children: Children) -> SeenT:
        """The kind's whole observation: its pods and Services (listed by the loop) and what it asks of Ray. A Ray
        call that fails is part of what is observed (the head is not reachable), never an error of the pass."""

    @abstractmethod
    def decide(
        self, owner: OwnerT, seen: SeenT, timers: dict[str, datetime], settings: OperatorSettings
    ) -> Plan[StatusT]: ...

    @abstractmethod
    def invalid(
        self, status: StatusT | None, generation: int | None, errors: list[str], now: datetime
    ) -> Plan[StatusT]:
        """The plan of a spec that cannot be used: a condition and an Event, nothing else."""

    def stops_before_deletion(self, status: StatusT | None, seen: ClusterObservation) -> list[RayAction]:
        """Ray calls to make before the resource's pods are deleted with it."""
        return []

    @abstractmethod
    def record(
        self, clients: Clients, owner: OwnerT, plan: Plan[StatusT], now: datetime, created: datetime | None
    ) -> None:
        """Metrics of one pass."""
