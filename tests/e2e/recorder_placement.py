"""Run as a script: where a run's progress recorder lands on a cluster shaped like the operator's.

The head has no CPUs (as the operator builds it) and two workers have one each. Prints, as JSON, the driver's node and
the node of each recorder started there. It runs in a process of its own because it starts its own Ray cluster, and a
process can be connected to one cluster only.
"""

from __future__ import annotations

import json
import sys

import ray
from ray.cluster_utils import Cluster
from ray.util.state import list_actors

from bigmodel.runtime.progress import start_recorder


def main(recorders: int) -> None:
    # The dashboard stays: Ray's state API, which tells where an actor runs, is served by it.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1)
        dashboard = ray.init(address=cluster.address, logging_level="ERROR").dashboard_url
        cluster.wait_for_nodes()
        started = [start_recorder()[0] for _ in range(recorders)]
        ray.get([recorder.snapshot.remote() for recorder in started])
        nodes = [
            actor.node_id for actor in list_actors(f"http://{dashboard}", filters=[("class_name", "=", "ProgressLog")])
        ]
        print(json.dumps({"driver": ray.get_runtime_context().get_node_id(), "recorders": nodes}))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(int(sys.argv[1]))
