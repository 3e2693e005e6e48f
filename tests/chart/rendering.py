"""Rendering the Helm chart with the real Helm engine (helm-python-sdk), for the chart tests and for others.

Other tiers import `rendered_grants` to compare what the chart grants with what the operator was seen calling.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "charts" / "bigmodel-operator"
RELEASE = "bigmodel"
RELEASE_NAMESPACE = "bigmodel-system"
FULLNAME = f"{RELEASE}-bigmodel-operator"


def render_files(values: dict[str, Any] | None = None) -> dict[str, str]:
    """Template path -> rendered text, NOTES.txt included, as `helm install` would render them."""
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=RELEASE_NAMESPACE, is_install=True)


def render(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every Kubernetes object the chart's templates render (crds/ is installed by Helm as it is, not rendered)."""
    objects: list[dict[str, Any]] = []
    for path, text in sorted(render_files(values).items()):
        if path.endswith("NOTES.txt"):
            continue
        objects.extend(document for document in yaml.safe_load_all(text) if document)
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


@dataclass(frozen=True)
class Grant:
    """One permission a rendered Role or ClusterRole gives: where (None: every namespace), what, and to which names
    (None: any)."""

    namespace: str | None
    group: str
    resource: str
    verb: str
    name: str | None

    def allows(self, namespace: str | None, group: str, resource: str, verb: str, name: str | None) -> bool:
        return (
            (self.group, self.resource, self.verb) == (group, resource, verb)
            and self.namespace in (None, namespace)
            and self.name in (None, name)
        )


def rendered_grants(values: dict[str, Any] | None = None) -> set[Grant]:
    """Every permission the chart's Roles (in their namespace) and ClusterRoles grant, by resource name where a
    rule names them. Every Role and ClusterRole the chart renders is bound to the operator's account."""
    grants: set[Grant] = set()
    for role in render(values):
        if role["kind"] not in ("Role", "ClusterRole"):
            continue
        namespace = role["metadata"].get("namespace") if role["kind"] == "Role" else None
        for rule in role["rules"]:
            grants.update(
                Grant(namespace, group, resource, verb, name)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
                for name in rule.get("resourceNames") or [None]
            )
    return grants


def rendered_rbac_rules(values: dict[str, Any] | None = None) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) for every permission the chart's Roles and ClusterRoles grant with these values."""
    granted: set[tuple[str, str, str]] = set()
    for role in render(values):
        if role["kind"] not in ("Role", "ClusterRole"):
            continue
        for rule in role["rules"]:
            granted.update(
                (group, resource, verb)
                for group in rule["apiGroups"]
                for resource in rule["resources"]
                for verb in rule["verbs"]
            )
    return granted
