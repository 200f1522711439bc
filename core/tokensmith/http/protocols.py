"""Hypercorn's HTTP/1.1 and HTTP/2 protocols, refusing what tokensmith must not serve.

server.py drives Hypercorn's ``TCPServer`` per connection, and Hypercorn picks the protocol
class for it by name from its ``hypercorn.protocol`` module. ``install`` puts these two
subclasses there (Hypercorn is pinned to 0.18, where they were written and are tested):

- ``H11Protocol`` refuses, with 400 and a close, any request with an ``Upgrade`` field, and
  the HTTP/2 preface on an HTTP/1.1 connection. Hypercorn switches to HTTP/2 on
  ``Upgrade: h2c`` and on the preface even over TLS, where HTTP/2 is negotiated with ALPN
  only (RFC 9113 §3.2, §3.3). Behind a proxy that tunnels once it sees a 101 answer, the
  switch lets a client speak past the proxy: it could send its own copy of the certificate
  header that the proxy would have replaced (h2c smuggling). RFC 9110 §7.8 lets a server
  refuse an upgrade. The llhttp lane refuses them alike.
- ``H2Protocol`` resets only the offending stream, instead of losing the whole connection
  (and every other client's stream on it, behind a proxy that multiplexes), when a request
  has a ``:method`` or ``:path`` that is not ASCII, no ``:path``, or the CONNECT method
  (RFC 9113 §8.3.1: a malformed request is a stream error), and when DATA arrives for a
  stream that was already answered (RFC 9113 §8.1 allows answering before the request ends).
"""

from __future__ import annotations

import re

import h2.errors
import h2.events
import h2.exceptions
import h11
import hypercorn.protocol
from hypercorn.events import Closed
from hypercorn.protocol.h2 import H2Protocol as _HypercornH2
from hypercorn.protocol.h11 import H11Protocol as _HypercornH11

__all__ = ["install", "H11Protocol", "H2Protocol"]

#: RFC 9110 §5.6.2 token, which every method is (§9.1).
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


class UpgradeRefused(ConnectionAbortedError):
    """Raised after the 400 is sent: Hypercorn's TCPServer closes the connection quietly."""


class H11Protocol(_HypercornH11):
    async def _check_protocol(self, event: h11.Request) -> None:
        preface = event.method == b"PRI" and event.target == b"*"
        if preface or any(name == b"upgrade" for name, _ in event.headers):
            await self._send_error_response(400)
            await self.send(Closed())
            raise UpgradeRefused("protocol upgrade refused")


class H2Protocol(_HypercornH2):
    async def _handle_events(self, events: list[h2.events.Event]) -> None:
        kept: list[h2.events.Event] = []
        opened = set()  # streams whose request is in this batch, before its DATA
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                if _well_formed(event.headers):
                    opened.add(event.stream_id)
                    kept.append(event)
                else:
                    self.connection.reset_stream(event.stream_id, h2.errors.ErrorCodes.PROTOCOL_ERROR)
            elif (
                isinstance(event, h2.events.DataReceived)
                and event.stream_id not in self.streams
                and event.stream_id not in opened
            ):
                # Answered already (or reset above): give the window back, drop the data.
                try:
                    self.connection.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                except h2.exceptions.StreamClosedError:
                    pass
            else:
                kept.append(event)
        await super()._handle_events(kept)


def _well_formed(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a request's pseudo-header fields are ones Hypercorn can turn into a scope."""
    method = path = None
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
    return (
        method is not None
        and method != b"CONNECT"
        and _TOKEN.fullmatch(method) is not None
        and path is not None
        and path.isascii()
    )


def install() -> None:
    """Make Hypercorn's connections use these protocols (idempotent)."""
    current = hypercorn.protocol.H11Protocol, hypercorn.protocol.H2Protocol
    if current == (H11Protocol, H2Protocol):
        return
    if current != (_HypercornH11, _HypercornH2):
        raise RuntimeError("hypercorn.protocol's protocol classes are not Hypercorn's own")
    hypercorn.protocol.H11Protocol = H11Protocol  # type: ignore[misc]
    hypercorn.protocol.H2Protocol = H2Protocol  # type: ignore[misc]
