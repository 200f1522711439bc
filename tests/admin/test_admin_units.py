"""Focused, in-process tests of the administration modules: conf/authenticators.xml's loader,
the shared operations (tokensmith.admin) against a real SQLite store, the identity.xml
rewrite, and the admin API and dynamic registration through Quart's test client."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pki
import pytest
from conftest import new_deployment
from tokensmith.admin import clients as client_ops
from tokensmith.admin import configuration as config_ops
from tokensmith.admin import users as user_ops
from tokensmith.admin.audit import Actor, OperationError, local_actor, record
from tokensmith.app.admin import client_view, resolve
from tokensmith.app.factory import create_app
from tokensmith.app.openapi import document
from tokensmith.app.registration import REGISTER_PATH
from tokensmith.config.authenticators import BASIC, MUTUAL_SSL, load_authenticators
from tokensmith.config.settings import load_config, load_identity
from tokensmith.config.xml import ConfigError
from tokensmith.models import TokenRecord
from tokensmith.oauth.clientmetadata import client_metadata
from tokensmith.oauth.grants import token_hash
from tokensmith.storage.sqlite import SQLiteStorage

ACTOR = Actor("tester", "cli", "local")


# --- conf/authenticators.xml ---------------------------------------------------------------


def write(path: Path, body: str) -> Path:
    path.write_text(f'<?xml version="1.0"?>\n<Authenticators>\n{body}\n</Authenticators>\n')
    return path


def test_without_the_file_basic_alone_and_initial_access_tokens(tmp_path: Path) -> None:
    settings = load_authenticators(tmp_path / "authenticators.xml")
    assert [a.name for a in settings.authenticators] == [BASIC]
    assert settings.registration_mode == "initial_access_token"


def test_dynamic_registration_grants_the_scopes_listed_and_none_by_default(tmp_path: Path) -> None:
    assert load_authenticators(tmp_path / "none.xml").registration_scopes == frozenset()
    path = write(tmp_path / "a.xml", '<DynamicClientRegistration mode="open"/>')
    assert load_authenticators(path).registration_scopes == frozenset()
    path = write(tmp_path / "b.xml", '<DynamicClientRegistration mode="open" scopes=" read\n  write:all "/>')
    assert load_authenticators(path).registration_scopes == {"read", "write:all"}


def test_the_shipped_file_loads_with_mutual_ssl_disabled() -> None:
    settings = load_authenticators(Path(__file__).resolve().parents[2] / "conf" / "authenticators.xml")
    assert settings.enabled(MUTUAL_SSL) is None and MUTUAL_SSL in settings.disabled
    assert settings.enabled(BASIC) is not None


def test_tried_in_descending_priority(tmp_path: Path) -> None:
    path = write(
        tmp_path / "a.xml",
        '<Authenticator name="BasicAuthenticator"><Priority>1</Priority></Authenticator>'
        '<Authenticator name="MutualSSLAuthenticator" disabled="false"><Priority>7</Priority>'
        '<Config><Parameter name="UsernameHeader">X-Admin</Parameter>'
        '<Parameter name="WhiteListEnabled">true</Parameter>'
        '<Parameter name="WhiteList">CN=a,O=Example; CN=b</Parameter></Config></Authenticator>',
    )
    settings = load_authenticators(path)
    assert [a.name for a in settings.authenticators] == [MUTUAL_SSL, BASIC]
    mutual = settings.authenticators[0]
    assert mutual.username_header == "X-Admin" and mutual.whitelist_enabled and len(mutual.whitelist) == 2


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ('<Authenticator name="BasicAuthenticator">\n<Priority>-1</Priority></Authenticator>', 4, "Priority"),
        (
            '<Authenticator name="MutualSSLAuthenticator">\n<Config><Parameter name="Colour">red</Parameter>'
            "</Config></Authenticator>",
            4,
            "no Parameter 'Colour'",
        ),
        (
            '<Authenticator name="MutualSSLAuthenticator"><Config>'
            '<Parameter name="WhiteListEnabled">true</Parameter></Config></Authenticator>',
            3,
            "names no subject DN",
        ),
        (
            '<Authenticator name="BasicAuthenticator"/>\n<Authenticator name="BasicAuthenticator"/>',
            4,
            "already",
        ),
        ('<DynamicClientRegistration mode="sometimes"/>', 3, "'sometimes'"),
        ('<DynamicClientRegistration mode="open" scopes="read a\\b"/>', 3, "scope tokens"),
        ("<DynamicClientRegistration mode='open' scopes='read \"x\"'/>", 3, "scope tokens"),
        (
            '<Authenticator name="MutualSSLAuthenticator"><Config>'
            '<Parameter name="AdminCertificates">missing.pem</Parameter></Config></Authenticator>',
            3,
            "cannot read",
        ),
        (
            '<Authenticator name="MutualSSLAuthenticator"><Config>'
            '<Parameter name="WhiteList">not a DN</Parameter></Config></Authenticator>',
            3,
            "WhiteList",
        ),
    ],
)
def test_mistakes_name_the_file_and_line(tmp_path: Path, body: str, line: int, words: str) -> None:
    path = write(tmp_path / "authenticators.xml", body)
    with pytest.raises(ConfigError) as caught:
        resolve(load_authenticators(path))  # as the server loads it
    assert f"authenticators.xml:{line}:" in str(caught.value)
    assert words in str(caught.value)


def test_admin_certificates_are_registered_by_hash(tmp_path: Path) -> None:
    pair = pki.self_signed("console")
    (tmp_path / "admins.pem").write_bytes(pair.pem)
    path = write(
        tmp_path / "a.xml",
        '<Authenticator name="MutualSSLAuthenticator"><Config>'
        '<Parameter name="AdminCertificates">admins.pem</Parameter></Config></Authenticator>',
    )

    mutual = resolve(load_authenticators(path)).enabled(MUTUAL_SSL)
    assert mutual is not None
    assert mutual.admin_certificates == {hashlib.sha256(pair.der).hexdigest()}


# --- the shared operations -----------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStorage]:
    with SQLiteStorage(tmp_path / "db.sqlite") as opened:
        yield opened


def test_the_audit_log_refuses_anything_named_like_a_secret(store: SQLiteStorage) -> None:
    for name in ("client_secret", "password", "access_token", "private_key"):
        with pytest.raises(ValueError):
            record(store, ACTOR, "x", None, **{name: "v"})
    record(store, ACTOR, "client.create", "c1", name="n")
    (entry,) = store.list_audit()
    assert (entry.actor, entry.via, entry.source, entry.action, entry.details) == (
        "tester",
        "cli",
        "local",
        "client.create",
        {"name": "n"},
    )
    assert local_actor().name.startswith("cli:")


def test_users_and_roles(store: SQLiteStorage) -> None:
    user = user_ops.add_user(store, "ann", "pw-pw-pw-pw", "reader", ACTOR)
    assert store.get_user("ann").role == "reader" and user.password_hash != "pw-pw-pw-pw"
    with pytest.raises(OperationError) as caught:
        user_ops.add_user(store, "ann", "other-password", None, ACTOR)
    assert caught.value.status == 409
    with pytest.raises(OperationError):
        user_ops.set_role(store, "ann", "superuser", ACTOR)
    assert user_ops.set_role(store, "ann", "admin", ACTOR).role == "admin"
    assert user_ops.set_role(store, "ann", None, ACTOR).role is None
    for bad in ("", " ann", "a\nb"):
        with pytest.raises(OperationError):
            user_ops.check_username(bad)
    user_ops.remove_user(store, "ann", ACTOR)
    with pytest.raises(OperationError) as caught:
        user_ops.remove_user(store, "ann", ACTOR)
    assert caught.value.status == 404
    assert [e.action for e in store.list_audit()] == ["user.delete", "user.role", "user.role", "user.create"]
    assert "pw-pw-pw-pw" not in json.dumps([e.view() for e in store.list_audit()])


def test_passwords_have_a_minimum_length_and_names_no_slash(store: SQLiteStorage) -> None:
    """One rule for the CLI, the admin API and the console, which all call these."""
    with pytest.raises(OperationError, match="at least 8 characters"):
        user_ops.add_user(store, "bob", "seven77", None, ACTOR)
    with pytest.raises(OperationError, match="must not contain '/'"):
        user_ops.add_user(store, "sl/ash", "long-enough", "admin", ACTOR)
    assert store.list_users() == []
    user_ops.add_user(store, "bob", "eight888", None, ACTOR)
    with pytest.raises(OperationError, match="at least 8 characters"):
        user_ops.set_password(store, "bob", "short", ACTOR)
    with pytest.raises(OperationError) as caught:
        user_ops.set_password(store, "nobody", "long-enough", ACTOR)
    assert caught.value.status == 404
    before = store.get_user("bob").password_hash
    user_ops.set_password(store, "bob", "a new passphrase", ACTOR)
    assert store.get_user("bob").password_hash != before
    entry = store.list_audit()[0]
    assert (entry.action, entry.target, entry.details) == ("user.password", "bob", {})
    assert "a new passphrase" not in json.dumps([e.view() for e in store.list_audit()])


def test_a_session_stamp_changes_with_the_user_password_and_role(store: SQLiteStorage) -> None:
    """What ends the console's sessions: a removed user re-created under the same name, a new
    password, a role taken away and given back; not a role set to what it was."""
    user = user_ops.add_user(store, "eve", "eve-password", "admin", ACTOR)
    stamp = user_ops.session_stamp(store, user)
    assert user_ops.session_stamp(store, store.get_user("eve")) == stamp
    user_ops.set_role(store, "eve", "admin", ACTOR)
    assert user_ops.session_stamp(store, store.get_user("eve")) == stamp
    user_ops.set_role(store, "eve", "reader", ACTOR)
    user_ops.set_role(store, "eve", "admin", ACTOR)
    demoted = user_ops.session_stamp(store, store.get_user("eve"))
    assert demoted != stamp
    user_ops.set_password(store, "eve", "eve-password", ACTOR)  # even the same password
    changed = user_ops.session_stamp(store, store.get_user("eve"))
    assert changed not in (stamp, demoted)
    user_ops.remove_user(store, "eve", ACTOR)
    again = user_ops.add_user(store, "eve", "eve-password", "admin", ACTOR)
    assert user_ops.session_stamp(store, again) not in (stamp, demoted, changed)


def test_clients(store: SQLiteStorage) -> None:
    created = client_ops.register_client(
        store,
        None,
        {
            "client_name": "c",
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
        },
        ACTOR,
    )
    assert created.secret and store.get_client(created.client.client_id).secret_hash != created.secret
    view = client_view(created.client)
    assert "secret_hash" not in json.dumps(view) and created.secret not in json.dumps(view)
    store.add_token(
        TokenRecord(token_hash("t1"), "access", created.client.client_id, "", 0, 2**40, grant_id="g")
    )
    assert client_ops.revoke_client_tokens(store, created.client.client_id, ACTOR) == 1
    assert store.get_token(token_hash("t1")).revoked
    reset = client_ops.reset_secret(store, created.client.client_id, ACTOR)
    assert reset.secret != created.secret
    with pytest.raises(OperationError) as caught:
        client_ops.update_client(
            store, None, created.client.client_id, {"token_endpoint_auth_method": "none"}, ACTOR
        )
    assert caught.value.error == "invalid_client_metadata"
    for refused in (
        {"token_endpoint_auth_method": "self_signed_tls_client_auth", "grant_types": ["client_credentials"]},
        {"token_endpoint_auth_method": "tls_client_auth", "grant_types": ["client_credentials"]},
        {
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["client_credentials"],
            "tls_client_auth_san_dns": "a.example",
        },
        {"token_endpoint_auth_method": "none", "grant_types": ["client_credentials"]},
        {"token_endpoint_auth_method": "none", "grant_types": ["password"]},
    ):
        with pytest.raises(OperationError):
            client_ops.register_client(store, None, refused, ACTOR)
    pair = pki.self_signed("own")
    own = client_ops.register_client(
        store,
        None,
        {
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "grant_types": ["client_credentials"],
            "jwks": {"keys": [{"kty": "EC", "x5c": [base64.b64encode(pair.der).decode()]}]},
        },
        ACTOR,
    )
    assert own.secret is None and len(own.client.certificates) == 1
    # The document the API and RFC 7592 show: the certificate as a JWK with x5c (RFC 8705 §2.2).
    shown = client_metadata(own.client)
    assert shown["jwks"]["keys"][0]["x5c"] == [base64.b64encode(pair.der).decode()]
    assert "client_secret" not in shown
    with pytest.raises(OperationError):
        client_ops.change_client_certificates(
            store, None, own.client.client_id, [], [own.client.certificates[0].sha256], ACTOR
        )
    client_ops.remove_client(store, own.client.client_id, ACTOR)
    with pytest.raises(OperationError) as caught:
        client_ops.get_client(store, own.client.client_id)
    assert caught.value.status == 404
    assert created.secret not in json.dumps([e.view() for e in store.list_audit()])


def test_an_id_or_name_the_store_cannot_take_is_not_found(store: SQLiteStorage) -> None:
    """Issue 22: a lone surrogate (a CLI argument that is not UTF-8, a JSON "\\ud800") cannot
    be encoded for the store; the operations answer "not found" (404), not a 500."""
    for lone in ("\ud800", "a\udcff"):
        for operation, args in (
            (client_ops.get_client, (store, lone)),
            (client_ops.remove_client, (store, lone, ACTOR)),
            (client_ops.reset_secret, (store, lone, ACTOR)),
            (client_ops.revoke_client_tokens, (store, lone, ACTOR)),
            (client_ops.update_client, (store, None, lone, {"client_name": "x"}, ACTOR)),
            (user_ops.get_user, (store, lone)),
            (user_ops.remove_user, (store, lone, ACTOR)),
            (user_ops.set_role, (store, lone, "admin", ACTOR)),
            (user_ops.unlock_user, (store, lone, ACTOR)),
            (user_ops.revoke_user_tokens, (store, lone, ACTOR)),
        ):
            with pytest.raises(OperationError) as refused:
                operation(*args)
            assert refused.value.status == 404


def test_updates_apply_the_grant_type_checks_of_registration(store: SQLiteStorage) -> None:
    secret = client_ops.register_client(
        store,
        None,
        {"token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]},
        ACTOR,
    ).client
    with pytest.raises(OperationError, match="refresh_token"):
        client_ops.update_client(store, None, secret.client_id, {"grant_types": ["refresh_token"]}, ACTOR)
    public = client_ops.register_client(
        store,
        None,
        {
            "token_endpoint_auth_method": "none",
            "grant_types": ["refresh_token", "authorization_code"],
            "redirect_uris": ["https://app.example/cb"],
        },
        ACTOR,
    ).client
    with pytest.raises(OperationError, match="RFC 9700") as caught:
        client_ops.update_client(
            store, None, public.client_id, {"grant_types": ["password", "authorization_code"]}, ACTOR
        )
    assert caught.value.error == "invalid_client_metadata"
    assert store.get_client(public.client_id).grant_types == public.grant_types
    # Registered for the password grant with force (an administrator's decision), a public
    # client keeps it through other changes.
    forced = client_ops.register_client(
        store,
        None,
        {"token_endpoint_auth_method": "none", "grant_types": ["password"]},
        ACTOR,
        client_ops.ClientOptions(force=True),
    ).client
    renamed = client_ops.update_client(store, None, forced.client_id, {"client_name": "renamed"}, ACTOR)
    assert renamed.client.name == "renamed" and renamed.client.grant_types == ("password",)


def test_a_secret_reset_is_a_compare_and_swap(store: SQLiteStorage, monkeypatch) -> None:  # noqa: ANN001
    """Two resets that read the same stored secret: the second is 409, with no secret."""
    client = client_ops.register_client(
        store,
        None,
        {"token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]},
        ACTOR,
    ).client
    read = client_ops.get_client
    # The second reset read the client before the first one stored its new secret.
    monkeypatch.setattr(client_ops, "get_client", lambda s, cid: client)
    first = client_ops.reset_secret(store, client.client_id, ACTOR)
    with pytest.raises(OperationError) as caught:
        client_ops.reset_secret(store, client.client_id, ACTOR)
    assert caught.value.status == 409
    monkeypatch.setattr(client_ops, "get_client", read)
    assert store.get_client(client.client_id).secret_hash == first.client.secret_hash
    # A reset that reads the current secret goes through, as ever.
    assert client_ops.reset_secret(store, client.client_id, ACTOR).secret != first.secret


def test_an_update_from_a_read_before_a_reset_cannot_bring_the_old_secret_back(
    store: SQLiteStorage,
    monkeypatch,  # noqa: ANN001
) -> None:
    """Red team: an RFC 7592 PUT (or admin PATCH) that read the client before a secret reset
    and wrote after it stored the old secret again. It is 409 now, and the reset stands."""
    client = client_ops.register_client(
        store,
        None,
        {"token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]},
        ACTOR,
    ).client
    reset = client_ops.reset_secret(store, client.client_id, ACTOR)
    monkeypatch.setattr(client_ops, "get_client", lambda s, cid: client)  # read before the reset
    for merge in (True, False):  # the admin API's PATCH, RFC 7592's PUT
        document = {"client_name": "renamed", "grant_types": ["client_credentials"]}
        with pytest.raises(OperationError) as caught:
            client_ops.update_client(store, None, client.client_id, document, ACTOR, merge=merge)
        assert caught.value.status == 409 and caught.value.error == "conflict"
    stored = store.get_client(client.client_id)
    assert stored.secret_hash == reset.client.secret_hash and stored.name == ""
    monkeypatch.undo()
    # Read again, the change goes through and keeps the new secret.
    client_ops.update_client(store, None, client.client_id, {"client_name": "renamed"}, ACTOR)
    stored = store.get_client(client.client_id)
    assert stored.secret_hash == reset.client.secret_hash and stored.name == "renamed"


def test_an_update_from_a_read_before_a_removal_cannot_bring_the_certificate_back(
    store: SQLiteStorage,
    monkeypatch,  # noqa: ANN001
) -> None:
    first, second = pki.self_signed("first"), pki.self_signed("second")
    jwks = {"keys": [{"kty": "EC", "x5c": [base64.b64encode(p.der).decode()]} for p in (first, second)]}
    client = client_ops.register_client(
        store,
        None,
        {
            "token_endpoint_auth_method": "self_signed_tls_client_auth",
            "grant_types": ["client_credentials"],
            "jwks": jwks,
        },
        ACTOR,
    ).client
    removed = client.certificates[0].sha256
    client_ops.change_client_certificates(store, None, client.client_id, [], [removed], ACTOR)
    monkeypatch.setattr(client_ops, "get_client", lambda s, cid: client)  # read before the removal
    with pytest.raises(OperationError) as caught:
        client_ops.update_client(store, None, client.client_id, {"client_name": "renamed"}, ACTOR)
    assert caught.value.status == 409
    assert [c.sha256 for c in store.get_client(client.client_id).certificates] == [
        client.certificates[1].sha256
    ]


def test_a_secret_reset_leaves_no_claim_behind(store: SQLiteStorage) -> None:
    """Red team: reset_secret's claim on the hash it replaced lasted an hour, so that once the
    old hash was stored again (a lost update, a restore) every reset was 409 for that hour. The
    compare-and-swap needs no claim: a reset that reads the stored hash goes through."""
    client = client_ops.register_client(
        store,
        None,
        {"token_endpoint_auth_method": "client_secret_basic", "grant_types": ["client_credentials"]},
        ACTOR,
    ).client
    client_ops.reset_secret(store, client.client_id, ACTOR)
    assert store.update_client(client)  # the old hash back, as a backup restored would put it
    again = client_ops.reset_secret(store, client.client_id, ACTOR)
    assert store.get_client(client.client_id).secret_hash == again.client.secret_hash != client.secret_hash


def test_registration_tokens_are_stored_hashed(store: SQLiteStorage) -> None:
    value, expires_at = config_ops.issue_initial_access_token(store, 60, ACTOR)
    assert store.find_registration_token(token_hash(value), "initial") == (None, expires_at)
    assert store.find_registration_token(value, "initial") is None
    store.add_registration_token(token_hash("r1"), "registration", "c", None)
    store.add_registration_token(token_hash("r2"), "registration", "c", None)
    assert store.find_registration_token(token_hash("r1"), "registration") is None  # replaced
    assert store.find_registration_token(token_hash("r2"), "registration") == ("c", None)


IDENTITY = """<?xml version="1.0" encoding="UTF-8"?>
<!-- top comment -->
<Identity>
    <EventListeners>
        <!-- inner comment -->
        <EventListener type="ClientAuthenticator" name="basic_auth" orderId="100" enable="true"/>
    </EventListeners>
