"""stack.infra.RedisCluster with fewer than 3 masters and no replicas (the
benchmark's 1- and 2-master runs): redis-cli --cluster create refuses those."""

from __future__ import annotations

from pathlib import Path

import pytest

from stack import infra


@pytest.mark.parametrize("masters", [1, 2])
def test_small_cluster_without_replicas_covers_every_slot(tmp_path: Path, masters: int) -> None:
    cluster = infra.RedisCluster(tmp_path, masters=masters, replicas=0)
    try:
        cluster.start()
        assert len(cluster.master_ports()) == masters
        for port in cluster.ports:
            info = cluster.info(port)
            assert info["cluster_state"] == "ok"
            assert info["cluster_slots_assigned"] == "16384"
            assert info["cluster_known_nodes"] == str(masters)
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs.values())
