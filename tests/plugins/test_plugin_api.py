"""What a third-party plugin is given: the request's context, clients without secrets, shared
state, read-only claims in every event, the claimed client in failure events, required
Properties, and the RFC 7591 metadata of its clients (``oauth/clientmetadata.py``)."""

from __future__ import annotations

import asyncio
import json
import math
import shutil
import time
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from conftest import DEFAULT_LISTENERS, StartupFailed, new_deployment, start_server
from tokensmith import InvalidClientError, InvalidClientMetadataError
from tokensmith.listeners.state import MAX_VALUE_BYTES, PluginState, StateUnavailableError
from tokensmith.models import Client
from tokensmith.oauth.clientauth import ClientAuthRequest
from tokensmith.oauth.clientmetadata import apply_metadata, check_document, client_metadata
from tokensmith.storage.sqlite import SQLiteStorage

#: An authenticator for "probe" clients (X-Probe: CLIENT_ID) that records what it is given,
#: and an interceptor that records the events; both write JSON lines to the file in the
#: Property "out" (relative to identity.xml's directory).
PROBE = """
import json
from tokensmith import AuthenticatedClient, InvalidClientError, hookimpl

def record(listener, **what):
    with open(listener.resolve(listener.require("out")), "a") as out:
        out.write(json.dumps(what, default=str) + "\\n")

@hookimpl
def client_auth_methods():
    return ["probe"]

@hookimpl
def listener_configure(listener):
    listener.require("out")

@hookimpl
def authenticate_client(request, listener):
    client_id = request.headers.get("x-probe")
    if client_id is None:
        return None
    client = request.get_client(client_id)
    context = request.context
    record(listener, hook="authenticate", issuer=context.issuer, endpoint=context.endpoint,
           endpoint_url=context.endpoint_url, token_urls=list(context.token_endpoint_urls),
           found=client is not None, secret_hash=getattr(client, "secret_hash", "absent"),
           first=listener.state.put_if_absent("seen:" + client_id, 2**40))
    if client is None:
        raise InvalidClientError("client authentication failed", client_id=client_id)
    return AuthenticatedClient(client, "probe")

@hookimpl
def pre_token_issue(event, listener):
    record(listener, hook="pre_token_issue", claims=type(event.claims).__name__,
           secret_hash=event.client.secret_hash)

@hookimpl
def pre_token_revoke(event, listener):
    record(listener, hook="pre_token_revoke", claims=type(event.claims).__name__)

@hookimpl
def client_auth_failure(event, listener):
    record(listener, hook="failure", client_id=event.client_id, endpoint=event.endpoint)
"""

LISTENERS = (
    DEFAULT_LISTENERS
    + """
        <EventListener type="ClientAuthenticator" name="probe" orderId="50">
            <Property name="out">probe.jsonl</Property>
        </EventListener>
        <EventListener type="OAuthEventInterceptor" name="probe" orderId="50">
            <Property name="out">probe.jsonl</Property>
        </EventListener>"""
)


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_plugin_sees_context_state_and_no_secrets(
    tmp_path, keystore, wheel_cache, make_wheel, serve
) -> None:  # noqa: ANN001
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache, listeners=LISTENERS)
    shutil.copy(make_wheel("probe", PROBE), dep.dropins)
    # Its method is registrable with the CLI, which loaded the plugin to learn it.
    client = dep.add_client("p", "--grant-type", "client_credentials", "--auth-method", "probe")
    client_id = str(client["client_id"])
    server = serve(dep)
    out = dep.conf / "probe.jsonl"  # relative to identity.xml's directory
    with server.client() as http:
        issued = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"X-Probe": client_id}
        )
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        again = http.post("/oauth2/revoke", data={"token": token}, headers={"X-Probe": client_id})
        assert again.status_code == 200
        unknown = http.post(
            "/oauth2/token", data={"grant_type": "client_credentials"}, headers={"X-Probe": "ghost"}
        )
        assert unknown.status_code == 401
    seen = records(out)
    auth = [r for r in seen if r["hook"] == "authenticate"]
    assert [(r["endpoint"], r["found"], r["secret_hash"]) for r in auth] == [
        ("token", True, None),
        ("revoke", True, None),
        ("token", False, "absent"),
    ]
    assert auth[0]["issuer"] == server.url
    assert auth[0]["endpoint_url"] == auth[0]["token_urls"][0] == f"{server.url}/oauth2/token"
    assert auth[1]["endpoint_url"] == f"{server.url}/oauth2/revoke"
    # Shared state: the first put_if_absent for a key wins, later ones do not.
    assert [r["first"] for r in auth] == [True, False, True]
    assert [r for r in seen if r["hook"] == "pre_token_issue"] == [
        {"hook": "pre_token_issue", "claims": "mappingproxy", "secret_hash": None}
    ]
    assert [r["claims"] for r in seen if r["hook"] == "pre_token_revoke"] == ["mappingproxy"]
    # The failure event names the client the authenticator reported, not None.
    assert [r for r in seen if r["hook"] == "failure"] == [
        {"hook": "failure", "client_id": "ghost", "endpoint": "token"}
    ]


