"""Two ``tokensmith serve`` processes on one PostgreSQL database (docs/deployment.md).

Every guarantee of one instance holds across both: client changes, refresh-token rotation
and replay detection, revocation, password lockout. And the faults: an instance killed with
SIGKILL under load loses no token a client received; PostgreSQL unreachable is 503
temporarily_unavailable within seconds, and the instances recover when it is back.

Skipped, saying how to run them, without TOKENSMITH_TEST_POSTGRES_URL (tests/pg.py).
"""

from __future__ import annotations

import base64
import json
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from xml.sax.saxutils import quoteattr

import httpx
import pg
import pki
import pytest
from conftest import Deployment, Server, new_deployment, start_server
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

PASSWORD = "correct horse battery staple"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pg_deployment(root: Path, keystore: Path, wheel_cache: Path, url: str, oauth: str = "") -> Deployment:
    return new_deployment(
        root, keystore, wheel_cache, oauth=oauth, database_xml=f"<Database url={quoteattr(url)}/>"
    )


@pytest.fixture(scope="module")
def schema_url() -> Iterator[str]:
    url = pg.base_url()
    if url is None:
        pytest.skip(pg.SKIPPED)
    with pg.fresh_schema(url) as schema:
        yield schema


@pytest.fixture(scope="module")
def pair(tmp_path_factory, keystore, wheel_cache, schema_url) -> Iterator[tuple[Server, Server]]:  # noqa: ANN001
    """Instances A and B: one configuration (as a rollout copies it), one database."""
    root = tmp_path_factory.mktemp("scaleout")
    dep = pg_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        schema_url,
        oauth="<MaxFailedLogins>3</MaxFailedLogins><LockoutSeconds>600</LockoutSeconds>",
    )
    dep.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    dep.cli("user", "add", "mallory", "--password-stdin", input=PASSWORD + "\n")
    a = start_server(dep)
    try:
        b = start_server(dep)
    except BaseException:
        a.stop()
        raise
    yield a, b
    a.stop()
    b.stop()


def post(
    server: Server, path: str, data: dict, client: dict | None = None, **kwargs: object
) -> httpx.Response:
    auth = (client["client_id"], client["client_secret"]) if client and "client_secret" in client else None
    with server.client(**kwargs) as http:
        return http.post(path, data=data, auth=auth)


def secret_client(server: Server, *grants: str) -> dict:
    args = [f"--grant-type={g}" for g in grants]
    return server.deployment.add_client("c", *args, "--scope=read", "--auth-method", "client_secret_basic")


def introspect(server: Server, value: str) -> dict:
    caller = server.deployment.add_client(
        "rs", "--grant-type=client_credentials", "--resource-server", "--auth-method", "client_secret_basic"
    )
    return post(server, "/oauth2/introspect", {"token": value}, caller).json()


def client_credentials(server: Server, client: dict) -> httpx.Response:
    return post(server, "/oauth2/token", {"grant_type": "client_credentials"}, client)


def test_the_schema_is_migrated_once_and_db_status_says_so(pair) -> None:  # noqa: ANN001
    """Both instances started on one database; `db status` shows it up to date, without the
    password; `db migrate` again has nothing to do."""
    a, _ = pair
    status = a.deployment.cli("db", "status").stdout
    assert "PostgreSQL postgresql://" in status and "up to date" in status
    assert "nothing to do" in a.deployment.cli("db", "migrate").stdout


