"""OAuthEventInterceptor listeners through the real server."""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Iterator

import pytest
from conftest import DEFAULT_LISTENERS, Server, new_deployment, start_server

AUDIT = textwrap.dedent("""
    import json
    from tokensmith import InvalidRequestError, InvalidScopeError, hookimpl

    def record(listener, hook, **fields):
        with open(listener.properties["trace"], "a") as out:
            out.write(json.dumps({"hook": hook, **fields}) + "\\n")

    @hookimpl
    def pre_token_issue(event, listener):
        record(listener, "pre_token_issue", client=event.client.client_id,
               grant_type=event.grant_type, scopes=list(event.scopes))
        if "forbidden" in event.scopes:
            raise InvalidScopeError("forbidden is refused by policy")
        if "grab" in event.scopes:
            return {"client_id": "someone-else"}
        return {"tenant": listener.properties["tenant"]}

    @hookimpl
    async def post_token_issue(event, listener):
        record(listener, "post_token_issue", claims=dict(event.claims))
        if "explode" in event.scopes:
            raise RuntimeError("post hooks cannot change the outcome")

    @hookimpl
    def pre_token_revoke(event, listener):
        record(listener, "pre_token_revoke", kind=event.token_kind)
        if event.claims.get("scope") == "keep":
            raise InvalidRequestError("this token is kept")

    @hookimpl
    def post_token_revoke(event, listener):
        record(listener, "post_token_revoke", client=event.client.client_id)

    @hookimpl
    def client_auth_success(event, listener):
        record(listener, "client_auth_success", endpoint=event.endpoint,
               client=event.client_id, method=event.method)

    @hookimpl
    def client_auth_failure(event, listener):
        record(listener, "client_auth_failure", endpoint=event.endpoint,
               client=event.client_id, error=event.error)
""")


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache, make_wheel) -> Iterator[tuple[Server, dict, object]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("interceptors")
    trace = root / "trace.jsonl"
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        listeners=DEFAULT_LISTENERS
        + f"""
        <EventListener type="OAuthEventInterceptor" name="audit" orderId="10">
            <Property name="trace">{trace}</Property>
            <Property name="tenant">acme</Property>
        </EventListener>""",
    )
    shutil.copy(make_wheel("audit", AUDIT), dep.dropins)
    client = dep.add_client(
        "demo",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "client_secret_basic",
        *[f"--scope={s}" for s in ("read", "forbidden", "grab", "explode", "keep")],
    )
    server = start_server(dep)
    yield server, client, trace
    server.stop()


def events(trace, hook: str) -> list[dict]:  # noqa: ANN001
    return [e for e in map(json.loads, trace.read_text().splitlines()) if e["hook"] == hook]


def post(server: Server, client: dict, path: str, data: dict, secret: str | None = None):  # noqa: ANN201
    with server.client() as http:
        return http.post(path, data=data, auth=(client["client_id"], secret or client["client_secret"]))


def test_pre_issue_adds_claims_that_introspection_returns(env) -> None:  # noqa: ANN001
    """Claims returned by pre_token_issue are stored with the token and introspected."""
    server, client, trace = env
    token = post(
        server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "read"}
    ).json()
    info = post(server, client, "/oauth2/introspect", {"token": token["access_token"]}).json()
    assert info["active"] is True and info["tenant"] == "acme" and info["client_id"] == client["client_id"]
    issued = events(trace, "post_token_issue")[-1]["claims"]
    assert issued["tenant"] == "acme" and issued["scope"] == "read"
    assert token["access_token"] not in trace.read_text()


def test_pre_issue_can_refuse(env) -> None:  # noqa: ANN001
    """An OAuth error from pre_token_issue is the client's answer and no token is issued."""
    server, client, trace = env
    before = len(events(trace, "post_token_issue"))
    response = post(
        server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "forbidden"}
    )
    assert response.status_code == 400
    assert response.json() == {
        "error": "invalid_scope",
        "error_description": "forbidden is refused by policy",
    }
    assert len(events(trace, "post_token_issue")) == before


def test_pre_issue_cannot_set_registered_claims(env) -> None:  # noqa: ANN001
    """A pre_token_issue that tries to set client_id gets server_error, logged with its name."""
    server, client, _ = env
    response = post(server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "grab"})
    assert response.status_code == 500, (
        response.text,
        response.request.content,
        server.url,
        server.stdout_lines,
    )
    assert response.json()["error"] == "server_error"
    assert (
        "OAuthEventInterceptor/audit failed in pre_token_issue: tried to set registered claims ['client_id']"
        in server.log()
    )


def test_post_issue_failure_does_not_change_the_outcome(env) -> None:  # noqa: ANN001
    """A post_token_issue that raises is logged, and the client still gets its token."""
    server, client, _ = env
    response = post(server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "explode"})
    assert response.status_code == 200 and response.json()["access_token"]
    assert "OAuthEventInterceptor/audit raised in post_token_issue" in server.log()


def test_client_auth_success_and_failure_are_told(env) -> None:  # noqa: ANN001
    """Interceptors hear of every authentication, with the claimed client id and the error."""
    server, client, trace = env
    post(server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "read"})
    post(server, client, "/oauth2/token", {"grant_type": "client_credentials"}, secret="wrong")
    assert events(trace, "client_auth_success")[-1] == {
        "hook": "client_auth_success",
        "endpoint": "token",
        "client": client["client_id"],
        "method": "client_secret_basic",
    }
    assert events(trace, "client_auth_failure")[-1] == {
        "hook": "client_auth_failure",
        "endpoint": "token",
        "client": client["client_id"],
        "error": "invalid_client",
    }
    assert "wrong" not in trace.read_text()


def test_revocation_hooks_and_refusal(env) -> None:  # noqa: ANN001
    """pre_token_revoke can refuse (the token stays active); post_token_revoke is told."""
    server, client, trace = env
    kept = post(server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "keep"}).json()
    refused = post(server, client, "/oauth2/revoke", {"token": kept["access_token"]})
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_request"
    assert (
        post(server, client, "/oauth2/introspect", {"token": kept["access_token"]}).json()["active"] is True
    )

    gone = post(server, client, "/oauth2/token", {"grant_type": "client_credentials", "scope": "read"}).json()
    assert post(server, client, "/oauth2/revoke", {"token": gone["access_token"]}).status_code == 200
    assert post(server, client, "/oauth2/introspect", {"token": gone["access_token"]}).json() == {
        "active": False
    }
    assert events(trace, "post_token_revoke")[-1] == {
        "hook": "post_token_revoke",
        "client": client["client_id"],
    }
    assert events(trace, "pre_token_revoke")[-1] == {"hook": "pre_token_revoke", "kind": "access_token"}
