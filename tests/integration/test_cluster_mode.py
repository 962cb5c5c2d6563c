"""The registry on cluster-mode Redis (as ElastiCache's cluster mode enabled), through RedisCluster."""

import time

import pytest
import redis

from chalicelib.registry import ConnectionRegistry, redis_client, registry_key
from chalicelib.settings import Settings
from testing.redis_server import RedisServer, free_port


@pytest.fixture
def cluster_node(tmp_path) -> RedisServer:
    """A one-node Redis Cluster that owns every slot."""
    # The bus port defaults to port + 10000, which a free port may push past 65535: pick it too.
    cluster_options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
    server = RedisServer(tmp_path / "node", *cluster_options, "--cluster-port", str(free_port()))
    server.start()
    admin = redis.Redis(port=server.port)
    admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
    admin.close()
    server.wait_for_log("Cluster state changed: ok")
    yield server
    server.stop()


def test_the_registry_works_on_a_cluster_with_its_hash_tag(cluster_node):
    # GIVEN settings for cluster mode
    settings = Settings.from_env(
        {
            "REDIS_URL": cluster_node.url,
            "AWS_REGION": "us-east-1",
            "REDIS_CLUSTER": "true",
            "AUTH_MODE": "none",
        }
    )
    client = redis_client(settings)
    assert type(client).__name__ == "RedisCluster"
    registry = ConnectionRegistry(client, prefix="wsbroadcast", max_age_seconds=7200, clock=lambda: 1000)
    # WHEN connections come and go THEN the same single-key commands work through the cluster client
    registry.add("AAAAAAAAAAAAAAA=", 1_000_000)
    registry.add("BBBBBBBBBBBBBBB=", 1_000_000)
    registry.remove("AAAAAAAAAAAAAAA=")
    # AND a publish's script (its keys on the hash tag's one slot) runs through the cluster client
    publish = registry.begin_publish("BBBBBBBBBBBBBBB=", 1_000_000, include_sender=True)
    assert publish.live == ["BBBBBBBBBBBBBBB="]
    registry.forget(["BBBBBBBBBBBBBBB="])
    assert client.hlen(registry_key("wsbroadcast")) == 0
    # AND the key's slot is decided by its hash tag alone
    assert client.keyslot(registry_key("wsbroadcast")) == client.keyslot("{wsbroadcast}")
    client.close()


def test_a_sharded_registry_spreads_over_slots_and_works_through_the_cluster_client(cluster_node):
    # GIVEN REGISTRY_SHARDS=4 on cluster mode
    settings = Settings.from_env(
        {
            "REDIS_URL": cluster_node.url,
            "AWS_REGION": "us-east-1",
            "REDIS_CLUSTER": "true",
            "AUTH_MODE": "none",
            "REGISTRY_SHARDS": "4",
        }
    )
    registry = ConnectionRegistry.from_settings(settings)
    ids = [f"{letter * 15}=" for letter in "ABCDEFGH"]
    now_ms = int(time.time() * 1000)
    # WHEN connections join, subscribe, publish and leave THEN every script stays in one slot (no CROSSSLOT)
    for connection_id in ids:
        registry.add(connection_id, now_ms, channels=["room-1"])
    registry.subscribe(ids[0], now_ms, "room-2")
    everyone = registry.begin_publish(ids[0], now_ms, include_sender=True)
    assert sorted(everyone.live) == sorted(ids)
    assert sorted(registry.begin_backend_publish("room-1").live) == sorted(ids)
    registry.remove(ids[0])
    registry.forget(ids[1:3], channel="room-1")
    assert sorted(registry.begin_backend_publish("room-1").live) == sorted(ids[3:])
    # AND the shards are four keys in four slots
    client = redis.Redis(port=cluster_node.port, decode_responses=True)
    assert len({client.cluster("keyslot", key) for key in registry.registry_keys()}) == 4
    client.close()


def test_a_sharded_publish_on_a_cluster_is_two_round_trips_with_history(cluster_node):
    from testing.command_log import CommandLog

    settings = Settings.from_env(
        {
            "REDIS_URL": cluster_node.url,
            "AWS_REGION": "us-east-1",
            "REDIS_CLUSTER": "true",
            "AUTH_MODE": "none",
            "REGISTRY_SHARDS": "4",
        }
    )
    registry = ConnectionRegistry.from_settings(settings)
    ids = [f"{letter * 15}=" for letter in "ABCDEFGH"]
    now_ms = int(time.time() * 1000)
    for connection_id in ids:
        registry.add(connection_id, now_ms)
    registry.begin_publish(ids[0], now_ms, include_sender=True, payload=b'{"type":1}')  # loads the scripts
    log = CommandLog(cluster_node)
    try:
        log.commands_until_now()
        snapshot = registry.begin_publish(ids[0], now_ms, include_sender=True, payload=b'{"type":2}')
        commands = log.commands_until_now()
    finally:
        log.close()
    # the sender's script beside the sizes; then the admission (budget, offset) beside the read
    assert sorted(commands[:5]) == ["EVALSHA", *["HLEN"] * 4]
    assert sorted(commands[5:]) == ["EVALSHA", *["HGETALL"] * 4]
    assert sorted(snapshot.live) == sorted(ids) and '"offset":2' in snapshot.suffix
