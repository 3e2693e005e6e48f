"""`bigmodel serve` deploys the operator's Serve config, changed only where this machine differs from a cluster."""

from __future__ import annotations

import copy
from pathlib import Path

from bigmodel.api.manifests import load_manifest
from bigmodel.api.service import BigModelService
from bigmodel.builders.serve_app import app_args, serve_deploy_config
from bigmodel.runtime.serving.local import base_url, local_deploy_config

ROOT = Path(__file__).resolve().parents[2]


def cluster_config(example: str) -> dict:
    service = load_manifest(ROOT / "examples" / example)
    assert isinstance(service, BigModelService)
    name, spec = service.metadata.name, service.spec
    return serve_deploy_config(name, spec, app_args(name, spec, "/models/m", "v1"))


def test_only_the_listening_address_changes_on_a_machine_that_fits_the_replicas() -> None:
    config = cluster_config("service-digits.yaml")
    original = copy.deepcopy(config)
    local, notes = local_deploy_config(config, port=8123, cpus=2, gpus=0)
    assert config == original, "the operator's config must not be modified in place"
    assert notes == []
    # Ray's ports are unauthenticated: locally the proxy listens on the loopback interface only.
    assert local["http_options"] == {**original["http_options"], "host": "127.0.0.1", "port": 8123}
    assert base_url(local) == "http://127.0.0.1:8123"
    assert {key: value for key, value in local.items() if key != "http_options"} == {
        key: value for key, value in original.items() if key != "http_options"
    }


def test_replicas_ask_for_no_more_than_this_machine_has() -> None:
    # service-uri.yaml asks for 1 CPU and half a GPU per replica.
    local, notes = local_deploy_config(cluster_config("service-uri.yaml"), port=8000, cpus=0.5, gpus=0)
    actor = local["applications"][0]["deployments"][0]["ray_actor_options"]
    assert actor == {"num_cpus": 0.5}
    assert notes == [
        "this machine has no GPU: replicas run on the CPU",
        "each replica gets the 0.5 CPU(s) Ray may use here, not 1",
    ]
    local, notes = local_deploy_config(cluster_config("service-uri.yaml"), port=8000, cpus=4, gpus=0.25)
    assert local["applications"][0]["deployments"][0]["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert notes == ["each replica gets the 0.25 GPU(s) this machine has"]
