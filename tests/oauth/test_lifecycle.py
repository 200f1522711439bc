"""Token lifecycle and account protection against the real server (issue 13).

What revokes what (a user, a client, a signing key, a used refresh token), who may
introspect what, the password lockout under concurrency and as a denial of service, and
the registration values the lifecycle depends on. docs/reliability.md describes the policy.
"""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
import ssl
import statistics
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import DEFAULT_LISTENERS, Deployment, Server, new_deployment, start_server
from tokensmith.models import TokenRecord, User
from tokensmith.oauth.grants import token_hash
from tokensmith.security.hashing import hash_secret
from tokensmith.storage.sqlite import SQLiteStorage

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[Server]:  # noqa: ANN001
    """One server with two workers: every finding must hold whichever worker answers."""
    root = tmp_path_factory.mktemp("lifecycle")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        oauth="<MaxFailedLogins>3</MaxFailedLogins><LockoutSeconds>600</LockoutSeconds>",
    )
    dep.cli("user", "add", "erin", "--password-stdin", input=PASSWORD + "\n")  # creates the store
    with SQLiteStorage(dep.database) as store:  # the others through the API: a CLI run each is slow
        for name in ("victim", "quiet", "frank", "gina", "hal"):
            store.add_user(User(name, hash_secret(PASSWORD)))
    server = start_server(dep, "--workers", "2")
    yield server
    server.stop()


def client(server: Server, *grants: str, extra: tuple[str, ...] = ()) -> dict:
    args = [f"--grant-type={g}" for g in grants]
    return server.deployment.add_client(
        "c", *args, "--scope=read", "--scope=write", *extra, "--auth-method", "client_secret_basic"
    )


def auth(c: dict) -> tuple[str, str]:
    return str(c["client_id"]), str(c["client_secret"])


def post(server: Server, path: str, data: dict, c: dict | None):  # noqa: ANN201
    with server.client() as http:
        return http.post(path, data=data, auth=auth(c) if c else None)


def password_grant(server: Server, c: dict, user: str, password: str = PASSWORD):  # noqa: ANN201
    return post(
        server, "/oauth2/token", {"grant_type": "password", "username": user, "password": password}, c
    )


def refresh(server: Server, c: dict, value: str):  # noqa: ANN201
    return post(server, "/oauth2/token", {"grant_type": "refresh_token", "refresh_token": value}, c)


def introspect(server: Server, value: str, caller: dict) -> dict:
    return post(server, "/oauth2/introspect", {"token": value}, caller).json()


def resource_server(server: Server) -> dict:
    return client(server, "client_credentials", extra=("--resource-server",))


# --- 1. the lockout holds under concurrency ---------------------------------------------------


def test_concurrent_guesses_check_at_most_the_limit(env) -> None:  # noqa: ANN001
    """50 wrong passwords at once over two workers, then the right one: no more than
    MaxFailedLogins of them are checked, and the right one gets no token (RFC 6749 §10.10).
    The attempt is taken in the store before the hash, so none reads a stale counter."""
    c = client(env, "password")
    barrier = threading.Barrier(50)
    statuses: list[int] = []

    def guess(password: str, wait: bool) -> None:
        with env.client() as http:
            if wait:
                barrier.wait()
            else:
                # Sent while the wrong ones are in flight, once the server says the limit
                # was reached: three checked, or one refused.
                deadline = time.monotonic() + 60
                while (
                    time.monotonic() < deadline
                    and "user 'victim' is locked out" not in env.log()
                    and env.log().count("password grant failed for user 'victim'") < 3
                ):
                    time.sleep(0.01)
            response = http.post(
                "/oauth2/token",
                auth=auth(c),
                data={"grant_type": "password", "username": "victim", "password": password},
            )
            statuses.append(response.status_code)

    threads = [threading.Thread(target=guess, args=(f"wrong-{i}", True)) for i in range(50)]
    threads.append(threading.Thread(target=guess, args=(PASSWORD, False)))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(statuses) == 51 and 200 not in statuses, statuses
    assert env.log().count("password grant failed for user 'victim'") <= 3


# --- 5. a locked user and an unknown one look the same -----------------------------------------


