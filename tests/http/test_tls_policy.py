"""The TLS policy of the real server: protocol versions, ciphers, tickets, handshake state,
TLS passthrough and TCP options. Client certificate modes: test_client_certificate_modes.py."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading

import pki
import pytest
from conftest import Server, new_deployment
from servers import handshake, host_port, roundtrip
from tokensmith.config.settings import load_config
from tokensmith.http.tls import server_context


@pytest.fixture
def server(tls_server) -> Server:  # noqa: ANN001
    """The server with a want, a need and a false connector (tests/servers.py)."""
    return tls_server


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1_1"])
def test_old_tls_versions_are_refused(server, version) -> None:  # noqa: ANN001
    """TLS 1.0 and 1.1 are offered by the client and refused by the server."""
    old = getattr(ssl.TLSVersion, version)
    with pytest.raises(ssl.SSLError) as refused:
        handshake(server, minimum=old, maximum=old, ciphers="DEFAULT:@SECLEVEL=0").close()
    # Refused by the server (an alert, or the connection closed on the ClientHello), not the
    # client failing to offer the version (NO_PROTOCOLS_AVAILABLE).
    assert refused.value.reason in {
        "UNEXPECTED_EOF_WHILE_READING",
        "TLSV1_ALERT_PROTOCOL_VERSION",
        "UNSUPPORTED_PROTOCOL",
    }, refused.value


def test_tls12_is_accepted_with_ecdhe_aead_only(server) -> None:  # noqa: ANN001
    """TLS 1.2 works with ECDHE-AES-GCM; a CBC-only client is refused."""
    with handshake(server, maximum=ssl.TLSVersion.TLSv1_2) as tls:
        assert tls.version() == "TLSv1.2"
        name = tls.cipher()[0]
        assert name.startswith("ECDHE-") and ("GCM" in name or "CHACHA20" in name)
        assert roundtrip(tls).startswith(b"HTTP/1.1 200")
    with pytest.raises(ssl.SSLError):
        handshake(
            server, maximum=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA"
        )


def test_tls13_is_preferred(server) -> None:  # noqa: ANN001
    """A client that offers 1.2 and 1.3 gets 1.3."""
    with handshake(server) as tls:
        assert tls.version() == "TLSv1.3"


def test_no_session_tickets_every_connection_is_a_full_handshake(server, tmp_path) -> None:  # noqa: ANN001
    """The server issues no TLS 1.3 session tickets, so a client offering its previous
    session gets a full handshake that proves its key again (tlsconf's docstring)."""
    context = ssl.create_default_context(cafile=str(server.deployment.server_cert))
    context.load_cert_chain(*pki.self_signed("ticket-client").write(tmp_path, "ticket"))
    session = None
    for attempt in range(2):
        raw = socket.create_connection(host_port(server), timeout=10)
        with context.wrap_socket(raw, server_hostname="127.0.0.1", session=session) as tls:
            assert roundtrip(tls).startswith(b"HTTP/1.1 200")  # tickets would come by now
            assert not tls.session_reused
            session = tls.session
            assert session is not None and not session.has_ticket, attempt


def test_handshake_state_does_not_grow_with_clients(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    """The connector's context holds no client or CA certificates, however many clients exist."""
    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    config = load_config(dep.conf)
    for name in ("a", "b", "c"):
        dep.add_client(
            name,
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(pki.self_signed().write(tmp_path, name)[0]),
        )
    context = server_context(config.server, config.server.connectors[0])
    assert context.cert_store_stats() == {"crl": 0, "x509": 0, "x509_ca": 0}
    assert context.verify_mode == ssl.CERT_OPTIONAL
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


class Forwarder:
    """A plain TCP forwarder on 127.0.0.1: TLS passthrough, as the seed's SSL tunnelling."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.port = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            for stream in (writer, up_writer):
                stream.close()
            self.tasks.discard(task)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.tasks: set[asyncio.Task] = set()
        server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self.ready.set()
        self.loop.run_forever()
        server.close()
        for task in list(self.tasks):
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*self.tasks, return_exceptions=True))
        self.loop.run_until_complete(server.wait_closed())
        self.loop.close()

    def __enter__(self) -> Forwarder:
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_tls_passthrough_needs_nothing_special(server, tmp_path) -> None:  # noqa: ANN001
    """Through a plain TCP forwarder the client's own handshake authenticates it."""
    pair = pki.self_signed()
    files = pair.write(tmp_path, "tunnel")
    client_id = str(
        server.deployment.add_client(
            "t",
            "--grant-type",
            "client_credentials",
            "--auth-method",
            "self_signed_tls_client_auth",
            "--cert",
            str(files[0]),
        )["client_id"]
    )
    with Forwarder(host_port(server)) as forwarder:
        with server.client(cert=files, url=f"https://127.0.0.1:{forwarder.port}") as http:
            response = http.post(
                "/oauth2/token", data={"grant_type": "client_credentials", "client_id": client_id}
            )
    assert response.status_code == 200, response.text


def test_accepted_connections_get_tcp_nodelay(tmp_path, keystore, wheel_cache) -> None:  # noqa: ANN001
    """A connection accepted from the connector's socket has Nagle's algorithm turned off."""
    from tokensmith.http.server import bind, no_delay

    dep = new_deployment(tmp_path / "ts", keystore, wheel_cache)
    ((listening,),) = bind(load_config(dep.conf))
    try:
        client = socket.create_connection(listening.getsockname()[:2], timeout=5)
        accepted, _ = listening.accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0  # what asyncio leaves
            no_delay(accepted)
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        listening.close()