def test_client_changes_through_one_instance_take_effect_on_the_other_at_once(pair, tmp_path) -> None:  # noqa: ANN001
    """A secret reset, a certificate rotation and a removal made by the CLI of one instance's
    host are in force at the other's next request, although it had the client cached."""
    a, b = pair
    client = secret_client(a, "client_credentials")
    assert client_credentials(b, client).status_code == 200  # B now has it cached
    reset = a.deployment.cli("sp", "reset-secret", client["client_id"]).stdout

    renewed = {**client, "client_secret": json.loads(reset)["client_secret"]}
    assert client_credentials(b, client).status_code == 401
    assert client_credentials(b, renewed).status_code == 200

    old, new = pki.self_signed("localhost"), pki.self_signed("localhost")
    old_files, new_files = old.write(tmp_path, "old"), new.write(tmp_path, "new")
    mtls = a.deployment.add_client(
        "m",
        "--grant-type=client_credentials",
        "--auth-method=self_signed_tls_client_auth",
        "--cert",
        str(old_files[0]),
    )
    data = {"grant_type": "client_credentials", "client_id": mtls["client_id"]}
    assert post(b, "/oauth2/token", data, cert=old_files).status_code == 200
    a.deployment.cli("sp", "update", mtls["client_id"], "--add-cert", str(new_files[0]))
    a.deployment.cli("sp", "update", mtls["client_id"], "--remove-cert", mtls["certificates"][0]["sha256"])
    assert post(b, "/oauth2/token", data, cert=old_files).status_code == 401
    assert post(b, "/oauth2/token", data, cert=new_files).status_code == 200

    token = client_credentials(b, renewed).json()["access_token"]
    a.deployment.cli("sp", "remove", client["client_id"])
    assert client_credentials(b, renewed).status_code == 401
    assert introspect(b, token) == {"active": False}


def test_concurrent_refreshes_over_both_instances_give_exactly_one_token(pair) -> None:  # noqa: ANN001
    """50 concurrent uses of one refresh token, alternating between the instances: exactly
    one 200 (RFC 9700 §4.14.2); the replays revoke the grant, so the winner's new tokens are
    inactive at both instances."""
    a, b = pair
    client = secret_client(a, "password", "refresh_token")
    first = post(
        a, "/oauth2/token", {"grant_type": "password", "username": "alice", "password": PASSWORD}, client
    )
    assert first.status_code == 200
    value = first.json()["refresh_token"]
    start = threading.Barrier(50)

    def use(index: int) -> httpx.Response:
        server = (a, b)[index % 2]
        with server.client() as http:
            start.wait()
            return http.post(
                "/oauth2/token",
                data={"grant_type": "refresh_token", "refresh_token": value},
                auth=(client["client_id"], client["client_secret"]),
            )

    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(use, range(50)))
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {200: 1, 400: 49}, statuses
    assert all(r.json()["error"] == "invalid_grant" for r in responses if r.status_code == 400)
    winner = next(r for r in responses if r.status_code == 200).json()
    for server in (a, b):
        assert introspect(server, winner["access_token"]) == {"active": False}
        assert introspect(server, winner["refresh_token"]) == {"active": False}
    refreshed = post(
        b, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": winner["refresh_token"]}, client
    )
    assert refreshed.status_code == 400


def test_a_token_revoked_on_one_instance_is_inactive_at_the_other(pair) -> None:  # noqa: ANN001
    """RFC 7009 revocation at A; RFC 7662 introspection at B says inactive at once."""
    a, b = pair
    client = secret_client(a, "client_credentials")
    token = client_credentials(a, client).json()["access_token"]
    assert introspect(b, token)["active"] is True
    assert post(a, "/oauth2/revoke", {"token": token}, client).status_code == 200
    assert introspect(b, token) == {"active": False}


def test_password_lockout_counts_failures_across_instances(pair) -> None:  # noqa: ANN001
    """Three wrong passwords, spread over both instances, lock the user at both."""
    a, b = pair
    client = secret_client(a, "password")

    def attempt(server: Server, password: str) -> int:
        data = {"grant_type": "password", "username": "mallory", "password": password}
        return post(server, "/oauth2/token", data, client).status_code

    assert [attempt(s, "wrong") for s in (a, b, a)] == [400, 400, 400]
    assert attempt(b, PASSWORD) == 400 and attempt(a, PASSWORD) == 400