def test_locked_and_unknown_users_get_the_same_answer_at_the_same_cost(env) -> None:  # noqa: ANN001
    """After the lockout, the locked user's answer is the unknown user's, byte for byte, and
    takes about as long (a KDF run each): five guesses no longer tell whether a name exists."""
    c = client(env, "password")
    for _ in range(3):
        password_grant(env, c, "quiet", "wrong")
    locked, unknown, t_locked, t_unknown = [], [], [], []
    with env.client() as http:
        for _ in range(5):
            for user, answers, times in (("quiet", locked, t_locked), ("nobody-here", unknown, t_unknown)):
                started = time.perf_counter()
                response = http.post(
                    "/oauth2/token",
                    auth=auth(c),
                    data={"grant_type": "password", "username": user, "password": "still wrong"},
                )
                times.append(time.perf_counter() - started)
                answers.append((response.status_code, response.content))
    assert "user 'quiet' is locked out" in env.log()
    assert set(locked) == set(unknown) and len(set(locked)) == 1
    assert statistics.median(t_locked) > 0.5 * statistics.median(t_unknown), (t_locked, t_unknown)


# --- 2. removing a user revokes their grants; user revoke ---------------------------------------


def test_removing_a_user_revokes_their_grants_for_good(env) -> None:  # noqa: ANN001
    """After `user remove`, the user's refresh token is refused and their access token is
    inactive, also once another user is created under the same name (RFC 9700 §4.14.2)."""
    c = client(env, "password", "refresh_token")
    tokens = password_grant(env, c, "erin").json()
    env.deployment.cli("user", "remove", "erin")
    env.deployment.cli("user", "add", "erin", "--password-stdin", input="another passphrase\n")
    assert refresh(env, c, tokens["refresh_token"]).status_code == 400
    assert introspect(env, tokens["access_token"], c) == {"active": False}
    fresh = password_grant(env, c, "erin", "another passphrase")
    assert fresh.status_code == 200 and introspect(env, fresh.json()["access_token"], c)["active"]


def test_a_token_stored_while_its_user_was_removed_is_inactive(env) -> None:  # noqa: ANN001
    """A password grant that checked the password just before `user remove` ran stores its
    token after the removal revoked the user's tokens (an outside review won 3 races in 3).
    A token whose user no longer exists is inactive whenever it was stored."""
    c = client(env, "password")
    with SQLiteStorage(env.deployment.database) as store:
        store.add_user(User("racer", hash_secret(PASSWORD)))
    owner = password_grant(env, c, "racer").json()
    with SQLiteStorage(env.deployment.database) as store:
        user = store.get_user("racer")
        assert user is not None and store.remove_user("racer")
        value = "raced-" + base64.urlsafe_b64encode(bytes(24)).decode()
        now = int(time.time())
        store.add_tokens(
            [
                TokenRecord(
                    token_hash(value),
                    "access",
                    str(c["client_id"]),
                    "read",
                    now,
                    now + 600,
                    username="racer",
                    grant_id="raced-grant",
                    user_id=user.user_id,
                    grant_type="password",
                )
            ]
        )
    assert introspect(env, value, c) == {"active": False}
    assert introspect(env, owner["access_token"], c) == {"active": False}