</Identity>
"""


def test_pins_are_written_to_identity_xml_keeping_comments(
    tmp_path: Path, store: SQLiteStorage, wheel_cache: Path
) -> None:
    """The one implementation of pinning the API and `plugins pin --add/--remove` share."""
    path = tmp_path / "identity.xml"
    path.write_text(IDENTITY)
    dropins = tmp_path / "dropins"
    dropins.mkdir()
    wheels = sorted(wheel_cache.glob("*.whl"))[:2]
    for wheel in wheels:
        (dropins / wheel.name).write_bytes(wheel.read_bytes())
    digests = [hashlib.sha256(w.read_bytes()).hexdigest() for w in wheels]
    with pytest.raises(OperationError) as refused:
        config_ops.pin_wheels(path, dropins, store, [digests[0]], ACTOR)  # the other would be refused
    assert refused.value.status == 409 and wheels[1].name in str(refused.value)
    assert load_identity(path).allowed_wheels is None
    assert sorted(config_ops.pin_wheels(path, dropins, store, None, ACTOR)) == sorted(digests)
    assert load_identity(path).allowed_wheels == frozenset(digests)
    assert config_ops.pin_wheels(path, dropins, store, [digests[0].upper()], ACTOR) == []
    assert "top comment" in path.read_text() and f'name="{wheels[0].name}"' in path.read_text()
    # A pin from an AllowedWheelsFile is that file's; new pins go before it (the schema's order).
    spare, other = "ab" * 32, "cd" * 32
    (tmp_path / "pins.txt").write_text(f"{spare}  future.whl\n")
    path.write_text(
        path.read_text().replace("</Dropins>", "<AllowedWheelsFile>pins.txt</AllowedWheelsFile></Dropins>")
    )
    assert config_ops.pin_wheels(path, dropins, store, [other], ACTOR) == [other]
    assert load_identity(path).allowed_wheels == frozenset([*digests, spare, other])
    with pytest.raises(OperationError, match="AllowedWheelsFile"):
        config_ops.unpin_wheel(path, dropins, store, spare, ACTOR)
    with pytest.raises(OperationError, match="remove the wheel first"):
        config_ops.unpin_wheel(path, dropins, store, digests[1], ACTOR)
    with pytest.raises(OperationError) as missing:
        config_ops.unpin_wheel(path, dropins, store, "ef" * 32, ACTOR)
    assert missing.value.status == 404
    with pytest.raises(OperationError, match="not a SHA-256"):
        config_ops.pin_wheels(path, dropins, store, ["ab"], ACTOR)
    config_ops.unpin_wheel(path, dropins, store, other, ACTOR)
    assert other not in (load_identity(path).allowed_wheels or ())
    actions = [(e.action, e.target) for e in store.list_audit(50, None)]
    assert ("dropins.unpin", other) in actions and ("dropins.pin", digests[1]) in actions


def test_listener_changes_rewrite_identity_xml_keeping_comments(tmp_path: Path, store: SQLiteStorage) -> None:
    path = tmp_path / "identity.xml"
    path.write_text(IDENTITY)
    config_ops.change_listener(path, store, "ClientAuthenticator", "basic_auth", ACTOR, enabled=False)
    config_ops.change_listener(path, store, "ClientAuthenticator", "mutual_tls", ACTOR, order=5)
    text = path.read_text()
    assert "top comment" in text and "inner comment" in text
    entries = {(e.name, e.enabled, e.order_id) for e in load_identity(path).listeners}
    assert entries == {("basic_auth", False, 100), ("mutual_tls", True, 5)}
    config_ops.reorder_listeners(
        path, store, ["ClientAuthenticator/mutual_tls", "ClientAuthenticator/basic_auth"], ACTOR
    )
    assert [(e.name, e.order_id) for e in load_identity(path).listeners] == [
        ("basic_auth", 110),
        ("mutual_tls", 100),
    ]
    before = path.read_text()
    with pytest.raises(OperationError):
        config_ops.change_listener(path, store, "ClientAuthenticator", "bad name!", ACTOR, enabled=True)
    with pytest.raises(OperationError):
        config_ops.reorder_listeners(path, store, ["nonsense"], ACTOR)
    with pytest.raises(OperationError):
        config_ops.change_listener(path, store, "X", "y", ACTOR, enabled=True, known=[("A", "b")])
    assert path.read_text() == before  # a refused change never reaches the file
    assert [e.action for e in store.list_audit()][:1] == ["listener.reorder"]


def test_concurrent_listener_changes_are_serialised(tmp_path: Path, store: SQLiteStorage) -> None:
    """Each change is applied to identity.xml as the previous one left it (a file lock):
    threads changing different listeners at once lose none of the changes."""
    import re
    import threading

    path = tmp_path / "identity.xml"
    names = ["basic_auth", "mutual_tls", *(f"extra{i}" for i in range(6))]
    path.write_text(IDENTITY)
    barrier = threading.Barrier(len(names))

    def change(index: int) -> None:
        barrier.wait()
        config_ops.change_listener(path, store, "ClientAuthenticator", names[index], ACTOR, order=500 + index)

    threads = [threading.Thread(target=change, args=(i,)) for i in range(len(names))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = path.read_text()
    assert {n: int(re.search(rf'name="{n}"[^>]*orderId="(\d+)"', text).group(1)) for n in names} == {
        n: 500 + i for i, n in enumerate(names)
    }


def test_mutual_ssl_that_names_no_certificate_warns_once(tmp_path: Path, caplog, monkeypatch) -> None:  # noqa: ANN001
    """Enabled with neither a WhiteList nor AdminCertificates, MutualSSL accepts nobody: one
    warning, not one per reload."""
    import tokensmith.app.admin as admin_module

    monkeypatch.setattr(admin_module, "_warned_nobody", False)
    path = write(
        tmp_path / "authenticators.xml",
        '<Authenticator name="MutualSSLAuthenticator" disabled="false"><Priority>5</Priority></Authenticator>',
    )
    with caplog.at_level("WARNING", logger="tokensmith"):
        resolve(load_authenticators(path))
        resolve(load_authenticators(path))
    warnings = [r.getMessage() for r in caplog.records if "accepts no certificate" in r.getMessage()]
    assert len(warnings) == 1 and "authenticators.xml:" in warnings[0]
    caplog.clear()
    monkeypatch.setattr(admin_module, "_warned_nobody", False)
    (tmp_path / "admins.pem").write_bytes(pki.self_signed("admin").pem)
    named = write(
        tmp_path / "named.xml",
        '<Authenticator name="MutualSSLAuthenticator" disabled="false"><Config>'
        '<Parameter name="AdminCertificates">admins.pem</Parameter></Config></Authenticator>',
    )
    with caplog.at_level("WARNING", logger="tokensmith"):
        resolve(load_authenticators(named))
    assert not [r for r in caplog.records if "accepts no certificate" in r.getMessage()]


def test_listener_moves_apply_to_the_order_in_the_file_not_a_snapshot(
    tmp_path: Path, store: SQLiteStorage
) -> None:
    """Two console pages loaded with the same order each move a listener: both moves count,
    as moves from identity.xml's order when each is made."""
    path = tmp_path / "identity.xml"
    path.write_text(IDENTITY)
    family = "ClientAuthenticator"
    # What the server loaded: basic_auth 100 (from the file), the others at their defaults.
    loaded = [
        (family, "basic_auth", 100),
        (family, "post_body", 200),
        (family, "jwt", 300),
        ("Other", "x", 1),
    ]

    def order() -> list[str]:
        found = {e.name: e.order_id for e in load_identity(path).listeners if e.type == family}
        defaults = {n: o for f, n, o in loaded if f == family}
        merged = {n: found.get(n, defaults[n]) for n in defaults}
        return sorted(merged, key=lambda n: (merged[n], n))

    assert config_ops.move_listener(path, store, family, "jwt", "up", ACTOR, loaded)
    assert order() == ["basic_auth", "jwt", "post_body"]
    # The same stale snapshot again: jwt moves up once more, from where it is now.
    assert config_ops.move_listener(path, store, family, "jwt", "up", ACTOR, loaded)
    assert order() == ["jwt", "basic_auth", "post_body"]
    assert not config_ops.move_listener(path, store, family, "jwt", "up", ACTOR, loaded)
    assert config_ops.move_listener(path, store, family, "basic_auth", "down", ACTOR, loaded)
    assert order() == ["jwt", "post_body", "basic_auth"]
    with pytest.raises(OperationError):
        config_ops.move_listener(path, store, family, "x", "up", ACTOR, loaded)
    with pytest.raises(OperationError):
        config_ops.move_listener(path, store, family, "jwt", "sideways", ACTOR, loaded)
    entry = store.list_audit()[0]
    assert (entry.action, entry.target, entry.details["direction"]) == (
        "listener.reorder",
        f"{family}/basic_auth",
        "down",
    )


