"""Property-based tests of every input surface: each ends in a clean refusal, never a 5xx,
a traceback or a hang.

CI runs the "ci" profile (a bounded number of examples); `make fuzz` runs the "fuzz" profile.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
from collections.abc import Iterator

import pki
import pytest
from conftest import ROOT, Server, new_deployment, start_server
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tokensmith import cli
from tokensmith.config.settings import ConfigError, load_config

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "fuzz",
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

OAUTH_ERRORS = {
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
}


@pytest.fixture(scope="module")
def env(tmp_path_factory, keystore, wheel_cache) -> Iterator[tuple[Server, dict, pki.Pair]]:  # noqa: ANN001
    root = tmp_path_factory.mktemp("fuzz")
    dep = new_deployment(
        root / "ts",
        keystore,
        wheel_cache,
        oauth=('<ClientCertificateHeader name="X-Client-Cert" trustedProxies="127.0.0.0/8"/>'),
    )
    client = dep.add_client(
        "f",
        "--grant-type",
        "client_credentials",
        "--grant-type",
        "password",
        "--grant-type",
        "refresh_token",
        "--scope",
        "read",
        "--auth-method",
        "client_secret_post",
    )
    pair = pki.self_signed()
    dep.add_client(
        "m",
        "--grant-type",
        "client_credentials",
        "--auth-method",
        "self_signed_tls_client_auth",
        "--cert",
        str(pair.write(root, "m")[0]),
    )
    server = start_server(dep)
    yield server, client, pair
    server.stop()


def assert_clean(response) -> None:  # noqa: ANN001
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert body["error"] in OAUTH_ERRORS, body
        assert "Traceback" not in response.text


FORM_NAMES = st.sampled_from(
    [
        "grant_type",
        "client_id",
        "client_secret",
        "scope",
        "username",
        "password",
        "refresh_token",
        "token",
        "x",
    ]
)
FORM_VALUES = st.one_of(
    st.sampled_from(["client_credentials", "password", "refresh_token", "read", ""]), st.text(max_size=40)
)


@given(body=st.binary(max_size=3000))
def test_arbitrary_form_bytes(env, body) -> None:  # noqa: ANN001
    """Any bytes as a form body give a clean OAuth answer."""
    with env[0].client() as http:
        assert_clean(
            http.post(
                "/oauth2/token", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
        )


@given(
    pairs=st.lists(st.tuples(FORM_NAMES, FORM_VALUES), max_size=8),
    charset=st.sampled_from(["", "; charset=utf-8", "; charset=latin-1", '; charset="UTF-8"']),
)
def test_structured_forms_with_repeats_and_charsets(env, pairs, charset) -> None:  # noqa: ANN001
    """Forms with repeated, missing and odd parameters give a clean OAuth answer."""
    server, client, _ = env
    pairs = [*pairs, ("client_id", client["client_id"])] if pairs and pairs[0][0] == "x" else pairs
    from urllib.parse import urlencode

    with server.client() as http:
        assert_clean(
            http.post(
                "/oauth2/token",
                content=urlencode(pairs).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded" + charset},
            )
        )


def field_value(raw: bytes) -> bytes:
    """What a client can put in a header field value at all (RFC 9110 §5.5)."""
    return bytes(c for c in raw if c in (9, 32) or 33 <= c <= 126 or c >= 128)


HEADER_VALUE = st.binary(max_size=300).map(field_value)


@given(
    value=st.one_of(
        HEADER_VALUE,
        HEADER_VALUE.map(lambda b: b"Basic " + base64.b64encode(b)),
        st.text(max_size=50).map(lambda t: field_value(("Basic " + t).encode("utf-8"))),
    )
)
def test_arbitrary_authorization_headers(env, value) -> None:  # noqa: ANN001
    """Any Authorization header gives a clean OAuth answer, with a challenge on 401."""
    with env[0].client() as http:
        response = http.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            headers={"Authorization": value.strip()},
        )
    assert_clean(response)
    if response.status_code == 401 and value.strip():
        assert "www-authenticate" in response.headers


@given(data=st.data())
def test_arbitrary_proxy_certificate_headers(env, data) -> None:  # noqa: ANN001
    """Any certificate header from a trusted proxy gives a clean refusal or the right client."""
    server, _, pair = env
    der = pair.der
    value = data.draw(
        st.one_of(
            st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=400).map(str.strip),
            st.binary(max_size=600).map(lambda b: ":" + base64.b64encode(b).decode() + ":"),
            st.integers(0, len(der)).map(lambda n: base64.b64encode(der[:n]).decode()),
            st.integers(0, len(der) - 1).map(
                lambda n: base64.b64encode(der[:n] + bytes([der[n] ^ 0xFF]) + der[n + 1 :]).decode()
            ),
        )
    )
    with server.client() as http:
        assert_clean(
            http.post(
                "/oauth2/token",
                headers={"X-Client-Cert": value},
                data={"grant_type": "client_credentials", "client_id": "m-client"},
            )
        )


def run_cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(list(args))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
    return code, err.getvalue()


@given(
    data=st.one_of(
        st.binary(max_size=2000),
        st.binary(max_size=600).map(
            lambda b: (
                b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(b) + b"-----END CERTIFICATE-----\n"
            )
        ),
        st.binary(max_size=600).map(
            lambda b: (
                b"-----BEGIN PRIVATE KEY-----\n" + base64.encodebytes(b) + b"-----END PRIVATE KEY-----\n"
            )
        ),
    )
)
def test_arbitrary_pem_files_given_to_the_cli(tmp_path_factory, keystore, wheel_cache, data) -> None:  # noqa: ANN001
    """sp add --cert and truststore import refuse any non-certificate with one line, exit 1."""
    root = tmp_path_factory.mktemp("pem")
    dep = new_deployment(root / "ts", keystore, wheel_cache)
    bad = root / "input.pem"
    bad.write_bytes(data)
    for args in (
        (
            "sp",
            "add",
            "x",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(bad),
        ),
        ("truststore", "import", "--alias", "x", "--file", str(bad)),
    ):
        code, err = run_cli(*args, "--conf", str(dep.conf))
        assert code == 1, err
        assert err.count("\n") <= 2 and "Traceback" not in err and err.startswith("tokensmith: ")


IDENTITY = (ROOT / "conf" / "identity.xml").read_bytes()


@given(
    position=st.integers(0, len(IDENTITY)), junk=st.binary(min_size=1, max_size=40), cut=st.integers(0, 40)
)
def test_mutated_identity_xml(tmp_path_factory, keystore, wheel_cache, position, junk, cut) -> None:  # noqa: ANN001
    """A mutated identity.xml either loads or is refused with ConfigError naming the file."""
    dep = new_deployment(tmp_path_factory.mktemp("xml") / "ts", keystore, wheel_cache)
    path = dep.conf / "identity.xml"
    path.write_bytes(IDENTITY[:position] + junk + IDENTITY[position + cut :])
    try:
        load_config(dep.conf)
    except ConfigError as error:
        assert str(error).startswith(str(path))
