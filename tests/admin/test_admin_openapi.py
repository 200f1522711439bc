"""schemathesis against /api/openapi.json: for every operation, a bounded number of generated
requests from an admin; no answer is a 5xx, and every answer matches the document (status
code, content type, headers, body schema).

Dynamic registration is open here, so that the generated registrations (RFC 7591) are really
checked and some are stored. The generated calls of the RFC 7592 endpoints carry no
registration access token (the session authenticates as an admin, by Basic) and name made-up
client ids, so they only reach the 401; test_the_client_configuration_endpoint_conforms drives
them with a real client's token and generated bodies."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pki
import pytest
import requests
import schemathesis
from admin_env import PASSWORDS, AdminEnv, add_users, write_authenticators
from conftest import new_deployment, start_server
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi import checks as openapi_checks
from tokensmith.app.openapi import document

#: What is checked of every answer; not the "positive data acceptance" check, since the
#: document does not describe every rule a valid registration must satisfy (RFC 7591 §2).
CHECKS = [
    schemathesis.checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_headers_conformance,
    openapi_checks.response_schema_conformance,
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[AdminEnv]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("admin-openapi")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    write_authenticators(dep, mtls=False, mode="open", scopes="read")
    add_users(dep)
    authority = pki.ca()
    server = start_server(dep)
    yield AdminEnv(server, root, authority, (root / "none.pem", root / "none.key"))
    server.stop()


@pytest.fixture(scope="module")
def session(env: AdminEnv) -> Iterator[requests.Session]:
    with requests.Session() as http:
        http.verify = str(env.server.deployment.server_cert)
        http.auth = ("root", PASSWORDS["root"])
        # Every change must say it sends JSON, also without a body (CSRF); with a body,
        # schemathesis sets the same.
        http.headers["Content-Type"] = "application/json"
        yield http


def test_the_served_document_is_the_one_tested(env: AdminEnv) -> None:
    with env.server.client() as http:
        assert http.get("/api/openapi.json").json() == document()


SCHEMA = schemathesis.openapi.from_dict(document())
OPERATIONS = {op.label: op for op in (result.ok() for result in SCHEMA.get_all_operations())}


@pytest.mark.parametrize("label", sorted(OPERATIONS))
def test_every_operation_conforms(label: str, env: AdminEnv, session: requests.Session) -> None:
    @given(case=OPERATIONS[label].as_strategy())
    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:  # noqa: ANN001
        case.call_and_validate(
            base_url=env.server.url,
            session=session,
            checks=CHECKS,
            timeout=20,
            verify=str(env.server.deployment.server_cert),
        )

    run()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_the_client_configuration_endpoint_conforms(method: str, env: AdminEnv) -> None:
    """RFC 7592 §2 with a registered client's own token: generated bodies for PUT; every answer
    (200, 204, 400, and the 401 once the client is deleted) matches the document."""
    with env.server.client() as http:
        registered = http.post(
            "/oauth2/register",
            json={"client_name": f"fuzzed {method}", "grant_types": ["client_credentials"]},
        )
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    token = registered.json()["registration_access_token"]
    operation = OPERATIONS[f"{method} /oauth2/register/{{client_id}}"]
    statuses: set[int] = set()

    @given(case=operation.as_strategy())
    @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def run(case) -> None:  # noqa: ANN001
        case.path_parameters = {"client_id": client_id}
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
        if method == "PUT" and isinstance(case.body, dict) and len(statuses) % 2 == 0:
            case.body = {**case.body, "client_id": client_id}  # RFC 7592 §2.2: else always 400
        with requests.Session() as http:
            response = case.call_and_validate(
                base_url=env.server.url,
                session=http,
                checks=CHECKS,
                timeout=20,
                verify=str(env.server.deployment.server_cert),
            )
        statuses.add(response.status_code)

    run()
    expected = {"GET": 200, "PUT": 400, "DELETE": 204}[method]
    assert expected in statuses, statuses


def test_registration_answers_match_the_document(env: AdminEnv) -> None:
    """A registration, a read and a removal that succeed, and the 401 after it, are valid
    against the document (the generated registrations above are mostly refused)."""
    with env.server.client() as http:
        created = http.post(
            "/oauth2/register",
            json={
                "client_name": "conforming",
                "grant_types": ["authorization_code", "refresh_token"],
                "redirect_uris": ["https://app.example/cb"],
                "scope": "read",
            },
        )
        assert created.status_code == 201, created.text
        OPERATIONS["POST /oauth2/register"].validate_response(created)
        body = created.json()
        assert body["client_secret"] and body["registration_access_token"]
        path = f"/oauth2/register/{body['client_id']}"
        bearer = {"Authorization": f"Bearer {body['registration_access_token']}"}
        read = http.get(path, headers=bearer)
        assert read.status_code == 200 and "client_secret" not in read.json()
        OPERATIONS["GET /oauth2/register/{client_id}"].validate_response(read)
        deleted = http.delete(path, headers=bearer)
        assert deleted.status_code == 204
        OPERATIONS["DELETE /oauth2/register/{client_id}"].validate_response(deleted)
        gone = http.get(path, headers=bearer)
    assert gone.status_code == 401 and gone.headers["www-authenticate"].startswith("Bearer")
    OPERATIONS["GET /oauth2/register/{client_id}"].validate_response(gone)
    # The document is checked, not just obeyed: an answer it does not describe fails.
    wrong = httpx.Response(201, json={"client_name": "no client_id"}, request=created.request)
    wrong.elapsed = created.elapsed
    with pytest.raises(Exception, match="client_id"):
        OPERATIONS["POST /oauth2/register"].validate_response(wrong)