# --- the admin API and registration in process ---------------------------------------------


class App:
    def __init__(self, app: Any, loop: asyncio.AbstractEventLoop):
        self.app, self.loop, self.client = app, loop, app.test_client()

    def call(self, method: str, path: str, body: Any = None, **kwargs: Any) -> tuple[int, Any, Any]:
        async def go() -> tuple[int, Any, Any]:
            response = await self.client.open(path, method=method, json=body, **kwargs)
            data = await response.get_data()
            return response.status_code, response.headers, json.loads(data) if data else None

        return self.loop.run_until_complete(go())


@pytest.fixture(scope="module")
def app(tmp_path_factory, keystore, wheel_cache) -> Iterator[App]:  # noqa: ANN001
    dep = new_deployment(tmp_path_factory.mktemp("admin-in-process") / "ts", keystore, wheel_cache)
    (dep.conf / "authenticators.xml").write_text(
        '<?xml version="1.0"?><Authenticators><DynamicClientRegistration mode="open"/></Authenticators>'
    )
    with SQLiteStorage(dep.database) as opened:
        user_ops.add_user(opened, "root", "root-password", "admin", ACTOR)
        user_ops.add_user(opened, "viewer", "viewer-password", "reader", ACTOR)
    loop = asyncio.new_event_loop()
    quart = create_app(load_config(dep.conf))
    started = quart.test_app()
    loop.run_until_complete(started.__aenter__())
    try:
        yield App(quart, loop)
    finally:
        loop.run_until_complete(started.__aexit__(None, None, None))
        loop.close()