def test_a_missing_required_property_names_file_line_and_property(
    tmp_path, keystore, wheel_cache, make_wheel
) -> None:  # noqa: ANN001
    listeners = (
        DEFAULT_LISTENERS + '\n        <EventListener type="ClientAuthenticator" name="probe" orderId="50"/>'
    )
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache, listeners=listeners)
    shutil.copy(make_wheel("probe", PROBE), dep.dropins)
    with pytest.raises(StartupFailed) as failed:
        start_server(dep)
    assert f"{dep.conf / 'identity.xml'}:8: listener 'probe': required Property 'out' is missing" in str(
        failed.value
    )
    # With no entry at all: the plugin runs enabled, and the error says no entry names it.
    dep.listeners = DEFAULT_LISTENERS
    dep.write()
    result = dep.cli("plugins", "list", check=False)
    assert result.returncode != 0
    assert (
        "required Property 'out' is missing (no <EventListener> entry in identity.xml names it)"
        in result.stderr
    )


def test_plugin_state_is_namespaced_and_needs_a_store(tmp_path) -> None:  # noqa: ANN001
    with SQLiteStorage(tmp_path / "db") as store:
        one, two = PluginState(store, "one"), PluginState(store, "two")
        one.set("k", {"n": 1})
        assert one.get("k") == {"n": 1} and two.get("k") is None and two.get("k", 0) == 0
        assert one.put_if_absent("jti", time.time() + 60) and two.put_if_absent("jti", time.time() + 60)
        assert not one.put_if_absent("jti", time.time() + 60)
        one.set("short", 1, ttl=-1)
        assert one.get("short") is None
        assert one.delete("k") and not one.delete("k")
        with pytest.raises(ValueError, match="at most 65536 bytes"):
            one.set("big", "x" * MAX_VALUE_BYTES)
        with pytest.raises(ValueError, match="a state key"):
            one.get("")
    with pytest.raises(StateUnavailableError):
        PluginState(None, "one").get("k")


def test_plugin_state_namespace_is_read_only(tmp_path) -> None:  # noqa: ANN001
    """A plugin cannot switch its state to another plugin's namespace, nor reach the store
    through an obvious attribute (hygiene: plugins run in-process)."""
    with SQLiteStorage(tmp_path / "db") as store:
        state = PluginState(store, "one")
        with pytest.raises(AttributeError):
            state.namespace = "two"  # type: ignore[misc]
        with pytest.raises(AttributeError):
            state._storage  # noqa: B018
        with pytest.raises(AttributeError):
            state.extra = 1  # type: ignore[attr-defined]
        assert state.namespace == "one"


def test_put_if_absent_keeps_a_key_for_all_of_its_last_second(tmp_path) -> None:  # noqa: ANN001
    """expires_at inside a second: remembered to its end (rounded up), not dropped at the
    start of that second, which would let a replay in."""
    with SQLiteStorage(tmp_path / "db") as store:
        state = PluginState(store, "one")
        while time.time() % 1 > 0.5:  # far from the next whole second
            time.sleep(0.05)
        expires_at = math.floor(time.time()) + 0.999
        assert state.put_if_absent("jti", expires_at)
        assert not state.put_if_absent("jti", expires_at)


def test_an_id_the_store_cannot_take_is_no_client(tmp_path) -> None:  # noqa: ANN001
    """A lone surrogate (JSON can spell one) is "no such client", never a storage error."""
    with SQLiteStorage(tmp_path / "db") as store:
        request = ClientAuthRequest(store, {}, None)
        assert request.get_client("\ud800") is None
        with pytest.raises(InvalidClientError):
            asyncio.run(request.check_secret("\ud800", "secret"))


