"""schemathesis against /api/openapi.json: for every operation, a bounded number of generated
requests from an admin; no answer is a 5xx, and every answer matches the document (status
code, content type, headers, body schema)."""

from __future__ import annotations

from collections.abc import Iterator

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
    write_authenticators(dep, mtls=False)
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
