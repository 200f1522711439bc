"""Focused unit tests of http/: the llhttp lane's Host check and refusals, and the Hypercorn
protocol subclasses' installation."""

from __future__ import annotations

import hypercorn.protocol
import pytest
from tokensmith.http import protocols
from tokensmith.http.llhttp import refusal_response, valid_host


@pytest.mark.parametrize(
    "host", [b"", b"example.com", b"example.com:8443", b"[::1]:443", b"127.0.0.1", b"a%20b"]
)
def test_hosts_rfc9112_allows(host: bytes) -> None:
    assert valid_host(host)


@pytest.mark.parametrize("host", [b"a b", b"exa/mple", b"[::1", b"host:port", b"x\r\ny", b"a@b"])
def test_hosts_rfc9112_refuses(host: bytes) -> None:
    assert not valid_host(host)


def test_a_refusal_has_a_status_no_body_and_closes() -> None:
    response = refusal_response(413)
    assert response.startswith(b"HTTP/1.1 413 Request Entity Too Large\r\n")
    assert b"\r\ncontent-length: 0\r\nconnection: close\r\n\r\n" in response and response.endswith(
        b"\r\n\r\n"
    )
    assert b"date: " in response


def test_install_puts_our_protocols_in_hypercorn() -> None:
    protocols.install()
    protocols.install()  # idempotent
    assert hypercorn.protocol.H11Protocol is protocols.H11Protocol
    assert hypercorn.protocol.H2Protocol is protocols.H2Protocol