def test_sigkill_of_one_instance_under_load_loses_no_token(
    pair, tmp_path_factory, keystore, wheel_cache, schema_url
) -> None:  # noqa: ANN001
    """Clients fetch tokens from a third instance and B while the third is killed with
    SIGKILL: every token a client received is active at B afterwards, and B kept serving."""
    _, b = pair
    c = start_server(b.deployment)
    try:
        client = secret_client(b, "client_credentials")
        received: list[str] = []
        failures: Counter[str] = Counter()
        stop = threading.Event()

        def load(server: Server) -> None:
            with server.client() as http:
                while not stop.is_set():
                    try:
                        response = http.post(
                            "/oauth2/token",
                            data={"grant_type": "client_credentials"},
                            auth=(client["client_id"], client["client_secret"]),
                        )
                    except httpx.HTTPError as exc:
                        failures[type(exc).__name__] += 1
                        if server is c:
                            time.sleep(0.01)
                        continue
                    if response.status_code == 200:
                        received.append(response.json()["access_token"])
                    else:
                        failures[str(response.status_code)] += 1

        threads = [threading.Thread(target=load, args=(s,)) for s in (c, c, b, b)]
        for thread in threads:
            thread.start()
        time.sleep(1.5)
        c.process.send_signal(signal.SIGKILL)
        c.process.wait(timeout=10)
        before = len(received)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        assert before > 0 and len(received) > before, "B stopped serving after C was killed"
        assert not {k for k in failures if k.isdigit()}, failures  # failures only from C's death
        import psycopg
        from tokensmith.oauth.grants import token_hash

        hashes = [token_hash(value) for value in received]
        with psycopg.connect(schema_url) as db:
            stored = db.execute(
                "SELECT count(*) FROM tokens WHERE token_hash = ANY(%s)", (hashes,)
            ).fetchone()
        assert stored is not None and stored[0] == len(set(hashes))
        assert introspect(b, received[before - 1])["active"] is True
    finally:
        c.stop()


def test_postgres_unreachable_is_503_and_recovers_without_restart(
    tmp_path, keystore, wheel_cache, schema_url
) -> None:  # noqa: ANN001
    """Through a TCP proxy that the test cuts: while PostgreSQL cannot be reached, token and
    introspection requests get 503 temporarily_unavailable within seconds (never a hang or
    a 500); once it is back, the same process serves again."""
    with pg.Proxy(schema_url) as proxy:
        dep = pg_deployment(tmp_path / "ts", keystore, wheel_cache, proxy.url)
        server = start_server(dep)
        try:
            client = secret_client(server, "client_credentials")
            token = client_credentials(server, client)
            assert token.status_code == 200
            proxy.cut()
            for _ in range(3):
                started = time.monotonic()
                response = client_credentials(server, client)
                assert response.status_code == 503, response.text
                assert response.json()["error"] == "temporarily_unavailable"
                assert time.monotonic() - started < 8
            proxy.restore()
            deadline = time.monotonic() + 10
            while (response := client_credentials(server, client)).status_code != 200:
                assert response.status_code == 503 and time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            server.stop()


