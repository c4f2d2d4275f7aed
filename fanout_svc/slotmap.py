"""Which master of a Redis Cluster owns which slot, read with CLUSTER SLOTS.

Like redis-py's `NodesManager.initialize`: ask the known nodes in turn (the
seed, then every node seen since, masters and replicas, the ones that failed
last at the end), take the first answer that covers every slot, or the most
complete one when none does (its uncovered slots have no owner until the
next read).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlparse

from fanout_svc.subscriber import RespConnection

log = logging.getLogger("fanout_svc.slotmap")

SLOTS = 16384


class SlotMap:
    """slot -> owner ("host:port" of its master, or None)."""

    __slots__ = ("masters", "nodes", "owners")

    def __init__(self, owners: list[str | None], nodes: Iterable[str]) -> None:
        self.owners = owners
        self.masters = {o for o in owners if o is not None}
        self.nodes = set(nodes) | self.masters

    def move(self, slot: int, owner: str) -> None:
        """What a MOVED reply says, until the next read of the whole map."""
        self.owners[slot] = owner
        self.masters.add(owner)
        self.nodes.add(owner)

    def covered(self) -> int:
        return sum(1 for o in self.owners if o is not None)

    def same_owners(self, other: SlotMap) -> bool:
        return self.owners == other.owners


def _name(node: list[Any], seed_host: str) -> str:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return f"{host or seed_host}:{int(node[1])}"


def parse_cluster_slots(reply: list[Any], seed_host: str) -> SlotMap:
    owners: list[str | None] = [None] * SLOTS
    nodes: set[str] = set()
    for item in reply:
        start, end, master, *replicas = item
        owner = _name(master, seed_host)
        nodes.add(owner)
        nodes.update(_name(r, seed_host) for r in replicas)
        owners[int(start) : int(end) + 1] = [owner] * (int(end) - int(start) + 1)
    return SlotMap(owners, nodes)


async def read_slot_map(seeds: Iterable[str], url: str, timeout_s: float) -> SlotMap:
    """The slot map from the first of `seeds` ("host:port") that answers;
    `url` gives the scheme and credentials. Raises OSError if none answers."""
    u = urlparse(url)
    auth = f"{u.netloc.rpartition('@')[0]}@" if "@" in u.netloc else ""
    best: SlotMap | None = None
    errors: list[str] = []
    for seed in seeds:
        conn = RespConnection(f"redis://{auth}{seed}", timeout_s)
        try:
            await conn.open(b"nearby-fanout-topology")
            reply = await conn.call(b"CLUSTER", b"SLOTS")
        except OSError as exc:
            errors.append(str(exc))
            continue
        finally:
            conn.close()
        found = parse_cluster_slots(reply, seed.rpartition(":")[0])
        if found.covered() == SLOTS:
            return found
        if best is None or found.covered() > best.covered():
            best = found
    if best is None:
        raise OSError("no Redis Cluster node answered CLUSTER SLOTS: " + "; ".join(errors))
    log.warning("the cluster covers only %d of %d slots", best.covered(), SLOTS)
    return best
