"""What the operator reads out of Ray's REST answers, on answers shaped like Ray 2.60's (recorded on a real cluster)."""

from __future__ import annotations

from bigmodel.controller.ray_client import app_view, holds_compute, pending_demand, state_rows

NODES = {
    "result": True,
    "data": {
        "result": {
            "total": 2,
            "result": [
                {"node_id": "fa8c", "node_name": "digits-s0-head", "state": "ALIVE", "is_head_node": True},
                {"node_id": "38ad", "node_name": "digits-s0-w0", "state": "ALIVE", "is_head_node": False},
            ],
        }
    },
}
APPLICATION = {
    "status": "DEPLOYING",
    "message": "",
    "deployed_app_config": {"name": "digits", "args": {"model_uri": "/m"}},
    "deployments": {
        "Model": {
            "status": "UPDATING",
            "target_num_replicas": 2,
            "replicas": [{"state": "RUNNING", "node_id": "38ad"}, {"state": "STARTING", "node_id": ""}],
        }
    },
}


def test_nodes_and_their_names() -> None:
    assert [row["node_name"] for row in state_rows(NODES)] == ["digits-s0-head", "digits-s0-w0"]
    assert state_rows({"data": {}}) == []


def test_serve_application() -> None:
    app = app_view(APPLICATION)
    assert (app.status, app.target_replicas, app.running_replicas) == ("DEPLOYING", 2, 1)
    assert app.runs({"args": {"model_uri": "/m"}}) and not app.runs({"args": {"model_uri": "/other"}})


def test_pending_demand_and_node_usage() -> None:
    assert pending_demand([[{"CPU": 1.0}, 2], [{"GPU": 1, "CPU": 4}, 1]]) == (
        ((("CPU", 1.0),), 2),
        ((("CPU", 4.0), ("GPU", 1.0)), 1),
    )
    assert holds_compute({"CPU": [1.0, 1.0], "memory": [0.0, 1e9]})
    assert not holds_compute({"CPU": [0.0, 1.0], "object_store_memory": [1e5, 1e9]})