def test_a_replay_while_the_store_is_busy_still_revokes_the_grant(env) -> None:  # noqa: ANN001
    """RFC 9700 §4.14.2 fails closed: a replayed refresh token that meets a locked store is
    refused, and its grant is revoked as soon as the store can take it (it used to be left
    alone, and the thief's successor token went on working)."""
    c = client(env, "password", "refresh_token")
    first = password_grant(env, c, "gina").json()["refresh_token"]
    successor = refresh(env, c, first).json()["refresh_token"]
    holder = sqlite3.connect(env.deployment.database, timeout=10, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock for a while
        replay = refresh(env, c, first)
        assert replay.status_code in (400, 503), replay.text
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and refresh_is_live(env, c, successor):
        time.sleep(0.5)
    assert refresh(env, c, successor).status_code == 400


def refresh_is_live(server: Server, c: dict, value: str) -> bool:
    return introspect(server, value, c).get("active") is True


def test_user_revoke_ends_every_token_and_keeps_the_user(env) -> None:  # noqa: ANN001
    """`user revoke NAME` revokes every token and grant of the user; they may log in again."""
    c = client(env, "password", "refresh_token")
    first, second = password_grant(env, c, "frank").json(), password_grant(env, c, "frank").json()
    out = env.deployment.cli("user", "revoke", "frank").stdout
    assert "revoked 4 tokens" in out
    for tokens in (first, second):
        assert refresh(env, c, tokens["refresh_token"]).status_code == 400
        assert introspect(env, tokens["access_token"], c) == {"active": False}
    assert password_grant(env, c, "frank").status_code == 200
    missing = env.deployment.cli("user", "revoke", "nobody", check=False)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1


# --- 4. removing a client, or one of its grant types -------------------------------------------


def test_removing_a_client_revokes_its_tokens(env) -> None:  # noqa: ANN001
    """After `sp remove`, the client's tokens introspect inactive (RFC 7592 §2.3)."""
    c, rs = client(env, "client_credentials"), resource_server(env)
    value = post(env, "/oauth2/token", {"grant_type": "client_credentials"}, c).json()["access_token"]
    assert introspect(env, value, rs)["active"] is True
    env.deployment.cli("sp", "remove", str(c["client_id"]))
    assert introspect(env, value, rs) == {"active": False}


def test_a_grant_type_taken_away_ends_its_refresh_tokens(env) -> None:  # noqa: ANN001
    """A client no longer registered for the password grant cannot refresh the grants it
    got through it. (No command takes a grant type away yet: the row is changed directly.)"""
    c = client(env, "password", "refresh_token", "client_credentials")
    tokens = password_grant(env, c, "gina").json()
    with sqlite3.connect(env.deployment.database) as db:
        db.execute(
            "UPDATE clients SET grant_types = ? WHERE client_id = ?",
            (json.dumps(["client_credentials", "refresh_token"]), c["client_id"]),
        )
    response = refresh(env, c, tokens["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"


# --- 6. used refresh tokens; 8. who may introspect ------------------------------------------------


def test_a_used_refresh_token_introspects_inactive(env) -> None:  # noqa: ANN001
    """A rotated refresh token can never be used again, so it is not active (RFC 7662 §2.2);
    a live one has no token_type, which names access-token types only."""
    c = client(env, "password", "refresh_token")
    first = password_grant(env, c, "hal").json()
    second = refresh(env, c, first["refresh_token"]).json()
    assert introspect(env, first["refresh_token"], c) == {"active": False}
    live = introspect(env, second["refresh_token"], c)
    assert live["active"] is True and "token_type" not in live


def test_introspection_is_for_the_tokens_client_and_resource_servers(env) -> None:  # noqa: ANN001
    """RFC 7662 §4: another client learns nothing; a registered resource server sees access
    tokens but never a refresh token's details, which only its own client sees."""
    c, other, rs = (
        client(env, "password", "refresh_token"),
        client(env, "client_credentials"),
        resource_server(env),
    )
    tokens = password_grant(env, c, "hal").json()
    for value in (tokens["access_token"], tokens["refresh_token"]):
        assert introspect(env, value, other) == {"active": False}
    assert introspect(env, tokens["access_token"], rs)["username"] == "hal"
    assert introspect(env, tokens["refresh_token"], rs) == {"active": False}
    assert introspect(env, tokens["access_token"], c)["active"] is True
    assert introspect(env, tokens["refresh_token"], c)["active"] is True


# --- 7. absolute grant lifetime -------------------------------------------------------------------


def test_a_grant_ends_at_its_absolute_lifetime(env) -> None:  # noqa: ANN001
    """With a 3 s refresh lifetime and a 4 s absolute one, refreshing every 1.5 s works until
    4 s after the grant, then the chain ends (RFC 9700 §4.14.2): rotation does not restart it."""
    c = client(
        env,
        "password",
        "refresh_token",
        extra=("--refresh-token-lifetime=3", "--refresh-token-max-lifetime=4"),
    )
    started = time.monotonic()
    value = password_grant(env, c, "hal").json()["refresh_token"]
    outcomes = []
    while time.monotonic() - started < 6:
        time.sleep(1.5)
        response = refresh(env, c, value)
        outcomes.append((round(time.monotonic() - started, 1), response.status_code))
        if response.status_code != 200:
            break
        value = response.json()["refresh_token"]
    assert outcomes[0][1] == 200 and outcomes[-1][1] == 400, outcomes
    assert outcomes[-1][0] < 5.5, outcomes


# --- 10. scope grammar --------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["read write", "", "café", "a\u00a0b", "a\tb", 'a"b', "a\\b"])
def test_registration_refuses_scopes_outside_the_grammar(env, scope) -> None:  # noqa: ANN001
    """`sp add --scope` takes one RFC 6749 §3.3 scope-token each: one readable line, exit 1."""
    result = env.deployment.cli(
        "sp",
        "add",
        "s",
        "--grant-type=client_credentials",
        f"--scope={scope}",
        "--auth-method",
        "client_secret_basic",
        check=False,
    )
    assert result.returncode != 0 and "scope" in result.stderr and result.stderr.count("\n") == 1


def test_the_token_endpoint_grants_only_grammatical_scopes(env) -> None:  # noqa: ANN001
    """A scope outside §3.3 stored by an older release is not granted: invalid_scope."""
    c = client(env, "client_credentials")
    with sqlite3.connect(env.deployment.database) as db:
        db.execute(
            "UPDATE clients SET scopes = ? WHERE client_id = ?",
            (json.dumps(["read", "café"]), c["client_id"]),
        )
    response = post(env, "/oauth2/token", {"grant_type": "client_credentials", "scope": "café"}, c)
    assert response.status_code == 400 and response.json()["error"] == "invalid_scope"


# --- 11. WWW-Authenticate on every 401 ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/oauth2/token", "/oauth2/introspect", "/oauth2/revoke"])
def test_401_without_authorization_header_has_a_challenge(env, path) -> None:  # noqa: ANN001
    """invalid_client with credentials in the body still carries WWW-Authenticate (RFC 6749
    §5.2, RFC 9110 §15.5.2)."""
    c = client(env, "client_credentials")
    response = post(
        env,
        path,
        {
            "grant_type": "client_credentials",
            "token": "x",
            "client_id": c["client_id"],
            "client_secret": "wrong",
        },
        None,
    )
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"
    assert response.headers["www-authenticate"] == 'Basic realm="tokensmith"'


# --- 12. registration values ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["evil\x1b[2J", "two\nlines", "bell\x07", "rtl\u202eoverride"])
def test_registration_refuses_control_characters(env, name) -> None:  # noqa: ANN001
    """A client name with a control character is refused: it would forge `sp list` lines."""
    result = env.deployment.cli(
        "sp",
        "add",
        name,
        "--grant-type=client_credentials",
        "--auth-method",
        "client_secret_basic",
        check=False,
    )
    assert result.returncode != 0 and "control characters" in result.stderr
    assert "\x1b" not in result.stderr and result.stderr.count("\n") == 1


def test_registration_refuses_control_characters_in_a_subject(env) -> None:  # noqa: ANN001
    """The tls_client_auth subject is stored text too, and is refused the same way."""
    result = env.deployment.cli(
        "sp",
        "add",
        "m",
        "--grant-type=client_credentials",
        "--auth-method",
        "tls_client_auth",
        "--subject-dn",
        "CN=evil\x1b[2J,O=x",
        check=False,
    )
    assert result.returncode != 0 and "\x1b" not in result.stderr and result.stderr.count("\n") == 1


def test_sp_list_escapes_names_stored_before(env) -> None:  # noqa: ANN001
    """A name stored with an escape sequence by an older release is printed escaped."""
    c = client(env, "client_credentials")
    with sqlite3.connect(env.deployment.database) as db:
        db.execute("UPDATE clients SET name = ? WHERE client_id = ?", ("x\x1b[31mred\nfake", c["client_id"]))
    out = env.deployment.cli("sp", "list").stdout
    assert "\x1b" not in out and "x\\x1b[31mred\\nfake" in out


def test_public_password_client_needs_force_and_refresh_only_is_refused(env) -> None:  # noqa: ANN001
    """RFC 9700 §2.4: a public client for the password grant is refused unless --force, then
    registered with a warning; a client with only refresh_token is refused."""
    args = ["sp", "add", "p", "--grant-type=password", "--auth-method", "none"]
    refused = env.deployment.cli(*args, check=False)
    assert refused.returncode != 0 and "--force" in refused.stderr and refused.stderr.count("\n") == 1
    forced = env.deployment.cli(*args, "--force")
    assert "RFC 9700" in forced.stderr and json.loads(forced.stdout)["client_id"]
    only = env.deployment.cli(
        "sp", "add", "r", "--grant-type=refresh_token", "--auth-method", "client_secret_basic", check=False
    )
    assert only.returncode != 0 and "refresh_token" in only.stderr


# --- 3. the lockout is per source, and ends -----------------------------------------------------


def from_address(server: Server, address: str) -> httpx.Client:
    """An HTTPS client whose connections come from *address* (any 127/8 address is local)."""
    context = ssl.create_default_context(cafile=str(server.deployment.server_cert))
    return httpx.Client(
        base_url=server.url, timeout=10, transport=httpx.HTTPTransport(verify=context, local_address=address)
    )


def test_lockout_is_per_source_and_ends_with_its_counter(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """An attacker's failures lock out the attacker's address, not the user everywhere; when
    the lock ends the count starts afresh, so one guess per period does not keep the user
    locked (RFC 6819 §4.4.3.6); failures from many addresses together lock the user at
    MaxFailedLoginsPerUser."""
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        oauth=(
            "<MaxFailedLogins>3</MaxFailedLogins><MaxFailedLoginsPerUser>5</MaxFailedLoginsPerUser>"
            "<LockoutSeconds>2</LockoutSeconds>"
        ),
    )
    for name in ("alice", "bob"):
        dep.cli("user", "add", name, "--password-stdin", input=PASSWORD + "\n")
    c = dep.add_client("c", "--grant-type=password", "--auth-method", "client_secret_basic")
    server = serve(dep)

    def attempt(address: str, user: str, password: str) -> int:
        with from_address(server, address) as http:
            return http.post(
                "/oauth2/token",
                auth=auth(c),
                data={"grant_type": "password", "username": user, "password": password},
            ).status_code

    for _ in range(3):
        assert attempt("127.0.0.2", "alice", "wrong") == 400
    assert attempt("127.0.0.2", "alice", PASSWORD) == 400  # the attacker's address is locked out
    assert attempt("127.0.0.3", "alice", PASSWORD) == 200  # the user elsewhere is not
    for _ in range(3):
        attempt("127.0.0.2", "alice", "wrong")  # still locked: not counted, lock not extended
    time.sleep(2.2)
    assert attempt("127.0.0.2", "alice", "wrong") == 400  # a new count: one failure, no lock
    assert attempt("127.0.0.2", "alice", PASSWORD) == 200

    for address in ("127.0.0.4", "127.0.0.4", "127.0.0.5", "127.0.0.5", "127.0.0.6"):
        attempt(address, "bob", "wrong")
    assert attempt("127.0.0.7", "bob", PASSWORD) == 400  # five failures in all: locked everywhere
    server.deployment.cli("user", "unlock", "bob")
    assert attempt("127.0.0.7", "bob", PASSWORD) == 200


# --- 9. retired signing keys ----------------------------------------------------------------------


def test_a_jwt_of_a_retired_key_introspects_inactive(tmp_path, keystore, wheel_cache, serve) -> None:  # noqa: ANN001
    """After `signing rotate` and `signing retire OLD`, a JWT signed by OLD is inactive:
    it no longer verifies anywhere (RFC 9068 §4)."""
    dep = new_deployment(
        tmp_path / "ts", keystore, wheel_cache, oauth="<AccessTokenFormat>jwt</AccessTokenFormat>"
    )
    c = dep.add_client("j", "--grant-type=client_credentials", "--auth-method", "client_secret_basic")
    server = serve(dep)
    old = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, c).json()["access_token"]
    assert introspect(server, old, c)["active"] is True
    kid = json.loads(base64.urlsafe_b64decode(old.split(".")[0] + "=="))["kid"]
    dep.cli("signing", "rotate")
    new = post(server, "/oauth2/token", {"grant_type": "client_credentials"}, c).json()["access_token"]
    dep.cli("signing", "retire", kid)
    assert introspect(server, old, c) == {"active": False}
    assert introspect(server, new, c)["active"] is True


# --- 13. refresh rotation is atomic ---------------------------------------------------------------

REFUSER = textwrap.dedent("""
    from pathlib import Path
    from tokensmith import InvalidRequestError, hookimpl

    @hookimpl
    def pre_token_issue(event, listener):
        if event.grant_type == "refresh_token" and Path(listener.properties["flag"]).exists():
            raise InvalidRequestError("refused by policy for now")
""")


def test_a_refused_refresh_leaves_the_refresh_token_usable(
    tmp_path, keystore, wheel_cache, make_wheel, serve
) -> None:  # noqa: ANN001
    """When the new tokens are not stored (a pre_token_issue interceptor refuses), the old
    refresh token is not used up: the client's retry works and is not taken for a replay.
    Marking it used and storing its successor are one transaction."""
    flag = tmp_path / "refuse"
    dep = new_deployment(
        tmp_path / "ts",
        keystore,
        wheel_cache,
        listeners=DEFAULT_LISTENERS
        + f"""
        <EventListener type="OAuthEventInterceptor" name="refuser" orderId="10">
            <Property name="flag">{flag}</Property>
        </EventListener>""",
    )
    shutil.copy(make_wheel("refuser", REFUSER), dep.dropins)
    dep.cli("user", "add", "alice", "--password-stdin", input=PASSWORD + "\n")
    c = dep.add_client(
        "c", "--grant-type=password", "--grant-type=refresh_token", "--auth-method", "client_secret_basic"
    )
    server = serve(dep)
    tokens = password_grant(server, c, "alice").json()
    flag.touch()
    refused = refresh(server, c, tokens["refresh_token"])
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request", refused.text
    flag.unlink()
    retried = refresh(server, c, tokens["refresh_token"])
    assert retried.status_code == 200, retried.text
    assert introspect(server, tokens["access_token"], c)["active"] is True


# --- 14. purge off the request path; 15. checkpoints never hold writers -----------------------------


def _fill(database: Path, rows: int, expires_at: int, claims: str = "{}") -> None:
    with sqlite3.connect(database) as db:
        db.execute("PRAGMA wal_autocheckpoint=0")
        for start in range(0, rows, 1000):
            db.executemany(
                "INSERT INTO tokens (token_hash, kind, client_id, scope, issued_at, expires_at, claims)"
                " VALUES (?, 'access', 'filler', '', 0, ?, ?)",
                [
                    (f"filler-{start + i}-{time.monotonic_ns()}", expires_at, claims)
                    for i in range(min(1000, rows - start))
                ],
            )
            db.commit()


def _worst_latency(server: Server, c: dict, seconds: float) -> float:
    worst = 0.0
    deadline = time.monotonic() + seconds
    with server.client() as http:
        while time.monotonic() < deadline:
            started = time.perf_counter()
            response = http.post("/oauth2/token", data={"grant_type": "client_credentials"}, auth=auth(c))
            assert response.status_code == 200, response.text
            worst = max(worst, time.perf_counter() - started)
    return worst


def test_purging_many_expired_tokens_does_not_stall_requests(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """100,000 expired tokens are purged soon after start, in small batches in a worker
    thread: token requests meanwhile are not held up for the whole DELETE."""
    c = deployment.add_client("p", "--grant-type=client_credentials", "--auth-method", "client_secret_basic")
    _fill(deployment.database, 100_000, expires_at=1)
    server = serve(deployment)
    worst = _worst_latency(server, c, 4)
    server.wait_for_log("purged 100000 expired tokens", timeout=20)
    assert worst < 0.4, f"a token request waited {worst:.3f} s"


def test_a_long_reader_does_not_make_the_checkpoint_hold_writers(deployment: Deployment, serve) -> None:  # noqa: ANN001
    """With another connection holding a read transaction and a WAL past the restart mark,
    the checkpoint does not wait for the reader while holding the write lock: token requests
    are not held up (the WAL grows until the reader is gone)."""
    c = deployment.add_client("w", "--grant-type=client_credentials", "--auth-method", "client_secret_basic")
    server = serve(deployment)
    reader = sqlite3.connect(deployment.database, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM tokens").fetchone()
        _fill(deployment.database, 6000, expires_at=2**40, claims=json.dumps({"pad": "x" * 3000}))
        worst = _worst_latency(server, c, 3.5)
    finally:
        reader.close()
    assert worst < 0.4, f"a token request waited {worst:.3f} s"