def test_plugin_state_is_shared_a_jti_used_at_one_instance_is_a_replay_at_the_other(
    tmp_path, keystore, wheel_cache, postgres_url
) -> None:  # noqa: ANN001
    """The bundled private_key_jwt plugin remembers each assertion's jti in the plugin state
    store (RFC 7523 §3 item 7): on PostgreSQL that is one store for every instance, so an
    assertion accepted by A is a replay at B, and of one assertion sent to both at once
    exactly one request gets a token."""
    from conftest import DEFAULT_LISTENERS, ROOT
    from tokensmith.listeners.wheelbuild import build_plugin

    wheel, _ = build_plugin(ROOT / "plugins" / "private_key_jwt", tmp_path / "wheel")
    issuer = "https://auth.example"  # one issuer for both instances, as behind a balancer
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        oauth=f"<Issuer>{issuer}</Issuer>",
        listeners=DEFAULT_LISTENERS
        + '\n        <EventListener type="ClientAuthenticator" name="private_key_jwt" orderId="170" enable="true"/>',
        database_xml=f"<Database url={quoteattr(postgres_url)}/>",
    )
    (dep.dropins / wheel.name).write_bytes(wheel.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    numbers = key.public_key().public_numbers()
    jwk = {"kty": "EC", "crv": "P-256", "kid": "k1", "x": b64url(numbers.x.to_bytes(32, "big"))}
    jwk["y"] = b64url(numbers.y.to_bytes(32, "big"))
    (tmp_path / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    client_id = str(
        dep.add_client(
            "jwt",
            "--grant-type=client_credentials",
            "--auth-method=private_key_jwt",
            "--jwks",
            str(tmp_path / "jwks.json"),
        )["client_id"]
    )

    def assertion() -> str:
        """An RFC 7523 §3 client assertion for the issuer, with a jti of its own."""
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": issuer, "iat": now, "exp": now + 60}
        claims["jti"] = uuid.uuid4().hex
        head = b64url(json.dumps({"alg": "ES256", "kid": "k1"}).encode())
        signing_input = f"{head}.{b64url(json.dumps(claims).encode())}"
        r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
        return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"

    a = start_server(dep)
    try:
        b = start_server(dep)
        try:

            def send(server: Server, value: str) -> int:
                data = {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER}
                return post(server, "/oauth2/token", {**data, "client_assertion": value}).status_code

            once = assertion()
            assert send(a, once) == 200
            assert send(b, once) == 401
            b.wait_for_log("was used before")

            both = assertion()
            start = threading.Barrier(12)

            def race(index: int) -> int:
                start.wait()
                return send((a, b)[index % 2], both)

            with ThreadPoolExecutor(12) as pool:
                statuses = list(pool.map(race, range(12)))
            assert statuses.count(200) == 1 and statuses.count(401) == 11, statuses
        finally:
            b.stop()
    finally:
        a.stop()


def test_workers_of_one_instance_share_the_database_too(pair) -> None:  # noqa: ANN001
    """`serve --workers 2` on PostgreSQL: each worker has its own connections; a token from
    either is active at instance A."""
    a, _ = pair
    c = start_server(a.deployment, "--workers", "2")
    try:
        client = secret_client(a, "client_credentials")
        tokens = [client_credentials(c, client) for _ in range(6)]
        assert [t.status_code for t in tokens] == [200] * 6
        assert all(introspect(a, t.json()["access_token"])["active"] for t in tokens)
    finally:
        c.stop()


def test_a_stalled_database_is_503_at_the_deadline_and_the_instance_keeps_answering(
    tmp_path, keystore, wheel_cache, schema_url
) -> None:  # noqa: ANN001
    """Through a proxy that the test freezes: connections stay open and acknowledged but
    nothing comes back (a frozen database host, a stuck pooler), so PostgreSQL's own
    timeouts never fire. A token request is still answered 503 at the client-side deadline
    (STATEMENT_TIMEOUT_MS + CALL_MARGIN), /healthz answers meanwhile, and the instance
    serves again once the database does."""
    with pg.Proxy(schema_url) as proxy:
        dep = pg_deployment(tmp_path / "ts", keystore, wheel_cache, proxy.url)
        server = start_server(dep)
        try:
            client = secret_client(server, "client_credentials")
            assert client_credentials(server, client).status_code == 200
            proxy.freeze()
            with ThreadPoolExecutor(2) as pool:
                started = time.monotonic()
                token = pool.submit(client_credentials, server, client)
                time.sleep(0.5)
                with server.client() as http:
                    health = http.get("/healthz")
                health_after = time.monotonic() - started
                response = token.result()
                token_after = time.monotonic() - started
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "temporarily_unavailable"
            assert token_after < 10 and health_after < 10
            assert health.status_code in (200, 503)
            proxy.thaw()
            deadline = time.monotonic() + 10
            while (response := client_credentials(server, client)).status_code != 200:
                assert response.status_code == 503 and time.monotonic() < deadline
                time.sleep(0.2)
        finally:
            server.stop()