def test_client_metadata_limits() -> None:
    """Sizes and forms RFC 7591 leaves open, refused with one line: a lone surrogate, a
    5 MB name, 200000 contacts, JSON nested too deep, credentials in jwks_uri."""
    deep: Any = []
    for _ in range(5000):
        deep = [deep]
    cases = {
        "lone surrogate": {"client_name": "\ud800"},
        "longer than": {"client_name": "x" * 5_000_000},
        "more than 100 items": {"contacts": ["a@example.com"] * 200_000},
        "nested too deeply": {"mutual_tls.deep": deep},
        "larger than 65536 bytes": {"mutual_tls.x": ["y" * 1000] * 90},
        "must not hold credentials": {"jwks_uri": "https://user:pw@example.com/jwks"},
    }
    for reason, document in cases.items():
        with pytest.raises(InvalidClientMetadataError, match=reason) as info:
            check_document(document)
        assert "pw@" not in str(info.value)


def test_metadata_documents_round_trip_and_are_checked() -> None:
    base = Client("c1", "n", "client_secret_basic", ("client_credentials",))
    document = {
        "client_name": "partner",
        "token_endpoint_auth_method": "private_key_jwt",
        "grant_types": ["client_credentials"],
        "scope": "read write",
        "jwks_uri": "https://partner.example/jwks",
        "contacts": ["ops@partner.example"],
        "software_id": "4NRB1-0XZABZI9E6-5SM3R",
        "example.flag": True,
    }
    client = apply_metadata(base, document)
    assert (client.name, client.scopes, client.token_endpoint_auth_method) == (
        "partner",
        ("read", "write"),
        "private_key_jwt",
    )
    assert isinstance(client.metadata, MappingProxyType)
    assert client_metadata(client) == {"client_id": "c1", **document}
    # Merging: null removes, jwks replaces jwks_uri, the rest stays.
    jwk = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "kid": "k1"}
    merged = apply_metadata(client, {"contacts": None, "jwks": {"keys": [jwk]}}, merge=True)
    assert "contacts" not in merged.metadata and "jwks_uri" not in merged.metadata
    assert client_metadata(merged)["jwks"] == {"keys": [jwk]}
    assert merged.scopes == ("read", "write")
    for bad, reason in [
        ({"colour": "blue"}, "unknown client metadata 'colour'"),
        ({"jwks_uri": "http://partner.example/jwks"}, "jwks_uri must be an https URL"),
        ({"jwks": {"keys": [{**jwk, "d": "secret"}]}, "jwks_uri": None}, "private or symmetric key material"),
        ({"jwks": {"keys": [jwk]}, "jwks_uri": "https://x.example/j"}, "must not both be present"),
        ({"contacts": "ops@partner.example"}, "contacts must be a JSON list"),
        ({"scope": "read\\write"}, "is not a scope token"),
        ({"tls_client_auth_san_ip": "not-an-ip"}, "is not an IP address"),
    ]:
        with pytest.raises(InvalidClientMetadataError, match=reason):
            apply_metadata(base, _without_nones({**document, **bad}))


def _without_nones(document: dict) -> dict:
    return {name: value for name, value in document.items() if value is not None}


def test_mutual_tls_checks_its_clients_metadata(deployment, tmp_path) -> None:  # noqa: ANN001
    """mutual_tls's check_client_metadata: removing a tls_client_auth client's subject, or a
    self-signed client's certificates by new jwks, is refused (RFC 8705 §2.1.2, §2.2)."""
    added = deployment.add_client(
        "pki",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "tls_client_auth",
        "--san-dns",
        "a.example",
    )
    change = tmp_path / "change.json"
    change.write_text(json.dumps({"tls_client_auth_san_dns": None}))
    result = deployment.cli("sp", "update", str(added["client_id"]), "--metadata", str(change), check=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        "tokensmith: error: invalid_client_metadata: a tls_client_auth client registers exactly one of"
    )
    change.write_text(json.dumps({"tls_client_auth_san_dns": "b.example"}))
    deployment.cli("sp", "update", str(added["client_id"]), "--metadata", str(change))
    shown = json.loads(deployment.cli("sp", "show", str(added["client_id"])).stdout)
    assert shown["client_metadata"]["tls_client_auth_san_dns"] == "b.example"