def test_in_process_guard_and_crud(app: App) -> None:
    status, headers, _ = app.call("GET", "/api/clients")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert app.call("GET", "/api/clients", auth=("viewer", "viewer-password"))[0] == 200
    assert (
        app.call(
            "POST", "/api/users", {"username": "x", "password": "y"}, auth=("viewer", "viewer-password")
        )[0]
        == 403
    )
    status, _, body = app.call(
        "POST",
        "/api/clients",
        {
            "token_endpoint_auth_method": "client_secret_post",
            "grant_types": ["client_credentials"],
            "options": {"bind_tokens": True},
        },
        auth=("root", "root-password"),
    )
    assert status == 201 and body["bind_tokens"] is True and body["client_secret"]
    for bad in ({"options": []}, {"options": {"colour": 1}}, {"options": {"access_token_lifetime": 0}}):
        assert app.call("POST", "/api/clients", bad, auth=("root", "root-password"))[0] == 400
    status, _, body = app.call("POST", "/api/users", [1], auth=("root", "root-password"))
    assert status == 400 and body["error"] == "invalid_request"
    assert app.call("GET", "/api/audit?limit=0", auth=("root", "root-password"))[0] == 400
    assert app.call("GET", "/api/openapi.json")[2] == document()


def test_in_process_registration(app: App) -> None:
    status, _, body = app.call("POST", REGISTER_PATH, {"client_name": "self"})
    assert status == 201 and body["grant_types"] == ["client_credentials"]
    status, _, metadata = app.call("GET", "/.well-known/oauth-authorization-server")
    assert metadata["registration_endpoint"].endswith(REGISTER_PATH)


def test_the_cli_audits_truststore_and_signing_changes(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    """The CLI changes through the same operations, so its changes are in the audit log too."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    (tmp_path / "ca.pem").write_bytes(pki.ca().pem)
    dep.cli("truststore", "import", "--alias", "partner", "--file", str(tmp_path / "ca.pem"))
    dep.cli("truststore", "remove", "partner")
    assert dep.cli("truststore", "remove", "partner", check=False).returncode == 1
    kid = dep.cli("signing", "rotate").stdout.split()[0]
    newer = dep.cli("signing", "rotate").stdout.split()[0]
    dep.cli("signing", "retire", kid)
    with SQLiteStorage(dep.database) as opened:
        entries = [(e.action, e.target, e.via) for e in reversed(opened.list_audit())]
    assert entries == [
        ("truststore.import", "partner", "cli"),
        ("truststore.remove", "partner", "cli"),
        ("signing.rotate", kid, "cli"),
        ("signing.rotate", newer, "cli"),
        ("signing.retire", kid, "cli"),
    ]
