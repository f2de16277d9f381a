"""How a job sets Ray up, without starting Ray: the local cluster's declared CPUs and the
workers' environment (fast tier)."""

from __future__ import annotations

import pytest

from multitag.vision import ray_engine
from multitag.vision.ray_engine import RayOptions, connect


class _FakeRay:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def is_initialized(self) -> bool:
        return False

    def init(self, **kwargs) -> None:
        self.calls.append(kwargs)


@pytest.fixture
def fake_ray(monkeypatch):
    ray = _FakeRay()
    monkeypatch.setattr(ray_engine, "import_ray", lambda: ray)
    return ray


def test_a_local_cluster_leaves_cpus_for_reads_and_its_workers_wait_passively(fake_ray):
    assert connect(RayOptions(actors=2, cpus_per_actor=1)) is True
    [kwargs] = fake_ray.calls
    assert kwargs["num_cpus"] >= 4  # the actors' 2 CPUs + 2 for Ray's read tasks
    # its own instance: not RAY_ADDRESS's, nor another job's cluster on this machine
    assert kwargs["address"] == "local"
    assert kwargs["include_dashboard"] is False
    # PyTorch's idle OpenMP threads must not spin on cores the other actors need
    assert kwargs["runtime_env"]["env_vars"]["OMP_WAIT_POLICY"] == "PASSIVE"
    # Ray's default worker niceness (15) gave the actors' cores to every other process
    assert kwargs["_system_config"]["worker_niceness"] == 0


def test_a_joined_cluster_gets_the_same_worker_environment(fake_ray):
    connect(RayOptions(address="10.0.0.1:6379"))
    [kwargs] = fake_ray.calls
    assert kwargs["address"] == "10.0.0.1:6379" and "num_cpus" not in kwargs
    assert kwargs["runtime_env"]["env_vars"]["OMP_WAIT_POLICY"] == "PASSIVE"


def test_blocks_are_whole_small_batches_whatever_the_job_size():
    import pandas as pd

    from multitag.vision.ray_engine import MAX_BATCHES_PER_BLOCK, blocks

    for rows in (300, 8_000, 100_000):
        frame = pd.DataFrame({"id": range(rows)})
        parts = blocks(frame, batch_size=64, actors=2)
        assert sum(len(p) for p in parts) == rows
        assert all(len(p) % 64 == 0 for p in parts[:-1])  # the local engine's batches
        # a job's tail (one actor busy, the others done) is at most one small block
        assert max(len(p) for p in parts) <= 64 * MAX_BATCHES_PER_BLOCK == 256
        assert len(parts) >= min(2 * 4, -(-rows // 64))  # several blocks per actor


@pytest.mark.parametrize(
    ("cores", "given", "pool"),
    [
        (2, {}, (1, 2)),  # one actor decoding while its two inference streams run
        (16, {}, (4, 4)),
        (2, {"actors": 2}, (2, 1)),
        (16, {"cpus_per_actor": 8}, (2, 8)),
        (16, {"address": "10.0.0.1:6379"}, (2, 1)),  # a cluster's nodes are not this machine
    ],
)
def test_the_default_pool_shares_this_machines_cores(monkeypatch, cores, given, pool):
    monkeypatch.setattr(ray_engine.os, "cpu_count", lambda: cores)
    options = RayOptions(**given)
    assert (options.actors, options.cpus_per_actor) == pool
    assert options.actor_threads == pool[1]


def test_a_bad_pool_is_refused():
    with pytest.raises(ValueError, match="actors=0"):
        RayOptions(actors=0)
    with pytest.raises(ValueError, match="cpus_per_actor=0"):
        RayOptions(cpus_per_actor=0)
