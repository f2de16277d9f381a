"""A simulated multi-node Ray cluster for the Ray engine's tests (``ray.cluster_utils``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def simulated_cluster(nodes: int = 2) -> Iterator:
    """A head declaring one CPU (left to Ray's read tasks: actors holding every CPU hang)
    and ``nodes`` 1-CPU nodes, so 1-CPU actors cannot share a node; this process is
    connected to it (no dashboard) until the block ends, then both are shut down."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        for _ in range(nodes):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()
