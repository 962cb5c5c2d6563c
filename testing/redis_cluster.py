"""A Redis Cluster of real redis-server processes, as ElastiCache's cluster mode enabled: primaries that
share the 16384 slots, each with a replica. Every node announces (``cluster-announce-port``) a TcpProxy
of its own as its address, so clients (and its replica's replication link) reach it only through that
proxy, and a test can cut a dead node's connections as its host's failure does. The cluster bus stays
direct.

Start-up waits on the servers' own log lines (the cluster's state, each replica's first sync); a
failover, on every live node's slot map, which no log line reports.
"""

from __future__ import annotations

import time
from pathlib import Path

from testing.redis_server import RedisServer, free_port
from testing.tcp_proxy import TcpProxy

SLOTS = 16384


class ClusterNode:
    """One cluster-enabled redis-server and the proxy its clients reach it through."""

    def __init__(self, workdir: Path) -> None:
        # The bus port defaults to port + 10000, which a free port may push past 65535: pick it too.
        self.bus_port = free_port()
        self.server = RedisServer(
            workdir,
            *("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"),
            *("--cluster-port", str(self.bus_port), "--cluster-announce-ip", "127.0.0.1"),
            *("--cluster-announce-bus-port", str(self.bus_port)),
            *("--repl-diskless-sync-delay", "0"),  # a replica's first sync starts at once, not after 5 s
        )
        self.proxy = TcpProxy(("127.0.0.1", self.server.port))
        self.node_id = ""

    @property
    def url(self) -> str:
        """The node's address as its clients know it: through its proxy."""
        return self.proxy.url()

    def start(self) -> None:
        self.server.start()
        with self.server.admin() as admin:
            admin.config_set("cluster-announce-port", self.proxy.port)
            self.node_id = admin.execute_command("CLUSTER", "MYID")

    def execute(self, *command):
        """A command to this node itself, past its proxy."""
        with self.server.admin() as admin:
            return admin.execute_command(*command)

    def kill(self) -> None:
        """Die at once (SIGKILL) and reset every connection through the node's address, as a failed host."""
        self.server.kill()
        self.proxy.cut_all()

    def stop(self) -> None:
        self.server.stop()
        self.proxy.close()


class LocalCluster:
    """``primaries`` primaries, each owning an equal range of slots, each with one replica."""

    def __init__(self, workdir: Path, primaries: int = 3) -> None:
        self.primaries = [ClusterNode(workdir / f"primary-{index}") for index in range(primaries)]
        self.replicas = [ClusterNode(workdir / f"replica-{index}") for index in range(primaries)]

    @property
    def nodes(self) -> list[ClusterNode]:
        return [*self.primaries, *self.replicas]

    def start(self, timeout: float = 30.0) -> None:
        """Start every node, assign the slots, join the nodes and attach each replica; return once every
        node sees every slot served and every replica has its first copy."""
        for node in self.nodes:
            node.start()
        for index, primary in enumerate(self.primaries):
            first = index * self._slots_each
            primary.execute("CLUSTER", "ADDSLOTSRANGE", first, min(first + self._slots_each, SLOTS) - 1)
        first_node, *others = self.nodes
        for node in others:
            first_node.execute("CLUSTER", "MEET", "127.0.0.1", node.proxy.port, node.bus_port)
        for node in self.nodes:
            node.server.wait_for_log("Cluster state changed: ok", timeout)
        for primary, replica in zip(self.primaries, self.replicas, strict=True):
            replica.execute("CLUSTER", "REPLICATE", primary.node_id)
        for replica in self.replicas:
            replica.server.wait_for_log("MASTER <-> REPLICA sync: Finished with success", timeout)

    def owner_of(self, slot: int) -> ClusterNode:
        """The primary that serves ``slot``, by the assignment ``start`` made."""
        return self.primaries[slot // self._slots_each]

    @property
    def _slots_each(self) -> int:
        return -(-SLOTS // len(self.primaries))

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        return self.replicas[self.primaries.index(primary)]

    def promote(self, replica: ClusterNode, timeout: float = 10.0) -> None:
        """The replica takes its primary's slots without the primary's consent (CLUSTER FAILOVER TAKEOVER);
        return once every live node's slot map names it, as a failover that ElastiCache reports complete.
        Until then a client may be told the dead primary still serves them (gossip takes its time)."""
        replica.execute("CLUSTER", "FAILOVER", "TAKEOVER")
        slot = self._slots_each * self.replicas.index(replica)
        live = [node for node in self.nodes if node.server.process is not None]
        deadline = time.monotonic() + timeout
        while not all(_primary_port(node, slot) == replica.proxy.port for node in live):
            assert time.monotonic() < deadline, f"the cluster did not agree on the promotion in {timeout} s"
            time.sleep(0.01)  # between two polls: no node logs that it learnt the new owner

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _primary_port(node: ClusterNode, slot: int) -> int | None:
    """The announced port of the primary that serves ``slot`` in ``node``'s own slot map."""
    for first, last, (_, port, *_), *_ in node.execute("CLUSTER", "SLOTS"):
        if first <= slot <= last:
            return port
    return None
