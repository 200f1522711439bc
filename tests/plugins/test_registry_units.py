"""tokensmith.listeners.registry in process: the bundled wheels of a deployment, loaded as a
server loads them, give the listeners of identity.xml in orderId order."""

from __future__ import annotations

from conftest import new_deployment
from tokensmith.config.settings import load_config
from tokensmith.listeners.dropins import DropinLoader
from tokensmith.listeners.registry import build_listeners
from tokensmith.oauth.hookspecs import LISTENER_TYPES


def test_listeners_come_in_order_id_order(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    config = load_config(new_deployment(tmp_path / "ts", keystore, wheel_cache).conf)
    loader = DropinLoader(config.server.dropins, tmp_path / "unpacked")
    try:
        listeners = build_listeners(
            loader.load(config.identity.allowed_wheels), config.identity, LISTENER_TYPES
        )
        described = [listener.describe() for listener in listeners]
    finally:
        loader.close()
    assert [(d["name"], d["orderId"]) for d in described] == [
        ("basic_auth", 100),
        ("post_body_auth", 110),
        ("mutual_tls", 158),
    ]
